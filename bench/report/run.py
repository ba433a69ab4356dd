"""Reporting benchmark: time from "sign" to the ORU's ACK on loopback, and the outbox's throughput.

    python bench/report/run.py [--signs 30] [--messages 1000] [--repeat 3]

A fresh data folder with a generated CT study (64×64×20) and a radiologist
(argon2id with argon2-cffi's defaults, as in production).  The HIS is a bare
MLLP ACK server in its own process (asyncio; answers ``MSA|AA|<MSH-10>`` to
each message without parsing more), so the sender and the receiver do not
share a GIL.

1. **sign → ACK**: ``--signs`` times: create a report, ``Reports.sign()``
   (password check, state change + outbox row in one transaction, Enhanced SR
   and Encapsulated PDF built and ingested), with the node's
   :class:`~hilum.hl7.outbox.OutboxService` running (woken by the signing
   event); the time from the call to the moment the message is recorded
   ``sent`` with ACK AA.  The parts: ``sign()`` returning, and from its
   return to the ACK.
2. **outbox throughput**: ``--messages`` signed reports queued (no DICOM copies,
   a cheap hash for this set-up only), then the outbox service drains them
   (claim, compose once and store, send, wait for the ACK, record the ACK:
   each message's state in its own transaction) — messages/s.  Peer in the
   same run: a bare MLLP client sending the very same message bytes to the
   same server over one connection, waiting for each ACK, recording nothing.
   The ratio is the cost of the outbox's bookkeeping (exactly-once state).

Prints a table (medians of ``--repeat`` runs); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port  # noqa: E402
from argon2 import PasswordHasher  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.archive.reports import Endpoint, Outbox, OutboxChanged, Reports, Section  # noqa: E402
from hilum.archive.users import UserStore  # noqa: E402
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study  # noqa: E402
from hilum.hl7.mllp import exchange  # noqa: E402
from hilum.hl7.outbox import OutboxService  # noqa: E402

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
PASSWORD = "bench password 1"
SECTIONS = [
    Section("indication", "Indication", "Toux persistante, fièvre."),
    Section("technique", "Technique", "Scanner thoracique sans injection, coupes de 1 mm."),
    Section("findings", "Findings", "Nodule de 8 mm du lobe supérieur droit.\nPas d'épanchement pleural."),
    Section("impression", "Impression", "Nodule pulmonaire isolé : contrôle à 3 mois."),
]


def _ack_server(port: int, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(SB)
                msg = (await reader.readuntil(EB + CR))[:-2]
                control = msg.split(b"\r", 1)[0].split(b"|")[9]
                writer.write(SB + b"MSH|^~\\&|HIS||HILUM||20261206||ACK|A|P|2.5\rMSA|AA|" + control + b"\r" + EB + CR)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def bare_client(port: int, messages: list[bytes]) -> float:
    """Seconds to send ``messages`` one after the other on one connection, each waiting for its ACK."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for m in messages:
            ack = exchange(sock, m)
            assert b"MSA|AA|" in ack
    return time.perf_counter() - t0


def setup(data: Path, hasher: PasswordHasher | None = None) -> tuple[Archive, UserStore, str]:
    archive = Archive(data)
    study = make_study(MUELLER, accession="ACC-BENCH", seed="report-bench")
    for ds in generate_ct_series(study, rows=64, columns=64, slices=20, noise_sigma=0.0):
        assert archive.ingest(ds).ok
    users = UserStore.of(archive, hasher=hasher)
    users.add("drbench", "radiologist", PASSWORD)
    return archive, users, study.uid


def sign_to_ack(port: int, n: int) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="hilum-report-bench-"))
    try:
        archive, users, study_uid = setup(tmp / "data")
        rep = Reports(archive, users=users, endpoints=["his"], institution="Bench clinic")
        svc = OutboxService(archive, [Endpoint("his", "127.0.0.1", port)], poll=1.0)
        acked: dict[str, float] = {}
        done = threading.Condition()

        def on_change(ev: OutboxChanged) -> None:
            if ev.state == "sent":
                with done:
                    acked[ev.report_id] = time.perf_counter()
                    done.notify_all()

        unsub = archive.events.subscribe(OutboxChanged, on_change)
        svc.start()
        out: dict[str, list[float]] = {"total": [], "sign": [], "queue_to_ack": []}
        try:
            for _ in range(n):
                r = rep.create(study_uid, user="drbench", sections=SECTIONS)
                t0 = time.perf_counter()
                rep.sign(r.report_id, user="drbench", password=PASSWORD)
                t1 = time.perf_counter()
                with done:
                    if not done.wait_for(lambda rid=r.report_id: rid in acked, timeout=30):  # type: ignore[misc]
                        raise TimeoutError("no ACK within 30 s")
                t2 = acked[r.report_id]
                out["total"].append(t2 - t0)
                out["sign"].append(t1 - t0)
                out["queue_to_ack"].append(max(0.0, t2 - t1))
        finally:
            svc.stop()
            unsub()
            archive.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def throughput(port: int, n: int) -> tuple[float, float]:
    """(outbox messages/s, bare client messages/s) for the same ``n`` messages."""
    tmp = Path(tempfile.mkdtemp(prefix="hilum-report-bench-"))
    try:
        cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        archive, users, study_uid = setup(tmp / "data", cheap)
        rep = Reports(archive, users=users, endpoints=["his"], store_dicom=False)
        for _ in range(n):
            r = rep.create(study_uid, user="drbench", sections=SECTIONS)
            rep.sign(r.report_id, user="drbench", password=PASSWORD)
        svc = OutboxService(archive, [Endpoint("his", "127.0.0.1", port)])
        t0 = time.perf_counter()
        while svc.run_once(limit=200):
            pass
        outbox_s = time.perf_counter() - t0
        msgs = Outbox(archive).list()
        assert len(msgs) == n and all(m.state == "sent" for m in msgs), Outbox(archive).counts()
        payloads = [m.message for m in reversed(msgs)]
        bare_s = bare_client(port, payloads)
        archive.close()
        return n / outbox_s, n / bare_s
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signs", type=int, default=30)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HILUM_INDEX_WRITER", "fast")
    port = free_port()
    ready = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=_ack_server, args=(port, ready), daemon=True)
    server.start()
    assert ready.wait(30)
    try:
        lat = sign_to_ack(port, args.signs)
        rates = [throughput(port, args.messages) for _ in range(args.repeat)]
    finally:
        server.terminate()
        server.join(10)
    med = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    p90 = sorted(lat["total"])[int(0.9 * (len(lat["total"]) - 1))] * 1000
    ob = statistics.median(r[0] for r in rates)
    bare = statistics.median(r[1] for r in rates)
    print(f"sign -> ORU ACK on loopback ({args.signs} reports):  median {med['total']:.1f} ms  (p90 {p90:.1f} ms)")
    print(f"  sign() returns (password, state + outbox row, SR + PDF ingested): median {med['sign']:.1f} ms")
    early = sum(1 for q in lat["queue_to_ack"] if q == 0.0)
    print(
        f"  the ACK was recorded before sign() returned (the ORU goes while the SR/PDF are built): "
        f"{early} of {args.signs}; otherwise median {med['queue_to_ack']:.1f} ms after"
    )
    print(f"outbox throughput ({args.messages} messages, median of {args.repeat}): {ob:.0f} messages/s")
    print(f"bare MLLP client, same messages, same server:                {bare:.0f} messages/s")
    ratios = [b / a for a, b in rates]
    print(
        f"ratio bare / outbox: median of the runs' ratios {statistics.median(ratios):.2f}x "
        f"(ratio of the medians {bare / ob:.2f}x)"
    )
    print("runs (outbox, bare, ratio): " + ", ".join(f"({a:.0f}, {b:.0f}, {b / a:.1f}x)" for a, b in rates))
    print(
        f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
