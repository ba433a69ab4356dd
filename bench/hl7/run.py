"""RIS-side benchmark: HL7 messages/s over one MLLP connection, MWL C-FIND latency with 10,000 orders.

    python bench/hl7/run.py [--messages 2000] [--orders 10000] [--repeat 30] [--no-orthanc]
                            [--skip-hl7] [--pynetdicom] [--baseline-app DIR/app]

1. HL7: ADT^A04 + ORM^O01 pairs (new patient, new order; a quarter of the
   patients also get an ADT^A08) sent one after the other on one MLLP
   connection, each waiting for its ACK (original mode), to Hilum's listener
   (every message applied to the index in its own transaction).  Peer in the
   same run: a bare python-hl7 asyncio MLLP server that parses each message
   and answers ``create_ack()`` without storing anything: the ratio is the
   cost of doing the work.
2. MWL: ``--orders`` scheduled orders (10 stations, 5 modalities, 20 days)
   in Hilum's index; C-FIND on the Modality Worklist model from pynetdicom
   (one association, ``--repeat`` times per query) and DCMTK ``findscu -W``
   (process start included), against ``hilum serve`` in its own process (each
   Hilum - fast engine, ``--pynetdicom`` engine, ``--baseline-app`` checkout -
   on its own copy of the data folder).  Peer: Orthanc 1.10 with its Modality
   Worklists plugin serving the same orders as ``.wl`` files, same queries.

Prints a table; nothing is asserted (DESIGN.md: benchmarks print ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
import hl7  # noqa: E402
import hl7.mllp  # noqa: E402
from _common import free_port  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo  # noqa: E402
from hilum.config import Config  # noqa: E402
from hilum.dimse.mwl import MODALITY_WORKLIST_FIND  # noqa: E402
from hilum.hl7.message import ack_code_of  # noqa: E402
from hilum.hl7.mllp import exchange  # noqa: E402
from hilum.hl7.service import HL7Service  # noqa: E402

STATIONS = [f"STATION{i:02d}" for i in range(10)]
MODALITIES = ["CT", "MR", "US", "CR", "MG"]
FAMILY = ["SMITH", "MÜLLER", "NOWAK", "GARCIA", "ROSSI", "DUBOIS", "JANSEN", "SILVA", "KOWALSKI", "BROWN"]


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# ----------------------------------------------------------------------------- HL7


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value} (MSH numbered from MSH-3)."""
    top = max(fields)
    if name == "MSH":
        return "|".join(["MSH", "^~\\&"] + [fields.get(i, "") for i in range(3, top + 1)])
    return "|".join([name] + [fields.get(i, "") for i in range(1, top + 1)])


def hl7_messages(n: int) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    day = date.today().strftime("%Y%m%d")

    def msh(kind: str, control: str) -> str:
        return seg("MSH", {3: "HIS", 4: "HOSP", 5: "HILUM", 6: "RAD", 7: "20260301120000", 9: kind, 10: control,
                           11: "P", 12: "2.5", 18: "UNICODE UTF-8"})

    def message(*segments: str) -> bytes:
        return ("\r".join(segments) + "\r").encode("utf-8")

    while len(out) < n:
        pid, name = f"B{i:07d}^^^HOSP^MR", f"{FAMILY[i % len(FAMILY)]}^Patient{i}"
        out.append(message(msh("ADT^A04^ADT_A01", f"A{i}"), seg("EVN", {1: "A04"}),
                           seg("PID", {1: "1", 3: pid, 5: name, 7: "19700101", 8: "F"}), seg("PV1", {1: "1", 2: "O"})))
        out.append(message(
            msh("ORM^O01^ORM_O01", f"O{i}"), seg("PID", {1: "1", 3: pid, 5: name}),
            seg("PV1", {1: "1", 2: "O", 8: "1^Ref^Rita"}),
            seg("ORC", {1: "NW", 2: f"PL{i}", 3: f"FL{i}", 5: "SC", 7: f"^^^{day}0900^^R", 18: STATIONS[i % 10]}),
            seg("OBR", {1: "1", 2: f"PL{i}", 3: f"FL{i}", 4: f"P{i % 7}^Procedure {i % 7}^L", 18: f"ACC{i:07d}",
                        24: MODALITIES[i % 5], 27: f"^^^{day}0900"})))
        if i % 4 == 0:
            out.append(message(msh("ADT^A08^ADT_A01", f"U{i}"), seg("EVN", {1: "A08"}),
                               seg("PID", {1: "1", 3: pid, 5: name + "^Q", 7: "19700101", 8: "F"})))
        i += 1
    return out[:n]


def drive(port: int, messages: list[bytes]) -> tuple[float, list[float], int]:
    """(seconds, per-message latencies, accepted) on one connection."""
    lat: list[float] = []
    ok = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for m in messages:
            t = time.perf_counter()
            ack = exchange(sock, m)
            lat.append(time.perf_counter() - t)
            ok += ack_code_of(ack)[0] == "AA"
        total = time.perf_counter() - t0
    return total, lat, ok


class BareAckServer:
    """python-hl7's asyncio MLLP server answering create_ack() and storing nothing (the peer)."""

    def __enter__(self) -> BareAckServer:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()

        async def handle(reader, writer):  # type: ignore[no-untyped-def]
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while True:
                    msg = await reader.readmessage()
                    writer.writemessage(msg.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        async def start():  # type: ignore[no-untyped-def]
            return await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, encoding="utf-8")

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def bench_hl7(n: int, work: Path) -> dict[str, float]:
    msgs = hl7_messages(n)
    archive = Archive(work / "hl7data")
    cfg = Config(data_dir=work / "hl7data")
    svc = HL7Service(cfg, archive, host="127.0.0.1", port=0)
    svc.start()
    try:
        total, lat, ok = drive(svc.port, msgs)
    finally:
        svc.stop()
        archive.close()
    with BareAckServer() as bare:
        b_total, b_lat, b_ok = drive(bare.port, msgs)
    return {"n": n, "ok": ok, "rate": n / total, "p50": pct(lat, 50) * 1e3, "p95": pct(lat, 95) * 1e3,
            "bare_ok": b_ok, "bare_rate": n / b_total, "bare_p50": pct(b_lat, 50) * 1e3,
            "bare_p95": pct(b_lat, 95) * 1e3}


# ----------------------------------------------------------------------------- MWL


def order_specs(n: int) -> list[dict[str, str]]:
    today = date.today()
    out = []
    for i in range(n):
        d = today + timedelta(days=(i // 50) % 20)  # 10 stations x 5 modalities per block of 50
        out.append({
            "pid": f"W{i:07d}", "name": f"{FAMILY[i % 10]}^Patient{i}", "acc": f"WL{i:07d}",
            "uid": f"2.25.{10**30 + i}", "station": STATIONS[i % 10], "modality": MODALITIES[(i // 10) % 5],
            "date": d.strftime("%Y%m%d"), "time": f"{8 + i % 10:02d}{(i * 7) % 60:02d}00",
            "desc": f"Procedure {i % 7}",
        })
    return out


def fill_hilum(archive: Archive, specs: list[dict[str, str]]) -> float:
    book = OrderBook(archive)
    t0 = time.perf_counter()
    for start in range(0, len(specs), 500):
        with book.transaction() as tx:
            for s in specs[start:start + 500]:
                p = tx.upsert_patient(PatientInfo(s["pid"], name=s["name"], birth_date="19700101", sex="F"))
                tx.create_order(p, OrderInfo(accession_number=s["acc"], study_uid=s["uid"], description=s["desc"],
                                             steps=[StepInfo(modality=s["modality"], station_aet=s["station"],
                                                             start_date=s["date"], start_time=s["time"],
                                                             description=s["desc"])]))
    return time.perf_counter() - t0


def write_worklist_files(folder: Path, specs: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in specs:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = s["name"], s["pid"], "19700101", "F"
        ds.AccessionNumber, ds.StudyInstanceUID = s["acc"], s["uid"]
        ds.RequestedProcedureID, ds.RequestedProcedureDescription = s["acc"], s["desc"]
        item = Dataset()
        item.ScheduledStationAETitle, item.Modality = s["station"], s["modality"]
        item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime = s["date"], s["time"]
        item.ScheduledProcedureStepID, item.ScheduledProcedureStepDescription = s["acc"], s["desc"]
        item.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = [item]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
        ds.file_meta.MediaStorageSOPInstanceUID = s["uid"] + ".9"
        ds.save_as(folder / f"{s['acc']}.wl", enforce_file_format=True)


def queries(today: str, week_end: str, n: int) -> dict[str, Dataset]:
    def ident(**sps: str) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID"):
            setattr(ds, k, "")
        item = Dataset()
        for k in ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate",
                  "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID"):
            setattr(item, k, sps.get(k, ""))
        ds.ScheduledProcedureStepSequence = [item]
        return ds

    q = {
        "station+modality+today": ident(ScheduledStationAETitle="STATION03", Modality="CT",
                                        ScheduledProcedureStepStartDate=today),
        "modality+week range": ident(Modality="MR", ScheduledProcedureStepStartDate=f"{today}-{week_end}"),
    }
    by_name = ident()
    by_name.PatientName = "NOWAK^PATIENT1*"
    q["name wildcard"] = by_name
    by_acc = ident()
    by_acc.AccessionNumber = f"WL{n // 2:07d}"
    q["accession"] = by_acc
    return q


def time_queries(port: int, aet: str, qs: dict[str, Dataset], repeat: int) -> dict[str, tuple[float, float, int]]:
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300

    def nodelay(event):  # type: ignore[no-untyped-def]
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    from pynetdicom import evt

    assoc = ae.associate("127.0.0.1", port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    if not assoc.is_established:
        raise RuntimeError(f"no association with {aet} on {port}")
    out = {}
    try:
        for name, q in qs.items():
            lat = []
            n = 0
            for _ in range(repeat):
                t = time.perf_counter()
                n = sum(1 for status, _ in assoc.send_c_find(q, MODALITY_WORKLIST_FIND) if status.Status == 0xFF00)
                lat.append(time.perf_counter() - t)
            out[name] = (pct(lat, 50) * 1e3, pct(lat, 95) * 1e3, n)
    finally:
        assoc.release()
    return out


def findscu_repeat(port: int, aet: str, today: str, week_end: str, n: int) -> float | None:
    """ms per "modality+week range" query sent ``n`` times by one ``findscu -W --repeat`` on one
    association (a client in C: the server's cost more than pynetdicom's), the time of a single
    query (process start, association) subtracted."""
    if not os.path.exists("/usr/bin/findscu"):
        return None
    args = ["/usr/bin/findscu", "-q", "-W", "-aec", aet, "-k", "ScheduledProcedureStepSequence[0].Modality=MR",
            "-k", f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}-{week_end}",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"]
    for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID"):
        args += ["-k", k]
    runs = []
    for repeat in (1, n + 1):
        t = time.perf_counter()
        subprocess.run([*args, "--repeat", str(repeat), "127.0.0.1", str(port)], check=True, capture_output=True,
                       env={**os.environ, "TCP_NODELAY": "1"}, timeout=600)
        runs.append(time.perf_counter() - t)
    return (runs[1] - runs[0]) / n * 1e3


def time_findscu(port: int, aet: str, today: str, repeat: int) -> tuple[float, float] | None:
    if not os.path.exists("/usr/bin/findscu"):
        return None
    lat = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(["/usr/bin/findscu", "-W", "-aec", aet, "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
                        "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=STATION03",
                        "-k", f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}",
                        "-k", "PatientName", "-k", "AccessionNumber", "127.0.0.1", str(port)],
                       check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=300)
        lat.append(time.perf_counter() - t)
    return pct(lat, 50) * 1e3, pct(lat, 95) * 1e3


class HilumServe:
    """``hilum serve`` on a data folder in its own process (the code of ``app``), as a site runs it:
    the SCU of this benchmark does not share its interpreter (and GIL) with the server."""

    def __init__(self, data: Path, port: int, app: Path = ROOT / "app", engine: str = "fast"):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--aet", "HILUM", "--dicom-port", str(port),
             "--web-port", str(free_port()), "--hl7-port", str(free_port())],
            env={**os.environ, "PYTHONPATH": str(app), "HILUM_DIMSE_ENGINE": engine, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"hilum serve did not start on port {port}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def orthanc_peer(work: Path, specs: list[dict[str, str]], port: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("Orthanc")
    plugin = "/usr/share/orthanc/plugins/libModalityWorklists.so"
    if exe is None or not os.path.exists(plugin):
        return None
    wl = work / "orthanc-wl"
    write_worklist_files(wl, specs)
    conf = {
        "Name": "bench", "StorageDirectory": str(work / "orthanc-db"), "IndexDirectory": str(work / "orthanc-db"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowFindWorklist": True,
        "DicomCheckCalledAet": False, "Plugins": [plugin], "Worklists": {"Enable": True, "Database": str(wl)},
    }
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(conf))
    proc = subprocess.Popen([exe, str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TCP_NODELAY": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--skip-hl7", action="store_true", help="MWL only")
    ap.add_argument("--pynetdicom", action="store_true", help="MWL: also Hilum on pynetdicom's engine")
    ap.add_argument("--baseline-app", metavar="DIR", help="MWL: also hilum serve from this app/ folder "
                    "(another checkout, e.g. a git worktree of an older commit)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hilum-bench-hl7-"))
    try:
        if not args.skip_hl7:
            h = bench_hl7(args.messages, work)
            print(f"HL7 over one MLLP connection, {h['n']} messages (ADT^A04 + ORM^O01 + ADT^A08 mix), "
                  f"each ACKed before the next:")
            print(f"  Hilum (applied to the index)  {h['rate']:8.0f} msg/s  p50 {h['p50']:6.2f} ms  "
                  f"p95 {h['p95']:6.2f} ms  AA {h['ok']}/{h['n']}")
            print(f"  bare python-hl7 ACK server    {h['bare_rate']:8.0f} msg/s  p50 {h['bare_p50']:6.2f} ms  "
                  f"p95 {h['bare_p95']:6.2f} ms  AA {h['bare_ok']}/{h['n']}")
            print(f"  ratio Hilum / bare: {h['rate'] / h['bare_rate']:.2f}")

        specs = order_specs(args.orders)
        archive = Archive(work / "mwldata")
        fill_s = fill_hilum(archive, specs)
        archive.close()
        print(f"\nMWL with {args.orders} scheduled orders (index filled in {fill_s:.1f} s, "
              f"{args.orders / fill_s:.0f} orders/s in 500-order transactions)")
        today = date.today().strftime("%Y%m%d")
        week_end = (date.today() + timedelta(days=6)).strftime("%Y%m%d")
        qs = queries(today, week_end, args.orders)
        # Each Hilum serves its own copy of the data folder, from its own process.
        peers: list[tuple[str, Path, str]] = [("Hilum", ROOT / "app", "fast")]
        if args.pynetdicom:
            peers.append(("Hilum (pynetdicom engine)", ROOT / "app", "pynetdicom"))
        if args.baseline_app:
            peers.append((f"Hilum baseline ({Path(args.baseline_app).resolve().parent.name})",
                          Path(args.baseline_app).resolve(), "fast"))
        results: dict[str, dict[str, tuple[float, float, int]]] = {}
        cli: dict[str, tuple[float, float] | None] = {}
        held: dict[str, float | None] = {}
        for i, (label, app, engine) in enumerate(peers):
            data = work / f"mwldata{i}"
            shutil.copytree(work / "mwldata", data)
            port = free_port()
            svc = HilumServe(data, port, app, engine)
            try:
                results[label] = time_queries(port, "HILUM", qs, args.repeat)
                cli[label] = time_findscu(port, "HILUM", today, max(3, args.repeat // 5))
                held[label] = findscu_repeat(port, "HILUM", today, week_end, 10)
            finally:
                svc.stop()
        theirs: dict[str, tuple[float, float, int]] | None = None
        theirs_cli = None
        if not args.no_orthanc:
            oport = free_port()
            proc = orthanc_peer(work, specs, oport)
            if proc is not None:
                try:
                    reps = max(3, args.repeat // 6)
                    theirs = time_queries(oport, "ORTHANC", qs, reps)
                    theirs_cli = time_findscu(oport, "ORTHANC", today, 3)
                    held["Orthanc"] = findscu_repeat(oport, "ORTHANC", today, week_end, 5)
                finally:
                    proc.terminate()
                    proc.wait(30)
        for label, ours in results.items():
            print(f"  {label + ': query (pynetdicom C-FIND, one association)':<58} {'matches':>7}  "
                  f"{'p50/p95 ms':>18}" + (f"  {'Orthanc p50/p95 ms':>19}  {'Orthanc/Hilum p50':>17}" if theirs else ""))
            for name, (p50, p95, n) in ours.items():
                line = f"  {name:<58} {n:>7}  {p50:8.1f} / {p95:7.1f}"
                if theirs:
                    t50, t95, tn = theirs[name]
                    line += f"  {t50:8.1f} / {t95:8.1f}  {t50 / p50:16.2f}x" + ("" if tn == n else f" (Orthanc: {tn})")
                print(line)
            ours_cli = cli.get(label)
            if ours_cli:
                line = f"  {'findscu -W station+modality+today (process)':<58} {'':>7}  {ours_cli[0]:8.1f} / {ours_cli[1]:7.1f}"
                if theirs_cli:
                    line += f"  {theirs_cli[0]:8.1f} / {theirs_cli[1]:8.1f}  {theirs_cli[0] / ours_cli[0]:16.2f}x"
                print(line)
        if held.get("Hilum") is not None:
            print("  modality+week range, findscu -W --repeat (one association, a client in C), ms per query: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in held.items() if v is not None)
                  + (f";  Orthanc / Hilum = {held['Orthanc'] / held['Hilum']:.2f}" if held.get("Orthanc") else ""))
        if theirs:
            big = max(theirs, key=lambda k: theirs[k][2])
            print(f"  {big} ({theirs[big][2]} matches): Orthanc p50 / Hilum p50 = "
                  f"{theirs[big][0] / results['Hilum'][big][0]:.2f}   (target >= 2.00)")
        if not theirs and not args.no_orthanc:
            print("  (Orthanc with the worklist plugin not available: no peer figures)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
