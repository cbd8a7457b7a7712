"""The library for asyncio services: config store and service registry as coroutines.

    from etcdsync import Connection
    from etcdsync.aio import AsyncConfigStore, AsyncRegistry

    cfg = AsyncConfigStore(Connection.from_env())
    await cfg.put("/config/a", "1"); await cfg.get("/config/a")     # -> "1"
    reg = AsyncRegistry(Connection.from_env())
    async with await reg.register("api", "api-1", host="10.0.0.5", port=8080, ttl=10):
        print(await reg.discover("api"))

The synchronous classes in `etcdsync` (ConfigStore, Registry) run these on a background event loop.

(Over 350 lines: the config store and the registry share one client and one follow loop, which
reads, watches, resumes and re-reads after a compaction; config views live in `views`.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .core.instances import decode_instance, encode_instance, instance_key
from .errors import CompactedError, EtcdConnectionError, EtcdsyncError, UsageError
from .etcd.lease import REGISTERED, REGISTERING, LeasedKeys
from .etcd.store import KeyValue, Store, WatchEvent
from .settings import RESERVED_PREFIX, Connection, services_prefix
from .tasks import Backoff, call_user, cancel_and_wait
from .viewcore import ConfigEvent
from .views import AsyncView
from .views import update as cas_update

log = logging.getLogger(__name__)

__all__ = ["AsyncConfigStore", "AsyncRegistry", "AsyncRegistration", "ConfigEvent", "Instance", "RegistryView", "Watch"]

Callback = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Instance:
    """One discovered service instance."""

    id: str
    host: str
    port: int
    metadata: Any = None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class _Client:
    """A lazily connected Store shared by one object's calls."""

    def __init__(self, conn: Connection | Store) -> None:
        if isinstance(conn, Store):
            self._store: Store | None = conn
            self._owns = False
        else:
            self._store = None
            self._owns = True
            self._conn = conn
        self._lock = asyncio.Lock()

    async def store(self) -> Store:
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    store = Store(self._conn)
                    await store.connect()
                    self._store = store
        return self._store

    async def close(self) -> None:
        if self._store is not None and self._owns:
            await self._store.close()
            self._store = None


class Watch:
    """A running watch. `cancel()` stops it; `revision` is the last revision delivered; `healthy`
    says whether its stream is connected; `last_event` is the time.time() of etcd's last answer on it
    (an event, or a progress answer about every second)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.revision = 0
        self.started = asyncio.Event()
        self.healthy = False              # connected: the last read or stream answer came through
        self.last_event: float | None = None   # time.time() when etcd last answered (a change or a progress note)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def _call(callback: Callback, arg: Any) -> None:
    """Run a user callback; an exception is logged, never fatal to the watch."""
    await call_user(callback, arg, log, "watch")


async def _follow(store: Store, key: str, *, prefix: bool, snapshot: Callable[[], Awaitable[int]],
                  on_events: Callable[[tuple[WatchEvent, ...]], Awaitable[None]], w: Watch) -> None:
    """Take a snapshot, then watch from the revision after it, forever: resumes after disconnects,
    and takes a new snapshot when the revision it needs was compacted."""
    backoff = Backoff(0.1, 5.0)
    rev = await snapshot()
    w.revision = rev
    w.healthy, w.last_event = True, time.time()
    w.started.set()
    while True:
        try:
            async for batch in store.watch(key, prefix=prefix, start_revision=rev + 1):
                w.healthy, w.last_event = True, time.time()
                if batch.events:
                    rev = max(rev, max(ev.kv.mod_revision for ev in batch.events))
                    await on_events(batch.events)
                else:
                    rev = max(rev, batch.revision)
                w.revision = rev
                backoff.reset()
        except CompactedError as exc:
            log.warning("%s; re-reading %s", exc, key)
            rev = await snapshot()
        except EtcdConnectionError as exc:
            w.healthy = False
            delay = backoff.next()
            log.warning("watch %s: %s; resuming from revision %d in %.1fs", key, exc, rev + 1, delay)
            await asyncio.sleep(delay)


class AsyncConfigStore:
    """Read, write and watch config keys."""

    def __init__(self, conn: Connection | Store) -> None:
        self._client = _Client(conn)

    async def get(self, key: str) -> str | None:
        kv = await (await self._client.store()).get(key)
        return None if kv is None else _text(kv.value)

    async def get_bytes(self, key: str) -> bytes | None:
        kv = await (await self._client.store()).get(key)
        return None if kv is None else kv.value

    async def put(self, key: str, value: str | bytes) -> int:
        """Write a key; returns the revision of the write."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        return await (await self._client.store()).put(key, data)

    async def delete(self, key: str) -> bool:
        """Delete a key; True when it existed."""
        return await (await self._client.store()).delete(key)

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        kvs, _ = await (await self._client.store()).get_prefix(prefix)
        return {kv.key: _text(kv.value) for kv in kvs}

    async def watch(self, key: str, on_change: Callback, *, prefix: bool = False) -> Watch:
        """Call `on_change(ConfigEvent)` for every change of `key` (or under it) from now on.

        Survives reconnects without losing events; after a compaction it re-reads and reports what
        differs from what it had seen (puts and deletes).
        """
        store = await self._client.store()
        known: dict[str, KeyValue] = {}
        first = True

        async def snapshot() -> int:
            nonlocal first
            if prefix:
                kvs, rev = await store.get_prefix(key)
            else:
                kv = await store.get(key)
                kvs, rev = ([kv] if kv else []), await store.revision()
            now = {kv.key: kv for kv in kvs}
            if not first:
                for k in sorted(set(known) - set(now)):
                    await _call(on_change, ConfigEvent("delete", k, None, rev, _text(known[k].value)))
                for k, kv in sorted(now.items()):
                    if k not in known or known[k].mod_revision != kv.mod_revision:
                        old = _text(known[k].value) if k in known else None
                        await _call(on_change, ConfigEvent("put", k, _text(kv.value), kv.mod_revision, old))
            first = False
            known.clear()
            known.update(now)
            return rev

        async def on_events(events: tuple[WatchEvent, ...]) -> None:
            for ev in events:
                before = known.get(ev.kv.key)
                old = None if before is None else _text(before.value)
                if ev.type == "put":
                    known[ev.kv.key] = ev.kv
                    await _call(on_change, ConfigEvent("put", ev.kv.key, _text(ev.kv.value), ev.kv.mod_revision, old))
                else:
                    known.pop(ev.kv.key, None)
                    await _call(on_change, ConfigEvent("delete", ev.kv.key, None, ev.kv.mod_revision, old))

        w = Watch()
        w.task = asyncio.create_task(_follow(store, key, prefix=prefix, snapshot=snapshot, on_events=on_events, w=w),
                                     name=f"config-watch {key}")
        await _started(w)
        return w

    async def view(self, prefix: str, *, cache_file: str | os.PathLike[str] | None = None, hold: float = 30.0,
                   reserved_prefix: str = RESERVED_PREFIX) -> AsyncView:
        """A watch-backed snapshot of `prefix` in memory: `get`, `items`, typed reads without I/O,
        `on_change(callback)`; a multi-transaction apply arrives as one change; with `cache_file`
        it starts from the last snapshot saved there when etcd is unreachable (`stale`). See views.py."""
        return await AsyncView(self._client.store, prefix, cache_file=cache_file, hold=hold,
                               reserved_prefix=reserved_prefix).start()

    async def update(self, key: str, fn: Callable[[str | None], Any], *, attempts: int = 16) -> str | None:
        """Compare-and-swap on the key's mod_revision: `fn(current or None)` -> new value (None
        deletes), retried when another writer got in between; ConflictError after `attempts`."""
        return await cas_update(await self._client.store(), key, fn, attempts=attempts)

    async def close(self) -> None:
        await self._client.close()


async def _started(w: Watch) -> None:
    """Wait until the watch has its snapshot (so no write after this call is missed); surface errors."""
    assert w.task is not None
    started = asyncio.create_task(w.started.wait())
    done, _ = await asyncio.wait([started, w.task], return_when=asyncio.FIRST_COMPLETED)
    if w.task in done:
        started.cancel()
        w.task.result()
    started.cancel()


class RegistryView:
    """A watch-backed, in-memory list of one service's instances (`AsyncRegistry.view(name)`).

    Reads cost no I/O and are safe from any thread. `instances` is the current list (sorted by id);
    `healthy` says whether the watch behind it is connected, `last_event` when etcd last answered
    it (`time.time()`; a change or a progress note, about every second while connected), so
    `time.time() - view.last_event` is how old the list may be. `pick()` round-robins over the
    instances not marked failed; `mark_failed(instance, for_=30)` skips one for a while (client-side
    ejection: a killed instance is not called during the seconds until its lease expires). When every
    instance is marked failed, `pick()` round-robins over all of them (a maybe-failed instance is
    better than none); it returns None only when there is no instance at all.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._instances: list[Instance] = []
        self._failed: dict[str, float] = {}      # instance id -> time.monotonic() until which it is skipped
        self._next = 0
        self._lock = threading.Lock()
        self._watch: Watch | None = None

    @property
    def instances(self) -> list[Instance]:
        return list(self._instances)

    @property
    def healthy(self) -> bool:
        return self._watch is not None and self._watch.healthy

    @property
    def last_event(self) -> float | None:
        return self._watch.last_event if self._watch is not None else None

    @property
    def revision(self) -> int:
        return self._watch.revision if self._watch is not None else 0

    def _update(self, instances: list[Instance]) -> None:
        self._instances = instances

    def pick(self) -> Instance | None:
        """The next instance in round-robin order, skipping those marked failed; None if there is none."""
        with self._lock:
            everyone = self._instances
            if not everyone:
                return None
            now = time.monotonic()
            for id_, until in list(self._failed.items()):
                if until <= now:
                    del self._failed[id_]
            candidates = [i for i in everyone if i.id not in self._failed] or everyone
            self._next += 1
            return candidates[(self._next - 1) % len(candidates)]

    def mark_failed(self, instance: Instance | str, for_: float = 30.0) -> None:
        """Skip `instance` (or the instance with that id) in `pick()` for `for_` seconds."""
        id_ = instance if isinstance(instance, str) else instance.id
        with self._lock:
            self._failed[id_] = time.monotonic() + max(0.0, for_)

    def cancel(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def wait_closed(self) -> None:
        if self._watch is not None:
            await self._watch.wait_closed()


class AsyncRegistration:
    """A live registration; `deregister()` (or leaving `async with`) deletes its key.

    Registrations of one registry with the same TTL share one lease (unless registered with
    `own_lease=True`): deregistering one deletes its key and leaves the lease to the others.
    `state` says where it stands: "registering" (not written yet: etcd unreachable since
    `register(..., wait=False)`), "registered", "re-registering" (the lease was lost, the key was
    deleted, or renewals fail: being put back), "lost" (no renewal for longer than the TTL: the key
    has expired in etcd; the library keeps trying) or "deregistered".
    """

    def __init__(self, key: str, value: bytes, ttl: int, registry: AsyncRegistry, own_lease: bool) -> None:
        self.key = key
        self.value = value
        self.ttl = ttl
        self._leased: LeasedKeys | None = None
        self.own_lease = own_lease
        self._registry = registry
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncRegistration({self.key!r}, state={self.state!r}, lease={self.lease_id:016x})"

    @property
    def leased(self) -> LeasedKeys:
        """The lease that holds the key (shared by this registry's registrations of the same TTL)."""
        if self._leased is None:
            raise UsageError(f"{self.key}: not registered yet")
        return self._leased

    @property
    def lease_id(self) -> int:
        return self._leased.lease_id if self._leased is not None else 0

    @property
    def state(self) -> str:
        if self._closed:
            return "deregistered"
        if self._leased is None or self.key not in self._leased.items:
            return REGISTERING
        return self._leased.state(self.key)

    async def wait_registered(self, timeout: float | None = None) -> None:
        """Wait until the state is "registered" (TimeoutError after `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            while self.state != REGISTERED:
                if self._closed:
                    raise UsageError(f"{self.key}: deregistered")
                await asyncio.sleep(0.05)

    async def deregister(self) -> None:
        await self._registry._deregister(self)

    async def __aenter__(self) -> AsyncRegistration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.deregister()


class AsyncRegistry:
    """Register this process's instances under a lease; discover and watch other services."""

    def __init__(self, conn: Connection | Store, *, prefix: str | None = None, format: str = "json") -> None:
        """`prefix` defaults to the format's (settings.services_prefix: "/services/" for json,
        "services/" for grpc, where gRPC's etcd resolver looks)."""
        if format not in ("json", "grpc"):
            raise UsageError(f"format {format!r}: expected json or grpc")
        self._client = _Client(conn)
        self.prefix = services_prefix(format) if prefix is None else prefix
        self.format = format
        self.registrations: list[AsyncRegistration] = []
        self._leases: dict[int, LeasedKeys] = {}            # the shared lease of each TTL
        self._holders: dict[str, AsyncRegistration] = {}     # key -> the registration that wrote it last

    def _dir(self, name: str) -> str:
        if not name or "/" in name:
            raise UsageError(f"service name {name!r}: must be non-empty and contain no '/'")
        return f"{self.prefix}{name}/"

    async def register(self, name: str, id: str | None = None, *, host: str, port: int,
                       metadata: Mapping[str, Any] | None = None, ttl: float = 10, wait: bool = True,
                       own_lease: bool = False) -> AsyncRegistration:
        """Put `<prefix><name>/<id>` under a lease of `ttl` seconds, kept alive in the background and
        re-registered when lost; when someone else deletes the key while this registration lives, it
        is put back within about a second. Registering the same id again replaces the value; two
        processes holding the same id take turns (the live one re-asserts the key when it vanishes).

        The registrations of this registry with the same TTL share one lease and one keepalive
        stream, and registrations made concurrently (`asyncio.gather`) share transactions.
        `own_lease=True` gives this one a lease of its own, which `deregister()` revokes.
        `wait=False` returns at once and keeps trying in the background while etcd is unreachable
        (see `state` and `wait_registered()`); by default this waits until the key is written and
        raises if it cannot be."""
        self._dir(name)
        if self.format == "json" and (not id or "/" in id):
            raise UsageError(f"instance id {id!r}: must be non-empty and contain no '/'")
        if not 0 < int(port) < 65536:
            raise UsageError(f"port {port}: must be 1-65535")
        key = instance_key(self.prefix, name, id, self.format, host, int(port))
        value = encode_instance(self.format, host, int(port), metadata)
        reg = AsyncRegistration(key, value, max(1, int(round(ttl))), self, own_lease)
        previous = self._holders.get(key)
        if previous is not None and previous._leased is not None:
            previous._leased.forget(key)          # the new put replaces its value (and lease)
        self._holders[key] = reg
        self.registrations.append(reg)
        if not wait:
            reg._task = asyncio.create_task(self._register_in_background(reg), name=f"register {key}")
            return reg
        try:
            reg._leased = await self._lease_for(reg)
            await reg._leased.put(key, value)
        except BaseException:
            await self._forget(reg)
            raise
        return reg

    async def _lease_for(self, reg: AsyncRegistration) -> LeasedKeys:
        """The registry's shared lease of `reg.ttl` (or a new one of its own), keepalive started."""
        leased = None if reg.own_lease else self._leases.get(reg.ttl)
        if leased is None:
            store = await self._client.store()
            leased = None if reg.own_lease else self._leases.get(reg.ttl)
            if leased is None:
                leased = LeasedKeys(store, reg.ttl, heal=True)
                if not reg.own_lease:
                    self._leases[reg.ttl] = leased
                await leased.start(wait=False)   # the first put (or the keepalive loop) grants it
        return leased

    async def _register_in_background(self, reg: AsyncRegistration) -> None:
        backoff = Backoff(0.1, 2.0)
        while reg._leased is None:
            try:
                reg._leased = await self._lease_for(reg)
            except EtcdsyncError as exc:
                delay = backoff.next()
                log.warning("%s: cannot register yet (%s); trying again in %.1fs", reg.key, exc, delay)
                await asyncio.sleep(delay)
        if self._holders.get(reg.key) is reg:
            await reg._leased.put(reg.key, reg.value, wait=False)

    async def _forget(self, reg: AsyncRegistration, *, wait: bool = False) -> None:
        """Drop `reg` from the books; its key is deleted (now with `wait`, else by the keepalive loop;
        after the next renewal when etcd is unreachable) if it still holds it."""
        reg._closed = True
        await cancel_and_wait(reg._task)
        if reg in self.registrations:
            self.registrations.remove(reg)
        holds = self._holders.get(reg.key) is reg
        if holds:
            del self._holders[reg.key]
        if reg._leased is None:
            return
        if reg.own_lease:
            await reg._leased.close(revoke=True)
        elif holds and wait:
            await reg._leased.remove(reg.key)
        elif holds:
            reg._leased.discard(reg.key)

    async def _deregister(self, reg: AsyncRegistration) -> None:
        if not reg._closed:
            await self._forget(reg, wait=True)

    def _decode(self, kv: KeyValue) -> Instance | None:
        try:
            id_, host, port, meta = decode_instance(kv.key, kv.value, self.format)
        except ValueError as exc:
            log.warning("%s: skipping an instance value that cannot be parsed (%s)", kv.key, exc)
            return None
        return Instance(id_, host, port, meta)

    async def discover(self, name: str) -> list[Instance]:
        """Every parsable instance under `<prefix><name>/`, sorted by id."""
        kvs, _ = await (await self._client.store()).get_prefix(self._dir(name))
        found = [self._decode(kv) for kv in kvs if "/" not in kv.key[len(self._dir(name)):]]
        return sorted((i for i in found if i is not None), key=lambda i: i.id)

    async def watch(self, name: str, on_instances: Callback) -> Watch:
        """Call `on_instances(list[Instance])` with the current list now and on every change (put,
        delete, lease expiry). The list starts from a consistent snapshot and the watch continues
        from the revision after it, so no change is lost in between; it survives reconnects."""
        store = await self._client.store()
        d = self._dir(name)
        current: dict[str, Instance] = {}

        def listing() -> list[Instance]:
            return sorted(current.values(), key=lambda i: i.id)

        async def snapshot() -> int:
            kvs, rev = await store.get_prefix(d)
            current.clear()
            for kv in kvs:
                if "/" in kv.key[len(d):]:
                    continue
                inst = self._decode(kv)
                if inst is not None:
                    current[kv.key] = inst
            await _call(on_instances, listing())
            return rev

        async def on_events(events: tuple[WatchEvent, ...]) -> None:
            changed = False
            for ev in events:
                if "/" in ev.kv.key[len(d):]:
                    continue
                if ev.type == "put":
                    inst = self._decode(ev.kv)
                    if inst is None:
                        changed = current.pop(ev.kv.key, None) is not None or changed
                    elif current.get(ev.kv.key) != inst:
                        current[ev.kv.key] = inst
                        changed = True
                elif current.pop(ev.kv.key, None) is not None:
                    changed = True
            if changed:
                await _call(on_instances, listing())

        w = Watch()
        w.task = asyncio.create_task(_follow(store, d, prefix=True, snapshot=snapshot, on_events=on_events, w=w),
                                     name=f"registry-watch {name}")
        await _started(w)
        return w

    async def view(self, name: str) -> RegistryView:
        """A watch-backed in-memory list of `name`'s instances with `pick()` and `mark_failed()`
        (see RegistryView); it holds the current list when this returns. `view.cancel()` stops it."""
        v = RegistryView(name)
        v._watch = await self.watch(name, v._update)
        return v

    async def close(self) -> None:
        """Deregister everything: each shared lease is revoked (its keys vanish at once)."""
        for reg in list(self.registrations):
            reg._closed = True
            await cancel_and_wait(reg._task)
            if reg.own_lease and reg._leased is not None:
                await reg._leased.close(revoke=True)
        self.registrations.clear()
        self._holders.clear()
        leases, self._leases = list(self._leases.values()), {}
        for leased in leases:
            await leased.close(revoke=True)
        await self._client.close()
