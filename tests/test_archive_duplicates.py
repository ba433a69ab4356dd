"""A duplicate whose content differs from the stored one is reported, not plain success (issue 13 item 9):
``IngestResult(status="duplicate", code="duplicate-differs")`` from the single and the batch path alike
(threads and worker processes), the stored instance kept byte for byte.  The same instance again, or in
another (lossless) transfer syntax, is a plain duplicate."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from hilum.archive import Archive, batch
from test_archive import make_instance


def variants() -> dict[str, bytes]:
    sop, study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    kw = dict(sop_uid=sop, study_uid=study, series_uid=series)
    original = make_instance(**kw)
    ds = pydicom.dcmread(io.BytesIO(original))
    ds.compress(RLELossless, generate_instance_uid=False)
    rle = io.BytesIO()
    ds.save_as(rle, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(original))
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.astype(np.int16).tobytes()
    pixels = io.BytesIO()
    ds.save_as(pixels, enforce_file_format=True)
    return {"original": original, "same-again": original, "rle": rle.getvalue(),
            "other-name": make_instance(**kw, name="Other^Name"), "other-pixels": pixels.getvalue()}


EXPECTED = {"same-again": None, "rle": None, "other-name": "duplicate-differs", "other-pixels": "duplicate-differs"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def arch(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    a = Archive(tmp_path / "data", database_url=url)
    yield a
    a.close()


def test_single_ingest_reports_a_duplicate_that_differs(arch: Archive) -> None:
    v = variants()
    first = arch.ingest(v["original"])
    assert (first.status, first.code) == ("stored", None)
    kept = arch.read(first.sop_instance_uid or "")
    for name, code in EXPECTED.items():
        res = arch.ingest(v[name])
        assert (res.status, res.code) == ("duplicate", code), name
        assert res.ok and res.sop_instance_uid == first.sop_instance_uid
        if code:
            assert res.reason and "\n" not in res.reason
    assert arch.read(first.sop_instance_uid or "") == kept
    assert arch.stats()["instances"] == 1 and arch.check().clean


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_batch_ingest_reports_a_duplicate_that_differs(arch: Archive, mode: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MODE", mode)
    monkeypatch.setattr(batch, "BRIDGES", 0)
    v = variants()
    # Against what is stored (found early by the workers) ...
    assert arch.ingest(v["original"]).status == "stored"
    results = arch.ingest_many([v[n] for n in EXPECTED], workers=2)
    assert [(r.status, r.code) for r in results] == [("duplicate", c) for c in EXPECTED.values()]
    # ... and within one batch (found by the index writer): the first copy is the one stored.
    w = variants()
    results = arch.ingest_many([w["original"], *(w[n] for n in EXPECTED)], workers=2)
    assert [(r.status, r.code) for r in results] == [("stored", None)] + [("duplicate", c) for c in EXPECTED.values()]
    assert arch.read(results[0].sop_instance_uid or "") == w["original"]
    assert arch.stats()["instances"] == 2 and arch.check().clean


def test_overwrite_policy_still_replaces(tmp_path: Path) -> None:
    v = variants()
    with Archive(tmp_path / "data", duplicate_policy="overwrite") as a:
        uid = a.ingest(v["original"]).sop_instance_uid or ""
        res = a.ingest(v["other-name"])
        assert (res.status, res.code) == ("replaced", None)
        assert a.read(uid) == v["other-name"] and a.check().clean
