"""DICOMweb (PS3.18): Hilum's server and client (see ../shared/DESIGN.md).

Server (Starlette on uvicorn, rooted at ``/dicom-web`` and ``/wado``):
:mod:`.server` (routes, middleware), :mod:`.qido` (Search), :mod:`.wado`
(Retrieve: instances, metadata, frames, bulk data, rendered, thumbnails),
:mod:`.wado_uri`, :mod:`.stow` (Store), :mod:`.auth` (Basic/bearer, roles),
:mod:`.settings` (``[web]`` in hilum.toml), :mod:`.service` (node service).
Shared protocol pieces: :mod:`.multipart`, :mod:`.media` (Accept, transfer
syntaxes), :mod:`.dicomjson` (PS3.18 F.2), :mod:`.frames` (pixel data, transcoding).
Client: :mod:`.client` (QIDO rows like ``archive.query``, WADO-RS into the
archive through ingest, frames for a viewer, STOW-RS).
"""
