"""Execute a Plan as guarded transactions against the snapshot it was planned from.

Every transaction compares the mod_revision seen when planning for each key it touches (absent
keys: version 0), the revision of each inventory chunk it rewrites, the ownership fence when it adds
ownership, and any extra fence the caller gives (the daemon's election key). A plan that fits one
transaction is applied in one; a larger one is split into batches that respect the server's limits,
puts first and deletes last; batches that touch no shared inventory state commit concurrently. A
failed compare raises `Conflict` naming the keys that moved (the caller re-reads and re-plans).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .applymark import split
from .core.inventory import Entry, encode_chunk, fence_key, inventory_prefix
from .core.plan import Action, Change, Plan
from .diff import Snapshot
from .errors import UsageError
from .etcd.store import Compare, Delete, Get, KeyValue, Op, Put, Store, absent, mod_is

log = logging.getLogger(__name__)

DEFAULT_MAX_OPS = 128                 # etcd's default --max-txn-ops
DEFAULT_MAX_BYTES = 1024 * 1024       # well inside etcd's default 1.5 MiB request limit, with protobuf overhead
MIN_OPS = 4
MERGE_BELOW = 64          # inventory chunks with fewer entries are merged...
MERGE_MIN_CHUNKS = 8      # ...once there are this many of them...
MERGE_CAP = 4096          # ...into chunks of at most this many entries
MAX_IN_FLIGHT = 4         # independent batches (creates/updates) committed concurrently


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
    manifests): nothing more of the old plan is committed; the caller plans the new state."""


class Conflict(Exception):
    """A compare failed: `keys` changed since the snapshot (or were created, or moved in the inventory)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(", ".join(keys))


@dataclass
class _Batch:
    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    new_entries: dict[str, Entry] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)        # chunk keys rewritten by this batch
    fenced: bool = False                                  # adds ownership of existing keys: compare the fence
    size: int = 0                                         # bytes of the key operations
    entries_size: int = 0                                 # bytes of the new chunk
    touched_size: int = 0                                 # bytes of the rewritten chunks

    @property
    def independent(self) -> bool:
        """Touches no shared inventory state: may commit while other such batches are in flight."""
        return not self.touched and not self.fenced


_KEY_WRITES = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE})   # see Executor._key_parts


def _needs_fence(c: Change) -> bool:
    # Creating a key compares its absence, which already excludes a concurrent creator; adopting an
    # existing key (or taking it over) must exclude a concurrent adopter: the ownership fence does.
    return c.own and c.action is not Action.CREATE


class Executor:
    """Turns one Plan into transactions against the snapshot it was planned from."""

    def __init__(self, store: Store, snap: Snapshot, p: Plan, *, reserved: str, limits: Limits,
                 fences: Sequence[Compare] = (), progress: Callable[[int], None] | None = None,
                 on_commit: Callable[[int], None] | None = None,
                 superseded: Callable[[], bool] = lambda: False) -> None:
        self.store = store
        self.superseded = superseded
        self.on_commit = on_commit
        self.plan = p
        self.reserved = reserved
        self.limits = limits
        self.fences = list(fences)
        self.progress = progress
        self.fence = fence_key(reserved)
        self.fence_rev = snap.ownership.fence_revision
        self.inv_prefix = inventory_prefix(reserved, p.applyset)
        # chunk key -> [mod_revision, entries]; our set, and every other set that lists a key whose
        # chunks this plan rewrites (a takeover, a delete of a key two sets list): other sets' chunks
        # are decoded only when needed (core/inventory.py)
        self.chunks: dict[str, tuple[int, dict[str, Entry]]] = {}
        self.chunks_of: dict[str, list[str]] = {}
        touched = [c.key for c in p.changes if c.action in (Action.DELETE, Action.RELEASE) or c.retag or c.owner]
        for inv in snap.ownership.listing(p.applyset, touched):
            for ck, chunk in inv.chunks.items():
                self.chunks[ck] = (chunk.mod_revision, dict(chunk.entries))
                for key in chunk.entries:
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
        """The transactions the plan is split into (puts first, deletes last), by the one set of cost
        rules (`_fits`): computed once, before anything is committed, so `run` commits exactly these
        and `layout` reports them. Chunk costs are taken before any commit: a rewritten chunk only
        shrinks, so the estimate errs on the safe side."""
        if self._batches is None:
            puts = [c for c in self.plan.writes if c.action not in (Action.DELETE, Action.RELEASE)]
            removes = [c for c in self.plan.writes if c.action in (Action.DELETE, Action.RELEASE)]
            out: list[_Batch] = []
            batch = _Batch()
            for change in [*puts, *removes]:
                if batch.changes and not self._fits(batch, change):
                    out.append(batch)
                    batch = _Batch()
                self._add(batch, change)
            if batch.changes:
                out.append(batch)
            self._batches = out
        return self._batches

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
            for key in merged:
                self.chunks_of[key] = [c for c in self.chunks_of.get(key, []) if c not in group] + [new_ck]

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
        if c.action in (Action.DELETE, Action.RELEASE) or c.retag or c.owner:
            return self.chunks_of.get(c.key, [])
        return []

    def _cost(self, batch: _Batch, change: Change) -> tuple[int, int, int]:
        """(compares, ops, bytes) of the batch with `change` added; O(1) in the batch size."""
        new_touched = [ck for ck in self._chunks_touched(change) if ck not in batch.touched]
        touched = len(batch.touched) + len(new_touched)
        owning = change.own or change.retag
        new_chunk = int(bool(batch.new_entries) or owning)
        fence = int(batch.fenced or _needs_fence(change))
        writes_key = change.action in _KEY_WRITES
        compares = len(batch.compares) + int(writes_key or change.own) + touched + new_chunk + fence + len(self.fences)
        ops = len(batch.ops) + int(writes_key) + touched + new_chunk + fence
        size = (batch.size + 2 * len(change.key) + len(change.new or b"") + 32
                + batch.touched_size + sum(self._chunk_cost(ck) for ck in new_touched)
                + batch.entries_size + (len(change.key) + 8 if owning else 0) + 128)
        return compares, ops, size

    def _fits(self, batch: _Batch, change: Change) -> bool:
        compares, ops, size = self._cost(batch, change)
        return compares <= self.limits.max_ops and ops <= self.limits.max_ops and size <= self.limits.max_bytes

    def _add(self, batch: _Batch, c: Change) -> None:
        cmp_, op = self._key_parts(c)
        if cmp_ is not None:
            batch.compares.append(cmp_)
        if op is not None:
            batch.ops.append(op)
        for ck in self._chunks_touched(c):
            if ck not in batch.touched:
                batch.touched.add(ck)
                batch.touched_size += self._chunk_cost(ck)
        if c.own or c.retag:
            batch.new_entries[c.key] = Entry(c.prefix, c.prune, c.secret, c.document)
            batch.entries_size += len(c.key) + 8
        batch.fenced = batch.fenced or _needs_fence(c)
        batch.size += 2 * len(c.key) + len(c.new or b"") + 32
        batch.changes.append(c)

    async def _commit(self, batch: _Batch) -> None:
        if self.superseded():
            raise Superseded()
        compares = list(batch.compares)
        ops = list(batch.ops)
        removed = {c.key for c in batch.changes
                   if c.action in (Action.DELETE, Action.RELEASE) or c.retag or c.owner}
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
        for key in removed:
            self.chunks_of.pop(key, None)
        if new_ck is not None:
            self.chunks[new_ck] = (result.revision, dict(batch.new_entries))
            for key in batch.new_entries:
                self.chunks_of.setdefault(key, []).append(new_ck)
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
