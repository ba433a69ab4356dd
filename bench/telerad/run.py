"""Teleradiology benchmark: a remote CT over a throttled link, progressive vs a plain WADO-RS download.

    python bench/telerad/run.py [--slices 600] [--profiles slow,fast] [--data DIR] [--workers N]
                                [--client scheduler|driver|both|auto] [--scheduler-from FILE] [--json OUT]

Set-up, all on loopback:
* a remote node: ``hilum serve`` (a subprocess, anonymous read on a node
  without users) holding one generated CT series of ``--slices`` 512x512
  slices (Explicit VR LE, as a modality sends it; generated once into
  ``--data`` and reused);
* a throttling proxy in front of it (application level, this process):
  every byte crosses a shared "link" per direction paced at the profile's
  rate, and each chunk is delivered half a round trip after it was paced —
  ``slow`` = 10 Mbit/s, 50 ms RTT; ``fast`` = 100 Mbit/s, 20 ms RTT.

Measured per profile, runs alternating, fresh connections each:
1. **plain WADO-RS**: the whole series in one request
   (``multipart/related; type="application/dicom"; transfer-syntax=*``, what
   a plain DICOMweb client does): time to the first complete instance (the
   first image) and to the last (full fidelity);
2. **Hilum progressive** (the driver here, :func:`progressive_driver`):
   QIDO-RS of the series, then the middle slice in the first rendition of
   the adaptive plan (:func:`hilum.dicomweb.adaptive.choose`; not measured
   yet: lossy HTJ2K at ``?ratio=``) with its instance metadata — the first
   image; then that slice lossless alone on the link (a probe), a re-plan
   on what was measured, and on a slow link a lossy pass (every 8th slice,
   then the rest) before the lossless JPEG-LS pass of every slice (on a
   fast link lossless only); the series metadata beside the passes.  Time
   to the first decoded image and to every slice at full fidelity.
   ``--client driver`` times it;
3. **the viewer's scheduler** (the default, ``--client scheduler``):
   ``ProgressiveLoad`` from :mod:`hilum.dicomweb.progressive` (or from
   ``--scheduler-from FILE``), what the workstation runs when a remote study
   opens: time to the first image the viewer can show (the volume ready with
   the middle slice in it), to every slice viewable (lossy or not: "all
   lossy") and to every slice at full fidelity; ``both`` times the driver and
   the scheduler against one plain run.

Full-fidelity slices are checked pixel-equal to the stored files (a sample)
after the timings.  Prints figures and ratios; nothing is asserted
(DESIGN.md: benchmarks print ratios against a baseline measured in the same
run).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from _common import free_port  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.dicom.generator import DOE, make_study  # noqa: E402
from hilum.dicom.generator.series import iter_ct_series  # noqa: E402
from hilum.dicomweb.adaptive import LinkMeter, Plan, decode_frame, fetch_frames  # noqa: E402
from hilum.dicomweb.client import DicomWebClient, DicomWebSource  # noqa: E402

PROFILES = {"slow": (10e6, 0.050), "fast": (100e6, 0.020)}
ACCESSION = "TELERAD1"


# ------------------------------------------------------------------ data and the remote node


def ensure_data(data: Path, slices: int) -> tuple[str, str]:
    """The CT in ``data`` (generated and ingested once); (study, series) UIDs."""
    archive = Archive(data)
    try:
        rows = archive.query("STUDY", {"AccessionNumber": ACCESSION})
        if rows:
            study = rows[0]["StudyInstanceUID"]
            series = archive.query("SERIES", {"StudyInstanceUID": study})
            if series and int(series[0].get("NumberOfSeriesRelatedInstances") or 0) in (0, slices):
                return study, series[0]["SeriesInstanceUID"]
            raise SystemExit(f"{data} holds another series size; use a fresh --data")
        study_obj = make_study(DOE, accession=ACCESSION, date="20260601", seed="bench-telerad")
        t = time.perf_counter()
        series_uid = ""
        for ds in iter_ct_series(study_obj, rows=512, columns=512, slices=slices, slice_thickness=1.0, seed=5):
            buf = _part10(ds)
            assert archive.ingest(buf).status == "stored"
            series_uid = str(ds.SeriesInstanceUID)
        print(f"generated {slices} slices in {time.perf_counter() - t:.1f} s into {data}", flush=True)
        return study_obj.uid, series_uid
    finally:
        archive.close()


def _part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Node:
    """``hilum serve`` on loopback (DICOMweb only matters here)."""

    def __init__(self, data: Path):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "app"))
        self.log = open(data / "serve.log", "ab")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(data),
            "--web-port",
            str(self.port),
            "--dicom-port",
            str(free_port()),
            "--hl7-port",
            str(free_port()),
            "--bind",
            "127.0.0.1",
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/studies?limit=1", timeout=2) as r:
                    if r.status in (200, 204):
                        return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"hilum serve exited ({self.proc.returncode}); see {data / 'serve.log'}") from None
                time.sleep(0.3)
        raise SystemExit("hilum serve did not answer within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------ the throttled link


class Link:
    """One shared link: per direction, bytes are paced at ``rate`` (bits/s), then delayed by RTT/2."""

    def __init__(self, rate_bps: float, rtt_s: float):
        self.rate = rate_bps / 8.0
        self.delay = rtt_s / 2.0
        self.free = {"up": 0.0, "down": 0.0}
        self.bytes = {"up": 0, "down": 0}

    def schedule(self, direction: str, n: int, now: float) -> float:
        start = max(now, self.free[direction])
        self.free[direction] = start + n / self.rate
        self.bytes[direction] += n
        return self.free[direction] + self.delay


class ThrottlingProxy:
    """A TCP proxy on loopback through a :class:`Link` (its own asyncio loop on a thread)."""

    CHUNK = 16 * 1024

    def __init__(self, target_port: int, rate_bps: float, rtt_s: float):
        self.link = Link(rate_bps, rtt_s)
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self.thread = threading.Thread(target=self._run, name="telerad-proxy", daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        for w in (cw, sw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pipe(cr, sw, "up"), self._pipe(sr, cw, "down"), return_exceptions=True)
        except asyncio.CancelledError:
            pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=32)

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    break
                at, data = item
                wait = at - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(self.CHUNK)
                if not data:
                    break
                await queue.put((self.link.schedule(direction, len(data), self.loop.time()), data))
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put(None)
            try:
                await task
            except (ConnectionError, OSError, asyncio.CancelledError):
                task.cancel()
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ------------------------------------------------------------------ clients


def client_for(url: str) -> DicomWebClient:
    return DicomWebClient(DicomWebSource("remote", url, timeout=600))


def plain_wado(url: str, study: str, series: str) -> dict[str, float]:
    """The whole series in one WADO-RS request, as stored: first instance and last."""
    c = client_for(url)
    t0 = time.perf_counter()
    first = None
    n = nbytes = 0
    for part in c.iter_instances(study, series, transfer_syntax="*"):
        if first is None:
            first = time.perf_counter() - t0
        n += 1
        nbytes += len(part)
    total = time.perf_counter() - t0
    c.close_all()
    return {"first_image_s": first or total, "full_s": total, "instances": n, "bytes": nbytes}


def _json(c: DicomWebClient, path: str, meter: LinkMeter | None = None) -> list[dict[str, Any]]:
    """A DICOM JSON answer, gzip-compressed on the wire (the server compresses JSON when asked)."""
    t = time.perf_counter()
    resp = c.request("GET", path, headers={"Accept": "application/dicom+json", "Accept-Encoding": "gzip"})
    first = resp.read(1)
    ttfb = time.perf_counter() - t
    body = first + resp.read()
    if meter is not None:  # round trip only: these answers are small and mostly server time
        meter.record(0, ttfb, time.perf_counter() - t)
    if (resp.getheader("Content-Encoding") or "").lower() == "gzip":
        body = gzip.decompress(body)
    return list(json.loads(body)) if body.strip() else []


def _val(obj: dict[str, Any], tag: str, default: Any = None) -> Any:
    v = obj.get(tag, {}).get("Value")
    return v[0] if v else default


def progressive_driver(url: str, study: str, series: str, workers: int) -> dict[str, Any]:
    """Hilum's progressive fetch driven here with the same server calls as the scheduler.

    1. QIDO-RS of the series' instances (a database answer: fast) → the
       middle instance; its metadata and its frame in the plan's first
       rendition at once (not measured yet: lossy), then its lossless frame
       alone on the link (the reader's slice at full fidelity, and a probe
       of the link);
    2. re-plan on what was measured; the series metadata (slow to build on
       the server: every header read) on another connection, beside a lossy
       pass (every 8th slice, then the rest) when the link is slow, and the
       lossless pass of every slice.
    """
    c = client_for(url)
    meter = LinkMeter()
    t0 = time.perf_counter()
    base = f"/studies/{study}/series/{series}"
    listing = _json(c, base + "/instances", meter)
    listing.sort(key=lambda o: int(_val(o, "00200013", 0) or 0))
    sops = [_val(o, "00080018") for o in listing]
    n = len(sops)
    focus = n // 2
    side = ThreadPoolExecutor(3)
    focus_meta = side.submit(_json, c, f"{base}/instances/{sops[focus]}/metadata")
    plans: list[Plan] = [meter.plan()]
    first_rendition = plans[0].first
    focus_lossy = (
        side.submit(fetch_frames, c, study, series, sops[focus], [1], first_rendition, meter)
        if first_rendition is not None
        else None
    )
    fm = focus_meta.result()[0]
    rows, cols = int(_val(fm, "00280010")), int(_val(fm, "00280011"))
    bits, signed = int(_val(fm, "00280100", 16)), int(_val(fm, "00280103", 0))
    slice_bytes = rows * cols * bits // 8
    order = [k for k in range(focus % 8, n, 8) if k != focus]
    order += [k for k in range(n) if k != focus and k not in set(order)]
    times: dict[str, float] = {}
    lock = threading.Lock()
    full: dict[int, np.ndarray] = {}
    check = {0, focus, n - 1}

    def fetch(k: int, rendition: Any) -> np.ndarray:
        [data] = fetch_frames(c, study, series, sops[k], [1], rendition, meter)
        return decode_frame(
            data, rendition.transfer_syntax, rows=rows, columns=cols, bits_allocated=bits, pixel_representation=signed
        )

    def lossy(k: int) -> None:
        first = plans[-1].first
        if first is not None:
            fetch(k, first)
            with lock:
                times.setdefault("first_image_s", time.perf_counter() - t0)

    def lossless(k: int) -> None:
        arr = fetch(k, plans[-1].full)
        with lock:
            times.setdefault("first_image_s", time.perf_counter() - t0)
            if k in check:
                full[k] = arr

    # The slice the reader looks at, alone on the link: lossy when the plan says so, then lossless —
    # the reader's current slice at full fidelity first, and a transfer large enough to measure the link.
    if focus_lossy is not None and first_rendition is not None:
        [data] = focus_lossy.result()
        decode_frame(
            data,
            first_rendition.transfer_syntax,
            rows=rows,
            columns=cols,
            bits_allocated=bits,
            pixel_representation=signed,
        )
        times["first_image_s"] = time.perf_counter() - t0
    lossless(focus)
    times["focus_full_s"] = time.perf_counter() - t0
    plans.append(meter.plan(slice_bytes=slice_bytes))
    plan = plans[-1]
    # the series metadata (the viewer's geometry for the volume; slow to build on the server) only now,
    # beside the passes: earlier it would compete with the first image and the probe
    series_meta = side.submit(_json, c, base + "/metadata")
    series_meta.add_done_callback(lambda _f: times.setdefault("metadata_s", time.perf_counter() - t0))
    nworkers = max(workers, min(16, plan.batch))
    with ThreadPoolExecutor(nworkers) as pool:
        if plan.first is not None:
            list(pool.map(lossy, order))
            times["lossy_all_s"] = time.perf_counter() - t0
        list(pool.map(lossless, order))
    times["full_s"] = time.perf_counter() - t0
    series_meta.result()
    side.shutdown()
    c.close_all()
    return {
        **times,
        "plan": plans[0].reason,
        "replan": plans[-1].reason,
        "throughput_mbps": (meter.throughput_bps or 0) / 1e6,
        "rtt_ms": (meter.rtt_s or 0) * 1e3,
        "workers": nworkers,
        "_check": {sops[k]: a for k, a in full.items()},
    }


def progressive_scheduler(url: str, study: str, series: str, workers: int) -> dict[str, Any]:
    """Helper 4's scheduler (``hilum.dicomweb.progressive.ProgressiveLoad``), timed through its handle."""
    from hilum.dicomweb.progressive import ProgressiveLoad  # type: ignore[import-not-found,unused-ignore]

    c = client_for(url)
    t0 = time.perf_counter()
    load = ProgressiveLoad(c, study, series, workers=workers)  # full_syntax None: as the adaptive plan says
    handle = load.start()
    handle.done.wait()
    total = time.perf_counter() - t0
    c.close_all()
    if getattr(handle, "error", None) is not None:
        raise RuntimeError(f"scheduler failed: {handle.error}")
    tm = dict(load.timings)
    first = tm.get("first_image", tm.get("first_full", total))
    vol = load.volume
    check: dict[str, np.ndarray] = {}
    if vol is not None:
        for k in (0, len(vol) // 2, len(vol) - 1):
            check[vol.stack.frames[k].sop_instance_uid] = np.asarray(vol.data[k])
    plan = load.first
    return {
        "first_image_s": first,
        "lossy_all_s": tm.get("all_viewable", total),
        "full_s": tm.get("total", total),
        "workers": load.workers_started,
        "full_syntax": load.full_syntax,
        "headers": "QIDO listing + one instance's metadata" if "listing" in tm else "series metadata",
        "plan": f"scheduler: first pass {plan}" if plan else "scheduler: lossless only",
        "_check": check,
    }


def verify(data: Path, study: str, check: dict[str, np.ndarray]) -> str:
    """Full-fidelity slices against the stored files (through the archive)."""
    archive = Archive(data)
    try:
        bad = 0
        for sop, arr in check.items():
            stored = pydicom.dcmread(io.BytesIO(archive.read(sop))).pixel_array
            if not np.array_equal(np.asarray(arr).reshape(stored.shape).astype(stored.dtype), stored):
                bad += 1
        return f"{len(check) - bad}/{len(check)} checked slices pixel-equal"
    finally:
        archive.close()


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--profiles", default="slow,fast")
    ap.add_argument("--data", type=Path, default=None, help="data folder of the remote node (kept, reused)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--client", choices=("auto", "scheduler", "driver", "both"), default="scheduler")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--scheduler-from",
        type=Path,
        default=None,
        help="load hilum.dicomweb.progressive from this file (Helper 4's branch before the merge)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory(prefix="hilum-telerad-")
        data = Path(tmp.name) / "remote"
    data.mkdir(parents=True, exist_ok=True)
    study, series = ensure_data(data, args.slices)
    if args.scheduler_from is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("hilum.dicomweb.progressive", args.scheduler_from)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hilum.dicomweb.progressive"] = module
        spec.loader.exec_module(module)
    clients: dict[str, Any] = {}
    if args.client in ("driver", "both"):
        clients["hilum"] = progressive_driver
    if args.client in ("scheduler", "both", "auto"):
        try:
            import hilum.dicomweb.progressive  # noqa: F401

            clients["scheduler"] = progressive_scheduler
        except ImportError:
            if args.client != "auto":
                raise
    if not clients:
        clients["hilum"] = progressive_driver
    node = Node(data)
    results: dict[str, Any] = {"slices": args.slices, "clients": list(clients), "profiles": {}}
    try:
        for name in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            rate, rtt = PROFILES[name]
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (*clients, "plain")}
            for _ in range(args.repeat):
                for kind in runs:
                    proxy = ThrottlingProxy(node.port, rate, rtt)
                    try:
                        if kind == "plain":
                            r = plain_wado(proxy.url, study, series)
                        else:
                            r = clients[kind](proxy.url, study, series, args.workers)
                            r["verify"] = verify(data, study, r.pop("_check"))
                        r["wire_mb"] = proxy.link.bytes["down"] / 1e6
                    finally:
                        proxy.stop()
                    runs[kind].append(r)
                    print(
                        f"  {name} {kind}: "
                        + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                        flush=True,
                    )
            best = {k: min(v, key=lambda r: r["full_s"]) for k, v in runs.items()}
            results["profiles"][name] = {"rate_mbps": rate / 1e6, "rtt_ms": rtt * 1e3, **best}
    finally:
        node.stop()
        if tmp is not None:
            tmp.cleanup()
    print()
    print(
        f"Remote CT: {args.slices} x 512x512, 16-bit, stored Explicit VR LE.  hilum = the adaptive driver here;"
        " scheduler = the viewer's scheduler (hilum.dicomweb.progressive.ProgressiveLoad)"
    )
    print(
        f"{'link':<22}{'':<10}{'first image s':>15}{'all lossy s':>13}{'full fidelity s':>17}{'wire MB':>10}"
        f"{'first x':>9}{'full x':>8}   (x: plain / this; >1 faster)"
    )
    for p in results["profiles"].values():
        label = f"{p['rate_mbps']:g} Mbit/s {p['rtt_ms']:g} ms"
        pl = p["plain"]
        for kind in ("plain", *clients):
            r = p[kind]
            ratios = (
                ""
                if kind == "plain"
                else (f"{pl['first_image_s'] / r['first_image_s']:>8.1f}x{pl['full_s'] / r['full_s']:>7.2f}x")
            )
            lossy_all = f"{r['lossy_all_s']:>13.2f}" if "lossy_all_s" in r else f"{'-':>13}"
            print(
                f"{label:<22}{kind:<10}{r['first_image_s']:>15.2f}{lossy_all}{r['full_s']:>17.2f}"
                f"{r['wire_mb']:>10.1f}{ratios}"
            )
            label = ""
        for kind in clients:
            r = p[kind]
            print(f"{'':<22}{kind}: plan: {r.get('plan', '')}")
            if r.get("replan"):
                print(f"{'':<22}{kind}: re-plan after the current slice: {r['replan']}")
            if "focus_full_s" in r:
                print(f"{'':<22}{kind}: current slice at full fidelity: {r['focus_full_s']:.2f} s")
            for key in ("headers", "full_syntax", "workers"):
                if key in r:
                    print(f"{'':<22}{kind}: {key}: {r[key]}")
            print(f"{'':<22}{kind}: {r.get('verify', '')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
