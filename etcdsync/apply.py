"""Apply a desired state: observe and plan (`diff`), refuse what must not run, execute the plan
(`execute`), and on a conflict re-read and re-plan, with backoff, until it commits or the attempts
run out (then a ConflictError names the keys that kept changing). Returns the Outcome."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .applymark import marked
from .core.inventory import Entry, inventory_prefix
from .core.model import DesiredState
from .core.plan import Change, Plan
from .core.render import Result, count_results
from .diff import diff, refuse
from .errors import ConflictError, RequestTooLargeError
from .etcd.store import Compare, Store
from .execute import Conflict, Executor, Limits, Superseded
from .settings import Options
from .tasks import Backoff

log = logging.getLogger(__name__)


@dataclass(repr=False)
class Outcome:
    """What an apply did: the first plan (what was shown), per-key results of committed batches."""

    plan: Plan
    done: dict[str, Change] = field(default_factory=dict)
    revision: int = 0
    transactions: int = 0
    retried: list[str] = field(default_factory=list)    # keys that changed under us and were re-planned
    revisions: list[int] = field(default_factory=list)  # revisions of our own committed transactions
    read_revision: int = 0                              # the revision the last plan was read at
    owned_in: dict[str, tuple[str, int]] = field(default_factory=dict)  # with track_ownership: key -> chunk, rev

    def __repr__(self) -> str:  # the default would list every key
        return f"Outcome({self.plan!r}, done={len(self.done)}, transactions={self.transactions})"

    def results(self) -> Counter[Result]:
        """How many committed changes ended in each result."""
        return count_results(self.done.values())


@marked   # a plan committed in several transactions is marked for views (applymark.py)
async def apply(
    store: Store,
    desired: DesiredState,
    *,
    applyset: str,
    reserved: str,
    options: Options | None = None,
    limits: Limits | None = None,
    fences: Sequence[Compare] = (),
    max_attempts: int = 5,
    on_plan: Callable[[Plan, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_commit: Callable[[int], None] | None = None,
    on_execute: Callable[[Plan], None] | None = None,
    track_ownership: bool = False,
    superseded: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Observe, plan, refuse or execute; re-read and re-plan on conflicts.

    `on_plan(plan, attempt)` is called with each plan before it is executed (the CLI prints the
    first one); `on_execute(plan)` once a plan passed every guard, right before its first write.
    (`diff.diff` plans without writing.) With `track_ownership` the
    outcome says which inventory chunk (and its revision) records each owned key afterwards.
    `superseded()` is asked before every transaction: when it says True (a newer desired state was
    loaded meanwhile) nothing more is committed and Superseded is raised.
    """
    limits = limits or Limits()
    options = options or Options()
    outcome: Outcome | None = None
    attempt = 0
    backoff = Backoff(0.05, 2.0)
    while True:
        p, snap = await diff(store, desired, applyset=applyset, reserved=reserved, options=options)
        if outcome is None:
            outcome = Outcome(p, revision=snap.revision)
        if on_plan is not None:
            on_plan(p, attempt)
        refuse(p, applyset)
        outcome.read_revision = snap.revision
        if not p.has_changes:
            if track_ownership:
                inv = snap.ownership.inventory(applyset)
                outcome.owned_in = _owned_in((ck, c.mod_revision, c.entries) for ck, c in inv.chunks.items())
            return outcome
        if superseded():
            raise Superseded()
        if on_execute is not None:
            on_execute(p)
        ex = Executor(store, snap, p, reserved=reserved, limits=limits, fences=fences, progress=progress,
                      on_commit=on_commit, superseded=superseded)
        try:
            await ex.run()
        except Conflict as conflict:
            outcome.done.update(ex.done)
            outcome.transactions += ex.transactions
            outcome.revisions.extend(ex.revisions)
            attempt += 1
            outcome.retried.extend(k for k in conflict.keys if k not in outcome.retried)
            log.info("conflict on %s; re-reading and re-planning (attempt %d)", ", ".join(conflict.keys[:5]), attempt + 1)
            if attempt >= max_attempts:
                keys = conflict.keys
                raise ConflictError(
                    f"{keys[0]}: conflict, changed by another writer on each of {max_attempts} attempts"
                    + (f" (and {len(keys) - 1} more keys: {', '.join(keys[1:6])})" if len(keys) > 1 else ""),
                    keys,
                ) from None
            await backoff.sleep()
            continue
        except RequestTooLargeError:
            outcome.done.update(ex.done)
            outcome.transactions += ex.transactions
            outcome.revisions.extend(ex.revisions)
            limits.shrink()
            log.info("etcd refused a transaction as too large; now at most %d ops / %d bytes",
                     limits.max_ops, limits.max_bytes)
            continue
        outcome.done.update(ex.done)
        outcome.transactions += ex.transactions
        outcome.revisions.extend(ex.revisions)
        outcome.revision = ex.revision
        if track_ownership:
            prefix = inventory_prefix(reserved, applyset)
            outcome.owned_in = _owned_in((ck, rev, entries) for ck, (rev, entries) in ex.chunks.items()
                                         if ck.startswith(prefix))
        return outcome


def _owned_in(chunks: Iterable[tuple[str, int, Mapping[str, Entry]]]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for ck, rev, entries in chunks:
        for key in entries:
            out.setdefault(key, (ck, rev))
    return out
