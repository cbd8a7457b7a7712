"""The synchronous library: ConfigStore and Registry for Flask apps and plain scripts.

They run the asyncio classes of `etcdsync.aio` on one private event loop in a background thread, so
callers never see asyncio. Callbacks run on a worker thread per watch (never the caller's thread,
never the event loop's, so a callback may call the library again); an exception in a callback is
logged and the watch goes on. At interpreter exit every live registration is revoked.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from .aio import AsyncConfigStore, AsyncRegistration, AsyncRegistry, ConfigEvent, Instance, RegistryView, Watch
from .settings import RESERVED_PREFIX, Connection
from .viewcore import Snapshot
from .views import AsyncView, ViewChange, _Reads

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ConfigStore", "Registry", "Registration", "SyncRegistryView", "SyncWatch", "ConfigEvent", "Instance"]


class _Runtime:
    """One event loop in a daemon thread, shared by every synchronous object of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="etcdsync-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("etcdsync: a synchronous call from inside the library's own event loop would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()
_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def _rt() -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime()
            atexit.register(_at_exit)
        return _runtime


def _at_exit() -> None:
    """Revoke every live registration so instances vanish at once when the interpreter exits,
    then stop the watches and the loop cleanly."""
    for registry in list(_registries):
        try:
            registry.close(timeout=5)
        except Exception as exc:  # noqa: BLE001 - exiting anyway; the leases will expire
            log.warning("etcdsync: could not deregister at exit (%s); the lease will expire", exc)
    rt = _runtime
    if rt is None:
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    try:
        rt.call(cancel_all(), timeout=5)
        rt.loop.call_soon_threadsafe(rt.loop.stop)
        rt.thread.join(5)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


def _dispatcher(callback: Callable[[Any], Any], name: str) -> tuple[Callable[[Any], None], concurrent.futures.ThreadPoolExecutor]:
    """Run `callback` on one worker thread, in order; log its exceptions."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"etcdsync-{name}")

    def safe(arg: Any) -> None:
        try:
            callback(arg)
        except Exception:  # noqa: BLE001 - the user's code
            log.exception("watch callback %r raised; the watch goes on", callback)

    def submit(arg: Any) -> None:
        try:
            pool.submit(safe, arg)
        except RuntimeError:  # cancelled: the pool is shut down
            pass

    return submit, pool


class SyncWatch:
    """A running watch; `cancel()` stops it (pending callbacks still run)."""

    def __init__(self, w: Watch, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self._watch = w
        self._pool = pool

    @property
    def revision(self) -> int:
        return self._watch.revision

    @property
    def healthy(self) -> bool:
        return self._watch.healthy

    @property
    def last_event(self) -> float | None:
        return self._watch.last_event

    def cancel(self) -> None:
        _rt().loop.call_soon_threadsafe(self._watch.cancel)
        self._pool.shutdown(wait=False)

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ConfigStore:
    """Read, write and watch config keys: `get`, `put`, `delete`, `get_prefix`, `watch`."""

    def __init__(self, conn: Connection | None = None) -> None:
        self.conn = conn or Connection.from_env()
        self._aio = AsyncConfigStore(self.conn)

    def get(self, key: str) -> str | None:
        return _rt().call(self._aio.get(key))

    def get_bytes(self, key: str) -> bytes | None:
        return _rt().call(self._aio.get_bytes(key))

    def put(self, key: str, value: str | bytes) -> int:
        return _rt().call(self._aio.put(key, value))

    def delete(self, key: str) -> bool:
        return _rt().call(self._aio.delete(key))

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return _rt().call(self._aio.get_prefix(prefix))

    def watch(self, key: str, on_change: Callable[[ConfigEvent], Any], *, prefix: bool = False) -> SyncWatch:
        """`on_change(ConfigEvent)` for every later change of `key` (or under it with prefix=True)."""
        submit, pool = _dispatcher(on_change, "config-watch")
        w = _rt().call(self._aio.watch(key, submit, prefix=prefix))
        return SyncWatch(w, pool)

    def view(self, prefix: str, *, cache_file: str | os.PathLike[str] | None = None, hold: float = 30.0,
             reserved_prefix: str = RESERVED_PREFIX) -> View:
        """A watch-backed snapshot of `prefix` (see AsyncConfigStore.view); callbacks on a worker thread."""
        return View(_rt().call(self._aio.view(prefix, cache_file=cache_file, hold=hold, reserved_prefix=reserved_prefix)))

    def update(self, key: str, fn: Callable[[str | None], Any], *, attempts: int = 16) -> str | None:
        """Compare-and-swap loop (see AsyncConfigStore.update); `fn` runs on a worker thread."""
        return _rt().call(self._aio.update(key, lambda current: asyncio.to_thread(fn, current), attempts=attempts))

    def close(self) -> None:
        _rt().call(self._aio.close())


class View(_Reads):
    """The thread facade of AsyncView (`ConfigStore.view()`): reads are plain attribute reads of
    the published snapshot, safe from any thread; each `on_change` callback runs on a worker thread
    of its own, in order (never the caller's thread, never the event loop's)."""

    def __init__(self, view: AsyncView) -> None:
        self._view = view
        self._pools: list[Any] = []

    @property
    def snapshot(self) -> Snapshot:
        return self._view.snapshot

    @property
    def prefix(self) -> str:
        return self._view.prefix

    @property
    def stale(self) -> bool:
        return self._view.stale

    @property
    def healthy(self) -> bool:
        return self._view.healthy

    @property
    def last_event(self) -> float | None:
        return self._view.last_event

    def on_change(self, callback: Callable[[ViewChange], Any]) -> Callable[[ViewChange], Any]:
        submit, pool = _dispatcher(callback, "view")
        self._pools.append(pool)

        async def register() -> None:
            self._view.on_change(submit)

        _rt().call(register())
        return callback

    def close(self) -> None:
        _rt().call(self._view.close())
        for pool in self._pools:
            pool.shutdown(wait=False)

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Registration:
    """A live registration: kept alive in the background; `deregister()` or leaving `with` deletes its
    key (registrations of one Registry with the same TTL share a lease; see AsyncRegistration)."""

    def __init__(self, reg: AsyncRegistration) -> None:
        self._reg = reg

    @property
    def key(self) -> str:
        return self._reg.key

    @property
    def lease_id(self) -> int:
        return self._reg.lease_id

    @property
    def state(self) -> str:
        """"registering", "registered", "re-registering", "lost" or "deregistered"."""
        return self._reg.state

    def wait_registered(self, timeout: float | None = None) -> None:
        """Block until the state is "registered" (TimeoutError after `timeout` seconds)."""
        _rt().call(self._reg.wait_registered(timeout))

    def deregister(self) -> None:
        _rt().call(self._reg.deregister())

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deregister()


class SyncRegistryView:
    """`Registry.view(name)`: the in-memory instance list of a service, kept current by a watch.
    `instances`, `pick()`, `mark_failed()`, `healthy`, `last_event` (see etcdsync.aio.RegistryView)
    read memory only; `cancel()` stops the watch."""

    def __init__(self, view: RegistryView) -> None:
        self._view = view
        self.name = view.name

    @property
    def instances(self) -> list[Instance]:
        return self._view.instances

    @property
    def healthy(self) -> bool:
        return self._view.healthy

    @property
    def last_event(self) -> float | None:
        return self._view.last_event

    @property
    def revision(self) -> int:
        return self._view.revision

    def pick(self) -> Instance | None:
        return self._view.pick()

    def mark_failed(self, instance: Instance | str, for_: float = 30.0) -> None:
        self._view.mark_failed(instance, for_)

    def cancel(self) -> None:
        _rt().loop.call_soon_threadsafe(self._view.cancel)

    def __enter__(self) -> SyncRegistryView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Registry:
    """Register instances under a lease, discover and watch services at `<prefix><name>/`."""

    def __init__(self, conn: Connection | None = None, *, prefix: str | None = None, format: str = "json") -> None:
        """`prefix` defaults to the format's: "/services/" for json, "services/" for grpc."""
        self.conn = conn or Connection.from_env()
        self._aio = AsyncRegistry(self.conn, prefix=prefix, format=format)
        _registries.add(self)

    def register(self, name: str, id: str | None = None, *, host: str, port: int,
                 metadata: Mapping[str, Any] | None = None, ttl: float = 10, wait: bool = True,
                 own_lease: bool = False) -> Registration:
        """See AsyncRegistry.register: one shared lease per TTL, `wait=False` keeps trying in the
        background, `own_lease=True` for a lease that `deregister()` revokes."""
        return Registration(_rt().call(self._aio.register(name, id, host=host, port=port, metadata=metadata, ttl=ttl,
                                                          wait=wait, own_lease=own_lease)))

    def discover(self, name: str) -> list[Instance]:
        return _rt().call(self._aio.discover(name))

    def watch(self, name: str, on_instances: Callable[[list[Instance]], Any]) -> SyncWatch:
        """`on_instances(list[Instance])` now and on every change."""
        submit, pool = _dispatcher(on_instances, f"watch-{name}")
        w = _rt().call(self._aio.watch(name, submit))
        return SyncWatch(w, pool)

    def view(self, name: str) -> SyncRegistryView:
        """An in-memory, watch-backed list of `name`'s instances with round-robin `pick()`."""
        return SyncRegistryView(_rt().call(self._aio.view(name)))

    def close(self, timeout: float | None = None) -> None:
        """Deregister everything this registry registered and close its connection."""
        _rt().call(self._aio.close(), timeout)
