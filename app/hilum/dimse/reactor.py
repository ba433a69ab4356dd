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
by :class:`RequestHandler`, which :func:`start_server` hands to the servers of
:class:`~hilum.dimse.scp.DimseService`; everything else (negotiation, state
machine, handlers) is pynetdicom's own.  Written against pynetdicom 3.0
(pinned in pyproject.toml), whose ``Association._run_reactor`` body
:meth:`EventDrivenAssociation._run_reactor` mirrors.
"""
from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt, service_class
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from pynetdicom.transport import RequestHandler as _RequestHandler
from pynetdicom.utils import make_target

from hilum.dimse.storefast import StoreHook, StoreReceiver, command_set, command_ui, command_us

log = logging.getLogger("pynetdicom")

ASSOC_WAIT = 0.001  # the association loop's longest wait (pynetdicom's fixed sleep)
DUL_WAIT = 0.01     # the DUL loop's longest wait: only the ARTIM timer still needs polling


class EventDrivenDUL(DULServiceProvider):
    """A DUL whose reactor waits on its sockets instead of sleeping.

    With a :class:`~hilum.dimse.storefast.StoreReceiver` (``_hilum_store``)
    it hands each P-DATA-TF PDU of an established association to it first.
    """

    _wake_r: socket.socket | None
    _wake_w: socket.socket | None

    _waiting = False
    _hilum_store: StoreReceiver | None = None

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
            pdu += self.socket.recv(length)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received")
            log.exception(exc)
            self.event_queue.put("Evt17")
            return None
        if len(pdu) != 6 + length:
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
                self.state_machine.do_action(event)
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
    """An acceptor association whose reactor wakes when its DUL has news."""

    _hilum_wake: threading.Event

    def kill(self) -> None:
        self._hilum_wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop (see its docstring), waiting on the DUL's wake-up."""
        wake = self._hilum_wake
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                wake.wait(ASSOC_WAIT)
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


class BulkSocket(AssociationSocket):
    """An association socket that reads a PDU with few large ``recv_into`` calls.

    pynetdicom reads in 4 KiB ``recv`` calls joined into a bytearray: 32 calls
    and copies for each 128 KiB PDU that DCMTK sends; here one buffer is
    filled in place.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if not n:  # connection broken: return what arrived, as pynetdicom does
                    break
                got += n
        if got < nr_bytes:
            del buf[got:]
        return buf


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

    def _send_msg(self, primitive: Any, context_id: int) -> None:
        pdvs = None
        if type(primitive) in _COMMAND_FIELDS and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pdvs = response_pdvs(primitive, context_id, self.maximum_pdu_size)
        if pdvs is None:
            super().send_msg(primitive, context_id)
            return
        for pdv in pdvs:
            pdata = P_DATA()
            pdata.presentation_data_value_list.append(pdv)
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
    """Wait until ``assoc`` has answered request ``message_id`` (see FastResponseDIMSE)."""
    dimse = assoc.dimse
    if isinstance(dimse, FastResponseDIMSE):
        return dimse.wait_responded(message_id, timeout)
    # a plain pynetdicom association: its reactor is marked paused while a handler runs
    deadline = time.monotonic() + timeout
    while assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.001)
    return not assoc._is_paused


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


service_class.encode = _encode  # the name pynetdicom 3.0's C-FIND SCP calls for each match


def make_event_driven(assoc: Association, store_hook: StoreHook | None = None) -> Association:
    """Give a new, not yet started acceptor ``assoc`` the event-driven reactors (and, with
    ``store_hook``, the direct C-STORE path of :mod:`hilum.dimse.storefast`)."""
    assoc._hilum_wake = threading.Event()  # type: ignore[attr-defined]
    if type(assoc.dul.socket) is AssociationSocket:
        assoc.dul.socket.__class__ = BulkSocket
    assoc.dimse.__class__ = FastResponseDIMSE
    assoc.dimse._responded_to = None  # type: ignore[attr-defined]
    assoc.dimse._sent = threading.Condition()  # type: ignore[attr-defined]
    assoc.dul.__class__ = EventDrivenDUL
    assoc.dul._target = make_target(assoc.dul.run_reactor)  # Thread bound the old method at init
    if store_hook is not None:
        assoc.dul._hilum_store = StoreReceiver(assoc.dul, store_hook)  # type: ignore[attr-defined]
    assoc.__class__ = EventDrivenAssociation
    return assoc


class RequestHandler(_RequestHandler):
    """pynetdicom's request handler, creating event-driven associations."""

    def _create_association(self) -> Association:
        return make_event_driven(super()._create_association(), getattr(self.server, "_hilum_store_hook", None))




def start_server(ae: Any, address: tuple[str, int], *, ssl_context: ssl.SSLContext | None = None,
                 evt_handlers: list[Any] | None = None,
                 store_hook: StoreHook | None = None) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, ...)`` whose associations are event-driven, and
    receive C-STORE requests through ``store_hook`` (see :mod:`hilum.dimse.storefast`) if given."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=ThreadedAssociationServer, request_handler=RequestHandler)
    server._hilum_store_hook = store_hook  # type: ignore[attr-defined]
    thread = threading.Thread(target=make_target(server.serve_forever), name=f"AcceptorServer@{address[1]}",
                              daemon=True)
    thread.start()
    ae._servers.append(server)  # as AE.start_server: AE.shutdown() and server.shutdown() expect it
    return server


__all__ = ["BulkSocket", "EncodedIdentifier", "EventDrivenAssociation", "EventDrivenDUL", "FastResponseDIMSE", "RequestHandler",
           "encode_response", "make_event_driven", "response_pdvs", "start_server", "wait_responded"]
