"""The workstation ends cleanly: ``hilum gui`` stopped with SIGTERM or SIGINT, or closed with Ctrl+Q,
leaves no process behind (the decoder pool's workers, its fork server, the resource tracker) and
its node's ports closed.

The process tree is read from ``/proc`` (each process's parent in ``/proc/PID/stat``) while the
workstation runs with its decoder workers warm, and every process in it must be gone after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from hilum.config import Config

pytestmark = pytest.mark.gui

START_S = 120.0  # a shared 2-core machine: starting Qt, VTK and the node can take a while
END_S = 60.0


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every process below ``root``: pid -> (start time, command line)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            parent[int(name)] = st[0]
    out: dict[int, tuple[int, str]] = {}
    todo = [root]
    while todo:
        p = todo.pop()
        for child in (c for c, pp in parent.items() if pp == p):
            st = _stat(child)
            if st is None:
                continue
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            out[child] = (st[2], cmd)
            todo.append(child)
    return out


def _alive(pid: int, started: int) -> bool:
    """Whether that process (not a later one with the same pid) still runs (a zombie has ended)."""
    st = _stat(pid)
    return st is not None and st[2] == started and st[1] != "Z"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(what: str, ok: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {seconds:.0f} s")
        time.sleep(0.2)


def _config(data: Path) -> Config:
    cfg = Config(data_dir=data, dicom_port=free_port(), web_port=free_port(), hl7_port=free_port())
    cfg.save()
    return cfg


def _workers(tree: dict[int, tuple[int, str]]) -> list[int]:
    """The decoder pool's worker processes (forked by the fork server, so its command line)."""
    return [pid for pid, (_, cmd) in tree.items() if "multiprocessing.forkserver" in cmd]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_ends_the_workstation_and_every_process_it_started(tmp_path: Path, sig: int, code: int) -> None:
    cfg = _config(tmp_path / "data")
    ports = (cfg.dicom_port, cfg.web_port, cfg.hl7_port)
    env = {**os.environ, "HILUM_DATA": "/nonexistent/must-not-be-used"}
    env.pop("QT_QPA_PLATFORM", None)  # the real xcb platform under Xvfb, as a person would run it
    log_path = tmp_path / "gui.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "hilum", "gui", "--data", str(cfg.data_dir)], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait("listening", lambda: proc.poll() is None and all(_accepts(p) for p in ports), START_S)
        # The fork server and its warm workers: one per core (warm_pool), all up before the signal.
        expected = 1 + (os.cpu_count() or 2)
        _wait("warm", lambda: len(_workers(_descendants(proc.pid))) >= expected, START_S)
        tree = _descendants(proc.pid)
        assert len(_workers(tree)) >= expected, tree
        # Connections still open (a peer that has not spoken yet) do not hold the node up.
        held = [socket.create_connection(("127.0.0.1", p), timeout=5) for p in (cfg.dicom_port, cfg.hl7_port)]
        proc.send_signal(sig)
        proc.wait(timeout=END_S)
        for s in held:
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text(errors="replace")
    assert proc.returncode == code, log
    _wait("ended", lambda: not [pid for pid, (t, _) in tree.items() if _alive(pid, t)], END_S)
    assert not any(_accepts(p) for p in ports)
    assert "Traceback" not in log, log


def test_a_busy_worker_is_ended_after_the_grace_period() -> None:
    """A decoder worker still working when the workstation ends is terminated, not waited for."""
    import multiprocessing

    from hilum.ui.app import stop_child_processes

    before = multiprocessing.active_children()
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver"))
    busy = pool.submit(time.sleep, 3600)
    _wait("running", busy.running, START_S)
    workers = [c for c in multiprocessing.active_children() if c not in before]
    assert len(workers) == 1
    pool.shutdown(wait=False, cancel_futures=True)  # what the viewer does when the application quits
    ended = stop_child_processes(0.5, spare=before)
    assert ended == [workers[0].pid]
    assert not workers[0].is_alive()


def test_ctrl_q_closes_the_workstation_like_a_signal(tmp_path: Path) -> None:
    """Quitting from the keyboard (File > Quit, Ctrl+Q) ends the same way: node stopped, workers gone."""
    import multiprocessing

    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtTest import QTest

    from hilum.ui.app import run_gui

    cfg = _config(tmp_path / "data")
    ports = (cfg.dicom_port, cfg.web_port, cfg.hl7_port)
    before = multiprocessing.active_children()
    seen: dict[str, object] = {}

    def on_ready(window: object) -> None:
        deadline = time.monotonic() + START_S

        def poll() -> None:
            workers = [c for c in multiprocessing.active_children() if c not in before]
            up = all(_accepts(p) for p in ports) and len(workers) >= (os.cpu_count() or 2)
            if not up and time.monotonic() < deadline:
                QTimer.singleShot(200, poll)
                return
            seen["workers"], seen["up"] = workers, up
            QTest.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)  # type: ignore[arg-type]

        QTimer.singleShot(0, poll)

    code = run_gui(cfg, on_ready=on_ready)
    assert code == 0
    assert seen["up"], "the node and the decoder workers did not come up"
    workers = seen["workers"]
    assert isinstance(workers, list) and workers
    assert not [w.pid for w in workers if w.is_alive()]
    assert not any(_accepts(p) for p in ports)


def test_sigterm_while_a_study_loads(tmp_path: Path, qtbot: Any) -> None:
    """SIGTERM right after a study was opened (double-click in the browser, its series loading on
    the decoder workers): the workstation still ends with 0, the workers and the node with it."""
    import multiprocessing

    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtTest import QTest

    from _viewer_data import write_ct
    from hilum.archive import Archive
    from hilum.ui.app import run_gui

    cfg = _config(tmp_path / "data")
    ports = (cfg.dicom_port, cfg.web_port, cfg.hl7_port)
    with Archive(cfg.data_dir) as archive:
        for path in write_ct(tmp_path / "ct", rows=256, slices=60, syntax="1.2.840.10008.1.2.5"):  # RLE: decoded
            assert archive.ingest(path).ok
    before = multiprocessing.active_children()
    seen: dict[str, object] = {}

    def on_ready(window: object) -> None:
        deadline = time.monotonic() + START_S
        browser = window.browser  # type: ignore[attr-defined]

        def poll() -> None:
            workers = [c for c in multiprocessing.active_children() if c not in before]
            up = all(_accepts(p) for p in ports) and len(workers) >= (os.cpu_count() or 2)
            up = up and browser.model.rowCount() == 1
            if not up and time.monotonic() < deadline:
                QTimer.singleShot(200, poll)
                return
            seen["workers"], seen["up"] = workers, up
            rect = browser.table.visualRect(browser.model.index(0, 1))
            QTest.mouseClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            QTest.mouseDClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            seen["tabs"] = len(window.workspace_tabs())  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGTERM)

        QTimer.singleShot(0, poll)

    code = run_gui(cfg, on_ready=on_ready)
    assert seen["up"], "the node and the decoder workers did not come up"
    assert seen["tabs"] == 1  # the study was open (loading) when the signal came
    assert code == 0
    workers = seen["workers"]
    assert isinstance(workers, list) and workers
    assert not [w.pid for w in workers if w.is_alive()]
    assert not any(_accepts(p) for p in ports)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back
    # and this process's Qt still delivers background results to a new window (the window closing
    # after the loop had ended left a Quit event queued that ended the next test's event loops)
    from PySide6.QtWidgets import QApplication

    from hilum.config import load_config
    from hilum.ui.main_window import MainWindow

    QApplication.processEvents()  # what pytest-qt does between tests, outside any event loop
    with Archive(cfg.data_dir) as archive:
        window = MainWindow(load_config(cfg.data_dir), archive)
        window.show()
        try:
            qtbot.waitUntil(lambda: window.stats is not None, timeout=20_000)
        finally:
            window.close()
            window.deleteLater()
