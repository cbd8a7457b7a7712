"""Keys held alive under one etcd lease: the daemon's live instances and the library's `register`.

The lease is renewed every third of its TTL. When etcd says it is gone (expired during a partition,
revoked by someone with etcdctl, lost with the cluster's data) a new lease is granted and every key
is put again. `close()` revokes it so the keys vanish at once; a crashed process leaves them to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from .errors import EtcdConnectionError
from .store import Compare, Delete, Put, Store
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LeasedKeys:
    """A set of key/value pairs kept under one lease of `ttl` seconds."""

    def __init__(
        self,
        store: Store,
        ttl: float,
        *,
        fences: Callable[[], Sequence[Compare]] | None = None,
        on_change: Callable[[str], None] | None = None,
        max_ops: int = 64,
    ) -> None:
        self.store = store
        self.ttl = max(1, int(round(ttl)))
        self.lease_id = 0
        self.items: dict[str, bytes] = {}
        self.registrations = 0           # how many times the lease was (re)granted
        self._fences = fences or (lambda: ())
        self._on_change = on_change or (lambda what: None)
        self._max_ops = max_ops
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.healthy = False

    @property
    def interval(self) -> float:
        return max(0.5, self.ttl / 3)

    async def start(self) -> None:
        async with self._lock:
            await self._register()
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-keepalive-{self.ttl}s")

    async def put(self, key: str, value: bytes) -> None:
        """Add or replace a key under the lease."""
        async with self._lock:
            self.items[key] = value
            if self.lease_id:
                await self._write([Put(key, value, lease=self.lease_id)])

    async def remove(self, key: str) -> None:
        """Stop holding a key and delete it."""
        async with self._lock:
            if self.items.pop(key, None) is not None and self.lease_id:
                await self._write([Delete(key)])

    async def refresh(self, key: str | None = None) -> None:
        """Check the lease now (e.g. a held key was deleted): re-register if lost, else put `key` again."""
        async with self._lock:
            ttl = await self.store.lease_keepalive(self.lease_id) if self.lease_id else 0
            if ttl <= 0:
                await self._register()
            elif key is not None and key in self.items:
                await self._write([Put(key, self.items[key], lease=self.lease_id)])

    async def close(self, *, revoke: bool = True) -> None:
        self._closed = True
        await cancel_and_wait(self._task)
        if revoke and self.lease_id:
            with contextlib.suppress(EtcdConnectionError):
                await self.store.lease_revoke(self.lease_id)
        self.lease_id = 0
        self.healthy = False

    async def _write(self, ops: list[Put | Delete]) -> None:
        fences = list(self._fences())
        for i in range(0, len(ops), self._max_ops):
            result = await self.store.txn(fences, ops[i:i + self._max_ops])
            if not result.succeeded:
                raise EtcdConnectionError("lease write refused: this process no longer holds its election")

    async def _register(self) -> None:
        """Grant a fresh lease and put every key under it."""
        old = self.lease_id
        self.lease_id = await self.store.lease_grant(self.ttl)
        self.registrations += 1
        await self._write([Put(k, v, lease=self.lease_id) for k, v in self.items.items()])
        self.healthy = True
        if old:
            with contextlib.suppress(EtcdConnectionError):
                await self.store.lease_revoke(old)
            log.warning("lease %x was lost; re-registered %d keys under lease %x", old, len(self.items), self.lease_id)
            self._on_change("reregistered")

    async def _keepalive(self) -> None:
        delay = self.interval
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                async with self._lock:
                    ttl = await self.store.lease_keepalive(self.lease_id) if self.lease_id else 0
                    if ttl <= 0:
                        await self._register()
                self.healthy = True
                delay = self.interval
            except EtcdConnectionError as exc:
                self.healthy = False
                delay = min(self.interval, 1.0)
                log.warning("lease keepalive failed (%s); retrying in %.1fs", exc, delay)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the loop alive, whatever happened
                self.healthy = False
                delay = min(self.interval, 1.0)
                log.exception("lease keepalive: unexpected error")
