"""Health checks that gate live registrations: a TCP connect or an HTTP GET, on an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..core.model import HealthCheck
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def probe(check: HealthCheck, host: str, port: int) -> bool:
    """One attempt: True when the instance answers within the check's timeout."""
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if check.kind != "http":
                    return True
                path = check.path or "/"
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: etcdsync\r\n\r\n".encode())
                await writer.drain()
                status = await reader.readline()
                parts = status.split()
                return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, asyncio.TimeoutError, ValueError):
        return False


class Checker:
    """Runs one instance's check; calls `on_state(True/False)` when its verdict changes.

    Up after one passing probe; down after `failures` consecutive failing probes.
    """

    def __init__(self, check: HealthCheck, host: str, port: int,
                 on_state: Callable[[bool], Awaitable[None]], name: str = "") -> None:
        self.check = check
        self.host = host
        self.port = port
        self.on_state = on_state
        self.name = name
        self.up: bool | None = None
        self._fails = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"check-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            ok = await probe(self.check, self.host, self.port)
            if ok:
                self._fails = 0
                if self.up is not True:
                    self.up = True
                    log.info("%s: check passes (%s %s:%d)", self.name, self.check.kind, self.host, self.port)
                    await self._notify(True)
            else:
                self._fails += 1
                if self.up is None or (self.up and self._fails >= self.check.failures):
                    log.warning("%s: check fails (%s %s:%d)", self.name, self.check.kind, self.host, self.port)
                    self.up = False
                    await self._notify(False)
            await asyncio.sleep(self.check.interval)

    async def _notify(self, up: bool) -> None:
        try:
            await self.on_state(up)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried by the next probe's verdict change
            log.warning("%s: could not %s: %s", self.name, "register" if up else "deregister", exc)
            self.up = None
