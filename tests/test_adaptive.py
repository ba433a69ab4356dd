"""Adaptive compression: the policy, and frames/instances in the syntax and ratio a client asks for.

A real node on loopback (:class:`DicomWebService`) holding a generated CT;
Hilum's client (:func:`hilum.dicomweb.adaptive.fetch_frames`) and plain
``requests`` ask for lossless JPEG-LS / JPEG 2000 / HTJ2K frames (pixel-equal
to the stored file), lossy JPEG 2000 / HTJ2K at ``?ratio=`` (close, marked
lossy), and lossy instances (marked, refused without an explicit ratio).
What is stored must not change.  No timing assertions (speed: ``bench/telerad``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.config import Config
from hilum.dicom.generator import YAMADA, generate_ct_series, make_study
from hilum.dicomweb import adaptive, multipart
from hilum.dicomweb.adaptive import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    J2K,
    J2K_LOSSLESS,
    JPEG_LS_LOSSLESS,
    LinkMeter,
    Rendition,
    choose,
    decode_frame,
    fetch_frames,
)
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource
from hilum.dicomweb.service import DicomWebService

PW = "correct horse"


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("adaptive")
    archive = Archive(root / "data")
    UserStore.of(archive).add("vic", "viewer", PW)
    study = make_study(YAMADA, accession="ADA0001", date="20260301", time="101500", seed="adaptive")
    ct = generate_ct_series(study, rows=128, columns=128, slices=3, seed=7)
    for ds in ct:
        assert archive.ingest(_bytes(ds)).status == "stored"
    service = DicomWebService(Config(data_dir=root / "data", web_port=0), archive)
    service.start()
    yield {
        "service": service,
        "archive": archive,
        "url": service.url,
        "ct": ct,
        "study": study,
        "root": root,
    }
    service.stop()
    archive.close()


def _stored_hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "data").rglob("*"))
        if p.is_file()
        and p.suffix not in (".db", ".sqlite", ".db-wal", ".db-shm")
        and "wal" not in p.name
        and "shm" not in p.name
        and "log" not in p.suffix
    }


def _ids(node: dict[str, Any], i: int = 0) -> tuple[str, str, str]:
    ds = node["ct"][i]
    return node["study"].uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _client(node: dict[str, Any]) -> DicomWebClient:
    return DicomWebClient(DicomWebSource("remote", node["url"], "vic", PW))


def _decode(node: dict[str, Any], data: bytes, ts: str) -> np.ndarray:
    ds = node["ct"][0]
    return decode_frame(
        data,
        ts,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        bits_allocated=int(ds.BitsAllocated),
        pixel_representation=int(ds.PixelRepresentation),
    )


# ------------------------------------------------------------------------ policy


def test_choose_fast_link_is_lossless_in_one_pass() -> None:
    plan = choose(100e6, 0.02)
    assert plan.first is None and not plan.progressive
    assert plan.full.transfer_syntax == JPEG_LS_LOSSLESS and not plan.full.lossy
    assert plan.full.params() == {} and "transfer-syntax=1.2.840.10008.1.2.4.80" in plan.full.accept()
    assert choose(1e9, 0.001, prefer_htj2k=True).full.transfer_syntax == HTJ2K_LOSSLESS


def test_choose_slow_or_unmeasured_link_is_progressive() -> None:
    slow = choose(10e6, 0.05)
    assert slow.progressive and slow.first is not None
    assert slow.first.transfer_syntax == HTJ2K and slow.first.lossy
    assert slow.first.ratio is not None and adaptive.MIN_RATIO <= slow.first.ratio <= adaptive.MAX_RATIO
    assert slow.first.query() == f"?ratio={slow.first.ratio:g}"
    assert slow.full.transfer_syntax == JPEG_LS_LOSSLESS and not slow.full.lossy
    # slower link: a higher ratio (smaller first images), never above the cap
    slower = choose(2e6, 0.1)
    assert slower.first is not None and slower.first.ratio is not None and slower.first.ratio >= slow.first.ratio
    assert choose(1e3, 1.0).first.ratio == adaptive.MAX_RATIO  # type: ignore[union-attr]
    # not measured yet: start progressive
    assert choose(None, None).progressive
    # a longer round trip asks for more frames per request
    assert choose(10e6, 0.2).batch > choose(10e6, 0.01).batch >= 1
    # what the server offers limits the plan
    j2k = choose(10e6, 0.05, available=frozenset({J2K, JPEG_LS_LOSSLESS}))
    assert j2k.first is not None and j2k.first.transfer_syntax == J2K  # a node without HTJ2K
    only = choose(10e6, 0.05, available=frozenset({J2K_LOSSLESS}))
    assert only.first is None and only.full.transfer_syntax == J2K_LOSSLESS
    assert choose(10e6, 0.05, available=frozenset()).full.transfer_syntax == adaptive.EVRLE


def test_link_meter() -> None:
    m = LinkMeter()
    assert m.throughput_bps is None and m.rtt_s is None
    m.record(100, 0.05, 0.05, end=10.0)  # small: round trip only
    assert m.throughput_bps is None and m.rtt_s == 0.05
    m.record(1_000_000, 0.06, 1.05, end=20.0)  # 1 MB: 1.05 s, one 50 ms round trip of it latency
    assert m.rtt_s == 0.05
    assert m.throughput_bps == pytest.approx(8e6)
    assert m.plan().progressive  # 8 Mbit/s: a lossless 512² slice takes ~0.2 s
    # four concurrent responses share the link: their busy time is counted once
    c = LinkMeter()
    c.record(1000, 0.01, 0.01, end=0.0)
    for _ in range(4):
        c.record(250_000, 0.02, 0.11, end=30.11)  # all in [30.0, 30.11]: 1 MB in 0.1 s after the round trip
    assert c.throughput_bps == pytest.approx(80e6)
    assert not c.plan().progressive


# ------------------------------------------------------------------------ server


@pytest.mark.parametrize("ts", [JPEG_LS_LOSSLESS, J2K_LOSSLESS, HTJ2K_LOSSLESS])
def test_lossless_frames_are_pixel_equal(node: dict[str, Any], ts: str) -> None:
    hc = _client(node)
    meter = LinkMeter(min_body=1)
    for i in range(3):
        [data] = fetch_frames(hc, *_ids(node, i), [1], Rendition(ts), meter)
        assert np.array_equal(_decode(node, data, ts), node["ct"][i].pixel_array)
    assert meter.rtt_s is not None and meter.throughput_bps is not None
    r = requests.get(
        node["url"] + "/studies/{}/series/{}/instances/{}/frames/1".format(*_ids(node)),
        auth=("vic", PW),
        headers={"Accept": Rendition(ts).accept()},
        timeout=30,
    )
    assert r.status_code == 200 and "X-Hilum-Lossy-Image-Compression" not in r.headers
    assert (
        f"transfer-syntax={ts}" in r.headers["Content-Type"]
        or ts in multipart.decode(r.content, multipart.boundary_of(r.headers["Content-Type"]))[0][0]["content-type"]
    )


@pytest.mark.parametrize("ts", [J2K, HTJ2K])
def test_lossy_frames_at_a_ratio_are_close_and_marked(node: dict[str, Any], ts: str) -> None:
    before = _stored_hashes(node["root"])
    original = node["ct"][0].pixel_array.astype(np.float64)
    span = float(original.max() - original.min())
    sizes = {}
    for ratio in (8.0, 30.0):
        rendition = Rendition(ts, lossy=True, ratio=ratio)
        url = node["url"] + "/studies/{}/series/{}/instances/{}/frames/1".format(*_ids(node)) + rendition.query()
        r = requests.get(url, auth=("vic", PW), headers={"Accept": rendition.accept()}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["X-Hilum-Lossy-Image-Compression"] == "01"
        assert r.headers["X-Hilum-Lossy-Image-Compression-Method"] == ("ISO_15444_1" if ts == J2K else "ISO_15444_15")
        achieved = float(r.headers["X-Hilum-Lossy-Image-Compression-Ratio"])
        assert achieved >= ratio * 0.5  # near the asked ratio (loose: small images, codec granularity)
        [(_h, data)] = multipart.decode(r.content, multipart.boundary_of(r.headers["Content-Type"]))
        sizes[ratio] = len(data)
        got = _decode(node, data, ts).astype(np.float64)
        err = float(np.abs(got - original).mean())
        assert 0 < err < 0.05 * span  # lossy, yet the same image
    assert sizes[30.0] < sizes[8.0]
    # Hilum's client gets the same through the plan's rendition
    [data] = fetch_frames(_client(node), *_ids(node), [1], Rendition(ts, lossy=True, ratio=20))
    assert np.abs(_decode(node, data, ts).astype(np.float64) - original).mean() < 0.05 * span
    assert _stored_hashes(node["root"]) == before  # nothing stored changed
    rows = node["archive"].query("IMAGE", {"StudyInstanceUID": node["study"].uid})
    assert {r["SOPInstanceUID"] for r in rows} == {str(d.SOPInstanceUID) for d in node["ct"]}


def test_lossy_instances_only_on_explicit_request_and_marked(node: dict[str, Any]) -> None:
    study, series, sop = _ids(node)
    url = f"{node['url']}/studies/{study}/series/{series}/instances/{sop}"
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'
    assert requests.get(url, auth=("vic", PW), headers={"Accept": accept}, timeout=30).status_code == 406
    r = requests.get(url + "?ratio=12", auth=("vic", PW), headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["X-Hilum-Lossy-Image-Compression"] == "01"
    [(h, data)] = multipart.decode(r.content, multipart.boundary_of(r.headers["Content-Type"]))
    assert J2K in h["content-type"]
    ds = pydicom.dcmread(io.BytesIO(data))
    assert str(ds.file_meta.TransferSyntaxUID) == J2K
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(ds.LossyImageCompressionRatio) > 4
    assert str(ds.SOPInstanceUID) == sop  # a rendition of this instance on the wire, marked
    original = node["ct"][0].pixel_array.astype(np.float64)
    assert np.abs(ds.pixel_array.astype(np.float64) - original).mean() < 0.05 * float(np.ptp(original))
    # HTJ2K lossless instance: pixel-equal, not marked
    accept_ht = f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K_LOSSLESS}'
    r = requests.get(url, auth=("vic", PW), headers={"Accept": accept_ht}, timeout=30)
    assert r.status_code == 200 and "X-Hilum-Lossy-Image-Compression" not in r.headers
    [(_h, data)] = multipart.decode(r.content, multipart.boundary_of(r.headers["Content-Type"]))
    ht = pydicom.dcmread(io.BytesIO(data))
    assert str(ht.file_meta.TransferSyntaxUID) == HTJ2K_LOSSLESS
    assert np.array_equal(ht.pixel_array, node["ct"][0].pixel_array)
    assert ht.get("LossyImageCompression") in (None, "", "00")


@pytest.mark.parametrize("ratio", ["abc", "0.5", "1000"])
def test_bad_ratio_is_400(node: dict[str, Any], ratio: str) -> None:
    url = node["url"] + "/studies/{}/series/{}/instances/{}/frames/1".format(*_ids(node)) + f"?ratio={ratio}"
    r = requests.get(url, auth=("vic", PW), headers={"Accept": Rendition(J2K).accept()}, timeout=30)
    assert r.status_code == 400
    with pytest.raises(DicomWebError):
        fetch_frames(_client(node), *_ids(node), [9], Rendition(J2K, lossy=True, ratio=10))
