"""Generate ``app/hilum/dicom/deid_profile.py`` from PS3.15 Table E.1-1 as parsed by innolitics' dicom-standard.

No installed library carries Table E.1-1 *with its option columns*: pydicom has
the data dictionary and CID 7050 but not the profile; ``deid`` (pydicom/deid)
ships pixel-cleaning filters and a short header recipe, not the table;
``dicognito`` hard-codes its own choices in code.  The ``dicom-standard``
package (innolitics, MIT, PyPI 0.1.0) parses the standard's DocBook XML into
``standard/confidentiality_profile_attributes.json`` with one key per column
(basicProfile, rtnUIDsOpt, rtnDevIdOpt, ..., cleanDescOpt).  This script
turns that file into a small committed Python module, so Hilum needs neither
the package nor the JSON at run time.

Usage::

    pip download --no-deps dicom-standard==0.1.0 -d /tmp/ds
    python tools/gen_deid_profile.py /tmp/ds/dicom_standard-0.1.0-py3-none-any.whl
    ruff format app/hilum/dicom/deid_profile.py
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

MEMBER = "dicom_standard-0.1.0.data/data/standard/confidentiality_profile_attributes.json"
OUT = Path(__file__).resolve().parents[1] / "app" / "hilum" / "dicom" / "deid_profile.py"
OPTIONS = ("rtnSafePrivOpt", "rtnUIDsOpt", "rtnDevIdOpt", "rtnInstIdOpt", "rtnPatCharsOpt", "rtnLongFullDatesOpt",
           "rtnLongModifDatesOpt", "cleanDescOpt", "cleanStructContOpt", "cleanGraphOpt")  # fmt: skip


def load(source: str) -> list[dict[str, str]]:
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as z:
            return json.loads(z.read(MEMBER))
    return json.loads(Path(source).read_text())


def main(source: str) -> None:
    rows = load(source)
    lines = [
        '"""PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes), GENERATED: do not edit.',
        "",
        "Made by ``tools/gen_deid_profile.py`` from innolitics' dicom-standard 0.1.0",
        "(``confidentiality_profile_attributes.json``, MIT, parsed from the standard's XML).",
        "Each row: tag pattern (8 hex digits, ``x`` for a repeating-group digit, or ``private``),",
        "name, Basic Profile action, {option column: action}.  Actions as in PS3.15 E.1.1:",
        "D dummy, Z zero length or dummy, X remove, K keep, C clean, U replace UID; compound ones",
        '("X/Z", "X/Z/D", "X/Z/U*"...) mean the first that keeps the IOD conformant.',
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "ROWS: tuple[tuple[str, str, str, dict[str, str]], ...] = (",
    ]
    for r in sorted(rows, key=lambda r: r["id"]):
        tag = "private" if r["id"].startswith("gggg") else r["id"].lower()
        opts = {k: r[k] for k in OPTIONS if r.get(k)}
        lines.append(f"    ({tag!r}, {r['name']!r}, {r['basicProfile']!r}, {opts!r}),")
    lines.append(")")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
