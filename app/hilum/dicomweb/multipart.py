"""``multipart/related`` (RFC 2387) as DICOMweb uses it (PS3.18 8.6.1.2).

Writing: :func:`new_boundary`, :func:`part_head` and :func:`closing` build the
byte framing around parts, so a response can stream each part's body straight
from a file.  Reading: :class:`MultipartReader` is a push parser — feed it
chunks as they arrive, it returns events (a part's headers, pieces of its
body, its end) — used by STOW-RS on the server and by the client for WADO-RS
responses, so neither holds a whole study in memory.

Framing (RFC 2046 5.1.1)::

    --BOUNDARY CRLF headers CRLF CRLF body CRLF --BOUNDARY ... CRLF --BOUNDARY-- [epilogue]
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from hilum.errors import HilumError


class MultipartError(HilumError, ValueError):
    """Bytes that are not a well-formed multipart body."""


def new_boundary() -> str:
    return "hilum-" + secrets.token_hex(16)


def part_head(boundary: str, content_type: str, *, first: bool, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The delimiter line and headers that start a part (the CRLF before a delimiter included)."""
    lines = [("" if first else "\r\n") + "--" + boundary, f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str, *, empty: bool = False) -> bytes:
    """The close delimiter (``--BOUNDARY--``) after the last part."""
    return (("" if empty else "\r\n") + "--" + boundary + "--\r\n").encode("latin-1")


def encode(parts: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A whole multipart body from ``(content_type, body)`` pairs (for small messages and tests)."""
    out = bytearray()
    n = 0
    for ctype, body in parts:
        out += part_head(boundary, ctype, first=n == 0)
        out += body
        n += 1
    out += closing(boundary, empty=n == 0)
    return bytes(out)


@dataclass
class PartHeaders:
    """The headers of one part, names lower-cased."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


# Event kinds returned by MultipartReader.feed
HEADERS = "headers"
DATA = "data"
END = "end"


class MultipartReader:
    """Incremental multipart parser.

    ``feed(chunk)`` returns a list of events: ``("headers", PartHeaders)``,
    ``("data", bytes)`` (any number), ``("end", None)`` per part.  ``finish()``
    raises :class:`MultipartError` unless the close delimiter was seen.
    """

    MAX_HEADER_BYTES = 16 * 1024

    def __init__(self, boundary: str | bytes):
        b = boundary.encode("latin-1") if isinstance(boundary, str) else boundary
        if not b or len(b) > 200:
            raise MultipartError("missing or oversized multipart boundary")
        self._dash_boundary = b"--" + b
        self._delimiter = b"\r\n--" + b
        self._buf = bytearray()
        self._state = "preamble"
        self._fresh = True  # nothing of the body seen yet: the first delimiter may come without a CRLF
        self.parts = 0
        self.done = False

    def feed(self, chunk: bytes) -> list[tuple[str, object]]:
        if self.done:
            return []  # the epilogue is ignored
        self._buf += chunk
        events: list[tuple[str, object]] = []
        while True:
            if self._state == "preamble":
                # The first delimiter may start the body without a CRLF before it - only at the very
                # start: after any preamble byte it needs its CRLF.  (Looked for anywhere, a body
                # starting "----BOUNDARY" was cut into parts differently as its bytes arrived in
                # different chunks: tests/test_fuzz_dicomweb.py.)
                if self._fresh:
                    if len(self._buf) < len(self._dash_boundary) and self._dash_boundary.startswith(self._buf):
                        return events  # may still become the first delimiter
                    self._fresh = False
                    if self._buf.startswith(self._dash_boundary):
                        del self._buf[: len(self._dash_boundary)]
                        self._state = "after-delimiter"
                        continue
                i = self._buf.find(self._delimiter)
                if i < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buf) > keep:
                        del self._buf[: len(self._buf) - keep]
                    return events
                del self._buf[: i + len(self._delimiter)]
                self._state = "after-delimiter"
            elif self._state == "after-delimiter":
                if len(self._buf) < 2:
                    return events
                if self._buf[:2] == b"--":
                    self.done = True
                    self._buf.clear()
                    return events
                # Transport padding (linear white space) may follow a delimiter.
                j = 0
                while j < len(self._buf) and self._buf[j] in b" \t":
                    j += 1
                if len(self._buf) < j + 2:
                    return events
                if self._buf[j : j + 2] != b"\r\n":
                    raise MultipartError("delimiter line not followed by CRLF")
                del self._buf[: j + 2]
                self._state = "headers"
            elif self._state == "headers":
                if self._buf.startswith(b"\r\n"):
                    del self._buf[:2]
                    events.append((HEADERS, PartHeaders({})))
                    self._state = "body"
                    continue
                i = self._buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self._buf) > self.MAX_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    return events
                if i > self.MAX_HEADER_BYTES:
                    raise MultipartError("part headers too long")
                raw = bytes(self._buf[:i]).decode("latin-1")
                del self._buf[: i + 4]
                headers: dict[str, str] = {}
                for line in raw.split("\r\n"):
                    name, sep, value = line.partition(":")
                    if not sep or not name.strip():
                        raise MultipartError(f"malformed part header line {line[:60]!r}")
                    headers[name.strip().lower()] = value.strip()
                events.append((HEADERS, PartHeaders(headers)))
                self._state = "body"
            elif self._state == "body":
                i = self._buf.find(self._delimiter)
                if i < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buf) > keep:
                        n = len(self._buf) - keep
                        events.append((DATA, bytes(self._buf[:n])))
                        del self._buf[:n]
                    return events
                if i:
                    events.append((DATA, bytes(self._buf[:i])))
                del self._buf[: i + len(self._delimiter)]
                events.append((END, None))
                self.parts += 1
                self._state = "after-delimiter"

    def finish(self) -> None:
        if not self.done:
            where = "before the first part" if self._state == "preamble" else "inside a part"
            raise MultipartError(f"multipart body ended {where} (no closing delimiter)")


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type (raises :class:`MultipartError`)."""
    from hilum.dicomweb.media import parse_content_type

    _, params = parse_content_type(content_type)
    b = params.get("boundary")
    if not b:
        raise MultipartError("multipart Content-Type without boundary")
    return b


def decode(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Every part of a whole multipart body (for small messages and tests)."""
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    cur: bytearray | None = None
    hdr: dict[str, str] = {}
    for kind, value in reader.feed(body):
        if kind == HEADERS:
            assert isinstance(value, PartHeaders)
            hdr, cur = value.headers, bytearray()
        elif kind == DATA and cur is not None:
            cur += value  # type: ignore[operator,arg-type]
        elif kind == END and cur is not None:
            parts.append((hdr, bytes(cur)))
    reader.finish()
    return parts
