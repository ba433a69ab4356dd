"""A patient's other studies — priors — found in the local archive and on remote peers, and ranked.

When a study opens, the radiologist compares it with the same patient's
earlier exams.  This module finds them (contract A of issue 15):

* :func:`find_local_priors` — every OTHER study of the same patient in the
  local archive.  "The same patient" is the Patient ID with its issuer
  (PS3.3 C.7.1.1: an ID is unique only within its issuer) and every ID HL7 ADT
  merged with it (:meth:`hilum.archive.Archive.patient_aliases`; IHE RAD
  TF-2 RAD-12), since images that arrive after a merge may still carry the old
  ID.  One SERIES-level query per ID through the one query engine, so each
  prior comes with the body parts of its series; about a millisecond or two
  for one patient among thousands (``bench/priors``).
* :func:`find_remote_priors` — the same patient on configured peers: C-FIND
  (PS3.4 C.4.1, Study Root) on DIMSE peers, QIDO-RS (PS3.18 10.6) on DICOMweb
  ones (:mod:`hilum.priors.remote`).  Every call has a timeout; a peer that is
  down or slow gives a line in ``errors``, never a hang.
* :func:`rank` — same modality AND body part first, then same modality, then
  the others; within a class the most recent first (studies dated after the
  current one come after the earlier ones: a prior is what came before).

A study UID that is not (yet) in the archive but belongs to an order (HL7
ORM, :class:`hilum.archive.orders.OrderBook`) is described by its order:
its patient and the ordered modality.  That is how prefetch finds the priors
of an exam that has not been acquired yet (:mod:`hilum.priors.prefetch`).

Nothing here touches Qt or the network directly; callers run it off the GUI
thread (DESIGN.md "The GUI never waits").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from hilum.errors import NotFound

if TYPE_CHECKING:
    from hilum.archive import Archive
    from hilum.config import Peer
    from hilum.dicomweb.client import DicomWebSource

log = logging.getLogger(__name__)

__all__ = ["Prior", "describe_study", "find_local_priors", "find_remote_priors", "local_priors_of", "rank"]

AUXILIARY_MODALITIES = frozenset(
    {"SR", "PR", "KO", "SEG", "REG", "DOC", "RWV", "PLAN", "RTPLAN", "RTSTRUCT", "RTRECORD", "OT", "FID", "AU"}
)
"""Modalities of objects made about images (reports, states, selections, segmentations...): they do
not make a study "the same modality" as another (a CT with an SR is a CT study)."""


@dataclass(frozen=True)
class Prior:
    """One other study of the patient, as found locally or on a peer, with its relevance.

    ``source`` is ``"local"`` or the name of the peer in ``hilum.toml``; ``local``
    says its instances are in the local archive (it opens now); ``score`` orders
    them, higher first; ``reason`` says why in a few words for the timeline's tooltip.
    """

    study_uid: str
    patient_id: str
    issuer: str  # IssuerOfPatientID, '' unknown
    study_date: str  # YYYYMMDD, '' unknown
    study_time: str
    description: str
    accession: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]  # BodyPartExamined of its series (upper case), () unknown
    n_series: int
    n_instances: int
    source: str  # "local", or the peer's name in hilum.toml [peers]
    local: bool  # its instances are in the local archive (openable now)
    score: float = 0.0  # relevance, higher first
    reason: str = ""  # short human text, e.g. "same modality and body part, 1 y 2 m earlier"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``hilum priors --json``)."""
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "issuer": self.issuer,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "description": self.description,
            "accession": self.accession,
            "modalities": list(self.modalities),
            "body_parts": list(self.body_parts),
            "n_series": self.n_series,
            "n_instances": self.n_instances,
            "source": self.source,
            "local": self.local,
            "score": round(self.score, 4),
            "reason": self.reason,
        }


# ---------------------------------------------------------------- the current study


def describe_study(archive: Archive, study_uid: str) -> dict[str, Any]:
    """What priors are ranked against: ``study_uid``, ``patient_id``, ``issuer``, ``study_date``,
    ``study_time``, ``modalities``, ``body_parts`` (tuples), and ``kind`` (``study`` or ``order``).

    A study in the archive is described by its series; a study UID only ordered so far (HL7
    ORM) by its order: the ordered patient, the scheduled steps' modalities, today's date when
    the order has no start date.  Raises :class:`~hilum.errors.NotFound` for neither.
    """
    rows = archive.query("SERIES", {"StudyInstanceUID": study_uid})
    if rows:
        r = rows[0]
        return {
            "kind": "study",
            "study_uid": study_uid,
            "patient_id": str(r.get("PatientID") or ""),
            "issuer": str(r.get("IssuerOfPatientID") or ""),
            "study_date": str(r.get("StudyDate") or ""),
            "study_time": str(r.get("StudyTime") or ""),
            "modalities": _unique(str(s.get("Modality") or "") for s in rows),
            "body_parts": _unique(str(s.get("BodyPartExamined") or "").upper() for s in rows),
        }
    from hilum.archive.orders import OrderBook

    order = OrderBook(archive).order(study_uid=study_uid)
    if order is None:
        raise NotFound("study", study_uid)
    steps = order.get("steps") or []
    start = next((str(s.get("start_date") or "") for s in steps if s.get("start_date")), "")
    return {
        "kind": "order",
        "study_uid": study_uid,
        "patient_id": str(order.get("patient_id") or ""),
        "issuer": str(order.get("issuer") or ""),
        "study_date": start or date.today().strftime("%Y%m%d"),
        "study_time": "",
        "modalities": _unique(str(s.get("modality") or "") for s in steps),
        "body_parts": (),
    }


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        for part in v.split("\\"):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)


# ---------------------------------------------------------------- local


def local_priors_of(archive: Archive, patient_id: str, issuer: str = "", *, exclude: Iterable[str] = ()) -> list[Prior]:
    """Every study of the patient (the ID, its issuer, and every ID merged with it) in the local
    archive except those in ``exclude``, unranked (``score`` 0)."""
    skip = set(exclude)
    by_study: dict[str, list[dict[str, Any]]] = {}
    for pid, iss in archive.patient_aliases(patient_id, issuer):
        # PatientID matching is single-value (or wildcard, for an ID holding * or ?): keep exact matches only.
        for r in archive.query("SERIES", {"PatientID": pid}):
            if r.get("PatientID") != pid or str(r.get("IssuerOfPatientID") or "") != iss:
                continue
            uid = str(r["StudyInstanceUID"])
            if uid not in skip:
                by_study.setdefault(uid, []).append(r)
    out = []
    for uid, rows in by_study.items():
        r = rows[0]
        out.append(
            Prior(
                study_uid=uid,
                patient_id=str(r.get("PatientID") or ""),
                issuer=str(r.get("IssuerOfPatientID") or ""),
                study_date=str(r.get("StudyDate") or ""),
                study_time=str(r.get("StudyTime") or ""),
                description=str(r.get("StudyDescription") or ""),
                accession=str(r.get("AccessionNumber") or ""),
                modalities=_unique(str(s.get("Modality") or "") for s in rows),
                body_parts=_unique(str(s.get("BodyPartExamined") or "").upper() for s in rows),
                n_series=int(r.get("NumberOfStudyRelatedSeries") or len(rows)),
                n_instances=int(r.get("NumberOfStudyRelatedInstances") or 0),
                source="local",
                local=True,
            )
        )
    return out


def find_local_priors(archive: Archive, study_uid: str) -> list[Prior]:
    """The same patient's other studies in the local archive, ranked (module docstring).

    ``study_uid`` is a study in the archive or an ordered one (HL7 ORM).  Raises
    :class:`~hilum.errors.NotFound` when it is neither.  Blocking (the index); run it off
    the GUI thread.
    """
    current = describe_study(archive, study_uid)
    if not current["patient_id"]:
        return []  # a study without a Patient ID has no identifiable priors
    return rank(current, local_priors_of(archive, current["patient_id"], current["issuer"], exclude=[study_uid]))


# ---------------------------------------------------------------- remote


def find_remote_priors(
    archive: Archive,
    study_uid: str,
    peers: Mapping[str, Peer | DicomWebSource],
    *,
    timeout: float = 10.0,
    errors: dict[str, str] | None = None,
    calling_aet: str = "HILUM",
    config: Any = None,
) -> list[Prior]:
    """The same patient's other studies on ``peers``, ranked; blocking, at most about ``timeout`` s.

    ``peers`` maps names to :class:`hilum.config.Peer` (DIMSE: C-FIND) or
    :class:`hilum.dicomweb.client.DicomWebSource` (DICOMweb: QIDO-RS); see
    :func:`hilum.priors.remote.configured_peers` for those of ``hilum.toml``.  The patient is
    asked for under every ID merged with it.  A study found on several peers is listed once
    (the first peer in ``peers``' order); one whose instances are all in the local archive
    already is marked ``local=True``.  A peer that cannot be reached, refuses or does not
    answer within ``timeout`` is left out, and ``errors[name]`` (when given) says why in one
    line.  ``config`` (a :class:`hilum.config.Config`) gives this node's AE title and TLS
    files for DIMSE peers; else ``calling_aet`` and no TLS.
    """
    from hilum.priors.remote import search_peers

    current = describe_study(archive, study_uid)
    if not current["patient_id"] or not peers:
        return []
    keys = archive.patient_aliases(current["patient_id"], current["issuer"])
    found, errs = search_peers(keys, peers, timeout=timeout, calling_aet=calling_aet, config=config)
    if errors is not None:
        errors.update(errs)
    return rank(current, mark_local(archive, found, exclude=[study_uid]))


def mark_local(archive: Archive, found: Iterable[Prior], *, exclude: Iterable[str] = ()) -> list[Prior]:
    """``found`` without the studies in ``exclude`` and without repeats (first kept), each marked
    ``local`` when the local archive holds at least as many of its instances as the peer said."""
    skip = set(exclude)
    unique: dict[str, Prior] = {}
    for p in found:
        if p.study_uid not in skip and p.study_uid not in unique:
            unique[p.study_uid] = p
    if not unique:
        return []
    held: dict[str, int] = {}
    uids = list(unique)
    for i in range(0, len(uids), 200):
        for r in archive.query("STUDY", {"StudyInstanceUID": "\\".join(uids[i : i + 200])}):
            held[str(r["StudyInstanceUID"])] = int(r.get("NumberOfStudyRelatedInstances") or 0)
    out = []
    for uid, p in unique.items():
        n = held.get(uid)
        local = n is not None and n > 0 and (not p.n_instances or n >= p.n_instances)
        out.append(replace(p, local=local))
    return out


# ---------------------------------------------------------------- ranking


def _field(current: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in current and current[n] not in (None, ""):
            return current[n]
    return None


def _values(value: Any, upper: bool = False) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return frozenset((v.strip().upper() if upper else v.strip()) for v in items if v and v.strip())


def _imaging(modalities: frozenset[str]) -> frozenset[str]:
    """The imaging modalities of a set (SR, PR, KO... only when there is nothing else)."""
    own = modalities - AUXILIARY_MODALITIES
    return own or modalities


def _date(text: str) -> date | None:
    try:
        return date(int(text[0:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def _gap(current: date, other: date) -> str:
    """``1 y 2 m earlier``, ``3 m later``, ``12 d earlier``, ``same day``."""
    if current == other:
        return "same day"
    earlier = other < current
    a, b = (other, current) if earlier else (current, other)
    months = (b.year - a.year) * 12 + (b.month - a.month) - (1 if b.day < a.day else 0)
    if months <= 0:
        text = f"{(b - a).days} d"
    elif months < 12:
        text = f"{months} m"
    else:
        text = f"{months // 12} y" + (f" {months % 12} m" if months % 12 else "")
    return f"{text} {'earlier' if earlier else 'later'}"


def rank(current: Mapping[str, Any], candidates: Iterable[Prior]) -> list[Prior]:
    """``candidates`` ordered by relevance to ``current``, each with its ``score`` and ``reason``.

    Same modality AND body part first, then same modality, then the others; within a
    class the most recent first.  Studies dated after the current one (a later exam,
    when an old study is opened) come after the earlier ones of their class, closest
    first; undated ones last.  ``current`` is :func:`describe_study`'s mapping (or any
    with ``modalities``/``ModalitiesInStudy``, ``body_parts``/``BodyPartExamined`` and
    ``study_date``/``StudyDate``; multi-values as sequences or backslash-joined).

    The score is ``3``, ``2`` or ``1`` for the class plus a fraction below 1 that falls
    with the time between the two studies (over 0.5 for earlier studies, under for later
    ones, 0 undated), so it compares across calls as well as within one.
    """
    cur_mods = _imaging(_values(_field(current, "modalities", "ModalitiesInStudy", "Modality"), upper=True))
    cur_parts = _values(_field(current, "body_parts", "BodyPartExamined"), upper=True)
    cur_date = _date(str(_field(current, "study_date", "StudyDate") or ""))
    scored: list[tuple[float, str, str, Prior]] = []
    for p in candidates:
        mods = _imaging(_values(p.modalities, upper=True))
        parts = _values(p.body_parts, upper=True)
        same_mod = bool(cur_mods & mods)
        same_part = bool(cur_parts & parts)
        if same_mod and same_part:
            base, why = 3.0, "same modality and body part"
        elif same_mod:
            base, why = 2.0, "same modality"
        else:
            base, why = 1.0, "other modality" + (f" ({'/'.join(sorted(mods))})" if mods else "")
        d = _date(p.study_date)
        frac = 0.0
        if d is not None and cur_date is not None:
            years = abs((cur_date - d).days) / 365.25
            frac = (0.5 + 0.49 / (1.0 + years)) if d <= cur_date else 0.49 / (1.0 + years)
            why += ", " + _gap(cur_date, d)
        elif d is None:
            why += ", date unknown"
        else:
            frac = 0.5
        scored.append(
            (base + frac, p.study_date + p.study_time, p.study_uid, replace(p, score=base + frac, reason=why))
        )
    scored.sort(key=lambda t: (-t[0], _neg(t[1]), t[2]))
    return [t[3] for t in scored]


def _neg(text: str) -> tuple[int, ...]:
    """A sort key ordering strings descending (most recent date+time first at equal scores)."""
    return tuple(-ord(c) for c in text)
