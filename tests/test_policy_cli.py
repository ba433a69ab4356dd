"""``hilum policy run|status|log``: the storage policies by hand, where the bytes are, what was done.

The passes themselves are the policy modules' (their own tests); here a
policy module of the test's own, installed under the ``retention`` slot,
shows that ``run`` calls every pass with ``dry_run`` and ``--only`` as asked,
prints what it did and exits non-zero when one failed; ``status`` and ``log``
show rows made through :mod:`hilum.archive.storage`.
"""

from __future__ import annotations

import json
import sys
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hilum.archive import Archive, policy, storage
from hilum.archive.schema import instances
from hilum.cli import main as cli_main

FILES = ("CT_small.dcm", "MR_small.dcm")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def filled(data_dir: Path, pydicom_files: Path) -> dict[str, Any]:
    with Archive(data_dir) as a:
        for name in FILES:
            a.ingest(pydicom_files / name)
        studies = sorted(r["StudyInstanceUID"] for r in a.query("STUDY", {}))
        with a.engine.connect() as conn:
            pks = [r[0] for r in conn.execute(instances.select().with_only_columns(instances.c.pk))]
        with a.transaction() as conn:
            for pk in pks:
                storage.record_copy(conn, pk, "tier:archive", key=f"k/{pk}", checksum="xxh128:0", size=1000)
            storage.record_copy(conn, pks[0], "peer:backup", verified=False)
            storage.log_action(
                conn, "compress", studies[0], rule="ct", instances=1, bytes_before=5000, bytes_after=2000
            )
            storage.log_action(conn, "purge", studies[1], rule="old", instances=1, bytes_before=7000)
        storage.protect(a, "PATIENT", "PAT-1", reason="legal hold")
        return {"studies": studies, "instances": len(pks)}


class FakeRules:
    def __init__(self, names: list[str]):
        self.rules = names


@pytest.fixture
def fake_policy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A policy module in the retention slot: ``[[fake]] name = ...`` rules; records each call."""
    calls: list[dict[str, Any]] = []
    mod = types.ModuleType("hilum_test_fake_policy")

    def parse(doc: dict[str, Any], text: str, source: str) -> FakeRules:
        rules = doc.get("fake", [])
        for i, r in enumerate(rules):
            if set(r) - {"name", "fail"}:
                raise storage.rule_error(
                    source, text, "fake", "unknown key", key=sorted(set(r) - {"name", "fail"})[0], index=i
                )
        return FakeRules(
            [r["name"] for r in rules if not r.get("fail")] + ["!" + r["name"] for r in rules if r.get("fail")]
        )

    def run_once(
        archive: Archive, rules: FakeRules, *, dry_run: bool = False, now: datetime | None = None
    ) -> storage.TaskReport:
        calls.append({"dry_run": dry_run, "rules": list(rules.rules)})
        report = storage.TaskReport("retention", dry_run=dry_run)
        for name in rules.rules:
            if name.startswith("!"):
                raise RuntimeError(f"rule {name[1:]} broke")
            for st in archive.query("STUDY", {}):
                report.actions.append(
                    {
                        "uid": st["StudyInstanceUID"],
                        "rule": name,
                        "instances": 1,
                        "bytes": 2_000_000,
                        "reason": "older than 0 days",
                    }
                )
                report.instances += 1
                if not dry_run:
                    with archive.transaction() as conn:
                        storage.log_action(conn, "purge", st["StudyInstanceUID"], rule=name, instances=1)
        return report

    mod.parse, mod.run_once = parse, run_once  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hilum_test_fake_policy", mod)
    monkeypatch.setitem(policy.POLICIES, "retention", "hilum_test_fake_policy")
    return calls


def test_run_dry_run_only_and_failures(
    filled: dict[str, Any], data_dir: Path, fake_policy: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    (data_dir / "hilum.toml").write_text('[[fake]]\nname = "all"\n')
    with Archive(data_dir) as a:
        before = len(storage.policy_history(a))
    rc, out, _ = cli(capsys, "policy", "run", "--dry-run", "--data", str(data_dir))
    assert rc == 0, out
    assert fake_policy[-1] == {"dry_run": True, "rules": ["all"]}
    assert "retention: 2 studies, 2 instances (dry run: nothing changed)" in out
    assert f"would purge {filled['studies'][0]} (rule all): 1 instances, 2.0 MB — older than 0 days" in out
    with Archive(data_dir) as a:
        assert len(storage.policy_history(a)) == before  # nothing done

    rc, out, _ = cli(capsys, "policy", "run", "--dry-run", "--json", "--data", str(data_dir))
    doc = json.loads(out)
    assert rc == 0 and doc["dry_run"] and doc["ok"]
    (report,) = [r for r in doc["reports"] if r["task"] == "retention"]
    assert sorted(a["uid"] for a in report["actions"]) == filled["studies"]
    assert set(report["actions"][0]) >= {"uid", "rule", "instances", "bytes", "reason"}

    # --only another policy: the fake one is not called.
    n = len(fake_policy)
    rc, out, _ = cli(capsys, "policy", "run", "--only", "compression", "--data", str(data_dir))
    assert rc == 0 and len(fake_policy) == n

    rc, out, _ = cli(capsys, "policy", "run", "--only", "retention", "--data", str(data_dir))
    assert rc == 0 and fake_policy[-1]["dry_run"] is False
    assert "would" not in out
    with Archive(data_dir) as a:
        assert len(storage.policy_history(a, action="purge")) == 1 + 2

    with pytest.raises(SystemExit) as usage:
        cli(capsys, "policy", "run", "--only", "nonsense", "--data", str(data_dir))
    assert usage.value.code == 2 and "invalid choice" in capsys.readouterr().err

    # A node that leaves the policies to another (scale-out): run by hand all the same, and said.
    (data_dir / "hilum.toml").write_text('[storage]\npolicies = false\n\n[[fake]]\nname = "all"\n')
    rc, out, _ = cli(capsys, "policy", "run", "--dry-run", "--data", str(data_dir))
    assert rc == 0 and out.startswith("note: [storage] policies = false") and "would purge" in out

    # A failing policy: reported, exit 1, in the JSON too.
    (data_dir / "hilum.toml").write_text('[[fake]]\nname = "x"\nfail = true\n')
    rc, out, _ = cli(capsys, "policy", "run", "--data", str(data_dir))
    assert rc == 1 and "error: RuntimeError: rule x broke" in out
    rc, out, _ = cli(capsys, "policy", "run", "--json", "--data", str(data_dir))
    assert rc == 1 and json.loads(out)["ok"] is False


def test_a_rule_file_with_a_typo_is_refused_with_its_line(
    filled: dict[str, Any], data_dir: Path, fake_policy: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    (data_dir / "hilum.toml").write_text('[node]\naet = "X"\n\n[[fake]]\nname = "a"\nnmae = "b"\n')
    for verb in ("run", "status"):
        rc, out, err = cli(capsys, "policy", verb, "--data", str(data_dir))
        assert rc == 1 and not out
        assert "hilum.toml line 6: [[fake]] #1 nmae: unknown key" in err, err
    assert not fake_policy  # nothing ran
    (data_dir / "hilum.toml").write_text('[storage]\ninterval = "often"\n')
    rc, _, err = cli(capsys, "policy", "run", "--data", str(data_dir))
    assert rc == 1 and "line 2: [storage] interval: wrong type" in err
    (data_dir / "hilum.toml").write_text("[storage\n")
    rc, _, err = cli(capsys, "policy", "status", "--data", str(data_dir))
    assert rc == 1 and err.startswith("hilum: error:") and len(err.splitlines()) == 1


def test_status_shows_use_copies_compression_protections_and_the_log(
    filled: dict[str, Any], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "policy", "status", "--json", "--data", str(data_dir))
    assert rc == 0
    st = json.loads(out)
    assert st["online"]["instances"] == filled["instances"] and st["online"]["bytes"] > 0
    assert 0 < st["online"]["used_percent"] <= 100 and st["online"]["capacity_from"] == "file system"
    assert st["offline"] == {"instances": 0, "bytes": 0}
    copies = {c["location"]: c for c in st["copies"]}
    assert copies["tier:archive"] == {"location": "tier:archive", "instances": 2, "bytes": 2000, "verified": 2}
    assert copies["peer:backup"]["verified"] == 0
    assert st["compression"] == {"studies": 1, "instances": 1, "saved_bytes": 3000}
    assert [(p["level"], p["uid"], p["reason"]) for p in st["protections"]] == [("PATIENT", "PAT-1", "legal hold")]
    assert [r["action"] for r in st["recent"]] == ["purge", "compress"]
    datetime.fromisoformat(st["recent"][0]["at"])

    rc, out, _ = cli(capsys, "policy", "status", "--data", str(data_dir))
    assert rc == 0
    assert "online: 2 instances" in out and "tier:archive: 2 instances (2 verified)" in out
    assert "compression: saved 3.0 KB on 1 instances" in out
    assert "patient PAT-1 (legal hold)" in out and "no watermark purge" in out


def test_status_with_watermarks_and_capacity(
    filled: dict[str, Any], data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention's rules are Helper 3's: whatever their shape, the three settings shown are found."""
    from dataclasses import dataclass, field

    @dataclass
    class Watermarks:
        high_watermark: float = 90
        low_watermark: float = 80
        capacity_bytes: int = 0

    @dataclass
    class Rules:
        watermarks: Watermarks = field(default_factory=Watermarks)
        purge: list[str] = field(default_factory=list)

    mod = types.ModuleType("hilum_test_fake_retention")
    mod.parse = lambda doc, text, source: Rules(
        Watermarks(**doc.get("retention", {})),  # type: ignore[attr-defined]
        [p["name"] for p in doc.get("purge", [])],
    )
    mod.run_once = lambda *a, **k: storage.TaskReport("retention")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hilum_test_fake_retention", mod)
    monkeypatch.setitem(policy.POLICIES, "retention", "hilum_test_fake_retention")
    with Archive(data_dir) as a:
        size = a.stats()["bytes"]
    (data_dir / "hilum.toml").write_text(
        f"[retention]\nhigh_watermark = 70\nlow_watermark = 50\ncapacity_bytes = {size * 4}\n\n"
        '[[purge]]\nname = "a"\n[[purge]]\nname = "b"\n'
    )
    rc, out, _ = cli(capsys, "policy", "status", "--json", "--data", str(data_dir))
    on = json.loads(out)["online"]
    assert (on["high_watermark"], on["low_watermark"], on["capacity_bytes"], on["used_percent"]) == (
        70,
        50,
        size * 4,
        25.0,
    )
    assert json.loads(out)["rules"]["retention"] == 2
    rc, out, _ = cli(capsys, "policy", "status", "--data", str(data_dir))
    assert "25% of" in out and "purge from 70% down to 50%" in out and "(capacity_bytes)" in out


def test_log(filled: dict[str, Any], data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "policy", "log", "--data", str(data_dir))
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "purge" in lines[0] and "compress" in lines[1]
    assert f"study {filled['studies'][0]} (rule ct): 1 instances, 5.0 KB -> 2.0 KB" in lines[1]
    rc, out, _ = cli(capsys, "policy", "log", "--action", "compress", "--json", "--data", str(data_dir))
    rows = json.loads(out)
    assert rc == 0 and [r["action"] for r in rows] == ["compress"] and rows[0]["bytes_after"] == 2000
    rc, out, _ = cli(capsys, "policy", "log", "--action", "recall", "--data", str(data_dir))
    assert rc == 0 and "empty for recall" in out
    rc, _, err = cli(capsys, "policy", "log", "--limit", "0", "--data", str(data_dir))
    assert rc == 1 and "--limit" in err
    rc, _, err = cli(capsys, "policy", "log", "--data", str(data_dir / "nowhere"))
    assert rc == 1 and "no data folder" in err
