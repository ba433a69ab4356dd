"""Plugin results as DICOM in the archive (hilum.ai.results): SEG, FRACTIONAL SEG, TID 1500 SR, read
back by highdicom, by hilum's own SEG reader onto the series, and checked by dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from _ai_support import POST_OK, make_plugin
from _viewer_data import STUDY
from hilum import ai
from hilum.dicom.generator import generate_ct_series
from hilum.dicom.segmentation import read_seg
from hilum.dicom.stack import Stack, frames_from_dataset


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("plugin")
    dist = make_plugin(root, "hilum-test-results", post=POST_OK, heat=True, score=True)
    p = ai.discovery.load_path(dist / "hilum_test_results")
    yield p
    sys.path[:] = [x for x in sys.path if x != str(dist)]


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_store_results_in_the_archive(archive, plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ct = generate_ct_series(STUDY, rows=64, columns=64, slices=12, fov=360.0, slice_thickness=5.0, noise_sigma=0.0)
    for ds in ct:
        assert archive.ingest(ds).ok
    series_uid = ct[0].SeriesInstanceUID
    before = {r["SOPInstanceUID"]: Path(r["path"]).read_bytes() for r in archive.instances(series_uid=series_uid)}

    series = ai.SeriesInput.from_archive(archive, series_uid)
    result = ai.run(plugin, series)
    stored = ai.store(archive, result)
    assert [r.status for r in stored] == ["stored"] * 3
    assert len({r.series_instance_uid for r in stored}) == 3  # a new series each: SEG, heat map, SR
    assert all(r.study_instance_uid == STUDY.uid for r in stored)

    # the source is untouched: same instances, same bytes
    after = {r["SOPInstanceUID"]: Path(r["path"]).read_bytes() for r in archive.instances(series_uid=series_uid)}
    assert after == before

    rows = {r["SeriesInstanceUID"]: r for r in archive.query("SERIES", {"StudyInstanceUID": STUDY.uid,
                                                                          "SeriesDescription": "AI:*"})}  # fmt: skip
    assert set(rows) == {r.series_instance_uid for r in stored}
    assert {r["Modality"] for r in rows.values()} == {"SEG", "SR"}

    seg_r, heat_r, sr_r = stored
    seg = pydicom.dcmread(archive.path(seg_r.sop_instance_uid))
    assert seg.SeriesDescription == "AI: Body mask (test) 1.2.3" and seg.Manufacturer == "Hilum"
    assert seg.ManufacturerModelName == "hilum-test-results" and "hilum-test-results 1.2.3" in seg.SoftwareVersions
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    desc = seg.SegmentSequence[0]
    assert desc.SegmentAlgorithmType == "AUTOMATIC" and desc.SegmentLabel == "Body"
    assert desc.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "hilum-test-results"
    # re-opened onto the series by hilum's SEG reader: the same label map
    stack = Stack.from_frames([f for ds in ct for f in frames_from_dataset(ds)])
    back = read_seg(seg, stack)
    assert result.labels is not None and np.array_equal(back.array, result.labels.array)
    assert hd.seg.segread(archive.path(seg_r.sop_instance_uid)).SegmentationType == "BINARY"

    heat = hd.seg.segread(archive.path(heat_r.sop_instance_uid))
    assert heat.SegmentationType == "FRACTIONAL" and heat.SegmentationFractionalType == "PROBABILITY"
    uids = [h.SOPInstanceUID for h in series.headers]
    probs = heat.get_pixels_by_source_instance(uids, segment_numbers=[1], combine_segments=False,
                                               rescale_fractional=True, dtype=np.float32)  # fmt: skip
    assert result.heatmap is not None and np.allclose(probs[..., 0], result.heatmap, atol=1 / 255 + 1e-6)

    sr = hd.sr.srread(archive.path(sr_r.sop_instance_uid))
    assert sr.SeriesDescription == "AI: Body mask (test) 1.2.3" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1 and groups[0].finding_type.meaning == "Body structure"
    (vol,) = [m for m in groups[0].get_measurements() if m.name.meaning == "Volume"]
    assert vol.value == pytest.approx(result.findings[0].measurements["Volume"][0], rel=1e-6)
    assert vol.unit.value == "ml"
    vgroups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(vgroups) == 1 and vgroups[0].get_measurements()[0].name.meaning == "Volume"
    ref = vgroups[0].reference_type
    assert ref is not None
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for x in s.ReferencedSeriesSequence for i in x.ReferencedSOPSequence}  # fmt: skip
    assert seg_r.sop_instance_uid in evidence and set(uids) <= evidence

    if shutil.which("dciodvfy"):
        for r in stored:
            assert _dciodvfy_errors(archive.path(r.sop_instance_uid)) == [], r.sop_class_uid


def test_nothing_to_store_stores_nothing(archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ct = generate_ct_series(STUDY, rows=32, columns=32, slices=4, fov=360.0, slice_thickness=5.0, noise_sigma=0.0)
    for ds in ct:
        ds.PixelData = np.zeros((32, 32), dtype=np.int16).tobytes()  # -1024 HU everywhere: no body
    dist = make_plugin(tmp_path, "hilum-test-empty")
    plugin = ai.discovery.load_path(dist / "hilum_test_empty")
    result = ai.run(plugin, ai.SeriesInput.from_datasets(ct))
    assert result.empty
    assert ai.store(archive, result) == []
