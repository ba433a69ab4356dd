"""The classical example plugin ``plugins/hilum-body-masks``: its ONNX graph against two other
implementations of the same masks and against the phantom's truth, and a run through the host.

- the committed ``model.onnx`` is what ``build.py`` writes today (graph rebuilt, same bytes) and the
  manifest's sha256 is its checksum;
- plain onnxruntime on a generated CT gives bit for bit the numpy reference of ``build.py``;
- SimpleITK (binary threshold, box opening/closing, ``BinaryFillhole``) gives the same masks up to a
  Dice of 0.99 — they differ only in how holes are filled (true connectivity vs four directions);
- against the phantom's own labels (body = not air, bone = cortical/cancellous/rib, lung = lung):
  Dice >= 0.98 (noise of 10 HU does not cross the thresholds, which sit 400+ HU from every tissue);
- ``hilum.ai.run`` on the series: the labels are the graph's, the findings carry each mask's volume
  within 2 % of the phantom's, and ``store`` puts a SEG into the archive that reads back.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "hilum-body-masks"
PACKAGE = PLUGIN / "hilum_body_masks"


def _build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hilum_body_masks_build", PLUGIN / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


build = _build_module()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    """A 512x512 CT of the chest phantom (lungs ending at z = -20 mm) over z -40..+36 mm, and its truth."""
    from hilum.dicom.generator import DOE, Phantom, generate_ct_series, make_study
    from hilum.dicom.generator.series import stack_geometry

    phantom = Phantom().with_lung_base(-20.0)
    study = make_study(DOE, accession="AI19B1", seed=19)
    datasets = generate_ct_series(study, slices=20, slice_thickness=4.0, phantom=phantom, seed=1919)
    hu = np.stack([ds.pixel_array.astype(np.float32) - 1024.0 for ds in datasets])
    g = stack_geometry(rows=512, columns=512, slices=20, fov=360.0, spacing=4.0)
    truth = np.stack([phantom.labels(g.points(k)) for k in range(20)])
    return datasets, hu, truth


def _session():  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(PACKAGE / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])


def test_committed_model_is_what_build_writes_and_its_checksum_is_in_the_manifest(tmp_path: Path) -> None:
    import hashlib
    import tomllib

    out = tmp_path / "model.onnx"
    build.build(out)
    committed = (PACKAGE / "model.onnx").read_bytes()
    assert out.read_bytes() == committed, "model.onnx is stale: run plugins/hilum-body-masks/build.py"
    manifest = tomllib.loads((PACKAGE / "hilum-plugin.toml").read_text(encoding="utf-8"))
    assert manifest["models"][0]["sha256"] == hashlib.sha256(committed).hexdigest()


def test_graph_equals_the_numpy_reference_bit_for_bit(ct) -> None:  # type: ignore[no-untyped-def]
    _, hu, _ = ct
    labels, masks = _session().run(None, {"hu": hu[:, None]})
    body, bone, lung = build.reference(hu)
    assert labels.dtype == np.uint8 and labels.shape == (20, 1, 512, 512)
    assert np.array_equal(masks[:, 0] > 0.5, body)
    assert np.array_equal(masks[:, 1] > 0.5, bone)
    assert np.array_equal(masks[:, 2] > 0.5, lung)
    expected = np.where(lung, 3, np.where(bone, 2, np.where(body, 1, 0)))
    assert np.array_equal(labels[:, 0], expected)
    # the slices under the lung base have no lung; those above have both lungs
    assert not lung[:3].any() and lung[10:].any()


def _sitk_masks(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same masks by SimpleITK, slice by slice: true hole filling, box-kernel morphology."""
    import SimpleITK as sitk

    def arr(img: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(img).astype(bool)

    bodies, bones, lungs = [], [], []
    for sl in hu:
        img = sitk.GetImageFromArray(sl)
        body = sitk.BinaryThreshold(img, lowerThreshold=build.BODY_HU + 1e-3, upperThreshold=1e9)
        r = build.BODY_KERNEL // 2
        body = sitk.BinaryMorphologicalOpening(body, [r, r], sitk.sitkBox)
        body = sitk.BinaryMorphologicalClosing(body, [r, r], sitk.sitkBox)
        body = sitk.BinaryFillhole(body)
        b = arr(body)
        lung = sitk.GetImageFromArray((b & (sl < build.LUNG_HU)).astype(np.uint8))
        lung = sitk.BinaryMorphologicalOpening(lung, [1, 1], sitk.sitkBox)
        bone = sitk.BinaryThreshold(img, lowerThreshold=build.BONE_HU + 1e-3, upperThreshold=1e9)
        bone = sitk.BinaryMorphologicalClosing(bone, [1, 1], sitk.sitkBox)
        bodies.append(b)
        bones.append(b & arr(bone))
        lungs.append(arr(lung))
    return np.stack(bodies), np.stack(bones), np.stack(lungs)


def test_graph_agrees_with_simpleitk_and_with_the_phantom_truth(ct) -> None:  # type: ignore[no-untyped-def]
    from hilum.dicom.generator.phantom import AIR, CANCELLOUS_BONE, CORTICAL_BONE, LUNG, RIB

    _, hu, truth = ct
    _, masks = _session().run(None, {"hu": hu[:, None]})
    ours = [masks[:, i] > 0.5 for i in range(3)]
    for name, mine, theirs in zip(("body", "bone", "lung"), ours, _sitk_masks(hu), strict=True):
        assert dice(mine, theirs) >= 0.99, name
    true = (truth != AIR, np.isin(truth, (CORTICAL_BONE, CANCELLOUS_BONE, RIB)), truth == LUNG)
    for name, mine, t in zip(("body", "bone", "lung"), ours, true, strict=True):
        assert dice(mine, t) >= 0.98, (name, dice(mine, t))


def test_run_through_the_host_gives_labels_volumes_and_a_seg(ct, archive) -> None:  # type: ignore[no-untyped-def]
    from hilum.ai import SeriesInput, run, store
    from hilum.ai.discovery import load_path
    from hilum.dicom.generator.phantom import AIR, LUNG
    from hilum.dicom.segmentation import read_seg
    from hilum.dicom.stack import Stack, frames_from_dataset

    datasets, hu, truth = ct
    plugin = load_path(PACKAGE)
    series = SeriesInput.from_datasets(datasets)
    seen: list[tuple[int, int]] = []
    result = run(plugin, series, progress=lambda d, t: seen.append((d, t)), threads=1)
    assert seen[-1] == (3, 3)  # 20 slices in batches of 8
    body, bone, lung = build.reference(series.values.astype(np.float32))
    expected = np.where(lung, 3, np.where(bone, 2, np.where(body, 1, 0)))
    assert result.labels is not None
    assert np.array_equal(result.labels.array, expected)
    assert [s.label for s in result.labels.segments.values()] == ["Body", "Bone", "Lung"]
    voxel_ml = float(np.prod(series.spacing_mm)) / 1000.0
    by_label = {f.label: f for f in result.findings}
    # volume order ascends in z like the generated series, so the truth lines up slice for slice
    for label, true_mask in (("Body", truth != AIR), ("Lung", truth == LUNG)):
        value, unit = by_label[label].measurements["Volume"]
        assert unit == "ml"
        assert value == pytest.approx(true_mask.sum() * voxel_ml, rel=0.02), label
    assert result.timings.inference > 0
    stored = store(archive, result)
    kinds = {r.series_instance_uid for r in stored}
    rows = archive.query("SERIES", {"StudyInstanceUID": series.study_uid, "SeriesDescription": "AI:*"})
    assert {r["SeriesInstanceUID"] for r in rows} == kinds
    assert {r["Modality"] for r in rows} == {"SEG", "SR"}  # the SEG and the volumes' SR
    seg_r = next(r for r in stored if r.sop_class_uid == SegmentationStorage)
    seg = pydicom.dcmread(archive.path(seg_r.sop_instance_uid))
    assert seg.SeriesDescription == "AI: Body, bone and lung masks (HU thresholds) 1.0.0"
    stack = Stack.from_frames([f for ds in datasets for f in frames_from_dataset(ds)])
    back = read_seg(seg, stack)
    assert np.array_equal(back.array, result.labels.array)
    # the SEG and the SR with the volumes pass dicom3tools' IOD checker
    for r in stored:
        proc = subprocess.run(["dciodvfy", str(archive.path(r.sop_instance_uid))], capture_output=True, text=True)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, errors
