"""Config views: a watch-backed, in-memory snapshot of a prefix (`cfg.view(prefix)`), and `update`.

A view reads the prefix once, then follows two watches from the revision after that read: the
prefix itself and the apply markers under `<reserved>applying/` (see `viewcore`). It publishes a
new `Snapshot` only at revisions where no multi-transaction apply that may write under the prefix
is half done, so such an apply arrives as one change. Reads (`get`, `items`, typed getters) look at
the published snapshot only: no I/O.

How a view decides, for the revision r its data has reached: when the marker watch has not yet
reached r, one pinned read of the marker prefix at r answers (the two watches are separate streams,
so the data may come first); while an apply is known to run, no read is made and the data is held.
When the marker is deleted at d, one pinned read of the prefix at d gives the state after the apply,
whatever the data watch has delivered so far. A view holds at most `hold` seconds (default 30):
then it publishes what it has, logs a warning, and stops waiting for that apply. A crashed apply's
marker expires with its lease (10 s), which ends the hold too.

(Over 350 lines: the two watches, the hold, the pinned reads, the cache and the health are one
ordering contract, pinned together by tests/test_views.py and the history checker; the pure parts
already live in `viewcore`.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import AuthError, CompactedError, ConflictError, EtcdConnectionError, EtcdsyncError
from .etcd.store import Delete, Get, KeyValue, Put, Store, WatchBatch, mod_is
from .settings import RESERVED_PREFIX
from .tasks import call_user, cancel_and_wait
from .viewcore import _MISSING, ConfigEvent, Gate, Snapshot, marker_prefix, overlaps, read_cache, write_cache

log = logging.getLogger(__name__)

__all__ = ["AsyncView", "Snapshot", "ViewChange", "update"]

HOLD = 30.0                # seconds a view waits for a multi-transaction apply to finish
BACKOFF_MAX = 5.0
UPDATE_ATTEMPTS = 16


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ViewChange:
    """What `on_change` callbacks receive: the snapshot before and after, and one ConfigEvent per
    key whose value differs (with `old_value`), in key order."""

    old: Snapshot
    new: Snapshot
    events: tuple[ConfigEvent, ...]

    @property
    def revision(self) -> int:
        return self.new.revision


class _Reads:
    """Reads of the published snapshot, shared by the asyncio and the thread view."""

    @property
    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    @property
    def revision(self) -> int:
        """The etcd revision the published snapshot is etcd's state at (from the cache when stale)."""
        return self.snapshot.revision

    def get(self, key: str, default: str | None = None) -> str | None:
        """A full key's value (no I/O)."""
        return self.snapshot.get(key, default)

    def items(self) -> list[tuple[str, str]]:
        """(key, value) pairs of the snapshot, by key."""
        return sorted(self.snapshot.items())

    def get_json(self, key: str, default: Any = _MISSING) -> Any:
        """The value parsed as JSON; `default` (None if not given) when the key is absent. A value
        that does not parse raises ConfigValueError naming the key, also when a default is given."""
        return self.snapshot.get_json(key, default)

    def get_int(self, key: str, default: Any = _MISSING) -> Any:
        return self.snapshot.get_int(key, default)

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        return self.snapshot.get_bool(key, default)


Callback = Callable[[ViewChange], Any]


class AsyncView(_Reads):
    """A watch-backed snapshot of `prefix`; make one with `AsyncConfigStore.view()`.

    `stale` is True while the snapshot comes from the cache file and etcd has not answered yet;
    `healthy` is True while the watches are connected; `last_event` is the `time.time()` of the
    last answer from etcd (an event, or a progress answer about every second), None before one.
    Callbacks run on the event loop, in order, inside the view's task (coroutines are awaited).
    """

    def __init__(self, connect: Callable[[], Awaitable[Store]], prefix: str, *,
                 cache_file: str | os.PathLike[str] | None = None,
                 hold: float = HOLD, reserved_prefix: str = RESERVED_PREFIX) -> None:
        self.prefix = prefix
        self.cache_file = cache_file
        self.hold = hold
        self.reserved_prefix = reserved_prefix
        self.stale = False
        self.healthy = False
        self.last_event: float | None = None
        self._connect = connect                 # the store, connected on first use
        self._snap: Snapshot | None = None
        self._callbacks: list[Callback] = []
        self._gate = Gate()
        self._working: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._at = 0                            # the revision `_working` is etcd's state at
        self._held_since: float | None = None
        self._ready = asyncio.Event()
        self._cached: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._save_wanted = False
        self._start_error: BaseException | None = None
        self.unmarked = False                   # may not read the apply markers: applies are not held back

    @property
    def snapshot(self) -> Snapshot:
        assert self._snap is not None
        return self._snap

    def on_change(self, callback: Callback) -> Callback:
        """Call `callback(ViewChange)` after every published change (usable as a decorator)."""
        self._callbacks.append(callback)
        return callback

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> AsyncView:
        if self.cache_file is not None:
            try:
                self._cached = await asyncio.to_thread(read_cache, self.cache_file, self.prefix)
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("view %s: cache file %s not used: %s", self.prefix, self.cache_file, exc)
        self._task = asyncio.create_task(self._run(), name=f"config-view {self.prefix}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(ready)
        if not self._ready.is_set():
            await cancel_and_wait(self._task)
            raise self._start_error or EtcdConnectionError(f"view {self.prefix}: could not start")
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._saver is not None:
            await asyncio.gather(self._saver, return_exceptions=True)

    async def __aenter__(self) -> AsyncView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # noqa: BLE001 - reported, never left in the task
            self.healthy = False
            if self._ready.is_set():
                log.error("view %s stopped: %s", self.prefix, exc)
            else:
                self._start_error = exc

    async def _follow(self) -> None:
        """Sessions until cancelled: after a failure, re-read and watch again with capped backoff."""
        backoff = 0.1
        while True:
            try:
                await self._session()
            except (EtcdConnectionError, CompactedError) as exc:   # also ClusterChanged
                self.healthy = False
                if self._snap is None:
                    if self._cached is None:
                        raise
                    log.warning("view %s: etcd unreachable (%s); serving the cache file %s (revision %d) as stale",
                                self.prefix, exc, self.cache_file, self._cached.revision)
                    self.stale = True
                    self._snap = self._cached
                    self._ready.set()
                else:
                    log.warning("view %s: %s; re-reading in %.1fs", self.prefix, exc, backoff)
                if self._at > 0:       # the session got going before it failed: a new failure
                    backoff = 0.1
                    self._at = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    # -- one connected session ----------------------------------------------------------------

    async def _session(self) -> None:
        store = await self._connect()
        start = await self._resync(store)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(store, self.prefix, start, "data", queue), name=f"view {self.prefix}")]
        if not self.unmarked:
            pumps.append(asyncio.create_task(self._pump(store, marker_prefix(self.reserved_prefix), start, "mark", queue),
                                             name=f"view markers {self.prefix}"))
        try:
            while True:
                timeout = None
                if self._held_since is not None:
                    timeout = max(0.0, self._held_since + self.hold - time.monotonic())
                try:
                    kind, item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    await self._give_up()
                    continue
                if kind == "error":
                    raise item
                self.healthy = True
                self.last_event = time.time()
                if kind == "data":
                    await self._on_data(store, item)
                else:
                    await self._on_marks(store, item)
        finally:
            await cancel_and_wait(*pumps)

    @staticmethod
    async def _pump(store: Store, key: str, start: int, kind: str, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            async for batch in store.watch(key, prefix=True, start_revision=start + 1):
                queue.put_nowait((kind, batch))
            queue.put_nowait(("error", EtcdConnectionError(f"watch {key}: ended")))
        except EtcdsyncError as exc:
            queue.put_nowait(("error", exc))

    def _overlapping(self, kvs: list[KeyValue]) -> dict[str, int]:
        return {kv.key: kv.create_revision for kv in kvs if overlaps(self.prefix, kv.value)}

    async def _markers(self, store: Store, revision: int = 0) -> tuple[list[KeyValue], int]:
        """The apply markers (at `revision`, default now). A user whose role may not read them gets a
        view that works without them (a warning says so): it cannot hold applies back."""
        if not self.unmarked:
            try:
                return await store.get_prefix(marker_prefix(self.reserved_prefix), revision=revision)
            except AuthError as exc:
                if "permission denied" not in str(exc):
                    raise
                log.warning("view %s: cannot read the apply markers under %s (%s): a multi-transaction apply may be "
                            "seen half applied; grant this user read access to that prefix",
                            self.prefix, marker_prefix(self.reserved_prefix), exc)
                self.unmarked = True
        if revision:
            return [], revision
        _, now = await store.latest_mod_revision(self.prefix)    # a read this user may make
        return [], now

    async def _resync(self, store: Store) -> int:
        """Read the prefix at a revision no apply covers when there is one (the state before the
        applies running now, if it is newer than what was published); else now, held."""
        kvs, now = await self._markers(store)
        present = self._overlapping(kvs)
        at = now
        published = 0 if self._snap is None or self.stale else self._snap.revision
        waiting = {k: c for k, c in present.items() if k not in self._gate.ignored}
        for _ in range(3):      # markers live now began at c: etcd's state at c is before them
            if not waiting:
                break
            before = min(waiting.values())
            if before <= published:
                break
            try:
                kvs, _ = await self._markers(store, before)
            except CompactedError:
                break
            earlier = {k: c for k, c in self._overlapping(kvs).items() if k not in self._gate.ignored}
            at, present = before, earlier
            waiting = {k: c for k, c in earlier.items() if c < before}
        items, _ = await store.get_prefix(self.prefix, revision=at)
        self._dirty = set(self._working) | {kv.key for kv in items}
        if self._snap is not None:
            self._dirty |= set(self._snap)
        self._working = {kv.key: _text(kv.value) for kv in items}
        self._at = at
        ignored = self._gate.ignored
        self._gate = Gate(ignored={k for k in ignored if k in present})
        self._gate.reset(at, present)
        self.healthy = True
        self.last_event = time.time()
        await self._decide(store)
        return at

    async def _on_data(self, store: Store, batch: WatchBatch) -> None:
        events = [ev for ev in batch.events if ev.kv.mod_revision > self._at]
        if not events:
            return
        for ev in events:
            if ev.type == "put":
                self._working[ev.kv.key] = _text(ev.kv.value)
            else:
                self._working.pop(ev.kv.key, None)
            self._dirty.add(ev.kv.key)
        self._at = max(ev.kv.mod_revision for ev in events)
        await self._decide(store)

    async def _on_marks(self, store: Store, batch: WatchBatch) -> None:
        for ev in batch.events:
            if ev.type == "put":
                self._gate.put(ev.kv.key, ev.kv.create_revision, ev.kv.mod_revision, overlaps(self.prefix, ev.kv.value))
            else:
                self._gate.delete(ev.kv.key, ev.kv.mod_revision)
        if self._held_since is None or self._gate.live():
            return
        # the applies it waited for have ended at `known`: take etcd's state there if the data is behind
        if self._at < self._gate.known:
            items, _ = await store.get_prefix(self.prefix, revision=self._gate.known)
            now = {kv.key: _text(kv.value) for kv in items}
            self._dirty |= {k for k in set(now) | set(self._working) if now.get(k) != self._working.get(k)}
            self._working = now
            self._at = self._gate.known
        await self._decide(store)

    async def _decide(self, store: Store) -> None:
        """Publish the working state if no apply is half done at its revision, else hold it."""
        covered = self._gate.covered(self._at)
        if covered is None:
            if self._gate.live():
                self._hold()
                return
            kvs, _ = await self._markers(store, self._at)
            self._gate.learn(self._at, self._overlapping(kvs))
            covered = self._gate.covered(self._at)
        if covered:
            self._hold()
            return
        await self._publish()

    def _hold(self) -> None:
        if self._held_since is None:
            self._held_since = time.monotonic()

    async def _give_up(self) -> None:
        keys = self._gate.give_up()
        log.warning("view %s: an apply (%s) has not finished within %gs; delivering what it wrote so far",
                    self.prefix, ", ".join(keys) or "marker gone", self.hold)
        await self._publish()

    async def _publish(self) -> None:
        self._held_since = None
        old = self._snap
        new = Snapshot(self._working, self._at)
        was_stale = self.stale
        self._snap = new
        self.stale = False
        self._gate.forget_before(self._at)
        dirty, self._dirty = self._dirty, set()
        self._ready.set()
        self._save()
        if old is None:
            return
        events = tuple(
            ConfigEvent("delete" if new.get(k) is None else "put", k, new.get(k), new.revision, old.get(k))
            for k in sorted(dirty) if old.get(k) != new.get(k))
        if not events:
            if was_stale:
                log.info("view %s: etcd answered; the cached snapshot was current", self.prefix)
            return
        change = ViewChange(old, new, events)
        for cb in list(self._callbacks):
            await call_user(cb, change, log, "view")

    # -- the cache file -------------------------------------------------------------------------

    def _save(self) -> None:
        if self.cache_file is None:
            return
        self._save_wanted = True
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_loop(), name=f"view cache {self.prefix}")

    async def _save_loop(self) -> None:
        while self._save_wanted:
            self._save_wanted = False
            snap = self._snap
            if snap is None or self.stale or self.cache_file is None:
                return
            try:
                await asyncio.to_thread(write_cache, self.cache_file, self.prefix, snap)
            except OSError as exc:
                log.warning("view %s: cannot write the cache file %s: %s", self.prefix, self.cache_file, exc)


async def update(store: Store, key: str, fn: Callable[[str | None], Any], *, attempts: int = UPDATE_ATTEMPTS) -> str | None:
    """Compare-and-swap: `fn(current value or None)` -> new value (str or bytes; None deletes the key),
    written only if the key's mod_revision is still the one `fn` saw; re-read and retried (with a
    short random backoff) up to `attempts` times, then ConflictError. `fn` may be called several
    times, so it must be a function of its argument only. Returns the value written (None: deleted)."""
    kv = await store.get(key)
    for attempt in range(attempts):
        new = fn(None if kv is None else _text(kv.value))
        if inspect.isawaitable(new):
            new = await new
        if new is None and kv is None:
            return None
        data = None if new is None else (new if isinstance(new, bytes) else str(new).encode("utf-8"))
        op = Delete(key) if data is None else Put(key, data)
        result = await store.txn([mod_is(key, 0 if kv is None else kv.mod_revision)], [op], [Get(key)])
        if result.succeeded:
            return None if data is None else _text(data)
        got = result.gets[0] if result.gets else ()
        kv = got[0] if got else None
        await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
    raise ConflictError(f"{key}: changed by another writer on each of {attempts} attempts; not updated", [key])
