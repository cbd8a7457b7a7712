"""One level-triggered reconcile, in two sizes.

`full()` re-reads everything the apply set declares or owns, plans and applies (the same code as
`etcdsync apply`). `repair()` answers one watch event on a declared key straight away: it compares
the event's mod_revision (or absence) and puts the declared value back, touching only that key; if
the compare fails, something newer happened and a full reconcile is asked for instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..apply import Outcome, apply
from ..core.history import Suspension, make_entry
from ..core.model import DesiredState, Policy
from ..core.plan import Action
from ..core.render import result_summary
from ..errors import ConflictError, EtcdsyncError, GuardError, OwnershipError
from ..etcd.store import Compare, Put, Store, WatchEvent, absent, mod_is
from ..execute import Limits, Superseded
from ..history import outcome_entry, record
from ..settings import Options
from .flaps import FlapDetector, FlapSettings
from .metrics import Metrics

log = logging.getLogger("etcdsync.reconcile")

OWN_REVISIONS_KEPT = 4096
REPAIR_WINDOW = 1.0     # seconds: drift repairs within one window are recorded as one history entry


class HistoryLog:
    """Records the daemon's writes in the apply set's history (see etcdsync/history.py).

    A full reconcile that wrote records one entry at once. Drift repairs are coalesced: the first
    repair opens a window of REPAIR_WINDOW seconds, and one entry at its end lists every repair of
    the window (key and revision, capped) and the keys found flapping in it, so a writer fighting the
    daemon costs at most one entry per window, never one per repair.
    """

    def __init__(self, store: Store, *, reserved: str, applyset: str, limit: int, who: str,
                 source: Callable[[DesiredState | None], Awaitable[dict[str, str]]],
                 fences: Callable[[], Sequence[Compare]], window: float = REPAIR_WINDOW) -> None:
        self.store = store
        self.reserved = reserved
        self.applyset = applyset
        self.limit = limit
        self.who = who
        self.source = source
        self.fences = fences
        self.window = window
        self.repairs: list[tuple[str, int]] = []
        self.flapping: set[str] = set()
        self.desired: DesiredState | None = None
        self._flush: asyncio.Task[None] | None = None

    async def reconciled(self, outcome: Outcome, desired: DesiredState, *, failed: str = "") -> None:
        """Record a full reconcile's writes; `failed`: why it stopped after them (a conflict on every
        retry, a refusal, newer manifests or a suspension between two of its transactions)."""
        entry = outcome_entry(outcome, applyset=self.applyset, kind="reconcile", who=self.who,
                              source=await self.source(desired), failed=failed)
        if entry is not None:
            await record(self.store, self.reserved, entry, limit=self.limit, fences=self.fences())

    def repaired(self, key: str, revision: int, desired: DesiredState, *, flapping: bool = False) -> None:
        self.repairs.append((key, revision))
        self.desired = desired
        if flapping:
            self.flapping.add(key)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._flush_later(), name="history")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        await self.flush()

    async def flush(self) -> None:
        repairs, flapping, self.repairs, self.flapping = self.repairs, self.flapping, [], set()
        if not repairs:
            return
        entry = make_entry(applyset=self.applyset, kind="repair", who=self.who, revisions=[r for _, r in repairs],
                           source=await self.source(self.desired), counts={"repaired": len(repairs)},
                           keys=[k for k, _ in repairs], repairs=repairs, flapping=flapping)
        try:
            await record(self.store, self.reserved, entry, limit=self.limit, fences=self.fences())
        except Exception as exc:  # noqa: BLE001 - history is never worth stopping the daemon for
            log.warning("history: repairs not recorded: %s", exc)

    def forget(self) -> None:
        """etcd's history was replaced (restored from an older snapshot, rebuilt): the open window's
        repairs were made in a history that is gone, and their revisions name other writes now, so
        they are dropped, not recorded."""
        if self.repairs:
            log.warning("history: %d repairs made before etcd's revision went backwards are not recorded",
                        len(self.repairs))
        self.repairs, self.flapping = [], set()

    async def close(self) -> None:
        """Record the open window now (shutdown)."""
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
            with contextlib.suppress(Exception):
                await self.flush()


@dataclass
class Status:
    """What /readyz reports."""

    manifests_error: str | None = None
    etcd_error: str | None = None
    reconcile_error: str | None = None
    last_success: float | None = None
    leader: bool = True


class Reconciler:
    """One writer per apply set: full reconciles and per-key repairs never run at the same time.

    `active` is the desired state repairs keep. It becomes the new manifests the moment a reconcile
    starts writing them (never after it finishes), so no repair compares against an older manifest.
    Events at revisions this reconciler committed itself, or at or below the revision the last full
    reconcile read at, are never drift: that reconcile already accounted for them.
    """

    def __init__(
        self,
        store: Store,
        *,
        applyset: str,
        reserved: str,
        options: Options,
        metrics: Metrics,
        status: Status,
        fences: Callable[[], Sequence[Compare]] = lambda: (),
        own_leases: Callable[[], frozenset[int]] = frozenset,
        flaps: FlapSettings | None = None,
        wake: Callable[[], None] = lambda: None,
        history: HistoryLog | None = None,
    ) -> None:
        self.store = store
        self.history = history                       # records what the daemon wrote (None: nothing)
        self.suspended: Suspension | None = None     # set while `etcdsync suspend` holds: no writes
        self.stopping = False                         # the daemon is stopping: no new transaction
        self._running = 0                             # full reconciles in progress (idle() waits for 0)
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped: tuple[Outcome, str] | None = None   # a full reconcile that stopped after some writes
        self.flaps = FlapDetector(flaps or FlapSettings())
        """Keys another writer fights: left alone for a cool-down (see daemon/flaps.py)."""
        self.wake = wake                             # asks for a full reconcile (when a cool-down ends)
        self.own_leases = own_leases                 # the daemon's leases: keys under them are not conflicts
        self.applyset = applyset
        self.reserved = reserved
        self.options = options
        self.metrics = metrics
        self.status = status
        self.fences = fences
        self.limits = Limits()
        self.lock = asyncio.Lock()
        self.active: DesiredState | None = None     # what repair() keeps (see the class docstring)
        self.revision = 0                            # the revision the last successful full reconcile read at
        self.read_changes = -1                       # store.changes when that reconcile started reading
        self.owned_in: dict[str, tuple[str, int]] = {}   # owned key -> (its inventory chunk, chunk mod_revision)
        self._own: set[int] = set()                  # revisions of our own commits (bounded, oldest dropped)
        self._own_order: collections.deque[int] = collections.deque()
        self._warned: dict[str, int] = {}            # warn-policy key -> mod_revision already reported

    def forget_revisions(self) -> None:
        """etcd's data was wiped or restored, or the cluster rebuilt: every revision seen is void (the
        new history reuses them), so nothing is "already accounted for" until the next full read."""
        self.revision = 0
        self._own.clear()
        self._own_order.clear()
        self.owned_in = {}
        self._warned = {}
        if self.history is not None:
            self.history.forget()

    def own(self, revision: int) -> bool:
        """True for a revision this reconciler committed."""
        return revision in self._own

    def _committed(self, revision: int) -> None:
        self._own.add(revision)
        self._own_order.append(revision)
        while len(self._own_order) > OWN_REVISIONS_KEPT:
            self._own.discard(self._own_order.popleft())

    def _start_writing(self, desired: DesiredState) -> None:
        self.active = desired

    async def full(self, desired: DesiredState, *, superseded: Callable[[], bool] = lambda: False) -> Outcome | None:
        """Apply `desired`; on refusal or conflict keep the last good state. Connection errors propagate.
        When `superseded()` turns True before a transaction (newer manifests were loaded, e.g. while
        etcd was away), nothing more of this plan is written and None is returned: the caller plans
        the newer state instead of committing an older manifest."""
        self._running += 1
        self._idle.clear()
        try:
            return await self._full_recorded(desired, superseded)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def idle(self) -> None:
        """Until no full reconcile is in progress, its history entry included."""
        await self._idle.wait()

    async def _full_recorded(self, desired: DesiredState, superseded: Callable[[], bool]) -> Outcome | None:
        error: EtcdsyncError | None = None
        async with self.lock:
            if self.suspended is not None or self.stopping:
                return None
            self._stopped = None
            try:
                outcome = await self._full(desired, lambda: superseded() or self.suspended is not None
                                           or self.stopping)
            except EtcdsyncError as exc:       # etcd unreachable, a permission refused: retried by the caller
                self._stop(exc, str(exc))
                outcome, error = None, exc
            stopped, self._stopped = self._stopped, None
        if self.history is not None:
            if outcome is not None and outcome.done:
                await self.history.reconciled(outcome, desired)
            elif stopped is not None:      # it wrote some of its transactions, then stopped
                try:
                    await self.history.reconciled(stopped[0], desired, failed=stopped[1])
                except EtcdsyncError as exc:
                    log.warning("history: the %d writes of a reconcile that stopped half way are not recorded: %s",
                                len(stopped[0].done), exc)
        if error is not None:
            raise error
        return outcome

    async def _full(self, desired: DesiredState, superseded: Callable[[], bool]) -> Outcome | None:
        start = time.perf_counter()
        held = self.flaps.flapping(time.monotonic())
        planned = desired
        if held:   # a flapping key is planned as policy warn for its cool-down: reported, not repaired
            planned = dataclasses.replace(desired, keys={
                k: d._replace(policy=Policy.WARN) if k in held and d.policy is Policy.ENFORCE else d
                for k, d in desired.keys.items()})
        try:
            options = dataclasses.replace(self.options, own_leases=self.own_leases())
            changes = self.store.changes
            outcome = await apply(self.store, planned, applyset=self.applyset, reserved=self.reserved,
                                  options=options, limits=self.limits, fences=self.fences(),
                                  on_commit=self._committed, on_execute=lambda _plan: self._start_writing(desired),
                                  track_ownership=True, superseded=superseded, keep_unchanged=False)
        except Superseded as exc:
            if self.stopping:
                log.info("reconcile: stopped writing: the daemon is stopping")
                self._stop(exc, "stopped: the daemon is stopping")
            elif self.suspended is not None:
                log.info("reconcile: stopped writing: the apply set was suspended")
                self._stop(exc, "stopped: the apply set was suspended")
            else:
                log.info("reconcile: newer manifests were loaded meanwhile; planning those instead")
                self._stop(exc, "stopped: newer manifests were loaded")
            return None
        except GuardError as exc:
            self._failed("refused", f"refused, keeping the last good state: {exc}")
            self._stop(exc, str(exc))
            return None
        except OwnershipError as exc:
            self._failed("conflict", f"ownership conflict, keeping the last good state: {exc}")
            self._stop(exc, str(exc))
            return None
        except ConflictError as exc:
            self._failed("conflict", f"conflict: {exc}")
            self._stop(exc, str(exc))
            return None
        self.metrics.apply_duration.observe(time.perf_counter() - start)
        self.metrics.reconciles.labels("success").inc()
        self.metrics.last_success.set_to_current_time()
        self.active = desired
        self.revision = outcome.read_revision
        self.read_changes = changes
        self.owned_in = outcome.owned_in
        p = outcome.plan
        self.metrics.owned_keys.set(p.owned_after)
        self.status.reconcile_error = None
        self.status.last_success = time.time()
        if outcome.done:
            keys = sorted(outcome.done)
            unchanged = p.unchanged + sum(1 for c in p.changes if not c.writes)   # keys in sync are counted
            log.info("reconcile: %s: %s%s", result_summary(outcome.done, unchanged), ", ".join(keys[:20]),
                     f" (+{len(keys) - 20} more)" if len(keys) > 20 else "")
        warned: dict[str, int] = {}
        for c in p.changes:
            if c.action is Action.DRIFT and c.key not in held:
                warned[c.key] = c.revision
                if self._warned.get(c.key) != c.revision:
                    self.metrics.drift.labels("warn", "reported").inc()
                    log.warning("%s: drift held by policy warn (etcd differs from the manifest)", c.key)
        self._warned = warned
        return outcome

    def _stop(self, exc: Exception, why: str) -> None:
        """A full reconcile stopped: what it committed before (if anything) is recorded by `full`."""
        partial = getattr(exc, "partial", None)
        if isinstance(partial, Outcome) and partial.done:
            self._stopped = (partial, why)

    def _failed(self, result: str, message: str) -> None:
        self.metrics.reconciles.labels(result).inc()
        self.metrics.errors.labels(result).inc()
        self.status.reconcile_error = message
        log.error("reconcile: %s", message)

    def accounted(self, revision: int) -> bool:
        """An event at this revision needs no answer: ours, or seen by the last full reconcile."""
        return revision <= self.revision or revision in self._own

    async def repair(self, event: WatchEvent, received: float) -> bool | None:
        """Fix drift on one declared key from its watch event.

        Returns True when repaired, False when a full reconcile is needed, None when nothing to do.
        The transaction compares the key (its event's mod_revision, or its absence) and the inventory
        chunk that records it as ours, so a repair never writes over a newer write and never puts a
        key the apply set no longer owns.
        """
        async with self.lock:
            return await self._repair(event, received)

    async def _repair(self, event: WatchEvent, received: float) -> bool | None:
        desired = self.active
        if desired is None or self.accounted(event.kv.mod_revision) or self.suspended is not None:
            return None
        d = desired.keys.get(event.kv.key)
        if d is None:
            return None
        if event.type == "put":
            if event.kv.value == d.value:
                return None
            if d.policy is Policy.WARN:
                if self._warned.get(d.key) != event.kv.mod_revision:
                    self._warned[d.key] = event.kv.mod_revision
                    self.metrics.drift.labels("warn", "reported").inc()
                    log.warning("%s: drift held by policy warn (etcd differs from the manifest)", d.key)
                return None
            if d.policy is Policy.CREATE_ONLY:
                return None
            guard = mod_is(d.key, event.kv.mod_revision)
        else:
            guard = absent(d.key)
        owned = self.owned_in.get(d.key)
        if owned is None:
            return False     # not recorded as ours: only a full reconcile may decide
        if self.flaps.holding(d.key, time.monotonic()):
            self.metrics.drift.labels(d.policy.value, "flapping").inc()
            return None      # another writer fights it: left alone until the cool-down ends
        chunk, chunk_rev = owned
        result = await self.store.txn([guard, mod_is(chunk, chunk_rev), *self.fences()], [Put(d.key, d.value)])
        if not result.succeeded:
            return False
        self._committed(result.revision)
        elapsed = time.perf_counter() - received
        self.metrics.repair_duration.observe(elapsed)
        self.metrics.drift.labels(d.policy.value, "repaired").inc()
        log.info("%s: drift repaired (%s, policy %s) in %.1f ms", d.key,
                 "deleted" if event.type == "delete" else "changed", d.policy.value, elapsed * 1000)
        flapping = self.flaps.repaired(d.key, time.monotonic())
        if flapping:
            s = self.flaps.settings
            log.warning("%s: flapping: another writer changed it again after %d repairs within %gs; leaving it "
                        "alone for %gs", d.key, s.threshold, s.window, s.cooldown)
            asyncio.get_running_loop().call_later(s.cooldown + 0.05, self.wake)
        if self.history is not None:
            self.history.repaired(d.key, result.revision, desired, flapping=flapping)
        return True
