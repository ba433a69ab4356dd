"""THE schema of the index database (SQLAlchemy Core): one ``MetaData`` for every table.

Every table Hilum keeps in the index database is defined here and nowhere
else, so that Alembic's autogenerate (``migrations/env.py`` points at
:data:`metadata`) sees all of them and ``tests/test_archive_schema.py`` can
hold the migrations to the models on SQLite and PostgreSQL:

* the index: patient → study → series → instance (with the patient
  registry's ADT history, ``patient_history``);
* the RIS side (:mod:`hilum.archive.orders`): orders, scheduled and performed
  procedure steps, the HL7 message log;
* the web services' users and API tokens (:mod:`hilum.archive.users`);
* the studies prefetch brought in, for its LRU cache (:mod:`hilum.priors.prefetch`).

Columns hold every attribute that C-FIND (patient- and study-root, all
levels, PS3.4 C.6) and QIDO-RS (PS3.18 10.6, table 10.6.1-5) use as
required or matching keys, plus the computed ones kept as counters
(NumberOfStudyRelatedInstances, ModalitiesInStudy, ...).

Normalised shadow columns make matching index-friendly on both SQLite and
PostgreSQL: person names are stored upper-cased per component group
(``*_pn_a``/``_i``/``_p``) and once more folded as people type them
(``patients.pn_fold``, :mod:`hilum.archive.namefold`), times as fixed-width ``HHMMSS.FFFFFF``, and
study date + time once more as ``study_dt`` for combined range matching
(PS3.4 C.2.2.2.5.2).  The schema is created and changed by Alembic
migrations (``archive/migrations``); this module is their reference.

Demographics corrections (IHE RAD TF-1 Patient Information Reconciliation):
``patients.revision`` is 0 until HL7 ADT creates, changes or merges the
patient, then the key of the ``patient_history`` row that recorded the
change (so revisions never repeat across patients); ``instances.patient_rev``
is the revision whose demographics the stored file is known to carry (-1: it
carries others).  :meth:`hilum.archive.Archive.read_outgoing` returns a file
as stored when the two agree, and corrects its patient module otherwise.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("pn_a", String(324), nullable=False, default=""),
    Column("pn_i", String(324), nullable=False, default=""),
    Column("pn_p", String(324), nullable=False, default=""),
    # The alphabetic group folded as people type it (hilum.archive.namefold): the study browser's
    # and `hilum find --local`'s name search; the DICOM wire never matches on it.
    Column("pn_fold", String(324), nullable=False, default="", server_default=text("''")),
    Column("birth_date", String(8), nullable=False, default=""),
    Column("sex", String(16), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revision", Integer, nullable=False, default=0, server_default="0"),
    Index("ux_patients_id_issuer", "patient_id", "issuer", unique=True),
    Index("ix_patients_pn_a", "pn_a", postgresql_ops={"pn_a": "text_pattern_ops"}),
    Index("ix_patients_pn_i", "pn_i", postgresql_ops={"pn_i": "text_pattern_ops"}),
    Index("ix_patients_pn_p", "pn_p", postgresql_ops={"pn_p": "text_pattern_ops"}),
    Index("ix_patients_pn_fold", "pn_fold", postgresql_ops={"pn_fold": "text_pattern_ops"}),
)

patient_history = Table(
    "patient_history",
    metadata,
    # The pk is the revision the change gave the patient (patients.revision).
    Column("pk", Integer, primary_key=True),
    Column("action", String(16), nullable=False),  # create | update | merge
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, default=""),
    Column("prior_patient_id", String(64), nullable=False, default=""),  # merge: the record merged away
    Column("prior_issuer", String(64), nullable=False, default=""),
    Column("before", Text, nullable=False, default="{}"),  # JSON: the demographics before
    Column("after", Text, nullable=False, default="{}"),  # JSON: the demographics after
    Column("message_type", String(16), nullable=False, default=""),  # e.g. ADT^A08
    Column("sender", String(255), nullable=False, default=""),
    Column("control_id", String(199), nullable=False, default=""),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Index("ix_patient_history_patient", "patient_id", "issuer"),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.pk"), nullable=False),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("study_date", String(8), nullable=False, default=""),
    Column("study_time", String(13), nullable=False, default=""),
    Column("study_dt", String(21), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_description", String(64), nullable=False, default=""),
    Column("referring_physician", String(324), nullable=False, default=""),
    Column("ref_pn_a", String(324), nullable=False, default=""),
    Column("modalities", String(128), nullable=False, default=""),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("specific_character_set", String(128), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_access", DateTime(timezone=True), nullable=True),  # opened/retrieved (storage.touch_study); None: never
    Index("ix_studies_patient", "patient_fk"),
    Index("ix_studies_date", "study_date"),
    Index("ix_studies_dt", "study_dt"),
    Index("ix_studies_accession", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_fk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(64), nullable=False, default=""),
    Column("body_part", String(16), nullable=False, default=""),
    Column("series_date", String(8), nullable=False, default=""),
    Column("series_time", String(13), nullable=False, default=""),
    Column("pps_start_date", String(8), nullable=False, default=""),
    Column("pps_start_time", String(13), nullable=False, default=""),
    Column("frame_of_reference_uid", String(64), nullable=False, default=""),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_series_study", "study_fk"),
    Index("ix_series_modality", "modality", "study_fk"),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_fk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("content_date", String(8), nullable=False, default=""),
    Column("content_time", String(13), nullable=False, default=""),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("source_aet", String(16), nullable=False, default=""),
    Column("origin", String(16), nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("patient_rev", Integer, nullable=False, default=0, server_default="0"),
    # False when this node's online copy was moved to another tier or purged (a copy is in blob_copies);
    # reading the instance brings it back (hilum.archive.tiers) and sets it again.
    Column("online", Boolean, nullable=False, server_default=text("true")),
    Index("ix_instances_series", "series_fk"),
)

# --------------------------------------------------------------------------- the RIS side (hilum.archive.orders)

orders = Table(
    "orders",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.pk", ondelete="CASCADE"), nullable=False),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("placer_number", String(64), nullable=False, default=""),
    Column("filler_number", String(64), nullable=False, default=""),
    Column("requested_procedure_id", String(16), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("code_value", String(16), nullable=False, default=""),
    Column("code_scheme", String(16), nullable=False, default=""),
    Column("code_meaning", String(64), nullable=False, default=""),
    Column("referring_physician", String(324), nullable=False, default=""),
    Column("ref_pn", String(324), nullable=False, default=""),
    Column("requesting_physician", String(324), nullable=False, default=""),
    Column("priority", String(16), nullable=False, default=""),
    Column("reason", String(64), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("source", String(64), nullable=False, default=""),
    Column("images_at", DateTime(timezone=True), nullable=True),
    Column("performed_study_uid", String(64), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_orders_patient", "patient_fk"),
    Index("ix_orders_accession", "accession_number"),
    Index("ix_orders_placer", "placer_number"),
    Index("ix_orders_filler", "filler_number"),
    Index("ix_orders_status", "status"),
)

procedure_steps = Table(
    "procedure_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("order_fk", Integer, ForeignKey("orders.pk", ondelete="CASCADE"), nullable=False),
    Column("sps_id", String(16), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("station_aet", String(16), nullable=False, default=""),
    Column("station_name", String(16), nullable=False, default=""),
    Column("location", String(16), nullable=False, default=""),
    Column("start_date", String(8), nullable=False, default=""),
    Column("start_time", String(13), nullable=False, default=""),
    Column("start_dt", String(21), nullable=False, default=""),
    Column("performer", String(324), nullable=False, default=""),
    Column("performer_pn", String(324), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_sps_order", "order_fk"),
    Index("ix_sps_station", "station_aet", "start_dt"),
    Index("ix_sps_modality", "modality", "start_dt"),
    Index("ix_sps_start", "start_dt"),
    Index("ix_sps_status", "status", "start_dt"),
)

performed_steps = Table(
    "performed_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("mpps_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("station_aet", String(16), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("pps_id", String(16), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("start_date", String(8), nullable=False, default=""),
    Column("start_time", String(13), nullable=False, default=""),
    Column("end_date", String(8), nullable=False, default=""),
    Column("end_time", String(13), nullable=False, default=""),
    Column("study_uid", String(64), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("scheduled_steps", Text, nullable=False, default="[]"),  # JSON list of procedure_steps.pk
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sender", String(255), nullable=False),
    Column("control_id", String(199), nullable=False),
    Column("message_type", String(16), nullable=False),
    Column("ack", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ux_hl7_messages_sender_control", "sender", "control_id", unique=True),
)

# --------------------------------------------------------------------------- web users (hilum.archive.users)

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("user_fk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)

# --------------------------------------------------------------------------- prefetch (hilum.priors.prefetch)

prefetched_studies = Table(
    "prefetched_studies",
    metadata,
    # A study brought in by prefetch, not by anyone asking for it: the cache limit may remove it again
    # (least recently accessed first); a study that arrived any other way is never listed here.
    Column("pk", Integer, primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("source", String(64), nullable=False, default="", server_default=text("''")),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("last_access", DateTime(timezone=True), nullable=False),
    Index("ix_prefetched_last_access", "last_access"),
)

# --------------------------------------------------------------------------- storage policies (hilum.archive.storage)

blob_copies = Table(
    "blob_copies",
    metadata,
    # A copy of an instance held somewhere else than the online store: on a tier ("tier:NAME", written and
    # read back by hilum.archive.tiers) or at a peer ("peer:NAME", confirmed by C-STORE success or Storage
    # Commitment, hilum.replication).  verified_at is set only when the copy is known good (checksum read
    # back / commitment); retention purges an online copy only when a verified one exists elsewhere.
    Column("pk", Integer, primary_key=True),
    Column("instance_fk", Integer, ForeignKey("instances.pk", ondelete="CASCADE"), nullable=False),
    Column("location", String(80), nullable=False),
    Column("key", Text, nullable=False, default="", server_default=text("''")),
    Column("checksum", String(64), nullable=False, default="", server_default=text("''")),
    Column("size", BigInteger, nullable=False, default=0, server_default="0"),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    Column("retain_until", DateTime(timezone=True), nullable=True),  # write-once tiers: no delete before
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_blob_copies_instance_location", "instance_fk", "location", unique=True),
    Index("ix_blob_copies_location", "location"),
)

blob_trash = Table(
    "blob_trash",
    metadata,
    # Online blob keys that may be deleted once no instance row refers to them (storage.reap_trash): the old
    # file of a transcode, a purged online copy, a new file not yet adopted when a crash came.  Crash-safe
    # replacement: note the key here, rename, swap in the index, reap.
    Column("pk", Integer, primary_key=True),
    Column("key", Text, nullable=False),
    Column("reason", String(32), nullable=False, default="", server_default=text("''")),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

protections = Table(
    "protections",
    metadata,
    # Studies and patients that no retention rule may purge (hilum protect).
    Column("pk", Integer, primary_key=True),
    Column("level", String(8), nullable=False),  # PATIENT | STUDY
    Column("uid", String(64), nullable=False),  # PatientID or StudyInstanceUID
    Column("issuer", String(64), nullable=False, default="", server_default=text("''")),
    Column("reason", String(255), nullable=False, default="", server_default=text("''")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_protections_level_uid", "level", "uid", "issuer", unique=True),
)

forward_queue = Table(
    "forward_queue",
    metadata,
    # Instances to send to a destination (hilum.archive.forward): pending -> sent -> committed, or failed
    # (gave up, or refused for good); survives restarts, retried with backoff (next_try).
    Column("pk", Integer, primary_key=True),
    Column("destination", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("state", String(16), nullable=False),  # pending | sent | committed | failed
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("next_try", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=False, default="", server_default=text("''")),
    Column("transaction_uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("claimed_by", String(64), nullable=False, default="", server_default=text("''")),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ux_forward_queue_destination_sop", "destination", "sop_uid", unique=True),
    Index("ix_forward_queue_state", "state", "next_try"),
)

policy_log = Table(
    "policy_log",
    metadata,
    # What the storage policies did, one row per study (or instance) and action: compress, move, recall,
    # purge, delete, forward, backup, restore.  Every purge is logged here and in the node's log.
    Column("pk", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(16), nullable=False),
    Column("level", String(8), nullable=False, default="STUDY", server_default=text("'STUDY'")),
    Column("uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("rule", String(64), nullable=False, default="", server_default=text("''")),
    Column("instances", Integer, nullable=False, default=0, server_default="0"),
    Column("bytes_before", BigInteger, nullable=False, default=0, server_default="0"),
    Column("bytes_after", BigInteger, nullable=False, default=0, server_default="0"),
    Column("detail", Text, nullable=False, default="", server_default=text("''")),
    Column("node", String(64), nullable=False, default="", server_default=text("''")),
    Index("ix_policy_log_action_at", "action", "at"),
)

# --- issue 20 (20a reports): reports, their state changes, the HL7 outbox (migration 0010_reports)

reports = Table(
    "reports",
    metadata,
    # One radiology report (hilum.archive.reports): draft -> preliminary -> final, or amended for a signed
    # addendum (parent_fk: the report it amends).  text: the sections as JSON, an ordered list of
    # {key, title, text}.  sr_sop_uid / pdf_sop_uid: the DICOM copies last stored through ingest.
    Column("pk", Integer, primary_key=True),
    Column("report_id", String(64), nullable=False, unique=True),
    Column("study_uid", String(64), nullable=False),
    Column("accession_number", String(16), nullable=False, default="", server_default=text("''")),
    Column("patient_id", String(64), nullable=False, default="", server_default=text("''")),
    Column("order_fk", Integer, ForeignKey("orders.pk", ondelete="SET NULL"), nullable=True),
    Column("template", String(64), nullable=False, default="", server_default=text("''")),
    Column("state", String(16), nullable=False),
    Column("text", Text, nullable=False, default="[]", server_default=text("'[]'")),
    Column("created_by", String(64), nullable=False, default="", server_default=text("''")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("signed_by", String(64), nullable=False, default="", server_default=text("''")),
    Column("signed_at", DateTime(timezone=True), nullable=True),
    Column("parent_fk", Integer, ForeignKey("reports.pk", ondelete="RESTRICT"), nullable=True),
    Column("sr_sop_uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("pdf_sop_uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("version", Integer, nullable=False, default=1, server_default="1"),
    Index("ix_reports_study", "study_uid"),
    Index("ix_reports_patient", "patient_id"),
    Index("ix_reports_accession", "accession_number"),
)

report_events = Table(
    "report_events",
    metadata,
    # Append-only: every state change of a report, with who and when (written in the change's transaction).
    Column("pk", Integer, primary_key=True),
    Column("report_fk", Integer, ForeignKey("reports.pk", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user", String(64), nullable=False, default="", server_default=text("''")),
    Column("from_state", String(16), nullable=False, default="", server_default=text("''")),
    Column("to_state", String(16), nullable=False),
    Column("detail", Text, nullable=False, default="", server_default=text("''")),
    Index("ix_report_events_report", "report_fk"),
)

hl7_outbox = Table(
    "hl7_outbox",
    metadata,
    # Outgoing HL7 of signed reports (hilum.hl7.outbox): one row per report, kind and endpoint; message is
    # composed once (empty until then) and never changes, so a resend is the same message (same MSH-10).
    # pending -> sent (ACK AA/CA), or failed-ae / failed-ar (stopped, alert), or abandoned (by hand).
    Column("pk", Integer, primary_key=True),
    Column("kind", String(8), nullable=False),  # ORU | MDM
    Column("report_fk", Integer, ForeignKey("reports.pk", ondelete="CASCADE"), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("message", LargeBinary, nullable=False, default=b"", server_default=text("''")),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("next_try_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=False, default="", server_default=text("''")),
    Column("ack_code", String(4), nullable=False, default="", server_default=text("''")),
    Column("ack_text", Text, nullable=False, default="", server_default=text("''")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ux_hl7_outbox_report_kind_endpoint", "report_fk", "kind", "endpoint", unique=True),
    Index("ix_hl7_outbox_state", "state", "next_try_at"),
)

# --- issue 21 (21b de-identification): the node's de-identification mapping table ---

deid_map = Table(
    "deid_map",
    metadata,
    # Original -> replacement of every UID and Patient ID that a de-identification replaced, per project
    # (hilum.archive.deid_store).  Readable only through DeidStore / `hilum anonymize --mapping`.
    Column("pk", Integer, primary_key=True),
    Column("project", String(64), nullable=False, default="", server_default=text("''")),
    Column("kind", String(8), nullable=False),  # "uid" | "patient"
    Column("original", String(128), nullable=False),
    Column("replacement", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_deid_map_project_kind_original", "project", "kind", "original", unique=True),
    Index("ix_deid_map_replacement", "replacement"),
)

# --- issue 19 (19a, AI plugins): the auto-run queue of hilum.ai.rules (archive side: hilum.archive.ai_jobs)
ai_jobs = Table(
    "ai_jobs",
    metadata,
    # One run of a plugin on a series: queued (due at not_before, pushed back while instances keep
    # arriving) -> running -> done | failed | cancelled. Survives restarts: 'running' jobs of a node that
    # stopped go back to 'queued' when the service starts again.
    Column("pk", Integer, primary_key=True),
    Column("plugin", String(64), nullable=False),
    Column("plugin_version", String(32), nullable=False, default="", server_default=text("''")),
    Column("series_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False, default="", server_default=text("''")),
    Column("state", String(16), nullable=False),  # queued | running | done | failed | cancelled
    Column("rule", String(64), nullable=False, default="", server_default=text("''")),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("claimed_by", String(64), nullable=False, default="", server_default=text("''")),  # host.pid running it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=False, default="", server_default=text("''")),
    Column("result_series_uids", Text, nullable=False, default="", server_default=text("''")),  # space separated
    Index("ix_ai_jobs_state", "state", "not_before"),
    Index("ix_ai_jobs_series", "series_uid", "plugin"),
)
