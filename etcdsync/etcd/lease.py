"""Keys held alive under one etcd lease: the daemon's live instances and the library's `register`.

One lease holds any number of keys (the library shares one lease per TTL between a registry's
registrations; the daemon one per TTL between its live instances). The lease is renewed every third
of its TTL over one keepalive stream (the store keeps it open). When etcd says it is gone (expired
during a partition, revoked by someone with etcdctl, lost with the cluster's data) a new lease is
granted and every key is put again. `close()` revokes it so the keys vanish at once; a crashed
process leaves them to expire; a lease that holds nothing is not renewed (it lapses, and the next
put grants a new one). `remove(key)` lets one key go while the others stay: it deletes the key
if it is still attached to this lease (a key another holder has overwritten is theirs), and a delete
that cannot reach etcd is retried after the next renewal.

Puts are pipelined: the puts that arrive while a write is in flight go together in the next one, in
transactions of `max_ops` sent side by side, so registering many keys at once costs a few round
trips. `put(..., wait=False)` returns at once and leaves the write to the keepalive loop, which
grants the lease first when there is none yet (etcd unreachable at start-up: it keeps trying).

With `heal=True` (the library's registrations) the directories of the held keys are watched (one
watch per directory), and a key that vanishes while this process holds it (deleted by someone else,
or it was attached to another holder's lease that ended) is put back at once if it is still absent.
A key that someone else *overwrites* is left to them: two processes holding the same key take turns
(Consul-like: the live holder re-asserts the key when it sees it vanish), they never fight over it.

(Over 350 lines: granting, renewal, re-granting after loss, healing deleted keys and the per-key
registration state share the lease's lifecycle; apart they would race on it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..errors import CompactedError, EtcdConnectionError, EtcdsyncError
from ..tasks import Backoff, cancel_and_wait
from .store import Compare, Delete, Put, Store, absent

log = logging.getLogger(__name__)

# what `state(key)` says of a held key
REGISTERING = "registering"        # not written yet (etcd unreachable since it was added)
REGISTERED = "registered"          # written under a lease renewed within its TTL
REREGISTERING = "re-registering"   # the lease was lost, the key vanished or renewing fails: being put back
LOST = "lost"                      # no renewal for longer than the TTL: the key has expired in etcd


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
        self._guards: dict[str, asyncio.Task[None]] = {}     # one watch per directory of held keys
        self._written: dict[str, int] = {}   # key -> revision of our last put of it under the current lease
        self._pending: dict[str, list[asyncio.Future[None]]] = {}   # puts waiting for the next write
        self._writer: asyncio.Task[None] | None = None
        self._orphans: set[str] = set()  # let go while etcd was unreachable: deleted once it answers
        self._alive_until = 0.0          # time.monotonic() until which the lease is known to live
        self._wake = asyncio.Event()
        self._seen: set[str] = set()     # held keys written at least once

    @property
    def interval(self) -> float:
        return max(0.5, self.ttl / 3)

    async def start(self, *, wait: bool = True) -> None:
        """Grant the lease and put every key (with `wait=False`: leave that to the keepalive loop,
        which keeps trying while etcd is unreachable), then keep it alive in the background."""
        if wait:
            async with self._lock:
                if not self.lease_id:
                    await self._register()
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._keepalive(), name=f"lease-keepalive-{self.ttl}s")
        for key in self.items:
            self._guard(key)

    async def put(self, key: str, value: bytes, *, wait: bool = True) -> None:
        """Add or replace a key under the lease. Concurrent puts share transactions."""
        self.items[key] = value
        self._written.pop(key, None)
        self._orphans.discard(key)
        if self._task is not None:
            self._guard(key)
        if not wait:
            self._wake.set()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(fut)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name=f"lease-writer-{self.ttl}s")
        await fut

    async def remove(self, key: str) -> None:
        """Stop holding a key and delete it if it is still attached to this lease (if etcd cannot be
        reached, the delete is retried after the next renewal; the lease is not revoked)."""
        if self.items.pop(key, None) is None:
            return
        self._written.pop(key, None)
        self._seen.discard(key)
        async with self._lock:
            if not self.lease_id:
                return
            try:
                await self._delete([key])
            except EtcdConnectionError as exc:
                log.warning("%s: could not delete it now (%s); trying again after the next renewal", key, exc)
                self._orphans.add(key)

    def forget(self, key: str) -> None:
        """Stop holding a key without deleting it (someone puts it under another lease)."""
        self.items.pop(key, None)
        self._written.pop(key, None)
        self._seen.discard(key)

    def discard(self, key: str) -> None:
        """Stop holding a key without waiting: it is deleted (if attached to this lease) by the keepalive loop."""
        if self.items.pop(key, None) is not None:
            self._written.pop(key, None)
            self._seen.discard(key)
            if self.lease_id:
                self._orphans.add(key)
                self._wake.set()

    def state(self, key: str) -> str:
        """REGISTERED, REGISTERING, REREGISTERING or LOST (see the constants above)."""
        if key in self._written and self.healthy:
            return REGISTERED
        if key in self._seen and time.monotonic() > self._alive_until:
            return LOST
        return REREGISTERING if key in self._seen else REGISTERING

    async def refresh(self, key: str | None = None, *, since: int = 0) -> bool:
        """Check the lease now (e.g. a held key was deleted): re-register if lost, else put `key` again;
        whether anything was written. `since`: the revision of the change that asked (a watch event);
        when our last put of `key` is newer, that change was answered already (a watch resumed after a
        stall replays the delete of a lease that expired meanwhile, after the keepalive loop
        re-registered it): nothing is written."""
        async with self._lock:
            if key is not None and since and self._written.get(key, 0) > since:
                return False
            ttl = await self._renew()
            if ttl <= 0:
                await self._register()
            elif key is not None and key in self.items:
                await self._write_keys([key])
            else:
                return False
            return True

    async def close(self, *, revoke: bool = True) -> None:
        self._closed = True
        guards, self._guards = list(self._guards.values()), {}
        await cancel_and_wait(self._task, self._writer, *guards)
        for futs in self._pending.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(EtcdConnectionError("the lease was closed before the key was written"))
        self._pending.clear()
        if revoke and self.lease_id:
            with contextlib.suppress(EtcdConnectionError):
                await self.store.lease_revoke(self.lease_id)
        self.lease_id = 0
        self._written.clear()
        self.healthy = False

    # -- writing ------------------------------------------------------------------------

    async def _renew(self) -> int:
        """Renew the lease once (0 when there is none or it is gone); remember how long it lives."""
        if not self.lease_id:
            return 0
        ttl = await self.store.lease_keepalive(self.lease_id)
        if ttl > 0:
            self._alive_until = time.monotonic() + ttl
        return ttl

    async def _write_keys(self, keys: Iterable[str], *, only_absent: bool = False, regrant: bool = True) -> None:
        """Put `keys` (those still held) under the lease, in transactions of `max_ops` sent side by
        side. `only_absent`: each put only if the key is absent (a put-back never overwrites another
        holder's value). A lease that etcd no longer knows is granted anew (every key is put)."""
        held = [k for k in keys if k in self.items]
        if not held:
            return
        fences = list(self._fences())
        lease = self.lease_id
        step = 1 if only_absent else self._max_ops

        async def one(chunk: list[str]) -> None:
            compares = fences + ([absent(chunk[0])] if only_absent else [])
            result = await self.store.txn(compares, [Put(k, self.items[k], lease=lease) for k in chunk])
            if not result.succeeded:
                if only_absent:
                    return               # someone else holds it now: theirs
                raise EtcdConnectionError("lease write refused: this process no longer holds its election")
            for k in chunk:
                self._written[k] = result.revision
            self._seen.update(chunk)

        try:
            await _together(one(held[i:i + step]) for i in range(0, len(held), step))
        except EtcdConnectionError as exc:
            if not regrant or "lease not found" not in str(exc):
                raise
            log.warning("lease %x is gone (%s); granting a new one", lease, exc)
            await self._register()

    async def _delete(self, keys: list[str]) -> None:
        """Delete each key that is still attached to this lease."""
        lease = self.lease_id
        await _together(self.store.txn([Compare(k, "lease", "=", lease)], [Delete(k)]) for k in keys)
        self._orphans.difference_update(keys)

    async def _write_pending(self) -> None:
        while self._pending:
            async with self._lock:
                pending, self._pending = self._pending, {}
                try:
                    if not self.lease_id:
                        await self._register()
                    else:
                        await self._write_keys([k for k in pending if k not in self._written])
                except EtcdsyncError as exc:
                    _settle(pending, exc)
                else:
                    _settle(pending, None)

    async def _register(self) -> None:
        """Grant a fresh lease and put every key under it."""
        old = self.lease_id
        self._written.clear()
        self.lease_id = await self.store.lease_grant(self.ttl)
        self._alive_until = time.monotonic() + self.ttl
        self.registrations += 1
        self._orphans.clear()            # they were attached to the old lease, which goes below
        await self._write_keys(list(self.items), regrant=False)
        self.healthy = True
        if old:
            with contextlib.suppress(EtcdConnectionError):
                await self.store.lease_revoke(old)
            log.warning("lease %x was lost; re-registered %d keys under lease %x", old, len(self.items), self.lease_id)
            self._on_change("reregistered")

    async def _keepalive(self) -> None:
        delay = self.interval if self.lease_id else 0.0
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self.lease_id and not (self.items or self._orphans or self._pending):
                delay = self.interval    # nothing held: let the lease lapse; a later put grants a new one
                continue
            try:
                async with self._lock:
                    if await self._renew() <= 0:
                        await self._register()
                    else:
                        unwritten = [k for k in self.items if k not in self._written and k not in self._pending]
                        if unwritten:
                            await self._write_keys(unwritten)
                        if self._orphans:
                            await self._delete(sorted(self._orphans))
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

    # -- healing ------------------------------------------------------------------------

    def _guard(self, key: str) -> None:
        if self._heal and not self._closed:
            d = _directory(key)
            if d not in self._guards or self._guards[d].done():
                self._guards[d] = asyncio.create_task(self._watch_dir(d), name=f"lease-guard {d}")

    def _held_in(self, d: str) -> list[str]:
        return [k for k in self.items if _directory(k) == d]

    async def _watch_dir(self, d: str) -> None:
        """Put back the held keys of directory `d` whenever they vanish (see the module's docstring)."""
        rev = 0
        backoff = Backoff(0.1, 2.0)
        while not self._closed and self._held_in(d):
            try:
                if rev == 0:             # (re)start: from now on, after checking that the keys are there
                    kvs, rev = await self.store.get_prefix(d)
                    present = {kv.key for kv in kvs}
                    await self._put_back([k for k in self._held_in(d) if k in self._written and k not in present],
                                         "is missing", rev)
                async for batch in self.store.watch(d, prefix=True, start_revision=rev + 1):
                    gone = []
                    for ev in batch.events:
                        rev = max(rev, ev.kv.mod_revision)
                        if ev.type == "delete" and ev.kv.key in self.items:
                            gone.append(ev.kv.key)
                    if batch.progress:
                        rev = max(rev, batch.revision)
                    if gone:
                        await self._put_back(gone, "was deleted", rev)
                    backoff.reset()
                    if batch.progress and not self._held_in(d):    # about every second: not per event
                        return
            except CompactedError:       # compacted, or the cluster lost its data: check again
                rev = 0
            except EtcdConnectionError as exc:
                delay = backoff.next()
                log.debug("%s: watch failed (%s); again in %.1fs", d, exc, delay)
                rev = 0                  # events may have been missed: check the keys again
                await asyncio.sleep(delay)

    async def _put_back(self, keys: list[str], why: str, seen: int) -> None:
        """`keys` were seen gone at revision `seen`: put back those not written since, if still absent."""
        async with self._lock:
            if self._closed:
                return
            keys = [k for k in keys if k in self.items and self._written.get(k, 0) < seen]
            if not keys:
                return
            for k in keys:
                self._written.pop(k, None)
                log.warning("%s %s while this process holds it; putting it back", k, why)
            if await self._renew() <= 0:
                await self._register()
            else:
                await self._write_keys(keys, only_absent=True)
        self.healed += len(keys)
        self._on_change("healed")


def _directory(key: str) -> str:
    i = key.rfind("/")
    return key[:i + 1] if i >= 0 else key


async def _together(coros: Iterable[Coroutine[Any, Any, object]]) -> None:
    """Await coroutines side by side; raise the first error once every one has finished."""
    todo = list(coros)
    if len(todo) == 1:
        await todo[0]
        return
    results = await asyncio.gather(*todo, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _settle(pending: dict[str, list[asyncio.Future[None]]], exc: BaseException | None) -> None:
    for futs in pending.values():
        for fut in futs:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
