"""Opening a remote study streams it progressively in the real workstation (pytest-qt).

A Hilum DICOMweb server on loopback holds a CT series; the workstation reaches it through a
throttling TCP proxy (a slow link, real sockets).  Opening the study from the study browser shows
the viewer at once with a lossy first rendition and a "LOSSY" marker; a length measurement is
refused while the pixels are lossy; scrolling to a far slice makes it the next fetched; once every
slice is in full fidelity the marker is gone, the pixels equal the remote files, measuring works,
and the study is in the cache.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from hilum.archive import Archive
from hilum.config import Config, load_config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicomweb.client import DicomWebSource
from hilum.dicomweb.service import DicomWebService

pytestmark = pytest.mark.gui
TIMEOUT = 60_000
SLICES = 16
SHOTS = Path(os.environ.get("HILUM_SHOTS", "/tmp/hilum-progressive-shots"))


class ThrottleProxy:
    """A TCP proxy on loopback whose server→client direction is capped at ``rate`` bytes/s (one
    shared link for every connection) with ``delay`` seconds added before each response chunk."""

    def __init__(self, upstream: tuple[str, int], rate: float, delay: float = 0.0) -> None:
        self.upstream, self.rate, self.delay = upstream, rate, delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if slow:
                    with self._lock:
                        now = time.monotonic()
                        start = max(now, self._next)
                        self._next = start + len(data) / self.rate
                        wait = self._next - now
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for s in self._conns:
            s.close()


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    archive = Archive(tmp_path / "remote")
    study = make_study(MUELLER, accession="PROGUI01", date="20260707", seed="progressive-gui")
    series = generate_ct_series(study, rows=256, columns=256, slices=SLICES, seed=11)
    for ds in series:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.ingest(buf.getvalue())
    with DicomWebService(Config(data_dir=tmp_path / "remote", web_port=0), archive) as svc:
        host, port = svc.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        proxy = ThrottleProxy((host, int(port)), rate=300_000)  # ~2.4 Mbit/s: the lossy state lasts long enough to see
        url = svc.url.replace(f":{port}/", f":{proxy.port}/")
        try:
            yield {"url": url, "study": study.uid, "series": str(series[0].SeriesInstanceUID), "archive": archive}
        finally:
            proxy.close()
    archive.close()


def _reds(img: Any) -> int:
    """Pixels of the marker's red in the left third of the top half (the image itself is grey)."""
    return sum(
        1
        for x in range(0, img.width() // 3, 2)
        for y in range(0, img.height() // 2, 2)
        if (c := img.pixelColor(x, y)).red() > 200 and c.green() < 120 and c.blue() < 120
    )


def _original(server: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for row in server["archive"].query("IMAGE", {"SeriesInstanceUID": server["series"]}):
        out[row["SOPInstanceUID"]] = pydicom.dcmread(
            io.BytesIO(server["archive"].read(row["SOPInstanceUID"]))
        ).pixel_array
    return out


def test_open_remote_progressively(qtbot, make_main_window, slow_server: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    cfg = load_config(tmp_path / "ws")
    local = Archive(cfg.data_dir)
    window = make_main_window(cfg, local, viewer=True)
    window.resize(1400, 900)
    window.show()
    window.activateWindow()
    ctl = window.remote_sources
    assert ctl is not None
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("slow", slow_server["url"]))
    assert window.browser.model.rowCount() == 1
    ctl.progressive_force = "lossy"  # the link is slow anyway; the policy is tested in test_progressive
    with qtbot.waitSignal(ctl.progressiveOpened, timeout=TIMEOUT) as opened:
        window.browser.openRequested.emit(slow_server["study"])
    viewer = opened.args[0]
    session = viewer.session
    uid = slow_server["series"]
    qtbot.waitUntil(lambda: uid in session.loads and session.loads[uid].volume is not None, timeout=TIMEOUT)
    load = session.loads[uid]
    w = viewer.viewport_widget(0)
    canvas = w.canvas
    vp = viewer.model.viewports[0]
    # the first image: lossy, marked
    qtbot.waitUntil(
        lambda: vp.volume is load.volume and vp.frame_info is not None and canvas.lossy_shown, timeout=TIMEOUT
    )
    assert load.log[0][0] == "lossy" and load.volume is not None and load.volume.any_lossy
    # the strip's thumbnail came from the source (no local files yet)
    item = viewer.strip.item_for(uid)
    size = viewer.strip.iconSize()

    def thumbnail_shown() -> bool:
        icon = item.icon().pixmap(size).toImage()
        return any(icon.pixelColor(x, icon.height() // 2).lightness() > 150 for x in range(icon.width()))

    qtbot.waitUntil(thumbnail_shown, timeout=TIMEOUT)
    canvas.repaint()
    img = canvas.grab().toImage()
    img.save(str(SHOTS / "lossy.png"))
    window.grab().save(str(SHOTS / "window-lossy.png"))
    # the marker's red is on the viewport (top left), and the image is not black
    assert _reds(img) > 20
    assert (
        max(img.pixelColor(x, img.height() // 2).lightness() for x in range(img.width() // 4, img.width() * 3 // 4))
        > 40
    )

    # a length measurement on lossy pixels is refused (nothing added), with the reason shown
    viewer.set_tool("length")
    count = len(viewer.annotations)
    with qtbot.waitSignal(canvas.lossyRefused, timeout=5000):
        cx, cy = canvas.width() // 2, canvas.height() // 2
        QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
        QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx + 40, cy))
    assert len(viewer.annotations) == count and "Lossy" in vp.status
    # the pixel probe reads a value, marked approximate
    viewer.set_tool("probe")
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    assert canvas.probe_text().startswith("≈ ") and "approximate" in canvas.probe_text()
    canvas.repaint()
    canvas.grab().toImage().save(str(SHOTS / "lossy-probe.png"))
    viewer.set_tool("length")

    # scrolling far (the End / Home key) re-prioritises: the slice scrolled to is among the next fetched
    start = vp.index
    started = len(load.log)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_End)
    if abs(vp.index - start) < SLICES // 3:
        QTest.keyClick(canvas, Qt.Key.Key_Home)
    target = vp.index
    assert abs(target - start) >= SLICES // 3
    assert load.order is not None and load.order.current_focus == target
    assert load.volume.lossy[target] or not load.volume.loaded[target]  # the far end: not in full yet
    qtbot.waitUntil(lambda: any(k == target for _, k in load.log[started:]), timeout=TIMEOUT)
    first = next(i for i, (_, k) in enumerate(load.log[started:]) if k == target)
    assert first <= load.workers  # at most the tasks already in flight came before it

    # full fidelity everywhere: the marker goes, the pixels equal the remote files
    assert load.handle.wait(TIMEOUT / 1000)
    assert load.handle.error is None, load.handle.error
    qtbot.waitUntil(lambda: not canvas.lossy_shown and not load.volume.any_lossy, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not viewer.is_loading(uid), timeout=TIMEOUT)  # the viewer took the end in
    original = _original(slow_server)
    for k, f in enumerate(load.volume.stack.frames):
        assert np.array_equal(load.volume.data[k], original[f.sop_instance_uid])
    canvas.repaint()
    full = canvas.grab().toImage()
    full.save(str(SHOTS / "full.png"))
    assert _reds(full) == 0
    # the probe's value is exact now; measuring works on full-fidelity pixels
    vp.probe_result = None
    viewer.set_tool("probe")
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    assert canvas.probe_text() and "≈" not in canvas.probe_text()
    viewer.set_tool("length")
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    QTest.mouseMove(canvas, QPoint(cx + 40, cy))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx + 40, cy))
    qtbot.waitUntil(lambda: len(viewer.annotations) == count + 1, timeout=5000)
    # the whole study is in the cache now (every instance as stored), a second open is local
    qtbot.waitUntil(lambda: slow_server["study"] not in ctl._partial, timeout=TIMEOUT)
    assert ctl.cache.has(slow_server["study"])  # RemoteCache: marked complete
    assert ctl.cache.pinned(slow_server["study"])  # while its tab is open
    cached = ctl.cache.read(slow_server["study"])
    assert len(cached) == SLICES
    for data in cached:  # as stored on the remote
        sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        assert data == slow_server["archive"].read(sop)


def test_allow_lossy_toggle(qtbot, make_main_window, slow_server: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With "Allow measuring lossy images" ticked, a length can be drawn on lossy pixels (its text
    marked approximate)."""
    cfg = load_config(tmp_path / "ws")
    local = Archive(cfg.data_dir)
    window = make_main_window(cfg, local, viewer=True)
    window.resize(1200, 800)
    window.show()
    ctl = window.remote_sources
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("slow", slow_server["url"]))
    ctl.progressive_force = "lossy"
    with qtbot.waitSignal(ctl.progressiveOpened, timeout=TIMEOUT) as opened:
        window.browser.openRequested.emit(slow_server["study"])
    viewer = opened.args[0]
    canvas = viewer.viewport_widget(0).canvas
    qtbot.waitUntil(lambda: canvas.lossy_shown, timeout=TIMEOUT)
    viewer.actions_by_name["allow_lossy"].setChecked(True)
    assert viewer.model.allow_lossy
    viewer.set_tool("length")
    cx, cy = canvas.width() // 2, canvas.height() // 2
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx, cy))
    QTest.mouseMove(canvas, QPoint(cx + 40, cy))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(cx + 40, cy))
    assert len(viewer.annotations) == 1
    load = viewer.session.loads[slow_server["series"]]
    load.handle.cancel()
    assert load.handle.wait(TIMEOUT / 1000)


def test_whole_study_cached_in_the_background(qtbot, make_main_window, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two series: the one shown streams first, then the other in the background; the study is
    then complete in the cache (a second open asks nothing of the remote), every instance as stored."""
    from hilum.dicom.generator import generate_mr_series

    remote = Archive(tmp_path / "remote2")
    study = make_study(MUELLER, accession="PROGUI02", date="20260708", seed="progressive-two")
    instances = generate_ct_series(study, rows=64, columns=64, slices=6, seed=3)
    instances += generate_mr_series(study, rows=64, columns=64, slices=5, series_number=2, seed=9)
    for ds in instances:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        remote.ingest(buf.getvalue())
    cfg = load_config(tmp_path / "ws")
    local = Archive(cfg.data_dir)
    window = make_main_window(cfg, local, viewer=True)
    with DicomWebService(Config(data_dir=tmp_path / "remote2", web_port=0), remote) as svc:
        ctl = window.remote_sources
        with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
            ctl.add_source(DicomWebSource("two", svc.url))
        ctl.progressive_force = "lossy"
        with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):  # emitted once the whole study is cached
            window.browser.openRequested.emit(study.uid)
        viewer = window.tabs.widget(window.tabs.count() - 1)
        assert len(viewer.session.series) == 2 and set(viewer.session.loads) == {
            e.series_uid for e in viewer.session.series
        }
        assert ctl.cache.has(study.uid)
        cached = ctl.cache.read(study.uid)
        assert len(cached) == 11
        for data in cached:
            sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
            assert data == remote.read(sop)
    remote.close()
