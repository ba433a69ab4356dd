"""A real MLLP receiver for the report tests (an asyncio listener on 127.0.0.1 in a thread of its own)."""

from __future__ import annotations

import asyncio
import threading

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


class Receiver:
    """A small MLLP listener: records every message and answers an ACK with ``code`` (echoing MSH-10)."""

    def __init__(self, port: int, code: str = "AA"):
        self.port = port
        self.code = code
        self.messages: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(SB)
                data = await reader.readuntil(EB + CR)
                msg = data[:-2]
                self.messages.append(msg)
                control = msg.split(b"\r", 1)[0].split(b"|")[9]
                ack = (
                    b"MSH|^~\\&|HIS||HILUM||20261206000000||ACK^R01|A1|P|2.5\rMSA|"
                    + self.code.encode()
                    + b"|"
                    + control
                    + (b"|Unknown patient" if self.code != "AA" else b"")
                    + b"\r"
                )
                writer.write(SB + ack + EB + CR)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
            )
            ready.set()
            self._loop.run_forever()
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
