"""Storage tiers against real servers: s3rver (S3, from installer/npm), a second file system, DCMTK getscu.

Studies move to a tier by rule (copied, read back, recorded, then the online
files dropped), come back transparently when read (path, instances, WADO-RS,
C-GET), write-once tiers refuse overwrites and early deletes, a tier that is
down gives a clear error, and a move killed with SIGKILL leaves a clean archive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import free_port, s3rver_process, wait_port
from hilum.archive import Archive, storage
from hilum.archive.blobs import blob_checksum
from hilum.archive.policy import parse_policies
from hilum.archive.schema import blob_copies, instances
from hilum.archive.tiers import TierError, WriteOnceError, run_once
from hilum.config import load_config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study, write_dataset
from hilum.errors import ConfigError, StorageFull

DCMTK = Path("/usr/bin")
LATER = timedelta(days=31)


def _study(folder: Path, seed: str, n: int = 4, size: int = 64) -> tuple[str, list[Path]]:
    study = make_study(MUELLER, accession=f"T{seed}"[:16], seed=seed)
    series = generate_ct_series(study, rows=size, columns=size, slices=n)
    folder.mkdir(parents=True, exist_ok=True)
    return study.uid, [write_dataset(ds, folder / f"{seed}-{i}.dcm") for i, ds in enumerate(series)]


def _s3_toml(endpoint: str, bucket: str, prefix: str, **extra: object) -> str:
    lines = [
        f'[tiers.archive]\ntype = "s3"\nendpoint_url = "{endpoint}"\nbucket = "{bucket}"\nprefix = "{prefix}"',
        'access_key = "S3RVER"\nsecret_key = "S3RVER"',
    ]
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


RULE = '\n[[tiering]]\nname = "old"\nto = "archive"\nmin_age_days = 30\n'


def _open(data: Path, toml: str) -> Archive:
    data.mkdir(parents=True, exist_ok=True)
    (data / "hilum.toml").write_text(toml)
    return Archive.from_config(load_config(data))


def _online(a: Archive) -> dict[str, bool]:
    with a.engine.connect() as conn:
        return {r[0]: bool(r[1]) for r in conn.execute(select(instances.c.sop_uid, instances.c.online))}


def _copies(a: Archive) -> list[tuple[str, str, bool]]:
    with a.engine.connect() as conn:
        return [
            (r[0], r[1], r[2] is not None)
            for r in conn.execute(select(blob_copies.c.location, blob_copies.c.key, blob_copies.c.verified_at))
        ]


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("toml", "line", "words"),
    [
        ('[tiers.a]\ntype = "s3"\nbucket = "b"\nbuckett = "c"\n', 4, "unknown setting"),
        ('[tiers.a]\ntype = "tape"\n', 2, "type must be one of"),
        ('[tiers.a]\ntype = "filesystem"\npath = "relative/dir"\n', 3, "absolute path"),
        ('[tiers.a]\ntype = "s3"\n', 1, "needs a bucket"),
        ('[tiers.a]\ntype = "s3"\nbucket = "b"\nwrite_once = "yes"\n', 4, "true or false"),
        ('[tiers.a]\ntype = "s3"\nbucket = "b"\naccess_key_env = "HILUM_NO_SUCH_VAR_17"\n', 4, "is not set"),
        (
            '[tiers.a]\ntype = "s3"\nbucket = "b"\n\n[[tiering]]\nto = "a"\n\n[[tiering]]\nto = "archive"\n',
            9,
            "no tier called 'archive'",
        ),
        ('[tiers.a]\ntype = "s3"\nbucket = "b"\n[[tiering]]\nto = "a"\nmin_age_days = -1\n', 6, "0 or more"),
        ('[tiers.a]\ntype = "s3"\nbucket = "b"\n[[tiering]]\nto = "a"\nmodalites = ["CT"]\n', 6, "unknown setting"),
    ],
)
def test_a_rule_with_a_typo_is_refused_with_its_line(toml: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policies(tomllib.loads(toml), toml, "hilum.toml")
    assert f"hilum.toml line {line}:" in str(err.value)
    assert words in str(err.value)


def test_no_tiers_no_rules_nothing_happens(archive: Archive, tmp_path: Path) -> None:
    uid, files = _study(tmp_path / "in", "none", n=2)
    for f in files:
        assert archive.ingest(f).ok
    assert archive.tiers.names() == [] and not archive.tiers
    rules = parse_policies({}).get("tiers")
    report = run_once(archive, rules, now=storage.utcnow() + LATER)
    assert report.actions == [] and report.errors == []
    assert all(_online(archive).values())


def test_the_node_refuses_to_start_on_a_typo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text('[tiers.archive]\ntype = "s3"\nbucket = "b"\n\n[[tiering]]\nto = "archiv"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(data),
            "--dicom-port",
            str(free_port()),
            "--web-port",
            str(free_port()),
            "--hl7-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "line 6:" in proc.stderr and "no tier called 'archiv'" in proc.stderr


# ---------------------------------------------------------------- S3: move, recall, write-once


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_toml(request: pytest.FixtureRequest) -> str:
    """The index: SQLite in the data folder, or a fresh database on the suite's PostgreSQL server."""
    if request.param == "sqlite":
        return ""
    return f'[archive]\ndatabase_url = "{request.getfixturevalue("pg_url")}"\n\n'


def test_a_study_moves_to_s3_and_comes_back_when_opened(
    s3_server: tuple[str, str], tmp_path: Path, database_toml: str
) -> None:
    endpoint, bucket = s3_server
    prefix = f"move-{free_port()}/"
    a = _open(tmp_path / "data", database_toml + _s3_toml(endpoint, bucket, prefix) + RULE)
    try:
        uid, files = _study(tmp_path / "in", "move", n=5)
        originals = {}
        for f in files:
            res = a.ingest(f)
            assert res.ok
            originals[res.sop_instance_uid] = f.read_bytes()
        young = run_once(a, a.policies.get("tiers"))
        assert young.actions == []  # 30 days not yet
        dry = run_once(a, a.policies.get("tiers"), dry_run=True, now=storage.utcnow() + LATER)
        assert [x["uid"] for x in dry.actions] == [uid] and dry.actions[0]["instances"] == 5
        assert all(_online(a).values()) and _copies(a) == []

        report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert report.errors == [] and [x["uid"] for x in report.actions] == [uid]
        assert not any(_online(a).values())
        assert not any(a.blobs.exists(r["_blob_key"]) for r in a.query("IMAGE", {"StudyInstanceUID": uid}))
        copies = _copies(a)
        assert len(copies) == 5 and all(
            loc == "tier:archive" and ok and key.startswith(prefix) for loc, key, ok in copies
        )
        assert [h["action"] for h in storage.policy_history(a)] == ["move"]
        check = a.check()
        assert check.clean and check.offline == 5, check

        rows = a.instances(study_uid=uid)  # opened: back online, verified
        assert {r["SOPInstanceUID"]: Path(r["path"]).read_bytes() for r in rows} == originals
        assert all(_online(a).values())
        assert [h["action"] for h in storage.policy_history(a)] == ["recall", "move"]
        assert a.check().clean
        # Recalled: cached online; the rule does not move it again (retention may purge it later).
        again = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert again.actions == [] and all(_online(a).values())
    finally:
        a.close()


def test_each_read_path_brings_its_instance_back(s3_server: tuple[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "paths/") + RULE)
    try:
        uid, files = _study(tmp_path / "in", "paths", n=3)
        sops = [a.ingest(f).sop_instance_uid for f in files]
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert not any(_online(a).values())
        assert a.read(sops[0]) == files[0].read_bytes()
        assert a.path(sops[1]).read_bytes() == files[1].read_bytes()
        row = a.query("IMAGE", {"SOPInstanceUID": sops[2]})[0]
        assert a.read_outgoing(row) == files[2].read_bytes()
        assert all(_online(a).values())
    finally:
        a.close()


def test_write_once_s3_never_overwrites_nor_deletes_early(s3_server: tuple[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "worm/", write_once=True, retention_days=3650) + RULE)
    try:
        key, checksum, size = a.tiers.put("archive", "x/y.dcm", b"first version")
        assert key == "worm/x/y.dcm" and size == 13 and checksum == blob_checksum(b"first version")
        assert a.tiers.put("archive", "x/y.dcm", b"first version")[0] == key  # the same content: a retried copy
        with pytest.raises(WriteOnceError):
            a.tiers.put("archive", "x/y.dcm", b"another version")
        assert a.tiers.get("archive", key) == b"first version"
        with pytest.raises(WriteOnceError):
            a.tiers.delete("archive", key, None)  # the object carries its retention date
        with pytest.raises(WriteOnceError):
            a.tiers.delete("archive", key, storage.utcnow() - timedelta(days=1))
        assert a.tiers.get("archive", key) == b"first version"
        # A moved study's copies carry retain_until.
        uid, files = _study(tmp_path / "in", "worm", n=2)
        for f in files:
            assert a.ingest(f).ok
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        with a.engine.connect() as conn:
            until = [storage.as_utc(r[0]) for r in conn.execute(select(blob_copies.c.retain_until))]
        assert len(until) == 2 and all(u is not None and u > storage.utcnow() + timedelta(days=3600) for u in until)
    finally:
        a.close()


def test_a_plain_s3_tier_deletes(s3_server: tuple[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "plain/"))
    try:
        key, _, _ = a.tiers.put("archive", "a.dcm", b"one")
        a.tiers.put("archive", "a.dcm", b"two")  # not write-once: overwritten
        assert a.tiers.get("archive", key) == b"two"
        a.tiers.delete("archive", key, None)
        with pytest.raises(TierError):
            a.tiers.get("archive", key)
    finally:
        a.close()


def test_keep_online_copies_only(s3_server: tuple[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "keep/") + RULE + "keep_online = true\n")
    try:
        uid, files = _study(tmp_path / "in", "keep", n=3)
        for f in files:
            assert a.ingest(f).ok
        report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert [x["uid"] for x in report.actions] == [uid]
        assert all(_online(a).values()) and len(_copies(a)) == 3
        with a.engine.connect() as conn:
            pk = conn.execute(select(instances.c.pk).limit(1)).scalar_one()
            from hilum.archive.schema import series

            study_pk = conn.execute(
                select(series.c.study_fk)
                .join(instances, instances.c.series_fk == series.c.pk)
                .where(instances.c.pk == pk)
            ).scalar_one()
            assert storage.study_fully_held_elsewhere(conn, study_pk) == ["tier:archive"]
        assert [h["action"] for h in storage.policy_history(a)] == ["copy"]
    finally:
        a.close()


def test_a_tier_that_is_down_gives_a_clear_error_and_keeps_the_files(tmp_path: Path) -> None:
    port = free_port()
    objects = tmp_path / "s3"
    endpoint = f"http://127.0.0.1:{port}"
    a = _open(tmp_path / "data", _s3_toml(endpoint, "hilum", "down/") + RULE)
    try:
        uid, files = _study(tmp_path / "in", "down", n=3)
        sops = [a.ingest(f).sop_instance_uid for f in files]
        # Down while moving: nothing copied, every file stays online.
        report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert report.actions == [] and report.errors and "cannot" in report.errors[0]
        assert all(_online(a).values()) and a.check().clean
        with s3rver_process(objects, port):
            report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
            assert [x["uid"] for x in report.actions] == [uid]
        # Down while reading: a clear StorageFull-style error, the instance stays offline, nothing crashes.
        with pytest.raises(StorageFull) as err:
            a.path(sops[0])
        assert isinstance(err.value, TierError) and "tier archive" in str(err.value)
        with pytest.raises(OSError):
            a.instances(study_uid=uid)
        assert not any(_online(a).values())
        with s3rver_process(objects, port):  # back up (its objects on disk): readable again
            assert a.read(sops[0]) == files[0].read_bytes()
            assert len(a.instances(study_uid=uid)) == 3
        assert all(_online(a).values()) and a.check().clean
    finally:
        a.close()


# ---------------------------------------------------------------- a second file system (NAS)


def test_filesystem_tier_move_recall_and_write_once(tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    toml = (
        f'[tiers.archive]\ntype = "filesystem"\npath = "{nas}"\nprefix = "site/"\nwrite_once = true\n'
        f"retention_days = 1\n" + RULE
    )
    a = _open(tmp_path / "data", toml)
    try:
        uid, files = _study(tmp_path / "in", "nas", n=3)
        for f in files:
            assert a.ingest(f).ok
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        on_nas = sorted(p for p in nas.rglob("*.dcm"))
        assert len(on_nas) == 3 and all(p.relative_to(nas).parts[0] == "site" for p in on_nas)
        assert all(p.stat().st_mode & 0o222 == 0 for p in on_nas)  # read-only files
        assert not any(_online(a).values()) and a.check().clean
        assert sorted(Path(r["path"]).read_bytes() for r in a.instances(study_uid=uid)) == sorted(
            f.read_bytes() for f in files
        )
        key = str(on_nas[0].relative_to(nas))
        with pytest.raises(WriteOnceError):
            a.tiers.put("archive", key[len("site/") :], b"something else")
        with pytest.raises(WriteOnceError):
            a.tiers.delete("archive", key, storage.utcnow() + timedelta(hours=23))
        a.tiers.delete("archive", key, storage.utcnow() - timedelta(seconds=1))  # retention over
        assert not (nas / key).exists()
    finally:
        a.close()


# ---------------------------------------------------------------- through the node: WADO-RS and C-GET


@pytest.mark.skipif(not (DCMTK / "getscu").exists(), reason="DCMTK getscu is needed")
def test_wado_rs_and_c_get_of_a_study_on_a_tier(s3_server: tuple[str, str], tmp_path: Path) -> None:
    from hilum.node import Node

    endpoint, bucket = s3_server
    data = tmp_path / "data"
    dport, wport = free_port(), free_port()
    toml = (
        f'[node]\naet = "TIERNODE"\ndicom_port = {dport}\nweb_port = {wport}\nhl7_port = {free_port()}\n\n'
        + _s3_toml(endpoint, bucket, "node/")
        + RULE
        + "\n[storage]\npolicies = false\n"
    )
    a = _open(data, toml)
    uid, files = _study(tmp_path / "in", "node", n=4)
    for f in files:
        assert a.ingest(f).ok
    run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
    assert not any(_online(a).values())
    a.close()
    node = Node(load_config(data))
    try:
        node.start()
        wait_port(wport)
        req = urllib.request.Request(
            f"http://127.0.0.1:{wport}/dicom-web/studies/{uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
            assert resp.status == 200
        assert all(f.read_bytes()[132:] in body for f in files)  # every instance, byte for byte after the preamble
        # Offline again (a move of the cached study, as retention would purge it): C-GET brings it back.
        with node.archive.transaction() as conn:
            pks = [r[0] for r in conn.execute(select(instances.c.pk))]
            node.archive.writer.set_online(conn, pks, False)
        for r in node.archive.query("IMAGE", {"StudyInstanceUID": uid}):
            node.archive.blobs.delete(r["_blob_key"])
        out = tmp_path / "got"
        out.mkdir()
        got = subprocess.run(
            [
                str(DCMTK / "getscu"),
                "-aet",
                "GETTER",
                "-aec",
                "TIERNODE",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={uid}",
                "-od",
                str(out),
                "127.0.0.1",
                str(dport),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert got.returncode == 0, got.stderr
        assert len(list(out.iterdir())) == 4
        assert all(_online(node.archive).values())
        assert node.archive.check().clean
    finally:
        node.stop()


# ---------------------------------------------------------------- kill -9 in the middle of a move


MOVER = textwrap.dedent("""
    import sys
    from datetime import timedelta
    from hilum.archive import Archive, storage
    from hilum.archive.tiers import run_once
    from hilum.config import load_config
    a = Archive.from_config(load_config(sys.argv[1]))
    print("moving", flush=True)
    run_once(a, a.policies.get("tiers"), now=storage.utcnow() + timedelta(days=31))
    print("done", flush=True)
""")


def test_kill_9_in_the_middle_of_a_move_leaves_a_clean_archive(tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    data = tmp_path / "data"
    a = _open(data, f'[tiers.archive]\ntype = "filesystem"\npath = "{nas}"\n' + RULE)
    originals = {}
    for seed in ("k1", "k2", "k3", "k4"):
        _uid, files = _study(tmp_path / "in", seed, n=12, size=128)
        for f in files:
            originals[a.ingest(f).sop_instance_uid] = f.read_bytes()
    a.close()
    script = tmp_path / "mover.py"
    script.write_text(MOVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "moving"
        deadline = time.monotonic() + 60
        while len(list(nas.rglob("*.dcm"))) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    a = Archive.from_config(load_config(data))
    try:
        report = a.check()
        assert report.clean, report
        assert report.instances == 48
        for sop, content in originals.items():  # every instance readable, online or from the tier
            assert a.read(sop) == content
        assert a.check().clean
        # The next pass finishes the work.
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert a.check().clean
    finally:
        a.close()


# ---------------------------------------------------------------- write-through


def test_write_through_copies_arrivals_and_a_move_then_only_drops_online_files(
    s3_server: tuple[str, str], tmp_path: Path
) -> None:
    from hilum.archive.tiers import TierService

    endpoint, bucket = s3_server
    nas = tmp_path / "nas"
    toml = (
        _s3_toml(endpoint, bucket, "wt/", write_through=True)
        + f'\n[tiers.nas]\ntype = "filesystem"\npath = "{nas}"\n'
        + RULE
    )
    a = _open(tmp_path / "data", toml)
    service = TierService(a, interval=3600, settle=0.05)
    try:
        service.start()
        uid, files = _study(tmp_path / "in", "wt", n=4)
        for f in files:
            assert a.ingest(f).ok
        deadline = time.monotonic() + 30
        while len(_copies(a)) < 4:
            assert time.monotonic() < deadline, _copies(a)
            time.sleep(0.05)
        assert {loc for loc, _, ok in _copies(a) if ok} == {"tier:archive"}
        assert all(_online(a).values())
        # Already on the tier: the rule's move drops the online files without writing again.
        report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert [x["uid"] for x in report.actions] == [uid]
        assert not any(_online(a).values()) and len(_copies(a)) == 4
        assert [h["action"] for h in storage.policy_history(a)] == ["move"]
        assert a.check().clean
        assert len(a.instances(study_uid=uid)) == 4 and all(_online(a).values())
    finally:
        service.stop()
        a.close()


def test_a_move_takes_what_this_node_lacks_from_another_tier(s3_server: tuple[str, str], tmp_path: Path) -> None:
    """Scale-out: the node applying the rules lacks the other nodes' files; it copies them tier to tier."""
    from hilum.archive.tiers import write_through

    endpoint, bucket = s3_server
    nas = tmp_path / "nas"
    toml = (
        _s3_toml(endpoint, bucket, "other/", write_through=True)
        + f'\n[tiers.nas]\ntype = "filesystem"\npath = "{nas}"\n'
        + '\n[[tiering]]\nto = "nas"\nmin_age_days = 30\n'
    )
    a = _open(tmp_path / "data", toml)
    try:
        uid, files = _study(tmp_path / "in", "other", n=3)
        for f in files:
            assert a.ingest(f).ok
        assert write_through(a).instances == 3
        rows = a.query("IMAGE", {"StudyInstanceUID": uid})
        a.blobs.delete(rows[0]["_blob_key"])  # as if another node had received this one
        report = run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert report.errors == [] and [x["uid"] for x in report.actions] == [uid]
        assert sorted(loc for loc, _, _ in _copies(a)) == ["tier:archive"] * 3 + ["tier:nas"] * 3
        assert len(list(nas.rglob("*.dcm"))) == 3
        assert not any(_online(a).values()) and a.check().clean
    finally:
        a.close()


def test_readers_at_once_recall_a_study_once(s3_server: tuple[str, str], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "many/") + RULE)
    try:
        uid, files = _study(tmp_path / "in", "many", n=6)
        for f in files:
            assert a.ingest(f).ok
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
        assert not any(_online(a).values())
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda _: sorted(Path(r["path"]).read_bytes() for r in a.instances(study_uid=uid)), range(8))
            )
        assert all(r == sorted(f.read_bytes() for f in files) for r in results)
        assert [h["action"] for h in storage.policy_history(a)] == ["recall", "move"]
        assert storage.policy_history(a)[0]["instances"] == 6
    finally:
        a.close()


def test_wado_rs_of_a_study_on_a_tier_that_is_down_is_a_503(tmp_path: Path) -> None:
    import urllib.error

    from hilum.node import Node

    port, objects = free_port(), tmp_path / "s3"
    data = tmp_path / "data"
    wport = free_port()
    toml = (
        f'[node]\naet = "DOWNNODE"\ndicom_port = {free_port()}\nweb_port = {wport}\nhl7_port = {free_port()}\n\n'
        + _s3_toml(f"http://127.0.0.1:{port}", "hilum", "down503/")
        + RULE
        + "\n[storage]\npolicies = false\n"
    )
    a = _open(data, toml)
    uid, files = _study(tmp_path / "in", "d503", n=2)
    for f in files:
        assert a.ingest(f).ok
    with s3rver_process(objects, port):
        run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
    assert not any(_online(a).values())
    a.close()
    node = Node(load_config(data))
    try:
        node.start()
        wait_port(wport)
        base = f"http://127.0.0.1:{wport}/dicom-web/studies"
        with urllib.request.urlopen(f"{base}?StudyInstanceUID={uid}", timeout=30) as resp:  # QIDO: the index
            assert resp.status == 200 and uid in resp.read().decode()
        req = urllib.request.Request(f"{base}/{uid}", headers={"Accept": 'multipart/related; type="application/dicom"'})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert err.value.code == 503 and err.value.headers.get("Retry-After")
        with s3rver_process(objects, port):
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status == 200
    finally:
        node.stop()


def test_large_objects_go_in_parts_and_come_back_whole(
    s3_server: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hilum.archive import tiers

    monkeypatch.setattr(tiers, "MULTIPART_BYTES", 5 << 20)  # S3's smallest part
    endpoint, bucket = s3_server
    a = _open(tmp_path / "data", _s3_toml(endpoint, bucket, "big/"))
    try:
        calls: list[str] = []
        client = a.tiers.backend("archive").client  # type: ignore[attr-defined]
        client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
        data = os.urandom(12 << 20)
        key, checksum, size = a.tiers.put("archive", "big.dcm", data)
        assert size == len(data) and checksum == blob_checksum(data)
        assert calls.count("CreateMultipartUpload") == 1 and calls.count("UploadPart") == 3
        assert a.tiers.get("archive", key) == data
    finally:
        a.close()


RECALLER = textwrap.dedent("""
    import sys
    from hilum.archive import Archive
    from hilum.config import load_config
    a = Archive.from_config(load_config(sys.argv[1]))
    print("recalling", flush=True)
    for uid in sys.argv[2:]:
        a.instances(study_uid=uid)
    print("done", flush=True)
""")


def test_kill_9_in_the_middle_of_a_recall_leaves_a_clean_archive(tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    data = tmp_path / "data"
    a = _open(data, f'[tiers.archive]\ntype = "filesystem"\npath = "{nas}"\n' + RULE)
    originals, uids = {}, []
    for seed in ("r1", "r2", "r3", "r4"):
        uid, files = _study(tmp_path / "in", seed, n=12, size=128)
        uids.append(uid)
        for f in files:
            originals[a.ingest(f).sop_instance_uid] = f.read_bytes()
    run_once(a, a.policies.get("tiers"), now=storage.utcnow() + LATER)
    assert not any(_online(a).values())
    a.close()
    script = tmp_path / "recaller.py"
    script.write_text(RECALLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, str(script), str(data), *uids], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "recalling"
        blobs = data / "blobs"
        deadline = time.monotonic() + 60
        while (
            sum(1 for p in blobs.rglob("*.dcm") if "tmp" not in p.parts) < 18
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    a = Archive.from_config(load_config(data))
    try:
        report = a.check()
        assert report.clean and report.instances == 48, report
        for sop, content in originals.items():
            assert a.read(sop) == content
        assert all(_online(a).values()) and a.check().clean
        assert not list((data / "blobs" / "tmp").glob("*.policy"))
    finally:
        a.close()
