"""A TCP proxy between clients and a broker that a test can cut and restore, or that
terminates TLS in front of it.

Runs its own event loop in a thread, so synchronous tests can drive it. While cut, every
open connection is closed and new ones are refused (nothing listens), as when a network
partition or a broker outage takes the broker away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading


class TcpProxy:
    def __init__(
        self,
        listen_port: int,
        target_port: int,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: terminate TLS here (a TLS listener in front of a plaintext broker)."""
        self.host, self.listen_port, self.target_port = host, listen_port, target_port
        self.ssl_context = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def start(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        self.cut()
        self._call(self._cancel_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _cancel_connections(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.listen_port, reuse_address=True, ssl=self.ssl_context
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def admit(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        broker_reader: asyncio.StreamReader,
        broker_writer: asyncio.StreamWriter,
    ) -> bool:
        """Called once per connection before bytes flow freely; False closes it. A subclass
        may talk to the client first (a login)."""
        return True

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, broker_writer))
        try:
            admitted = await self.admit(client_reader, client_writer, broker_reader, broker_writer)
        except (OSError, asyncio.IncompleteReadError):
            admitted = False
        if not admitted:
            client_writer.transport.abort()
            broker_writer.transport.abort()
            self._writers.difference_update((client_writer, broker_writer))
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))
        self._writers.difference_update((client_writer, broker_writer))
