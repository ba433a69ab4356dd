"""DICOM peers (``[peers]`` in ``hilum.toml``) as study sources and send targets, without Qt.

The workstation's study browser searches a peer exactly as it searches the
local archive or a DICOMweb server: :class:`PeerArchiveView` has the
archive's ``query``/``count`` shape and turns each call into one C-FIND
(PS3.4 C.4.1, Study Root).  Opening a study from a peer retrieves it into
the local archive through the one ingest call
(:func:`hilum.dimse.scu.retrieve_study`, re-exported here: C-GET with each
sub-operation stored by :func:`hilum.dimse.scu.ingest_store`, PS3.4 C.4.3; or
C-MOVE to this node's AE title, whose SCP ingests what arrives, PS3.4 C.4.2); "Send to…" C-STOREs a local study or series as it
leaves the archive (:func:`send_study`, :meth:`Archive.read_outgoing`:
today's demographics, every UID kept).

Everything here blocks on the network: the GUI runs it on worker threads
(:mod:`hilum.ui.transfers`, the browser's :class:`~hilum.ui.tasks.TaskRunner`);
every association has the :class:`~hilum.dimse.scu.Target`'s timeouts.
Nothing here imports Qt (STYLE.md §3: the logic runs headless).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hilum.config import Config, Peer
from hilum.dimse.scu import (
    DEFAULT_KEYS,
    DimseError,
    SendResult,
    Target,
    dataset_to_dict,
    iter_find,
    retrieve_study,
    send,
)
from hilum.dimse.scu import peer_target as scu_peer_target

log = logging.getLogger(__name__)

__all__ = ["PeerArchiveView", "peer_target", "retrieve_study", "send_study"]

PEER_TIMEOUT = 30.0
"""Seconds for each association's connection, ACSE and DIMSE steps with a peer from the workstation."""

STUDY_KEYS = [*DEFAULT_KEYS["STUDY"], "PatientBirthDate", "PatientSex"]
SERIES_KEYS = [*DEFAULT_KEYS["SERIES"], "BodyPartExamined", "SeriesDate", "SeriesTime"]
IMAGE_KEYS = [*DEFAULT_KEYS["IMAGE"]]
_INTEGER_KEYS = (
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "SeriesNumber",
    "InstanceNumber",
)
_RETURN_KEYS = {"STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS, "IMAGE": IMAGE_KEYS}

Progress = Callable[[int, int], None]
"""``progress(done, total)``; ``total`` 0 while unknown."""


def peer_target(config: Config, peer: Peer, *, timeout: float = PEER_TIMEOUT) -> Target:
    """Where and as whom the workstation connects to ``peer`` (:func:`hilum.dimse.scu.peer_target`,
    with the workstation's timeout)."""
    return scu_peer_target(config, peer, timeout=timeout)


def _sort(rows: list[dict[str, Any]], order_by: list[str] | None) -> list[dict[str, Any]]:
    for key in reversed(order_by or []):
        desc = key.startswith("-")
        k = key.lstrip("-")
        rows.sort(key=lambda r: _sort_key(r.get(k)), reverse=desc)
    return rows


def _sort_key(value: Any) -> tuple[bool, tuple[int, Any]]:
    """Missing values last, numbers (IS, US) by value before text, text as text."""
    missing = value is None or value == ""
    if isinstance(value, (int, float)):
        return missing, (0, value)
    return missing, (1, str(value or ""))


class PeerArchiveView:
    """A DICOM peer seen through the archive's query interface (``query``/``count``), by C-FIND.

    The peer does the matching (PS3.4 C.2.2.2); the identifier the browser
    builds is sent as it is, with the return keys its tables show.  C-FIND
    has no sort or offset: the first ``limit`` matches are taken (C-CANCEL
    after them, PS3.4 C.4.1.2.2.2) and ``order_by`` sorts them here.
    """

    def __init__(self, target: Target, name: str = "", max_rows: int = 2000):
        self.target = target
        self.name = name or target.called_aet
        self.max_rows = max_rows

    def query(
        self,
        level: str,
        identifier: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        level = "IMAGE" if level.upper() == "INSTANCE" else level.upper()
        if level not in _RETURN_KEYS:
            raise ValueError(f"a DICOM peer is searched at STUDY, SERIES or IMAGE level, not {level!r}")
        keys = {k: "" for k in _RETURN_KEYS[level]}
        keys.update({k: "" if v is None else str(v) for k, v in (identifier or {}).items()})
        cap = min(limit or self.max_rows, self.max_rows) + max(0, offset)
        rows = []
        for ds in iter_find(self.target, level, keys, cancel_after=cap):
            row = dataset_to_dict(ds)
            row.pop("QueryRetrieveLevel", None)
            for k in _INTEGER_KEYS:  # IS values, as the local archive's rows have them (sorting 2 before 10)
                v = row.get(k)
                if isinstance(v, str) and v.strip().lstrip("+-").isdigit():
                    row[k] = int(v)
            rows.append(row)
        rows = rows[max(0, offset) :]
        if order_by is None:
            order_by = {"STUDY": ["-StudyDate", "-StudyTime"], "SERIES": ["SeriesNumber"], "IMAGE": ["InstanceNumber"]}[
                level
            ]
        return _sort(rows, order_by)

    def count(self, level: str, identifier: Mapping[str, Any] | None = None) -> int:
        return len(self.query(level, identifier, limit=self.max_rows))


def send_study(
    archive: Any,
    target: Target,
    study_uid: str,
    series_uid: str | None = None,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> SendResult:
    """C-STORE a local study (or one series) to ``target`` (PS3.4 B) as it leaves the archive.

    Each instance is read through :meth:`Archive.read_outgoing` (today's
    demographics, UIDs and pixels untouched) into a temporary folder and
    handed to :func:`hilum.dimse.scu.send`, which checks each file, sends it
    in its stored syntax when the peer takes it (otherwise converted
    losslessly) and reports every failure.  Raises :class:`DimseError` when
    the peer cannot be reached at all.
    """
    rows = archive.instances(study_uid=study_uid, series_uid=series_uid)
    if not rows:
        raise DimseError("nothing to send: the study is not in the local archive")
    total = len(rows)
    done = [0]
    if progress is not None:
        progress(0, total)

    def on_item(_item: Any) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    with tempfile.TemporaryDirectory(prefix="hilum-send-") as tmp:
        files: list[Path] = []
        for i, row in enumerate(rows):
            if cancel is not None and cancel.is_set():
                return SendResult()
            path = Path(tmp) / f"{i:06d}.dcm"
            path.write_bytes(archive.read_outgoing(row))
            files.append(path)
        return send(target, files, progress=on_item, cancel=cancel)
