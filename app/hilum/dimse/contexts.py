"""Presentation contexts (PS3.8 7.1.1.13, PS3.7 Annex D) Hilum offers and proposes.

As SCP the node accepts every storage SOP class pynetdicom knows with every
transfer syntax it knows, so instances are stored as received (compressed
included), plus VERIFICATION, Query/Retrieve (patient and study root: FIND,
MOVE, GET) and Storage Commitment Push Model.

As SCU (C-STORE from ``hilum send``, C-MOVE/C-GET sub-operations) contexts
are built from what will be sent, as DCMTK's ``storescu`` builds them: per SOP
class one context for each transfer syntax the instances are stored in, that
syntax alone, and one context with Explicit and Implicit VR Little Endian.  A
peer that takes the stored syntax (Orthanc takes them all) accepts its context
and receives the instance byte for byte; one that refuses it (a DCMTK
``storescp`` without ``+xa``) still accepts the uncompressed context, and only
then is the instance converted, losslessly and with every UID kept
(:mod:`hilum.dicom.transcode`).  :func:`for_peer` chooses per instance: the
exact stored syntax first.  An association carries at most 128 contexts (odd
context IDs 1..255), so larger sets are split over several associations.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext

from hilum.dicom.transcode import TranscodeError, convert
from hilum.dimse.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STORAGE_COMMITMENT_PUSH,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from hilum.errors import HilumError

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
NATIVE: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
NON_STORAGE_SYNTAXES: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                        ExplicitVRBigEndian]

FIND_MODELS = [PATIENT_ROOT_FIND, STUDY_ROOT_FIND]
MOVE_MODELS = [PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE]
GET_MODELS = [PATIENT_ROOT_GET, STUDY_ROOT_GET]
STORAGE_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
_STORAGE_SET = set(STORAGE_CLASSES)


def is_storage_class(uid: str) -> bool:
    return str(uid) in _STORAGE_SET


@dataclass(frozen=True)
class Supported:
    """One context the SCP supports, and the roles it accepts in role selection."""

    abstract_syntax: str
    transfer_syntaxes: Sequence[str]
    scu_role: bool | None = None
    scp_role: bool | None = None
    kind: str = "other"  # verification | storage | find | move | get | commitment


def scp_supported() -> list[Supported]:
    """Everything the node accepts as SCP.

    Storage contexts accept both roles in SCP/SCU role selection
    (PS3.7 D.3.3.4) so that a C-GET requestor can take the SCP role and
    receive the sub-operations on the same association.
    """
    out = [Supported(VERIFICATION, NON_STORAGE_SYNTAXES, kind="verification")]
    out += [Supported(uid, list(ALL_TRANSFER_SYNTAXES), scu_role=True, scp_role=True, kind="storage")
            for uid in STORAGE_CLASSES]
    out += [Supported(uid, NON_STORAGE_SYNTAXES, kind="find") for uid in FIND_MODELS]
    out += [Supported(uid, NON_STORAGE_SYNTAXES, kind="move") for uid in MOVE_MODELS]
    out += [Supported(uid, NON_STORAGE_SYNTAXES, kind="get") for uid in GET_MODELS]
    out += [Supported(STORAGE_COMMITMENT_PUSH, NON_STORAGE_SYNTAXES, scu_role=True, scp_role=True,
                      kind="commitment")]
    return out


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for i in items:
        if i not in seen:
            seen.append(i)
    return seen


def contexts_for_class(sop_class: str, syntaxes: Iterable[str], limit: int = MAX_CONTEXTS) -> list[PresentationContext]:
    """Contexts for sending instances of ``sop_class`` stored in ``syntaxes`` (see the module docstring):
    one per stored syntax, that syntax alone, then one with the uncompressed little-endian ones.

    At most ``limit`` contexts: the uncompressed one is always kept, the
    stored syntaxes fill the rest in order.
    """
    stored = _unique(str(s) for s in syntaxes if s)
    own = [build_context(sop_class, [ts]) for ts in stored][: max(0, limit - 1)]
    return [*own, build_context(sop_class, list(NATIVE))]


@dataclass
class ContextBatch:
    """The contexts of one association and the SOP classes they cover."""

    contexts: list[PresentationContext] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)


def storage_batches(pairs: Iterable[tuple[str, str]], *, reserve: int = 0) -> list[ContextBatch]:
    """Split the ``(SOP class, transfer syntax)`` pairs to send into ≤128-context associations.

    ``reserve`` contexts are left free in each batch (for a C-GET's own
    model context, say).  A SOP class with more syntaxes than fit keeps its
    native context and its first compressed ones.
    """
    by_class: dict[str, list[str]] = {}
    for sop, ts in pairs:
        by_class.setdefault(str(sop), [])
        if ts and ts not in by_class[str(sop)]:
            by_class[str(sop)].append(str(ts))
    room = MAX_CONTEXTS - reserve
    batches: list[ContextBatch] = []
    current = ContextBatch()
    for sop in sorted(by_class):
        cxs = contexts_for_class(sop, by_class[sop], limit=room)
        if len(current.contexts) + len(cxs) > room:
            batches.append(current)
            current = ContextBatch()
        current.contexts += cxs
        current.classes.add(sop)
    if current.contexts:
        batches.append(current)
    return batches


def accepted_syntaxes(assoc: Any, sop_class: str, role: str = "scu") -> list[str]:
    """Transfer syntaxes the peer accepted for ``sop_class`` where we may act as ``role``."""
    out = []
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class:
            continue
        if role == "scu" and cx.as_scu is False:
            continue
        out.append(str(cx.transfer_syntax[0]))
    return out


class NoContext(HilumError, ValueError):
    """The peer accepted no context this instance can go on, as stored or converted."""


def choose_syntax(accepted: Sequence[str], stored: str) -> str | None:
    """The transfer syntax to send an instance stored in ``stored`` in, of the ``accepted`` ones:
    the stored one itself, else Explicit then Implicit VR Little Endian (a lossless conversion),
    else None.  Never another compressed syntax: that would be a re-encoding, lossy for most."""
    if stored in accepted:
        return stored
    for ts in NATIVE:
        if ts in accepted:
            return ts
    return None


def for_peer(assoc: Any, data: bytes | bytearray) -> Dataset:
    """The Part 10 file ``data`` as it goes to the peer of ``assoc``: a data set in the syntax of
    a context the peer accepted for its SOP class, so pynetdicom sends it on that context.

    As stored when the peer accepted the stored syntax (the data set's
    elements are written back as read); otherwise converted losslessly to
    Explicit or Implicit VR Little Endian with every UID kept
    (:func:`hilum.dicom.transcode.convert`: decompressed, byte-swapped from
    big endian, inflated).  Raises :class:`NoContext` when the peer took
    neither, :class:`~hilum.dicom.transcode.TranscodeError` when the
    conversion cannot be done.
    """
    ds = dcmread(io.BytesIO(bytes(data)))
    sop_class = str(ds.get("SOPClassUID", ""))
    stored = str(ds.file_meta.get("TransferSyntaxUID", ""))
    accepted = accepted_syntaxes(assoc, sop_class)
    chosen = choose_syntax(accepted, stored)
    if chosen is None:
        shown = ", ".join(UID(a).name for a in accepted) or "none"
        raise NoContext(f"the peer accepted no context for {UID(sop_class).name} in {UID(stored).name} or an "
                        f"uncompressed syntax (accepted: {shown})")
    if chosen == stored:
        return ds
    log.debug("converting %s from %s to %s for the peer", ds.get("SOPInstanceUID", "?"), UID(stored).name,
              UID(chosen).name)
    return dcmread(io.BytesIO(convert(data, chosen)))


__all__ = ["MAX_CONTEXTS", "NATIVE", "ContextBatch", "NoContext", "Supported", "TranscodeError", "accepted_syntaxes",
           "choose_syntax", "contexts_for_class", "for_peer", "is_storage_class", "scp_supported", "storage_batches"]
