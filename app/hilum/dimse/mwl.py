"""Modality Worklist SCP: C-FIND on the MWL information model, answered from the archive's orders.

PS3.4 Annex K (Basic Worklist Management Service), Modality Worklist
Information Model – FIND (1.2.840.10008.5.1.4.31).  The identifier's keys,
top level and inside the first Scheduled Procedure Step Sequence item, are
flattened to ``{keyword: value}`` and matched by
:meth:`hilum.archive.orders.OrderBook.worklist` with the one set of matching
rules (``hilum.dicom.matching``: single value, ``*``/``?`` wildcards,
date/time ranges incl. combined ScheduledProcedureStepStartDate + Time,
UID lists, case-insensitive person names).  Keys modalities use:
ScheduledStationAETitle, Modality, ScheduledProcedureStepStartDate ranges,
PatientName wildcards, PatientID, AccessionNumber, RequestedProcedureID,
ScheduledProcedureStepStatus (default: SCHEDULED and STARTED items only).

Each match is one response per scheduled procedure step, holding every
attribute the request asked for (K.4.1.1.3.1; unknown ones empty), with
Specific Character Set ISO_IR 192 (UTF-8).  A malformed key answers
0xA900, a failure 0xC000, a cancel 0xFE00.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from hilum.archive.orders import SPS_KEYS, OrderBook

log = logging.getLogger(__name__)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
SOP_CLASSES = (MODALITY_WORKLIST_FIND,)

PENDING, CANCEL = 0xFF00, 0xFE00
IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS = 0xA900, 0xC000

#: What an empty (universal) Scheduled Procedure Step Sequence item returns.
_SPS_DEFAULT = tuple(k for k in SPS_KEYS)


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _text(elem: Any) -> Any:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return ""  # UN/OB keys are not matched
    return str(value)


def keys_of(identifier: Dataset) -> dict[str, Any]:
    """The matching keys of an MWL identifier, SPS item keys flattened to the top level."""
    keys: dict[str, Any] = {}
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw == "SpecificCharacterSet":
            continue
        if elem.VR == "SQ":
            if kw == "ScheduledProcedureStepSequence" and elem.value:
                for sub in elem.value[0]:
                    if sub.keyword and sub.VR != "SQ":
                        keys[sub.keyword] = _text(sub)
            continue
        keys[kw] = _text(elem)
    return keys


def _put(out: Dataset, tag: Any, vr: str, keyword: str, row: Mapping[str, Any]) -> None:
    value = row.get(keyword) if keyword else None
    if value in (None, "") or isinstance(value, (list, dict)):
        value = None
    # the order index holds normalised values: skip pydicom's per-value regex checks (as C-FIND does)
    out.add(DataElement(tag, vr, value, validation_mode=IGNORE))


def _codes(items: list[dict[str, str]]) -> Sequence:
    seq = []
    for item in items:
        ds = Dataset()
        for k, v in item.items():
            setattr(ds, k, v)
        seq.append(ds)
    return Sequence(seq)


def _fill(request: Dataset, row: Mapping[str, Any], out: Dataset) -> None:
    for elem in request:
        kw = elem.keyword
        if kw == "SpecificCharacterSet" or elem.tag.group == 0x0000:
            continue
        if elem.VR == "SQ":
            if kw == "ScheduledProcedureStepSequence":
                item = Dataset()
                src = elem.value[0] if elem.value else None
                if src is None or len(src) == 0:
                    for key in _SPS_DEFAULT:
                        setattr(item, key, row.get(key) or None)
                else:
                    _fill(src, row, item)
                out.ScheduledProcedureStepSequence = [item]
            elif kw == "RequestedProcedureCodeSequence":
                out.RequestedProcedureCodeSequence = _codes(row.get("RequestedProcedureCodeSequence") or [])
            else:
                out.add_new(elem.tag, "SQ", Sequence([]))
            continue
        _put(out, elem.tag, elem.VR, kw, row)


def response_for(identifier: Dataset, row: Mapping[str, Any]) -> Dataset:
    """The C-FIND pending response for one worklist row: the requested attributes, filled."""
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    _fill(identifier, row, out)
    return out


class WorklistSCP:
    """The MWL C-FIND handler on an archive's order book (bind :meth:`on_find` to ``EVT_C_FIND``)."""

    sop_classes = SOP_CLASSES
    kind = "find"  # the peer right it needs (``may_query`` / ``may_store``)

    def __init__(self, archive: Any, *, limit: int | None = None, orders: OrderBook | None = None):
        """``orders``: the order book the composition root built (:class:`hilum.node.Node`), else one
        on ``archive`` (books share the archive's transactions and events)."""
        self.book = orders if orders is not None else OrderBook(archive)
        self.limit = limit

    def handles(self, sop_class_uid: str) -> bool:
        return str(sop_class_uid) in SOP_CLASSES

    def on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """``EVT_C_FIND`` handler for the Modality Worklist model (yields (status, identifier))."""
        try:
            identifier = event.identifier
            rows = self.book.worklist(keys_of(identifier), limit=self.limit)
        except ValueError as exc:
            log.warning("MWL C-FIND refused: %s", exc)
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - decoding or database errors: a status, not a dead association
            log.exception("MWL C-FIND failed")
            yield _status(UNABLE_TO_PROCESS, str(exc)), None
            return
        log.debug("MWL C-FIND: %d matches", len(rows))
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, response_for(identifier, row)
