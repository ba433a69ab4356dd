"""AI plugins in the real workstation window: keys and clicks, pixels of the overlays, the archive.

The plugins are real packages (tests/_ai_support.py: a tiny ONNX model built with onnx.helper —
"Body" = HU above -500 —, a heat map x² of the window01 input, a postprocess hook reporting one
finding) installed with pip into an isolated --target folder that the window's AI controller is
pointed at; the host (hilum.ai) runs them for real and stores SEG / FRACTIONAL SEG / SR through
the archive's ingest.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct

pytest.importorskip("pytestqt")
pytest.importorskip("onnx")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QToolButton  # noqa: E402

from _ai_support import POST_OK, POST_RAISES, make_plugin, sha256  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402

pytestmark = pytest.mark.gui
ROWS, SLICES = 96, 12
CA = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier


def slow_model(path, reps: int = 120) -> None:
    """The test plugins' threshold model with a chain of 256×256 matrix products per batch that
    depends on the input (so onnxruntime cannot fold it away at load): a batch takes a while."""
    import onnx
    from onnx import TensorProto, helper

    n = 256
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["d"]),
        helper.make_node("Mul", ["d", "slope"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p1"]),
        helper.make_node("ReduceSum", ["image"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["s0"]),
        helper.make_node("Add", ["mat", "s0"], ["m0"]),
    ]
    for i in range(reps):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "mat"], [f"m{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"m{reps}"], ["t"], keepdims=0),
              helper.make_node("Mul", ["t", "zero"], ["t0"]), helper.make_node("Add", ["p1", "t0"], ["prob"])]  # fmt: skip
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("slope", TensorProto.FLOAT, [], [40.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("mat", TensorProto.FLOAT, [n, n], list((np.eye(n, dtype=np.float32) * 0.5).ravel())),
    ]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                              ["N", 1, "H", "W"])], [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """Five plugins installed (pip --target) into one folder: body (+heat, +finding), slow, raising, MR-only, broken."""
    root = tmp_path_factory.mktemp("plugins")
    src = root / "src"
    src.mkdir()
    dists = [
        make_plugin(src, "hilum-test-body", post=POST_OK, heat=True),
        make_plugin(src, "hilum-test-slow", batch=1),
        make_plugin(src, "hilum-test-raise", post=POST_RAISES),
        make_plugin(src, "hilum-test-mr"),
        make_plugin(src, "hilum-test-broken"),
    ]
    mr = dists[3] / "hilum_test_mr" / "hilum-plugin.toml"
    mr.write_text(mr.read_text().replace('modalities = ["CT"]', 'modalities = ["MR"]'))
    slow = dists[1] / "hilum_test_slow"
    old_sha = sha256(slow / "model.onnx")
    slow_model(slow / "model.onnx")
    toml = slow / "hilum-plugin.toml"
    toml.write_text(toml.read_text().replace(old_sha, sha256(slow / "model.onnx")))
    manifest = dists[-1] / "hilum_test_broken" / "hilum-plugin.toml"
    manifest.write_text(manifest.read_text().replace('licence = "MIT"', 'licence = "MIT"\ncolour_scheme = "red"'))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), *map(str, dists)], check=True, capture_output=True)  # fmt: skip
    return target


@pytest.fixture
def ai_window(qtbot, make_main_window, data_dir, tmp_path, plugin_dir, monkeypatch):
    """The workstation with the viewer, a generated CT in the archive, the AI controller on *plugin_dir*."""
    monkeypatch.syspath_prepend(str(plugin_dir))  # the postprocess hooks are imported from there
    (data_dir / "hilum.toml").write_text('[[ai.rules]]\nplugin = "hilum-test-body"\nmodality = "CT"\n')
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "ct", rows=ROWS, slices=SLICES)))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    ai = window.ai
    ai.path = [str(plugin_dir)]
    ai.discover()
    qtbot.waitUntil(lambda: ai.plugins is not None and len(ai.plugins) == 5, timeout=20000)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    return window


def open_ct(qtbot, window):
    window.open_study(STUDY.uid)
    viewer = window._test_viewer.viewer_for(STUDY.uid)
    qtbot.waitUntil(lambda: viewer.active_viewport().volume is not None and viewer.active_viewport().volume.complete
                    and not viewer.active_viewport().volume.preview, timeout=30000)  # fmt: skip
    canvas = viewer.viewport_widget(0).canvas
    qtbot.waitUntil(lambda: canvas.image_paint_count > 0, timeout=5000)
    window.activateWindow()
    canvas.setFocus()
    return viewer, canvas


def grab(canvas) -> np.ndarray:
    img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).astype(int)


def at(img, vp, x_mm, y_mm):
    x, y = vp.image_to_canvas(*hu_point_to_pixel(x_mm, y_mm, ROWS))
    return img[int(round(y)), int(round(x))]


def grey(pix) -> bool:
    return int(pix.max()) - int(pix.min()) <= 2


def choose(window, name):
    window.ai._fill_menu()
    act = next(a for a in window.ai.plugin_group.actions() if a.objectName() == f"aiPlugin:{name}")
    assert act.isEnabled(), act.toolTip()
    act.trigger()
    assert window.ai.chosen == name


def ai_series(archive, study):
    return [r for m in ("SEG", "SR") for r in archive.query("SERIES", {"StudyInstanceUID": study, "Modality": m})
            if str(r.get("SeriesDescription", "")).startswith("AI:")]  # fmt: skip


# points of the generated CT (axial, mm): soft tissue of the body, air outside it, the left lung
BODY, AIR, LUNG = (0.0, -40.0), (0.0, -150.0), (-70.0, -50.0)


def test_run_overlays_toggle_opacity_findings_jump_and_archived_offer(qtbot, ai_window, caplog):
    caplog.set_level(logging.INFO, logger="hilum.ui.ai.controller")
    window, archive = ai_window, ai_window.archive
    viewer, canvas = open_ct(qtbot, window)
    vp = viewer.active_viewport()
    QTest.keyClick(canvas, Qt.Key.Key_N, CA)  # Ctrl+Alt+N: the AI results panel (the canvas keeps its size from here)
    assert window.ai.dock.isVisible()
    qtbot.wait(100)
    before = grab(canvas)
    assert grey(at(before, vp, *BODY)) and grey(at(before, vp, *AIR))
    choose(window, "hilum-test-body")
    with qtbot.waitSignal(window.ai.runFinished, timeout=120000) as sig:
        QTest.keyClick(canvas, Qt.Key.Key_I, CA)  # Ctrl+Alt+I: run on this series
        assert window.ai.run is not None and window.ai.run.plugin == "hilum-test-body"
        assert window.ai.progress.isVisible() and window.ai.cancel_btn.isVisible(), window.statusBar().currentMessage()
    result, error = sig.args
    assert error == "" and result is not None
    assert not window.ai.progress.isVisible()
    assert "not the loaded series" not in caplog.text  # the viewer's loaded volume was the input
    # stored: a SEG, a FRACTIONAL SEG (heat map) and an SR, "AI: <title> <version>", referencing the series
    descs = {(r["Modality"], r["SeriesDescription"]) for r in ai_series(archive, STUDY.uid)}
    assert ("SEG", "AI: Body mask (test) 1.2.3") in descs and ("SR", "AI: Body mask (test) 1.2.3") in descs
    # the new objects are offered in the panel too (the archive's events, origin "ai")
    qtbot.waitUntil(lambda: window.ai.dock.archive_box.count() == 3 and window.ai.dock.show_btn.isEnabled(),
                    timeout=20000)  # fmt: skip
    qtbot.wait(50)

    # heat map off (Ctrl+Alt+H): the segmentation alone — coloured on the body, untouched in air and lung
    QTest.keyClick(canvas, Qt.Key.Key_H, CA)
    assert not window.ai.actions["ai_heat"].isChecked() and not viewer.ai_heat.visible
    qtbot.wait(50)
    seg_only = grab(canvas)
    assert not grey(at(seg_only, vp, *BODY)), at(seg_only, vp, *BODY)
    assert (at(seg_only, vp, *AIR) == at(before, vp, *AIR)).all()
    assert (at(seg_only, vp, *LUNG) == at(before, vp, *LUNG)).all()
    # the label map is on the viewer's slice order: it is exactly "HU > -500" of the viewer's own
    # modality values, slice by slice (the nodules make the slices differ along z)
    lm = viewer.seg.labels[vp.series_uid]
    from hilum.ui.viewer.seg_tools import _volume_values

    values = _volume_values(vp.volume)[:, :, :]
    assert np.array_equal(lm.array > 0, values > -500)
    assert len({a.tobytes() for a in lm.array}) > 1
    # every pixel the label map marks on this slice is coloured, no pixel it does not mark changed
    m = int(vp.volume.stack.order.volume_index[vp.index])
    changed = np.abs(seg_only - before).sum(axis=2) > 6
    rr, cc = np.nonzero(lm.array[m] == 0)
    outside = [vp.image_to_canvas(c, r) for r, c in zip(rr[::7], cc[::7], strict=True)]
    inside_r, inside_c = np.nonzero(lm.array[m])
    inside = [vp.image_to_canvas(c, r) for r, c in zip(inside_r[::7], inside_c[::7], strict=True)]
    h, w = changed.shape
    ok_out = [not changed[int(y), int(x)] for x, y in outside if 2 < x < w - 3 and 2 < y < h - 3]
    ok_in = [changed[int(y), int(x)] for x, y in inside if 2 < x < w - 3 and 2 < y < h - 3]
    assert ok_in and np.mean(ok_in) > 0.97 and ok_out and np.mean(ok_out) > 0.97

    # per segment: the segments panel (Ctrl+Shift+G), a click on the segment's check box hides it alone
    QTest.keyClick(canvas, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    panel = viewer.seg_panel
    assert panel.isVisible() and panel.table.rowCount() == 1 and panel.table.item(0, 2).text() == "Body"
    qtbot.wait(50)
    assert not grey(at(grab(canvas), vp, *BODY))
    box = panel.table.visualItemRect(panel.table.item(0, 0)).center()  # the check box fills the narrow column
    QTest.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, box)
    assert not lm.segments[1].visible
    qtbot.wait(50)
    assert grey(at(grab(canvas), vp, *BODY))
    QTest.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, box)
    assert lm.segments[1].visible
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert not panel.isVisible()
    qtbot.wait(50)
    assert (grab(canvas) == seg_only).all()

    # segmentation off too (Ctrl+Alt+G): the image is back
    QTest.keyClick(canvas, Qt.Key.Key_G, CA)
    assert not window.ai.actions["ai_seg"].isChecked()
    qtbot.wait(50)
    off = grab(canvas)
    for p in (BODY, AIR, LUNG):
        assert (at(off, vp, *p) == at(before, vp, *p)).all()

    # heat map alone: warm colour on the body (x² ≈ 1 there), nothing in air or lung (below the floor)
    QTest.keyClick(canvas, Qt.Key.Key_H, CA)
    qtbot.wait(50)
    heat = grab(canvas)
    body = at(heat, vp, *BODY)
    assert body[0] > body[2] + 20, body  # red over blue
    assert (at(heat, vp, *AIR) == at(before, vp, *AIR)).all()
    assert (at(heat, vp, *LUNG) == at(before, vp, *LUNG)).all()

    # opacity up twice (Ctrl+Alt+=): the slider moves, the pixel changes
    QTest.keyClick(canvas, Qt.Key.Key_Equal, CA)
    QTest.keyClick(canvas, Qt.Key.Key_Equal, CA)
    assert window.ai.dock.opacity.value() == 70
    qtbot.wait(50)
    more = at(grab(canvas), vp, *BODY)
    assert (more != body).any() and more[0] - more[2] > body[0] - body[2]

    # the findings dock: one finding "Body" with its score, slice and volume; double-click jumps
    dock = window.ai.dock
    assert dock.isVisible() and dock.table.rowCount() == 1
    label, score, slice_text, measures = dock.row_text(0)
    assert label == "Body" and score == "0.90" and "Volume" in measures and "mL" in measures
    f = dock.findings[0]
    QTest.keyClick(canvas, Qt.Key.Key_Home)
    start = vp.index
    assert int(vp.volume.stack.order.volume_index[start]) != f.slice_index
    item = dock.table.item(0, 0)
    rect = dock.table.visualItemRect(item)
    no = Qt.KeyboardModifier.NoModifier
    # a real double-click: press, release, double-click press, release (the view wants the first press)
    QTest.mouseClick(dock.table.viewport(), Qt.MouseButton.LeftButton, no, rect.center())
    QTest.mouseDClick(dock.table.viewport(), Qt.MouseButton.LeftButton, no, rect.center())
    assert int(vp.volume.stack.order.volume_index[vp.index]) == f.slice_index
    assert vp.index != start and slice_text == str(vp.index + 1)  # the viewer's image number ("Im")
    cx, cy = vp.image_to_canvas(f.centre[1], f.centre[0])
    assert abs(cx - vp.canvas_size[0] / 2) < 1 and abs(cy - vp.canvas_size[1] / 2) < 1  # centred
    # Enter on the row does the same
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_End)
    assert int(vp.volume.stack.order.volume_index[vp.index]) != f.slice_index
    dock.table.setFocus()
    QTest.keyClick(dock.table, Qt.Key.Key_Return)
    assert int(vp.volume.stack.order.volume_index[vp.index]) == f.slice_index

    # closed and opened again: the archive's results of the series are offered, and shown on request
    assert window.close_workspace_tab(window.tabs.indexOf(viewer))
    with qtbot.waitSignal(window.ai.archivedOffered, timeout=30000) as offered:
        viewer, canvas = open_ct(qtbot, window)
    uid, found = offered.args
    assert uid == viewer.active_viewport().series_uid
    assert sorted(r.kind for r in found) == ["findings", "heatmap", "segmentation"]
    assert dock.archive_box.count() == 3 and dock.show_btn.isEnabled()
    kinds = [r.kind for r in found]
    dock.archive_box.setCurrentIndex(kinds.index("findings"))
    with qtbot.waitSignal(window.ai.resultShown, timeout=20000):
        QTest.mouseClick(dock.show_btn, Qt.MouseButton.LeftButton)
    assert dock.table.rowCount() == 1 and dock.row_text(0)[0] == "Body"
    assert dock.findings[0].slice_index == f.slice_index
    dock.archive_box.setCurrentIndex(kinds.index("segmentation"))
    with qtbot.waitSignal(window.ai.resultShown, timeout=20000):
        QTest.mouseClick(dock.show_btn, Qt.MouseButton.LeftButton)
    again = viewer.seg.labels[viewer.active_viewport().series_uid]
    assert np.array_equal(again.array > 0, lm.array > 0)
    dock.archive_box.setCurrentIndex(kinds.index("heatmap"))
    with qtbot.waitSignal(window.ai.resultShown, timeout=20000):
        QTest.mouseClick(dock.show_btn, Qt.MouseButton.LeftButton)
    shown = viewer.ai_heat.maps[viewer.active_viewport().series_uid].astype(int)
    assert np.abs(shown - np.round(result.heatmap * 255)).max() <= 1


def test_escape_cancels_mid_run_and_nothing_is_stored(qtbot, ai_window):
    window, archive = ai_window, ai_window.archive
    viewer, canvas = open_ct(qtbot, window)
    choose(window, "hilum-test-slow")
    ai = window.ai
    with qtbot.waitSignal(ai.runFinished, timeout=120000) as sig:
        QTest.keyClick(canvas, Qt.Key.Key_I, CA)
        qtbot.waitUntil(lambda: ai.progress.maximum() > 0 and 1 <= ai.progress.value() < ai.progress.maximum(),
                        timeout=60000)  # fmt: skip
        QTest.keyClick(canvas, Qt.Key.Key_Escape)
    assert sig.args == [None, "cancelled"]
    assert ai_series(archive, STUDY.uid) == []
    assert "cancelled" in window.statusBar().currentMessage()
    assert not ai.progress.isVisible() and ai.actions["ai_run"].isEnabled()
    # Esc is the viewer's again once no run goes (no filter left behind)
    before = viewer.active_viewport().index
    QTest.keyClick(canvas, Qt.Key.Key_Down)
    assert viewer.active_viewport().index != before


def test_a_raising_plugin_gives_one_message_and_the_window_goes_on(qtbot, ai_window):
    window, archive = ai_window, ai_window.archive
    viewer, canvas = open_ct(qtbot, window)
    choose(window, "hilum-test-raise")
    with qtbot.waitSignal(window.ai.runFinished, timeout=120000) as sig:
        QTest.keyClick(canvas, Qt.Key.Key_I, CA)
    result, error = sig.args
    assert result is None and "hook broke" in error
    box = window.ai.error_box
    assert box is not None and box.isVisible() and box.objectName() == "aiErrorBox"
    assert box.text().startswith("The AI plugin “Body mask (test)” failed") and box.text().endswith(".")
    assert ai_series(archive, STUDY.uid) == []
    QTest.mouseClick(box.button(box.StandardButton.Ok), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.ai.error_box is None, timeout=5000)
    # the workstation goes on: keys scroll, another plugin runs
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    canvas.setFocus()
    before = viewer.active_viewport().index
    QTest.keyClick(canvas, Qt.Key.Key_Down)
    assert viewer.active_viewport().index != before
    choose(window, "hilum-test-body")
    with qtbot.waitSignal(window.ai.runFinished, timeout=120000) as sig:
        QTest.keyClick(canvas, Qt.Key.Key_I, CA)
    assert sig.args[1] == "" and len(ai_series(archive, STUDY.uid)) >= 2


def test_plugin_manager_menu_and_help(qtbot, ai_window):
    window = ai_window
    viewer, canvas = open_ct(qtbot, window)
    ai = window.ai
    # the AI menu: the broken plugin is listed but disabled with its problem; the others fit a CT
    ai._fill_menu()
    acts = {a.objectName(): a for a in ai.plugin_group.actions()}
    assert set(acts) == {f"aiPlugin:hilum-test-{n}" for n in ("body", "slow", "raise", "mr", "broken")}
    assert not acts["aiPlugin:hilum-test-broken"].isEnabled()
    mr = acts["aiPlugin:hilum-test-mr"]  # accepts MR only: listed, greyed, the reason in its tooltip
    assert not mr.isEnabled() and "MR" in mr.toolTip() and "CT" in mr.toolTip()
    assert "colour_scheme" in acts["aiPlugin:hilum-test-broken"].toolTip()
    assert acts["aiPlugin:hilum-test-body"].isEnabled()
    titles = [m.title() for m in (a.menu() for a in window.menuBar().actions()) if m is not None]
    assert titles.index("AI") == len(titles) - 2  # before Help
    button = viewer.findChild(QToolButton, "aiToolButton")
    assert button is not None and button.defaultAction() is ai.actions["ai_run"] and button.menu() is ai.menu
    assert button.isVisible()  # in the toolbar's visible part (after the tools), not in its overflow
    # Ctrl+Alt+U: the plugin manager
    QTest.keyClick(canvas, Qt.Key.Key_U, CA)
    dlg = ai.dialog
    assert dlg is not None and dlg.isVisible()
    names = [dlg.list.item(i).text() for i in range(dlg.list.count())]
    assert "hilum-test-body 1.2.3" in names
    dlg.list.setCurrentRow(names.index("hilum-test-body 1.2.3"))
    text = dlg.details_text()
    for words in ("Licence", "MIT", "Not for clinical use", "modality CT", "3D", "segmentation", "heatmap",
                  "model.onnx", "Valid", "checksums are verified", "Auto-run rules", "plugin = 'hilum-test-body'"):  # fmt: skip
        assert words in text, words
    QTest.keyClick(dlg.list, Qt.Key.Key_Down)
    broken = [n for n in names if "broken" in n][0]
    dlg.list.setCurrentRow(names.index(broken))
    assert "Problems" in dlg.details_text() and "colour_scheme" in dlg.details_text()
    assert "none: this plugin runs only when asked" in dlg.details_text()
    dlg.close()
    # Tools → AI plugins… (the viewer's Tools menu, filled when it opens)
    window.tools_menu.aboutToShow.emit()
    assert (
        ai.actions["ai_plugins"] in window.tools_menu.actions() and ai.actions["ai_run"] in window.tools_menu.actions()
    )
    # Help → Keyboard shortcuts lists the AI keys
    html = window.shortcuts_html()
    assert "AI plugins" in html and "Ctrl+Alt+I" in html and "Ctrl+Alt+H" in html


def test_closing_the_window_mid_run_cancels_and_stores_nothing(qtbot, ai_window):
    window, archive = ai_window, ai_window.archive
    viewer, canvas = open_ct(qtbot, window)
    choose(window, "hilum-test-slow")
    ai = window.ai
    QTest.keyClick(canvas, Qt.Key.Key_I, CA)
    qtbot.waitUntil(lambda: ai.progress.maximum() > 0 and ai.progress.value() >= 1, timeout=60000)
    job = ai.run.job
    window.close()  # the window's shutdown cancels the run and waits for its worker
    assert job.cancelled
    assert ai_series(archive, STUDY.uid) == []
