"""THE patient registry: one ``upsert`` with one policy of which source wins, for every way in.

Three sources tell the archive who a patient is, and they do not weigh the
same (IHE RAD TF-1 Patient Information Reconciliation, TF-2 RAD-12: the
ADT system is the authority for demographics; an image manager applies its
updates and merges, and does not let the images' own header overwrite them):

==========  ==================  ===================================================
source      unknown patient     known patient
==========  ==================  ===================================================
``adt``     created             every field the message sends replaces the
                                registry's (an HL7 ``""`` clears it); fields it
                                does not send are kept.  Each change bumps the
                                patient's revision and is kept in
                                ``patient_history`` with the message that made it.
``order``   created             fills fields that are empty; never replaces one
                                (an ORM's PID does not override ADT).
``image``   created             fills fields that are empty; never replaces one
                                (an image header never overwrites the registry).
==========  ==================  ===================================================

The three callers are the index writer (:mod:`hilum.archive.index`, for
every image of ``Archive.ingest`` and ``ingest_many``), and the HL7 receiver
through :class:`hilum.archive.orders.OrderTx` (ADT registers, updates and
merges; ORM/OMI create the ordered patient).  Patients are keyed by Patient
ID and Issuer of Patient ID; the name is a DICOM PN kept with its three
upper-cased component groups for matching (``pn_a``/``pn_i``/``pn_p``).

Revisions (see ``schema.py``): a patient's ``revision`` is 0 until ADT
creates, changes or merges it, then the pk of the ``patient_history`` row of
that change, so a revision is never reused by any patient.  The index writer
records on each instance the revision whose demographics its file carries, so
that :meth:`hilum.archive.Archive.read_outgoing` corrects only files that
need it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from hilum.archive.namefold import fold_name
from hilum.archive.schema import orders, patient_history, patients, studies
from hilum.dicom.matching import pn_groups
from hilum.errors import HilumError

log = logging.getLogger(__name__)

Source = Literal["adt", "order", "image"]
SOURCES: tuple[Source, ...] = ("adt", "order", "image")

#: The demographic fields of a patient (PatientInfo attribute → patients column).
FIELDS = {"name": "patient_name", "birth_date": "birth_date", "sex": "sex"}
_LIMITS = {"name": 324, "birth_date": 8, "sex": 16}
_DATE_RE = re.compile(r"\d{8}")


class RegistryError(HilumError):
    """A patient change the registry refuses.

    ``code`` names the cause for the protocol adapters (``missing-value``,
    ``invalid-value``); ``where`` the field of the message (``PID-3``).
    """

    def __init__(self, code: str, message: str, *, where: str = ""):
        self.code = code
        self.where = where
        super().__init__(message)


@dataclass(slots=True)
class PatientInfo:
    """Patient demographics as a source states them.

    ``None`` means "not said: keep what the registry has"; ``""`` clears
    (HL7's ``""``, v2.5 2.5.3; only ADT may clear).  ``name`` is a DICOM PN
    (``Family^Given^Middle^Prefix^Suffix``).
    """

    patient_id: str
    issuer: str = ""
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None

    @classmethod
    def from_record(cls, patient: Mapping[str, Any]) -> PatientInfo:
        """What an image header says (``IndexRecord.patient``): every field stated, empty or not."""
        return cls(str(patient["patient_id"]), str(patient["issuer"]), str(patient["patient_name"]),
                   str(patient["birth_date"]), str(patient["sex"]))

    @property
    def key(self) -> tuple[str, str]:
        return (self.patient_id, self.issuer)


@dataclass(frozen=True, slots=True)
class MessageRef:
    """The message behind a change, for the history: ``ADT^A08`` from ``sender`` with ``control_id``."""

    message_type: str = ""
    sender: str = ""
    control_id: str = ""


@dataclass(frozen=True, slots=True)
class PatientState:
    """A patient as the registry holds it now."""

    pk: int
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    revision: int

    def demographics(self) -> dict[str, str]:
        return {"name": self.name, "birth_date": self.birth_date, "sex": self.sex}

    def carried_by(self, patient: Mapping[str, Any]) -> bool:
        """Whether an image header (``IndexRecord.patient``) carries exactly these demographics."""
        return (patient["patient_id"] == self.patient_id and patient["issuer"] == self.issuer
                and patient["patient_name"] == self.name and patient["birth_date"] == self.birth_date
                and patient["sex"] == self.sex)


def _now() -> datetime:
    return datetime.now(UTC)


def pn_columns(name: str) -> dict[str, str]:
    """The ``patients`` columns of a PN: the name, its upper-cased component groups, and its
    alphabetic group folded as people type it (:mod:`hilum.archive.namefold`)."""
    a, i, p = pn_groups(name)
    return {"patient_name": name, "pn_a": a, "pn_i": i, "pn_p": p, "pn_fold": fold_name(name)}


def _clean(info: PatientInfo, source: Source) -> PatientInfo:
    """Check and trim what a message states (PS3.5 6.2 lengths: LO 64, PN 324...).

    An image header is taken as it is (its values come from the file, which
    is stored as received; ``hilum.dicom.attributes`` validated it).
    """
    if source == "image":
        return info
    if not info.patient_id:
        raise RegistryError("missing-value", "patient identifier missing", where="PID-3")
    if len(info.patient_id) > 64:
        raise RegistryError("invalid-value", "patient identifier longer than 64 characters", where="PID-3")
    if info.birth_date and not _DATE_RE.fullmatch(info.birth_date):
        raise RegistryError("invalid-value", f"PID-7: invalid date {info.birth_date!r} (expected YYYYMMDD)",
                            where="PID-7")
    values = {f: (None if getattr(info, f) is None else str(getattr(info, f))[:n]) for f, n in _LIMITS.items()}
    return PatientInfo(info.patient_id, info.issuer[:64], **values)


def changes(state: PatientState | None, info: PatientInfo, source: Source) -> dict[str, str]:
    """THE policy (module docstring): the demographic fields ``source`` changes, ``{field: new value}``.

    For an unknown patient (``state`` None) every stated field is taken.
    """
    out: dict[str, str] = {}
    for f in FIELDS:
        value = getattr(info, f)
        if value is None:
            continue
        if state is None:
            if value:
                out[f] = value
            continue
        current = getattr(state, f)
        if source == "adt":
            if value != current:
                out[f] = value
        elif not current and value:
            out[f] = value
    return out


def _columns(values: Mapping[str, str]) -> dict[str, str]:
    cols: dict[str, str] = {}
    for f, v in values.items():
        if f == "name":
            cols.update(pn_columns(v))
        else:
            cols[FIELDS[f]] = v
    return cols


_BY_KEY = select(patients).where(patients.c.patient_id == bindparam("pid"), patients.c.issuer == bindparam("issuer"))
_BY_PK = select(patients).where(patients.c.pk == bindparam("pk"))
_BY_IDS = select(patients).where(patients.c.patient_id.in_(bindparam("pids", expanding=True)))
_UPDATE = update(patients).where(patients.c.pk == bindparam("ppk"))


def _state(row: Any) -> PatientState:
    return PatientState(int(row.pk), row.patient_id, row.issuer, row.patient_name, row.birth_date, row.sex,
                        int(row.revision or 0))


class PatientRegistry:
    """The patients of one index database (thread-safe; every change inside the caller's transaction).

    Keeps a small cache of :class:`PatientState` by pk for the index writer's
    hot path; a change made here drops the patient from it.  A cache read by
    one process while another node (sharing PostgreSQL) changes the patient is
    harmless: an instance is only ever recorded with a revision whose values
    were compared with its header (see :meth:`revision_for`).
    """

    CACHE = 4096

    def __init__(self, dialect: str, *, on_merge: Callable[[], None] | None = None):
        """``on_merge`` is called after a merge moved studies (the index writer forgets its cached keys)."""
        self._on_merge = on_merge
        ins = pg_insert(patients) if dialect == "postgresql" else sqlite_insert(patients)
        self._insert_ignore = ins.on_conflict_do_nothing(index_elements=["patient_id", "issuer"])
        self._insert_returning = self._insert_ignore.returning(patients.c.patient_id, patients.c.issuer,
                                                                patients.c.pk)
        self._cache: OrderedDict[int, PatientState] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ reading

    def state(self, conn: Connection, pk: int, *, fresh: bool = False) -> PatientState | None:
        """The patient with ``pk``, or None; from the cache unless ``fresh``."""
        if not fresh:
            with self._lock:
                st = self._cache.get(pk)
            if st is not None:
                return st
        row = conn.execute(_BY_PK, {"pk": pk}).first()
        if row is None:
            return None
        st = _state(row)
        self._remember(st)
        return st

    def find(self, conn: Connection, patient_id: str, issuer: str = "") -> PatientState | None:
        row = conn.execute(_BY_KEY, {"pid": patient_id, "issuer": issuer}).first()
        return None if row is None else _state(row)

    def revision_for(self, conn: Connection, pk: int, patient: Mapping[str, Any]) -> int:
        """The revision to record on an instance of patient ``pk`` whose header says ``patient``.

        0 while ADT never touched the patient (files go out as stored); else
        the current revision if the header carries its demographics, -1 if not
        (:meth:`hilum.archive.Archive.read_outgoing` corrects it).
        """
        st = self.state(conn, pk)
        if st is None:
            return -1
        if st.revision == 0:
            return 0
        return st.revision if st.carried_by(patient) else -1

    def history(self, conn: Connection, patient_id: str, issuer: str = "") -> list[dict[str, Any]]:
        """The ADT changes of a patient (as the surviving or the merged-away record), oldest first."""
        h = patient_history.c
        rows = conn.execute(select(patient_history).where(
            ((h.patient_id == patient_id) & (h.issuer == issuer))
            | ((h.prior_patient_id == patient_id) & (h.prior_issuer == issuer))).order_by(h.pk)).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["before"], d["after"] = json.loads(d["before"]), json.loads(d["after"])
            out.append(d)
        return out

    def aliases(self, conn: Connection, patient_id: str, issuer: str = "") -> list[tuple[str, str]]:
        """Every (Patient ID, issuer) that HL7 ADT merges tie to this one, itself first.

        A merge (A40, IHE RAD-12) moves the prior record's studies to the surviving one and
        removes the prior record, but the prior ID lives on elsewhere: on a remote archive that
        never heard the merge, and on images that arrive later still carrying it.  The history's
        ``merge`` rows link the two IDs both ways; the links are followed transitively (A merged
        into B, B into C: all three), so the same person is found under every ID he had.
        """
        h = patient_history.c
        seen: list[tuple[str, str]] = [(patient_id, issuer)]
        todo = [(patient_id, issuer)]
        while todo and len(seen) < 256:  # bounded: a pathological history cannot loop or explode
            pid, iss = todo.pop()
            rows = conn.execute(select(h.patient_id, h.issuer, h.prior_patient_id, h.prior_issuer).where(
                h.action == "merge",
                ((h.patient_id == pid) & (h.issuer == iss)) | ((h.prior_patient_id == pid) & (h.prior_issuer == iss)),
            )).all()
            for r in rows:
                for key in ((r[0], r[1]), (r[2], r[3])):
                    if key[0] and key not in seen:
                        seen.append(key)
                        todo.append(key)
        return seen

    def _remember(self, st: PatientState) -> None:
        with self._lock:
            self._cache[st.pk] = st
            self._cache.move_to_end(st.pk)
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)

    def forget(self, *pks: int) -> None:
        with self._lock:
            for pk in pks:
                self._cache.pop(pk, None)

    # ------------------------------------------------------------ writing

    def upsert(self, conn: Connection, info: PatientInfo, source: Source, *,
               message: MessageRef | None = None) -> int:
        """The patient's pk, created or changed by what ``source`` states (the policy above)."""
        return self.upsert_changed(conn, info, source, message=message)[0]

    def upsert_changed(self, conn: Connection, info: PatientInfo, source: Source, *,
                       message: MessageRef | None = None) -> tuple[int, bool]:
        """:meth:`upsert`, and whether the registry changed (the patient created, or a field set)."""
        return self._upsert(conn, [info], source, message)[_clean(info, source).key]

    def upsert_many(self, conn: Connection, infos: Sequence[PatientInfo], source: Source) -> dict[tuple[str, str], int]:
        """:meth:`upsert` for many (the index writer's batches): ``{(patient ID, issuer): pk}``.

        Several statements of one patient are applied in order, as the same
        upserts one after the other would; lookups and inserts go a table at a
        time (one SELECT per 500 IDs, one INSERT for the new patients).
        """
        return {k: pk for k, (pk, _) in self._upsert(conn, infos, source, None).items()}

    def _upsert(self, conn: Connection, infos: Sequence[PatientInfo], source: Source,
                message: MessageRef | None) -> dict[tuple[str, str], tuple[int, bool]]:
        if source not in SOURCES:
            raise ValueError(f"unknown patient source {source!r}")
        cleaned = [_clean(i, source) for i in infos]
        by_key: dict[tuple[str, str], list[PatientInfo]] = {}
        for info in cleaned:
            by_key.setdefault(info.key, []).append(info)
        found: dict[tuple[str, str], PatientState] = {}
        pids = sorted({k[0] for k in by_key})
        for i in range(0, len(pids), 500):
            for row in conn.execute(_BY_IDS, {"pids": pids[i:i + 500]}):
                if (row.patient_id, row.issuer) in by_key:
                    found[(row.patient_id, row.issuer)] = _state(row)
        now = _now()
        out: dict[tuple[str, str], tuple[int, bool]] = {}
        new_rows: dict[tuple[str, str], dict[str, Any]] = {}
        for key, stated in by_key.items():
            st = found.get(key)
            if st is None:
                # A new patient: the first statement creates it, the next ones apply to what it made.
                values: dict[str, str] = {}
                current: PatientState | None = None
                for info in stated:
                    values.update(changes(current, info, source))
                    current = _as_state(values)
                new_rows[key] = {"patient_id": key[0], "issuer": key[1], **_columns(
                    {f: values.get(f, "") for f in FIELDS}), "created_at": now, "revision": 0}
                continue
            out[key] = (st.pk, self._apply(conn, st, stated, source, message, now))
        if new_rows:
            inserted: dict[tuple[str, str], int] = {}
            for pid, issuer, pk in conn.execute(self._insert_returning, list(new_rows.values())):
                inserted[(pid, issuer)] = int(pk)
            for key, new_row in new_rows.items():
                pk = inserted.get(key)
                if pk is None:  # inserted meanwhile by another node sharing the database: apply as a change
                    st = self.find(conn, *key)
                    assert st is not None
                    out[key] = (st.pk, self._apply(conn, st, by_key[key], source, message, now))
                    continue
                out[key] = (pk, True)
                if source == "adt":
                    after = {f: new_row[FIELDS[f]] for f in FIELDS}
                    rev = self._record(conn, "create", key, {}, after, message, now)
                    conn.execute(_UPDATE, {"ppk": pk, "revision": rev})
        return out

    def _apply(self, conn: Connection, st: PatientState, stated: Sequence[PatientInfo], source: Source,
               message: MessageRef | None, now: datetime) -> bool:
        """Apply statements to a known patient: the policy's changes, and for ADT the history and revision."""
        before = st.demographics()
        values: dict[str, str] = {}
        current = st
        for info in stated:
            ch = changes(current, info, source)
            if ch:
                values.update(ch)
                current = _replace(current, ch)
        if not values:
            return False
        cols: dict[str, Any] = _columns(values)
        if source == "adt":
            after = {**before, **values}
            cols["revision"] = self._record(conn, "update", (st.patient_id, st.issuer), before, after, message, now)
        conn.execute(_UPDATE, {"ppk": st.pk, **cols})
        self.forget(st.pk)
        return True

    def merge(self, conn: Connection, surviving: PatientInfo, prior_id: str, prior_issuer: str = "", *,
              message: MessageRef | None = None) -> bool:
        """Merge the prior patient into the surviving one (HL7 ADT^A40, IHE RAD-12).

        The surviving record is created if unknown and updated from
        ``surviving`` (as ADT); the prior record's studies and orders move to
        it and the prior record goes.  The surviving patient gets a new
        revision (so every moved file goes out with its identity), and the
        merge is kept in the history.  Returns False when the prior patient is
        unknown (nothing moved).
        """
        if not prior_id:
            raise RegistryError("missing-value", "prior patient identifier missing", where="MRG-1")
        keep = self.upsert(conn, surviving, "adt", message=message)
        prior = self.find(conn, prior_id, prior_issuer)
        if prior is None:
            return False
        if prior.pk == keep:
            return True
        survivor = self.state(conn, keep)
        assert survivor is not None
        now = _now()
        conn.execute(update(studies).where(studies.c.patient_fk == prior.pk).values(patient_fk=keep))
        conn.execute(update(orders).where(orders.c.patient_fk == prior.pk).values(patient_fk=keep, updated_at=now))
        conn.execute(delete(patients).where(patients.c.pk == prior.pk))
        rev = self._record(conn, "merge", (survivor.patient_id, survivor.issuer), prior.demographics(),
                           survivor.demographics(), message, now, prior=(prior.patient_id, prior.issuer))
        conn.execute(_UPDATE, {"ppk": keep, "revision": rev})
        self.forget(keep, prior.pk)
        if self._on_merge is not None:
            self._on_merge()
        log.info("patient merged into the surviving record (%d)", keep)
        return True

    @staticmethod
    def _record(conn: Connection, action: str, key: tuple[str, str], before: Mapping[str, str],
                after: Mapping[str, str], message: MessageRef | None, now: datetime,
                prior: tuple[str, str] = ("", "")) -> int:
        """Keep one ADT change in the history; its pk is the patient's new revision."""
        m = message or MessageRef()
        res = conn.execute(insert(patient_history).values(
            action=action, patient_id=key[0], issuer=key[1], prior_patient_id=prior[0], prior_issuer=prior[1],
            before=json.dumps(dict(before), ensure_ascii=False), after=json.dumps(dict(after), ensure_ascii=False),
            message_type=m.message_type[:16], sender=m.sender[:255], control_id=m.control_id[:199], changed_at=now))
        assert res.inserted_primary_key is not None
        return int(res.inserted_primary_key[0])


def _as_state(values: Mapping[str, str]) -> PatientState:
    return PatientState(0, "", "", values.get("name", ""), values.get("birth_date", ""), values.get("sex", ""), 0)


def _replace(st: PatientState, values: Mapping[str, str]) -> PatientState:
    d = {**st.demographics(), **values}
    return PatientState(st.pk, st.patient_id, st.issuer, d["name"], d["birth_date"], d["sex"], st.revision)
