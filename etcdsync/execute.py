"""Execute a Plan as guarded transactions against the snapshot it was planned from.

Every transaction compares the mod_revision seen when planning for each key it touches (absent
keys: version 0), the revision of each inventory chunk it rewrites, the ownership fence when it adds
ownership, and any extra fence the caller gives (the daemon's election key). A plan that fits one
transaction is applied in one; a larger one is split into batches that respect the server's limits,
puts first and deletes last; batches that touch no shared inventory state commit concurrently. A
failed compare raises `Conflict` naming the keys that moved (the caller re-reads and re-plans).

(Over 350 lines: sizing the batches, committing them and merging inventory chunks share the
executor's view of the inventory; the sizing loop is written out for 100,000-change plans.)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .applymark import split
from .core.inventory import Entry, encode_chunk, fence_key, inventory_prefix
from .core.plan import Action, Change, Plan
from .diff import Snapshot
from .errors import Interrupted, UsageError
from .etcd.store import Compare, Delete, Get, KeyValue, Op, Put, Store, absent, mod_is

log = logging.getLogger(__name__)

DEFAULT_MAX_OPS = 128                 # etcd's default --max-txn-ops
DEFAULT_MAX_BYTES = 1024 * 1024       # well inside etcd's default 1.5 MiB request limit, with protobuf overhead
MIN_OPS = 4
MERGE_BELOW = 64          # inventory chunks with fewer entries are merged...
MERGE_MIN_CHUNKS = 8      # ...once there are this many of them...
MERGE_CAP = 4096          # ...into chunks of at most this many entries
MAX_IN_FLIGHT = 8         # independent batches (creates/updates) committed concurrently (4: ~30 % slower at 100,000 keys)


@dataclass
class Limits:
    """Transaction limits, learned downwards when the server refuses a batch as too large."""

    max_ops: int = DEFAULT_MAX_OPS
    max_bytes: int = DEFAULT_MAX_BYTES

    def shrink(self) -> None:
        if self.max_ops <= MIN_OPS and self.max_bytes <= 64 * 1024:
            raise UsageError("etcd refuses even the smallest transaction etcdsync can build "
                             "(check the server's --max-txn-ops and --max-request-bytes)")
        self.max_ops = max(MIN_OPS, self.max_ops // 2)
        self.max_bytes = max(64 * 1024, self.max_bytes // 2)


@dataclass(frozen=True)
class Layout:
    """How a plan is committed: `transactions` of at most `max_ops` operations each (one: atomic)."""

    transactions: int
    max_ops: int

    @property
    def atomic(self) -> bool:
        return self.transactions <= 1


class Superseded(Exception):
    """The desired state being applied was replaced by a newer one (the daemon reloaded its
    manifests): nothing more of the old plan is committed; the caller plans the new state.
    `partial`: as on EtcdsyncError, the outcome of what was committed before."""

    partial: Any = None


class Conflict(Exception):
    """A compare failed: `keys` changed since the snapshot (or were created, or moved in the inventory)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(", ".join(keys))


@dataclass
class _Batch:
    changes: list[Change] = field(default_factory=list)
    new_entries: dict[str, Entry] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)        # chunk keys rewritten by this batch
    fenced: bool = False                                  # adds ownership of existing keys: compare the fence
    compares: int = 0                                     # compares on the keys themselves
    ops: int = 0                                          # operations on the keys themselves
    size: int = 0                                         # bytes: key operations, new chunk, rewritten chunks

    @property
    def independent(self) -> bool:
        """Touches no shared inventory state: may commit while other such batches are in flight."""
        return not self.touched and not self.fenced


_KEY_WRITES = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE})   # see Executor._key_parts
_REMOVES = frozenset({Action.DELETE, Action.RELEASE})


class Executor:
    """Turns one Plan into transactions against the snapshot it was planned from."""

    def __init__(self, store: Store, snap: Snapshot, p: Plan, *, reserved: str, limits: Limits,
                 fences: Sequence[Compare] = (), progress: Callable[[int], None] | None = None,
                 on_commit: Callable[[int], None] | None = None,
                 superseded: Callable[[], bool] = lambda: False,
                 interrupted: Callable[[], str | None] = lambda: None) -> None:
        self.store = store
        self.superseded = superseded
        self.interrupted = interrupted
        self.on_commit = on_commit
        self.plan = p
        self.reserved = reserved
        self.limits = limits
        self.fences = list(fences)
        self.progress = progress
        self.fence = fence_key(reserved)
        self.fence_rev = snap.ownership.fence_revision
        self.inv_prefix = inventory_prefix(reserved, p.applyset)
        self.writes = p.writes
        # chunk key -> [mod_revision, entries]; our set, and every other set that lists a key whose
        # chunks this plan rewrites (a takeover, a delete of a key two sets list): other sets' chunks
        # are decoded only when needed (core/inventory.py)
        self.chunks: dict[str, tuple[int, dict[str, Entry]]] = {}
        # key -> every chunk that lists it, as read, for the keys this plan takes out of their chunks
        # (deletes, releases, retags, takeovers): what batches() sizes with, before anything is
        # committed (not kept up to date afterwards; the other owned keys, 100,000 in a large set,
        # need no entry)
        self.chunks_of: dict[str, list[str]] = {}
        leaving = {c.key for c in self.writes if c.action in _REMOVES or c.retag or c.owner}
        for inv in snap.ownership.listing(p.applyset, sorted(leaving)):
            for ck, chunk in inv.chunks.items():
                self.chunks[ck] = (chunk.mod_revision, dict(chunk.entries))
                if leaving:
                    for key in leaving.intersection(chunk.entries):
                        self.chunks_of.setdefault(key, []).append(ck)
        self.done: dict[str, Change] = {}
        self.revision = snap.revision
        self.transactions = 0
        self.revisions: list[int] = []
        self._batches: list[_Batch] | None = None

    def _chunk_cost(self, ck: str) -> int:
        _, entries = self.chunks[ck]
        return sum(len(k) + 8 for k in entries) + 64

    def batches(self) -> list[_Batch]:
        """The transactions the plan is split into (puts first, deletes last), computed once, before
        anything is committed, so that `run` commits exactly these and `layout` reports them. Chunk
        costs are taken before any commit: a rewritten chunk only shrinks, so the estimate errs on the
        safe side.

        A batch is closed when the next change would take it over a limit. Its cost with a change
        added, counted as etcd counts a request: compares = one per key written or owned + one per
        inventory chunk rewritten + the new chunk (when the batch records ownership) + the ownership
        fence (when it adopts) + the caller's fences; operations = one per key written + the same
        chunk and fence writes; bytes = each key twice, its value and 32 for each key operation, the
        key and 8 per new inventory entry, the rewritten chunks' size, and 128. Only counters are kept
        per batch (the compares and operations themselves are built when it is committed), and a
        change that rewrites no chunk (every create and update of keys no other set owns) costs a
        few integer additions."""
        if self._batches is not None:
            return self._batches
        max_ops, max_bytes = self.limits.max_ops, self.limits.max_bytes
        n_fences = len(self.fences)
        chunk_cost: dict[str, int] = {}
        entries: dict[tuple[str, bool, bool, str], Entry] = {}
        writes = self.writes
        puts = [c for c in writes if c.action not in _REMOVES]
        removes = [c for c in writes if c.action in _REMOVES]
        out: list[_Batch] = []
        batch = _Batch()
        create, update = Action.CREATE, Action.UPDATE
        for c in [*puts, *removes]:
            action = c.action
            key_len = len(c.key)
            if (action is create or (action is update and not c.own)) and not c.retag and c.owner is None:
                # the bulk of a large plan (creates, updates of owned keys): rewrites no chunk and needs
                # no fence, so only the key's compare and operation and the new chunk count (the
                # operations never exceed the compares, so the compares' check is the one needed)
                owning = c.own
                size = 2 * key_len + len(c.new or b"") + 32 + (key_len + 8 if owning else 0)
                if batch.changes and not (
                        batch.compares + 1 + len(batch.touched) + (owning or bool(batch.new_entries))
                        + batch.fenced + n_fences <= max_ops and batch.size + size + 128 <= max_bytes):
                    out.append(batch)
                    batch = _Batch()
                batch.changes.append(c)
                batch.compares += 1
                batch.ops += 1
                batch.size += size
                if owning:
                    shape = (c.prefix, c.prune, c.secret, c.document)
                    entry = entries.get(shape)
                    if entry is None:
                        entry = entries[shape] = Entry(c.prefix, c.prune, c.secret, c.document)
                    batch.new_entries[c.key] = entry
                continue
            owning = c.own or c.retag
            writes_key = action in _KEY_WRITES
            # creating a key compares its absence, which already excludes a concurrent creator; adopting
            # an existing key (or taking it over) must exclude a concurrent adopter: the ownership fence
            fence = c.own and action is not Action.CREATE
            size = 2 * key_len + len(c.new or b"") + 32 + (key_len + 8 if owning else 0)
            touches = self._chunks_touched(c)
            new_touched: list[str] = []
            touched_size = 0
            if touches:
                for ck in touches:
                    if ck not in batch.touched and ck not in new_touched:
                        new_touched.append(ck)
                        if ck not in chunk_cost:
                            chunk_cost[ck] = self._chunk_cost(ck)
                        touched_size += chunk_cost[ck]
            if batch.changes:
                chunk_ops = (len(batch.touched) + len(new_touched) + (bool(batch.new_entries) or owning)
                             + (batch.fenced or fence))
                compares = batch.compares + (writes_key or c.own) + chunk_ops + n_fences
                ops = batch.ops + writes_key + chunk_ops
                if not (compares <= max_ops and ops <= max_ops
                        and batch.size + size + touched_size + 128 <= max_bytes):
                    out.append(batch)
                    batch = _Batch()
                    if touches:   # every chunk it touches is new to the new batch (and its cost known)
                        new_touched = list(dict.fromkeys(touches))
                        touched_size = sum(chunk_cost[ck] for ck in new_touched)
            batch.changes.append(c)
            batch.compares += writes_key or c.own
            batch.ops += writes_key
            batch.size += size + touched_size
            if new_touched:
                batch.touched.update(new_touched)
            if owning:
                shape = (c.prefix, c.prune, c.secret, c.document)
                entry = entries.get(shape)
                if entry is None:   # entries are immutable: one per shape (most keys share a handful)
                    entry = entries[shape] = Entry(c.prefix, c.prune, c.secret, c.document)
                batch.new_entries[c.key] = entry
            if fence:
                batch.fenced = True
        if batch.changes:
            out.append(batch)
        self._batches = out
        return out

    def layout(self) -> Layout:
        """How the plan will be committed: how many transactions, under which operation limit."""
        return Layout(len(self.batches()), self.limits.max_ops)

    async def run(self) -> None:
        pending: set[asyncio.Task[None]] = set()

        async def settle(limit: int) -> None:
            """Wait until at most `limit` batches are in flight; on a failure wait for all of them and
            raise the first error (every task's outcome is collected here, none is left to asyncio)."""
            while len(pending) > limit:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                errors = [t.exception() for t in done]
                if any(errors):
                    if pending:
                        rest, _ = await asyncio.wait(pending)
                        pending.clear()
                        errors += [t.exception() for t in rest]
                    raise next(e for e in errors if e is not None)

        async def flush(batch: _Batch) -> None:
            if batch.independent:
                await settle(MAX_IN_FLIGHT - 1)
                pending.add(asyncio.create_task(self._commit(batch)))
            else:
                await settle(0)
                await self._commit(batch)

        try:
            batches = self.batches()
            for i, batch in enumerate(batches):
                if i + 1 < len(batches):
                    await split(self.store, self.reserved, self.plan)   # views hold back until the apply ends
                await flush(batch)
            await settle(0)
        finally:
            for t in pending:
                t.cancel()
            if pending:  # collected, so that no failure is reported as "never retrieved"
                await asyncio.gather(*pending, return_exceptions=True)
        await self._merge_small_chunks()

    async def _merge_small_chunks(self) -> None:
        """Housekeeping: fold many small inventory chunks (one per past apply) into a few large ones.

        One transaction per merged chunk: the old chunks are deleted and the merged one written
        atomically, each old chunk compared on its revision; a conflict just skips the merge.
        """
        small = sorted(ck for ck, (_, entries) in self.chunks.items()
                       if ck.startswith(self.inv_prefix) and len(entries) < MERGE_BELOW)
        if len(small) < MERGE_MIN_CHUNKS:
            return
        group: list[str] = []
        size = 0
        groups: list[list[str]] = []
        for ck in small:
            n = len(self.chunks[ck][1])
            cost = self._chunk_cost(ck)
            if group and (size + n > MERGE_CAP or len(group) + 2 > self.limits.max_ops - len(self.fences)
                          or sum(self._chunk_cost(c) for c in group) + cost > self.limits.max_bytes // 2):
                groups.append(group)
                group, size = [], 0
            group.append(ck)
            size += n
        if group:
            groups.append(group)
        for group in groups:
            if len(group) < 2:
                continue
            merged: dict[str, Entry] = {}
            for ck in group:
                merged.update(self.chunks[ck][1])
            new_ck = f"{self.inv_prefix}{secrets.token_hex(8)}"
            compares = [mod_is(ck, self.chunks[ck][0]) for ck in group] + [absent(new_ck), *self.fences]
            ops: list[Op] = [*(Delete(ck) for ck in group), Put(new_ck, encode_chunk(merged))]
            result = await self.store.txn(compares, ops)
            self.transactions += 1
            if not result.succeeded:
                log.info("inventory merge skipped: chunks changed concurrently")
                return
            self.revisions.append(result.revision)
            if self.on_commit is not None:
                self.on_commit(result.revision)
            self.revision = max(self.revision, result.revision)
            for ck in group:
                del self.chunks[ck]
            self.chunks[new_ck] = (result.revision, merged)

    @staticmethod
    def _key_parts(c: Change) -> tuple[Compare | None, Op | None]:
        """The compare and the operation on the key itself (adoptions compare only)."""
        if c.action is Action.CREATE:
            return absent(c.key), Put(c.key, c.new or b"")
        if c.action is Action.UPDATE:
            return mod_is(c.key, c.revision), Put(c.key, c.new or b"")
        if c.action is Action.DELETE:
            return mod_is(c.key, c.revision), Delete(c.key)
        if c.own:  # adopt, drift held by warn, create-only: the value must still be what we saw
            return mod_is(c.key, c.revision), None
        return None, None

    def _chunks_touched(self, c: Change) -> list[str]:
        """The inventory chunks a change removes its key from (to be rewritten in its batch)."""
        if c.action in _REMOVES or c.retag or c.owner:
            return self.chunks_of.get(c.key, [])
        return []

    async def _commit(self, batch: _Batch) -> None:
        if self.superseded():
            raise Superseded()
        stop = self.interrupted()
        if stop is not None:
            raise Interrupted(f"interrupted ({stop}): stopped after the transactions in flight")
        compares: list[Compare] = []
        ops: list[Op] = []
        key_parts = self._key_parts
        for c in batch.changes:
            cmp_, op = key_parts(c)
            if cmp_ is not None:
                compares.append(cmp_)
            if op is not None:
                ops.append(op)
        # keys leaving a chunk this batch rewrites (a batch that rewrites none removes no key from one)
        removed = {c.key for c in batch.changes if c.action in _REMOVES or c.retag or c.owner} \
            if batch.touched else set()
        rewritten: dict[str, dict[str, Entry]] = {}
        for ck in sorted(batch.touched):
            rev, entries = self.chunks[ck]
            remaining = {k: e for k, e in entries.items() if k not in removed}
            rewritten[ck] = remaining
            compares.append(mod_is(ck, rev))
            ops.append(Put(ck, encode_chunk(remaining)) if remaining else Delete(ck))
        new_ck = None
        if batch.new_entries:
            new_ck = f"{self.inv_prefix}{secrets.token_hex(8)}"
            compares.append(absent(new_ck))
            ops.append(Put(new_ck, encode_chunk(batch.new_entries)))
        if batch.fenced:
            compares.append(mod_is(self.fence, self.fence_rev))
            ops.append(Put(self.fence, self.plan.applyset.encode()))
        compares.extend(self.fences)
        result = await self.store.txn(compares, ops)
        self.transactions += 1
        if not result.succeeded:
            # which compares failed: read those keys now (one transaction of gets, only on failure)
            seen = await self.store.txn([], [Get(c.key) for c in compares])
            changed = [cmp_.key for cmp_, got in zip(compares, seen.gets, strict=True) if not _holds(cmp_, got)]
            raise Conflict(changed or [c.key for c in batch.changes])
        self.revision = max(self.revision, result.revision)
        self.revisions.append(result.revision)
        if self.on_commit is not None:
            self.on_commit(result.revision)
        for ck, remaining in rewritten.items():
            if remaining:
                self.chunks[ck] = (result.revision, remaining)
            else:
                del self.chunks[ck]
        if new_ck is not None:
            self.chunks[new_ck] = (result.revision, dict(batch.new_entries))
        if batch.fenced:
            self.fence_rev = result.revision
        for c in batch.changes:
            self.done[c.key] = c
        if self.progress is not None:
            self.progress(len(batch.changes))


def _holds(cmp_: Compare, got: Sequence[KeyValue]) -> bool:
    """Whether an equality compare holds for the key as read now (to name the keys that moved)."""
    kv = got[0] if got else None
    now = {"mod": kv.mod_revision if kv else 0, "version": kv.version if kv else 0,
           "create": kv.create_revision if kv else 0}.get(cmp_.target)
    return now is None or now == int(cmp_.value)
