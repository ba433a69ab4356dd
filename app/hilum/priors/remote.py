"""Priors on remote peers: C-FIND to DIMSE peers, QIDO-RS to DICOMweb ones, each with a deadline.

The peers are the node's ``[peers]`` (:class:`hilum.config.Peer`, DIMSE) and
its DICOMweb sources (``[dicomweb_sources.NAME]``,
:class:`hilum.dicomweb.client.DicomWebSource`), as the workstation's study
browser knows them (:func:`configured_peers`).  For each patient ID a peer is
asked at STUDY level (PS3.4 C.6.2.1 Study Root; PS3.18 10.6 "Search for
Studies"), then at SERIES level per study for the body parts
(``BodyPartExamined`` is a series attribute, PS3.3 C.7.3.1), hierarchically, as
every archive answers.

Every association and request carries the timeout; the peers are asked in
parallel on daemon threads and the caller waits at most the timeout (plus a
second): a peer that is down answers "cannot connect" at once, one that
accepts and never answers is reported as "no answer within N s" and its
thread ends on its own network timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hilum.config import Config, Peer
from hilum.dicomweb.client import DicomWebClient, DicomWebSource, load_sources
from hilum.dimse.scu import Target, dataset_to_dict, find_session, peer_target
from hilum.priors.finder import Prior

log = logging.getLogger(__name__)

__all__ = ["MAX_STUDIES", "RemotePeer", "configured_peers", "search_peers"]

RemotePeer = Peer | DicomWebSource
"""A peer priors are looked for on: DIMSE (``Peer``) or DICOMweb (``DicomWebSource``)."""

MAX_STUDIES = 100
"""At most this many studies per patient ID and peer (C-CANCEL after them): a patient's history."""

_STUDY_KEYS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)


def configured_peers(config: Config, names: Sequence[str] | None = None) -> dict[str, RemotePeer]:
    """The peers of ``hilum.toml`` that may be queried: ``[peers]`` (``may_query``) first, then the
    DICOMweb sources; ``names`` keeps those (a name that is neither raises ``ValueError``).
    A DICOMweb source named like a DIMSE peer is left out (logged)."""
    out: dict[str, RemotePeer] = {n: p for n, p in config.peers.items() if p.may_query}
    for s in load_sources(config):
        if s.name in out or s.name in config.peers:
            log.warning("DICOMweb source %r has the name of a DICOM peer: not asked for priors", s.name)
            continue
        out[s.name] = s
    if names:
        unknown = [n for n in names if n not in out]
        if unknown:
            raise ValueError(
                f"no queryable peer called {', '.join(map(repr, unknown))} in [peers] or [dicomweb_sources]"
            )
        out = {n: out[n] for n in names}
    return out


def _int(value: Any) -> int:
    try:
        return int(str(value).strip() or 0)
    except (TypeError, ValueError):
        return 0


def _split(value: Any, upper: bool = False) -> tuple[str, ...]:
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in (value or [])]
    out: list[str] = []
    for v in items:
        v = v.strip().upper() if upper else v.strip()
        if v and v not in out:
            out.append(v)
    return tuple(out)


def _same_issuer(asked: str, got: str) -> bool:
    """An issuer that one side does not know ('') matches; two known ones must agree."""
    return not asked or not got or asked == got


def _prior(study: Mapping[str, Any], series: Sequence[Mapping[str, Any]], source: str, issuer: str) -> Prior:
    mods = _split(study.get("ModalitiesInStudy") or "") or _split(
        "\\".join(str(s.get("Modality") or "") for s in series)
    )
    return Prior(
        study_uid=str(study.get("StudyInstanceUID") or ""),
        patient_id=str(study.get("PatientID") or ""),
        issuer=str(study.get("IssuerOfPatientID") or "") or issuer,
        study_date=str(study.get("StudyDate") or ""),
        study_time=str(study.get("StudyTime") or ""),
        description=str(study.get("StudyDescription") or ""),
        accession=str(study.get("AccessionNumber") or ""),
        modalities=mods,
        body_parts=_split("\\".join(str(s.get("BodyPartExamined") or "") for s in series), upper=True),
        n_series=_int(study.get("NumberOfStudyRelatedSeries")) or len(series),
        n_instances=_int(study.get("NumberOfStudyRelatedInstances"))
        or sum(_int(s.get("NumberOfSeriesRelatedInstances")) for s in series),
        source=source,
        local=False,
    )


def _studies(
    name: str,
    keys: Sequence[tuple[str, str]],
    deadline: float,
    studies_of: Callable[[str], list[dict[str, Any]]],
    series_of: Callable[[str], list[dict[str, Any]]],
) -> list[Prior]:
    """The priors of the patient ``keys`` on one peer: its studies of each Patient ID (those of another
    issuer left out), each with its series (for the body parts) while the deadline allows."""
    out: list[Prior] = []
    for pid, issuer in keys:
        for st in studies_of(pid):
            if st.get("PatientID") != pid or not _same_issuer(issuer, str(st.get("IssuerOfPatientID") or "")):
                continue
            uid = str(st.get("StudyInstanceUID") or "")
            if not uid:
                continue
            series = series_of(uid) if time.monotonic() < deadline else []
            out.append(_prior(st, series, name, issuer))
    return out


def _dimse(name: str, target: Target, keys: Sequence[tuple[str, str]], deadline: float) -> list[Prior]:
    def studies_of(pid: str) -> list[dict[str, Any]]:
        ident = {**{k: "" for k in _STUDY_KEYS}, "PatientID": pid}
        return [dataset_to_dict(d) for d in session.iter_find("STUDY", ident, cancel_after=MAX_STUDIES)]

    def series_of(uid: str) -> list[dict[str, Any]]:
        ident = {**{k: "" for k in _SERIES_KEYS}, "StudyInstanceUID": uid}
        return [dataset_to_dict(d) for d in session.iter_find("SERIES", ident)]

    with find_session(target) as session:  # the study and series queries share one association
        return _studies(name, keys, deadline, studies_of, series_of)


def _web(
    name: str, source: DicomWebSource, keys: Sequence[tuple[str, str]], deadline: float, timeout: float
) -> list[Prior]:
    client = DicomWebClient(replace(source, timeout=timeout))
    fields = ["IssuerOfPatientID", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
    try:
        return _studies(
            name,
            keys,
            deadline,
            lambda pid: client.search_studies({"PatientID": pid}, limit=MAX_STUDIES, includefield=fields),
            lambda uid: client.search_series(uid, includefield=["BodyPartExamined"]),
        )
    finally:
        client.close_all()


def search_peers(
    keys: Sequence[tuple[str, str]],
    peers: Mapping[str, RemotePeer],
    *,
    timeout: float = 10.0,
    calling_aet: str = "HILUM",
    config: Config | None = None,
) -> tuple[list[Prior], dict[str, str]]:
    """The studies of the patient ``keys`` (``(Patient ID, issuer)`` pairs) on every peer, unranked,
    in the order of ``peers``; and ``{peer name: why}`` for each peer that failed or did not answer
    within ``timeout`` seconds (module docstring)."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    start = time.monotonic()
    deadline = start + timeout
    results: dict[str, list[Prior]] = {}
    errors: dict[str, str] = {}
    lock = threading.Lock()

    def ask(name: str, peer: RemotePeer) -> None:
        try:
            if isinstance(peer, DicomWebSource):
                found = _web(name, peer, keys, deadline, timeout)
            else:
                found = _dimse(
                    name, peer_target(config, peer, timeout=timeout, calling_aet=calling_aet), keys, deadline
                )
        except Exception as exc:  # noqa: BLE001 - one line per peer, the others go on
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("priors: peer %s: %s", name, why)
            with lock:
                errors[name] = why
            return
        with lock:
            results[name] = found

    threads = []
    for name, peer in peers.items():
        t = threading.Thread(target=ask, args=(name, peer), name=f"priors-{name}", daemon=True)
        t.start()
        threads.append((name, t))
    for name, t in threads:
        t.join(max(0.0, deadline + 1.0 - time.monotonic()))
        if t.is_alive():
            with lock:
                errors.setdefault(name, f"no answer within {timeout:g} s")
            log.warning("priors: peer %s: no answer within %g s", name, timeout)
    with lock:
        found = [p for name, _t in threads for p in results.get(name, []) if name not in errors]
        return found, dict(errors)
