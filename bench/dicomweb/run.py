"""DICOMweb benchmark: Hilum's server against Orthanc 1.10 + its DICOMweb plugin, same data, one run.

    python bench/dicomweb/run.py [--studies 10000] [--slices 600] [--queries 200] [--renders 60] [--json OUT]

Data (generated, identical for both servers):
* ``--studies`` tiny single-instance studies (16x16 CT, 200 patients, dates
  over 2 years, 5 modalities, accession numbers);
* one CT series of ``--slices`` 512x512 instances (phantom, Explicit VR LE).

Measured over HTTP on loopback with one keep-alive connection per server, no
authentication on either side, no gzip; requests alternate between the two
servers so that changes in machine load affect both alike:
1. QIDO-RS study search latency, p50/p95 over a mix of queries (PatientName
   prefix wildcard, PatientID, StudyDate range, ModalitiesInStudy + date,
   AccessionNumber), each with ``limit=100``;
2. WADO-RS retrieve of the whole CT series
   (``multipart/related; type="application/dicom"; transfer-syntax=*``), MB/s
   of response body, best of 4;
3. rendered-frame latency: ``.../instances/{uid}/rendered`` as image/jpeg for
   ``--renders`` different slices, p50/p95.

Prints a table with ratios; nothing is asserted (DESIGN.md: benchmarks print
ratios against a peer measured in the same run).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
import numpy as np  # noqa: E402
from _common import free_port  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import Config  # noqa: E402
from hilum.dicom.generator import DOE, make_study  # noqa: E402
from hilum.dicom.generator.series import iter_ct_series  # noqa: E402
from hilum.dicomweb.service import DicomWebService  # noqa: E402

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
FAMILY = ["SMITH", "JONES", "NOWAK", "GARCIA", "ROSSI", "DUBOIS", "JANSEN", "SILVA", "KOWALSKI", "BROWN"]
GIVEN = ["ANNA", "JAN", "MARIA", "PETER", "EVA", "TOM", "LUCIA", "MARC", "SARA", "PAUL"]
MODALITIES = ["CT", "MR", "CR", "US", "MG"]


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def tiny_studies(n: int, seed: int = 7) -> list[bytes]:
    """``n`` single-instance studies with varied, searchable attributes."""
    rng = random.Random(seed)
    pixels = (np.arange(256, dtype=np.int16).reshape(16, 16) * 4).tobytes()
    out = []
    for i in range(n):
        p = i % 200
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName = f"{FAMILY[p % 10]}^{GIVEN[(p // 10) % 10]}{p // 100}"
        ds.PatientID = f"P{p:05d}"
        ds.PatientBirthDate = f"19{50 + p % 50:02d}0101"
        ds.PatientSex = "MF"[p % 2]
        day = rng.randrange(730)
        y, d = 2024 + day // 365, day % 365
        ds.StudyDate = f"{y}{1 + d // 31 % 12:02d}{1 + d % 28:02d}"
        ds.StudyTime = f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}00"
        ds.AccessionNumber = f"A{i:07d}"
        ds.StudyID = str(i)
        ds.StudyDescription = "Bench study"
        ds.ReferringPhysicianName = "REF^DOC"
        ds.Modality = MODALITIES[i % 5]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels
        out.append(part10(ds))
    return out


def write_ct(out: Path, slices: int) -> tuple[list[Path], str, str]:
    study = make_study(DOE, accession="BENCHCT", date="20260601", seed="bench-dicomweb")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    series_uid = ""
    for ds in iter_ct_series(study, rows=512, columns=512, slices=slices, slice_thickness=1.0, seed=5):
        p = out / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
        series_uid = str(ds.SeriesInstanceUID)
    return paths, study.uid, series_uid


# ------------------------------------------------------------------ servers


class Orthanc:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        cfg = {"Name": "Bench", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
               "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
               "AuthenticationEnabled": False, "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
               "StorageCompression": False, "HttpCompressionEnabled": False, "KeepAlive": True}
        (root / "orthanc.json").write_text(json.dumps(cfg))
        self.log = open(root / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
                c.request("GET", "/plugins")
                if b"dicom-web" in c.getresponse().read():
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not start")
            time.sleep(0.2)

    def upload(self, items: list[bytes | Path], workers: int = 2) -> None:
        local = threading.local()

        def one(item: bytes | Path) -> None:
            if not hasattr(local, "c"):
                local.c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
            data = item if isinstance(item, bytes) else Path(item).read_bytes()
            local.c.request("POST", "/instances", body=data, headers={"Content-Type": "application/dicom"})
            r = local.c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"Orthanc refused an instance: {r.status}")

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, items))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------ measuring


class Http:
    """One keep-alive connection; returns (status, body bytes, seconds)."""

    def __init__(self, base: str):
        u = urllib.parse.urlsplit(base)
        self.prefix = u.path
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str, accept: str, keep: list[bytes] | None = None) -> tuple[int, int, float]:
        t = time.perf_counter()
        self.conn.request("GET", self.prefix + path, headers={"Accept": accept})
        r = self.conn.getresponse()
        n = 0
        while chunk := r.read(1 << 20):
            n += len(chunk)
            if keep is not None:
                keep.append(chunk)
        return r.status, n, time.perf_counter() - t


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def queries(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            q = {"PatientName": f"{rng.choice(FAMILY)}*"}
        elif kind == 1:
            q = {"PatientID": f"P{rng.randrange(200):05d}"}
        elif kind == 2:
            m = rng.randrange(1, 13)
            q = {"StudyDate": f"2024{m:02d}01-2024{m:02d}28"}
        elif kind == 3:
            m = rng.randrange(1, 13)
            q = {"ModalitiesInStudy": rng.choice(MODALITIES), "StudyDate": f"2025{m:02d}01-2025{m:02d}28"}
        else:
            q = {"AccessionNumber": f"A{rng.randrange(10000):07d}"}
        q["limit"] = "100"
        out.append("/studies?" + urllib.parse.urlencode(q, safe="*^"))
    return out


def bench_qido(conns: dict[str, Http], qs: list[str]) -> dict[str, tuple[list[float], int, list[int]]]:
    """Per server: latencies, bytes received, matches per query.  Servers alternate query by
    query, so a change in machine load hits both alike."""
    out: dict[str, tuple[list[float], int, list[int]]] = {name: ([], 0, []) for name in conns}
    for q in qs[:10]:  # warm up
        for h in conns.values():
            h.get(q, "application/dicom+json")
    for q in qs:
        for name, h in conns.items():
            body: list[bytes] = []
            status, n, dt = h.get(q, "application/dicom+json", body)
            assert status == 200, (name, status, q)
            times, total, counts = out[name]
            times.append(dt)
            counts.append(len(json.loads(b"".join(body) or b"[]")))
            out[name] = (times, total + n, counts)
    return out


def bench_wado(conns: dict[str, Http], study: str, series: str, repeat: int = 4) -> dict[str, tuple[float, int]]:
    """Per server: best time of ``repeat`` whole-series retrieves (alternating servers) and the size."""
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    best = {name: (float("inf"), 0) for name in conns}
    for _ in range(repeat):
        for name, h in conns.items():
            status, n, dt = h.get(f"/studies/{study}/series/{series}", accept)
            assert status == 200, (name, status)
            if dt < best[name][0]:
                best[name] = (dt, n)
    return best


def bench_rendered(conns: dict[str, Http], study: str, series: str, sops: list[str]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in conns}
    for h in conns.values():
        h.get(f"/studies/{study}/series/{series}/instances/{sops[0]}/rendered", "image/jpeg")
    for sop in sops:
        for name, h in conns.items():
            status, n, dt = h.get(f"/studies/{study}/series/{series}/instances/{sop}/rendered", "image/jpeg")
            assert status == 200 and n > 0, (name, status)
            times[name].append(dt)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--renders", type=int, default=60)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = ap.parse_args()
    use_orthanc = not args.no_orthanc and shutil.which("Orthanc") and os.path.exists(PLUGIN)

    tmp = Path(tempfile.mkdtemp(prefix="hilum-bench-dicomweb-"))
    results: dict[str, dict[str, float]] = {}
    orthanc = None
    service = None
    try:
        t0 = time.perf_counter()
        tiny = tiny_studies(args.studies)
        ct_paths, ct_study, ct_series = write_ct(tmp / "ct", args.slices)
        sops = []
        import pydicom

        for p in ct_paths:
            sops.append(str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID))
        print(f"generated {len(tiny)} tiny studies + {len(ct_paths)} CT slices in {time.perf_counter() - t0:.0f} s",
              flush=True)

        archive = Archive(tmp / "hilum")
        t0 = time.perf_counter()
        bad = [r for r in archive.ingest_many([*tiny, *ct_paths], workers=4) if not r.ok]
        assert not bad, bad[:3]
        print(f"hilum: ingested in {time.perf_counter() - t0:.0f} s", flush=True)
        service = DicomWebService(Config(data_dir=tmp / "hilum", web_port=0), archive)
        service.start()
        servers = {"hilum": service.url}
        if use_orthanc:
            orthanc = Orthanc(tmp / "orthanc")
            t0 = time.perf_counter()
            orthanc.upload([*tiny, *ct_paths])
            print(f"orthanc: ingested in {time.perf_counter() - t0:.0f} s", flush=True)
            servers["orthanc"] = orthanc.url

        qs = queries(args.queries)
        rng = random.Random(11)
        render_sops = rng.sample(sops, min(args.renders, len(sops)))
        conns = {name: Http(base) for name, base in servers.items()}
        qido = bench_qido(conns, qs)
        print("QIDO done", flush=True)
        wado = bench_wado(conns, ct_study, ct_series)
        print("WADO done", flush=True)
        rendered = bench_rendered(conns, ct_study, ct_series, render_sops)
        counts = {name: qido[name][2] for name in conns}
        for name in conns:
            qt, qbytes, _ = qido[name]
            wt, wbytes = wado[name]
            rt = rendered[name]
            results[name] = {
                "qido_p50_ms": 1000 * statistics.median(qt), "qido_p95_ms": 1000 * pct(qt, 95),
                "qido_bytes": qbytes,
                "wado_mb_s": wbytes / 1e6 / wt, "wado_seconds": wt, "wado_mb": wbytes / 1e6,
                "rendered_p50_ms": 1000 * statistics.median(rt), "rendered_p95_ms": 1000 * pct(rt, 95),
            }
        if len(counts) == 2:
            same = sum(a == b for a, b in zip(counts["hilum"], counts["orthanc"], strict=True))
            print(f"QIDO result counts equal on {same}/{len(qs)} queries "
                  f"({sum(counts['hilum'])} vs {sum(counts['orthanc'])} matches in all)", flush=True)
            for q, a, b in zip(qs, counts["hilum"], counts["orthanc"], strict=True):
                if a != b:
                    print(f"  differs: {urllib.parse.unquote(q)}: hilum {a}, orthanc {b}")
    finally:
        if service is not None:
            service.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"DICOMweb benchmark: {args.studies} studies, {args.slices}-slice 512x512 CT series, "
          f"{args.queries} QIDO queries (limit=100), {args.renders} rendered frames")
    rows = [("QIDO-RS study search p50 (ms)", "qido_p50_ms", False), ("QIDO-RS study search p95 (ms)", "qido_p95_ms", False),
            ("WADO-RS series retrieve (MB/s)", "wado_mb_s", True), ("rendered frame p50 (ms)", "rendered_p50_ms", False),
            ("rendered frame p95 (ms)", "rendered_p95_ms", False)]
    head = f"{'':34}{'Hilum':>10}" + (f"{'Orthanc':>10}{'Hilum advantage':>18}" if "orthanc" in results else "")
    print(head)
    for label, key, higher_better in rows:
        h = results["hilum"][key]
        line = f"{label:34}{h:10.1f}"
        if "orthanc" in results:
            o = results["orthanc"][key]
            ratio = (h / o) if higher_better else (o / h)
            line += f"{o:10.1f}{ratio:17.2f}x"
        print(line)
    print(f"(series size {results['hilum']['wado_mb']:.0f} MB; QIDO answers {results['hilum']['qido_bytes'] / 1e6:.1f} MB "
          f"from Hilum" + (f", {results['orthanc']['qido_bytes'] / 1e6:.1f} MB from Orthanc)" if "orthanc" in results else ")"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
