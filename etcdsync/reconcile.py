"""One level-triggered reconcile, in two sizes.

`full()` re-reads everything the apply set declares or owns, plans and applies (the same code as
`etcdsync apply`). `repair()` answers one watch event on a declared key straight away: it compares
the event's mod_revision (or absence) and puts the declared value back, touching only that key; if
the compare fails, something newer happened and a full reconcile is asked for instead.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .apply import Limits, Outcome, apply
from .errors import ConflictError, GuardError, OwnershipError
from .metrics import Metrics
from .model import DesiredState, Policy
from .plan import Action, Options
from .render import result_summary
from .store import Compare, Put, Store, WatchEvent, absent, mod_is

log = logging.getLogger("etcdsync.reconcile")


@dataclass
class Status:
    """What /readyz reports."""

    manifests_error: str | None = None
    etcd_error: str | None = None
    reconcile_error: str | None = None
    last_success: float | None = None
    leader: bool = True


class Reconciler:
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
    ) -> None:
        self.store = store
        self.applyset = applyset
        self.reserved = reserved
        self.options = options
        self.metrics = metrics
        self.status = status
        self.fences = fences
        self.limits = Limits()
        self.active: DesiredState | None = None     # the last desired state that applied (what repair() keeps)
        self.revision = 0                            # etcd revision after the last full reconcile
        self.own_revisions: collections.deque[int] = collections.deque(maxlen=4096)  # our commits

    async def full(self, desired: DesiredState) -> Outcome | None:
        """Apply `desired`; on refusal or conflict keep the last good state. Connection errors propagate."""
        start = time.perf_counter()
        try:
            outcome = await apply(self.store, desired, applyset=self.applyset, reserved=self.reserved,
                                  options=self.options, limits=self.limits, fences=self.fences(),
                                  on_commit=self.own_revisions.append)
        except GuardError as exc:
            self._failed("refused", f"refused, keeping the last good state: {exc}")
            return None
        except OwnershipError as exc:
            self._failed("conflict", f"ownership conflict, keeping the last good state: {exc}")
            return None
        except ConflictError as exc:
            self._failed("conflict", f"conflict: {exc}")
            return None
        self.metrics.apply_duration.observe(time.perf_counter() - start)
        self.metrics.reconciles.labels("success").inc()
        self.metrics.last_success.set_to_current_time()
        self.active = desired
        self.revision = max(outcome.revision, self.revision)
        p = outcome.plan
        owned = p.owned_after
        self.metrics.owned_keys.set(owned)
        self.status.reconcile_error = None
        self.status.last_success = time.time()
        if outcome.done:
            keys = sorted(outcome.done)
            unchanged = sum(1 for c in p.changes if not c.writes)
            log.info("reconcile: %s: %s%s", result_summary(outcome.done, unchanged), ", ".join(keys[:20]),
                     f" (+{len(keys) - 20} more)" if len(keys) > 20 else "")
        for c in p.changes:
            if c.action is Action.DRIFT:
                self.metrics.drift.labels("warn", "reported").inc()
                log.warning("%s: drift held by policy warn (etcd differs from the manifest)", c.key)
        return outcome

    def _failed(self, result: str, message: str) -> None:
        self.metrics.reconciles.labels(result).inc()
        self.metrics.errors.labels(result).inc()
        self.status.reconcile_error = message
        log.error("reconcile: %s", message)

    async def repair(self, event: WatchEvent, received: float) -> bool | None:
        """Fix drift on one declared key from its watch event.

        Returns True when repaired, False when a full reconcile is needed, None when nothing to do.
        """
        desired = self.active
        if desired is None:
            return None
        d = desired.keys.get(event.kv.key)
        if d is None:
            return None
        if event.type == "put":
            if event.kv.value == d.value:
                return None
            if d.policy is Policy.WARN:
                self.metrics.drift.labels("warn", "reported").inc()
                log.warning("%s: drift held by policy warn (etcd differs from the manifest)", d.key)
                return None
            if d.policy is Policy.CREATE_ONLY:
                return None
            guard = mod_is(d.key, event.kv.mod_revision)
        else:
            guard = absent(d.key)
        result = await self.store.txn([guard, *self.fences()], [Put(d.key, d.value)])
        if not result.succeeded:
            return False
        self.revision = max(self.revision, result.revision)
        self.own_revisions.append(result.revision)
        elapsed = time.perf_counter() - received
        self.metrics.repair_duration.observe(elapsed)
        self.metrics.drift.labels(d.policy.value, "repaired").inc()
        log.info("%s: drift repaired (%s, policy %s) in %.1f ms", d.key,
                 "deleted" if event.type == "delete" else "changed", d.policy.value, elapsed * 1000)
        return True
