"""The layer rules of ../shared/DESIGN.md, enforced by import-linter (contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, object]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run([exe, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in proc.stdout


def test_contracts_see_indirect_imports_and_cover_the_cli() -> None:
    """No contract waves indirect imports through, and the CLI is a layer like the others
    (issue 14 item 9): "Qt only in ui" must also mean "not through a module that imports Qt"."""
    contracts = _contracts()
    assert not [c["name"] for c in contracts if c.get("allow_indirect_imports")]
    [layers] = [c for c in contracts if c["type"] == "layers"]
    assert layers["layers"][0] == "hilum.cli"  # type: ignore[index]
    protected = {m for c in contracts if c["type"] == "protected" for m in c["protected_modules"]}  # type: ignore[attr-defined]
    assert {"PySide6", "vtkmodules", "sqlalchemy"} <= protected
