"""What the PDU bounds cost at the socket: reading P-DATA-TF PDUs on loopback with and without
:mod:`hilum.dimse.guard`, by both engines' readers.

A writer process sends ``--pdus`` PDUs of ``--size`` bytes over TCP (a 512x512 CT slice is ~514 KB, one
PDU under the node's 1 MiB maximum); the reader reads each header (6 bytes) and body the way the
DUL does.  Readers:

- ``fast, plain socket, allocate announced``: the fast engine's old ``BulkSocket.recv``
  (``bytearray(announced)`` then ``recv_into``), as in 8416212;
- ``fast, plain socket``: today's ``BulkSocket.recv`` (buffer grown with what arrived);
- ``fast, guarded``: the same on a :class:`~hilum.dimse.guard.GuardedSocket` (framing
  followed, lengths checked, timeouts set);
- ``pynetdicom, plain socket`` / ``pynetdicom, guarded``: pynetdicom's ``AssociationSocket.recv``
  (4 KiB ``recv`` calls).

Reported: the reader thread's CPU time per PDU (``time.thread_time``), median of ``--repeat``
runs (each in a fresh process, the cases in a rotating order), and the ratios.  Run::

    .venv/bin/python bench/dimse/pduread.py [--pdus 2000] [--size 526000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

from pynetdicom.transport import AssociationSocket  # noqa: E402

from hilum.dimse.guard import ESTABLISHED, Admission, GuardedSocket, Limits  # noqa: E402
from hilum.dimse.reactor import BulkSocket  # noqa: E402


class OldBulkSocket(AssociationSocket):
    """The fast engine's reader as it was (8416212): the buffer is the announced length."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if not n:
                    break
                got += n
        if got < nr_bytes:
            del buf[got:]
        return buf


def _reader(kind: type[AssociationSocket], sock: Any) -> AssociationSocket:
    r = kind.__new__(kind)
    r.socket = sock
    return r


def _writer(port: int, pdus: int, size: int) -> None:
    """The sending side, in its own process (as a peer is): ``pdus`` P-DATA-TF PDUs of ``size``."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pdu = struct.pack(">BBI", 4, 0, size) + os.urandom(size)
    for _ in range(pdus):
        s.sendall(pdu)
    s.close()


def run_once(reader_cls: type[AssociationSocket], guarded: bool, pdus: int, size: int) -> float:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    writer = subprocess.Popen([sys.executable, __file__, "--write", str(listener.getsockname()[1]),
                               "--pdus", str(pdus), "--size", str(size)])
    a, _ = listener.accept()
    listener.close()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as hilum.dimse.net does
    if guarded:
        g = GuardedSocket(a.family, a.type, a.proto, fileno=a.detach())
        g._g_init(Admission(Limits(max_pdu=1 << 20)), ("127.0.0.1", 0))
        g._g_state = ESTABLISHED  # as after the node's A-ASSOCIATE-AC
        g._g_idle_timeouts()
        a = g
    reader = _reader(reader_cls, a)
    prefixed = reader_cls is BulkSocket
    t0 = time.thread_time()
    for _ in range(pdus):
        head = reader.recv(6)
        length = struct.unpack(">I", bytes(head[2:6]))[0]
        if prefixed:
            pdu = reader.recv(length, head)  # type: ignore[call-arg]
        else:
            pdu = head + reader.recv(length)  # as the DUL joins them
        assert len(pdu) == 6 + length
    cpu = time.thread_time() - t0
    writer.wait()
    a.close()
    return cpu / pdus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdus", type=int, default=2000)
    ap.add_argument("--size", type=int, default=526_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--write", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write:
        _writer(args.write, args.pdus, args.size)
        return 0
    cases = [("fast, plain socket, allocate announced", OldBulkSocket, False),
             ("fast, plain socket", BulkSocket, False),
             ("fast, guarded", BulkSocket, True),
             ("pynetdicom, plain socket", AssociationSocket, False),
             ("pynetdicom, guarded", AssociationSocket, True)]
    if args.case is not None:  # one run in this fresh process: malloc's state is its own
        _name, cls, guarded = cases[args.case]
        print(run_once(cls, guarded, args.pdus, args.size))
        return 0
    runs: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for i in range(args.repeat):
        for k in [*range(len(cases))][i % len(cases):] + [*range(len(cases))][: i % len(cases)]:
            out = subprocess.run([sys.executable, __file__, "--case", str(k), "--pdus", str(args.pdus),
                                  "--size", str(args.size)], capture_output=True, text=True, check=True).stdout
            runs[cases[k][0]].append(float(out.strip()))
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(f"reader CPU per PDU of {args.size} bytes, median of {args.repeat} x {args.pdus} PDUs:")
    for name, v in med.items():
        print(f"  {name:40s} {v * 1e6:8.1f} us")
    print(f"  fast guarded / fast as it was            {med['fast, guarded'] / med[cases[0][0]]:.2f}")
    print(f"  pynetdicom guarded / plain               "
          f"{med['pynetdicom, guarded'] / med['pynetdicom, plain socket']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
