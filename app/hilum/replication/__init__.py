"""Forwarding and replication: the queue of :mod:`hilum.archive.forward` sent to peers (C-STORE, STOW-RS).

A layer of its own between the node and the protocol adapters (it uses both
the DIMSE and the DICOMweb clients, which do not import each other).
"""

from hilum.replication.service import ForwardService, drain

__all__ = ["ForwardService", "drain"]
