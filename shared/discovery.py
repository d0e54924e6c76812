"""LAN discovery with zeroconf: the coordinator advertises ``_splitasr._tcp``; edges browse for it."""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)

SERVICE_TYPE = "_splitasr._tcp.local."


class Advertiser:
    """Advertise a coordinator at ``host:port`` from an event loop: ``await start()`` … ``await close()``."""

    def __init__(self, host: str, port: int, name: str = "splitasr-coordinator", scheme: str = "http"):
        from zeroconf import ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        self._zc = AsyncZeroconf(interfaces=[host])
        self.info = ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(host)],
            port=port,
            properties={"path": "/v1/route", "scheme": scheme},
            server=f"{name}.local.",
        )

    async def start(self) -> None:
        await self._zc.async_register_service(self.info)
        log.info("advertising %s at %s", SERVICE_TYPE, self.info.parsed_addresses()[0])

    async def close(self) -> None:
        await self._zc.async_unregister_service(self.info)
        await self._zc.async_close()


def discover(timeout_s: float = 5.0, interface: str | None = None) -> str | None:
    """URL of the first coordinator found on the LAN within ``timeout_s``, else None."""
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    found: list[str] = []
    done = threading.Event()
    zc = Zeroconf(interfaces=[interface]) if interface else Zeroconf()

    def on_change(zeroconf, service_type, name, state_change):
        if state_change is not ServiceStateChange.Added:
            return
        info = zeroconf.get_service_info(service_type, name, timeout=int(timeout_s * 1000))
        if info and info.parsed_addresses():
            scheme = (info.properties or {}).get(b"scheme", b"http").decode("ascii", "replace")
            scheme = scheme if scheme in ("http", "https") else "http"
            found.append(f"{scheme}://{info.parsed_addresses()[0]}:{info.port}")
            done.set()

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        done.wait(timeout_s)
    finally:
        browser.cancel()
        zc.close()
    return found[0] if found else None
