"""The node's DICOM upper-layer service: one pynetdicom AE built from the config.

SCP services (PS3.4): VERIFICATION (A), Storage (B), Query/Retrieve FIND,
MOVE and GET in the patient- and study-root models (C), Storage Commitment
Push Model (J).  Handlers are thin (STYLE.md §5): they translate to the
archive's one ingest call and one query call, and a failure becomes a DIMSE
status and a log line, never a dead association.

Access control: the called AE title must be the node's; with
``require_known_peers`` only configured peers may associate, each from its
configured ``host`` (see :meth:`DimseService.peer_addresses`); a known peer
only gets the presentation contexts its ``may_store`` / ``may_query`` /
``may_retrieve`` allow.  TLS (PS3.15 B.1) when a certificate and key are
configured.

Bounds (:mod:`hilum.dimse.guard`): ``max_associations`` counts established
associations only; connections that have not yet sent their whole
A-ASSOCIATE-RQ are bounded apart (``[dimse] max_pending``) and get the ARTIM
timeout (``[dimse] artim_timeout``); every PDU is checked against the
maximum PDU length the node advertised (before association: a hard cap on
the A-ASSOCIATE-RQ) before it is read, and a lie ends the connection.

Engines (``[dimse] engine``, :mod:`hilum.dimse.settings`): ``"fast"`` runs
the event-driven association classes of :mod:`hilum.dimse.reactor` and the
direct C-STORE path of :mod:`hilum.dimse.storefast`; ``"pynetdicom"`` runs
pynetdicom's own classes with these handlers only.  The same bounds hold
for both.

Each association is logged in one line when its connection closes: peer,
AE titles, what it did, how it ended.

Configuration (``hilum.toml``)::

    [node]
    aet = "HILUM"
    dicom_port = 11112
    require_known_peers = false   # true: only the [peers] below may associate
    max_associations = 32         # established associations at once (half-open connections are apart)
    max_pdu_size = 0              # 0: no limit (advertised as 1 MiB, see UNLIMITED_PDU); at most 16 MiB
    tls_cert = "/etc/hilum/node.crt"   # with tls_key: DICOM over TLS (PS3.15 B.1)
    tls_key = "/etc/hilum/node.key"
    tls_ca = "/etc/hilum/ca.crt"       # peers must present a certificate signed by it

    [dimse]                       # see hilum.dimse.settings
    engine = "fast"               # or "pynetdicom"; HILUM_DIMSE_ENGINE overrides
    tls_port = 2762               # optional: plain DICOM on dicom_port AND TLS here
    artim_timeout = 10            # seconds to deliver the A-ASSOCIATE-RQ (PS3.8 9.1.5)
    max_pending = 32              # connections without a complete A-ASSOCIATE-RQ

    [peers.ct1]                   # C-MOVE destinations, commitment reports, rights
    aet = "CT1"
    host = "10.0.0.21"
    port = 104
    tls = false
    may_store = true
    may_query = true
    may_retrieve = true
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from hilum.archive import Archive, IngestResult, Received
from hilum.archive.audit import group_by_patient, query_detail, query_subject
from hilum.archive.blobs import TempBlob
from hilum.archive.metrics import metrics_for
from hilum.config import Config, Peer
from hilum.dicom.transcode import TranscodeError
from hilum.dimse import contexts as cx
from hilum.dimse import guard, reactor
from hilum.dimse.commitment import COMMITMENT_INSTANCE, CommitmentReporter, check_commitment
from hilum.dimse.identifiers import IdentifierError, ResponsePlan, query_of, response_for, retrieve_query
from hilum.dimse.mpps import MppsSCP
from hilum.dimse.mwl import WorklistSCP
from hilum.dimse.net import (
    NODELAY_HANDLERS,
    client_ssl_context,
    large_receive_buffer,
    server_ssl_context,
    set_nodelay,
)
from hilum.dimse.reactor import EncodedIdentifier, steady_requestor
from hilum.dimse.settings import DimseSettings
from hilum.dimse.storefast import StoreRequest
from hilum.dimse.uids import STORAGE_COMMITMENT_PUSH

log = logging.getLogger(__name__)

# DIMSE statuses (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900  # C-STORE: data set does not match SOP class; Q/R: identifier does not match
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
MOVE_DESTINATION_UNKNOWN = 0xA801
NO_SUCH_ACTION = 0x0123
NO_SUCH_SOP_INSTANCE = 0x0112

UNLIMITED_PDU = 1 << 20  # what "max_pdu_size = 0" advertises (bytes)
FIND_BATCH = 32  # C-FIND matches per write on the fast engine (hilum.dimse.reactor.FindResponder)

_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DATA_SENT, evt.EVT_PDU_SENT)
INVALID_SOP_INSTANCE = 0x0117  # PS3.7 Annex C "Invalid SOP Instance": the UID breaks the construction rules
DUPLICATE_DIFFERS = 0xC410  # implementation-specific in the C-STORE failure range (PS3.4 B.2.3): store_status

# Rejection codes of Archive.ingest / hilum.dicom.attributes -> C-STORE failure statuses (PS3.4 B.2.3).
# 0xA7xx (out of resources) is the one class a sender retries: a full disk, or an index still locked by
# another writer after the busy timeout (index.storage_failure), gets it.  A data set
# that contradicts its SOP class or its own command is 0xA900 (as dcm4chee answers a command/data set
# UID mismatch); bytes that cannot be understood (not DICOM, cut short, without the UIDs that name
# them, native pixels under a JPEG context) are 0xC000.
INGEST_STATUS = {
    "storage-full": OUT_OF_RESOURCES,
    "sop-class-mismatch": DATASET_MISMATCH,
    "uid-mismatch": DATASET_MISMATCH,
    "invalid-uid": DATASET_MISMATCH,
    "invalid-sop-instance-uid": INVALID_SOP_INSTANCE,
    "pixel-length": DATASET_MISMATCH,
    "syntax-mismatch": CANNOT_UNDERSTAND,
    "missing-uid": CANNOT_UNDERSTAND,
    "truncated": CANNOT_UNDERSTAND,
    "not-dicom": CANNOT_UNDERSTAND,
    "duplicate-differs": DUPLICATE_DIFFERS,
}


def status_dataset(status: int, comment: str = "") -> Dataset:
    """A status with an Error Comment (0000,0902; 64 characters at most, PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


class _SharedContexts(list):  # type: ignore[type-arg]
    """The server's supported contexts, shared by every association instead of deep-copied.

    pynetdicom deep-copies the acceptor's contexts for every association;
    with ~180 contexts of ~45 transfer syntaxes that is ~150 ms per
    association (a C-FIND's whole latency budget).  Nothing changes a
    context in place - negotiation builds new ones, per-peer rights replace
    the list, and :meth:`DimseService._prefer_requestor_order` replaces the
    contexts it reorders - so each association gets a new list of the same
    context objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AssociationLog:
    """What one association did, for its one log line."""

    number: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    calling: str = ""
    called: str = ""
    outcome: str = "closed"
    ops: Counter[str] = field(default_factory=Counter)
    logged: bool = False
    stored: dict[str, list[int]] = field(default_factory=dict)  # study UID -> [stored, failed] (the audit)
    refusal_audited: bool = False

    def line(self) -> str:
        parts = [f"{k} {v}" for k, v in sorted(self.ops.items())]
        did = ", ".join(parts) if parts else "nothing"
        who = f"{self.calling or '?'} -> {self.called or '?'}"
        return (f"association {self.number} {who} from {self.peer}: {did}; {self.outcome} "
                f"after {time.monotonic() - self.started:.2f} s")


class DimseService:
    """The DICOM network service of a :class:`hilum.node.Node`.

    ``start()`` binds the port(s) and returns; ``stop()`` stops accepting,
    lets in-flight associations finish (up to ``drain_timeout`` seconds) and
    aborts what is left.  ``port`` is the bound port (useful with port 0).
    ``stop_accepting()`` closes the listeners alone (new associations are
    refused; the node calls it before stopping its other services) and starts
    the ``drain_timeout`` clock; ``hurry()`` ends the wait at once.
    """

    name = "dimse"

    def __init__(self, config: Config, archive: Archive, *, drain_timeout: float = 30.0,
                 extensions: list[Any] | None = None):
        self.config = config
        self.archive = archive
        self.drain_timeout = drain_timeout
        self.settings = DimseSettings.from_config(config)
        self.engine = self.settings.engine  # what start() runs (see start: "fast" may fall back)
        self.peers_by_aet: dict[str, Peer] = {p.aet: p for p in config.peers.values()}
        self._peer_addresses: dict[str, frozenset[Any]] = {}
        self.admission: guard.Admission | None = None
        self._installed = False
        self.extensions: list[Any] = extensions if extensions is not None else default_extensions(archive)
        self._supported = cx.scp_supported()
        for ext in self.extensions:
            kind = getattr(ext, "kind", "store" if hasattr(ext, "on_n_create") else "find")
            self._supported += [cx.Supported(uid, cx.NON_STORAGE_SYNTAXES, kind=kind)
                                for uid in getattr(ext, "sop_classes", [])]
        self.ae = self._build_ae()
        self._servers: list[guard.GuardedServer] = []
        self._drain_deadline: float | None = None  # set when the listeners close (stop_accepting)
        self._numbers = itertools.count(1)
        self.direct_stores = 0  # C-STORE requests received by the direct path (hilum.dimse.storefast)
        self._direct_lock = threading.Lock()
        self.reporter = CommitmentReporter(config.aet, self.peers_by_aet.get, self.associate_kwargs)
        # issue 22: the node's /metrics (associations by result, open associations)
        self.metrics = metrics_for(archive)
        self._unwatch: Any = None

    def _open_associations(self) -> int:
        return sum(1 for a in list(self.ae.active_associations) if a.is_established)

    # ------------------------------------------------------------ lifecycle

    def _build_ae(self) -> AE:
        """The AE: title, contexts, timeouts.  Nothing process-wide changes here (the fast engine's
        changes to pynetdicom are made by :meth:`start` and undone by :meth:`stop`)."""
        cfg = self.config
        ae = AE(ae_title=cfg.aet)
        # Associations are counted by the node's Admission (established ones only); pynetdicom's own
        # count covers every connection's thread, half-open ones included, so it only backs ours up.
        limits = self._limits()
        ae.maximum_associations = 2 * limits.max_associations + limits.max_pending + limits.max_dropped
        # PS3.8 D.1: 0 means "no limit", but DCMTK then falls back to 16 KiB PDUs (32 PDUs and
        # ~30% more time per 512x512 CT slice); advertise a large limit instead.
        ae.maximum_pdu_size = limits.max_pdu
        ae.require_called_aet = True
        if cfg.require_known_peers and self.peers_by_aet:
            ae.require_calling_aet = sorted(self.peers_by_aet)
        ae.acse_timeout = 30  # as requestor (C-MOVE, commitment reports); accepted ones get ARTIM
        ae.dimse_timeout = 60
        ae.network_timeout = 120
        for s in self._supported:
            ae.add_supported_context(s.abstract_syntax, s.transfer_syntaxes, scu_role=s.scu_role,
                                     scp_role=s.scp_role)
        return ae

    def _limits(self) -> guard.Limits:
        cfg = self.config
        return guard.Limits(max_pdu=int(cfg.max_pdu_size) or UNLIMITED_PDU, artim=float(self.settings.artim_timeout),
                            idle=120.0, max_pending=int(self.settings.max_pending),
                            max_associations=int(cfg.max_associations))

    @property
    def fast(self) -> bool:
        """Whether the running listeners use the fast engine."""
        return self.engine == "fast"

    @property
    def encodes_identifiers(self) -> bool:
        """Whether C-FIND matches may go out pre-encoded (:class:`EncodedIdentifier`): the fast
        engine's wrapper of pynetdicom's encoder is in place."""
        return self._installed and reactor.installed()

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_DIMSE_RECV, self._on_dimse_recv),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_n_action),
            (evt.EVT_N_EVENT_REPORT, self._on_n_event_report),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
        ]

    @property
    def port(self) -> int:
        """The port of the first listener (the plain or only one)."""
        if not self._servers:
            return int(self.config.dicom_port)
        return int(self._servers[0].server_address[1])

    @property
    def ports(self) -> list[int]:
        return [int(s.server_address[1]) for s in self._servers]

    def start(self) -> None:
        """Bind the port(s) and return.

        With the fast engine, pynetdicom's source is checked against the
        version the engine mirrors first (:func:`hilum.dimse.reactor.upstream_changes`);
        if it differs the node runs pynetdicom's own engine and says so.
        """
        cfg = self.config
        tls = None
        if cfg.tls_cert and cfg.tls_key:
            tls = server_ssl_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        tls_port = self.settings.tls_port
        listeners: list[tuple[int, Any]] = []
        if tls is not None and tls_port is not None:
            listeners = [(int(cfg.dicom_port), None), (int(tls_port), tls)]
        else:
            listeners = [(int(cfg.dicom_port), tls)]
        self.engine = self.settings.engine
        if self.engine == "fast":
            changed = reactor.upstream_changes()
            if changed:
                log.error("pynetdicom is not the version the fast DIMSE engine mirrors (%s); running "
                          "pynetdicom's own engine", ", ".join(changed[:3]))
                self.engine = "pynetdicom"
        self._peer_addresses = self.peer_addresses() if cfg.require_known_peers else {}
        self.admission = guard.Admission(self._limits())
        if self.fast:
            reactor.install()
            self._installed = True
        try:
            for port, ssl_ctx in listeners:
                if self.fast:
                    server = guard.serve(self.ae, (cfg.bind, port), self.admission, ssl_context=ssl_ctx,
                                         evt_handlers=self._handlers(), request_handler=reactor.RequestHandler)
                    server._hilum_store_hook = self  # type: ignore[attr-defined]
                else:
                    server = guard.serve(self.ae, (cfg.bind, port), self.admission, ssl_context=ssl_ctx,
                                         evt_handlers=self._handlers())
                server.contexts = _SharedContexts(server.contexts)
                self._servers.append(server)
                log.info("DICOM %s listening on %s:%d as %s (%s engine)", "TLS" if ssl_ctx else "service", cfg.bind,
                         server.server_address[1], cfg.aet, self.engine)
        except OSError:
            self.stop(drain_timeout=0)
            raise
        self._unwatch = self.metrics.watch_associations(self._open_associations)

    def stop_accepting(self) -> None:
        """Close the listening socket(s): a new connection is refused from now on (associations in flight
        go on); the drain time of :meth:`stop` counts from here."""
        servers, self._servers = self._servers, []
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.drain_timeout
        for server in servers:
            server.shutdown()
        if servers:
            live = len(self._in_flight())
            log.info("DICOM listener closed; %d association(s) in flight may take up to %.0f s to finish",
                     live, max(0.0, self._drain_deadline - time.monotonic()))

    def hurry(self) -> None:
        """Stop waiting for associations in flight: :meth:`stop` aborts them now."""
        self._drain_deadline = time.monotonic()

    def _in_flight(self) -> list[Any]:
        # In flight: negotiated, or at least requested. A connection that never sent an
        # A-ASSOCIATE-RQ (a port probe) is not waited for: it would hold us for the ACSE timeout.
        return [a for a in self.ae.active_associations
                if a.is_alive() and (a.is_established or a.requestor.primitive is not None)]

    def stop(self, drain_timeout: float | None = None) -> None:
        if drain_timeout is not None:
            self._drain_deadline = time.monotonic() + drain_timeout
        self.stop_accepting()
        while time.monotonic() < (self._drain_deadline or 0.0):
            if not self._in_flight():
                break
            time.sleep(0.05)
        self.reporter.join(timeout=max(0.0, (self._drain_deadline or 0.0) - time.monotonic()))
        self._drain_deadline = None
        if self._unwatch is not None:  # the open-associations gauge of /metrics, watched while draining too
            self._unwatch, unwatch = None, self._unwatch
            unwatch()
        left = [a for a in self.ae.active_associations if a.is_established]
        if left:
            log.warning("aborting %d association(s) still open at shutdown", len(left))
        self.ae.shutdown()
        if self._installed:
            self._installed = False
            reactor.uninstall()

    def peer_addresses(self) -> dict[str, frozenset[Any]]:
        """The addresses each configured peer may associate from, by AE title.

        With ``require_known_peers`` a peer must call from its configured
        ``host`` as well as with its AE title.  Host names are resolved once,
        when the service starts (``getaddrinfo``: every IPv4 and IPv6 address
        of the name), and the connection's source address is compared with
        them as addresses (``ipaddress``; an IPv4-mapped IPv6 source counts as
        its IPv4 address).  A name that does not resolve leaves its peer with
        no address, so it cannot associate (logged), until the node restarts;
        so does a changed DNS entry.
        """
        out: dict[str, frozenset[Any]] = {}
        for aet, peer in self.peers_by_aet.items():
            try:
                infos = socket.getaddrinfo(peer.host, None, type=socket.SOCK_STREAM)
                out[aet] = frozenset(a for a in (_address(str(i[4][0])) for i in infos) if a is not None)
            except (OSError, UnicodeError) as exc:
                log.error("peer %s: host %r does not resolve (%s); it cannot associate", aet, peer.host, exc)
                out[aet] = frozenset()
        return out

    # ------------------------------------------------------------ helpers

    def associate_kwargs(self, peer: Peer | None) -> dict[str, Any]:
        """Keyword arguments of ``AE.associate`` for an association the node requests to ``peer``."""
        kwargs: dict[str, Any] = {"evt_handlers": [*NODELAY_HANDLERS, (evt.EVT_CONN_OPEN, steady_requestor)],
                                  "max_pdu": int(self.config.max_pdu_size) or UNLIMITED_PDU}
        if peer is not None and peer.tls:
            ctx = client_ssl_context(self.config.tls_ca, self.config.tls_cert, self.config.tls_key)
            kwargs["tls_args"] = (ctx, peer.host)
        return kwargs

    @staticmethod
    def _calling(assoc: Any) -> str:
        """The calling AE title (from the A-ASSOCIATE-RQ, also before negotiation completes)."""
        prim = assoc.requestor.primitive
        if prim is not None and prim.calling_ae_title:
            return str(prim.calling_ae_title).strip()
        return str(assoc.requestor.ae_title or "").strip()

    def _peer_of(self, assoc: Any) -> Peer | None:
        return self.peers_by_aet.get(self._calling(assoc))

    @staticmethod
    def _log_of(assoc: Any) -> AssociationLog | None:
        return getattr(assoc, "_hilum_log", None)

    def _count(self, assoc: Any, key: str, n: int = 1) -> None:
        rec = self._log_of(assoc)
        if rec is not None:
            rec.ops[key] += n

    # ------------------------------------------------------------ association events

    def _on_conn_open(self, event: evt.Event) -> None:
        set_nodelay(event)
        large_receive_buffer(event)
        # ARTIM (PS3.8 9.1.5) for this acceptor: pynetdicom's wait for the A-ASSOCIATE-RQ and its
        # timer; a half-read PDU is bounded by the same time in hilum.dimse.guard
        event.assoc.acse_timeout = float(self.settings.artim_timeout)
        addr = getattr(event, "address", ("?", 0))
        log_record = AssociationLog(next(self._numbers), f"{addr[0]}:{addr[1]}")
        event.assoc._hilum_log = log_record  # type: ignore[attr-defined]

    def _on_requested(self, event: evt.Event) -> None:
        """Admission (a known peer's host, an association slot), then per-peer rights: drop the
        contexts a known peer may not use."""
        assoc = event.assoc
        rec = self._log_of(assoc)
        rq = assoc.requestor
        if rec is not None:
            prim = rq.primitive
            if prim is not None:
                rec.calling = str(prim.calling_ae_title or "").strip()
                rec.called = str(prim.called_ae_title or "").strip()
        peer = self._peer_of(assoc)
        if self.config.require_known_peers:
            if peer is None and not self.peers_by_aet:
                # pynetdicom checks a non-empty list only: with no peers at all, refuse here.
                self._audit_refusal(assoc, "calling AE title not recognised")
                self._reject(assoc, (0x01, 0x01, 0x03), "calling AE title not recognised")
                return
            if peer is not None and not self._from_its_host(assoc):
                log.warning("association from %s refused: %s is configured at %s", rq.address, peer.aet, peer.host)
                self._audit_refusal(assoc, f"calling AE title {peer.aet} is configured at {peer.host}")
                self._reject(assoc, (0x01, 0x01, 0x03), "calling AE title not recognised from this address")
                return
        conn = guard.guard_of(assoc)
        if conn is not None and self.admission is not None and not self.admission.take_slot(conn):
            # PS3.8 9.3.4: transient, service provider (presentation), local limit exceeded
            self._reject(assoc, (0x02, 0x03, 0x02), "local limit exceeded")
            return
        self._prefer_requestor_order(assoc, fast=self.fast)
        if peer is None:
            return
        denied: set[str] = set()
        if not peer.may_query:
            denied.add("find")
        if not peer.may_retrieve:
            denied |= {"move", "get"}
        if not peer.may_store and not peer.may_retrieve:
            denied |= {"storage", "commitment", "store"}
        if not denied:
            return
        drop = {s.abstract_syntax for s in self._supported if s.kind in denied}
        acceptor = assoc.acceptor
        acceptor.supported_contexts = [c for c in acceptor.supported_contexts if c.abstract_syntax not in drop]

    def _audit_refusal(self, assoc: Any, why: str) -> None:
        """An association refused for who it claims to be: "Security Alert" (PS3.15 A.5.3.11, node
        authentication failure)."""
        rec = self._log_of(assoc)
        if rec is not None:
            if rec.refusal_audited:
                return
            rec.refusal_audited = True
        calling, peer = self._audit_peer(assoc)
        self.archive.audit("Security Alert", action="E", outcome=4, event_type="Use of Restricted Function",
                           user=calling or "?", ae_title=calling, peer=peer, detail=f"association refused: {why}")

    def _reject(self, assoc: Any, reason: tuple[int, int, int], outcome: str) -> None:
        """Answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (PS3.8 9.3.4) from EVT_REQUESTED."""
        assoc.acse.send_reject(*reason)
        assoc.is_rejected = True  # pynetdicom then skips its own negotiation
        rec = self._log_of(assoc)
        if rec is not None:
            rec.outcome = f"rejected ({outcome})"
        assoc.kill()

    def _from_its_host(self, assoc: Any) -> bool:
        """Whether the association comes from an address of the peer its calling AE title names."""
        allowed = self._peer_addresses.get(self._calling(assoc))
        source = _address(str(assoc.requestor.address or ""))
        return bool(allowed) and source is not None and source in (allowed or ())

    @staticmethod
    def _prefer_requestor_order(assoc: Any, fast: bool = False) -> None:
        """Choose transfer syntaxes in the requestor's order of preference.

        pynetdicom picks the first of the *acceptor's* syntaxes the requestor
        proposed; PS3.8 9.3.2.2 leaves the choice to the acceptor, and taking
        the requestor's first choice stores instances as the sender holds them
        (compressed stays compressed, nothing is transcoded on the way in).
        A reordered context is a new one (the server's are shared, see
        :class:`_SharedContexts`) holding only the syntaxes both sides have:
        the others cannot be chosen, and each is validated again.
        """
        prim = assoc.requestor.primitive
        proposed = getattr(prim, "presentation_context_definition_list", None) or []
        order: dict[str, list[str]] = {}
        for c in proposed:
            seq = order.setdefault(str(c.abstract_syntax), [])
            seq += [t for t in c.transfer_syntax if t not in seq]
        if not order:
            return
        contexts = list(assoc.acceptor.supported_contexts)
        changed = False
        for i, sc in enumerate(contexts):
            pref = order.get(str(sc.abstract_syntax))
            if pref:
                own = sc.transfer_syntax
                chosen = [t for t in pref if t in own]
                if chosen and chosen != own[: len(chosen)]:
                    contexts[i] = copy.copy(sc)
                    if fast:  # already validated UIDs: skip the setter's validation (~4 ms for 120 contexts)
                        contexts[i]._transfer_syntax = chosen
                    else:
                        contexts[i].transfer_syntax = chosen  # the setter makes a new list
                    changed = True
        if changed:
            assoc.acceptor.supported_contexts = contexts

    def _on_accepted(self, event: evt.Event) -> None:
        self.metrics.association("accepted")
        rec = self._log_of(event.assoc)
        if rec is not None:
            rec.outcome = "open"

    def _on_rejected(self, event: evt.Event) -> None:
        self.metrics.association("rejected")
        rec = self._log_of(event.assoc)
        if rec is None:
            return
        prim = event.assoc.acceptor.primitive
        reason = getattr(prim, "reason_str", "") if prim is not None else ""
        rec.outcome = f"rejected ({reason.strip() or 'no reason'})"
        if "calling ae" in reason.lower():  # pynetdicom's own check of require_calling_aet
            self._audit_refusal(event.assoc, reason.strip())

    def _on_released(self, event: evt.Event) -> None:
        rec = self._log_of(event.assoc)
        if rec is not None:
            rec.outcome = "released"

    def _on_aborted(self, event: evt.Event) -> None:
        rec = self._log_of(event.assoc)
        if rec is not None:
            rec.outcome = "aborted"

    def _on_conn_close(self, event: evt.Event) -> None:
        rec = self._log_of(event.assoc)
        if rec is None or rec.logged:
            return
        rec.logged = True
        self._audit_stores(rec)
        if rec.outcome == "open":
            rec.outcome = "connection closed"
        if not rec.calling and rec.outcome == "closed":
            # A port check (`hilum status`, a container health check every 30 s) from this host is not
            # news; from elsewhere (a scan, a misconfigured modality) it is.
            level = logging.DEBUG if _loopback(rec.peer.rpartition(":")[0]) else logging.INFO
            log.log(level, "connection from %s closed without an association request", rec.peer)
            return
        level = logging.WARNING if rec.outcome.startswith(("rejected", "aborted", "connection")) else logging.INFO
        log.log(level, rec.line())

    def _audit_stores(self, rec: AssociationLog) -> None:
        """One "DICOM Instances Transferred" event per study per association (PS3.15 A.5.3.4): the
        calling AE is the source, its address the peer; outcome 4 when some instances were refused."""
        for study_uid, (stored, failed) in rec.stored.items():
            self.archive.audit("DICOM Instances Transferred", action="C" if stored else "R",
                               outcome=0 if not failed else (4 if stored else 8), user=rec.calling,
                               ae_title=rec.calling, peer=rec.peer.rpartition(":")[0], role="source",
                               study_uids=(study_uid,) if study_uid != "?" else (), instances=stored,
                               detail=f"C-STORE to {rec.called or self.config.aet}"
                                      + (f", {failed} refused" if failed else ""))
        rec.stored.clear()

    def _audit_peer(self, assoc: Any) -> tuple[str, str]:
        """(calling AE title, peer address) of an association, for the audit."""
        rec = self._log_of(assoc)
        addr = rec.peer.rpartition(":")[0] if rec is not None else str(getattr(assoc.requestor, "address", "") or "")
        return self._calling(assoc), addr

    def _on_dimse_recv(self, event: evt.Event) -> None:
        # C-STORE responses reaching the acceptor are C-GET sub-operation results.
        msg = event.message
        if type(msg).__name__ == "C_STORE_RSP":
            status = int(getattr(msg.command_set, "Status", 0xFFFF))
            self._count(event.assoc, "get-sent" if status in (0, 0xB000, 0xB007, 0xB006) else "get-failed")

    # ------------------------------------------------------------ VERIFICATION (PS3.4 A)

    def _on_echo(self, event: evt.Event) -> int:
        self._count(event.assoc, "C-ECHO")
        return SUCCESS

    # ------------------------------------------------------------ Storage (PS3.4 B)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """C-STORE through pynetdicom (when :meth:`take` left it there): the peer's bytes go to
        ``archive.ingest`` unchanged (B.4.1)."""
        peer = self._peer_of(event.assoc)
        if peer is not None and not peer.may_store:
            self._count(event.assoc, "C-STORE refused")
            return status_dataset(NOT_AUTHORISED, "this AE may not store here")
        request: Any = event.request
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 - malformed request
            self._count(event.assoc, "C-STORE failed")
            return status_dataset(CANNOT_UNDERSTAND, f"cannot read the data set: {exc}")
        status, comment = self._ingest(event.assoc, data, str(request.AffectedSOPClassUID or ""),
                                       str(request.AffectedSOPInstanceUID or ""))
        return status_dataset(status, comment) if comment else status

    def take(self, assoc: Any, request: StoreRequest) -> TempBlob | None:
        """The store hook of :mod:`hilum.dimse.storefast`: receive this C-STORE's data set
        straight into a temporary blob, unless the request is for pynetdicom to handle."""
        if any(assoc.get_handlers(e) for e in _PDU_EVENTS):
            return None  # someone wants to see every PDU (pynetdicom's debug log too): pynetdicom's path shows them
        peer = self._peer_of(assoc)
        if peer is not None and not peer.may_store:
            return None  # pynetdicom's handler refuses it, with its comment
        return self.archive.open_temp(request.sop_instance_uid)

    def store(self, assoc: Any, request: StoreRequest, data: bytearray, sink: TempBlob) -> tuple[int, str]:
        """The store hook's ingest of a whole received instance: (status, error comment)."""
        with self._direct_lock:
            self.direct_stores += 1
        return self._ingest(assoc, Received(data, sink), request.sop_class_uid, request.sop_instance_uid)

    def _ingest(self, assoc: Any, source: Any, sop_class: str, sop_instance: str = "") -> tuple[int, str]:
        """One received instance into the archive: (DIMSE status, error comment) (PS3.4 B.2.3).

        Both C-STORE paths come here with the command's Affected SOP Class and
        Instance UIDs: a data set that is not the instance its command names is
        refused, and nothing of it is kept (``Archive.ingest``'s expected UIDs).
        """
        calling = self._calling(assoc)
        result = self.archive.ingest(source, origin="dimse", source_aet=calling,
                                     expected_sop_class=sop_class or None,
                                     expected_sop_instance=sop_instance or None)
        status, comment = store_status(result)
        rec = self._log_of(assoc)
        if rec is not None:
            counts = rec.stored.setdefault(result.study_instance_uid or "?", [0, 0])
            counts[0 if status in (SUCCESS, 0xB000, 0xB007, 0xB006) else 1] += 1
        if status == SUCCESS:
            self._count(assoc, "C-STORE")
            return SUCCESS, ""
        return self._refused(assoc, calling, result.code or "", comment, status)

    def _refused(self, assoc: Any, calling: str, code: str, reason: str, status: int | None = None) -> tuple[int, str]:
        self._count(assoc, "C-STORE failed")
        status = status if status is not None else INGEST_STATUS.get(code, CANNOT_UNDERSTAND)
        log.warning("C-STORE from %s refused (0x%04X, %s): %s", calling, status, code or "?", reason)
        return status, reason[:64]

    # ------------------------------------------------------------ Query (PS3.4 C.4.1)

    def _extension(self, sop_class: str, method: str) -> Any:
        for ext in self.extensions:
            if hasattr(ext, method) and ext.handles(sop_class):
                return getattr(ext, method)
        return None

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        model = str(event.request.AffectedSOPClassUID)
        self._count(event.assoc, "C-FIND")
        other = self._extension(model, "on_find")
        if other is not None:  # e.g. Modality Worklist (PS3.4 K)
            self._audit_extension(event, "Query", "E", "C-FIND (modality worklist)", getattr(event, "identifier", None))
            yield from other(event)
            return
        level, keys = "?", dict[str, str]()
        try:
            identifier = event.identifier
            level, keys = query_of(identifier, model)
            rows = self.archive.query(level, keys)
        except (IdentifierError, ValueError) as exc:
            log.warning("C-FIND refused: %s", exc)
            self._audit_query(event.assoc, level, keys, None, 4, str(exc))
            yield status_dataset(DATASET_MISMATCH, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - decoding errors, database errors
            log.exception("C-FIND failed")
            self._audit_query(event.assoc, level, keys, None, 8, str(exc))
            yield status_dataset(UNABLE_TO_PROCESS, str(exc)), None
            return
        self._audit_query(event.assoc, level, keys, rows)
        sent = 0
        ts = str(event.context.transfer_syntax)
        plan = None
        responder = None
        if ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) and self.encodes_identifiers:
            plan = ResponsePlan(identifier, level, retrieve_aet=self.config.aet)
            responder = reactor.find_responder(event.assoc, int(event.context.context_id or 0),
                                               int(event.request.MessageID or 0), model)
        implicit = ts == ImplicitVRLittleEndian
        batch: list[bytes] = []
        for row in rows:
            encoded = plan.encode(row, implicit=implicit) if plan is not None else None
            direct = responder is not None and encoded is not None
            if direct:  # FIND_BATCH matches at a time, past pynetdicom's per-response loop
                batch.append(encoded)  # type: ignore[arg-type]
                sent += 1
                if len(batch) < FIND_BATCH:
                    continue
            # A batch waits for the one before it to leave: the DUL reads the peer's PDUs (a
            # C-CANCEL) only between sends, and needs the GIL this loop would otherwise keep.
            _drain(event.assoc, backlog=1 if direct else 8)
            if event.is_cancelled:
                self._count(event.assoc, "C-FIND cancelled")
                yield CANCEL, None
                return
            if batch:  # before a response pynetdicom sends: the order of the matches is kept
                assert responder is not None
                responder.send(batch)
                batch = []
            if direct:
                continue
            if encoded is not None:
                yield PENDING, EncodedIdentifier(encoded, implicit)
            else:
                yield PENDING, response_for(identifier, level, row, retrieve_aet=self.config.aet)
            sent += 1
        if batch:
            assert responder is not None
            responder.send(batch, last=True)  # goes out with the final response
        self._count(event.assoc, "matches", sent)

    def _audit_query(self, assoc: Any, level: str, keys: dict[str, str], rows: list[dict[str, Any]] | None,
                     outcome: int = 0, why: str = "") -> None:
        """One "Query" event per C-FIND request (PS3.15 A.5.3.10), with the patient it was about."""
        calling, peer = self._audit_peer(assoc)
        pid, pname, uids = query_subject(keys, rows or ())
        detail = query_detail("C-FIND", level, keys, len(rows) if rows is not None else None)
        self.archive.audit("Query", action="E", outcome=outcome, user=calling, ae_title=calling, peer=peer,
                           role="source", patient_id=pid, patient_name=pname, study_uids=uids,
                           detail=detail + (f": {why}" if why else ""))

    def _audit_extension(self, event: evt.Event, name: str, action: str, what: str, dataset: Any,
                         answer: Any = None) -> None:
        """One audit event for a request an extension answers (worklist C-FIND: a "Query"; MPPS N-CREATE /
        N-SET: a "Procedure Record"), with the patient the data set names where it names one."""
        calling, peer = self._audit_peer(event.assoc)
        pid = pname = ""
        try:
            if dataset is not None:
                pid = str(dataset.get("PatientID", "") or "")
                pname = str(dataset.get("PatientName", "") or "")
        except Exception:  # noqa: BLE001 - a data set that does not decode: the event without the patient
            pass
        status = answer[0] if isinstance(answer, tuple) and answer else None
        code = int(status.get("Status", 0)) if isinstance(status, Dataset) else (status if isinstance(status, int) else 0)
        outcome = 0 if code in (0, 0xFF00, 0xFF01) or 0xB000 <= code <= 0xBFFF or code == 0x0001 else 4
        self.archive.audit(name, action=action, outcome=outcome, user=calling, ae_title=calling, peer=peer,
                           role="source", patient_id=pid, patient_name=pname,
                           detail=what + (f": status 0x{code:04X}" if outcome else ""))  # fmt: skip

    def _audit_retrieve(self, assoc: Any, verb: str, destination: str, rows: list[dict[str, Any]],
                        outcome: int = 0, why: str = "") -> None:
        """A C-MOVE/C-GET: one "DICOM Instances Transferred" event per patient retrieved (this node the
        source, the requestor's AE title the user, the destination in ``detail``)."""
        calling, peer = self._audit_peer(assoc)
        groups = group_by_patient(rows) or {("", ""): ([], 0)}
        for (pid, pname), (uids, n) in groups.items():
            self.archive.audit("DICOM Instances Transferred", action="R", outcome=outcome, user=calling,
                               ae_title=calling, peer=peer, role="destination", patient_id=pid,
                               patient_name=pname, study_uids=tuple(uids), instances=n,
                               detail=f"{verb} to {destination}" + (f": {why}" if why else ""))

    # ------------------------------------------------------------ Retrieve (PS3.4 C.4.2, C.4.3)

    def _retrieve_rows(self, event: evt.Event) -> list[dict[str, Any]]:
        _level, keys = retrieve_query(event.identifier, str(event.request.AffectedSOPClassUID))
        return self.archive.query("IMAGE", keys)

    def _load(self, row: dict[str, Any], assoc: Any) -> Dataset:
        """The stored instance of a retrieve row as it goes to the peer of ``assoc``.

        Read through :meth:`Archive.read_outgoing` (today's demographics, UIDs
        untouched), one instance at a time, and fitted to the contexts the peer
        accepted (:func:`~hilum.dimse.contexts.for_peer`: as stored, or converted
        losslessly with every UID kept).  When it cannot be read or sent, a stub
        without file meta comes back: pynetdicom counts that sub-operation as
        failed and lists its SOP Instance UID (PS3.4 C.4.2.3.1).
        """
        try:
            if assoc is None:
                raise cx.NoContext("no association to the destination")
            return cx.for_peer(assoc, self.archive.read_outgoing(row))
        except (cx.NoContext, TranscodeError) as exc:
            log.error("cannot send stored instance %s: %s", row.get("SOPInstanceUID"), exc)
        except Exception as exc:  # noqa: BLE001 - missing or unreadable blob
            log.error("cannot read stored instance %s: %s", row.get("SOPInstanceUID"), exc)
        stub = Dataset()
        stub.SOPClassUID = row.get("SOPClassUID", "")
        stub.SOPInstanceUID = row.get("SOPInstanceUID", "")
        return stub  # no file meta: pynetdicom counts the sub-operation as failed

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        """C-MOVE: C-STORE sub-operations on a new association to a configured peer."""
        dest_aet = (event.move_destination or "").strip()
        peer = self.peers_by_aet.get(dest_aet)
        self._count(event.assoc, "C-MOVE")
        if peer is None:
            log.warning("C-MOVE to unknown destination %r refused", dest_aet)
            self._count(event.assoc, "C-MOVE unknown destination")
            self._audit_retrieve(event.assoc, "C-MOVE", dest_aet or "?", [], 8, "unknown destination")
            yield None, None
            return
        try:
            rows = self._retrieve_rows(event)
        except (IdentifierError, ValueError) as exc:
            log.warning("C-MOVE refused: %s", exc)
            self._audit_retrieve(event.assoc, "C-MOVE", dest_aet, [], 4, str(exc))
            yield peer.host, peer.port
            yield 1
            yield status_dataset(DATASET_MISMATCH, str(exc)), None
            return
        holder: list[Any] = []
        kwargs = self.associate_kwargs(peer)
        kwargs["evt_handlers"] = [*kwargs["evt_handlers"], (evt.EVT_ACCEPTED, lambda e: holder.append(e.assoc)),
                                  (evt.EVT_DIMSE_RECV, self._sub_store_counter(event.assoc, "move"))]
        batches = cx.storage_batches((r["SOPClassUID"], r.get("TransferSyntaxUID") or "") for r in rows)
        kwargs["contexts"] = batches[0].contexts if batches else cx.contexts_for_class(cx.STORAGE_CLASSES[0], [])
        if len(batches) > 1:
            log.warning("C-MOVE to %s: %d SOP class/syntax combinations exceed one association; "
                        "instances outside the first 128 contexts will fail", dest_aet, len(rows))
        yield peer.host, peer.port, kwargs
        yield len(rows)
        sent: list[dict[str, Any]] = []
        try:
            for row in rows:
                if event.is_cancelled:
                    self._count(event.assoc, "C-MOVE cancelled")
                    yield CANCEL, None
                    return
                yield PENDING, self._load(row, holder[0] if holder else None)
                sent.append(row)
        finally:
            self._audit_retrieve(event.assoc, "C-MOVE", dest_aet, sent, 0 if len(sent) == len(rows) else 4)

    def _sub_store_counter(self, parent: Any, what: str) -> Any:
        def count(event: evt.Event) -> None:
            msg = event.message
            if type(msg).__name__ == "C_STORE_RSP":
                status = int(getattr(msg.command_set, "Status", 0xFFFF))
                ok = status in (0, 0xB000, 0xB007, 0xB006)
                self._count(parent, f"{what}-sent" if ok else f"{what}-failed")
        return count

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        """C-GET: C-STORE sub-operations on the same association (the requester took the SCP role)."""
        self._count(event.assoc, "C-GET")
        try:
            rows = self._retrieve_rows(event)
        except (IdentifierError, ValueError) as exc:
            log.warning("C-GET refused: %s", exc)
            self._audit_retrieve(event.assoc, "C-GET", self._calling(event.assoc), [], 4, str(exc))
            yield 1
            yield status_dataset(DATASET_MISMATCH, str(exc)), None
            return
        yield len(rows)
        sent: list[dict[str, Any]] = []
        try:
            for row in rows:
                if event.is_cancelled:
                    self._count(event.assoc, "C-GET cancelled")
                    yield CANCEL, None
                    return
                yield PENDING, self._load(row, event.assoc)
                sent.append(row)
        finally:
            self._audit_retrieve(event.assoc, "C-GET", self._calling(event.assoc), sent,
                                 0 if len(sent) == len(rows) else 4)

    # ------------------------------------------------------------ Storage Commitment (PS3.4 J)

    def _on_n_create(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        handler = self._extension(str(event.request.AffectedSOPClassUID), "on_n_create")
        self._count(event.assoc, "N-CREATE")
        if handler is None:
            return status_dataset(0x0122, "SOP class not supported"), None
        answer = handler(event)
        self._audit_extension(event, "Procedure Record", "C", "N-CREATE (performed procedure step)",
                              getattr(event, "attribute_list", None), answer)  # fmt: skip
        return answer  # type: ignore[no-any-return]

    def _on_n_set(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        req: Any = event.request
        handler = self._extension(str(req.RequestedSOPClassUID), "on_n_set")
        self._count(event.assoc, "N-SET")
        if handler is None:
            return status_dataset(0x0122, "SOP class not supported"), None
        answer = handler(event)
        self._audit_extension(event, "Procedure Record", "U", "N-SET (performed procedure step)",
                              getattr(event, "modification_list", None), answer)  # fmt: skip
        return answer  # type: ignore[no-any-return]

    def _on_n_action(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        req: Any = event.request
        other = self._extension(str(req.RequestedSOPClassUID), "on_n_action")
        if other is not None:
            return other(event)  # type: ignore[no-any-return]
        if str(req.RequestedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
            return status_dataset(0x0122, "SOP class not supported"), None
        if str(req.RequestedSOPInstanceUID) != COMMITMENT_INSTANCE:
            return status_dataset(NO_SUCH_SOP_INSTANCE, "not the Storage Commitment instance"), None
        if event.action_type != 1:
            return status_dataset(NO_SUCH_ACTION, "only action type 1 (request commitment)"), None
        try:
            info = event.action_information
            result = check_commitment(self.archive, info)
        except Exception as exc:  # noqa: BLE001
            log.exception("storage commitment request unreadable")
            return status_dataset(0x0110, f"cannot process: {exc}"), None
        if not result.transaction_uid:
            return status_dataset(0x0120, "missing Transaction UID"), None
        self._count(event.assoc, "N-ACTION commitment")
        self.reporter.report_later(event.assoc, result, int(event.request.MessageID or 0))
        return SUCCESS, None

    def _on_n_event_report(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        """A Storage Commitment report on an association of the peer's own (PS3.4 J.3.3.2): the rows of the
        forwarding queue awaiting it become committed (:func:`hilum.archive.forward.commitment_report`).
        Only from the AE title of a configured peer, and only for rows queued for that peer."""
        req: Any = event.request
        if str(req.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
            return status_dataset(0x0122, "SOP class not supported"), None
        if event.event_type not in (1, 2):
            return status_dataset(0x0113, "no such event type"), None
        calling = self._calling(event.assoc)
        names = [n for n, p in self.config.peers.items() if p.aet == calling]
        if not names:
            log.warning("storage commitment report from %s, which is not a configured peer: ignored", calling)
            return status_dataset(0x0110, "not a configured peer"), None
        try:
            from hilum.archive import forward

            info = event.event_information
            ok = [str(i.get("ReferencedSOPInstanceUID", "")) for i in info.get("ReferencedSOPSequence", []) or []]
            bad = {str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0x0110) or 0x0110)
                   for i in info.get("FailedSOPSequence", []) or []}
            n = forward.commitment_report(self.archive, str(info.get("TransactionUID", "")), ok, bad,
                                          destinations=names)
        except Exception as exc:  # noqa: BLE001 - a status, never a dead association
            log.exception("storage commitment report from %s unreadable", calling)
            return status_dataset(0x0110, f"cannot process: {exc}"), None
        self._count(event.assoc, "N-EVENT-REPORT commitment")
        if not n:
            log.info("storage commitment report from %s for a transaction not awaited here", calling)
        return SUCCESS, None


def default_extensions(archive: Archive) -> list[Any]:
    """Other SCP services that share the node's AE: Modality Worklist (PS3.4 K) and MPPS (PS3.4 F).

    Imported at the top of this module like every other dependency, so a
    broken ``mwl.py`` or ``mpps.py`` stops the node from starting with its
    error, instead of silently turning the service off.

    An extension has ``sop_classes`` (abstract syntaxes to accept),
    ``handles(sop_class_uid)``, an optional ``kind`` (``find`` or ``store``:
    which peer right it needs) and any of ``on_find``, ``on_n_create``,
    ``on_n_set``, ``on_n_action`` (pynetdicom handler signatures).
    """
    return [WorklistSCP(archive), MppsSCP(archive)]


def _address(text: str) -> Any:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as its IPv4 address), None if it is none."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _drain(assoc: Any, backlog: int = 8, timeout: float = 30.0) -> None:
    """Wait while more than ``backlog`` PDUs wait to be sent on ``assoc`` (:func:`reactor.drain`)."""
    reactor.drain(assoc, backlog, timeout)


def store_status(result: IngestResult) -> tuple[int, str]:
    """The C-STORE status (PS3.4 B.2.3) and Error Comment for an ingest result.

    Stored, replaced and a duplicate identical to what is held are Success.
    A duplicate whose content differs from the stored instance
    (``code="duplicate-differs"``, under ``duplicate_policy = "ignore"``) is a
    failure, 0xC410: Success or a Warning (0xB000 and kin mean "stored, with a
    remark") would tell the sender its data is held, so it may delete its
    copy, while the node kept another version; a failure makes the difference
    seen and acted on, and it is not in the 0xA7xx class a sender retries in a
    loop.  (Orthanc 1.10 answers Success to such a duplicate, keeping its old
    copy silently; we do not copy that.)
    """
    if result.code == "duplicate-differs":
        return DUPLICATE_DIFFERS, (result.reason or "SOP Instance UID already stored with other content")
    if result.ok:
        return SUCCESS, ""
    return INGEST_STATUS.get(result.code or "", CANNOT_UNDERSTAND), (result.reason or "")
