"""The fast engine's association loop sleeps up to ``ASSOC_IDLE_WAIT`` and is woken by whoever needs it.

A thread that sends on an acceptor's association (a C-GET's sub-operations,
a release) pauses the association loop the way pynetdicom does: it clears
``_reactor_checkpoint`` and spins until the loop says it is paused.
``reactor._Checkpoint`` wakes the loop on that ``clear()``.  These tests
hold pynetdicom to that protocol (a new way of pausing would leave the loop
asleep for up to 50 ms per pause) and check the poke itself.
"""

from __future__ import annotations

import inspect
import re
import threading

from pynetdicom.association import Association

from hilum.dimse import reactor


def _pausers() -> dict[str, str]:
    out = {}
    for name, fn in inspect.getmembers(Association, inspect.isfunction):
        src = inspect.getsource(fn)
        if "_is_paused" in src and name not in ("_run_reactor", "__init__"):
            out[name] = src
    return out


def test_every_pynetdicom_pauser_clears_the_checkpoint_before_it_waits() -> None:
    pausers = _pausers()
    assert len(pausers) >= 5, sorted(pausers)  # send_c_store, send_c_find, send_c_get, send_c_move, release...
    for name, src in pausers.items():
        waits = [m.start() for m in re.finditer(r"while not self\._is_paused", src)]
        if not waits:
            continue  # sets or reads the flag without waiting on the loop
        clears = [m.start() for m in re.finditer(r"self\._reactor_checkpoint\.clear\(\)", src)]
        assert clears and clears[0] < waits[0], f"Association.{name} waits for the pause another way"


def test_clearing_the_checkpoint_wakes_the_association_loop() -> None:
    wake = threading.Event()
    checkpoint = reactor._Checkpoint(wake)
    assert checkpoint.is_set() and not wake.is_set()  # as pynetdicom's: open until someone pauses
    checkpoint.clear()
    assert wake.is_set() and not checkpoint.is_set()
    checkpoint.set()
    assert checkpoint.is_set()
