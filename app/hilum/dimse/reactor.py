"""Faster acceptor associations for pynetdicom: event-driven reactors, bulk reads, direct C-STORE-RSPs.

pynetdicom runs two polling loops per association: the DUL thread sleeps
1 ms whenever its event queue is empty, and the association thread sleeps
1 ms before every look at its DIMSE queue, so each DIMSE exchange waits on
both loops.  It also reads PDUs in 4 KiB ``recv`` calls and builds every
response as a pydicom data set, encoded twice.  Here:

- :class:`EventDrivenDUL` waits in ``select`` on the peer's socket *and* a
  wake-up socket pair that :meth:`~EventDrivenDUL.send_pdu` and
  :meth:`~EventDrivenDUL.kill_dul` poke, so a PDU from the peer or a primitive
  from the association is handled at once;
- :class:`EventDrivenAssociation` waits on a :class:`threading.Event` that the
  DUL sets after every state-machine action (a DIMSE message completed, an
  A-RELEASE or A-ABORT arrived) and that ``kill`` sets;
- :class:`BulkSocket` reads a PDU with few ``recv_into`` calls;
- :class:`FastResponseDIMSE` encodes plain C-STORE and C-FIND responses directly;
- :class:`FindResponder` writes a C-FIND's pending responses itself, 32 matches
  per write, each one P-DATA-TF (command and identifier together), past
  pynetdicom's per-response loop (issue 24: 500 matches in 12 ms, was 82);
- :class:`EncodedIdentifier` carries a C-FIND match already encoded
  (:class:`hilum.dimse.identifiers.ResponsePlan`) past pynetdicom's encoder;
- with a store hook, :class:`~hilum.dimse.storefast.StoreReceiver` takes
  C-STORE requests off the DUL thread's PDUs (see that module).

Measured (DCMTK ``storescu``, 1,000 CT 512x512, a C-STORE handler that does
nothing): 5.1 ms per instance with pynetdicom's own classes, 4.3 ms with
these; most of the gain is the response encoding.

The loops do what pynetdicom's do, only waiting differently; the waits keep
their old bounds (the association's 1 ms, the DUL's 10 ms with the ARTIM
timer the only thing left to poll), so nothing is ever later than before.
The classes are swapped onto a freshly created, not yet started association
by :class:`RequestHandler`, which :class:`~hilum.dimse.scp.DimseService`
gives its listeners when ``[dimse] engine = "fast"``; everything else
(negotiation, state machine, handlers) is pynetdicom's own.

**The fence** (this module and :mod:`hilum.dimse.storefast` reach into
pynetdicom's internals):

- nothing happens at import: :func:`install` (called by the service's
  ``start`` with the fast engine, undone by :func:`uninstall` at ``stop``)
  wraps ``pynetdicom.service_class.encode`` for :class:`EncodedIdentifier`
  and turns pynetdicom's identifier logging off;
- ``[dimse] engine = "pynetdicom"`` (or ``HILUM_DIMSE_ENGINE``) runs
  pynetdicom's own classes instead, and the protocol tests run both ways;
- pynetdicom is pinned exactly (pyproject.toml) and :data:`UPSTREAM` holds
  the SHA-256 of the source of every upstream function this code copies or
  depends on the inside of; :func:`upstream_changes` lists those that differ
  (tests/test_dimse_engine.py fails, and the service falls back to the
  pynetdicom engine with an error in the log).

The changes pynetdicom itself could take are written up in UPSTREAM.md
beside this module.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import queue
import select
import socket
import ssl
import struct
import termios
import threading
import time
from io import BytesIO
from typing import Any

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import _config, evt, fsm, service_class
from pynetdicom import association as association_module
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket
from pynetdicom.transport import RequestHandler as _RequestHandler
from pynetdicom.utils import make_target

from hilum import upstream
from hilum.dimse.storefast import StoreHook, StoreReceiver, command_set, command_ui, command_us

log = logging.getLogger("pynetdicom")

ASSOC_WAIT = 0.001  # the association loop's longest wait (pynetdicom's fixed sleep)
ASSOC_IDLE_WAIT = 0.05
"""The longest wait of an acceptor's association loop on the fast engine.  Its DUL pokes it after
every event and its pausers when they clear its checkpoint (:class:`_Checkpoint`); only the
network (idle) timer is still polled.  At 1 ms, 16 associations storing at once woke 16,000 times
a second for nothing: 2,500 futex calls per stored instance (strace), each wake-up queueing for
the GIL behind the threads that were receiving."""
DUL_WAIT = 0.01     # the DUL loop's longest wait: only the ARTIM timer still needs polling


_GONE = object()  # put on the DUL's user queue when the connection ends before an A-ASSOCIATE-RQ


class EventDrivenDUL(DULServiceProvider):
    """A DUL whose reactor waits on its sockets instead of sleeping.

    With a :class:`~hilum.dimse.storefast.StoreReceiver` (``_hilum_store``)
    it hands each P-DATA-TF PDU of an established association to it first.
    """

    _wake_r: socket.socket | None
    _wake_w: socket.socket | None

    _waiting = False
    _hilum_store: StoreReceiver | None = None
    _gone_told = False

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """pynetdicom's, except that the acceptor's first wait ends as soon as the connection has
        gone without an A-ASSOCIATE-RQ (pynetdicom waits out its ACSE timeout, holding the thread)."""
        primitive = super().receive_pdu(wait=wait, timeout=timeout)
        return None if primitive is _GONE else primitive

    def _tell_gone(self) -> None:
        """Back in Sta1 with no association requested: wake the association's first wait."""
        if not self._gone_told and self.assoc.requestor.primitive is None:
            self._gone_told = True
            self.to_user_queue.put(_GONE)  # type: ignore[arg-type]

    def _open_wake(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _poke(self) -> None:
        w = getattr(self, "_wake_w", None)
        if w is not None and self._waiting:  # a busy reactor looks at its queue before it waits
            try:
                w.send(b"\0")
            except OSError:  # buffer full (already awake) or closed (reactor gone)
                pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._poke()

    def _send(self, pdu: Any) -> None:
        """pynetdicom's, except that a P-DATA-TF carrying :class:`RawPDUs` (a C-FIND's pending
        responses, see :class:`FindResponder`) sends those bytes as they are, in one write."""
        items = getattr(pdu, "presentation_data_value_items", None)
        if items and len(items) == 1 and type(items[0].presentation_data_value) is RawPDUs:
            if self.socket is not None:
                self.socket.send(items[0].presentation_data_value)
            return
        super()._send(pdu)

    def kill_dul(self) -> None:
        super().kill_dul()
        self._poke()

    def _wait(self) -> None:
        """Block until the peer sent data, a primitive was queued, or DUL_WAIT passed."""
        assert self._wake_r is not None
        fds: list[Any] = [self._wake_r]
        assoc_socket = self.socket
        raw = getattr(assoc_socket, "socket", None) if assoc_socket is not None else None
        if raw is not None and getattr(assoc_socket, "_is_connected", False):
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes already buffered: select() cannot see them
            try:
                if raw.fileno() >= 0:
                    fds.append(raw)
            except OSError:
                pass
        self._waiting = True
        try:
            if not self.to_provider_queue.empty() or self._kill_thread:
                return  # queued (or killed) between the loop's last look and now: no poke came
            ready, _, _ = select.select(fds, [], [], DUL_WAIT)
        except (OSError, ValueError):
            return  # the peer socket went away under us; the loop notices it
        finally:
            self._waiting = False
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def _read_pdu_data(self) -> None:
        """Read one PDU; a C-STORE's go to the store receiver, the rest to pynetdicom's decoder."""
        receiver = self._hilum_store
        if receiver is None:
            super()._read_pdu_data()
            return
        pdu = self._read_pdu()
        if pdu is None:
            receiver.reset()
            return
        if pdu[0] == 0x04 and self.state_machine.current_state == "Sta6":
            pdu = receiver.feed(pdu)
            if pdu is None:
                return
        else:
            receiver.reset()  # an A-ABORT or A-RELEASE ends whatever was arriving
        try:
            decoded, event = self._decode_pdu(pdu)
        except Exception as exc:  # noqa: BLE001 - as pynetdicom (READ_PDU_EXC_F)
            log.error("Unable to decode the received PDU data")
            log.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _read_pdu(self) -> bytearray | None:
        """One whole PDU from the peer; None once the event pynetdicom would queue is queued."""
        assert self.socket is not None
        try:
            pdu = self.socket.recv(6)
            if len(pdu) < 6:
                self.event_queue.put("Evt17")  # connection closed
                return None
            pdu_type, _, length = struct.unpack(">BBL", pdu)
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
                self.event_queue.put("Evt19")
                return None
            if isinstance(self.socket, BulkSocket):
                pdu = self.socket.recv(length, pdu)
            else:
                pdu += self.socket.recv(length)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received")
            log.exception(exc)
            self.event_queue.put("Evt17")
            return None
        if len(pdu) != 6 + length:
            if not getattr(self.socket.socket, "_g_dead", False):  # hilum.dimse.guard said why already
                log.error(f"The received PDU is shorter than expected ({len(pdu)} of {6 + length} bytes received)")
            self.event_queue.put("Evt17")
            return None
        return pdu

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop, waiting on events rather than sleeping between them."""
        self._open_wake()
        self._idle_timer.start()
        wake = getattr(self.assoc, "_hilum_wake", None)
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    # either encode and send one primitive, or receive and decode one PDU
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort, never hang
                    log.error("Exception in DUL.run(), aborting association")
                    log.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    assert self.socket is not None
                    self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait()
                    continue
                if event == "Evt15" and self.state_machine.current_state == "Sta2":
                    # A local abort (the node stopping) before the peer sent its A-ASSOCIATE-RQ:
                    # PS3.8 table 9-10 has no action for it (pynetdicom raises); close the
                    # connection as AA-2 does for Sta4.
                    self.state_machine.transition(fsm.AA_2(self))
                else:
                    self.state_machine.do_action(event)
                if self.state_machine.current_state == "Sta1":
                    self._tell_gone()
                if wake is not None:
                    wake.set()
        finally:
            if self._hilum_store is not None:
                self._hilum_store.reset()  # an instance cut short by the end of the association
            if wake is not None:
                wake.set()
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    s.close()
            self._wake_w = None


class EventDrivenAssociation(Association):
    """An association whose reactor wakes when its DUL has news (acceptors of the fast engine), and
    re-checks its pause (also requestors, see :func:`steady_requestor`)."""

    _hilum_wake: threading.Event

    def kill(self) -> None:
        self._hilum_wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop (see its docstring), waiting on the DUL's wake-up."""
        wake = self._hilum_wake
        longest = ASSOC_IDLE_WAIT if isinstance(self._reactor_checkpoint, _Checkpoint) else ASSOC_WAIT
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                wake.wait(longest)
            wake.clear()  # before looking: whatever arrives later wakes the next wait
            served = False

            # Let send_*()/release() from other threads pause the reactor here.  They clear the
            # checkpoint, then wait for _is_paused; re-checking the checkpoint after leaving it
            # closes pynetdicom's window in which a pauser sees _is_paused just before the loop
            # moves on and steals the response it is waiting for.
            while True:
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self._is_paused = False
                if self._reactor_checkpoint.is_set():
                    break

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
                served = True

            if self.is_established and self.acse.is_release_requested():
                # EVT_RELEASED fires before the A-RELEASE-RP leaves (pynetdicom: after), or the
                # peer's closing the connection - seen at once by this DUL - could overtake it.
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.acse.send_release(is_response=True)
                log.info("Association Released")
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                log.info(log_msg)
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class _Checkpoint(threading.Event):
    """pynetdicom's reactor checkpoint (``Association._reactor_checkpoint``) that wakes the
    association loop when it is cleared.

    A thread that sends on an association (``send_c_store`` of a C-GET, ``release``...) clears
    the checkpoint and spins until the loop reports itself paused there; the loop only gets
    there after its wait, so without the poke each pause would wait out
    :data:`ASSOC_IDLE_WAIT`.  Should pynetdicom pause some other way, a pause costs at most
    that wait: slower, never wrong.
    """

    def __init__(self, wake: threading.Event):
        super().__init__()
        self.set()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake.set()


def steady_requestor(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler of every association Hilum *requests* (C-MOVE sub-operations,
    storage commitment reports, ``hilum send``/``move``/``get``/``find``): its reactor becomes
    :class:`EventDrivenAssociation`'s, which re-checks the pause.

    pynetdicom 3.0's reactor (``Association._run_reactor``, the same loop for both roles) sets
    ``_is_paused`` before waiting on its checkpoint and clears it after; a ``send_c_store()`` from
    the application's thread that clears the checkpoint in between sees "paused", sends its
    request, and the reactor then takes the response off the queue ("Received unexpected
    C-STORE service message"): the sender waits out the DIMSE timeout and aborts the
    association (pynetdicom issues #435, #842).  On this 2-core machine under load that was 4
    lost associations in 2,000 C-STOREs to DCMTK ``storescp``, and the C-MOVE tests' rare
    60-second hangs.

    Called in the DUL thread when the connection opens, before negotiation ends, so the
    association thread enters the swapped ``_run_reactor``.  Only while pynetdicom is the
    version it mirrors (:func:`upstream_changes`); otherwise pynetdicom's own loop runs.  This
    is a correction of the requestor role, not the listener's engine: it applies whatever
    ``[dimse] engine`` says.
    """
    assoc = event.assoc
    if assoc.is_requestor and type(assoc) is Association and _mirror_holds():
        assoc._hilum_wake = threading.Event()  # type: ignore[attr-defined]  # nothing pokes it: 1 ms polls, as pynetdicom
        assoc.__class__ = EventDrivenAssociation


@functools.cache
def _mirror_holds() -> bool:
    return not upstream_changes()


class BulkSocket(AssociationSocket):
    """An association socket that reads a PDU with few large ``recv_into`` calls.

    pynetdicom reads in 4 KiB ``recv`` calls joined into a bytearray: 128 calls
    and copies for each 512 KiB PDU.  Here the PDU (its header given as
    ``prefix``) is read into one receive buffer kept by the connection, then
    copied out once.  The buffer grows with what has arrived (what the kernel
    already holds, FIONREAD, else doubling from :data:`FIRST_READ`) up to the
    longest PDU the peer actually sent: memory follows the bytes received,
    never a length a peer merely announced.
    """

    _buffer: bytearray | None = None

    def recv(self, nr_bytes: int, prefix: bytes | bytearray = b"") -> bytearray:
        sock = self.socket
        assert sock is not None
        start = len(prefix)
        end = start + nr_bytes
        buf = self._buffer
        if buf is None:
            buf = self._buffer = bytearray(FIRST_READ)
        if len(buf) < end:  # (once the buffer has grown to the peer's PDUs, this is skipped)
            ready = start + min(nr_bytes, _available(sock))
            if len(buf) < ready:
                buf += bytes(ready - len(buf))
        buf[:start] = prefix
        got = start
        while got < end:
            if got == len(buf):
                buf += bytes(min(end - got, max(len(buf), _available(sock))))
            stop = min(len(buf), end)
            n = sock.recv_into(memoryview(buf)[got:stop], stop - got)
            if not n:  # connection broken: return what arrived, as pynetdicom does
                break
            got += n
        return buf[:got]


FIRST_READ = 64 << 10
"""The first buffer of a :class:`BulkSocket` read when less has arrived (bytes)."""


def _available(sock: Any) -> int:
    """Bytes waiting in the kernel's receive buffer of ``sock`` (FIONREAD; 0 if unknown)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


_COMMAND_FIELDS = {C_STORE: 0x8001, C_FIND: 0x8020}


def encode_response(rsp: Any) -> tuple[bytes, bytes | None] | None:
    """The command set (Implicit VR Little Endian) and data set of a plain C-STORE-RSP or C-FIND-RSP.

    PS3.7 9.3.1.2 and 9.3.2.2.  ``None`` for any other message, or a response
    that carries more than a status and an identifier (an error comment,
    offending elements): pynetdicom encodes those.
    """
    field = _COMMAND_FIELDS.get(type(rsp))
    if field is None or rsp.Status is None or rsp.MessageIDBeingRespondedTo is None:
        return None
    if any(getattr(rsp, k, None) is not None for k in ("ErrorComment", "OffendingElement", "ErrorID")):
        return None
    dataset: bytes | None = None
    if field == 0x8020 and rsp.Identifier is not None:
        dataset = rsp.Identifier.getvalue()
        if not dataset:
            return None  # pynetdicom's own quirk (a data set announced, none sent): leave it to it
    instance = getattr(rsp, "AffectedSOPInstanceUID", None) if field == 0x8001 else None
    command = command_set(
        command_ui(0x0002, str(rsp.AffectedSOPClassUID)) if rsp.AffectedSOPClassUID else b"",
        command_us(0x0100, field),
        command_us(0x0120, int(rsp.MessageIDBeingRespondedTo)),
        command_us(0x0800, 0x0001 if dataset else 0x0101),   # CommandDataSetType
        command_us(0x0900, int(rsp.Status)),
        command_ui(0x1000, str(instance)) if instance else b"",
    )
    return command, dataset


def response_pdvs(rsp: Any, context_id: int, max_pdu: int) -> list[tuple[int, bytes]] | None:
    """The PDVs of a plain C-STORE-RSP or C-FIND-RSP, one per P-DATA, fragmented to ``max_pdu``
    (the peer's limit, 0: none) as pynetdicom does; ``None``: let pynetdicom send it."""
    encoded = encode_response(rsp)
    if encoded is None:
        return None
    command, dataset = encoded
    limit = max_pdu - 6 if max_pdu else 0  # a PDV's header is 6 bytes
    if limit and len(command) > limit:
        return None
    pdvs = [(context_id, b"\x03" + command)]  # command, last fragment
    if dataset:
        step = limit or len(dataset)
        for start in range(0, len(dataset), step):
            last = start + step >= len(dataset)
            pdvs.append((context_id, (b"\x02" if last else b"\x00") + dataset[start : start + step]))
    return pdvs


def pack_pdvs(pdvs: list[tuple[int, bytes]], max_pdu: int) -> list[list[tuple[int, bytes]]]:
    """The PDVs of one message grouped into as few P-DATA-TF PDUs as the peer's limit allows.

    PS3.8 9.3.5: a P-DATA-TF carries one or more PDV items; its variable field
    (each item: 4-byte length, context ID, control header and fragment) stays
    within the peer's maximum PDU length (0: none).  A C-FIND-RSP's command and
    identifier then go out in one PDU instead of two: half the PDUs for a peer
    to read per match (pynetdicom reads one PDU per turn of its loop).  Only
    one message per PDU: pynetdicom stops reading a PDU at the end of a message.
    """
    out: list[list[tuple[int, bytes]]] = []
    size = 0
    for pdv in pdvs:
        item = 5 + len(pdv[1])
        if out and (not max_pdu or size + item <= max_pdu):
            out[-1].append(pdv)
            size += item
        else:
            out.append([pdv])
            size = item
    return out


class FastResponseDIMSE(DIMSEServiceProvider):
    """Sends plain C-STORE and C-FIND responses without building a pydicom data set.

    pynetdicom turns each response primitive into a pydicom ``Dataset`` and
    encodes it twice (once for the group length): about 0.7 ms per C-STORE,
    and as much per C-FIND match.  Their command sets are a few fixed
    elements, encoded here directly (the C-FIND identifier is already
    encoded); every other message, and any response an ``EVT_DIMSE_SENT``
    handler wants to see, goes through pynetdicom.
    """

    _responded_to: int | None  # set up by make_event_driven, with _sent
    _sent: threading.Condition

    def send_msg(self, primitive: Any, context_id: int) -> None:
        self._send_msg(primitive, context_id)
        answered = primitive.MessageIDBeingRespondedTo
        if answered is not None:
            with self._sent:
                self._responded_to = int(answered)
                self._sent.notify_all()

    _hilum_held: bytes = b""  # a FindResponder's last matches, to go out with the next message

    def _send_msg(self, primitive: Any, context_id: int) -> None:
        pdvs = None
        if type(primitive) in _COMMAND_FIELDS and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pdvs = response_pdvs(primitive, context_id, self.maximum_pdu_size)
        held, self._hilum_held = self._hilum_held, b""
        if held and pdvs is not None:  # the last matches and the final response: one write
            self._send_raw(context_id, held + b"".join([pdata_tf(pdu) for pdu in pack_pdvs(pdvs, self.maximum_pdu_size)]))
            return
        if held:
            self._send_raw(context_id, held)
        if pdvs is None:
            super().send_msg(primitive, context_id)
            return
        for pdu in pack_pdvs(pdvs, self.maximum_pdu_size):
            pdata = P_DATA()
            pdata.presentation_data_value_list.extend(pdu)  # the setter wants lists, not tuples
            self.dul.send_pdu(pdata)

    def _send_raw(self, context_id: int, data: bytes) -> None:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, RawPDUs(data)))
        self.dul.send_pdu(pdata)

    def wait_responded(self, message_id: int, timeout: float) -> bool:
        """Wait until the response to request ``message_id`` has been handed to the DUL.

        Responses on one association go out in order, so a later request on
        it (an N-EVENT-REPORT after an N-ACTION) reaches the peer after it.
        """
        with self._sent:
            return self._sent.wait_for(lambda: self._responded_to == message_id or not self.assoc.is_established,
                                       timeout)


def wait_responded(assoc: Any, message_id: int, timeout: float = 30.0) -> bool:
    """Wait until ``assoc`` has answered request ``message_id`` (see FastResponseDIMSE).

    On a plain pynetdicom association there is nothing to wait for: its
    ``send_*`` methods pause the association's reactor before sending, and the
    reactor only pauses once it has finished serving the request in hand,
    response included.
    """
    dimse = assoc.dimse
    if isinstance(dimse, FastResponseDIMSE):
        return dimse.wait_responded(message_id, timeout)
    return True


class RawPDUs(bytes):
    """Whole P-DATA-TF PDUs, already encoded (:class:`FindResponder`): the one PDV of a P-DATA
    primitive that :meth:`EventDrivenDUL._send` writes to the socket as it is."""


def pdata_tf(pdvs: list[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU (PS3.8 9.3.5) of ``pdvs``: (context ID, control header + fragment)."""
    body = b"".join([struct.pack(">IB", len(data) + 1, cid) + data for cid, data in pdvs])
    return struct.pack(">BBI", 0x04, 0x00, len(body)) + body


class FindResponder:
    """Sends a C-FIND's pending responses itself, many matches per write.

    pynetdicom turns each match a handler yields into a response primitive,
    a P-DATA primitive, a turn of the DUL's state machine, a PDU object and a
    ``send`` call: 60 µs of the 75 µs each match cost, where Orthanc spends
    about 60 in all.  Every pending response of one request has the same
    command set, so it is encoded once; each match becomes one P-DATA-TF
    (command and identifier, :func:`pack_pdvs`; split to the peer's maximum
    PDU length as pynetdicom would) and a batch of them goes to the DUL as one
    :class:`RawPDUs`, in order with everything else the association sends.
    The final response is still pynetdicom's (the handler returns).

    Made by :func:`find_responder` only on an association of the fast engine
    with no handler that wants to see PDUs or DIMSE messages.
    """

    def __init__(self, assoc: Any, context_id: int, message_id: int, sop_class: str):
        self.dul = assoc.dul
        self.dimse: FastResponseDIMSE = assoc.dimse
        self.context_id = context_id
        self.max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = sop_class
        rsp.Status = 0xFF00
        rsp.Identifier = BytesIO(b"\0\0")
        encoded = encode_response(rsp)
        assert encoded is not None
        self.command = b"\x03" + encoded[0]
        self.sent = 0

    def pdus(self, identifier: bytes) -> bytes:
        """The P-DATA-TF PDU(s) of one pending response with this encoded identifier."""
        cid = self.context_id
        limit = self.max_pdu - 6 if self.max_pdu else 0
        if not limit or len(identifier) <= limit:
            pdvs = [(cid, self.command), (cid, b"\x02" + identifier)]
        else:
            pdvs = [(cid, self.command)]
            for start in range(0, len(identifier), limit):
                last = start + limit >= len(identifier)
                pdvs.append((cid, (b"\x02" if last else b"\x00") + identifier[start : start + limit]))
        return b"".join([pdata_tf(pdu) for pdu in pack_pdvs(pdvs, self.max_pdu)])

    def send(self, identifiers: list[bytes], *, last: bool = False) -> None:
        """Queue the pending responses of these encoded identifiers (in order) for the peer.

        ``last``: no match follows; they wait for the final response, which the DIMSE provider
        sends in the same write (a peer that polls, as pynetdicom does every millisecond, reads
        the whole answer in one go instead of sleeping before its last message).
        """
        if not identifiers:
            return
        data = b"".join(map(self.pdus, identifiers))
        self.sent += len(identifiers)
        if last:
            self.dimse._hilum_held += data
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((self.context_id, RawPDUs(data)))
        self.dul.send_pdu(pdata)


def drain(assoc: Any, backlog: int = 8, timeout: float = 30.0) -> None:
    """Wait while more than ``backlog`` PDUs wait to be sent on ``assoc``.

    pynetdicom queues responses without waiting for the socket; pacing a
    long C-FIND to the network keeps memory flat and gives a C-CANCEL
    (PS3.7 9.3.2.3) the chance to stop it early: the DUL reads the peer's
    PDUs only when it has nothing left to send.
    """
    dul = getattr(assoc, "dul", None)
    pending = getattr(dul, "to_provider_queue", None)
    if pending is None:
        return
    deadline = time.monotonic() + timeout
    while pending.qsize() > backlog and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0005)


def find_responder(assoc: Any, context_id: int, message_id: int, sop_class: str) -> FindResponder | None:
    """A :class:`FindResponder` for this C-FIND, or None where pynetdicom must send each response:
    not the fast engine's association, its changes not installed, or a handler bound that wants to
    see every PDU or DIMSE message."""
    if not (installed() and isinstance(assoc, EventDrivenAssociation) and type(assoc.dul) is EventDrivenDUL
            and isinstance(assoc.dimse, FastResponseDIMSE)):
        return None
    if any(assoc.get_handlers(e) for e in (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_DIMSE_SENT)):
        return None
    return FindResponder(assoc, context_id, message_id, sop_class)


class EncodedIdentifier(Dataset):
    """A pending C-FIND response's identifier, already encoded for its presentation context.

    pynetdicom encodes each identifier a C-FIND handler yields with pydicom;
    this one it gets back as is (see :func:`_encode`).  It is otherwise an
    empty data set: only pynetdicom's debug log would look inside.
    """

    def __init__(self, encoded: bytes, implicit: bool):
        super().__init__()
        self._hilum_encoded = (encoded, implicit)


_pynetdicom_encode = service_class.encode


def _encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``encode`` for its service classes, passing an EncodedIdentifier through."""
    if type(ds) is EncodedIdentifier:
        encoded, implicit = ds._hilum_encoded
        if implicit == is_implicit_vr and is_little_endian and not deflated:
            return encoded
        log.error("C-FIND identifier encoded for another transfer syntax")
        return None  # pynetdicom's "cannot encode" (it answers 0xC312)
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


_install_lock = threading.Lock()
_installed = 0
_saved_config: dict[str, Any] = {}


def install() -> None:
    """Put the fast engine's process-wide changes to pynetdicom in place (counted: each call needs
    an :func:`uninstall`).

    - ``service_class.encode`` (the name pynetdicom 3.0's C-FIND SCP calls for
      each match) passes an :class:`EncodedIdentifier` through;
    - unless pynetdicom logs at DEBUG, its ``_config.LOG_REQUEST_IDENTIFIERS``
      and ``LOG_RESPONSE_IDENTIFIERS`` are off: they pretty-print every C-FIND
      identifier, and an EncodedIdentifier would print as empty.
    """
    global _installed
    with _install_lock:
        _installed += 1
        if _installed > 1:
            return
        service_class.encode = _encode
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            for name in ("LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS"):
                _saved_config[name] = getattr(_config, name)
                setattr(_config, name, False)


def uninstall() -> None:
    """Undo :func:`install` once the last fast-engine service has stopped."""
    global _installed
    with _install_lock:
        if _installed == 0:
            return
        _installed -= 1
        if _installed:
            return
        if service_class.encode is _encode:
            service_class.encode = _pynetdicom_encode
        for name, value in _saved_config.items():
            setattr(_config, name, value)
        _saved_config.clear()


def installed() -> bool:
    """Whether the fast engine's changes are in place (C-FIND may yield EncodedIdentifier)."""
    return _installed > 0 and service_class.encode is _encode


_STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, association_module.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, association_module.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, association_module.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, association_module.standard_pdu_sent_handler),
)


def _quiet(assoc: Association) -> None:
    """Unbind pynetdicom's "standard" logging handlers from ``assoc`` unless pynetdicom logs at DEBUG.

    They format every PDU and DIMSE message for a debug log nobody reads (copying each C-STORE
    data set once more), and a bound PDU handler sends C-STORE down pynetdicom's path.  Done per
    association rather than by ``_config.LOG_HANDLER_LEVEL``, which is process-wide.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in _STANDARD_HANDLERS:
        assoc.unbind(event, handler)


def make_event_driven(assoc: Association, store_hook: StoreHook | None = None) -> Association:
    """Give a new, not yet started acceptor ``assoc`` the event-driven reactors (and, with
    ``store_hook``, the direct C-STORE path of :mod:`hilum.dimse.storefast`)."""
    assoc._hilum_wake = threading.Event()  # type: ignore[attr-defined]
    assoc._reactor_checkpoint = _Checkpoint(assoc._hilum_wake)  # type: ignore[attr-defined]
    _quiet(assoc)
    if type(assoc.dul.socket) is AssociationSocket:
        assoc.dul.socket.__class__ = BulkSocket
    assoc.dimse.__class__ = FastResponseDIMSE
    assoc.dimse._responded_to = None  # type: ignore[attr-defined]
    assoc.dimse._sent = threading.Condition()  # type: ignore[attr-defined]
    assoc.dul.__class__ = EventDrivenDUL
    assoc.dul._target = make_target(assoc.dul.run_reactor)  # type: ignore[attr-defined]  # Thread bound the old method at init
    if store_hook is not None:
        assoc.dul._hilum_store = StoreReceiver(assoc.dul, store_hook)  # type: ignore[attr-defined]
    assoc.__class__ = EventDrivenAssociation
    return assoc


class RequestHandler(_RequestHandler):
    """pynetdicom's request handler, creating event-driven associations."""

    def _create_association(self) -> Association:
        return make_event_driven(super()._create_association(), getattr(self.server, "_hilum_store_hook", None))


# ------------------------------------------------------------------ the upstream code this mirrors

PYNETDICOM_VERSION = "3.0.4"

UPSTREAM: dict[str, str] = {
    # copied: EventDrivenAssociation._run_reactor
    "pynetdicom.association.Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    # its first receive_pdu(), which EventDrivenDUL.receive_pdu ends early; the attributes set at init
    "pynetdicom.association.Association.run_reactor": "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
    "pynetdicom.association.Association.__init__": "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea",
    "pynetdicom.association.Association.kill": "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
    # copied: EventDrivenDUL.run_reactor, _read_pdu_data / _read_pdu; the thread target bound at init
    "pynetdicom.dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "pynetdicom.dul.DULServiceProvider.__init__": "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
    "pynetdicom.dul.DULServiceProvider.receive_pdu": "fa67339834ca998cb31eb1806a854864200464b0a9991333d387aa419478c4e6",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253",
    "pynetdicom.dul.DULServiceProvider.send_pdu": "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6",
    # wrapped: EventDrivenDUL._send (RawPDUs of FindResponder); DT_1 builds its P-DATA-TF from our primitive
    "pynetdicom.dul.DULServiceProvider._send": "a850a7919e68484ef6751ee7a199b3ba4a911b5cbf0c2928bf796c55539254d4",
    "pynetdicom.fsm.DT_1": "82e5c5d4114534fa9ac86124c7c7ef11ff2b98bc73069372cbe413af9df19081",
    "pynetdicom.pdu.P_DATA_TF.from_primitive": "1e84ddf2ecfdc32e85573b9f9696179a315d7032333b9d2e3319f9c1e0803c98",
    "pynetdicom.dul.DULServiceProvider.kill_dul": "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    # replaced: BulkSocket.recv; the class swapped on the live association
    "pynetdicom.transport.AssociationSocket.recv": "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
    "pynetdicom.transport.RequestHandler._create_association": "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
    # bypassed for plain C-STORE/C-FIND responses: FastResponseDIMSE, response_pdvs
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg": "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57",
    # followed by storefast.StoreReceiver._track (where pynetdicom's message ends)
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
    # the bytes storefast.part10_header reproduces
    "pynetdicom.events.Event.encoded_dataset": "879e44cd3dc43358692ef7fadc0ccdc5e9c8178bec82bc0ed8358eea73008087",
    "pynetdicom.dsutils.create_file_meta": "035ed415f5aeea15543cca3b0b7b2b6d5a3189bc807a0211f5c633bb356ab9e3",
    "pynetdicom.dsutils.encode_file_meta": "9c08a44b26b58301a092a9641c35b8c6f471eab40bedca1dea31cf19e9169e7c",
    # wrapped by _encode, called by name from the C-FIND SCP
    "pynetdicom.dsutils.encode": "0d29ffd5d358c45a6b20436a9a45ec4ea003631dd4323e827c87365624c71cf0",
    "pynetdicom.service_class.ServiceClass._c_find_scp": "da242b908ef4848ceaec8937680dfe9d23705301f6bad99de6dd64786cd9a7ca",
}
"""SHA-256 of the source of each upstream function the fast engine copies, replaces or relies on
the inside of, in pynetdicom :data:`PYNETDICOM_VERSION`."""


source_digest = upstream.source_digest


def upstream_changes() -> list[str]:
    """What differs from the pynetdicom the fast engine was written against (empty: nothing)."""
    changed = []
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        changed.append(f"pynetdicom {pynetdicom.__version__} (written against {PYNETDICOM_VERSION})")
    changed.extend(upstream.changes(UPSTREAM))
    return changed


__all__ = ["UPSTREAM", "BulkSocket", "EncodedIdentifier", "EventDrivenAssociation", "EventDrivenDUL", "FastResponseDIMSE",
           "FindResponder", "RawPDUs", "RequestHandler", "drain", "find_responder", "pdata_tf", "encode_response", "install", "installed", "make_event_driven",
           "pack_pdvs", "response_pdvs", "source_digest", "steady_requestor", "uninstall", "upstream_changes", "wait_responded"]
