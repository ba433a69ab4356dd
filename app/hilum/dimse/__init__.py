"""Hilum's DIMSE adapter: the DICOM network node's SCP services and the SCU verbs.

Wire ⇄ archive translation only (../shared/DESIGN.md "Layers"): storage goes
through ``Archive.ingest``, queries through ``Archive.query``.

- :class:`~hilum.dimse.scp.DimseService` — the SCP side, one pynetdicom AE
  built from the config, started and stopped by :class:`hilum.node.Node`.
- :mod:`hilum.dimse.scu` — echo / find / move / get / send against any peer.

Imported lazily so the SCU verbs start without loading the archive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hilum.dimse.scp import DimseService

__all__ = ["DimseService"]


def __getattr__(name: str) -> Any:
    if name == "DimseService":
        from hilum.dimse.scp import DimseService

        return DimseService
    raise AttributeError(name)
