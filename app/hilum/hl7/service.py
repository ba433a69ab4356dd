"""The node's HL7 listener: MLLP over TCP on ``config.bind:config.hl7_port``.

An asyncio server in a background thread (so it starts and stops like the
node's other services); each connection is read frame by frame
(:class:`hilum.hl7.mllp.FrameBuffer`) and every frame gets exactly one answer,
in order (HL7 v2.5 Appendix C, original-mode acknowledgement):

* a complete frame → the :class:`~hilum.hl7.receiver.Receiver`'s ACK/NAK
  (applied on a worker thread, the event loop never waits on the database);
* a frame abandoned by the next ``<VT>``, or that did not end within
  ``frame_timeout`` seconds (``[hl7] frame_timeout``, default 10) → a NAK
  (AR) naming its control ID when its MSH is readable; nothing of it is applied;
* bytes outside any frame → a NAK (AR);
* a connection closed inside a frame → logged; nothing applied, nobody to answer;
* a frame over ``[hl7] max_message_bytes`` → a NAK (AR) as soon as the limit is
  passed, the rest of it skipped unbuffered; no complete message for
  ``[hl7] idle_timeout`` seconds (silence or a trickle) → the connection is
  closed; beyond ``[hl7] max_connections`` a connection is closed at once
  (:class:`hilum.hl7.mllp.MLLPSettings`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from hilum.archive.orders import OrderBook
from hilum.errors import HilumError
from hilum.hl7.message import frame
from hilum.hl7.mllp import FrameBuffer, MLLPSettings
from hilum.hl7.receiver import Receiver, receiver_for

log = logging.getLogger(__name__)


class HL7ServiceError(HilumError):
    """The HL7 listener cannot start (e.g. the port is taken)."""


class HL7Service:
    """MLLP listener applying ADT/ORM messages to the archive; ``start()``/``stop()``.

    ``port=0`` picks a free port (see :attr:`port` after ``start()``).
    """

    name = "hl7"

    def __init__(self, config: Any, archive: Any, *, host: str | None = None, port: int | None = None,
                 frame_timeout: float | None = None, receiver: Receiver | None = None,
                 orders: OrderBook | None = None):
        """``orders``: the order book the composition root built (else one on ``archive``)."""
        self.limits = MLLPSettings.from_config(config)
        self.host = host or getattr(config, "bind", "127.0.0.1")
        self.port = int(getattr(config, "hl7_port", 2575) if port is None else port)
        self.frame_timeout = self.limits.frame_timeout if frame_timeout is None else float(frame_timeout)
        self.receiver = receiver or receiver_for(archive, config, orders=orders)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="hl7-mllp", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise HL7ServiceError("HL7 listener did not start within 30 s")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise HL7ServiceError(f"cannot listen for HL7 on {self.host}:{self.port}: {self._error}")
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, self.host, self.port, reuse_address=True))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            self._loop = None
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=15)
        except Exception:  # noqa: BLE001 - stopping must not raise
            log.exception("closing the HL7 listener failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None
        self._server = None
        log.info("HL7 MLLP listener stopped")

    def __enter__(self) -> HL7Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = writer.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        limits = self.limits
        if len(self._tasks) > limits.max_connections:
            log.warning("HL7 connection from %s refused: %d open (limit %d)", peer, len(self._tasks) - 1,
                        limits.max_connections)
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]
            return
        buf = FrameBuffer(limits.max_message_bytes)
        log.debug("HL7 connection from %s", peer)
        last_message = loop.time()  # idle deadline: from the last complete message, not the last byte
        frame_start: float | None = None  # frame deadline: from the frame's first byte
        try:
            while True:
                now = loop.time()
                wait = last_message + limits.idle_timeout - now
                if frame_start is not None:
                    wait = min(wait, frame_start + self.frame_timeout - now)
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), max(wait, 0.0))
                except TimeoutError:
                    now = loop.time()
                    if frame_start is not None and now >= frame_start + self.frame_timeout:
                        frame_start = None
                        broken = buf.drop_pending()
                        if broken is not None:
                            log.warning("HL7 frame from %s incomplete after %.1f s: rejected", peer,
                                        self.frame_timeout)
                            writer.write(frame(self.receiver.reject_frame(broken.data, broken.error)))
                            await asyncio.wait_for(writer.drain(), limits.idle_timeout)
                    if now >= last_message + limits.idle_timeout:
                        log.info("HL7 connection from %s closed: no complete message for %.0f s", peer,
                                 limits.idle_timeout)
                        break
                    continue
                if not chunk:
                    if buf.buf.strip(b"\r\n\t \x00"):
                        log.warning("HL7 connection from %s closed inside a frame: %d bytes dropped, nothing applied",
                                    peer, len(buf.buf))
                    break
                for fr in buf.feed(chunk):
                    if fr.error:
                        answer = self.receiver.reject_frame(fr.data, fr.error)
                    else:
                        answer = await loop.run_in_executor(None, self.receiver.handle, fr.data,
                                                            str(peer[0]) if peer else "")
                        last_message = loop.time()
                    writer.write(frame(answer))
                    # a sender that never reads its ACKs cannot hold the connection either
                    await asyncio.wait_for(writer.drain(), limits.idle_timeout)
                    frame_start = None
                if buf.pending and frame_start is None:
                    frame_start = loop.time()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except TimeoutError:
            log.info("HL7 connection from %s closed: it read no answer for %.0f s", peer, limits.idle_timeout)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)
