"""The snapshot a plan reads is compact: read page by page, a Seen per key, the desired state's key
strings and (when equal) values shared, one inventory Entry per distinct record."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from conftest import Env
from test_apply_guards import run, state

from etcdsync.diff import observe
from etcdsync.etcd.store import Seen, Store
from etcdsync.settings import Connection


def _same(mapping: Any, key: str) -> str:
    """The very string object `mapping` holds as `key`."""
    return next(k for k in mapping if k == key)


def test_observe_keeps_a_compact_snapshot(env: Env) -> None:
    p = env.ns                  # covers the reserved prefix: its keys are not observed
    plain = state(p, {f"k{i:02d}": f"v{i}" for i in range(20)} | {"drift": "want"})
    desired = dataclasses.replace(plain, keys={k: d._replace(document="ConfigSet/t") for k, d in plain.keys.items()})
    run(env, desired)
    env.put(p + "drift", "other")
    env.put(p + "extra", "x")

    async def go() -> Any:
        async with Store(Connection(env.endpoints)) as store:
            sizes = [len(items) async for items, _ in store.pages_of(p, revision=0, page=7)]
            everything, rev = await store.get_prefix(p)
            snap = await observe(store, desired, applyset="t", reserved=env.reserved)
            return sizes, everything, rev, snap

    sizes, everything, rev, snap = asyncio.run(go())
    assert sum(sizes) == len(everything) and max(sizes) == 7 and len(sizes) > 2
    assert not any(k.startswith(env.reserved) for k in snap.observed)
    assert {k for k in snap.observed} == {kv.key for kv in everything if not kv.key.startswith(env.reserved)}
    assert all(type(o) is Seen for o in snap.observed.values())
    for key, d in desired.keys.items():
        assert _same(snap.observed, key) is d.key
    k00 = desired.keys[p + "k00"]
    assert snap.observed[k00.key].value is k00.value                       # equal: the desired bytes
    assert snap.observed[p + "drift"].value == b"other"
    # in sync: kept as its revision alone; drifted or undeclared: as a Seen
    assert set(snap.observed._in_sync) == set(desired.keys) - {p + "drift"}   # type: ignore[attr-defined]
    assert snap.observed.get(p + "nothing") is None and p + "nothing" not in snap.observed
    assert p + "k00" in snap.observed and p + "extra" in snap.observed and len(snap.observed) == len(everything) - \
        sum(kv.key.startswith(env.reserved) for kv in everything)
    assert snap.observed[p + "extra"] == Seen(b"x", snap.observed[p + "extra"].mod_revision, 0)
    by_txn = [o.mod_revision for k, o in snap.observed.items() if k.startswith(p + "k")]
    assert len({id(r) for r in by_txn}) == len(set(by_txn))                 # one int per revision
    inv = snap.ownership.inventory("t")
    assert set(inv.owned) == set(desired.keys)
    assert _same(inv.owned, k00.key) is k00.key                              # not a second copy
    assert {e.document for e in inv.owned.values()} == {"ConfigSet/t"}
    assert len({id(e) for e in inv.owned.values()}) == 1                     # one Entry per record


def test_pages_read_ahead_see_one_revision_and_stop_cleanly(env: Env) -> None:
    """`Store.pages` asks for the next page before handing one over: every key once, in order, all at
    the first page's revision even when keys change meanwhile; left early, the request it had sent is
    cancelled (no task left behind, no error logged as lost)."""
    p = env.ns + "pages/"
    for i in range(23):
        env.put(f"{p}k{i:02d}", f"v{i}")
    lost: list[dict[str, Any]] = []

    async def go() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: lost.append(ctx))
        async with Store(Connection(env.endpoints)) as store:
            seen: list[tuple[str, bytes]] = []
            revs = set()
            async for items, rev in store.pages_of(p, revision=0, page=5):
                revs.add(rev)
                if not seen:     # written after the first page: a later revision, not seen by this read
                    await store.put(p + "k00", b"changed")
                    await store.put(p + "k99", b"new")
                seen += [(kv.key, kv.value) for kv in items]
            pages = store.pages_of(p, revision=0, page=5)
            async for _ in pages:
                break
            asked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]   # the second page's
            await pages.aclose()
            await asyncio.sleep(0.05)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return seen, revs, asked, left

    seen, revs, asked, left = asyncio.run(go())
    assert seen == [(f"{p}k{i:02d}", f"v{i}".encode()) for i in range(23)]
    assert len(revs) == 1
    assert all(t.cancelled() for t in asked)     # the request and its gRPC call (none when answered already)
    # sent before the first page was handed over: gRPC's own call task exists (not only ours, unstarted)
    assert not asked or any("UnaryUnaryCall._invoke" in repr(t.get_coro()) for t in asked)
    assert left == [] and lost == []
