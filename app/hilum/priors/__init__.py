"""Priors: the patient's other studies, found locally and on peers, ranked, and fetched ahead of need.

A layer of its own between the composition root (:mod:`hilum.node`, which
wires prefetch into a running node) and the protocol adapters it uses as a
client (:mod:`hilum.dimse` C-FIND/C-MOVE/C-GET, :mod:`hilum.dicomweb`
QIDO-RS/WADO-RS) over the archive.  No Qt, no VTK: the viewer binds to it.

* :mod:`hilum.priors.finder` — :class:`Prior`, :func:`find_local_priors`,
  :func:`find_remote_priors`, :func:`rank` (issue 15, contract A);
* :mod:`hilum.priors.remote` — the peers and the remote searches, with deadlines;
* :mod:`hilum.priors.prefetch` — rules, triggers, the job queue, the LRU cache of fetched priors.
"""

from hilum.priors.finder import Prior, describe_study, find_local_priors, find_remote_priors, rank

__all__ = ["Prior", "describe_study", "find_local_priors", "find_remote_priors", "rank"]
