"""A fault-injecting TCP proxy for chaos runs: it forwards one listening port on 127.0.0.1 to a
target, and on command resets its connections, stalls them (a network partition: nothing moves,
nothing is lost, the peers' own deadlines must notice) or delays every chunk.

It runs its own event loop in a daemon thread, so a synchronous harness can put it between
processes (edge -> stage 0, stage -> next stage) and command it from anywhere.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

CHUNK = 256 * 1024
PIECE = 4096  # what a bandwidth-capped direction sends at a time


class _Link:
    """One proxied connection: per direction, a reader that stamps each chunk with its due time and
    a writer that forwards it then (latency without a bandwidth cap), unless the proxy is stalled."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter, target: asyncio.StreamWriter):
        self.proxy = proxy
        self.writers = (client, target)

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uplink: bool = False) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)  # then the reader waits: backpressure
        forward = asyncio.create_task(self._forward(queue, writer, uplink))
        try:
            while data := await reader.read(CHUNK):
                await queue.put((time.monotonic() + self.proxy.delay_s, data))
            await queue.put((0.0, b""))
            await forward
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            forward.cancel()
            self.close()

    async def _forward(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, uplink: bool) -> None:
        free_at = 0.0  # uplink cap: when the link is free for the next piece
        try:
            while (item := await queue.get())[1]:
                due, data = item
                if (wait_s := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait_s)
                await self.proxy._gate()  # a stall holds data here (the peers' buffers fill, as in a partition)
                rate = self.proxy.uplink_bytes_s if uplink else None
                for i in range(0, len(data), PIECE if rate else len(data)):
                    if rate:  # a bandwidth cap: each piece leaves once the previous one has "crossed"
                        free_at = max(free_at, time.monotonic())
                        if (wait_s := free_at - time.monotonic()) > 0:
                            await asyncio.sleep(wait_s)
                        free_at += min(PIECE, len(data) - i) / rate
                    writer.write(data[i : i + (PIECE if rate else len(data))])
                    await writer.drain()
        except (ConnectionError, OSError):
            self.close()

    def close(self, reset: bool = False) -> None:
        for w in self.writers:
            if reset:  # SO_LINGER 0: close() sends RST, the peer sees "connection reset"
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.transport.abort()
            else:
                w.close()
        self.proxy.links.discard(self)


class FaultProxy:
    """``127.0.0.1:<port>`` -> ``target_host:target_port``, with faults on command (thread-safe)."""

    def __init__(self, target_host: str, target_port: int, name: str = ""):
        self.target = (target_host, target_port)
        self.name = name or f"{target_host}:{target_port}"
        self.port = 0
        self.delay_s = 0.0
        self.uplink_bytes_s: float | None = None  # cap on client -> target (a slow uplink), None: none
        self.links: set[_Link] = set()
        self._open = None  # asyncio.Event: set while data may flow
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{self.name}", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            for link in list(self.links):
                link.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def url(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _gate(self) -> None:
        if not self._open.is_set():
            await self._open.wait()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, asyncio.TimeoutError):
            client_w.transport.abort()  # the target is gone: the client sees its connection fail
            return
        link = _Link(self, client_w, target_w)
        self.links.add(link)
        await asyncio.gather(link.pump(client_r, target_w, uplink=True), link.pump(target_r, client_w))

    # -- faults (call from any thread) ----------------------------------------------------------------
    def _call(self, fn) -> None:
        self._loop.call_soon_threadsafe(fn)

    def reset(self) -> None:
        """Reset every open connection (RST both ways); new connections are served."""

        def do() -> None:
            for link in list(self.links):
                link.close(reset=True)

        self._call(do)

    def stall(self, seconds: float) -> None:
        """Move no data for ``seconds`` on any connection, old or new; then let it all through."""

        def on() -> None:
            self._open.clear()
            self._loop.call_later(seconds, self._open.set)

        self._call(on)

    def shape(self, uplink_bytes_s: float | None, delay_s: float = 0.0) -> None:
        """From now on: cap the uplink (client -> target) at ``uplink_bytes_s``, delay every chunk ``delay_s``."""

        def on() -> None:
            self.uplink_bytes_s, self.delay_s = uplink_bytes_s, delay_s

        self._call(on)

    def delay(self, seconds: float, for_s: float) -> None:
        """Delay every chunk by ``seconds`` for ``for_s``."""

        def on() -> None:
            self.delay_s = seconds
            self._loop.call_later(for_s, setattr, self, "delay_s", 0.0)

        self._call(on)
