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
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .core.instances import decode_instance, encode_instance, instance_key
from .errors import CompactedError, EtcdConnectionError, UsageError
from .etcd.lease import LeasedKeys
from .etcd.store import KeyValue, Store, WatchEvent
from .settings import RESERVED_PREFIX, Connection
from .viewcore import ConfigEvent
from .views import AsyncView
from .views import update as cas_update

log = logging.getLogger(__name__)

__all__ = ["AsyncConfigStore", "AsyncRegistry", "AsyncRegistration", "ConfigEvent", "Instance", "Watch"]

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
        self.healthy = False
        self.last_event: float | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def _call(callback: Callback, arg: Any) -> None:
    """Run a user callback; an exception is logged, never fatal to the watch."""
    try:
        result = callback(arg)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the user's code: log and go on
        log.exception("watch callback %r raised; the watch goes on", callback)


async def _follow(store: Store, key: str, *, prefix: bool, snapshot: Callable[[], Awaitable[int]],
                  on_events: Callable[[tuple[WatchEvent, ...]], Awaitable[None]], w: Watch) -> None:
    """Take a snapshot, then watch from the revision after it, forever: resumes after disconnects,
    and takes a new snapshot when the revision it needs was compacted."""
    backoff = 0.1
    rev = await snapshot()
    w.revision = rev
    w.healthy, w.last_event = True, time.time()
    w.started.set()
    while True:
        try:
            async for batch in store.watch(key, prefix=prefix, start_revision=rev + 1):
                if batch.events:
                    rev = max(rev, max(ev.kv.mod_revision for ev in batch.events))
                    await on_events(batch.events)
                else:
                    rev = max(rev, batch.revision)
                w.revision = rev
                w.healthy, w.last_event = True, time.time()
                backoff = 0.1
        except CompactedError as exc:
            log.warning("%s; re-reading %s", exc, key)
            rev = await snapshot()
        except EtcdConnectionError as exc:
            w.healthy = False
            log.warning("watch %s: %s; resuming from revision %d in %.1fs", key, exc, rev + 1, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(EtcdConnectionError, CompactedError):
                pass


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


@dataclass
class AsyncRegistration:
    """A live registration; `deregister()` (or leaving `async with`) revokes its lease."""

    key: str
    value: bytes
    leased: LeasedKeys
    _on_close: Callable[[AsyncRegistration], None] = field(default=lambda r: None, repr=False)

    @property
    def lease_id(self) -> int:
        return self.leased.lease_id

    async def deregister(self) -> None:
        await self.leased.close(revoke=True)
        self._on_close(self)

    async def __aenter__(self) -> AsyncRegistration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.deregister()


class AsyncRegistry:
    """Register this process's instances under a lease; discover and watch other services."""

    def __init__(self, conn: Connection | Store, *, prefix: str = "/services/", format: str = "json") -> None:
        if format not in ("json", "grpc"):
            raise UsageError(f"format {format!r}: expected json or grpc")
        self._client = _Client(conn)
        self.prefix = prefix
        self.format = format
        self.registrations: list[AsyncRegistration] = []

    def _dir(self, name: str) -> str:
        if not name or "/" in name:
            raise UsageError(f"service name {name!r}: must be non-empty and contain no '/'")
        return f"{self.prefix}{name}/"

    async def register(self, name: str, id: str | None = None, *, host: str, port: int,
                       metadata: Mapping[str, Any] | None = None, ttl: float = 10) -> AsyncRegistration:
        """Put `<prefix><name>/<id>` under a lease of `ttl` seconds, kept alive in the background and
        re-registered when lost; when someone else deletes the key while this registration lives, it
        is put back within about a second. Registering the same id again replaces the value; two
        processes holding the same id take turns (the live one re-asserts the key when it vanishes)."""
        self._dir(name)
        if self.format == "json" and (not id or "/" in id):
            raise UsageError(f"instance id {id!r}: must be non-empty and contain no '/'")
        if not 0 < int(port) < 65536:
            raise UsageError(f"port {port}: must be 1-65535")
        key = instance_key(self.prefix, name, id, self.format, host, int(port))
        value = encode_instance(self.format, host, int(port), metadata)
        leased = LeasedKeys(await self._client.store(), ttl, heal=True)
        leased.items[key] = value
        await leased.start()
        reg = AsyncRegistration(key, value, leased, self.registrations.remove)
        self.registrations.append(reg)
        return reg

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

    async def close(self) -> None:
        for reg in list(self.registrations):
            await reg.deregister()
        await self._client.close()
