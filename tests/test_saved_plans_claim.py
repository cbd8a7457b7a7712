"""A saved plan split into several transactions is applied exactly once, also when two processes
apply the same file at the same moment: the first to write claims the plan (a leased key), the other
is refused naming it, and every transaction compares the claim, so a holder that lost it writes
nothing more. Real etcd, a real second process, the history checker on every test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from history import Recorder
from test_saved_plans_races import write_manifest

from etcdsync.claims import claims_prefix
from etcdsync.core import planfile
from etcdsync.errors import ConflictError
from etcdsync.execute import MAX_IN_FLIGHT

N = 128 * (MAX_IN_FLIGHT + 1)    # more transactions of creates than the executor keeps in flight at once
TRANSACTIONS = -(-N // 126)      # 126 creates each: 128 compares less the new inventory chunk's and the claim's


def split_plan(env: Env, history: Recorder) -> tuple[Path, Path, dict[str, str]]:
    data = {f"k{i:04d}": "v" for i in range(N)}
    m = write_manifest(env, data)
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--out", str(plan))
    assert r.code == 1 and f"commit: {TRANSACTIONS} transactions" in r.out, r.out[-300:]
    history.declare({f"{env.ns}app/{k}": v for k, v in data.items()})
    return m, plan, data


def apply_in_process(env: Env, m: Path, plan: Path, **hooks: Any) -> Any:
    from etcdsync.apply import apply_saved
    from etcdsync.etcd.store import Store
    from etcdsync.manifest import load_manifests
    from etcdsync.settings import Connection

    saved = planfile.decode(plan.read_text(), str(plan))
    desired = load_manifests([str(m)], reserved_prefix=env.reserved)

    async def go() -> Any:
        async with Store(Connection(env.endpoints)) as store:
            return await apply_saved(store, saved, desired, who="first@test", **hooks)

    return asyncio.run(go())


def test_a_second_apply_of_a_split_plan_while_the_first_holds_it_is_refused_and_writes_nothing(
        env: Env, history: Recorder) -> None:
    m, plan, data = split_plan(env, history)
    other: list[Any] = []
    revs: list[int] = []

    def on_layout(_layout: Any, _attempt: int) -> None:   # claimed, nothing written yet
        revs.append(env.revision())
        other.append(env.run("apply", "-f", str(m), "--plan", str(plan)))

    outcome = apply_in_process(env, m, plan, on_layout=on_layout)
    assert other[0].code == 3, (other[0].code, other[0].err)
    assert "is being done by first@test since" in other[0].err and "nothing written" in other[0].err, other[0].err
    assert len(outcome.done) == N and outcome.transactions == TRANSACTIONS
    assert env.dump(f"{env.ns}app/") == {f"{env.ns}app/{k}": b"v" for k in data}
    assert env.dump(claims_prefix(env.reserved)) == {}, "the claim goes away with its apply"
    # every key was written once, by the first process (the checker fails on a second put of a value)
    history.sync()


def test_an_apply_that_lost_its_claim_writes_nothing_more(env: Env, history: Recorder) -> None:
    m, plan, _data = split_plan(env, history)
    revoked: list[str] = []

    def progress(_n: int) -> None:     # after the first committed transaction: the claim's lease ends
        if revoked:
            return
        kvs = env.etcdctl("get", "--prefix", claims_prefix(env.reserved), "-w", "json")
        kv = json.loads(kvs)["kvs"][0]
        revoked.append(format(kv["lease"], "x"))
        env.etcdctl("lease", "revoke", revoked[0])

    with pytest.raises(ConflictError) as err:
        apply_in_process(env, m, plan, progress=progress)
    written = env.dump(f"{env.ns}app/")
    assert 0 < len(written) < N, len(written)
    assert claims_prefix(env.reserved) in str(err.value), str(err.value)
    assert err.value.partial is not None and len(err.value.partial.done) == len(written)
