"""Progressive streaming of a remote series (hilum.dicomweb.progressive), against a real Hilum
DICOMweb server on loopback: lossy first pass, full fidelity pixel-equal to the remote files,
fetch order (focus, every Nth, fill in) and re-prioritisation on scroll."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest

from hilum.archive import Archive
from hilum.config import Config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicomweb.client import DicomWebClient, DicomWebSource
from hilum.dicomweb.progressive import (
    FetchOrder,
    FirstPass,
    ThroughputMeter,
    _first_from_plan,
    plan_for,
    start_progressive,
)
from hilum.dicomweb.service import DicomWebService

SLICES = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("progressive-remote")
    archive = Archive(root)
    study = make_study(MUELLER, accession="PROG01", date="20260707", seed="progressive")
    series = generate_ct_series(study, rows=64, columns=64, slices=SLICES, seed=7)
    for ds in series:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.ingest(buf.getvalue())
    with DicomWebService(Config(data_dir=root, web_port=0), archive) as svc:
        yield {"url": svc.url, "study": study.uid, "series": str(series[0].SeriesInstanceUID), "archive": archive}
    archive.close()


class Recorder:
    """Counts requests by kind and collects what is put into the cache (the RemoteCache contract)."""

    def __init__(self) -> None:
        self.put: list[bytes] = []
        self.lock = threading.Lock()

    def put_instance(self, study: str, data: bytes) -> None:
        with self.lock:
            self.put.append(data)


def _original(server: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for row in server["archive"].query("IMAGE", {"SeriesInstanceUID": server["series"]}):
        sop = row["SOPInstanceUID"]
        out[sop] = pydicom.dcmread(io.BytesIO(server["archive"].read(sop))).pixel_array
    return out


def test_order_focus_every_nth_then_fill() -> None:
    order = FetchOrder(20, lossy=True, stride=5, focus=10)
    tasks = []
    while (t := order.next()) is not None:
        tasks.append(t)
        order.finished(*t)
    assert tasks[:2] == [("lossy", 10), ("full", 10)]
    assert {t for t in tasks[2:5]} == {("lossy", 5), ("lossy", 15), ("lossy", 0)}  # every 5th from the focus
    assert tasks[5] == ("full", 11)  # then the viewed slice's neighbours in full, then the gaps
    lossy = {k for kind, k in tasks if kind == "lossy"}
    assert lossy == set(range(20)) - {8, 9, 11, 12}  # the focus' neighbours went straight to full
    assert {k for kind, k in tasks if kind == "full"} == set(range(20))
    lossy_order = [k for kind, k in tasks if kind == "lossy"]
    assert lossy_order[:4] == [10, 15, 5, 0] or lossy_order[:4] == [10, 5, 15, 0]


def test_order_reprioritised_on_scroll() -> None:
    order = FetchOrder(100, lossy=True, stride=10, focus=0)
    for _ in range(5):
        t = order.next()
        assert t is not None
        order.finished(*t)
    order.focus(77)
    assert order.next() == ("lossy", 77)
    assert order.next() == ("full", 77)
    nxt = order.next()
    assert nxt is not None and nxt[1] in (67, 87)  # the coarse pass continues from the new focus


def test_order_without_lossy_is_nearest_first() -> None:
    order = FetchOrder(7, lossy=False, focus=3)
    got = []
    while (t := order.next()) is not None:
        got.append(t)
        order.finished(*t)
    assert [k for _, k in got] == [3, 4, 2, 5, 1, 6, 0] and all(kind == "full" for kind, _ in got)


def test_plan_policy() -> None:
    slow, fast = ThroughputMeter(), ThroughputMeter()
    slow.add(1_000_000, 1.0)  # 8 Mbit/s
    fast.add(1_000_000_000, 1.0)
    assert plan_for(slow, force="lossless") is None and plan_for(fast, force="lossy") == FirstPass()
    assert plan_for(slow) is not None
    assert plan_for(fast) is None
    assert plan_for(ThroughputMeter()) is not None  # not measured yet: assume a slow link
    assert _first_from_plan(None) is None and _first_from_plan("rendered") == FirstPass()
    assert _first_from_plan("1.2.840.10008.1.2.4.91").kind == "frames"  # type: ignore[union-attr]


def test_progressive_lossy_then_pixel_equal(server: dict[str, Any]) -> None:
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    cache = Recorder()
    seen_lossy = []

    def progress(vol: Any, full: int, total: int) -> None:
        seen_lossy.append(int(vol.lossy.sum()))

    try:
        load = start_progressive(
            client,
            server["study"],
            server["series"],
            cache=cache,
            force="lossy",
            workers=2,
            stride=6,
            on_progress=progress,
            progress_interval=0.0,
        )
        assert load.handle.wait(60)
        assert load.handle.error is None, load.handle.error
        vol = load.volume
        assert vol is not None and len(vol) == SLICES
        assert vol.complete and not vol.any_lossy and vol.full_count == SLICES
        # the lossy pass ran (some slices were shown lossy first) and every slice went full
        kinds = [kind for kind, _ in load.log]
        assert "lossy" in kinds and kinds.count("full") == SLICES
        assert load.log[0][0] == "lossy" and load.log[0][1] == load.log[1][1]
        assert any(n > 0 for n in seen_lossy)
        # full fidelity: pixel-equal to the files on the remote, in the stack's order
        original = _original(server)
        for k, f in enumerate(vol.stack.frames):
            assert np.array_equal(vol.data[k], original[f.sop_instance_uid]), k
        # every instance went into the cache, as stored (identity kept)
        assert len(cache.put) == SLICES
        sops = {pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in cache.put}
        assert sops == set(original)
        for data in cache.put[:3]:
            sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
            assert data == server["archive"].read(sop)
        assert load.meter.bps and load.meter.total_bytes > 0
    finally:
        client.close_all()


def test_lossy_rendition_is_close_through_the_same_pipeline(server: dict[str, Any]) -> None:
    """The lossy pixels are stored values: their HU (through the frame's Modality LUT) are near the
    original's, so the viewer's window/level work on them."""
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    try:
        load = start_progressive(client, server["study"], server["series"], force="lossy", workers=1)
        assert load.handle.wait(60) and load.handle.error is None
        vol = load.volume
        assert vol is not None
        f = vol.stack.frames[3]
        ds = load._instances[f.sop_instance_uid]
        lossy, nbytes = load._rendered(f, ds, FirstPass(scale=1))
        assert 0 < nbytes < exact_bytes(vol)
        exact = vol.data[3]
        pipe = f.pipeline
        hu_lossy, hu_exact = pipe.modality_values(lossy), pipe.modality_values(exact)
        inside = (hu_exact > -900) & (hu_exact < 1000)  # the widened reading window
        assert inside.any()
        assert np.abs(hu_lossy - hu_exact)[inside].max() <= 10  # 8 bits over 2000 HU: under 8 HU + rounding
        assert not np.array_equal(lossy, exact)  # and it is lossy
    finally:
        client.close_all()


def exact_bytes(vol: Any) -> int:
    return int(vol.data[0].nbytes) * 4  # a PNG of 8 bits is well under the 16-bit slice (and its header)


def test_lossy_frames_refused_falls_back_to_rendered(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan naming lossy frames in a syntax the server does not encode for this image (JPEG
    baseline of 16-bit CT: 406): the first pass goes on with rendered renditions."""
    import hilum.dicomweb.progressive as prog

    j2k = FirstPass(
        "frames", transfer_syntax="1.2.840.10008.1.2.4.50", media_type="image/jpeg", params=(("quality", "50"),)
    )
    monkeypatch.setattr(prog, "plan_for", lambda meter, force=None, slice_bytes=None: j2k)
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    try:
        load = start_progressive(client, server["study"], server["series"], workers=1)
        assert load.handle.wait(60) and load.handle.error is None
        assert load.first is not None and load.first.kind == "rendered"  # switched after the 406
        assert "lossy" in [kind for kind, _ in load.log]
        assert load.volume is not None and load.volume.complete and not load.volume.any_lossy
    finally:
        client.close_all()


def test_cancel_stops(server: dict[str, Any]) -> None:
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    try:
        load = start_progressive(client, server["study"], server["series"], force="lossless", workers=1)
        load.handle.cancel()
        assert load.handle.wait(30)
    finally:
        client.close_all()


def test_first_pass_from_frames_in_a_compressed_syntax(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The adaptive plan's first rendition as frames in JPEG 2000 (what Helper 5's server encodes
    lossy with ``ratio=``): decoded by the same decoders, then replaced by the originals."""
    import hilum.dicomweb.progressive as prog

    j2k = FirstPass(
        "frames", transfer_syntax="1.2.840.10008.1.2.4.91", media_type="image/jp2", params=(("ratio", "20"),)
    )
    monkeypatch.setattr(prog, "plan_for", lambda meter, force=None, slice_bytes=None: j2k)
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    try:
        load = start_progressive(client, server["study"], server["series"], workers=2)
        assert load.handle.wait(60) and load.handle.error is None
        assert load.first == j2k and "lossy" in [kind for kind, _ in load.log]
        vol = load.volume
        assert vol is not None and vol.complete and not vol.any_lossy
        original = _original(server)
        for k, f in enumerate(vol.stack.frames):
            assert np.array_equal(vol.data[k], original[f.sop_instance_uid])
    finally:
        client.close_all()


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50"])
def test_full_pass_in_a_lossless_syntax(server: dict[str, Any], syntax: str) -> None:
    """Full fidelity fetched as JPEG-LS lossless (the adaptive plan's ``full`` on a slow link): the
    server transcodes, every UID and pixel is kept.  A syntax it refuses for these images (JPEG
    baseline of 16-bit CT): as stored."""
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    cache = Recorder()
    try:
        load = start_progressive(client, server["study"], server["series"], cache=cache, force="lossless",
                                 workers=2, full_syntax=syntax)  # fmt: skip
        assert load.handle.wait(60) and load.handle.error is None, load.handle.error
        vol = load.volume
        assert vol is not None and vol.complete
        original = _original(server)
        for k, f in enumerate(vol.stack.frames):
            assert np.array_equal(vol.data[k], original[f.sop_instance_uid])
        stored = {pydicom.dcmread(io.BytesIO(d)).file_meta.TransferSyntaxUID for d in cache.put}
        sops = {pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in cache.put}
        assert sops == set(original)
        if syntax.endswith(".80"):
            assert stored == {syntax} and load.full_syntax == syntax
        else:
            assert syntax not in stored and load.full_syntax == "*"
    finally:
        client.close_all()


def test_order_replanned() -> None:
    order = FetchOrder(10, lossy=True, stride=3, focus=0)
    first = order.next()
    assert first == ("lossy", 0)
    order.set_lossy(False)  # a fast link after all: no more lossy slices
    got = []
    while (t := order.next()) is not None:
        got.append(t)
        order.finished(*t)
    assert all(kind == "full" for kind, _ in got) and {k for _, k in got} == set(range(10))
    order = FetchOrder(10, lossy=False, focus=5)
    assert order.next() == ("full", 5)
    order.set_lossy(True)  # a slow link after all: the slices not yet shown get a lossy pass
    assert order.next() == ("lossy", 6)  # the next slice after the focus first


def test_headers_from_the_instance_listing(server: dict[str, Any]) -> None:
    """The series' headers come from a QIDO-RS listing (per-slice geometry and scaling) plus one
    instance's metadata, not the whole series' /metadata: the same slices in the same order at the
    same positions; the middle slice's lossy frame comes beside the listing (shown first)."""
    client = DicomWebClient(DicomWebSource("remote", server["url"]))
    try:
        # not measured yet: the adaptive plan's lossy frames first (the prefetch is for those)
        load = start_progressive(client, server["study"], server["series"], workers=2)
        assert load.handle.wait(60) and load.handle.error is None, load.handle.error
        assert "listing" in load.timings and "first_image" in load.timings
        ref = start_progressive(client, server["study"], server["series"], force="lossless", workers=2,
                                metadata=client.metadata(server["study"], server["series"]))  # fmt: skip
        assert ref.handle.wait(60) and ref.handle.error is None
        vol, rvol = load.volume, ref.volume
        assert vol is not None and rvol is not None and len(vol) == len(rvol) == SLICES
        for f, g in zip(vol.stack.frames, rvol.stack.frames, strict=True):
            assert f.sop_instance_uid == g.sop_instance_uid
            assert f.geometry is not None and g.geometry is not None
            assert np.allclose(f.geometry.origin, g.geometry.origin)
        assert np.array_equal(vol.data, rvol.data)  # full fidelity either way
        # the prefetched middle slice was not fetched lossy again by the pool
        pre = load._prefetched
        assert pre is not None
        k = next(i for i, f in enumerate(vol.stack.frames) if f.sop_instance_uid == pre[0])
        assert ("lossy", k) not in load.log
    finally:
        client.close_all()


def test_full_syntax_follows_the_link() -> None:
    """Lossless transcoding on a slow measured link, as stored on a very fast one (loopback)."""
    slow, fast = ThroughputMeter(), ThroughputMeter()
    slow.add(1_000_000, 0.8)  # 10 Mbit/s
    fast.add(100_000_000, 0.5)  # 1.6 Gbit/s
    plan_for(slow, slice_bytes=512 * 512 * 2)
    plan_for(fast, slice_bytes=512 * 512 * 2)
    assert slow.full_syntax == "1.2.840.10008.1.2.4.80"
    assert fast.full_syntax == "*"
