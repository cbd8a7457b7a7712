"""Leader election fencing, in process and deterministic: a daemon that lost its election key (its lease
expired while it was paused) but has not noticed yet must not commit anything, on every write path.

The end-to-end test in test_daemon.py pauses a real daemon; whether the woken ex-leader tries a write
before it notices the loss depends on timing. Here the loss is made certain and the writes are forced.
"""

from __future__ import annotations

import asyncio
import time

from conftest import Env
from history import Declared, Recorder

from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.daemon.election import Election
from etcdsync.daemon.metrics import Metrics
from etcdsync.daemon.reconcile import Reconciler, Status
from etcdsync.etcd.store import Store, WatchEvent
from etcdsync.settings import Connection, DaemonSettings, Options


def state(prefix: str, value: str) -> DesiredState:
    key = prefix + "a"
    return DesiredState(keys={key: DesiredKey(key, value.encode(), prefix)}, prefixes=(prefix,))


def test_an_ex_leader_that_has_not_noticed_its_loss_commits_nothing(env: Env, history: Recorder) -> None:
    p = f"{env.ns}app/"
    key = p + "a"
    history.declare({key: Declared(b"one")})

    async def go() -> None:
        async with Store(Connection(env.endpoints)) as store:
            settings = DaemonSettings(reserved=env.reserved, leader_elect=True, election_ttl=2.0)
            status, metrics = Status(), Metrics()
            election = Election(store, settings, "t", status=status, metrics=metrics)
            await asyncio.wait_for(election.campaign(), 10)
            assert election.key is not None and election.revision > 0
            rec = Reconciler(store, applyset="t", reserved=env.reserved, options=Options(), metrics=metrics,
                             status=status, fences=election.fences)
            try:
                assert await rec.full(state(p, "one")) is not None      # the leader writes
                assert env.get(key) == b"one"
                # the election key goes (as when its lease expires during a pause); the daemon still
                # believes it leads: hold() has not run
                env.etcdctl("del", election.key)
                assert election.revision > 0 and election.fences()
                # a full reconcile of newer manifests: fenced
                await rec.full(state(p, "two"))
                assert env.get(key) == b"one"
                # a drift repair from a watch event: fenced
                rev = env.put(key, "drifted")
                history.mark_outside(rev)
                kv = await store.get(key)
                assert kv is not None
                assert await rec.repair(WatchEvent("put", kv), time.perf_counter()) is not True
                assert env.get(key) == b"drifted"
            finally:
                await election.close()

    asyncio.run(go())
    history.check()
