"""The PACS core: index, blob store, ingest, query (see ../shared/DESIGN.md)."""

from hilum.archive.archive import Archive, ArchiveEvent, CheckReport, IngestResult, Received
from hilum.archive.query import LEVELS, keys_for_level

__all__ = ["Archive", "ArchiveEvent", "CheckReport", "IngestResult", "LEVELS", "Received", "keys_for_level"]
