"""Presentation contexts (PS3.8 7.1.1.13, PS3.7 Annex D) Hilum offers and proposes.

As SCP the node accepts every storage SOP class pynetdicom knows with every
transfer syntax it knows, so instances are stored as received (compressed
included), plus VERIFICATION, Query/Retrieve (patient and study root: FIND,
MOVE, GET) and Storage Commitment Push Model.

As SCU (C-STORE from ``hilum send``, C-MOVE/C-GET sub-operations) contexts
are built from what will be sent: per SOP class one context with the native
syntaxes, and one per compressed syntax that also offers Explicit/Implicit
VR Little Endian, so a peer that cannot take the compressed form still
accepts the context and the instance is decompressed for it.  An association
carries at most 128 contexts (odd context IDs 1..255), so larger sets are
split over several associations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def contexts_for_class(sop_class: str, syntaxes: Iterable[str]) -> list[PresentationContext]:
    """Contexts proposing ``syntaxes`` for one SOP class (see the module docstring)."""
    syntaxes = _unique(str(s) for s in syntaxes)
    native = [s for s in syntaxes if not UID(s).is_compressed]
    compressed = [s for s in syntaxes if UID(s).is_compressed]
    out = [build_context(sop_class, _unique([*native, *NATIVE]))]
    for ts in compressed:
        out.append(build_context(sop_class, _unique([ts, *NATIVE])))
    return out


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
        cxs = contexts_for_class(sop, by_class[sop])[:room]
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


def fit_to_association(assoc: Any, ds: Dataset) -> Dataset:
    """Make ``ds`` sendable on ``assoc``: decompress when only native syntaxes were accepted.

    pynetdicom converts between the native little-endian syntaxes itself;
    compressed data can only go as is, so when no accepted context has the
    instance's own compressed syntax it is decompressed (PS3.5 8.2) to
    Explicit VR Little Endian.  When nothing fits, ``ds`` comes back
    unchanged and the send fails as a counted sub-operation failure.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    accepted = accepted_syntaxes(assoc, sop_class)
    if not ts or ts in accepted or not ts.is_compressed:
        return ds
    if not any(not UID(a).is_compressed for a in accepted):
        return ds
    try:
        ds.decompress()
    except Exception as exc:  # noqa: BLE001 - a missing codec fails this one instance only
        log.warning("cannot decompress %s (%s) for the peer: %s", ds.get("SOPInstanceUID", "?"), ts.name, exc)
    return ds
