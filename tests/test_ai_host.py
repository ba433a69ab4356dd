"""The AI plugin host end to end with real installed plugins (pip --target into tmp), real onnxruntime
sessions and a generated CT: discovery without import, runs, decoding, cancel, failures."""

from __future__ import annotations

import copy
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _ai_support import POST_OK, POST_RAISES, make_plugin, pip_install
from _viewer_data import STUDY
from hilum import ai
from hilum.ai import ManifestError, PluginCancelled, PluginError
from hilum.dicom.generator import generate_ct_series

INIT_RAISES = 'raise RuntimeError("importing this plugin is forbidden")\n'
CRASH = "import os\n\ndef findings(outputs, ctx):\n    os.abort()\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Test plugins installed with pip into an isolated folder put on sys.path for this module."""
    root = tmp_path_factory.mktemp("plugins")
    target = root / "site"
    specs = {
        "hilum-test-body": {"post": POST_OK, "heat": True, "score": True},
        "hilum-test-raises": {"post": POST_RAISES, "init": INIT_RAISES},
        "hilum-test-slow": {"slow_ms": 400, "batch": 1},
        "hilum-test-onebatch": {"slow_ms": 4000, "batch": 64},
        "hilum-test-badshape": {"bad_shape": True},
        "hilum-test-argmax": {"channels": 2},
        "hilum-test-resample": {"size": (32, 32), "spacing": (10.0, 0.0, 0.0)},
        "hilum-test-volume": {"layout": "volume"},
        "hilum-test-crash": {"post": CRASH},
        "hilum-test-tampered": {},
    }
    pip_install([make_plugin(root / "src", name, **kw) for name, kw in specs.items()], target)  # type: ignore[arg-type]
    (target / "hilum_test_tampered" / "model.onnx").write_bytes(b"not the model")
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for mod in [m for m in sys.modules if m.startswith("hilum_test_")]:
        del sys.modules[mod]


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    return generate_ct_series(STUDY, rows=64, columns=64, slices=12, fov=360.0, slice_thickness=5.0, noise_sigma=0.0)


@pytest.fixture(scope="module")
def series(ct):  # type: ignore[no-untyped-def]
    return ai.SeriesInput.from_datasets(ct)


def truth(series: ai.SeriesInput) -> np.ndarray:
    return np.asarray(series.values) >= -500


def test_discovery_finds_installed_plugins_without_importing_them(site: Path) -> None:
    infos = {i.name: i for i in ai.discover([str(site)])}
    assert {"hilum-test-body", "hilum-test-raises", "hilum-test-slow"} <= set(infos)
    body = infos["hilum-test-body"]
    assert body.ok and body.version == "1.2.3" and body.title == "Body mask (test)"
    assert body.distribution == "hilum-test-body" and body.path == site / "hilum_test_body" / "hilum-plugin.toml"
    # the plugin whose __init__ raises is listed, valid, and was never imported
    assert infos["hilum-test-raises"].ok
    assert "hilum_test_raises" not in sys.modules
    # the default search (sys.path) finds them too
    assert "hilum-test-body" in {i.name for i in ai.discover()}


def test_discovery_reports_problems(tmp_path: Path) -> None:
    dist = make_plugin(tmp_path / "src", "hilum-test-broken")
    manifest = dist / "hilum_test_broken" / "hilum-plugin.toml"
    manifest.write_text(manifest.read_text().replace('normalise = "window01"', 'normalise = "wrong"'))
    other = make_plugin(tmp_path / "src", "hilum-test-renamed")
    m2 = other / "hilum_test_renamed" / "hilum-plugin.toml"
    m2.write_text(m2.read_text().replace('name = "hilum-test-renamed"', 'name = "something-else"'))
    target = tmp_path / "site"
    pip_install([dist, other], target)
    infos = {i.name: i for i in ai.discover([str(target)])}
    assert not infos["hilum-test-broken"].ok
    assert any(p.startswith("input.normalise: must be one of") for p in infos["hilum-test-broken"].problems)
    assert any("is not the entry point's name" in p for p in infos["hilum-test-renamed"].problems)
    with pytest.raises(ManifestError, match="input.normalise"):
        ai.load("hilum-test-broken", [str(target)])


def test_load_unknown_plugin_names_the_installed_ones(site: Path) -> None:
    with pytest.raises(PluginError, match="not installed .*hilum-test-body"):
        ai.load("no-such-plugin", [str(site)])


def test_checksum_mismatch_refuses_before_any_session(site: Path) -> None:
    with pytest.raises(PluginError, match="does not match its checksum"):
        ai.load("hilum-test-tampered")


def test_series_input_is_the_volume_order(ct, series) -> None:  # type: ignore[no-untyped-def]
    from hilum.dicom.stack import Stack, frames_from_dataset

    stack = Stack.from_frames([f for ds in ct for f in frames_from_dataset(ds)])
    assert series.shape == (12, 64, 64) and series.modality == "CT"
    assert series.spacing_mm[0] == pytest.approx(5.0) and series.spacing_mm[1] == pytest.approx(360 / 64)
    assert [h.SOPInstanceUID for h in series.headers] == [
        stack.order.items[u].sop_instance_uid for u in stack.order.unique
    ]
    assert "PixelData" not in series.headers[0]
    by_uid = {ds.SOPInstanceUID: ds for ds in ct}
    h = by_uid[series.headers[3].SOPInstanceUID]
    assert np.array_equal(series.values[3], h.pixel_array.astype(np.int32) + int(h.RescaleIntercept))


def test_full_run_labels_heatmap_score_findings(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    plugin = ai.load("hilum-test-body")
    seen: list[tuple[int, int]] = []
    result = ai.run(plugin, series, progress=lambda d, t: seen.append((d, t)), threads=1)
    assert seen == [(1, 3), (2, 3), (3, 3)]  # 12 slices in batches of 4
    assert result.series_uid == series.series_uid and result.plugin.name == "hilum-test-body"
    assert result.labels is not None and result.labels.shape == series.shape
    assert np.array_equal(result.labels.array == 1, truth(series))
    assert result.labels.segments[1].label == "Body" and result.labels.segments[1].algorithm == "AUTOMATIC"
    x = (np.clip(series.values, -1000, 0).astype(np.float32) + 1000) / 1000
    assert result.heatmap is not None and np.allclose(result.heatmap, x * x, atol=1e-5)
    assert result.score is not None and result.score.label == "Body fraction"
    assert result.score.value == pytest.approx(truth(series).mean())
    (f,) = result.findings
    assert f.label == "Body" and f.slice_index is not None and 0 <= f.slice_index < 12
    assert f.measurements["Volume"][1] == "ml" and f.measurements["Volume"][0] > 0
    assert result.timings.inference > 0 and result.timings.total >= result.timings.inference


def test_decodings_argmax_resample_volume(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    t = truth(series)
    argmax = ai.run(ai.load("hilum-test-argmax"), series)
    assert argmax.labels is not None and np.array_equal(argmax.labels.array == 1, t)
    volume = ai.run(ai.load("hilum-test-volume"), series, progress=None)
    assert volume.labels is not None and np.array_equal(volume.labels.array == 1, t)
    # model grid 6 x 32 x 32 (10 mm slices, 32² pixels), labels back on 12 x 64 x 64
    res = ai.run(ai.load("hilum-test-resample"), series)
    assert res.labels is not None and res.labels.shape == series.shape
    agree = (res.labels.array == 1) == t
    assert agree.mean() > 0.95


def test_a_run_off_the_calling_thread_with_cancel_between_batches(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    plugin = ai.load("hilum-test-slow")
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            cancel.set()

    out: dict[str, BaseException | object] = {}

    def work() -> None:
        try:
            out["r"] = ai.run(plugin, series, progress=progress, cancel=cancel, threads=1)
        except BaseException as exc:  # noqa: BLE001
            out["r"] = exc

    th = threading.Thread(target=work)
    th.start()
    th.join(120)
    assert isinstance(out["r"], PluginCancelled) and seen == [1, 2]


def test_cancel_inside_a_running_batch_terminates_it(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    plugin = ai.load("hilum-test-onebatch")  # one batch of all 12 slices, ~4 s of matrix products
    cancel = threading.Event()
    seen: list[int] = []
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    with pytest.raises(PluginCancelled):
        ai.run(plugin, series, progress=lambda d, t: seen.append(d), cancel=cancel, threads=1)
    assert seen == []  # the one batch never finished: RunOptions.terminate stopped it


def test_raising_hook_is_a_plugin_error(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    plugin = ai.load("hilum-test-raises")
    with pytest.raises(PluginError, match="hook .*cannot be imported: importing this plugin is forbidden"):
        ai.run(plugin, series)


def test_hook_raising_at_run(tmp_path: Path, series) -> None:  # type: ignore[no-untyped-def]
    dist = make_plugin(tmp_path, "hilum-test-hookfail", post=POST_RAISES)
    plugin = ai.discovery.load_path(dist / "hilum_test_hookfail")
    with pytest.raises(PluginError, match="postprocess hook failed: RuntimeError: the hook broke"):
        ai.run(plugin, series)


def test_bad_output_shape_is_a_plugin_error(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PluginError, match="output 'prob' has shape .* for a batch of 4 slices"):
        ai.run(ai.load("hilum-test-badshape"), series)


def test_series_not_accepted(site: Path, ct) -> None:  # type: ignore[no-untyped-def]
    mr = [copy.deepcopy(ds) for ds in ct]
    for ds in mr:
        ds.Modality = "MR"
    with pytest.raises(PluginError, match="not for this series: it takes CT series, this one is MR"):
        ai.run(ai.load("hilum-test-body"), ai.SeriesInput.from_datasets(mr))


def test_isolated_run_matches_and_survives_a_crash(site: Path, series) -> None:  # type: ignore[no-untyped-def]
    inproc = ai.run(ai.load("hilum-test-body"), series)
    seen: list[int] = []
    child = ai.run(ai.load("hilum-test-body"), series, isolate=True, progress=lambda d, t: seen.append(d))
    assert seen == [1, 2, 3]
    assert inproc.labels is not None and child.labels is not None
    assert np.array_equal(inproc.labels.array, child.labels.array)
    assert child.findings == inproc.findings and child.score == inproc.score
    with pytest.raises(PluginError, match=r"its process crashed \(signal 6\)"):
        ai.run(ai.load("hilum-test-crash"), series, isolate=True)
    # and this process is fine: another run works
    assert ai.run(ai.load("hilum-test-body"), series).labels is not None


def test_series_input_from_the_viewers_loaded_series(tmp_path: Path, ct, series) -> None:  # type: ignore[no-untyped-def]
    from hilum.dicom.stack_load import load_series_sync

    paths = []
    for i, ds in enumerate(ct):
        p = tmp_path / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    loaded = ai.SeriesInput.from_loaded(load_series_sync(paths))
    assert np.array_equal(loaded.values, series.values) and loaded.spacing_mm == pytest.approx(series.spacing_mm)
    assert [h.SOPInstanceUID for h in loaded.headers] == [h.SOPInstanceUID for h in series.headers]


HANG = "import time\n\ndef findings(outputs, ctx):\n    time.sleep(600)\n"


def test_isolated_hook_that_hangs_is_killed_on_cancel(tmp_path: Path, series) -> None:  # type: ignore[no-untyped-def]
    dist = make_plugin(tmp_path, "hilum-test-hang", post=HANG)
    plugin = ai.discovery.load_path(dist / "hilum_test_hang")
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == total:  # inference over: the hook now hangs
            threading.Timer(0.5, cancel.set).start()

    with pytest.raises(PluginCancelled):
        ai.run(plugin, series, isolate=True, cancel=cancel, progress=progress)
    assert seen == [1, 2, 3]


def test_2d_plugin_on_images_without_geometry(tmp_path: Path, site: Path, ct) -> None:  # type: ignore[no-untyped-def]
    flat = []
    for ds in ct:
        d = copy.deepcopy(ds)
        del d.ImagePositionPatient, d.ImageOrientationPatient
        flat.append(d)
    s = ai.SeriesInput.from_datasets(flat)
    assert not s.has_geometry and s.shape == (12, 64, 64)
    assert [h.InstanceNumber for h in s.headers] == list(range(1, 13))
    with pytest.raises(PluginError, match="needs a volume"):
        ai.run(ai.load("hilum-test-body"), s)
    dist = make_plugin(tmp_path, "hilum-test-flat", dimensions="2D")
    r = ai.run(ai.discovery.load_path(dist / "hilum_test_flat"), s)
    assert r.labels is not None and np.array_equal(r.labels.array == 1, np.asarray(s.values) >= -500)
