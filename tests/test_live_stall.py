"""A live instance across an etcd stall longer than its lease: put back exactly once.

etcd is paused (SIGSTOP) for longer than the instance's TTL. When it continues, the lease has
expired (etcd deletes the key), the daemon's keepalive loop finds the lease gone and re-registers the
key, and its watch, resuming from the last revision it saw, replays that delete. The replayed delete
is older than the re-registration: answering it wrote the key a second time. Judged on etcd's
history of the key. A private etcd 3.4 (the shared one is never paused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Env, wait_for
from helpers_faults import etcd34_cluster
from test_daemon import LIVE, Daemon, daemons  # noqa: F401 - the fixture

from etcdsync.etcd.store import Store
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection


@pytest.fixture
def etcd1(tmp_path: Path) -> Iterator[EtcdCluster]:
    c = etcd34_cluster(1, tmp_path / "etcd1")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def events_of(endpoints: list[str], key: str) -> list[tuple[str, int, int]]:
    """Every (type, revision, lease) of `key` in etcd's history so far."""
    async def read() -> list[tuple[str, int, int]]:
        async with Store(Connection(endpoints)) as store:
            now = await store.revision()
            out: list[tuple[str, int, int]] = []
            async for batch in store.watch(key, start_revision=1):
                out += [(e.type, e.kv.mod_revision, e.kv.lease) for e in batch.events]
                if batch.revision >= now and (not out or out[-1][1] >= now or batch.progress):
                    break
            return out

    return asyncio.run(asyncio.wait_for(read(), 15))


def test_a_live_instance_is_put_back_once_after_a_stall_longer_than_its_lease(
        env: Env, etcd1: EtcdCluster, daemons: list[Daemon]) -> None:  # noqa: F811
    key = f"{env.ns}services/web/plain"
    mdir = env.write("m/live.yaml", LIVE.format(ns=env.ns, port=1)).parent   # the checked one never passes
    d = Daemon(env, mdir, endpoints=etcd1.endpoints)
    daemons.append(d)
    d.wait_ready()
    wait_for(lambda: [t for t, _, _ in events_of(etcd1.endpoints, key)] == ["put"], 10, "registered")
    [(_, _, first_lease)] = events_of(etcd1.endpoints, key)
    etcd1.members[0].pause()
    time.sleep(5)                                    # 2.5 TTLs without a renewal
    etcd1.members[0].resume()
    wait_for(lambda: len(events_of(etcd1.endpoints, key)) >= 3, 20, lambda: f"re-registered\n{d.logs()[-1500:]}")
    time.sleep(3)                                    # the resumed watch's replay, and a renewal or two
    events = events_of(etcd1.endpoints, key)
    kinds = [t for t, _, _ in events]
    assert kinds == ["put", "delete", "put"], (events, d.logs()[-2000:])
    assert events[2][2] not in (0, first_lease), "put back under a new lease"
    assert "restored" not in d.logs(), d.logs()[-1500:]
    assert "resuming elsewhere" not in d.logs(), "one endpoint: there is no elsewhere"
