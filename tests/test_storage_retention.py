"""Retention and purge (hilum.archive.retention) and ``hilum protect``.

Real archives in temporary data folders (SQLite, and the suite's PostgreSQL
server), studies from the project's generator, copies elsewhere recorded the
way the tiers and the forwarding service record them (``storage.record_copy``),
a filesystem tier standing in for ``archive.tiers`` where a test needs one
(Helper 2's tiers module offers the same calls), a kill -9 of a real process
in the middle of a purge, and ``hilum check`` after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hilum.archive import Archive, storage
from hilum.archive.blobs import file_checksum
from hilum.archive.policy import parse_policies
from hilum.archive.retention import RetentionRules, parse, plan, run_once, usage
from hilum.archive.schema import blob_copies, forward_queue, instances, series, studies
from hilum.cli import main as cli_main
from hilum.dicom.generator import DOE, MUELLER, PAPADOPOULOU, generate_ct_series, make_study
from hilum.errors import ConfigError, HilumError

LATER = datetime.now(UTC) + timedelta(days=400)  # "now" of a pass that finds every study 400 days old


# --------------------------------------------------------------------------- helpers


def add_study(
    archive: Archive, accession: str, *, modality: str = "CT", patient: Any = MUELLER, slices: int = 2
) -> str:
    """Ingest a small generated study; its StudyInstanceUID."""
    study = make_study(patient, accession=accession, seed="retention")
    uid = ""
    for ds in generate_ct_series(study, rows=16, columns=16, slices=slices, series_description=accession):
        ds.Modality = modality
        res = archive.ingest(ds)
        assert res.ok, res.reason
        uid = res.study_instance_uid or ""
    return uid


def copy_to(
    archive: Archive,
    study_uid: str,
    location: str = "peer:backup",
    *,
    verified: bool = True,
    retain_until: datetime | None = None,
    tiers: Any = None,
) -> None:
    """Record a copy of every instance of the study at ``location`` (written to ``tiers`` when given)."""
    rows = archive.instances(study_uid=study_uid)
    for r in rows:
        key, checksum, size = "", file_checksum_of(r["path"]), 0
        if tiers is not None:
            key, checksum, size = tiers.put(location.split(":", 1)[1], r["_blob_key"], r["path"])
        with archive.transaction() as conn:
            pk = conn.execute(select(instances.c.pk).where(instances.c.sop_uid == r["SOPInstanceUID"])).scalar_one()
            storage.record_copy(
                conn, pk, location, key=key, checksum=checksum, size=size, verified=verified, retain_until=retain_until
            )


def file_checksum_of(path: Path) -> str:
    from hilum.archive.blobs import blob_checksum

    return blob_checksum(Path(path).read_bytes())


def state(archive: Archive, study_uid: str) -> list[tuple[bool, bool]]:
    """``(online, its online file exists)`` of each instance of the study (empty: the study is gone)."""
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.online, instances.c.blob_key)
            .select_from(
                instances.join(series, series.c.pk == instances.c.series_fk).join(
                    studies, studies.c.pk == series.c.study_fk
                )
            )
            .where(studies.c.study_uid == study_uid)
        ).all()
    return [(bool(r[0]), archive.blobs.exists(r[1])) for r in rows]


def rules(text: str) -> RetentionRules:
    return parse(tomllib.loads(text), text, "hilum.toml")


def offline_held(archive: Archive) -> set[str]:
    """SOP Instance UIDs of the offline instances that have a verified copy elsewhere."""
    with archive.engine.connect() as conn:
        return {
            r[0]
            for r in conn.execute(
                select(instances.c.sop_uid)
                .where(instances.c.online.is_(False))
                .where(
                    select(blob_copies.c.pk)
                    .where(blob_copies.c.instance_fk == instances.c.pk, blob_copies.c.verified_at.is_not(None))
                    .exists()
                )
            )
        }


def assert_clean(archive: Archive) -> None:
    """``hilum check`` finds nothing wrong.  An offline instance with a verified copy elsewhere is no
    problem: the tiers' check counts it as offline; the check of an archive without tiers support
    (this branch before the merge) calls it missing, which is allowed here for those instances only."""
    report = archive.check()
    missing = set(report.missing)
    if not hasattr(report, "offline"):
        missing -= offline_held(archive)
    assert not (missing or report.orphans or report.corrupt or report.temporaries or report.unchecked), (
        missing,
        report.orphans,
        report.corrupt,
        report.temporaries,
        report.unchecked,
    )


class DirTiers:
    """A filesystem tier set with the calls ``archive.tiers`` offers (names, put, get, delete with write-once)."""

    def __init__(self, root: Path, names: list[str]):
        self.root = root
        self._names = names
        self.deleted: list[tuple[str, str]] = []

    def names(self) -> list[str]:
        return list(self._names)

    def put(self, name: str, key: str, path: Path) -> tuple[str, str, int]:
        dest = self.root / name / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = Path(path).read_bytes()
        dest.write_bytes(data)
        from hilum.archive.blobs import blob_checksum

        assert blob_checksum(dest.read_bytes()) == blob_checksum(data)
        return key, blob_checksum(data), len(data)

    def get(self, name: str, key: str) -> bytes:
        return (self.root / name / key).read_bytes()

    def delete(self, name: str, key: str, retain_until: datetime | None) -> None:
        if retain_until is not None and retain_until > datetime.now(UTC):
            raise HilumError(f"write-once: {key} is kept until {retain_until}")
        (self.root / name / key).unlink()
        self.deleted.append((name, key))


# --------------------------------------------------------------------------- parsing


def test_absent_section_purges_nothing(archive: Archive) -> None:
    r = parse({}, "", "hilum.toml")
    assert r == RetentionRules() and not r.active
    add_study(archive, "A1")
    report = run_once(archive, r, now=LATER)
    assert report.task == "retention" and report.actions == [] and report.errors == []


def test_rules_parse_through_the_policy_loader() -> None:
    text = textwrap.dedent("""\
        [retention]
        high_watermark = 90
        low_watermark = 75.5
        capacity_bytes = 1000000
        require_copy = false

        [[purge]]
        name = "old-cr"
        min_age_days = 365
        modalities = ["cr", "DX"]

        [[purge]]
        idle_days = 30.5
        scope = "everywhere"
        """)
    pol = parse_policies(tomllib.loads(text), text, "hilum.toml")
    r = pol.get("retention")
    assert (r.high_watermark, r.low_watermark, r.capacity_bytes, r.require_copy) == (90, 75.5, 1_000_000, False)
    assert [(p.name, p.min_age_days, p.idle_days, p.modalities, p.scope) for p in r.purge] == [
        ("old-cr", 365, 0, ("CR", "DX"), "online"),
        ("purge-2", 0, 30.5, (), "everywhere"),
    ]
    assert rules("[retention]\nhigh_watermark = 85\n").low_watermark == 75  # default: 10 points below


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[retention]\nhigh_watermark = 90\nlow_watermak = 80\n", 3, "low_watermak: unknown setting"),
        ('[retention]\nhigh_watermark = "90"\n', 2, "high_watermark: must be a percentage"),
        ("[retention]\nhigh_watermark = 120\n", 2, "must be a percentage from 0 to 100, not 120"),
        ("[retention]\nhigh_watermark = 80\nlow_watermark = 80\n", 3, "must be below high_watermark (80)"),
        ("[retention]\ncapacity_bytes = -1\n", 2, "capacity_bytes: must be a whole number"),
        ('[retention]\nrequire_copy = "no"\n', 2, "require_copy: must be true or false"),
        ("[retention]\nhigh_watermark = true\n", 2, "high_watermark: must be a percentage"),
        (
            '[[purge]]\nname = "a"\nmin_age_days = 1\n\n[[purge]]\nname = "b"\nmin_age_dys = 3\n',
            7,
            "[[purge]] #2 min_age_dys: unknown setting",
        ),
        ('[[purge]]\nmin_age_days = 30\nscope = "tier"\n', 3, "scope: must be one of 'online', 'everywhere'"),
        ('[[purge]]\nmin_age_days = "30"\n', 2, "min_age_days: must be a number of days >= 0"),
        ("[[purge]]\nmin_age_days = inf\n", 2, "min_age_days: must be a number of days >= 0, not inf"),
        ("[[purge]]\nidle_days = nan\n", 2, "idle_days: must be a number of days >= 0"),
        ('[[purge]]\nmin_age_days = 3\nmodalities = "CT"\n', 3, "modalities: must be a list"),
        ('[[purge]]\nname = "x"\nmodalities = ["CT"]\n', 1, "needs min_age_days or idle_days"),
        (
            '[[purge]]\nname = "x"\nmin_age_days = 1\n[[purge]]\nname = "x"\nidle_days = 1\n',
            5,
            "another rule is called 'x'",
        ),
        ("[purge]\nmin_age_days = 1\n", 1, "write [[purge]], not [purge]"),
        ("retention = 3\n", None, "[retention]: must be a table"),
    ],
)
def test_bad_rules_are_refused_with_the_line(text: str, line: int | None, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policies(tomllib.loads(text), text, "/etc/hilum.toml")
    msg = str(err.value)
    assert words in msg
    if line is not None:
        assert msg.startswith(f"/etc/hilum.toml line {line}: "), msg


# --------------------------------------------------------------------------- online purge


def test_online_purge_by_age_drops_the_files_keeps_the_study(archive: Archive) -> None:
    held = add_study(archive, "H1")
    alone = add_study(archive, "N1", patient=DOE)
    copy_to(archive, held, "tier:vault")
    files = [r["path"] for r in archive.instances(study_uid=held)]
    size = sum(p.stat().st_size for p in files)
    r = rules('[[purge]]\nname = "old"\nmin_age_days = 365\n')

    assert run_once(archive, r).actions == []  # not a year old yet
    report = run_once(archive, r, now=LATER)
    assert [(a["uid"], a["rule"], a["scope"], a["instances"]) for a in report.actions] == [(held, "old", "online", 2)]
    assert report.bytes_before == size and report.instances == 2
    assert state(archive, held) == [(False, False), (False, False)]
    assert not any(p.exists() for p in files)
    assert all(online for online, _ in state(archive, alone))  # no copy elsewhere: require_copy keeps it
    assert archive.query("STUDY", {"StudyInstanceUID": held})[0]["NumberOfStudyRelatedInstances"] == 2
    skips = plan(archive, r, now=LATER).skips
    assert [(s.study.uid, s.reason) for s in skips] == [(alone, "no verified copy elsewhere (require_copy)")]
    log = storage.policy_history(archive, action="purge")
    assert [(e["uid"], e["rule"], e["instances"], e["bytes_before"], e["bytes_after"]) for e in log] == [
        (held, "old", 2, report.bytes_before, 0)
    ]
    assert "tier:vault" in log[0]["detail"]
    assert_clean(archive)
    assert run_once(archive, r, now=LATER).actions == []  # nothing online left to drop


def test_online_purge_of_a_study_held_only_by_a_peer_takes_it_out_of_this_archive(archive: Archive) -> None:
    """Nothing here retrieves from a peer, so an instance whose only copy is the peer's cannot stay as an
    offline row (it could never be read): it leaves this archive, the log naming the peer that holds it."""
    peered = add_study(archive, "P1")
    copy_to(archive, peered, "peer:backup")
    files = [r["path"] for r in archive.instances(study_uid=peered)]
    report = run_once(archive, rules('[[purge]]\nname = "old"\nmin_age_days = 365\n'), now=LATER)
    assert [(a["uid"], a["instances"]) for a in report.actions] == [(peered, 2)]
    assert archive.query("STUDY", {"StudyInstanceUID": peered}) == []
    assert not any(p.exists() for p in files)
    (entry,) = storage.policy_history(archive, action="purge")
    assert "peer:backup" in entry["detail"] and "held only at a peer" in entry["detail"]
    assert_clean(archive)


def test_an_unverified_or_partial_copy_is_not_enough(archive: Archive) -> None:
    unverified = add_study(archive, "U1")
    copy_to(archive, unverified, verified=False)
    partial = add_study(archive, "P1", patient=DOE, slices=3)
    rows = archive.instances(study_uid=partial)
    with archive.transaction() as conn:
        pk = conn.execute(select(instances.c.pk).where(instances.c.sop_uid == rows[0]["SOPInstanceUID"])).scalar_one()
        storage.record_copy(conn, pk, "tier:archive", verified=True)
    report = run_once(archive, rules("[[purge]]\nmin_age_days = 1\n"), now=LATER)
    assert report.actions == []
    assert all(o for o, _ in state(archive, unverified) + state(archive, partial))


def test_require_copy_false_deletes_what_no_one_else_holds(archive: Archive) -> None:
    held = add_study(archive, "H1")
    copy_to(archive, held, "tier:nas")
    alone = add_study(archive, "N1", patient=DOE)
    alone_files = [r["path"] for r in archive.instances(study_uid=alone)]
    report = run_once(archive, rules("[retention]\nrequire_copy = false\n[[purge]]\nmin_age_days = 30\n"), now=LATER)
    assert sorted(a["uid"] for a in report.actions) == sorted([held, alone])
    assert state(archive, held) == [(False, False), (False, False)]
    assert state(archive, alone) == [] and not archive.query("STUDY", {"StudyInstanceUID": alone})
    assert not any(p.exists() for p in alone_files)
    detail = {e["uid"]: e["detail"] for e in storage.policy_history(archive, action="purge")}
    assert "2 instance(s) held nowhere else deleted (require_copy = false)" in detail[alone]
    assert_clean(archive)


def test_modalities_and_idle_days(archive: Archive) -> None:
    cr_old = add_study(archive, "CR1", modality="CR")
    cr_used = add_study(archive, "CR2", modality="CR", patient=DOE)
    ct = add_study(archive, "CT1", patient=PAPADOPOULOU)
    for uid in (cr_old, cr_used, ct):
        copy_to(archive, uid)
    with archive.transaction() as conn:  # opened 10 days before the pass
        conn.execute(
            update(studies).where(studies.c.study_uid == cr_used).values(last_access=LATER - timedelta(days=10))
        )
    r = rules('[[purge]]\nname = "cr"\nmin_age_days = 100\nidle_days = 30\nmodalities = ["CR", "DX"]\n')
    report = run_once(archive, r, now=LATER)
    assert [a["uid"] for a in report.actions] == [cr_old]
    assert "modalities CR" in report.actions[0]["reason"]
    assert all(o for o, _ in state(archive, cr_used) + state(archive, ct))


def test_a_study_being_received_is_left_alone(archive: Archive) -> None:
    uid = add_study(archive, "R1")
    copy_to(archive, uid)
    r = rules("[retention]\nhigh_watermark = 10\nlow_watermark = 1\ncapacity_bytes = 1000\n")
    p = plan(archive, r)  # now: it just arrived
    assert p.acts == [] and [(s.study.uid, s.reason) for s in p.skips] == [(uid, "being received")]
    assert run_once(archive, r).actions == []
    assert len(run_once(archive, r, now=datetime.now(UTC) + timedelta(minutes=30)).actions) == 1


# --------------------------------------------------------------------------- watermarks


def test_watermark_purges_least_recently_used_down_to_the_low_mark(archive: Archive) -> None:
    uids = [add_study(archive, f"W{i}") for i in range(6)]  # equal sizes
    for uid in uids:
        copy_to(archive, uid)
    sizes = {uid: sum(r["path"].stat().st_size for r in archive.instances(study_uid=uid)) for uid in uids}
    total = sum(sizes.values())
    assert len(set(sizes.values())) == 1
    # Use order: W5 least recently, then W4, ... W0 most recently (touch in that order, a minute apart).
    with archive.transaction() as conn:
        for i, uid in enumerate(reversed(uids)):
            conn.execute(
                update(studies)
                .where(studies.c.study_uid == uid)
                .values(last_access=LATER - timedelta(days=1) + timedelta(minutes=i))
            )
    capacity = total  # 100% used
    text = f"[retention]\nhigh_watermark = 90\nlow_watermark = 50\ncapacity_bytes = {capacity}\n"
    r = rules(text)
    use = usage(archive, r)
    assert use["used"] == total and use["percent"] == 100.0 and use["above_high"]
    dry = run_once(archive, r, now=LATER, dry_run=True)
    assert [a["uid"] for a in dry.actions] == [uids[5], uids[4], uids[3]]  # 3 of 6 equal studies: down to 50%
    assert {a["rule"] for a in dry.actions} == {"watermark"}
    assert all(o for uid in uids for o, _ in state(archive, uid))  # the dry run changed nothing
    report = run_once(archive, r, now=LATER)
    assert [a["uid"] for a in report.actions] == [uids[5], uids[4], uids[3]]
    after = usage(archive, r)
    assert after["used"] <= capacity * 0.5 and not after["above_high"]
    assert all(o for uid in uids[:3] for o, _ in state(archive, uid))
    assert run_once(archive, r, now=LATER).actions == []  # below the high mark now
    assert_clean(archive)


def test_watermark_off_and_below_high(archive: Archive) -> None:
    uid = add_study(archive, "W1")
    copy_to(archive, uid)
    size = sum(r["path"].stat().st_size for r in archive.instances(study_uid=uid))
    assert (
        run_once(archive, rules(f"[retention]\nhigh_watermark = 0\ncapacity_bytes = {size}\n"), now=LATER).actions == []
    )
    below = rules(f"[retention]\nhigh_watermark = 90\ncapacity_bytes = {size * 2}\n")
    assert usage(archive, below)["percent"] == 50.0
    assert run_once(archive, below, now=LATER).actions == []
    fs = usage(archive, rules("[retention]\nhigh_watermark = 99.9\n"))
    assert fs["measured"] == "filesystem" and 0 < fs["used"] <= fs["capacity"]


# --------------------------------------------------------------------------- protections


def test_protected_study_and_patient_are_never_purged(archive: Archive) -> None:
    a = add_study(archive, "A1", patient=MUELLER)
    b = add_study(archive, "B1", patient=DOE)
    b2 = add_study(archive, "B2", patient=DOE)
    c = add_study(archive, "C1", patient=PAPADOPOULOU)
    for uid in (a, b, b2, c):
        copy_to(archive, uid)
    assert storage.protect(archive, "STUDY", a, reason="litigation hold")
    assert not storage.protect(archive, "study", a)  # already
    assert storage.protect(archive, "PATIENT", DOE.patient_id)
    r = rules(
        "[retention]\nhigh_watermark = 50\nlow_watermark = 0\ncapacity_bytes = 1000\n"
        '[[purge]]\nmin_age_days = 1\nscope = "everywhere"\n'
    )
    p = plan(archive, r, now=LATER)
    assert {s.study.uid: s.reason for s in p.skips} == {a: "protected", b: "protected", b2: "protected"}
    report = run_once(archive, r, now=LATER)
    assert [x["uid"] for x in report.actions] == [c]
    assert all(o for uid in (a, b, b2) for o, _ in state(archive, uid))
    assert storage.unprotect(archive, "PATIENT", DOE.patient_id)
    assert sorted(x["uid"] for x in run_once(archive, r, now=LATER).actions) == sorted([b, b2])
    assert state(archive, a) and not state(archive, b)


# --------------------------------------------------------------------------- everywhere


def test_everywhere_deletes_online_only_and_peer_copied_studies(archive: Archive) -> None:
    alone = add_study(archive, "E1")
    peered = add_study(archive, "E2", patient=DOE)
    copy_to(archive, peered, "peer:backup")
    keep = add_study(archive, "K1", modality="MR", patient=PAPADOPOULOU)
    files = [r["path"] for uid in (alone, peered) for r in archive.instances(study_uid=uid)]
    events: list[Any] = []
    archive.subscribe(events.append)
    r = rules('[[purge]]\nname = "gone"\nmin_age_days = 3650\nmodalities = ["CT"]\nscope = "everywhere"\n')
    assert run_once(archive, r, now=LATER).actions == []  # not ten years old
    report = run_once(archive, r, now=datetime.now(UTC) + timedelta(days=3651))
    assert sorted(a["uid"] for a in report.actions) == sorted([alone, peered])
    assert all(a["scope"] == "everywhere" for a in report.actions)
    assert state(archive, alone) == [] and state(archive, peered) == [] and len(state(archive, keep)) == 2
    assert not any(p.exists() for p in files)
    assert sorted(e.uid for e in events if e.kind == "deleted") == sorted([alone, peered])
    log = {e["uid"]: e for e in storage.policy_history(archive, action="purge")}
    assert "copies at peer:backup stay theirs" in log[peered]["detail"]
    with archive.engine.connect() as conn:
        assert conn.execute(select(blob_copies.c.pk)).first() is None
    assert_clean(archive)


def test_everywhere_deletes_tier_copies_but_not_write_once_ones(archive: Archive, tmp_path: Path) -> None:
    tiers = DirTiers(tmp_path / "tiers", ["archive", "vault"])
    archive.tiers = tiers  # type: ignore[attr-defined]
    tiered = add_study(archive, "T1")
    copy_to(archive, tiered, "tier:archive", tiers=tiers)
    held = add_study(archive, "T2", patient=DOE)
    until = LATER + timedelta(days=30)
    copy_to(archive, held, "tier:vault", tiers=tiers, retain_until=until)
    foreign = add_study(archive, "T3", patient=PAPADOPOULOU)
    copy_to(archive, foreign, "tier:elsewhere")
    r = rules('[[purge]]\nmin_age_days = 30\nscope = "everywhere"\n')
    p = plan(archive, r, now=LATER)
    assert {s.study.uid: s.reason for s in p.skips} == {
        held: f"write-once copy on tier vault until {until:%Y-%m-%d}",
        foreign: "a copy is on tier elsewhere, which this node does not configure: cannot delete it",
    }
    report = run_once(archive, r, now=LATER)
    assert [a["uid"] for a in report.actions] == [tiered] and report.errors == []
    assert state(archive, tiered) == [] and len(tiers.deleted) == 2
    assert not list((tmp_path / "tiers" / "archive").rglob("*.dcm"))
    assert len(list((tmp_path / "tiers" / "vault").rglob("*.dcm"))) == 2 and len(state(archive, held)) == 2
    # Once retain_until has passed, the write-once copy may go too.
    report = run_once(archive, r, now=until + timedelta(days=1))
    assert held in [a["uid"] for a in report.actions]


def queue(archive: Archive, destination: str, sop_uid: str, study_uid: str, state: str) -> None:
    now = datetime.now(UTC)
    with archive.transaction() as conn:
        conn.execute(
            forward_queue.insert().values(
                destination=destination,
                sop_uid=sop_uid,
                study_uid=study_uid,
                state=state,
                next_try=now,
                created_at=now,
                updated_at=now,
            )
        )


def test_a_study_being_forwarded_waits(archive: Archive) -> None:
    by_study = add_study(archive, "F1")
    by_sop = add_study(archive, "F2", patient=DOE)
    done = add_study(archive, "F3", patient=PAPADOPOULOU)
    for uid in (by_study, by_sop, done):
        copy_to(archive, uid)
    queue(archive, "backup", "1.2.3", by_study, "pending")
    queue(archive, "vna", archive.instances(study_uid=by_sop)[1]["SOPInstanceUID"], "", "sent")
    queue(archive, "backup", archive.instances(study_uid=done)[0]["SOPInstanceUID"], done, "committed")
    for scope in ("online", "everywhere"):
        p = plan(archive, rules(f'[[purge]]\nmin_age_days = 1\nscope = "{scope}"\n'), now=LATER)
        assert {s.study.uid: s.reason for s in p.skips} == {
            by_study: "still being forwarded to backup",
            by_sop: "still being forwarded to vna",
        }
        assert [x.study.uid for x in p.acts] == [done]


def test_files_left_by_a_purge_killed_after_its_commit_go_at_the_next_pass(archive: Archive) -> None:
    uid = add_study(archive, "L1")
    copy_to(archive, uid, "tier:vault")
    with archive.transaction() as conn:  # what a purge killed between its commit and its deletes leaves
        pks = conn.execute(select(instances.c.pk)).scalars().all()
        archive.writer.set_online(conn, list(pks), False)
    assert state(archive, uid) == [(False, True), (False, True)]
    assert_clean(archive)  # an offline instance whose file is still there is no problem
    assert run_once(archive, RetentionRules(), dry_run=True).actions == []
    assert state(archive, uid) == [(False, True), (False, True)]  # a dry run deletes nothing
    run_once(archive, RetentionRules())  # no rule: the sweep still runs
    assert state(archive, uid) == [(False, False), (False, False)]
    assert_clean(archive)


# --------------------------------------------------------------------------- with the tiers module


def test_with_a_real_filesystem_tier_purge_recall_and_delete(tmp_path: Path) -> None:
    """The whole pass (tiers, then retention) on a NAS-folder tier: the tier copies (keep_online), retention
    drops the online files, a read brings them back; an everywhere rule deletes the tier objects too."""
    pytest.importorskip("hilum.archive.tiers", reason="the tiers module (Helper 2's branch) is not merged yet")
    from hilum.archive.policy import run_pass
    from hilum.config import load_config

    nas = tmp_path / "nas"
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text(
        f'[tiers.nas]\ntype = "filesystem"\npath = "{nas}"\n'
        '[[tiering]]\nname = "copy"\nto = "nas"\nmin_age_days = 30\nkeep_online = true\n'
        '[[purge]]\nname = "ct"\nmin_age_days = 60\nmodalities = ["CT"]\n'
        '[[purge]]\nname = "mr"\nmin_age_days = 60\nmodalities = ["MR"]\nscope = "everywhere"\n'
    )
    with Archive.from_config(load_config(data)) as a:
        ct = add_study(a, "T1")
        mr = add_study(a, "T2", modality="MR", patient=DOE)
        before = {r["SOPInstanceUID"]: r["path"].read_bytes() for r in a.instances(study_uid=ct)}
        reports = {r.task: r for r in run_pass(a, a.policies, now=LATER)}
        assert reports["retention"].errors == [] and reports["tiers"].errors == []
        assert sorted(x["uid"] for x in reports["retention"].actions) == sorted([ct, mr])
        assert state(a, ct) == [(False, False), (False, False)] and state(a, mr) == []
        assert len(list(nas.rglob("*.dcm"))) == 2  # the CT study's copies; the MR study's are deleted
        assert_clean(a)
        got = {r["SOPInstanceUID"]: Path(r["path"]).read_bytes() for r in a.instances(study_uid=ct)}  # recall
        assert got == before
        assert state(a, ct) == [(True, True), (True, True)]
        assert [e["action"] for e in storage.policy_history(a)][:2] == ["recall", "purge"]
        assert_clean(a)


def test_an_everywhere_rule_wins_over_an_online_one(archive: Archive) -> None:
    young = add_study(archive, "Y1")
    copy_to(archive, young)
    r = rules(
        '[[purge]]\nname = "drop"\nmin_age_days = 30\n'
        '[[purge]]\nname = "delete"\nmin_age_days = 3650\nscope = "everywhere"\n'
    )
    assert [(p.rule, p.scope) for p in plan(archive, r, now=LATER).acts] == [("drop", "online")]
    later = datetime.now(UTC) + timedelta(days=3651)
    assert [(p.rule, p.scope) for p in plan(archive, r, now=later).acts] == [("delete", "everywhere")]
    run_once(archive, r, now=later)
    assert state(archive, young) == []
    assert [e["rule"] for e in storage.policy_history(archive, action="purge")] == ["delete"]
    assert_clean(archive)


# --------------------------------------------------------------------------- dry run


def test_dry_run_lists_and_changes_nothing(archive: Archive) -> None:
    online = add_study(archive, "D1")
    copy_to(archive, online, "tier:vault")
    gone = add_study(archive, "D2", modality="MR", patient=DOE)
    files = sorted(str(p) for p in (archive.data_dir / "blobs").rglob("*.dcm"))
    r = rules(
        '[[purge]]\nname = "ct"\nmin_age_days = 1\nmodalities = ["CT"]\n'
        '[[purge]]\nname = "mr"\nmin_age_days = 1\nmodalities = ["MR"]\nscope = "everywhere"\n'
    )
    report = run_once(archive, r, now=LATER, dry_run=True)
    assert report.dry_run
    got = {a["uid"]: a for a in report.actions}
    assert set(got) == {online, gone}
    assert (got[online]["rule"], got[online]["scope"], got[online]["instances"]) == ("ct", "online", 2)
    assert (got[gone]["rule"], got[gone]["scope"], got[gone]["instances"]) == ("mr", "everywhere", 2)
    assert got[gone]["bytes"] > 0 and "arrived" in got[gone]["reason"]
    assert sorted(str(p) for p in (archive.data_dir / "blobs").rglob("*.dcm")) == files
    assert all(o for uid in (online, gone) for o, _ in state(archive, uid))
    assert storage.policy_history(archive) == []
    assert json.dumps(report.as_dict())  # what `hilum policy run --dry-run --json` prints


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_purges_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    with Archive(tmp_path / "data", database_url=pg_url) as a:
        held = add_study(a, "PG1")
        copy_to(a, held, "tier:vault")
        gone = add_study(a, "PG2", modality="MR", patient=DOE)
        protected = add_study(a, "PG3", patient=PAPADOPOULOU)
        copy_to(a, protected, "tier:vault")
        storage.protect(a, "PATIENT", PAPADOPOULOU.patient_id)
        r = rules(
            '[[purge]]\nname = "ct"\nmin_age_days = 1\nmodalities = ["CT"]\n'
            '[[purge]]\nname = "mr"\nmin_age_days = 1\nmodalities = ["MR"]\nscope = "everywhere"\n'
        )
        report = run_once(a, r, now=LATER)
        assert sorted(x["uid"] for x in report.actions) == sorted([held, gone]) and report.errors == []
        assert state(a, held) == [(False, False), (False, False)] and state(a, gone) == []
        assert all(o for o, _ in state(a, protected))
        assert len(storage.policy_history(a, action="purge")) == 2
        assert_clean(a)


# --------------------------------------------------------------------------- kill -9 in the middle

_PURGER = textwrap.dedent("""\
    import sys, tomllib
    from datetime import datetime
    from hilum.archive import Archive
    from hilum.archive.retention import parse, run_once
    text = open(sys.argv[2]).read()
    rules = parse(tomllib.loads(text), text, sys.argv[2])
    with Archive(sys.argv[1]) as a:
        def progress(done, total):
            print(done, total, flush=True)
        run_once(a, rules, now=datetime.fromisoformat(sys.argv[3]), progress=progress)
    print("finished", flush=True)
    """)


def test_kill_9_in_the_middle_of_a_purge_leaves_a_clean_archive(data_dir: Path, tmp_path: Path) -> None:
    with Archive(data_dir) as a:
        ct = [add_study(a, f"K{i}", patient=[MUELLER, DOE, PAPADOPOULOU][i % 3]) for i in range(24)]
        mr = [add_study(a, f"M{i}", modality="MR", patient=DOE) for i in range(12)]
        for uid in ct + mr[:6]:
            copy_to(a, uid, "tier:vault" if uid in ct else "peer:backup")
        copies = {uid: [r["SOPInstanceUID"] for r in a.instances(study_uid=uid)] for uid in ct + mr}
    text = (
        '[[purge]]\nname = "ct"\nmin_age_days = 1\nmodalities = ["CT"]\n'
        '[[purge]]\nname = "mr"\nmin_age_days = 1\nmodalities = ["MR"]\nscope = "everywhere"\n'
    )
    (tmp_path / "rules.toml").write_text(text)
    script = tmp_path / "purger.py"
    script.write_text(_PURGER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "app")}
    killed_after: list[int] = []
    for stop_at in (3, 9):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(data_dir), str(tmp_path / "rules.toml"), LATER.isoformat()],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        seen = 0
        for line in proc.stdout:
            if line.startswith("finished"):
                break
            seen += 1
            if seen >= stop_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        killed_after.append(seen)
        assert proc.returncode == -signal.SIGKILL, "the purge finished before it could be killed"
    assert killed_after == [3, 9]
    # After the kills: `hilum check` (the real command) is clean, and every study left is readable or recallable.
    out = subprocess.run(
        [sys.executable, "-m", "hilum", "check", "--data", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    got = json.loads(out.stdout)
    assert out.returncode == (0 if got["clean"] else 1), out.stdout + out.stderr
    with Archive(data_dir) as a:
        # (Before the tiers branch is merged, check calls an offline instance held elsewhere "missing".)
        assert set(got["missing"]) <= offline_held(a)
        assert not (got["orphans"] or got["corrupt"] or got["temporaries"] or got["unchecked"]), got
        purged = {e["uid"] for e in storage.policy_history(a, action="purge")}
        assert len(purged) >= 9
        for uid, sops in copies.items():
            rows = state(a, uid)
            if not rows:
                assert uid in mr and uid in purged  # deleted everywhere, logged
                continue
            assert len(rows) == len(sops)
            with a.engine.connect() as conn:
                found = conn.execute(
                    select(instances.c.pk, instances.c.online, instances.c.blob_key, instances.c.checksum).where(
                        instances.c.sop_uid.in_(sops)
                    )
                ).all()
                for pk, online, key, checksum in found:
                    if online:  # readable: its file is there, intact
                        assert file_checksum(a.blobs.path(key), checksum)
                    else:  # recallable: a verified copy elsewhere, and the purge was logged
                        assert any(c["verified_at"] for c in storage.copies_of(conn, pk)) and uid in purged
        # A last pass finishes the job: every CT study offline, every MR study without copies deleted.
        rules_ = parse(tomllib.loads(text), text, "rules.toml")
        run_once(a, rules_, now=LATER)
        assert all(not o and not f for uid in ct for o, f in state(a, uid))
        assert all(not state(a, uid) for uid in mr)
        assert_clean(a)


# --------------------------------------------------------------------------- hilum protect / unprotect


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_protect_cli(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Archive(data_dir) as a:
        uid = add_study(a, "C1")
        add_study(a, "C2")
    d = ("--data", str(data_dir))
    assert run_cli(capsys, "protect", *d, "--list") == (0, "nothing is protected\n", "")
    rc, out, _ = run_cli(capsys, "protect", *d, "STUDY", uid, "--reason", "litigation hold")
    assert (rc, out) == (0, f"protected study {uid}\n")
    rc, out, _ = run_cli(capsys, "protect", *d, "study", uid)
    assert (rc, out) == (0, f"study {uid} was protected already\n")
    rc, out, _ = run_cli(capsys, "protect", *d, "PATIENT", MUELLER.patient_id, "--json")
    got = json.loads(out)
    assert rc == 0 and got["changed"] and got["present"] == {"studies": 2, "instances": 4}
    rc, out, _ = run_cli(capsys, "protect", *d, "--list", "--json")
    listed = json.loads(out)
    assert rc == 0 and [(p["level"], p["uid"], p["reason"]) for p in listed] == [
        ("STUDY", uid, "litigation hold"),
        ("PATIENT", MUELLER.patient_id, ""),
    ]
    assert listed[0]["present"] == {"studies": 1, "instances": 2} and listed[0]["created_at"]
    rc, out, _ = run_cli(capsys, "protect", *d, "--list")
    assert rc == 0 and "litigation hold" in out and "1 study, 2 instances" in out
    with Archive(data_dir) as a:
        assert len(storage.protected_study_pks(a.engine.connect())) == 2

    # Not in the archive: refused unless --force.
    rc, _, err = run_cli(capsys, "protect", *d, "STUDY", "1.2.3.4")
    assert rc == 1 and "no study 1.2.3.4 in the archive (--force" in err
    rc, out, _ = run_cli(capsys, "protect", *d, "STUDY", "1.2.3.4", "--force", "--json")
    assert rc == 0 and json.loads(out)["present"] is None

    rc, out, _ = run_cli(capsys, "unprotect", *d, "STUDY", uid)
    assert (rc, out) == (0, f"unprotected study {uid}\n")
    rc, _, err = run_cli(capsys, "unprotect", *d, "STUDY", uid)
    assert rc == 1 and "is not protected" in err
    rc, out, _ = run_cli(capsys, "unprotect", *d, "PATIENT", MUELLER.patient_id, "--json")
    assert rc == 0 and json.loads(out) == {
        "level": "PATIENT",
        "uid": MUELLER.patient_id,
        "issuer": "",
        "protected": False,
        "changed": True,
    }


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("protect", "SERIES", "1.2.3"), "say STUDY or PATIENT, not 'SERIES'"),
        (("protect",), "say STUDY or PATIENT, and a UID"),
        (("protect", "STUDY"), "missing the Study Instance UID"),
        (("protect", "STUDY", "1.2.abc"), "not a UID (digits and dots)"),
        (("protect", "STUDY", "1." + "2" * 70), "too long"),
        (("protect", "PATIENT", "MRN*"), "no wildcards"),
        (("protect", "STUDY", "1.2.3", "--issuer", "X"), "--issuer goes with PATIENT"),
        (("protect", "--list", "STUDY", "1.2.3"), "--list takes no other argument"),
        (("unprotect", "FOO", "1.2"), "say STUDY or PATIENT"),
    ],
)
def test_protect_cli_usage_errors(
    data_dir: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], words: str
) -> None:
    Archive(data_dir).close()
    rc, out, err = run_cli(capsys, *args, "--data", str(data_dir))
    assert rc == 2 and out == "" and words in err


def test_protect_cli_needs_a_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "protect", "--data", str(tmp_path / "none"), "--list")
    assert rc == 1 and "no data folder" in err
    assert not (tmp_path / "none").exists()


def test_protect_cli_as_a_process(data_dir: Path) -> None:
    with Archive(data_dir) as a:
        uid = add_study(a, "P1")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "app")}

    def hilum(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hilum", *args], capture_output=True, text=True, env=env, timeout=120
        )

    done = hilum("--data", str(data_dir), "protect", "STUDY", uid, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["changed"] is True
    assert hilum("protect", "--help").returncode == 0
    assert hilum("protect", "STUDY", uid, "--bogus", "--data", str(data_dir)).returncode == 2
    assert hilum("unprotect", "STUDY", "9.9", "--data", str(data_dir)).returncode == 1


# --------------------------------------------------------------------------- kill -9 of the node


def test_kill_9_of_the_node_in_the_middle_of_its_purge(tmp_path: Path) -> None:
    """``hilum serve`` purging many studies (its policy service) is killed; after it: check clean, every
    study readable (online, or brought back from the NAS tier), the purge finished by the next pass."""
    pytest.importorskip("hilum.archive.tiers", reason="the node runs the policies once the tiers branch is merged")
    import sqlite3

    from conftest import free_port
    from hilum.config import load_config

    nas = tmp_path / "nas"
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text(
        f'[storage]\ninterval = 1\n[tiers.nas]\ntype = "filesystem"\npath = "{nas}"\n'
        '[[purge]]\nname = "old"\nmin_age_days = 30\n'
    )
    with Archive.from_config(load_config(data)) as a:
        uids = [add_study(a, f"N{i}", patient=[MUELLER, DOE, PAPADOPOULOU][i % 3], slices=1) for i in range(60)]
        for uid in uids:
            copy_to(a, uid, "tier:nas", tiers=a.tiers)
        old = datetime.now(UTC) - timedelta(days=60)
        with a.transaction() as conn:
            conn.execute(update(studies).values(created_at=old, updated_at=old))
        checksums = {
            r["SOPInstanceUID"]: file_checksum_of(r["path"]) for uid in uids for r in a.instances(study_uid=uid)
        }
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "app"),
        "HILUM_POLICY_FIRST_PASS": "0.2",
        "HILUM_POLICY_SETTLE": "0",
    }
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(data),
            "--dicom-port",
            ports[0],
            "--web-port",
            ports[1],
            "--hl7-port",
            ports[2],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    purged = 0
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=90)
        while datetime.now(UTC) < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True, timeout=1) as db:
                    purged = db.execute("SELECT count(*) FROM policy_log WHERE action = 'purge'").fetchone()[0]
            except sqlite3.OperationalError:
                purged = 0
            if purged >= 5:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert 5 <= purged < 60, f"killed after {purged} purges: not in the middle"
    out = subprocess.run(
        [sys.executable, "-m", "hilum", "check", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    got = json.loads(out.stdout)
    assert out.returncode == 0 and got["clean"] is True, out.stdout + out.stderr
    with Archive.from_config(load_config(data)) as a:
        offline = sum(1 for uid in uids for o, _ in state(a, uid) if not o)
        assert offline >= 5
        run_once(a, a.policies.get("retention"))  # the next pass finishes the job
        assert all(not o and not f for uid in uids for o, f in state(a, uid))
        assert_clean(a)
        for uid in uids[::7]:  # read back from the tier, intact
            for r in a.instances(study_uid=uid):
                assert file_checksum_of(r["path"]) == checksums[r["SOPInstanceUID"]]
        assert_clean(a)
