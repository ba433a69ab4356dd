"""Hilum as a DICOMweb client (PS3.18): a remote server as a study source.

Qt-free logic the workstation binds to (``hilum.ui.remote_source``):

* :meth:`DicomWebClient.search_studies` / ``search_series`` /
  ``search_instances`` — QIDO-RS, answered as rows of the same shape as
  :meth:`hilum.archive.Archive.query` (keyword → DICOM string form, numbers
  as int), so the study browser shows remote and local results alike;
* :meth:`DicomWebClient.open` — a :class:`RemoteStudy` that streams a study or
  series with WADO-RS (``transfer-syntax=*``: no transcoding on the server),
  yields pydicom datasets as they arrive for the viewer and keeps the bytes
  in a temporary folder; :meth:`RemoteStudy.keep` then stores them through
  the one ingest call (``origin="dicomweb"``) when the user asks;
* :meth:`DicomWebClient.retrieve` — a study/series straight into the archive;
* :meth:`DicomWebClient.frames`, :meth:`rendered`, :meth:`metadata`,
  :meth:`datasets_from_frames` — frame-level access for a viewer that wants
  the first image fast;
* :meth:`DicomWebClient.store` — STOW-RS.

HTTP is the standard library's ``http.client`` with one keep-alive
connection per thread, HTTP Basic or a bearer token, and TLS verification on
by default (a CA file may be given for a private CA).  Responses are read as
streams through :class:`hilum.dicomweb.multipart.MultipartReader`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from hilum.archive import Archive, IngestResult, keys_for_level
from hilum.archive.query import FIELDS
from hilum.dicomweb import multipart
from hilum.dicomweb.dicomjson import json_to_row
from hilum.dicomweb.media import DICOM, EVRLE, MULTIPART, OCTET, parse_content_type
from hilum.errors import HilumError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DicomWebError(HilumError):
    """A DICOMweb request that failed: HTTP status (0 when the server could not be reached) and detail."""

    def __init__(self, status: int, detail: str, url: str = ""):
        self.status = status
        self.detail = detail
        self.url = url
        super().__init__(f"DICOMweb {status or 'connection'} error: {detail}" + (f" ({url})" if url else ""))


def _json(data: bytes, where: str) -> Any:
    """A response body parsed as JSON; a body that is not JSON (bytes that are not UTF-8, nesting too
    deep for the parser) is a :class:`DicomWebError`, as any other bad answer from the server (a
    JSONDecodeError, UnicodeDecodeError or RecursionError escaped to the caller before:
    tests/test_fuzz_dicomweb.py)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DicomWebError(0, f"the server's answer is not JSON: {exc}"[:300], where) from None


@dataclass
class DicomWebSource:
    """A remote DICOMweb server: base URL (the ``/dicom-web`` root) and credentials.

    Saved in ``hilum.toml`` under ``[dicomweb_sources.NAME]`` without the
    password (see :func:`save_sources`); a token may be saved.
    """

    name: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    verify_tls: bool = True
    ca_file: str = ""
    timeout: float = 60.0

    def to_toml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"url": self.url}
        if self.username:
            doc["username"] = self.username
        if self.token:
            doc["token"] = self.token
        if not self.verify_tls:
            doc["verify_tls"] = False
        if self.ca_file:
            doc["ca_file"] = self.ca_file
        return doc


def load_sources(cfg: Any) -> list[DicomWebSource]:
    """The remote sources in ``cfg.extra["dicomweb_sources"]``."""
    section = (getattr(cfg, "extra", None) or {}).get("dicomweb_sources", {}) or {}
    out = []
    for name, spec in section.items():
        if isinstance(spec, Mapping) and spec.get("url"):
            out.append(DicomWebSource(name=name, url=str(spec["url"]), username=str(spec.get("username", "")),
                                      token=str(spec.get("token", "")), verify_tls=bool(spec.get("verify_tls", True)),
                                      ca_file=str(spec.get("ca_file", ""))))
    return out


def save_sources(cfg: Any, sources: Iterable[DicomWebSource]) -> None:
    """Write the sources to ``cfg.extra`` and save ``hilum.toml`` (passwords are never written)."""
    cfg.extra["dicomweb_sources"] = {s.name: s.to_toml() for s in sources}
    cfg.save()


class _Connections(threading.local):
    conn: http.client.HTTPConnection | None = None


class DicomWebClient:
    """A client of one :class:`DicomWebSource`; thread-safe (one connection per thread)."""

    def __init__(self, source: DicomWebSource):
        self.source = source
        parsed = urllib.parse.urlsplit(source.url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"DICOMweb URL must be http(s)://host[:port]/path, not {source.url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self._local = _Connections()
        self._all: list[http.client.HTTPConnection] = []  # every thread's, for close_all()
        self._all_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=source.ca_file or None)
            if not source.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx

    # ------------------------------------------------------------------ HTTP

    def _auth_header(self) -> str | None:
        if self.source.token:
            return f"Bearer {self.source.token}"
        if self.source.username:
            raw = f"{self.source.username}:{self.source.password}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._local.conn
        if conn is None:
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.source.timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.source.timeout)
            conn.connect()
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = self._local.conn
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._all_lock:
                if conn in self._all:
                    self._all.remove(conn)

    def close_all(self) -> None:
        """Close the connections of every thread (when the client is no longer used)."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local.conn = None

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        # "*" and "," stay as they are: some servers (Orthanc 1.10) do not decode %2A in QIDO wildcards.
        q = ("?" + urllib.parse.urlencode(list(_flatten(params)), safe="*,")) if params else ""
        return f"{self.prefix}{path}{q}"

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, body: bytes | Iterable[bytes] | None = None,
                ok: tuple[int, ...] = (200,)) -> http.client.HTTPResponse:
        """Send a request and return the open response (the caller reads it to the end)."""
        target = self.url(path, params)
        hdrs = {"User-Agent": "hilum"}
        auth = self._auth_header()
        if auth:
            hdrs["Authorization"] = auth
        hdrs.update(headers or {})
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request(method, target, body=body, headers=hdrs,  # type: ignore[arg-type]
                             encode_chunked=body is not None and not isinstance(body, (bytes, bytearray)))
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
                    BrokenPipeError) as exc:
                self.close()
                if attempt == 2 or (body is not None and not isinstance(body, (bytes, bytearray))):
                    raise DicomWebError(0, str(exc) or type(exc).__name__, target) from exc
            except (OSError, ssl.SSLError) as exc:
                self.close()
                raise DicomWebError(0, str(exc) or type(exc).__name__, target) from exc
        if resp.status not in ok:
            text = resp.read(4096).decode("utf-8", "replace")
            if resp.will_close:
                self.close()
            else:
                resp.read()
            detail = text
            try:
                detail = json.loads(text).get("detail") or json.loads(text).get("error") or text
            except (ValueError, AttributeError):
                pass
            raise DicomWebError(resp.status, (detail or resp.reason).strip()[:300], target)
        return resp

    def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        resp = self.request("GET", path, params=params, headers={"Accept": "application/dicom+json"}, ok=(200, 204))
        data = resp.read()
        if resp.status == 204 or not data.strip():
            return []
        return _json(data, path)

    def _get_objects(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """A JSON array of DICOM JSON objects (PS3.18 F.2), as QIDO-RS and WADO-RS metadata answer."""
        result = self._get_json(path, params)
        if not isinstance(result, list) or not all(isinstance(obj, dict) for obj in result):
            raise DicomWebError(0, "the server's answer is not an array of DICOM JSON objects", path)
        return result

    def _multipart(self, path: str, accept: str, params: Mapping[str, Any] | None = None
                   ) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        """Stream the parts of a multipart response as (headers, body chunks)."""
        resp = self.request("GET", path, params=params, headers={"Accept": accept})
        ctype, cparams = parse_content_type(resp.getheader("Content-Type", ""))
        if ctype != MULTIPART:
            # A server that sends a single part bare (as some do for one instance).
            yield {"content-type": resp.getheader("Content-Type", "")}, iter([resp.read()])
            return
        try:
            reader = multipart.MultipartReader(cparams.get("boundary", ""))
        except multipart.MultipartError as exc:
            self.close()
            raise DicomWebError(resp.status, f"bad multipart response: {exc}") from exc
        headers: dict[str, str] = {}
        chunks: list[bytes] = []
        finished = False
        try:
            while True:
                data = resp.read1(CHUNK)
                if not data:
                    break
                for kind, value in reader.feed(data):
                    if kind == multipart.HEADERS:
                        headers, chunks = value.headers, []  # type: ignore[attr-defined]
                    elif kind == multipart.DATA:
                        chunks.append(value)  # type: ignore[arg-type]
                    elif kind == multipart.END:
                        yield headers, iter(chunks)
                        chunks = []
            resp.read()  # lets http.client mark the response done (read1 does not at the end)
            try:
                reader.finish()
            except multipart.MultipartError as exc:
                raise DicomWebError(resp.status, f"truncated multipart response: {exc}") from exc
            finished = True
        finally:
            if not finished:
                self.close()  # the rest of the response is unread: this connection cannot be reused

    # ------------------------------------------------------------------ QIDO

    def _search(self, path: str, level: str, query: Mapping[str, Any] | None, limit: int | None, offset: int,
                includefield: Iterable[str] | None, fuzzy: bool) -> list[dict[str, Any]]:
        params: dict[str, Any] = {k: v for k, v in (query or {}).items() if v not in (None, "", [], ())}
        for k, v in list(params.items()):
            if isinstance(v, (list, tuple)):
                params[k] = ",".join(str(x) for x in v)
        if limit is not None:
            params["limit"] = limit
        if offset:
            params["offset"] = offset
        if includefield:
            params["includefield"] = ",".join(includefield)
        if fuzzy:
            params["fuzzymatching"] = "true"
        results = self._get_objects(path, params)
        return [self._row(obj, level) for obj in results]

    def _row(self, obj: Mapping[str, Any], level: str) -> dict[str, Any]:
        got = json_to_row(obj)
        row: dict[str, Any] = {}
        for kw in keys_for_level(level):
            kind = FIELDS[kw].kind
            row[kw] = got.pop(kw, None if kind in ("int",) or kw.startswith("NumberOf") else "")
        row.update(got)
        row["_source"] = self.source.name
        return row

    def search_studies(self, query: Mapping[str, Any] | None = None, *, limit: int | None = None, offset: int = 0,
                       includefield: Iterable[str] | None = None, fuzzy: bool = False) -> list[dict[str, Any]]:
        """QIDO-RS studies; ``query`` maps keywords to DICOM matching values (as for ``archive.query``)."""
        return self._search("/studies", "STUDY", query, limit, offset, includefield, fuzzy)

    def search_series(self, study_uid: str | None = None, query: Mapping[str, Any] | None = None, *,
                      limit: int | None = None, offset: int = 0,
                      includefield: Iterable[str] | None = None) -> list[dict[str, Any]]:
        path = f"/studies/{_q(study_uid)}/series" if study_uid else "/series"
        return self._search(path, "SERIES", query, limit, offset, includefield, False)

    def search_instances(self, study_uid: str | None = None, series_uid: str | None = None,
                         query: Mapping[str, Any] | None = None, *, limit: int | None = None, offset: int = 0,
                         includefield: Iterable[str] | None = None) -> list[dict[str, Any]]:
        if study_uid and series_uid:
            path = f"/studies/{_q(study_uid)}/series/{_q(series_uid)}/instances"
        elif study_uid:
            path = f"/studies/{_q(study_uid)}/instances"
        else:
            path = "/instances"
        return self._search(path, "IMAGE", query, limit, offset, includefield, False)

    def query(self, level: str, identifier: Mapping[str, Any] | None = None, *, limit: int | None = None,
              offset: int = 0) -> list[dict[str, Any]]:
        """Same call shape as :meth:`Archive.query`, so a browser can use either."""
        ident = dict(identifier or {})
        level = level.upper()
        if level == "STUDY":
            return self.search_studies(ident, limit=limit, offset=offset)
        if level == "SERIES":
            study = ident.pop("StudyInstanceUID", None)
            return self.search_series(study or None, ident, limit=limit, offset=offset)
        if level in ("IMAGE", "INSTANCE"):
            study = ident.pop("StudyInstanceUID", None)
            series = ident.pop("SeriesInstanceUID", None) if study else None
            return self.search_instances(study or None, series or None, ident, limit=limit, offset=offset)
        raise ValueError(f"DICOMweb search levels are STUDY, SERIES and IMAGE, not {level!r}")

    # ------------------------------------------------------------------ WADO-RS

    @staticmethod
    def _path(study: str, series: str | None = None, sop: str | None = None) -> str:
        p = f"/studies/{_q(study)}"
        if series:
            p += f"/series/{_q(series)}"
            if sop:
                p += f"/instances/{_q(sop)}"
        return p

    def iter_instances(self, study: str, series: str | None = None, sop: str | None = None, *,
                       transfer_syntax: str = "*") -> Iterator[bytes]:
        """Each instance's Part 10 bytes as it arrives (WADO-RS, ``transfer-syntax=*`` by default)."""
        accept = f'{MULTIPART}; type="{DICOM}"; transfer-syntax={transfer_syntax}'
        for _headers, chunks in self._multipart(self._path(study, series, sop), accept):
            yield b"".join(chunks)

    def retrieve(self, archive: Archive, study: str, series: str | None = None, sop: str | None = None, *,
                 progress: Callable[[IngestResult], None] | None = None,
                 cancel: threading.Event | None = None) -> list[IngestResult]:
        """Retrieve a study/series/instance into ``archive`` through the one ingest call."""
        results = []
        for data in self.iter_instances(study, series, sop):
            res = archive.ingest(data, origin="dicomweb")
            results.append(res)
            if progress is not None:
                progress(res)
            if cancel is not None and cancel.is_set():
                self.close()  # drop the rest of the response
                break
        return results

    def open(self, study: str, series: str | None = None, *, cache_dir: str | os.PathLike[str] | None = None
             ) -> RemoteStudy:
        """A study (or series) streamed for viewing, kept locally only on :meth:`RemoteStudy.keep`."""
        return RemoteStudy(self, study, series, cache_dir=cache_dir)

    def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[dict[str, Any]]:
        """WADO-RS metadata: DICOM JSON objects (``pydicom.Dataset.from_json`` reads them)."""
        return self._get_objects(self._path(study, series, sop) + "/metadata")

    def frames(self, study: str, series: str, sop: str, numbers: Iterable[int], *, media_type: str = OCTET,
               transfer_syntax: str | None = EVRLE) -> list[bytes]:
        """Frames (1-based) — native little-endian bytes by default, or e.g. ``image/jls`` bitstreams."""
        frame_list = ",".join(str(int(n)) for n in numbers)
        accept = f'{MULTIPART}; type="{media_type}"' + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")
        path = self._path(study, series, sop) + f"/frames/{frame_list}"
        return [b"".join(chunks) for _h, chunks in self._multipart(path, accept)]

    def rendered(self, study: str, series: str | None = None, sop: str | None = None, *, frame: int | None = None,
                 media_type: str = "image/png", window: tuple[float, float] | None = None,
                 viewport: tuple[int, int] | None = None, thumbnail: bool = False) -> bytes:
        """A rendered image (PS3.18 rendered/thumbnail resources) as bytes of ``media_type``."""
        path = self._path(study, series, sop)
        if frame is not None:
            path += f"/frames/{int(frame)}"
        path += "/thumbnail" if thumbnail else "/rendered"
        params: dict[str, Any] = {}
        if window is not None:
            params["window"] = f"{window[0]:g},{window[1]:g},linear"
        if viewport is not None:
            params["viewport"] = f"{int(viewport[0])},{int(viewport[1])}"
        resp = self.request("GET", path, params=params, headers={"Accept": media_type})
        return resp.read()

    def datasets_from_frames(self, study: str, series: str) -> Iterator[Dataset]:
        """The series as datasets built from metadata + native frames (what web viewers do).

        One metadata request, then one frames request per instance: the
        first image can show before the rest has arrived.
        """
        for obj in self.metadata(study, series):
            pixel = obj.pop("7FE00010", None)
            ds = Dataset.from_json(obj, bulk_data_uri_handler=self._bulk_handler)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
            ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
            if pixel is not None and "Rows" in ds:
                n = int(ds.get("NumberOfFrames", 1) or 1)
                frames = self.frames(study, series, str(ds.SOPInstanceUID), range(1, n + 1))
                ds.PixelData = b"".join(frames)
                ds["PixelData"].VR = "OB" if int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
                if ds.get("PhotometricInterpretation", "").startswith("YBR"):
                    ds.PhotometricInterpretation = "RGB"  # the server decoded the colour to RGB
                if "PlanarConfiguration" in ds:
                    ds.PlanarConfiguration = 0
            yield ds

    def bulkdata(self, uri: str) -> bytes:
        """The value behind a ``BulkDataURI`` of this server's metadata."""
        parts = urllib.parse.urlsplit(uri)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if not parts.path.startswith(self.prefix + "/"):
            raise DicomWebError(0, f"bulk data URI outside this server's root: {uri}")
        got = [b"".join(chunks) for _h, chunks in self._multipart(
            path[len(self.prefix):], f'{MULTIPART}; type="{OCTET}"')]
        return got[0] if got else b""

    def _bulk_handler(self, tag: str, vr: str, uri: str) -> bytes:
        # Private elements and padding are not worth a request each; public ones (LUTs...) are fetched.
        group = int(tag[:4], 16)
        if group % 2 or group == 0xFFFC:
            return b""
        return self.bulkdata(uri)

    # ------------------------------------------------------------------ STOW-RS

    def store(self, instances: Iterable[bytes | Dataset | str | os.PathLike[str]], study: str | None = None
              ) -> dict[str, Any]:
        """STOW-RS; returns the Store Instances Response (DICOM JSON). Raises on 4xx/5xx except 202/409."""
        boundary = multipart.new_boundary()

        def body() -> Iterator[bytes]:
            first = True
            for item in instances:
                data = _part10(item)
                yield multipart.part_head(boundary, DICOM, first=first) + data
                first = False
            yield multipart.closing(boundary, empty=first)

        path = f"/studies/{_q(study)}" if study else "/studies"
        resp = self.request("POST", path, body=body(), ok=(200, 202, 409), headers={
            "Content-Type": f'{MULTIPART}; type="{DICOM}"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        data = resp.read()
        answer = _json(data, path) if data.strip() else {}
        if not isinstance(answer, dict):
            raise DicomWebError(resp.status, "the server's STOW-RS answer is not a DICOM JSON object", path)
        return answer


class RemoteStudy:
    """A study (or series) being streamed from a DICOMweb server for viewing.

    Iterate to get datasets as they arrive (the bytes are cached in a
    temporary folder); :meth:`keep` stores them in the local archive through
    ``archive.ingest`` (fetching what iteration did not reach); :meth:`close`
    deletes the cache.  Usable as a context manager.
    """

    def __init__(self, client: DicomWebClient, study: str, series: str | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None):
        self.client = client
        self.study = study
        self.series = series
        self._dir = Path(tempfile.mkdtemp(prefix="hilum-remote-", dir=cache_dir))
        self.files: list[Path] = []
        self.complete = False

    def __iter__(self) -> Iterator[Dataset]:
        return self.datasets()

    def datasets(self) -> Iterator[Dataset]:
        if self.complete:
            for p in self.files:
                yield pydicom.dcmread(p)
            return
        self.files.clear()
        for i, data in enumerate(self.client.iter_instances(self.study, self.series)):
            path = self._dir / f"{i:06d}.dcm"
            path.write_bytes(data)
            self.files.append(path)
            yield pydicom.dcmread(io.BytesIO(data))
        self.complete = True

    def fetch(self) -> list[Path]:
        """Download everything (if not yet) without decoding; returns the cached files."""
        if not self.complete:
            for _ in self.datasets():
                pass
        return list(self.files)

    def keep(self, archive: Archive, *, progress: Callable[[IngestResult], None] | None = None) -> list[IngestResult]:
        """Store the study in the local archive (the one ingest call, ``origin="dicomweb"``)."""
        results = []
        for p in self.fetch():
            res = archive.ingest(p.read_bytes(), origin="dicomweb")
            results.append(res)
            if progress is not None:
                progress(res)
        return results

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self.files.clear()
        self.complete = False

    def __enter__(self) -> RemoteStudy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteArchiveView:
    """A remote source seen through the archive's query interface (``query``/``count``).

    The study browser runs its searches against either the local archive or
    this, unchanged: QIDO-RS does the matching; ``order_by`` sorts the
    fetched rows here (QIDO has no sort parameter).
    """

    def __init__(self, client: DicomWebClient, max_rows: int = 2000):
        self.client = client
        self.name = client.source.name
        self.max_rows = max_rows

    def query(self, level: str, identifier: Mapping[str, Any] | None = None, *, limit: int | None = None,
              offset: int = 0, order_by: list[str] | None = None) -> list[dict[str, Any]]:
        rows = self.client.query(level, identifier, limit=min(limit or self.max_rows, self.max_rows), offset=offset)
        for key in reversed(order_by or []):
            desc = key.startswith("-")
            k = key.lstrip("-")
            rows.sort(key=lambda r: (r.get(k) is None, r.get(k) if r.get(k) is not None else ""), reverse=desc)
        return rows

    def count(self, level: str, identifier: Mapping[str, Any] | None = None) -> int:
        return len(self.client.query(level, identifier, limit=self.max_rows))


class StudyCache:
    """Remote studies fetched for viewing, held in a temporary archive of their own.

    :meth:`fetch` streams a study (or series) with WADO-RS into the cache
    through ``ingest`` — the viewer opens the cache like any archive;
    :meth:`keep` puts a cached study into the real archive through the one
    ingest call (``origin="dicomweb"``) when the user asks.  :meth:`close`
    deletes the cache.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self._tmp = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hilum-remote-cache-")) if root is None else Path(root)
        self.archive = Archive(self.root)

    def has(self, study: str, series: str | None = None) -> bool:
        ident = {"StudyInstanceUID": study}
        if series:
            ident["SeriesInstanceUID"] = series
        return bool(self.archive.query("SERIES" if series else "STUDY", ident, limit=1))

    def fetch(self, client: DicomWebClient, study: str, series: str | None = None, *,
              progress: Callable[[int, IngestResult], None] | None = None,
              cancel: threading.Event | None = None) -> Archive:
        """Stream ``study`` (or one series) into the cache; returns the cache archive."""
        n = 0
        for data in client.iter_instances(study, series):
            res = self.archive.ingest(data, origin="dicomweb")
            n += 1
            if progress is not None:
                progress(n, res)
            if cancel is not None and cancel.is_set():
                client.close()
                break
        if n == 0:
            raise DicomWebError(404, f"the server sent no instances of study {study}")
        return self.archive

    def keep(self, archive: Archive, study: str, *,
             progress: Callable[[int, IngestResult], None] | None = None) -> list[IngestResult]:
        """Ingest the cached instances of ``study`` into ``archive``."""
        results = []
        for i, row in enumerate(self.archive.instances(study_uid=study), 1):
            res = archive.ingest(row["path"], origin="dicomweb")
            results.append(res)
            if progress is not None:
                progress(i, res)
        return results

    def close(self) -> None:
        self.archive.close()
        if self._tmp:
            shutil.rmtree(self.root, ignore_errors=True)


def _q(uid: str | None) -> str:
    return urllib.parse.quote(uid or "", safe=".")


def _flatten(params: Mapping[str, Any] | None) -> Iterator[tuple[str, str]]:
    for k, v in (params or {}).items():
        if isinstance(v, (list, tuple)):
            for x in v:
                yield k, str(x)
        else:
            yield k, str(v)


def _part10(item: bytes | Dataset | str | os.PathLike[str]) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, Dataset):
        buf = io.BytesIO()
        item.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    return Path(item).read_bytes()
