"""pynetdicom 3.0's requestor reactor can take the response a ``send_c_store()`` waits for
(``hilum.dimse.reactor.steady_requestor``; pynetdicom issues #435, #842): the sender then waits out
the DIMSE timeout and aborts the association.  Under load on this machine: ~1 in 500 C-STOREs, and
the C-MOVE tests' rare 60-second hangs.

The window is a few bytecodes wide (between the reactor leaving its checkpoint and clearing
``_is_paused``); here it is made wide on purpose, by a checkpoint whose ``wait`` dawdles after it
returns, so the interleaving that loses the response happens every time - against DCMTK's
``storescp`` on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt

from conftest import free_port
from hilum.dimse import scu
from hilum.dimse.reactor import EventDrivenAssociation, steady_requestor

BIN = Path("/usr/bin")
pytestmark = pytest.mark.skipif(not (BIN / "storescp").exists(), reason="DCMTK (Debian package dcmtk) is needed")


class DawdlingCheckpoint(threading.Event):
    """The reactor's checkpoint, stretched: once passed, the reactor dawdles until a sender clears
    it (the thread switch that, under load, falls between leaving the checkpoint and clearing
    ``_is_paused``), for its first few passes."""

    def __init__(self, passes: int = 3):
        super().__init__()
        self.set()
        self.passes = passes

    def wait(self, timeout: float | None = None) -> bool:
        ok = super().wait(timeout)
        if self.passes > 0:
            self.passes -= 1
            deadline = time.monotonic() + 1.0
            while self.is_set() and time.monotonic() < deadline:
                time.sleep(0.001)
        return ok


def widen_the_window(event: evt.Event) -> None:
    """Stretch the race's moments so the interleaving that loses a response happens every time:
    the reactor leaves its checkpoint just before a sender pauses it, and its look at the DIMSE
    queue falls when the response has arrived but before the sender took it."""
    assoc = event.assoc
    assoc._reactor_checkpoint = DawdlingCheckpoint()
    original = assoc.dimse.get_msg
    reactor_looked = threading.Event()

    def get_msg(block: bool = False):  # type: ignore[no-untyped-def]
        if block:  # the sender, after its request went out
            reactor_looked.wait(1.0)
            return original(block=True)
        if not assoc._reactor_checkpoint.is_set() and not reactor_looked.is_set():
            # the reactor is looking while a sender holds it paused: let the response arrive first
            deadline = time.monotonic() + 1.0
            while assoc.dimse.msg_queue.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
            reactor_looked.set()
        return original(block=False)

    assoc.dimse.get_msg = get_msg


@pytest.fixture
def storescp() -> Iterator[int]:
    for _attempt in range(3):  # a free port can be taken before storescp binds it: then another one
        port = free_port()
        proc = subprocess.Popen([str(BIN / "storescp"), "--ignore", "-aet", "STORESCP", str(port)],
                                env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while proc.poll() is None and subprocess.run(["/usr/bin/echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                                     capture_output=True).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"storescp exited at start (status {proc.returncode}) three times")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _store_three(port: int, handlers: list[tuple[object, object]]) -> tuple[list[int | None], type]:
    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    ae = AE("HILUM")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.dimse_timeout = 3
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP", evt_handlers=handlers)
        assert assoc.is_established
        statuses = []
        for _ in range(3):
            # Let the reactor reach its checkpoint again, as between two sub-operations of a C-MOVE.
            time.sleep(0.06)
            status = assoc.send_c_store(ds)
            statuses.append(getattr(status, "Status", None))
            if not assoc.is_established:
                break
        kind = type(assoc)
        if assoc.is_established:
            assoc.release()
        return statuses, kind
    finally:
        ae.shutdown()


def test_pynetdicoms_own_requestor_loses_the_response(storescp: int) -> None:
    """The race as pynetdicom 3.0.4 has it (if this starts passing, upstream fixed it: the
    correction in steady_requestor can go)."""
    statuses, _ = _store_three(storescp, [(evt.EVT_CONN_OPEN, widen_the_window)])
    assert statuses != [0, 0, 0] and None in statuses


def test_a_steady_requestor_gets_every_response(storescp: int) -> None:
    statuses, kind = _store_three(storescp, [(evt.EVT_CONN_OPEN, widen_the_window),
                                             (evt.EVT_CONN_OPEN, steady_requestor)])
    assert kind is EventDrivenAssociation
    assert statuses == [0, 0, 0]


def test_every_association_hilum_requests_is_steady(storescp: int, tmp_path: Path) -> None:
    """``hilum send``/``move``/``get``/``find`` (scu.associate) and the node's own requests
    (DimseService.associate_kwargs: C-MOVE sub-operations, commitment reports) bind it."""
    from pynetdicom import build_context

    from hilum.archive import Archive
    from hilum.config import Config
    from hilum.dimse.scp import DimseService

    target = scu.Target("127.0.0.1", storescp, "STORESCP", "HILUM", timeout=10)
    with scu.associate(target, [build_context("1.2.840.10008.1.1")]) as assoc:
        assert type(assoc) is EventDrivenAssociation
    with Archive(tmp_path / "data") as archive:
        service = DimseService(Config(data_dir=tmp_path / "data"), archive)
        assert (evt.EVT_CONN_OPEN, steady_requestor) in service.associate_kwargs(None)["evt_handlers"]
