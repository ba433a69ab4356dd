"""What the archive hands out: ingest results, events, and the bus they travel on.

Kept apart from :mod:`hilum.archive.archive` so that the index writer, the
bulk-ingest pipeline and the orders can use them without importing the
archive facade (no import cycles inside ``archive/``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "replaced", "rejected"]


@dataclass(slots=True)
class IngestResult:
    """The outcome of one ingest (``Archive.ingest``, or one source of ``ingest_many``).

    ``code`` names a rejection's cause for protocol adapters: ``not-dicom``,
    ``truncated``, ``missing-uid``, ``sop-class-mismatch`` (and the other
    :class:`hilum.dicom.attributes.InvalidInstance` codes), ``storage-full``
    (the blob store or the index cannot write: a full disk, a quota, a
    read-only file system; retry later, PS3.4 B.2.3 0xA7xx), ``index-error``
    (the index refused for another reason), ``unreadable`` (the source could
    not be read), ``cancelled``.  A ``duplicate`` may carry
    ``duplicate-differs``: an instance with this SOP Instance UID is stored
    and its data set is not the one received (the stored one is kept).
    """

    status: Status
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    reason: str | None = None
    code: str | None = None
    source: str | None = None
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate", "replaced")


@dataclass(frozen=True, slots=True)
class ArchiveEvent:
    """What subscribers hear: ``kind`` is ``stored``, ``replaced`` or ``deleted``."""

    kind: str
    level: str
    uid: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    origin: str = ""


E = TypeVar("E")


class EventBus:
    """Subscribers per event class; events are delivered in the thread that publishes them.

    One bus per archive carries the archive's own events
    (:class:`ArchiveEvent`) and those of everything built on its database
    (the orders' :class:`hilum.archive.orders.OrderEvent`), so every object
    working on one archive hears every change, whoever made it.
    """

    def __init__(self) -> None:
        self._subs: dict[type, list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each published event of class ``kind``; returns an unsubscribe function."""
        with self._lock:
            self._subs.setdefault(kind, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = self._subs.get(kind, [])
                if callback in subs:
                    subs.remove(callback)

        return unsubscribe

    def publish(self, event: Any) -> None:
        """Deliver ``event``; a failing subscriber is logged, never propagated to the publisher."""
        with self._lock:
            subs = list(self._subs.get(type(event), ()))
        for cb in subs:
            try:
                cb(event)
            except Exception:  # noqa: BLE001 - a subscriber must not break the change that was made
                log.exception("event subscriber failed on %s", type(event).__name__)
