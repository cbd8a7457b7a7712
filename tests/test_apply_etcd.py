"""The executor against real etcd: conflicts, retries, batching to the server's limits, the inventory."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Env
from history import Recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdsync.apply import apply
from etcdsync.core.inventory import inventory_prefix
from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.core.render import Result
from etcdsync.diff import observe
from etcdsync.errors import ConflictError
from etcdsync.etcd.store import Store
from etcdsync.execute import Limits
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection, Options


def state(prefix: str, values: dict[str, str]) -> DesiredState:
    keys = {prefix + k: DesiredKey(prefix + k, v.encode(), prefix) for k, v in values.items()}
    return DesiredState(keys=dict(sorted(keys.items())), prefixes=(prefix,))


def run_apply(endpoints: list[str], desired: DesiredState, reserved: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with Store(Connection(endpoints)) as store:
            return await apply(store, desired, applyset="t", reserved=reserved, **kw)

    return asyncio.run(go())


def test_concurrent_writer_between_plan_and_apply_is_retried_not_overwritten_blindly(env: Env, history: Recorder) -> None:
    p = f"{env.ns}c/"
    run_apply(env.endpoints, state(p, {"a": "1", "b": "1"}), env.reserved)
    seen: list[tuple[int, bytes | None]] = []

    def on_plan(plan: Any, attempt: int) -> None:
        c = next(c for c in plan.changes if c.key == p + "a")
        seen.append((attempt, c.old))
        if attempt == 0:
            env.etcdctl("put", p + "a", "concurrent")  # lands after our read, before our transaction

    out = run_apply(env.endpoints, state(p, {"a": "2", "b": "2"}), env.reserved, on_plan=on_plan)
    assert p + "a" in out.retried
    # the second plan was made from what the other writer wrote: nothing was overwritten unseen
    assert seen == [(0, b"1"), (1, b"concurrent")]
    assert env.get(p + "a") == b"2" and env.get(p + "b") == b"2"


def test_a_writer_that_always_wins_gives_conflict_error_and_keeps_its_value(env: Env, history: Recorder) -> None:
    p = f"{env.ns}c/"
    run_apply(env.endpoints, state(p, {"a": "1"}), env.reserved)
    n = {"i": 0}

    def on_plan(plan: Any, attempt: int) -> None:
        n["i"] += 1
        env.etcdctl("put", p + "a", f"writer-{n['i']}")

    with pytest.raises(ConflictError) as err:
        run_apply(env.endpoints, state(p, {"a": "2"}), env.reserved, on_plan=on_plan, max_attempts=3)
    assert err.value.keys == (p + "a",)
    assert str(err.value).startswith(f"{p}a: conflict")
    assert env.get(p + "a") == f"writer-{n['i']}".encode()


def test_every_written_key_is_in_the_inventory(env: Env, history: Recorder) -> None:
    p = f"{env.ns}inv/"
    values = {f"k{i:03d}": str(i) for i in range(200)}
    out = run_apply(env.endpoints, state(p, values), env.reserved)
    assert out.results()[Result.CREATED] == 200

    async def owned() -> set[str]:
        async with Store(Connection(env.endpoints)) as store:
            snap = await observe(store, state(p, {}), applyset="t", reserved=env.reserved)
            return set(snap.ownership.inventory("t").owned)

    assert asyncio.run(owned()) == {p + k for k in values}
    chunks = env.dump(inventory_prefix(env.reserved, "t"))
    assert 2 <= len(chunks) <= 3
    keep = {k: v for k, v in values.items() if int(v) % 2 == 0}
    run_apply(env.endpoints, state(p, keep), env.reserved, options=Options(force=True))
    assert asyncio.run(owned()) == {p + k for k in keep}
    assert set(env.dump(p)) == {p + k for k in keep}


def test_server_with_small_txn_limit_gets_smaller_batches(tmp_path: Any) -> None:
    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"]) as small:
        p = "/small/"
        limits = Limits()
        out = run_apply(small.endpoints, state(p, {f"k{i:02d}": "v" for i in range(40)}), "/.etcdsync/", limits=limits)
        assert limits.max_ops <= 8
        assert out.results()[Result.CREATED] == 40
        assert out.transactions >= 40 // 6

        async def count() -> int:
            async with Store(Connection(small.endpoints)) as store:
                kvs, _ = await store.get_prefix(p)
                return len(kvs)

        assert asyncio.run(count()) == 40
        out = run_apply(small.endpoints, state(p, {f"k{i:02d}": "w" for i in range(40)}), "/.etcdsync/")
        assert out.results()[Result.UPDATED] == 40


def test_plan_that_fits_one_transaction_is_atomic(env: Env, history: Recorder) -> None:
    """Puts and deletes of a small plan commit in one revision."""
    p = f"{env.ns}atom/"
    run_apply(env.endpoints, state(p, {"a": "1", "b": "1", "c": "1"}), env.reserved)
    out = run_apply(env.endpoints, state(p, {"a": "2", "d": "1"}), env.reserved)
    assert out.transactions == 1
    revs = env.store_call(lambda s: s.get_prefix(p))[0]
    assert {kv.mod_revision for kv in revs} == {out.revision}


_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
_rel = st.lists(_segment, min_size=1, max_size=3).map("/".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.dictionaries(_rel, st.binary(max_size=64), max_size=20),
    after=st.dictionaries(_rel, st.binary(max_size=64), min_size=1, max_size=20),
)
def test_property_apply_then_plan_is_empty_and_reapply_writes_nothing(env: Env, history: Recorder, before: dict[str, bytes],
                                                                       after: dict[str, bytes]) -> None:
    import secrets as _s

    p = f"{env.ns}{_s.token_hex(3)}/"

    def st_(values: dict[str, bytes]) -> DesiredState:
        keys = {p + k: DesiredKey(p + k, v, p) for k, v in sorted(values.items())}
        return DesiredState(keys=keys, prefixes=(p,))

    if before:
        run_apply(env.endpoints, st_(before), env.reserved, options=Options(force=True))
    run_apply(env.endpoints, st_(after), env.reserved, options=Options(force=True))
    assert env.dump(p) == {p + k: v for k, v in after.items()}
    rev = env.revision()
    out = run_apply(env.endpoints, st_(after), env.reserved)
    assert not out.plan.has_changes
    assert env.untouched_since(rev)


def test_stale_election_fence_commits_nothing(env: Env, history: Recorder) -> None:
    """A paused ex-leader's writes carry a compare on its (now gone) election key: nothing commits."""
    from etcdsync.etcd.store import created_at

    p = f"{env.ns}fence/"
    run_apply(env.endpoints, state(p, {"a": "1"}), env.reserved)
    rev = env.revision()
    fence = [created_at(f"{env.reserved}election/t/gone", 12345)]
    with pytest.raises(ConflictError):
        run_apply(env.endpoints, state(p, {"a": "2", "b": "2"}), env.reserved, fences=fence, max_attempts=2)
    assert env.untouched_since(rev)
    assert env.get(p + "a") == b"1" and env.get(p + "b") is None


def test_many_small_applies_keep_the_inventory_compact(env: Env, history: Recorder) -> None:
    p = f"{env.ns}frag/"
    values: dict[str, str] = {}
    for i in range(12):  # twelve applies adding two keys each: twelve tiny chunks, then merged
        values[f"k{i:02d}a"] = "1"
        values[f"k{i:02d}b"] = "1"
        run_apply(env.endpoints, state(p, values), env.reserved)
    chunks = env.dump(inventory_prefix(env.reserved, "t"))
    assert len(chunks) < 8, f"{len(chunks)} chunks"

    async def owned() -> set[str]:
        async with Store(Connection(env.endpoints)) as store:
            snap = await observe(store, state(p, {}), applyset="t", reserved=env.reserved)
            return set(snap.ownership.inventory("t").owned)

    assert asyncio.run(owned()) == {p + k for k in values}
    out = run_apply(env.endpoints, state(p, values), env.reserved)
    assert not out.plan.has_changes
