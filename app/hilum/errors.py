"""The project's error classes (STYLE.md §9): one base, a few subclasses with fields a UI can show."""

from __future__ import annotations


class HilumError(Exception):
    """Base of every error Hilum raises on purpose."""


class RejectedInstance(HilumError):
    """An instance that cannot be stored as it is.

    ``code`` is the machine reason protocol adapters map to a status (the
    same codes as :attr:`hilum.archive.IngestResult.code`: ``not-dicom``,
    ``truncated``, ``invalid-uid``...); ``reason`` says it in words.  Ingest
    never lets one escape (STYLE.md §19, failures as values): it becomes a
    rejected :class:`~hilum.archive.IngestResult`.  The domain raises the
    subclass :class:`hilum.dicom.attributes.InvalidInstance`.
    """

    def __init__(self, code: str, reason: str, sop_instance_uid: str | None = None, source: str | None = None):
        self.code = code
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(f"{reason}{where}")


class StorageFull(HilumError):
    """The blob store cannot write: disk full, read-only, or quota reached."""


class NotFound(HilumError):
    """A patient, study, series or instance that the archive does not hold."""

    def __init__(self, level: str, uid: str):
        self.level = level
        self.uid = uid
        super().__init__(f"no {level} {uid!r} in the archive")


class ConfigError(HilumError):
    """hilum.toml or a command-line option is invalid."""


class DowngradeRefused(HilumError):
    """A data folder written by a newer Hilum than this one: an index schema or a ``hilum.toml`` format it does not know.

    ``data_dir`` is the folder, ``found`` what was found there (schema revisions or a config format),
    ``backups`` the backups taken before earlier upgrades of that folder (newest first), which the
    message lists; the workstation shows the message in a dialog, every verb prints it as one line.
    """

    def __init__(self, message: str, *, data_dir: str, found: list[str], backups: list[str] | None = None):
        self.data_dir = data_dir
        self.found = found
        self.backups = list(backups or [])
        super().__init__(message)
