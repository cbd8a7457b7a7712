"""etcd watches on everything the apply set declares or owns, and the watchdog behind them.

Events go to the reconciler: drift on a declared key is repaired from the event itself, a change of
our inventory by another writer asks for a full reconcile, an event on a live instance goes to
`LiveInstances`. The watches start after the first full reconcile, from the revision it read, and
restart (from the last revision delivered) when they fail, fall silent or the set of prefixes changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.inventory import inventory_prefix
from ..core.model import DesiredState
from ..diff import minimal_prefixes
from ..errors import CompactedError, EtcdConnectionError
from ..etcd.store import Store, WatchEvent
from ..settings import DaemonSettings
from ..tasks import Backoff, cancel_and_wait
from .live import LiveInstances
from .reconcile import Reconciler, Status

log = logging.getLogger("etcdsync.daemon")

BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0


class Watches:
    def __init__(self, store: Store, settings: DaemonSettings, applyset: str, *, reconciler: Reconciler,
                 status: Status, live: LiveInstances, desired: Callable[[], DesiredState | None],
                 trigger: Callable[[int | None], None], reconciled: asyncio.Event, restart: asyncio.Event) -> None:
        self.store = store
        self.settings = settings
        self.applyset = applyset
        self.reconciler = reconciler
        self.status = status
        self.live = live
        self.desired = desired             # the last manifests loaded
        self.trigger = trigger             # ask for a full reconcile (see Daemon.trigger)
        self.reconciled = reconciled       # set by a finished full reconcile
        self.restart = restart             # set by a finished full reconcile: the prefixes may have changed
        self.batches = 0                   # answers (events or progress) the watches received so far

    def prefixes(self) -> list[str]:
        desired = self.reconciler.active or self.desired()
        assert desired is not None
        prefixes = set(desired.prefixes) | {i.prefix for i in desired.live}
        prefixes.add(inventory_prefix(self.settings.reserved, self.applyset))
        return minimal_prefixes(prefixes)

    async def run(self) -> None:
        """Watch every prefix from the revision after the last full read; restart when the set changes."""
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        moves = 0       # failures answered by resuming at once on another member, since an answer
        await self.reconciled.wait()
        start = self.reconciler.revision + 1
        while True:
            prefixes = self.prefixes()
            seen = {p: start - 1 for p in prefixes}
            endpoint = self.store.endpoint
            batches = self.batches
            history = self.store.changes     # etcd's history as these watches start from it
            tasks: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._watch_one(p, start, seen), name=f"watch {p}") for p in prefixes]
            tasks.append(asyncio.create_task(self._watchdog(prefixes, seen), name="watchdog"))
            failure: BaseException | None = None
            try:
                while True:
                    self.restart.clear()
                    restart = asyncio.create_task(self.restart.wait())
                    tasks.append(restart)
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    tasks.remove(restart)
                    restart.cancel()
                    failure = next((t.exception() for t in done if t is not restart and t.exception()), None)
                    if failure is not None or any(t in done for t in tasks):
                        break
                    if self.prefixes() != prefixes:
                        break
            finally:  # also when this loop is cancelled: the watch tasks must not outlive it
                await cancel_and_wait(*tasks)
            last = min(seen.values()) if seen else start - 1
            if failure is not None and not isinstance(failure, CompactedError) and self.store.changes != history:
                # the store found etcd's history replaced while these watches were failing (restored
                # from an older snapshot, wiped): their revisions are void, resuming from them would
                # find the change again later and re-read everything once more
                failure = CompactedError(f"{failure}; etcd's history was replaced meanwhile", 0)
            if isinstance(failure, CompactedError):
                log.warning("%s; full re-read", failure)
                start = await self._after_full_read(replaced=self.store.changes != history)
                continue
            if failure is not None:
                if last >= start or self.batches != batches:
                    # the watch delivered (an event or a progress answer) before failing: a new failure
                    backoff.reset()
                    moves = 0
                self.status.etcd_error = f"watch: {failure}"
                if self.store.endpoint != endpoint and moves < len(self.store.conn.endpoints) - 1:
                    # the store moved to another member: resume there at once (drift repair waits);
                    # once every member failed in a row without an answer, wait like with one member
                    # (moving on at once went round the dead members ~500 times a second)
                    moves += 1
                    log.warning("watch: %s; resuming from revision %d on %s", failure, last + 1, self.store.endpoint)
                else:
                    delay = backoff.next()
                    log.warning("watch: %s; resuming from revision %d in %.1fs", failure, last + 1, delay)
                    await asyncio.sleep(delay)
                if self.store.changes != history:
                    # etcd's history was replaced while this loop waited (the daemon re-reads):
                    # revision `last` is void, resuming from it would find the change once more
                    start = await self._after_full_read(replaced=True)
                    continue
                start = last + 1
                self.trigger(None)
                continue
            backoff.reset()
            # the prefixes changed: new ones start after the last full read, which covered them
            start = min(last + 1, self.reconciler.revision + 1)

    async def _after_full_read(self, *, replaced: bool) -> int:
        """The revision to watch from after a full read. A compacted revision needs a new one. After
        etcd's history was `replaced` the daemon re-reads on its own: when that read (one that began
        in the current history) is already done, watch on from it rather than read once more."""
        if not (replaced and self.reconciler.read_changes == self.store.changes and self.reconciler.revision):
            self.reconciled.clear()
            self.trigger(None)
            await self.reconciled.wait()
        return self.reconciler.revision + 1

    async def _watch_one(self, prefix: str, start: int, seen: dict[str, int]) -> None:
        async for batch in self.store.watch_prefix(prefix, start_revision=start):
            received = time.perf_counter()
            self.batches += 1
            seen[prefix] = max(seen[prefix], batch.revision if batch.progress else
                               max(ev.kv.mod_revision for ev in batch.events))
            self.status.etcd_error = None
            for ev in batch.events:
                await self._on_event(ev, received)

    async def _on_event(self, ev: WatchEvent, received: float) -> None:
        if await self.live.restore(ev):
            return
        if ev.kv.key.startswith(self.settings.reserved):
            # another writer changed our inventory (a concurrent apply): re-read everything
            if not self.reconciler.accounted(ev.kv.mod_revision):
                self.trigger(ev.kv.mod_revision)
            return
        result = await self.reconciler.repair(ev, received)
        if result is False:
            self.trigger(ev.kv.mod_revision)

    async def _watchdog(self, prefixes: list[str], seen: dict[str, int]) -> None:
        """A watch that silently stopped delivering: the prefix changed but no event came. Restart it.

        (gRPC keepalives catch a dead or paused member within ~7 s; this catches the rest.) A change
        the watch has not delivered one second after the probe saw it counts as missed.
        """
        while True:
            await asyncio.sleep(self.settings.watchdog)
            for p in prefixes:
                latest, _ = await self.store.latest_mod_revision(p)
                if latest > seen[p]:
                    await asyncio.sleep(1.0)
                    if latest > seen[p]:
                        raise EtcdConnectionError(f"watch on {p} is silent (missed revision {latest})")
