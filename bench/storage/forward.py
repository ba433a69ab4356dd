"""Forwarding throughput: Hilum's forwarding queue to DCMTK ``storescp`` beside DCMTK ``storescu`` sending
the same files, in the same run (issue 17, "Measure").

The CT set (512x512 16-bit slices, ~514 KB each, ``bench/dimse/ctset.py``) is
imported into a fresh archive.  Then, alternately, ``--rounds`` times:

* ``storescu``: one DCMTK ``storescu`` process, one association, sends the
  archive's blob files (the same bytes Hilum sends) to a ``storescp``;
* ``hilum-send``: :func:`hilum.dimse.scu.send` (``hilum send``) on the same
  files, one association: the project's own C-STORE SCU without the queue;
* ``hilum``: a ``[[forward]]`` rule to the same ``storescp``; the queue is
  emptied, then timed from the routing scan to the last row ``sent``
  (:func:`hilum.replication.drain`: route, claim ``--batch`` rows, one
  association per batch, the commitment context proposed and refused by
  storescp, rows marked and ``peer:`` copies recorded in the index).

``storescp`` (max PDU 128 KiB, the most it takes) writes every file (``-od``) for both, on the same file system.
Prints instances/s and MB/s of each round, the best of each, and the ratio
hilum / storescu.  Then the ingest side: ``storescu`` into a Hilum node with
no forwarding rule, with a rule to a destination that is down (routing and
retries only), and with a rule to the live ``storescp`` (sending while
receiving, on the same cores): instances/s received and the ratio to "off".

    PYTHONPATH=app .venv/bin/python bench/storage/forward.py [--n 400] [--rounds 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "dimse"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port, wait_port  # noqa: E402
from ctset import write_ct_set  # noqa: E402

from hilum.archive import Archive, forward  # noqa: E402
from hilum.archive.schema import blob_copies, forward_queue  # noqa: E402
from hilum.config import Config, Peer  # noqa: E402
from hilum.replication import drain  # noqa: E402

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK leaves Nagle on by default: ~21 instances/s here without this


class StoreSCP:
    def __init__(self, root: Path):
        self.out = root / "storescp"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoreSCP:
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "storescp"), "-aet", "STORESCP", "-pdu", "131072", "-od", str(self.out), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        wait_port(self.port)
        return self

    def clear(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)

    def count(self) -> int:
        return sum(1 for _ in self.out.iterdir())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def run_storescu(scp: StoreSCP, files: list[Path]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "storescu"), "-aec", "STORESCP", "127.0.0.1", str(scp.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr[-500:]}")
    return seconds


def run_hilum_send(scp: StoreSCP, files: list[Path]) -> float:
    """``hilum send``'s library call (:func:`hilum.dimse.scu.send`) on the same files: the project's own
    C-STORE SCU, without the queue."""
    from hilum.dimse import scu

    start = time.perf_counter()
    result = scu.send(scu.Target("127.0.0.1", scp.port, "STORESCP", "HILUM"), files)
    seconds = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"hilum send: {result.failed} failed")
    return seconds


def run_hilum(archive: Archive, cfg: Config, rules: forward.ForwardRules) -> float:
    with archive.transaction() as conn:  # a fresh queue (the marks too: the scan is part of the time)
        conn.execute(forward_queue.delete())
        conn.execute(blob_copies.delete())
    start = time.perf_counter()
    out = drain(archive, cfg, rules)["backup"]
    seconds = time.perf_counter() - start
    if out.retry or out.failed:
        raise RuntimeError(f"forwarding left {out.retry} to retry, {out.failed} failed: {out.errors[:3]}")
    return seconds


def run_ingest(root: Path, files: list[Path], mode: str, scp: StoreSCP, rnd: int) -> float:
    """storescu into a fresh Hilum node: ``off`` (no forwarding), ``down`` (a rule to a peer nobody
    listens for: routing and retries only), ``live`` (a rule to the storescp, sending while receiving).
    Seconds storescu took (the node's C-STORE responses include its indexing)."""
    from hilum.config import load_config
    from hilum.node import Node

    data = root / f"ingest-{mode}-{rnd}"
    data.mkdir()
    port = free_port()
    peer_port = scp.port if mode == "live" else free_port()
    rules = "" if mode == "off" else '[[forward]]\ndestination = "backup"\n'
    (data / "hilum.toml").write_text(
        f'[node]\naet = "HILUM"\ndicom_port = {port}\n'
        f'[peers.backup]\naet = "STORESCP"\nhost = "127.0.0.1"\nport = {peer_port}\n{rules}',
        encoding="utf-8",
    )
    cfg = load_config(data)
    with Node(cfg, only=["dimse", "forwarding"]) as node:
        start = time.perf_counter()
        proc = subprocess.run(
            [str(BIN / "storescu"), "-aec", "HILUM", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True,
            text=True,
            env=ENV,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"storescu into the node failed: {proc.stderr[-300:]}")
        if mode == "live":
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                st = forward.status(node.archive)
                if st and st[0]["sent"] == len(files):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("live forwarding did not finish")
    shutil.rmtree(data, ignore_errors=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="CT slices (default 400)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="[forwarding] batch: instances per association")
    ap.add_argument("--associations", type=int, default=2, help="[forwarding] associations per destination")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-ingest", action="store_true", help="skip the ingest-while-forwarding part")
    ap.add_argument("--ingest-n", type=int, default=2000, help="256x256 CT slices for the ingest part (default 2000)")
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if not (BIN / tool).exists():
            sys.exit(f"DCMTK {tool} is needed (Debian package dcmtk)")
    root = Path(tempfile.mkdtemp(prefix="hilum-bench-forward-"))
    try:
        files = write_ct_set(root / "ct", args.n)
        archive = Archive(root / "data")
        for f in files:
            archive.ingest(f)
        blobs = [archive.path(r["SOPInstanceUID"]) for r in archive.query("IMAGE", {})]
        size = sum(p.stat().st_size for p in blobs)
        mb = size / 1e6
        print(
            f"{len(blobs)} CT instances, {mb:.1f} MB (stored Explicit VR Little Endian), batch {args.batch}, "
            f"{args.associations} association(s) at a time"
        )
        with StoreSCP(root) as scp:
            cfg = Config(data_dir=root / "data", aet="HILUM", peers={"backup": Peer("STORESCP", "127.0.0.1", scp.port)})
            rules = forward.parse(
                {
                    "peers": {"backup": {}},
                    "forwarding": {"batch": args.batch, "associations": args.associations},
                    "forward": [{"destination": "backup"}],
                },
                "",
                "bench",
            )
            best: dict[str, float] = {}
            for r in range(args.rounds):
                for name in ("storescu", "hilum-send", "hilum"):
                    scp.clear()
                    if name == "storescu":
                        seconds = run_storescu(scp, blobs)
                    elif name == "hilum-send":
                        seconds = run_hilum_send(scp, blobs)
                    else:
                        seconds = run_hilum(archive, cfg, rules)
                    got = scp.count()
                    if got != len(blobs):
                        raise RuntimeError(f"{name}: storescp holds {got} files, not {len(blobs)}")
                    best[name] = min(best.get(name, float("inf")), seconds)
                    print(
                        f"  round {r + 1} {name:<10} {seconds:6.2f} s  {len(blobs) / seconds:7.1f} instances/s  "
                        f"{mb / seconds:6.1f} MB/s"
                    )
            archive.close()
            print("best of each:")
            for name, seconds in best.items():
                print(f"  {name:<10} {len(blobs) / seconds:7.1f} instances/s  {mb / seconds:6.1f} MB/s")
            print(f"  ratio hilum forwarding / storescu = {best['storescu'] / best['hilum']:.2f}")
            print(f"  ratio hilum forwarding / hilum send = {best['hilum-send'] / best['hilum']:.2f}")
            if not args.no_ingest:
                small = write_ct_set(root / "ct-small", args.ingest_n, rows=256)
                print(
                    f"ingest of {len(small)} 256x256 CT slices into a node (storescu, one association) while "
                    "forwarding:"
                )
                ingest: dict[str, float] = {}
                for r in range(args.rounds):
                    for mode in ("off", "down", "live"):
                        scp.clear()
                        seconds = run_ingest(root, small, mode, scp, r)
                        ingest[mode] = min(ingest.get(mode, float("inf")), seconds)
                        print(f"  round {r + 1} forwarding {mode:<5} {len(small) / seconds:7.1f} instances/s received")
                for mode, seconds in ingest.items():
                    print(
                        f"  best, forwarding {mode:<5} {len(small) / seconds:7.1f} instances/s received"
                        f"  (ratio to off {ingest['off'] / seconds:.2f})"
                    )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
