"""The chaos suite's fault-injecting TCP proxy against a loopback echo server."""

from __future__ import annotations

import asyncio
import time

import pytest

from splitasr.cloud.faultproxy import FaultProxy


async def _echo_server() -> asyncio.AbstractServer:
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _roundtrip(reader, writer, payload: bytes, timeout_s: float = 10) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), timeout_s)


def _with_proxy(scenario):
    async def main():
        server = await _echo_server()
        with FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
            try:
                return await scenario(proxy)
            finally:
                server.close()

    return asyncio.run(main())


def test_bytes_pass_through_unchanged_both_ways():
    async def scenario(proxy):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = bytes(range(256)) * 8192  # 2 MB: several chunks, backpressure
        assert await _roundtrip(reader, writer, payload) == payload
        writer.close()

    _with_proxy(scenario)


def test_reset_breaks_open_connections_and_new_ones_work():
    async def scenario(proxy):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"hello") == b"hello"
        proxy.reset()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(reader, writer, b"more")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"again") == b"again"
        writer.close()

    _with_proxy(scenario)


def test_a_stall_holds_data_then_lets_all_of_it_through():
    async def scenario(proxy):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall(1.5)
        started = time.monotonic()
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(asyncio.TimeoutError):  # nothing moves during the stall ...
            await asyncio.wait_for(reader.readexactly(4), 0.5)
        # ... and nothing is lost: it all arrives once the stall ends
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"held"
        assert time.monotonic() - started >= 1.4
        writer.close()

    _with_proxy(scenario)


def test_delay_adds_latency_to_each_direction_without_reordering():
    async def scenario(proxy):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.delay(0.2, for_s=30)
        started = time.monotonic()
        for i in range(5):
            writer.write(bytes([i]) * 1000)
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(5000), 10)
        assert data == b"".join(bytes([i]) * 1000 for i in range(5))
        assert time.monotonic() - started >= 0.4  # 0.2 s there and 0.2 s back, not 0.2 s per chunk in series
        writer.close()

    _with_proxy(scenario)


def test_a_dead_target_fails_the_client_connection():
    async def scenario(proxy):
        proxy.target = ("127.0.0.1", 1)  # nothing listens there
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(10), 10) == b""
        writer.close()

    _with_proxy(scenario)
