"""MLLP framing (HL7 v2.5 Appendix C.4, the Minimal Lower Layer Protocol).

A frame is ``<VT> message <FS><CR>``.  :class:`FrameBuffer` cuts a byte stream
into frames and says what went wrong with the rest: bytes outside any frame,
a frame abandoned by a new ``<VT>`` before its end, a frame that never
ended.  :func:`send` is a small blocking client (one message, one ACK) used
by the outbound hook and the CLI; it waits for the complete ACK frame, with
a timeout, and sets ``TCP_NODELAY``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

from hilum.hl7.message import CR, EB, SB, frame

END = EB + CR


@dataclass(frozen=True)
class Frame:
    """A complete frame's content, or a broken one (``error`` set: ``truncated`` or ``no-start``)."""

    data: bytes
    error: str = ""


class FrameBuffer:
    """Incremental MLLP deframer (bytes in, :class:`Frame` objects out)."""

    def __init__(self, limit: int = 32 * 1024 * 1024):
        self.buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.buf += data
        while True:
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
            if start > 0:
                del self.buf[:start]  # noise between frames (whitespace, stray bytes)
                continue
            # buf starts with SB
            nxt = self.buf.find(SB, 1)
            end = self.buf.find(END)
            if nxt != -1 and (end == -1 or nxt < end):
                yield Frame(bytes(self.buf[1:nxt]), "truncated")
                del self.buf[:nxt]
                continue
            if end == -1:
                if len(self.buf) > self.limit:
                    yield Frame(bytes(self.buf[1:4097]), "too-large")
                    self.buf.clear()
                return
            yield Frame(bytes(self.buf[1:end]))
            del self.buf[: end + len(END)]

    def drop_pending(self) -> Frame | None:
        """Give up on the bytes buffered so far (a frame that never ended), as a broken frame."""
        data = bytes(self.buf)
        self.buf.clear()
        if data.startswith(SB):
            return Frame(data[1:], "truncated")
        if data.strip(b"\r\n\t \x00"):
            return Frame(data, "no-start")
        return None


class MLLPError(OSError):
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
