"""MLLP framing (HL7 v2.5 Appendix C.4, the Minimal Lower Layer Protocol).

A frame is ``<VT> message <FS><CR>``.  :class:`FrameBuffer` cuts a byte stream
into frames and says what went wrong with the rest: bytes outside any frame,
a frame abandoned by a new ``<VT>`` before its end, a frame that never
ended, a frame larger than the limit.  A frame over the limit is reported
once, as soon as the limit is passed, and the rest of it is skipped as it
arrives (up to its ``<FS><CR>``, or the next ``<VT>``) without being kept:
the buffer never holds more than ``limit`` bytes plus one read.

:class:`MLLPSettings` are the listener's bounds, from ``[hl7]`` in
``hilum.toml``::

    [hl7]
    idle_timeout = 600          # seconds without a complete message: the connection is closed
    frame_timeout = 10          # seconds from a frame's first byte to its end: else NAK (AR) and dropped
    max_message_bytes = 4194304 # a larger message is refused (NAK AR) without being buffered
    max_connections = 64        # open MLLP connections; more are closed at once

An HL7 sender keeps one connection open and reconnects when it was closed
(HL7 v2.5 Appendix C.4: the lower layer may close a connection at any time),
so closing idle connections costs a reconnect and frees the slot.  A
sender trickling bytes gets a NAK after ``frame_timeout`` and is closed after
``idle_timeout`` like a silent one: both deadlines count from the frame's (or
the last complete message's) time, never from the last byte.

:func:`send` is a small blocking client (one message, one ACK) used
by the outbound hook and the CLI; it waits for the complete ACK frame, with
a timeout, and sets ``TCP_NODELAY``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from hilum.errors import ConfigError, HilumError
from hilum.hl7.message import CR, EB, SB, frame

END = EB + CR
MAX_MESSAGE_BYTES = 4 << 20


@dataclass(frozen=True)
class MLLPSettings:
    """Bounds of the MLLP listener (``[hl7]`` keys of the same names; see the module's docstring)."""

    idle_timeout: float = 600.0
    frame_timeout: float = 10.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_connections: int = 64

    @classmethod
    def from_config(cls, cfg: Any) -> MLLPSettings:
        """From ``cfg.extra["hl7"]`` (other ``[hl7]`` keys belong to the receiver); bad values are ConfigError."""
        section = (getattr(cfg, "extra", None) or {}).get("hl7", {}) or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in section:
                continue
            v = section[f.name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ConfigError(f"[hl7] {f.name} must be a positive number, got {v!r}")
            if f.type in (int, "int") and v != int(v):
                raise ConfigError(f"[hl7] {f.name} must be a whole number, got {v!r}")
            values[f.name] = int(v) if f.type in (int, "int") else float(v)
        return cls(**values)


@dataclass(frozen=True)
class Frame:
    """A complete frame's content, or a broken one (``error`` set: ``truncated`` or ``no-start``)."""

    data: bytes
    error: str = ""


class FrameBuffer:
    """Incremental MLLP deframer (bytes in, :class:`Frame` objects out), holding at most ``limit`` bytes."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES):
        self.buf = bytearray()
        self.limit = limit
        self.skipping = False  # inside a frame already reported too large: its bytes are dropped
        self._scanned = 0  # bytes of an open frame already searched for <FS><CR>

    @property
    def pending(self) -> bool:
        """Whether a frame has begun and not ended (or junk is waiting for its end)."""
        return self.skipping or bool(self.buf.strip(b"\r\n\t \x00"))

    def _skip(self) -> bool:
        """Drop the rest of a too-large frame; True once its end (or a new start block) was reached."""
        end = self.buf.find(END)
        start = self.buf.find(SB)
        if end == -1 and start == -1:
            keep = self.buf[-1:] if self.buf[-1:] == EB else b""  # an <FS> whose <CR> is in the next read
            self.buf[:] = keep
            return False
        if start != -1 and (end == -1 or start < end):
            del self.buf[:start]
        else:
            del self.buf[: end + len(END)]
        self.skipping = False
        return True

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.buf += data
        while True:
            if self.skipping and not self._skip():
                return
            if not self.buf.startswith(SB):
                start = self.buf.find(SB)
                end = self.buf.find(END)
                if end == -1 and start == -1:
                    if self.buf.strip(b"\r\n\t \x00") == b"":
                        self.buf.clear()
                    elif len(self.buf) > self.limit:
                        yield Frame(bytes(self.buf[:4096]), "no-start")
                        self.buf.clear()
                    return
                if start == -1 or (end != -1 and end < start):
                    # An end block with no start block before it.
                    junk = bytes(self.buf[:end])
                    del self.buf[: end + len(END)]
                    if junk.strip(b"\r\n\t \x00"):
                        yield Frame(junk, "no-start")
                    continue
                del self.buf[:start]  # noise between frames (whitespace, stray bytes)
                self._scanned = 0
            # buf starts with SB; search only what was not searched before (a long frame arrives in many reads)
            from_ = max(1, self._scanned - len(END) + 1)
            nxt = self.buf.find(SB, from_)
            end = self.buf.find(END, from_)
            if nxt != -1 and (end == -1 or nxt < end):
                yield Frame(bytes(self.buf[1 : min(nxt, 4097)]), "too-large" if nxt - 1 > self.limit else "truncated")
                del self.buf[:nxt]
                self._scanned = 0
                continue
            if end == -1:
                self._scanned = len(self.buf)
                if len(self.buf) > self.limit + 2:  # <VT>, the message, maybe the <FS> of its end
                    yield Frame(bytes(self.buf[1:4097]), "too-large")
                    self.buf.clear()
                    self._scanned = 0
                    self.skipping = True
                return
            self._scanned = 0
            if end - 1 > self.limit:
                yield Frame(bytes(self.buf[1:4097]), "too-large")
            else:
                yield Frame(bytes(self.buf[1:end]))
            del self.buf[: end + len(END)]

    def drop_pending(self) -> Frame | None:
        """Give up on the bytes buffered so far (a frame that never ended), as a broken frame.

        A too-large frame being skipped was reported already: None.
        """
        data = bytes(self.buf)
        self.buf.clear()
        self._scanned = 0
        if self.skipping:
            self.skipping = False
            return None
        if data.startswith(SB):
            return Frame(data[1:], "truncated")
        if data.strip(b"\r\n\t \x00"):
            return Frame(data, "no-start")
        return None


class MLLPError(HilumError, OSError):
    """The peer closed, timed out or answered with something that is not an MLLP frame."""


def send(host: str, port: int, message: bytes, *, timeout: float = 30.0) -> bytes:
    """Send one message (unframed bytes) and return the answer's bytes (unframed)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return exchange(sock, message)


def exchange(sock: socket.socket, message: bytes) -> bytes:
    """Send one framed message on an open socket and read one framed answer."""
    sock.sendall(frame(message))
    buf = FrameBuffer()
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise MLLPError(f"no answer within {sock.gettimeout()} s") from exc
        if not chunk:
            raise MLLPError("connection closed before an answer")
        for fr in buf.feed(chunk):
            if fr.error:
                raise MLLPError(f"malformed answer frame ({fr.error})")
            return fr.data
