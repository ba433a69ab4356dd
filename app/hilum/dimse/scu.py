"""SCU operations against any DICOM peer: echo, find, move, get, send.

Used by the ``hilum echo|find|move|get|send`` verbs and by anything else in
Hilum that talks DIMSE as a client.  Every association sets ``TCP_NODELAY``
(:mod:`hilum.dimse.net`), may use TLS (PS3.15 B.1), and fails with one
clear :class:`DimseError` line: connection refused, association rejected
with the peer's reason, no acceptable presentation context, timeouts.

Services: VERIFICATION (PS3.4 A), Query/Retrieve FIND/MOVE/GET (PS3.4 C.4),
Storage (PS3.4 B).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, _config, build_context, build_role, evt

from hilum.config import Config, Peer
from hilum.dicom.attributes import InvalidInstance, read_instance
from hilum.dicom.transcode import TranscodeError
from hilum.dimse import contexts as cx
from hilum.dimse.net import client_ssl_context, nodelay
from hilum.dimse.reactor import steady_requestor
from hilum.dimse.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from hilum.errors import HilumError

log = logging.getLogger(__name__)

__all__ = [
    "AssociationRejected",
    "ConnectionFailed",
    "DimseError",
    "FindSession",
    "RetrieveResult",
    "SendResult",
    "Target",
    "associate",
    "echo",
    "find",
    "find_session",
    "get",
    "infer_level",
    "ingest_store",
    "iter_find",
    "move",
    "parse_keys",
    "peer_target",
    "retrieve_study",
    "send",
]

MODELS = {
    ("find", "study"): STUDY_ROOT_FIND,
    ("find", "patient"): PATIENT_ROOT_FIND,
    ("move", "study"): STUDY_ROOT_MOVE,
    ("move", "patient"): PATIENT_ROOT_MOVE,
    ("get", "study"): STUDY_ROOT_GET,
    ("get", "patient"): PATIENT_ROOT_GET,
}

#: Return keys ``hilum find`` asks for at each level unless told otherwise.
DEFAULT_KEYS: dict[str, list[str]] = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
    "STUDY": ["PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "StudyInstanceUID"],
    "SERIES": ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
}

#: Compressed syntaxes a C-GET offers for each SOP class it expects (plus the native ones).
GET_COMPRESSED = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEG2000Lossless, JPEG2000,
                  JPEGLSLossless, RLELossless]


class DimseError(HilumError):
    """A DIMSE operation that could not be done; the message is one line for the user."""


class ConnectionFailed(DimseError):
    """No TCP (or TLS) connection to the peer."""


class AssociationRejected(DimseError):
    """The peer rejected the association (PS3.8 7.1.1.9: result, source, reason)."""

    def __init__(self, message: str, result: str = "", source: str = "", reason: str = ""):
        self.result, self.source, self.reason = result, source, reason
        super().__init__(message)


@dataclass
class Target:
    """Where and as whom to connect."""

    host: str
    port: int
    called_aet: str = "ANY-SCP"
    calling_aet: str = "HILUM"
    tls: ssl.SSLContext | None = None
    timeout: float = 30.0
    max_pdu: int = 1 << 20  # the largest PDU the peer may send us (0 = no limit; DCMTK then uses 16 KiB)

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def peer_target(config: Config | None, peer: Peer, *, timeout: float = 30.0, calling_aet: str = "HILUM") -> Target:
    """Where and as whom to reach a ``[peers]`` entry of ``hilum.toml``: this node's AE title (``calling_aet``
    without a config), the peer's, TLS with the peer's ``ca_file`` (else the config's CA) and the config's
    certificate when the peer says ``tls``
    (PS3.15 B.1).  The workstation's browser and transfers and the prefetch of priors all connect so."""
    tls = None
    if peer.tls and config is not None:
        tls = client_ssl_context(peer.ca_file or config.tls_ca, config.tls_cert, config.tls_key)
    return Target(
        host=peer.host,
        port=int(peer.port),
        called_aet=peer.aet,
        calling_aet=config.aet if config is not None else calling_aet,
        tls=tls,
        timeout=timeout,
    )


def _status_text(status: int) -> str:
    from pynetdicom.status import code_to_category

    return f"0x{status:04X} ({code_to_category(status)})"


# ---------------------------------------------------------------- association


def _check_tcp(target: Target) -> str:
    """Why a connection fails, in words (only called once pynetdicom could not connect)."""
    try:
        with socket.create_connection((target.host, target.port), timeout=min(target.timeout, 5.0)) as sock:
            if target.tls is not None:
                try:  # the TLS handshake alone, to say why it failed (pynetdicom only logs it)
                    with target.tls.wrap_socket(sock, server_hostname=target.host):
                        pass
                except ssl.SSLCertVerificationError as exc:
                    return f"TLS: the peer's certificate is not trusted ({exc.verify_message})"
                except (ssl.SSLError, OSError) as exc:
                    return f"TLS handshake failed ({exc})"
            return "connection closed during the handshake" + (" (TLS?)" if target.tls else "")
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


@contextmanager
def associate(target: Target, contexts: Sequence[Any], *, ext_neg: list[Any] | None = None,
              evt_handlers: list[tuple[Any, Any]] | None = None) -> Iterator[Any]:
    """An established association to ``target`` with ``contexts``; released (or aborted) on exit.

    Raises :class:`ConnectionFailed` or :class:`AssociationRejected`.
    """
    if len(contexts) > cx.MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts: at most {cx.MAX_CONTEXTS} per association")
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        _config.LOG_HANDLER_LEVEL = "none"  # no per-PDU debug formatting
        _config.LOG_RESPONSE_IDENTIFIERS = False
    ae = AE(ae_title=target.calling_aet)
    ae.acse_timeout = target.timeout
    ae.dimse_timeout = target.timeout
    ae.network_timeout = target.timeout
    ae.connection_timeout = target.timeout
    ae.requested_contexts = list(contexts)
    connected = threading.Event()

    def on_open(event: evt.Event) -> None:
        connected.set()
        nodelay(getattr(event.assoc.dul.socket, "socket", None))

    handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_CONN_OPEN, steady_requestor), *(evt_handlers or [])]
    kwargs: dict[str, Any] = {"ae_title": target.called_aet, "max_pdu": target.max_pdu,
                              "ext_neg": ext_neg, "evt_handlers": handlers}
    if target.tls is not None:
        kwargs["tls_args"] = (target.tls, target.host)
    try:
        assoc = ae.associate(target.host, target.port, **kwargs)
    except ssl.SSLError as exc:
        ae.shutdown()
        raise ConnectionFailed(f"cannot connect to {target.host}:{target.port}: TLS error: {exc}") from exc
    try:
        if not assoc.is_established:
            if not connected.is_set():
                raise ConnectionFailed(f"cannot connect to {target.host}:{target.port}: {_check_tcp(target)}")
            if assoc.is_rejected:
                prim = assoc.acceptor.primitive
                result = getattr(prim, "result_str", "") if prim is not None else ""
                source = getattr(prim, "source_str", "") if prim is not None else ""
                reason = getattr(prim, "reason_str", "") if prim is not None else ""
                raise AssociationRejected(
                    f"association rejected by {target}: {reason or 'no reason given'} ({result}, {source})",
                    result, source, reason)
            refused = getattr(assoc, "rejected_contexts", None) or []
            if refused and not assoc.accepted_contexts:
                names = sorted({UID(str(c.abstract_syntax)).name for c in refused})
                shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                raise DimseError(f"{target} accepted none of the proposed presentation contexts ({shown})")
            raise DimseError(f"association with {target} failed (aborted or timed out during negotiation)")
        yield assoc
    finally:
        try:
            if assoc.is_established:
                assoc.release()
        finally:
            ae.shutdown()


def _require_context(assoc: Any, uid: str, what: str, target: Target) -> None:
    if not any(c.abstract_syntax == uid for c in assoc.accepted_contexts):
        raise DimseError(f"{target} does not accept {what} ({UID(uid).name})")


# ---------------------------------------------------------------- keys


def parse_keys(items: Iterable[str]) -> dict[str, str]:
    """``-k`` options (``PatientName=X*``, ``0010,0020=ID``, ``StudyDate``) as ``{keyword: value}``.

    Raises :class:`DimseError` for an unknown keyword or tag.
    """
    keys: dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if "," in name or (len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name)):
            try:
                tag = Tag(name.replace(",", "").replace("(", "").replace(")", ""))
            except (ValueError, OverflowError) as exc:
                raise DimseError(f"-k {item}: not a tag") from exc
            keyword = keyword_for_tag(tag)
            if not keyword:
                raise DimseError(f"-k {item}: unknown tag {tag}")
            name = keyword
        elif tag_for_keyword(name) is None:
            raise DimseError(f"-k {item}: unknown attribute keyword {name!r}")
        keys[name] = value
    return keys


def infer_level(keys: Mapping[str, str]) -> str:
    """The retrieve level its unique keys imply (the lowest level with a non-empty unique key)."""
    for level, key in (("IMAGE", "SOPInstanceUID"), ("SERIES", "SeriesInstanceUID"), ("STUDY", "StudyInstanceUID"),
                       ("PATIENT", "PatientID")):
        if keys.get(key, "").strip():
            return level
    return "STUDY"


def identifier(level: str, keys: Mapping[str, str]) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        if keyword == "QueryRetrieveLevel":
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise DimseError(f"unknown attribute keyword {keyword!r}")
        vr = dictionary_VR(tag)
        if " or " in vr:
            vr = vr.split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, vr, [])
        else:
            ds.add_new(tag, vr, value if value != "" else None)
    ds.QueryRetrieveLevel = level
    if any(not str(v).isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _model(op: str, root: str, level: str) -> str:
    root = root.lower()
    if (op, root) not in MODELS:
        raise DimseError(f"query root must be 'study' or 'patient', not {root!r}")
    if root == "study" and level == "PATIENT":
        raise DimseError("the study root model has no PATIENT level: use --root patient")
    return MODELS[(op, root)]


def _check_level(level: str) -> str:
    level = level.upper()
    if level == "INSTANCE":
        level = "IMAGE"
    if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        raise DimseError(f"query level must be PATIENT, STUDY, SERIES or IMAGE, not {level!r}")
    return level


# ---------------------------------------------------------------- echo


def echo(target: Target) -> float:
    """C-ECHO (PS3.4 A): the round trip in seconds, association included."""
    start = time.perf_counter()
    with associate(target, [build_context(VERIFICATION)]) as assoc:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise DimseError(f"no C-ECHO response from {target}")
        if status.Status != 0x0000:
            raise DimseError(f"C-ECHO to {target} failed: {_status_text(status.Status)}")
    return time.perf_counter() - start


# ---------------------------------------------------------------- find


def iter_find(target: Target, level: str, keys: Mapping[str, str], *, root: str = "study",
              cancel_after: int | None = None) -> Iterator[Dataset]:
    """C-FIND (PS3.4 C.4.1): yield each match's identifier.

    ``cancel_after`` sends C-CANCEL once that many matches came (PS3.4 C.4.1.2.2.2).
    """
    level = _check_level(level)
    yield from _find_responses(target, _model("find", root, level), identifier(level, keys), cancel_after)


def _find_responses(target: Target, model: str, ident: Dataset, cancel_after: int | None) -> Iterator[Dataset]:
    with associate(target, [build_context(model)]) as assoc:
        _require_context(assoc, model, "C-FIND", target)
        yield from _responses(assoc, target, model, ident, cancel_after)


def _responses(assoc: Any, target: Target, model: str, ident: Dataset, cancel_after: int | None) -> Iterator[Dataset]:
    """One C-FIND on an open association: pending responses (0xFF00/0xFF01) yielded, success or
    cancel (0x0000/0xFE00) ends it, anything else is a :class:`DimseError` naming the status."""
    responses = assoc.send_c_find(ident, model)
    count = 0
    for status, rsp in responses:
        if not status or "Status" not in status:
            raise DimseError(f"C-FIND to {target}: no response (timeout or connection lost)")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if rsp is not None:
                count += 1
                yield rsp
                if cancel_after is not None and count >= cancel_after:
                    assoc.send_c_cancel(1, query_model=model)
            continue
        if code in (0x0000, 0xFE00):
            return
        comment = str(status.get("ErrorComment", "") or "")
        raise DimseError(f"C-FIND to {target} failed: {_status_text(code)}{': ' + comment if comment else ''}")


class FindSession:
    """Several C-FINDs on one association (:func:`find_session`).

    An association costs more than a query on loopback (the study, then per
    study the series, of a patient's history: one association instead of one
    per study); each query is answered in full before the next is sent, as
    PS3.7 allows one outstanding operation at a time by default.
    """

    def __init__(self, assoc: Any, target: Target, model: str):
        self.assoc, self.target, self.model = assoc, target, model

    def iter_find(self, level: str, keys: Mapping[str, str], *, cancel_after: int | None = None) -> Iterator[Dataset]:
        """As :func:`iter_find`, on this association (consume it to the end before the next query)."""
        level = _check_level(level)
        yield from _responses(self.assoc, self.target, self.model, identifier(level, keys), cancel_after)

    def find(self, level: str, keys: Mapping[str, str], *, cancel_after: int | None = None) -> list[Dataset]:
        return list(self.iter_find(level, keys, cancel_after=cancel_after))


@contextmanager
def find_session(target: Target, *, root: str = "study") -> Iterator[FindSession]:
    """An association to ``target`` for C-FIND in the ``root`` model (PS3.4 C.4.1), released on exit."""
    if ("find", root.lower()) not in MODELS:
        raise DimseError(f"query root must be 'study' or 'patient', not {root!r}")
    model = MODELS[("find", root.lower())]
    with associate(target, [build_context(model)]) as assoc:
        _require_context(assoc, model, "C-FIND", target)
        yield FindSession(assoc, target, model)


def find(target: Target, level: str, keys: Mapping[str, str], *, root: str = "study") -> list[Dataset]:
    return list(iter_find(target, level, keys, root=root))


MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

WORKLIST_STEP_KEYS = (
    "Modality", "ScheduledStationAETitle", "ScheduledStationName", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID", "ScheduledProcedureStepStatus", "ScheduledProcedureStepLocation",
)
"""Keys that live in the Scheduled Procedure Step Sequence item (PS3.4 K.6.1.2.2)."""

WORKLIST_DEFAULT_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
    "RequestedProcedureID", "RequestedProcedureDescription", "ReferringPhysicianName",
    "Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus",
)


def worklist_identifier(keys: Mapping[str, str]) -> Dataset:
    """A Modality Worklist C-FIND identifier: step keys nested in one SPS item (PS3.4 K.6.1)."""
    ds = Dataset()
    step = Dataset()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise DimseError(f"unknown DICOM keyword {keyword!r}")
        target = step if keyword in WORKLIST_STEP_KEYS else ds
        target.add_new(tag, dictionary_VR(tag), value or None)
    ds.ScheduledProcedureStepSequence = [step]
    if any(not str(v).isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def iter_worklist(target: Target, keys: Mapping[str, str], *, cancel_after: int | None = None) -> Iterator[Dataset]:
    """Modality Worklist C-FIND (PS3.4 K): yield each scheduled procedure step that matches."""
    yield from _find_responses(target, MODALITY_WORKLIST_FIND, worklist_identifier(keys), cancel_after)


def dataset_to_dict(ds: Dataset) -> dict[str, Any]:
    """A flat ``{keyword: value}`` of a C-FIND response (multi-values joined with ``\\``)."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.keyword == "SpecificCharacterSet":
            continue
        key = elem.keyword or str(elem.tag)
        value = elem.value
        if elem.VR == "SQ":
            out[key] = [dataset_to_dict(item) for item in value]
        elif value is None or value == "":
            out[key] = ""
        elif elem.VM > 1:
            out[key] = "\\".join(str(v) for v in value)
        elif isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, bytes):
            out[key] = value.hex()
        else:
            out[key] = str(value)
    return out


# ---------------------------------------------------------------- move / get


@dataclass
class RetrieveResult:
    """The final response of a C-MOVE or C-GET (PS3.4 C.4.2.1.4, C.4.3.1.3)."""

    status: int = 0xFFFF
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""
    received: int = 0  # C-GET: instances this side stored

    @property
    def ok(self) -> bool:
        return self.status == 0x0000

    def as_dict(self) -> dict[str, Any]:
        return {"status": f"0x{self.status:04X}", "completed": self.completed, "failed": self.failed,
                "warning": self.warning, "remaining": self.remaining, "failed_sop_instance_uids": self.failed_uids,
                "received": self.received, "comment": self.comment}


def _collect(responses: Iterable[tuple[Dataset, Dataset | None]], target: Target, op: str,
             progress: Callable[[RetrieveResult], None] | None,
             cancel: threading.Event | None, assoc: Any, model: str) -> RetrieveResult:
    result = RetrieveResult()
    cancelled = False
    for status, rsp in responses:
        if not status or "Status" not in status:
            raise DimseError(f"{op} to {target}: no response (timeout or connection lost)")
        result.status = int(status.Status)
        result.completed = int(status.get("NumberOfCompletedSuboperations", result.completed) or 0)
        result.failed = int(status.get("NumberOfFailedSuboperations", result.failed) or 0)
        result.warning = int(status.get("NumberOfWarningSuboperations", result.warning) or 0)
        result.remaining = int(status.get("NumberOfRemainingSuboperations", 0) or 0)
        result.comment = str(status.get("ErrorComment", "") or "")
        if rsp is not None and "FailedSOPInstanceUIDList" in rsp:
            value = rsp.FailedSOPInstanceUIDList
            result.failed_uids = [str(v) for v in (value if isinstance(value, list) or hasattr(value, "__iter__")
                                                   and not isinstance(value, str) else [value]) if v]
        if progress is not None:
            progress(result)
        if result.status in (0xFF00, 0xFF01) and cancel is not None and cancel.is_set() and not cancelled:
            assoc.send_c_cancel(1, query_model=model)
            cancelled = True
    return result


def move(target: Target, destination: str, level: str, keys: Mapping[str, str], *, root: str = "study",
         progress: Callable[[RetrieveResult], None] | None = None,
         cancel: threading.Event | None = None) -> RetrieveResult:
    """C-MOVE (PS3.4 C.4.2): ask ``target`` to send the matches to AE title ``destination``."""
    level = _check_level(level)
    model = _model("move", root, level)
    ident = identifier(level, keys)
    with associate(target, [build_context(model)]) as assoc:
        _require_context(assoc, model, "C-MOVE", target)
        responses = assoc.send_c_move(ident, destination, model)
        return _collect(responses, target, "C-MOVE", progress, cancel, assoc, model)


def _get_contexts(target: Target, level: str, keys: Mapping[str, str], root: str,
                  sop_classes: Iterable[str] | None) -> list[Any]:
    model = _model("get", root, level)
    classes = list(sop_classes or [])
    if not classes:
        # Ask which SOP classes the retrieve will bring, so the contexts fit them (a C-GET
        # can only receive what its own association negotiated, PS3.4 C.4.3.1.1).
        try:
            ikeys = {k: v for k, v in keys.items() if v}
            ikeys.update({"SOPClassUID": "", "SOPInstanceUID": ikeys.get("SOPInstanceUID", "")})
            found = find(target, "IMAGE", ikeys, root="patient" if root == "patient" else "study")
            classes = sorted({str(ds.get("SOPClassUID", "")) for ds in found if ds.get("SOPClassUID")})
        except DimseError as exc:
            log.debug("IMAGE-level C-FIND before C-GET failed (%s): proposing the common storage classes", exc)
    out = [build_context(model)]
    if classes:
        per_class = max(1, (cx.MAX_CONTEXTS - 1) // len(classes))
        for sop in classes:
            out += cx.contexts_for_class(sop, GET_COMPRESSED, limit=per_class)
    else:
        out += [build_context(str(c.abstract_syntax), list(cx.NATIVE)) for c in StoragePresentationContexts]
    return out[: cx.MAX_CONTEXTS]


def get(target: Target, level: str, keys: Mapping[str, str], store: Callable[[Any], int], *,
        root: str = "study", sop_classes: Iterable[str] | None = None,
        progress: Callable[[RetrieveResult], None] | None = None,
        cancel: threading.Event | None = None) -> RetrieveResult:
    """C-GET (PS3.4 C.4.3): receive the matches on this association.

    ``store(event)`` is called for each C-STORE sub-operation (a pynetdicom
    event: ``event.encoded_dataset()`` is the Part 10 file) and returns its
    status.  This side takes the SCP role for the storage contexts
    (PS3.7 D.3.3.4).
    """
    level = _check_level(level)
    model = _model("get", root, level)
    contexts = _get_contexts(target, level, keys, root, sop_classes)
    roles = [build_role(c.abstract_syntax, scp_role=True) for c in contexts[1:]]
    roles = list({r.sop_class_uid: r for r in roles}.values())
    received = [0]

    def on_store(event: evt.Event) -> int:
        try:
            status = int(store(event))
        except Exception:  # noqa: BLE001 - a failing store is a failed sub-operation, not a dead association
            log.exception("storing a C-GET sub-operation failed")
            return 0xA700
        if status in (0x0000, 0xB000, 0xB007, 0xB006):
            received[0] += 1
        return status

    ident = identifier(level, keys)
    with associate(target, contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        _require_context(assoc, model, "C-GET", target)
        responses = assoc.send_c_get(ident, model)
        result = _collect(responses, target, "C-GET", progress, cancel, assoc, model)
    result.received = received[0]
    return result


def ingest_store(archive: Any, source_aet: str, rejected: list[str] | None = None) -> Callable[[Any], int]:
    """A :func:`get` ``store`` callback that puts each received instance into ``archive`` through
    its one ingest call (DESIGN.md "One way in"), checked against the C-STORE request's SOP Class
    and Instance UIDs; a refusal becomes the sub-operation's failure status (PS3.4 B.2.3) and a
    line in ``rejected``.  Used by ``hilum get`` and the workstation's retrieve from a peer.
    """
    codes = {"storage-full": 0xA700, "sop-class-mismatch": 0xA900, "uid-mismatch": 0xA900}

    def store(event: Any) -> int:
        res = archive.ingest(event.encoded_dataset(), origin="dimse", source_aet=source_aet,
                             expected_sop_class=str(event.request.AffectedSOPClassUID),
                             expected_sop_instance=str(event.request.AffectedSOPInstanceUID))
        if res.ok:
            return 0x0000
        if rejected is not None:
            rejected.append(f"{res.sop_instance_uid}: {res.reason}")
        return codes.get(res.code or "", 0xC000)

    return store


def _retrieve_failure(result: RetrieveResult, what: str, target: Target) -> str | None:
    """Why a retrieve did not bring everything, in one line (None when it did)."""
    if result.ok and not result.failed:
        return None
    detail = [f"status 0x{result.status:04X}"]
    if result.failed:
        detail.append(f"{result.failed} failed")
    if result.comment:
        detail.append(result.comment)
    return f"{what} from {target} incomplete: " + ", ".join(detail)


def retrieve_study(
    archive: Any,
    target: Target,
    study_uid: str,
    series_uid: str | None = None,
    *,
    method: str = "get",
    destination: str = "",
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> RetrieveResult:
    """Bring a study (or one series) from ``target`` into ``archive`` through its one ingest call.

    ``method="get"``: C-GET (PS3.4 C.4.3), each instance stored as it
    arrives on the same association (:func:`ingest_store`).
    ``method="move"``: C-MOVE (PS3.4 C.4.2) to ``destination`` (this node's
    AE title: its running SCP ingests what the peer sends).
    ``progress(done, total)`` follows the sub-operations.  Raises
    :class:`DimseError` when the peer cannot be reached, refuses, or not
    every instance arrived.  The workstation's "open from a peer" and the
    prefetch of priors both retrieve so.
    """
    keys = {"StudyInstanceUID": study_uid}
    level = "STUDY"
    if series_uid:
        keys["SeriesInstanceUID"] = series_uid
        level = "SERIES"

    def on_progress(r: RetrieveResult) -> None:
        if progress is not None:
            progress(r.completed + r.failed + r.warning, r.completed + r.failed + r.warning + r.remaining)

    rejected: list[str] = []
    if method == "move":
        if not destination:
            raise DimseError("C-MOVE needs this node's AE title as the destination")
        result = move(target, destination, level, keys, progress=on_progress, cancel=cancel)
        what = f"C-MOVE to {destination}"
    elif method == "get":
        result = get(
            target, level, keys, ingest_store(archive, target.called_aet, rejected), progress=on_progress, cancel=cancel
        )
        what = "C-GET"
    else:
        raise ValueError(f"retrieve method must be 'get' or 'move', not {method!r}")
    if cancel is not None and cancel.is_set():
        return result
    problem = _retrieve_failure(result, what, target)
    if problem and method == "move" and result.completed + result.warning == 0:
        # Nothing arrived: most often the peer does not know this node, or this node's listener is off.
        problem += (
            f" (does {target.called_aet} know AE title {destination} at this host and port, "
            "and is this node's DICOM listener running?)"
        )
    if problem:
        raise DimseError(problem + (f"; refused here: {rejected[0]}" if rejected else ""))
    if result.completed + result.warning == 0:
        raise DimseError(f"{what} from {target}: the peer sent no instance")
    return result


# ---------------------------------------------------------------- send


@dataclass
class SendItem:
    path: str
    sop_instance_uid: str = ""
    status: int | None = None  # None: not sent
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status in (0x0000, 0xB000, 0xB006, 0xB007)


@dataclass
class SendResult:
    items: list[SendItem] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    @property
    def sent(self) -> int:
        return sum(1 for i in self.items if i.ok)

    @property
    def failed(self) -> int:
        return sum(1 for i in self.items if not i.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "failed": self.failed, "seconds": round(self.seconds, 3), "bytes": self.bytes,
            "instances_per_second": round(self.sent / self.seconds, 1) if self.seconds > 0 else None,
            "failures": [{"path": i.path, "sop_instance_uid": i.sop_instance_uid,
                          "status": None if i.status is None else f"0x{i.status:04X}", "error": i.error}
                         for i in self.items if not i.ok],
        }


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named, and files under folders named (recursively, sorted); raises for a missing path."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(f for f in path.rglob("*") if f.is_file() and f.name != "DICOMDIR")
        elif path.is_file():
            out.append(path)
        else:
            raise DimseError(f"no such file or folder: {path}")
    return out


def send(target: Target, files: Sequence[str | os.PathLike[str]], *,
         progress: Callable[[SendItem], None] | None = None,
         cancel: threading.Event | None = None) -> SendResult:
    """C-STORE every file to ``target`` (PS3.4 B), as few associations as the contexts allow.

    Each stored transfer syntax is proposed in a context of its own next to
    the uncompressed one (:mod:`hilum.dimse.contexts`): a file goes byte for
    byte when the peer accepted its syntax, and is otherwise converted
    losslessly, every UID kept (decompressed, byte-swapped from big endian,
    inflated).  Every file is read and checked as the archive checks what it
    receives (:func:`hilum.dicom.attributes.read_instance`) before it is
    sent: a truncated or self-contradicting file is reported with its
    reason and not sent, and the rest go on.  Nothing in one file ends the
    run; a lost association is opened again for the files left.
    """
    # Send files without decoding them (pynetdicom reads and streams the encoded data set).
    _config.STORE_SEND_CHUNKED_DATASET = True
    result = SendResult()
    start = time.perf_counter()
    metas: list[tuple[SendItem, str, str]] = []
    for f in files:
        item = SendItem(str(f))
        result.items.append(item)
        try:
            meta = read_file_meta_info(f)
            sop_class = str(meta.MediaStorageSOPClassUID)
            item.sop_instance_uid = str(meta.MediaStorageSOPInstanceUID)
            ts = str(meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - not DICOM: report, send the rest
            item.error = f"not a DICOM Part 10 file ({type(exc).__name__})"
            if progress is not None:
                progress(item)
            continue
        metas.append((item, sop_class, ts))
    batches = cx.storage_batches((sop, ts) for _, sop, ts in metas)
    for number, batch in enumerate(batches):
        todo = deque((i, sop, ts) for i, sop, ts in metas if sop in batch.classes)
        reopened = 0
        while todo and not (cancel is not None and cancel.is_set()):
            try:
                with associate(target, batch.contexts) as assoc:
                    while todo and not (cancel is not None and cancel.is_set()):
                        if not assoc.is_established:
                            break
                        item, sop, ts = todo.popleft()
                        _send_one(assoc, item, sop, ts)
                        if item.ok:
                            result.bytes += _size(item.path)
                            reopened = 0
                        if progress is not None:
                            progress(item)
            except DimseError as exc:
                if number == 0 and reopened == 0 and not any(i.status is not None for i in result.items):
                    raise  # the peer cannot be reached at all: one clear error, as before
                for item, _sop, _ts in todo:
                    item.error = str(exc)
                todo.clear()
            if todo:
                reopened += 1
                if reopened > 3:
                    for item, _sop, _ts in todo:
                        item.error = "association lost"
                    todo.clear()
                else:
                    log.warning("association with %s lost; opening another for %d file(s)", target, len(todo))
    for item in result.items:
        if item.status is None and not item.error:
            item.error = "cancelled" if cancel is not None and cancel.is_set() else "not sent"
    result.seconds = time.perf_counter() - start
    return result


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _send_one(assoc: Any, item: SendItem, sop: str, ts: str) -> None:
    """Check one file and C-STORE it on ``assoc``; whatever goes wrong is the item's error, never raised."""
    try:
        data = Path(item.path).read_bytes()
    except OSError as exc:
        item.error = f"cannot read: {exc.strerror or exc}"
        return
    try:
        ds = read_instance(data)
    except InvalidInstance as exc:
        item.error = f"not sent: {exc} [{exc.code}]"
        return
    item.sop_instance_uid = str(ds.SOPInstanceUID)
    meta = ds.file_meta
    as_file = (str(meta.get("MediaStorageSOPInstanceUID", "")) == item.sop_instance_uid
               and str(meta.get("MediaStorageSOPClassUID", "")) == str(ds.SOPClassUID))
    try:
        if as_file and ts in cx.accepted_syntaxes(assoc, sop):
            # The file's data set as it is on disk, streamed (pynetdicom names the instance from the meta,
            # which agrees with the data set here).
            status = assoc.send_c_store(Path(item.path))
        else:
            status = assoc.send_c_store(cx.for_peer(assoc, data))
    except (cx.NoContext, TranscodeError) as exc:
        item.error = str(exc).splitlines()[0][:200]
        return
    except Exception as exc:  # noqa: BLE001 - one file must never end the run (pynetdicom raises assorted errors)
        log.warning("sending %s failed", item.path, exc_info=True)
        item.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'failed'}"
        return
    if not status or "Status" not in status:
        item.error = "no response (timeout or connection lost)"
        return
    item.status = int(status.Status)
    if not item.ok:
        comment = str(status.get("ErrorComment", "") or "")
        item.error = _status_text(item.status) + (f": {comment}" if comment else "")
