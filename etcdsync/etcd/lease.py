"""Keys held alive under one etcd lease: the daemon's live instances and the library's `register`.

The lease is renewed every third of its TTL. When etcd says it is gone (expired during a partition,
revoked by someone with etcdctl, lost with the cluster's data) a new lease is granted and every key
is put again. `close()` revokes it so the keys vanish at once; a crashed process leaves them to expire.

With `heal=True` (the library's registrations) each held key is also watched, and a key that vanishes
while this process holds it (deleted by someone else, or it was attached to another holder's lease
that ended) is put back at once through `refresh()`, the same path the daemon uses for its live keys.
A key that someone else *overwrites* is left to them: two processes holding the same key take turns
(Consul-like: the live holder re-asserts the key when it sees it vanish), they never fight over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from ..errors import CompactedError, EtcdConnectionError
from ..tasks import cancel_and_wait
from .store import Compare, Delete, Put, Store

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
        heal: bool = False,
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
        self.healed = 0                  # how many times a vanished key was put back
        self._heal = heal
        self._guards: dict[str, asyncio.Task[None]] = {}

    @property
    def interval(self) -> float:
        return max(0.5, self.ttl / 3)

    async def start(self) -> None:
        async with self._lock:
            await self._register()
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-keepalive-{self.ttl}s")
        for key in self.items:
            self._guard(key)

    async def put(self, key: str, value: bytes) -> None:
        """Add or replace a key under the lease."""
        async with self._lock:
            self.items[key] = value
            if self.lease_id:
                await self._write([Put(key, value, lease=self.lease_id)])
        if self._task is not None:
            self._guard(key)

    async def remove(self, key: str) -> None:
        """Stop holding a key and delete it."""
        guard = self._guards.pop(key, None)
        await cancel_and_wait(guard)
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
        guards, self._guards = list(self._guards.values()), {}
        await cancel_and_wait(self._task, *guards)
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

    def _guard(self, key: str) -> None:
        if self._heal and key not in self._guards and not self._closed:
            self._guards[key] = asyncio.create_task(self._watch_key(key), name=f"lease-guard {key}")

    async def _watch_key(self, key: str) -> None:
        """Put `key` back whenever it vanishes while it is held (see the module's docstring)."""
        rev = 0
        backoff = 0.1
        while not self._closed and key in self.items:
            try:
                if rev == 0:             # (re)start: from now on, after checking that the key is there
                    rev = await self.store.revision()
                    if await self.store.get(key) is None:
                        await self._put_back(key, "is missing")
                async for batch in self.store.watch(key, start_revision=rev + 1):
                    for ev in batch.events:
                        rev = max(rev, ev.kv.mod_revision)
                        if ev.type == "delete":
                            await self._put_back(key, "was deleted")
                    if batch.progress:
                        rev = max(rev, batch.revision)
                    backoff = 0.1
            except CompactedError:       # compacted, or the cluster lost its data: check again
                rev = 0
            except EtcdConnectionError as exc:
                log.debug("%s: watch failed (%s); again in %.1fs", key, exc, backoff)
                rev = 0                  # events may have been missed: check the key again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _put_back(self, key: str, why: str) -> None:
        if self._closed or key not in self.items:
            return
        log.warning("%s %s while this process holds it; putting it back", key, why)
        await self.refresh(key)
        self.healed += 1
        self._on_change("healed")
