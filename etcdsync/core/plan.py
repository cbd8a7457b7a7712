"""The planner (pure): desired state + what etcd holds + ownership -> a Plan with one Change per key.

No I/O and no logging here: the same function serves `diff`, `apply` and the daemon, and is
unit-tested without etcd.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from operator import itemgetter
from typing import NamedTuple, Protocol

from ..settings import Options
from .inventory import Entry, Inventory
from .model import DesiredKey, DesiredState, Policy, ServiceInstance, Source, source_of
from .selector import select


class Action(StrEnum):
    """The closed vocabulary of what happens to one key."""

    CREATE = "create"        # absent -> put
    UPDATE = "update"        # value differs and the policy lets us write -> put
    ADOPT = "adopt"          # exists unowned with the desired value -> recorded as owned
    DELETE = "delete"        # owned, no longer declared -> deleted
    RELEASE = "release"      # owned, no longer declared, prune: false (or already gone) -> forgotten
    UNCHANGED = "unchanged"  # nothing to write
    DRIFT = "drift"          # differs, held by policy `warn`: reported, not touched
    CONFLICT = "conflict"    # owned by another apply set and no --take-ownership


WRITES = frozenset({Action.CREATE, Action.UPDATE, Action.ADOPT, Action.DELETE, Action.RELEASE})


class ObservedLike(Protocol):
    """What the planner reads of a key in etcd (the adapter's KeyValue fits, so it is used as is)."""

    @property
    def value(self) -> bytes: ...
    @property
    def mod_revision(self) -> int: ...
    @property
    def lease(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """One key as etcd holds it (for tests and callers without a KeyValue)."""

    value: bytes
    mod_revision: int
    lease: int = 0


class Change(NamedTuple):
    """One key's outcome (a NamedTuple: built once per declared key, on the hot path)."""

    action: Action
    key: str
    old: bytes | None            # value in etcd (None: absent)
    new: bytes | None            # value to write / declared (None: delete/release)
    revision: int                # mod_revision seen when planning (0: absent)
    prefix: str = ""
    policy: Policy = Policy.ENFORCE
    prune: bool = True
    secret: bool = False
    own: bool = False            # this change adds the key to the inventory (create/adopt/takeover)
    retag: bool = False          # the inventory entry's prefix/prune flag must be rewritten
    owner: str | None = None     # another apply set that owns the key (conflict or takeover)
    note: str = ""
    document: str = ""
    origin: Source | str | None = None  # where the key was declared: `source` (see model.compact_source)
    at: int = 0
    lease: int = 0               # another client's lease holding the key (conflict or takeover)

    @property
    def source(self) -> Source | None:
        return source_of(self.origin, self.at)

    @property
    def writes(self) -> bool:
        return self.action in WRITES or self.retag or self.own

    @property
    def adopts_unowned(self) -> bool:
        """The key exists, no apply set owns it, and this change records it as ours (the per-change
        "adopt" flag of the JSON plan; a takeover from another set is not one, an update may be)."""
        return self.own and self.owner is None and self.action is not Action.CREATE

    @property
    def puts_value(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE)


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """A ttl/check instance: reported by diff, written only by `etcdsync run`."""

    instance: ServiceInstance
    present: bool
    current: bytes | None


@dataclass(frozen=True, slots=True, repr=False)
class Plan:
    applyset: str
    changes: tuple[Change, ...]
    live: tuple[LiveStatus, ...] = ()
    owned_before: int = 0
    refused: str | None = None             # the deletion guard's reason, when it refuses
    counts: Mapping[str, int] = field(default_factory=dict)
    kept: int = 0                          # owned keys not planned (-l: other documents; --prune=false)
    # keys in sync and owned (nothing to write, ownership record as declared) that plan() was asked
    # not to list (keep_unchanged=False): counted here and in counts["unchanged"], not in `changes`
    unchanged: int = 0
    _writes: tuple[Change, ...] | None = field(default=None, init=False, repr=False, compare=False)  # cache

    def __repr__(self) -> str:  # the default would list every key
        return f"Plan(applyset={self.applyset!r}, changes={len(self.changes)}, counts={dict(self.counts)})"

    @property
    def conflicts(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action is Action.CONFLICT)

    def conflict_message(self, applyset: str) -> str:
        """One line for the first conflict: the key and who holds it (another apply set or a lease)."""
        first = self.conflicts[0]
        more = len(self.conflicts) - 1
        rest = f" (and {more} more key{'s' if more != 1 else ''})" if more else ""
        if first.owner is None:
            return f"{first.key}: {first.note}{rest}; pass --take-ownership to take it (it is then written without the lease)"
        return f"{first.key}: owned by apply set {first.owner!r}, not {applyset!r}{rest}; pass --take-ownership to move them"

    @property
    def has_changes(self) -> bool:
        """True when `apply` would write anything (drift held by `warn` does not count)."""
        return any(c.writes for c in self.changes)

    @property
    def owned_after(self) -> int:
        n = self.owned_before
        for c in self.changes:
            if c.own:
                n += 1
            elif c.action in (Action.DELETE, Action.RELEASE):
                n -= 1
        return n

    @property
    def writes(self) -> tuple[Change, ...]:
        """The changes that write (computed once: the executor, the apply marker and the CLI ask)."""
        writes = self._writes
        if writes is None:
            writes = tuple(c for c in self.changes if c.writes)
            object.__setattr__(self, "_writes", writes)   # a cache of the frozen plan's own changes
        return writes


def retag_note(entry: Entry, d: DesiredKey) -> str:
    """What changes in a key's ownership record (its prefix, prune or secret flag, its document)."""
    parts = []
    if entry.prefix != d.prefix:
        parts.append(f"prefix {entry.prefix} -> {d.prefix}")
    if entry.prune != d.prune:
        parts.append(f"prune {str(entry.prune).lower()} -> {str(d.prune).lower()}")
    if entry.secret != d.secret:
        parts.append(f"secret {str(entry.secret).lower()} -> {str(d.secret).lower()}")
    if entry.document != d.document:
        parts.append(f"document {entry.document or '(not recorded)'} -> {d.document or '(none)'}")
    return "ownership record: " + ", ".join(parts)


class SyncedObserved(Protocol):
    """An observed mapping that knows, without a look-up per key, which declared keys hold their value.

    `synced(keys)`: key -> mod_revision of every key that holds exactly the value `keys[key]` declares,
    with no lease, read as `observed[key]` would answer; empty when `keys` is not the very mapping the
    snapshot was read for (diff.Observed). `plan` counts such a key in sync without building its Seen."""

    def synced(self, keys: Mapping[str, DesiredKey]) -> Mapping[str, int]: ...


_NOTHING_SYNCED: Mapping[str, int] = {}    # what a plain mapping of observed keys says (see SyncedObserved)


_KEY = itemgetter(1)       # Change.key
_ACTION = itemgetter(0)    # Change.action


def _change(action: Action, d: DesiredKey, obs: ObservedLike | None, **kw: object) -> Change:
    return Change(
        action=action, key=d.key, old=obs.value if obs else None, new=d.value,
        revision=obs.mod_revision if obs else 0, prefix=d.prefix, policy=d.policy, prune=d.prune,
        secret=d.secret, document=d.document, origin=d.origin, at=d.at, **kw,  # type: ignore[arg-type]
    )


def plan(
    desired: DesiredState,
    observed: Mapping[str, ObservedLike],
    inventory: Inventory,
    other_owners: Mapping[str, str],
    options: Options = Options(),
    *,
    keep_unchanged: bool = True,
) -> Plan:
    """Compare declared keys with etcd and the inventory; decide one Action per key.

    With a selection (`desired.selection`, see core.selector) only owned keys recorded as belonging
    to a selected document, and declared by none, may be pruned; with `options.prune` False none is.
    With `keep_unchanged` False, a key in sync and owned as declared (the bulk of a large tree once
    applied) gets no Change: `Plan.unchanged` counts them (and `counts["unchanged"]` includes them);
    every other unchanged key (a retag, create-only, adoption notes) is still listed. For callers
    that show only what changes (a text diff or apply without -v) and never look up unchanged keys.
    """
    if options.selector is not None and desired.selection is None:
        desired = select(desired, options.selector)   # callers may narrow it first (the daemon does)
    changes: list[Change] = []
    owned = inventory.owned
    # The two common cases of a large tree, in sync and owned (a no-op diff) or absent and unowned
    # (a first apply), are built as the tuple they are (tuple.__new__: no Python-level __new__ per
    # key) from the DesiredKey unpacked at once; every other case goes through _change.
    new = tuple.__new__
    unchanged, create = Action.UNCHANGED, Action.CREATE
    in_sync = 0    # unchanged keys not listed (keep_unchanged=False)
    synced = getattr(observed, "synced", None)    # see SyncedObserved
    synced_get = (synced(desired.keys) if synced is not None else _NOTHING_SYNCED).get
    for key, d in desired.keys.items():
        _, value, prefix, policy, prune, secret, document, origin, at = d
        entry = owned.get(key)
        if entry is not None:
            mod = synced_get(key)
            if mod is None and (obs := observed.get(key)) is not None and obs.value == value and not obs.lease:
                mod = obs.mod_revision
            if mod is not None and entry.prefix == prefix and \
                    entry.prune == prune and entry.secret == secret and entry.document == document:
                if keep_unchanged:
                    changes.append(new(Change, (unchanged, key, value, value, mod, prefix, policy,
                                                prune, secret, False, False, None, "", document, origin, at, 0)))
                else:
                    in_sync += 1
                continue
            obs = observed.get(key)
            mine = True
            owner = None
        else:
            obs = observed.get(key)
            mine = False
            owner = other_owners.get(key)
            if obs is None and owner is None:
                changes.append(new(Change, (create, key, None, value, 0, prefix, policy, prune, secret, True, False,
                                            None, "", document, origin, at, 0)))
                continue
        retag = mine and entry != Entry(d.prefix, d.prune, d.secret, d.document)
        if owner is not None and not options.take_ownership:
            changes.append(_change(Action.CONFLICT, d, obs, owner=owner,
                                   note=f"owned by apply set {owner!r}"))
            continue
        own = not mine
        note = f"taken over from apply set {owner!r}" if owner else ""
        if obs is None:
            changes.append(_change(Action.CREATE, d, None, own=own, owner=owner, note=note))
            continue
        lease = obs.lease
        if lease:
            # another client holds the key under a lease (a leader key, a registration): taking it
            # silently would write it without the lease, so it would never expire
            if lease not in options.own_leases and not options.take_ownership:
                changes.append(_change(Action.CONFLICT, d, obs, lease=lease,
                                       note=f"held by lease {lease:016x} of another client"))
                continue
            if d.policy is Policy.ENFORCE:  # a put without a lease detaches the key from it
                what = f"taken from lease {lease:016x}" if lease not in options.own_leases else \
                    f"detached from etcdsync's own lease {lease:016x}"
                changes.append(_change(Action.UPDATE, d, obs, own=own, owner=owner, retag=retag and not own,
                                       lease=lease, note=f"{note}; {what}" if note else what))
                continue
        if obs.value == d.value:
            if own:
                changes.append(_change(Action.ADOPT, d, obs, own=True, owner=owner,
                                       note=note or "exists, not owned by any apply set"))
            else:
                changes.append(_change(Action.UNCHANGED, d, obs, retag=retag,
                                       note=retag_note(entry, d) if retag and entry is not None else ""))
            continue
        if d.policy is Policy.ENFORCE:
            if own:
                note = note or "existed with another value, not owned by any apply set"
            changes.append(_change(Action.UPDATE, d, obs, own=own, owner=owner, note=note, retag=retag and not own))
        elif d.policy is Policy.WARN:
            changes.append(_change(Action.DRIFT, d, obs, own=own, owner=owner, retag=retag and not own,
                                   note="drift held by policy warn"))
        else:  # create-only: an existing value is the runtime's
            note = "create-only: existing value kept"
            if retag and entry is not None:
                note += "; " + retag_note(entry, d)
            changes.append(_change(Action.UNCHANGED if not own else Action.ADOPT, d, obs, own=own, owner=owner,
                                   retag=retag and not own, note=note))

    selection = desired.selection
    kept = 0
    for key, entry in owned.items():
        if key in desired.keys:
            continue
        if not options.prune or (selection is not None and (
                key in selection.declared or entry.document not in selection.documents)):
            kept += 1   # --prune=false, or not a key of a selected document: stays owned, untouched
            continue
        obs = observed.get(key)
        base = dict(key=key, old=obs.value if obs else None, new=None, revision=obs.mod_revision if obs else 0,
                    prefix=entry.prefix, prune=entry.prune, secret=entry.secret, document=entry.document)
        if obs is None:
            changes.append(Change(Action.RELEASE, note="already absent", **base))  # type: ignore[arg-type]
        elif not entry.prune:
            changes.append(Change(Action.RELEASE, note="prune: false, kept in etcd", **base))  # type: ignore[arg-type]
        elif obs.lease:
            changes.append(Change(Action.RELEASE, note="now held by a lease, left alone", **base))  # type: ignore[arg-type]
        else:
            changes.append(Change(Action.DELETE, **base))  # type: ignore[arg-type]

    changes.sort(key=_KEY)

    live = tuple(
        LiveStatus(i, i.key in observed, observed[i.key].value if i.key in observed else None) for i in desired.live
    )
    tally = Counter(map(_ACTION, changes))
    tally[unchanged] += in_sync
    counts = {a.value: tally[a] for a in Action}
    result = Plan(inventory.applyset, tuple(changes), live, len(owned), None, counts, kept, in_sync)
    return replace(result, refused=guard(result, options))


def guard(p: Plan, options: Options) -> str | None:
    """The deletion guard: the reason a plan is refused, or None."""
    deletes = p.counts.get(Action.DELETE.value, 0)
    releases = p.counts.get(Action.RELEASE.value, 0)
    if (deletes or releases) and p.owned_after <= 0 and not options.allow_empty:
        return (f"apply set {p.applyset!r} would own nothing afterwards ({deletes} to delete, {releases} to release); "
                "refusing, pass --allow-empty if that is intended")
    if deletes > options.max_deletes and not options.force:
        return f"{deletes} keys to delete, more than --max-deletes {options.max_deletes}; refusing, pass --force if that is intended"
    return None
