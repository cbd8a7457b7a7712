"""Apply a desired state: observe and plan (`diff`), refuse what must not run, execute the plan
(`execute`), and on a conflict re-read and re-plan, with backoff, until it commits or the attempts
run out (then a ConflictError names the keys that kept changing). Returns the Outcome."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .applymark import marked
from .claims import claim_key, claimed
from .core import planfile
from .core.inventory import Entry, inventory_prefix
from .core.model import DesiredState
from .core.plan import Change, Plan, plan
from .core.render import Result, count_results
from .diff import diff, observe, refuse
from .errors import ConflictError, EtcdsyncError, GuardError, Interrupted, RequestTooLargeError
from .etcd.store import Compare, Store
from .execute import Conflict, Executor, Layout, Limits, Superseded
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
    layout: Layout | None = None                        # how the first executed plan was to be committed
    shrunk: bool = False                                # etcd refused a batch as too large: limits were lowered
    limits: Limits | None = None                        # the limits in force at the end

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
    atomic: bool = False,
    on_layout: Callable[[Layout, int], None] | None = None,
    keep_unchanged: bool = True,
    interrupted: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Observe, plan, refuse or execute; re-read and re-plan on conflicts.

    `on_plan(plan, attempt)` is called with each plan before it is executed (the CLI prints the
    first one); `on_execute(plan)` once a plan passed every guard, right before its first write.
    (`diff.diff` plans without writing.) With `track_ownership` the
    outcome says which inventory chunk (and its revision) records each owned key afterwards.
    `superseded()` is asked before every transaction: when it says True (a newer desired state was
    loaded meanwhile) nothing more is committed and Superseded is raised. `interrupted()` likewise:
    when it names a signal, no further transaction is sent, those in flight are waited for, and
    Interrupted is raised (with `partial`, the outcome of what was committed).
    `on_layout(layout, attempt)` is told how each plan that passed the guards will be committed;
    with `atomic` a plan that needs more than one transaction (by the limits known, or because etcd
    refused its one transaction as too large) is refused with a GuardError before anything is written.
    `limits` learned from the server (lowered when it refuses a batch) stay lowered in the object
    given: pass the same one to every apply of a process. With `keep_unchanged` False the plans list
    no key that is in sync and owned as declared (`Plan.unchanged` counts them; see core.plan.plan).
    """
    limits = limits or Limits()
    options = options or Options()
    outcome: Outcome | None = None
    attempt = 0
    backoff = Backoff(0.05, 2.0)
    try:
        while True:
            p, snap = await diff(store, desired, applyset=applyset, reserved=reserved, options=options,
                                 keep_unchanged=keep_unchanged)
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
            _stop_if(interrupted, outcome)
            if on_execute is not None:
                on_execute(p)
            ex = Executor(store, snap, p, reserved=reserved, limits=limits, fences=fences, progress=progress,
                          on_commit=on_commit, superseded=superseded, interrupted=interrupted)
            _lay_out(ex, outcome, on_layout, attempt, atomic=atomic)
            try:
                await ex.run()
            except Conflict as conflict:
                _account(outcome, ex)
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
            except RequestTooLargeError as exc:
                _account(outcome, ex)
                too_large(limits, outcome, exc, atomic=atomic)
                continue
            except (EtcdsyncError, Superseded):
                _account(outcome, ex)      # the batches this executor committed before the error
                raise
            _account(outcome, ex)
            outcome.revision = ex.revision
            outcome.limits = limits
            if track_ownership:
                prefix = inventory_prefix(reserved, applyset)
                outcome.owned_in = _owned_in((ck, rev, entries) for ck, (rev, entries) in ex.chunks.items()
                                             if ck.startswith(prefix))
            return outcome
    except (EtcdsyncError, Superseded) as exc:
        # batches committed before the error are real writes: the caller records and reports them
        if outcome is not None and outcome.done and exc.partial is None:
            exc.partial = outcome
        raise


def _stop_if(interrupted: Callable[[], str | None], outcome: Outcome) -> None:
    """Before an executor starts: a signal received meanwhile stops the apply here."""
    stop = interrupted()
    if stop is not None:
        raise Interrupted(f"interrupted ({stop}): " + ("stopped after the transactions in flight" if outcome.done
                                                       else "nothing written"))


def _owned_in(chunks: Iterable[tuple[str, int, Mapping[str, Entry]]]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for ck, rev, entries in chunks:
        where = (ck, rev)    # one tuple per chunk, shared by its keys (100,000 keys: ~6 MB less)
        for key in entries:
            out.setdefault(key, where)
    return out


def refuse_split(layout: Layout) -> None:
    """--atomic: refuse a plan that needs more than one transaction."""
    if not layout.atomic:
        raise GuardError(f"--atomic: the plan needs {layout.transactions} transactions of at most "
                         f"{layout.max_ops} operations, not one; refusing (nothing written)")


def too_large(limits: Limits, outcome: Outcome, exc: RequestTooLargeError, *, atomic: bool) -> None:
    """etcd refused a transaction as too large: lower the limits (kept for the rest of the process)
    and say so; with --atomic that refusal is final (the one transaction was not committed)."""
    before = limits.max_ops
    limits.shrink()
    outcome.shrunk = True
    outcome.limits = limits
    log.info("etcd refused a transaction as too large; now at most %d ops / %d bytes", limits.max_ops, limits.max_bytes)
    if atomic:
        raise GuardError(f"--atomic: etcd refused the plan's one transaction of up to {before} operations as too "
                         f"large ({exc}); the server's limits (--max-txn-ops, --max-request-bytes) are lower than "
                         "the plan needs; refusing (nothing written)") from None


@marked   # like apply: a saved plan committed in several transactions is marked for views
async def apply_saved(
    store: Store,
    saved: planfile.SavedPlan,
    desired: DesiredState,
    *,
    options: Options | None = None,
    limits: Limits | None = None,
    atomic: bool = False,
    on_plan: Callable[[Plan, int], None] | None = None,
    on_layout: Callable[[Layout, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    who: str = "etcdsync",
    interrupted: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Apply exactly the changes of a saved plan (`etcdsync apply --plan`), never a new plan.

    The plan file is untrusted input: each of its changes must be exactly the change a fresh plan of
    `desired` against etcd now (with apply's own `options`) makes for that key, and the deletion
    guard runs again on them with those options; what is executed are the fresh changes (values
    from the manifests, never from the file). So a saved plan can only do a subset of what `apply`
    with the same manifests and flags would do.

    Refused (GuardError) when etcd is another cluster than the plan's, when the deletion guard
    refuses, or with `atomic` when it needs more than one transaction; refused (ConflictError,
    naming every key) when a secret's value in `desired` is not the one planned, when a planned key
    is neither declared nor owned, when any planned key moved since the plan was made (its revision
    or its ownership record), or when a change is not the one the fresh plan calls for (another
    value, action, owner or lease; a key of another apply set or under another client's lease
    without --take-ownership), all before anything is written. A compare that fails while
    committing (a writer raced the check) is a ConflictError too: a saved plan is never re-planned.

    One process at a time applies a given plan file: before its first write it claims the plan
    (claims.py; `who` is shown to a second process, which gets a ClaimedError and writes nothing),
    and every transaction compares that claim, so a plan split into several transactions is applied
    exactly once even when two processes apply it at the same moment.
    """
    options = options or Options()
    cluster = await store.cluster_id()
    if cluster != saved.cluster_id:
        raise GuardError(f"the plan was made for etcd cluster {saved.cluster_id}, these endpoints are cluster "
                         f"{cluster}; refusing (nothing written)")
    bad = planfile.secret_mismatches(saved, desired)
    if bad:
        raise PlanMismatchError(bad)
    limits = limits or Limits()
    pending = {sc.change.key for sc in saved.changes}
    outcome: Outcome | None = None
    attempt = 0
    claim = contextlib.AsyncExitStack()
    fences: list[Compare] = []
    try:
        while True:
            committed = len(outcome.done) if outcome else 0
            snap = await observe(store, desired, applyset=saved.applyset, reserved=saved.reserved)
            inv = snap.ownership.inventory(saved.applyset)
            others = snap.ownership.owners_except(saved.applyset)
            fresh = plan(desired, snap.observed, inv, others, options)
            bad = planfile.unknown(saved, fresh, pending)
            if bad:
                raise PlanMismatchError(bad, committed=committed)
            moved = planfile.stale(saved, snap.observed, inv.owned, others, pending)
            if moved:
                raise StalePlanError(moved, committed=committed)
            bad, changes = planfile.mismatches(saved, fresh, pending)
            if bad:
                raise PlanMismatchError(bad, committed=committed)
            p = planfile.to_apply(saved.applyset, changes, len(inv.owned), options)
            if outcome is None:
                outcome = Outcome(p, revision=snap.revision)
                if on_plan is not None:
                    on_plan(p, 0)
            refuse(p, saved.applyset)
            outcome.read_revision = snap.revision
            outcome.limits = limits
            if not p.has_changes:
                return outcome
            _stop_if(interrupted, outcome)
            if not fences:     # before the first write
                key = claim_key(saved.reserved, saved.applyset, planfile.plan_id(saved))
                fences.append(await claim.enter_async_context(
                    claimed(store, key, who=who, what=f"applying saved plan {planfile.plan_id(saved)}")))
            ex = Executor(store, snap, p, reserved=saved.reserved, limits=limits, progress=progress, fences=fences,
                          interrupted=interrupted)
            _lay_out(ex, outcome, on_layout, attempt, atomic=atomic)
            try:
                await ex.run()
            except Conflict as conflict:
                _account(outcome, ex)
                keys = conflict.keys
                raise ConflictError(
                    f"{keys[0]}: changed by another writer while the saved plan was being applied"
                    + (f" (and {len(keys) - 1} more keys: {', '.join(keys[1:6])})" if len(keys) > 1 else "")
                    + f"; {len(outcome.done)} changes were committed before; a saved plan is never re-planned: "
                    "make it again with `etcdsync diff --out`", keys) from None
            except RequestTooLargeError as exc:
                _account(outcome, ex)
                too_large(limits, outcome, exc, atomic=atomic)
                pending -= set(ex.done)
                attempt += 1
                continue
            except EtcdsyncError:
                _account(outcome, ex)      # the batches this executor committed before the error
                raise
            _account(outcome, ex)
            outcome.revision = ex.revision
            return outcome
    except EtcdsyncError as exc:
        if outcome is not None and outcome.done and exc.partial is None:
            exc.partial = outcome
        raise
    finally:
        await claim.aclose()


def _lay_out(ex: Executor, outcome: Outcome, on_layout: Callable[[Layout, int], None] | None, attempt: int, *,
             atomic: bool) -> None:
    """Before an executor's first write: its split is the outcome's layout (the first one), shown by
    `on_layout`; with `atomic`, a split plan is refused."""
    layout = ex.layout()
    outcome.layout = outcome.layout or layout
    if on_layout is not None:
        on_layout(layout, attempt)
    if atomic:
        refuse_split(layout)


def _account(outcome: Outcome, ex: Executor) -> None:
    """Add what an executor committed (also when it stopped half way) to the outcome."""
    outcome.done.update(ex.done)
    outcome.transactions += ex.transactions
    outcome.revisions.extend(ex.revisions)


class PlanMismatchError(ConflictError):
    """A saved plan's changes are not what the manifests and etcd call for now (forged, hand-edited,
    or the manifests changed those keys since): every key is named, never a value."""

    def __init__(self, problems: list[str], *, committed: int = 0) -> None:
        done = "nothing written" if not committed else f"{committed} changes were committed before"
        super().__init__(
            f"the saved plan does not match the manifests and etcd: {'; '.join(problems)}; refusing ({done}; "
            "make the plan again with `etcdsync diff --out`)", [line.split(": ", 1)[0] for line in problems])


class StalePlanError(ConflictError):
    """Planned keys moved since a saved plan was made: every one is named, with both revisions."""

    def __init__(self, stale: list[planfile.Stale], *, committed: int = 0) -> None:
        self.stale = stale
        done = "nothing written" if not committed else f"{committed} changes were committed before"
        super().__init__(
            f"the saved plan is stale: {len(stale)} planned key{'s' if len(stale) != 1 else ''} changed since it "
            f"was made: {'; '.join(str(s) for s in stale)}; refusing ({done}; make the plan again with "
            "`etcdsync diff --out`)", [s.key for s in stale])
