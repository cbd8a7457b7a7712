"""How the executor splits a plan into transactions (pure: no etcd).

The split decides what `diff` and `apply` print on their `commit:` line and what `--atomic` refuses,
and it must keep every transaction within the server's limits. `Executor.batches` keeps counters only
(it is on the hot path of a 100,000-key apply); here it is checked against a plain model of the cost
rules on random plans: creates, updates, adoptions, takeovers, retags, deletes and releases, keys
recorded in several chunks, caller fences, and small limits so that every rule decides some split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from etcdsync.core.inventory import Chunk, Entry, Inventory, Ownership
from etcdsync.core.plan import Action, Change, Plan
from etcdsync.diff import Snapshot
from etcdsync.etcd.store import Compare, absent, mod_is
from etcdsync.execute import Executor, Limits

RESERVED = "/.etcdsync/"
ME = "me"


@dataclass
class _ModelBatch:
    keys: list[str] = field(default_factory=list)
    compares: int = 0
    ops: int = 0
    touched: dict[str, int] = field(default_factory=dict)    # chunk -> its cost
    entries: int = 0                                          # new inventory entries
    entries_size: int = 0
    fenced: bool = False
    size: int = 0


def _model(changes: list[Change], chunks_of: dict[str, list[str]], chunk_cost: dict[str, int], limits: Limits,
           fences: int) -> list[_ModelBatch]:
    """The cost rules written out plainly: a batch takes the next change while, with it, its compares
    and its operations are each at most max_ops and its bytes at most max_bytes."""
    puts = [c for c in changes if c.action not in (Action.DELETE, Action.RELEASE)]
    removes = [c for c in changes if c.action in (Action.DELETE, Action.RELEASE)]
    out: list[_ModelBatch] = []
    batch = _ModelBatch()

    def touches(c: Change) -> list[str]:
        if c.action in (Action.DELETE, Action.RELEASE) or c.retag or c.owner:
            return chunks_of.get(c.key, [])
        return []

    def with_change(b: _ModelBatch, c: Change) -> _ModelBatch:
        writes_key = c.action in (Action.CREATE, Action.UPDATE, Action.DELETE)
        n = _ModelBatch(b.keys + [c.key], b.compares + int(writes_key or c.own), b.ops + int(writes_key),
                        dict(b.touched), b.entries, b.entries_size, b.fenced or (c.own and c.action is not Action.CREATE),
                        b.size + 2 * len(c.key) + len(c.new or b"") + 32)
        for ck in touches(c):
            n.touched.setdefault(ck, chunk_cost[ck])
        if c.own or c.retag:
            n.entries += 1
            n.entries_size += len(c.key) + 8
        return n

    def fits(b: _ModelBatch) -> bool:
        extra = len(b.touched) + int(b.entries > 0) + int(b.fenced)
        size = b.size + sum(b.touched.values()) + b.entries_size + 128
        return (b.compares + extra + fences <= limits.max_ops and b.ops + extra <= limits.max_ops
                and size <= limits.max_bytes)

    for c in [*puts, *removes]:
        grown = with_change(batch, c)
        if batch.keys and not fits(grown):
            out.append(batch)
            grown = with_change(_ModelBatch(), c)
        batch = grown
    if batch.keys:
        out.append(batch)
    return out


def _random_plan(rng: random.Random) -> tuple[Plan, Ownership]:
    n_chunks = rng.randint(0, 6)
    chunk_keys = [f"{RESERVED}sets/{rng.choice([ME, 'other'])}/inventory/c{i}" for i in range(n_chunks)]
    ownership = Ownership(RESERVED, fence_revision=rng.randint(0, 5))
    chunks: dict[str, dict[str, Entry]] = {ck: {} for ck in chunk_keys}
    changes: list[Change] = []
    for i in range(rng.randint(1, 300)):
        key = f"/app/{'k' * rng.randint(1, 40)}{i}"
        value = b"v" * rng.choice([0, 1, 10, 100, 3000])
        action = rng.choice([Action.CREATE, Action.CREATE, Action.UPDATE, Action.ADOPT, Action.DELETE,
                             Action.RELEASE, Action.UNCHANGED])
        own = action in (Action.CREATE, Action.ADOPT) or (action is Action.UPDATE and rng.random() < 0.3)
        retag = not own and action in (Action.UPDATE, Action.UNCHANGED) and rng.random() < 0.5
        owner = "other" if own and rng.random() < 0.2 else None
        recorded = [ck for ck in chunk_keys if rng.random() < 0.3] \
            if action in (Action.DELETE, Action.RELEASE) or retag or owner else []
        for ck in recorded:
            chunks[ck][key] = Entry("/app/")
        new = None if action in (Action.DELETE, Action.RELEASE) else value
        if action is Action.UNCHANGED and not retag:
            continue     # not a write
        changes.append(Change(action, key, None if action is Action.CREATE else b"old", new,
                              0 if action is Action.CREATE else rng.randint(1, 99), "/app/", own=own, retag=retag,
                              owner=owner, document="ConfigSet/app"))
    for ck, entries in chunks.items():
        name = ck.split("/")[2]
        inv = ownership.sets.setdefault(name, Inventory(name))
        inv.add_chunk(Chunk(ck, rng.randint(1, 50), entries))
    changes.sort(key=lambda c: c.key)
    return Plan(ME, tuple(changes)), ownership


@pytest.mark.parametrize("seed", range(300))
def test_batches_follow_the_cost_rules_exactly(seed: int) -> None:
    rng = random.Random(seed)
    p, ownership = _random_plan(rng)
    limits = Limits(max_ops=rng.choice([4, 5, 8, 16, 128]), max_bytes=rng.choice([2048, 8192, 65536, 1024 * 1024]))
    fences: list[Compare] = [mod_is("/election/x", 3)] * rng.randint(0, 2)
    ex = Executor(None, Snapshot(1, {}, ownership), p, reserved=RESERVED, limits=limits,  # type: ignore[arg-type]
                  fences=fences)
    chunks = {ck: chunk.entries for inv in ownership.sets.values() for ck, chunk in inv.chunks.items()}
    chunk_cost = {ck: sum(len(k) + 8 for k in entries) + 64 for ck, entries in chunks.items()}
    chunks_of: dict[str, list[str]] = {}
    for ck, entries in chunks.items():
        for key in entries:
            chunks_of.setdefault(key, []).append(ck)
    want = _model(list(p.writes), chunks_of, chunk_cost, limits, len(fences))
    got = ex.batches()
    assert [[c.key for c in b.changes] for b in got] == [b.keys for b in want]
    for b, m in zip(got, want, strict=True):
        assert b.touched == set(m.touched)
        assert b.fenced == m.fenced
        assert len(b.new_entries) == m.entries
        assert (b.compares, b.ops) == (m.compares, m.ops)
    assert ex.layout().transactions == len(want)


def test_a_batch_commits_one_compare_per_key_it_writes_or_owns() -> None:
    """What `_commit` sends for a batch: the key compares and operations counted by `batches`."""
    changes = (Change(Action.CREATE, "/a/1", None, b"1", 0, "/a/", own=True),
               Change(Action.UPDATE, "/a/2", b"x", b"2", 5, "/a/"),
               Change(Action.ADOPT, "/a/3", b"3", b"3", 6, "/a/", own=True),
               Change(Action.DELETE, "/a/4", b"4", None, 7, "/a/"))
    ex = Executor(None, Snapshot(1, {}, Ownership(RESERVED)), Plan(ME, changes), reserved=RESERVED,  # type: ignore[arg-type]
                  limits=Limits())
    [batch] = ex.batches()
    parts = [ex._key_parts(c) for c in batch.changes]
    assert [cmp_ for cmp_, _ in parts] == [absent("/a/1"), mod_is("/a/2", 5), mod_is("/a/3", 6), mod_is("/a/4", 7)]
    assert batch.compares == 4 and batch.ops == 3 and batch.fenced and len(batch.new_entries) == 2
