"""A suspend that lands while the daemon has transactions in flight stops every later write.

The daemon's in-memory flag (set from its watch of the suspension key) stops the transactions it has
not sent yet; the ones already on their way are stopped only by the compare every config write
carries: the suspension key is absent. Here the suspension is recorded the moment the daemon's first
transaction of a large reconcile commits, by a client reacting to the watch event, so several of its
transactions are still in flight: none of them may commit after the suspension. Real etcd, the
daemon a subprocess, the history checker on the whole run.
"""

from __future__ import annotations

import asyncio
import time

from conftest import Env, wait_for
from history import Recorder
from test_daemon import Daemon, daemons  # noqa: F401 - the fixture
from test_history_daemon import entries

from etcdsync.core.history import Suspension, suspend_key
from etcdsync.etcd.store import Store
from etcdsync.history import suspend
from etcdsync.settings import Connection

N = 20_000     # ~160 transactions: a reconcile that lasts long after the first one commits


def big_manifest(env: Env) -> dict[str, str]:
    data = {f"{env.ns}big/k{i:05d}": "v" for i in range(N)}
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata: {name: big}", "spec:",
             f"  prefix: {env.ns}big/", "  data:"]
    lines += [f"    k{i:05d}: v" for i in range(N)]
    env.write("m/big.yaml", "\n".join(lines) + "\n")
    return data


async def suspend_on_first_write(env: Env, start: int, started: list[Daemon]) -> int:
    """Start the daemon, and record the suspension as soon as its first write under the prefix is
    seen; the suspension's revision."""
    async with Store(Connection(env.endpoints)) as store:
        events = store.watch_prefix(f"{env.ns}big/", start_revision=start + 1)
        started.append(Daemon(env, env.tmp / "m"))
        deadline = time.monotonic() + 30
        async for batch in events:
            if batch.events:
                break
            assert time.monotonic() < deadline, "the daemon wrote nothing within 30 s"
        assert await suspend(store, env.reserved, Suspension("t", "test", time.time(), "mid-reconcile"))
        await events.aclose()  # type: ignore[attr-defined]
        kv = await store.get(suspend_key(env.reserved, "t"))
        assert kv is not None
        return kv.mod_revision


def key_revisions(env: Env) -> dict[str, int]:
    async def read() -> dict[str, int]:
        async with Store(Connection(env.endpoints)) as store:
            kvs, _ = await store.get_prefix(f"{env.ns}big/")
            return {kv.key: kv.mod_revision for kv in kvs}

    return asyncio.run(read())


def test_a_suspend_landing_mid_reconcile_stops_the_transactions_in_flight(
        env: Env, history: Recorder, daemons: list[Daemon]) -> None:  # noqa: F811
    data = big_manifest(env)
    history.declare(data)
    suspended_at = asyncio.run(suspend_on_first_write(env, env.revision(), daemons))
    [d] = daemons
    wait_for(lambda: d.ready().get("suspended"), 10, lambda: f"readyz says suspended\n{d.logs()[-1500:]}")
    # the stopped apply's last writes: its "applying" marker (what views hold back for) taken away,
    # and the history entry of what it wrote before it stopped
    wait_for(lambda: env.dump(f"{env.reserved}applying/") == {}, 10, "the apply's marker removed")
    wait_for(lambda: any(e.get("failed") for e in entries(env)), 10, lambda: f"stopped reconcile recorded\n{d.logs()[-1500:]}")
    history.sync()
    written = key_revisions(env)
    late = sorted((rev, key) for key, rev in written.items() if rev > suspended_at)
    assert not late, f"{len(late)} keys written after the suspension at revision {suspended_at}: {late[:5]}"
    assert 0 < len(written) < N, f"{len(written)} of {N} keys written before the suspension: the race was not run"
    history.assert_quiet(1.0)
    r = env.cli("resume", "--applyset", "t", "--reserved-prefix", env.reserved)
    assert r.code == 0, r
    wait_for(lambda: len(env.dump(f"{env.ns}big/")) == N, 30, lambda: f"applied after resume\n{d.logs()[-1500:]}")
    history.check()
    history.assert_quiet(1.5)
