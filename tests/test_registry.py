"""The library's registry against real etcd: shared leases, registration state, wait=False, views.

- One lease per TTL per registry: 1,000 registrations made at once hold one lease (etcd's lease
  list says so) and are written with one put each; deregistering one deletes its key only, with a
  compare on the lease, so a key another holder has taken is never deleted; `own_lease=True` gives a
  registration a lease that its deregistration revokes.
- `register(..., wait=False)` while etcd is down keeps trying and registers when etcd starts;
  `register()` (waiting) raises then and leaves nothing behind; `state` follows an outage through
  "re-registering" and "lost" back to "registered", and a view says it is not healthy meanwhile.
- `Registry.view(name)`: the current list in memory, round-robin `pick()`, `mark_failed()`.
- Discovery accepts a port written as a numeric string.
- The default prefix is the format's ("/services/" for json, "services/" for grpc).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Env, wait_for
from history import SYNC_MARK, recorder

from etcdsync import Connection, EtcdConnectionError, Instance, Registry
from etcdsync.aio import AsyncRegistry
from etcdsync.local.etcdbin import EtcdCluster


def leases(env: Env) -> set[int]:
    """Every lease etcd knows, from etcdctl's lease list."""
    return {int(item["id"]) for item in json.loads(env.etcdctl("lease", "list", "-w", "json")).get("leases") or []}


def lease_of(env: Env, key: str) -> int:
    kvs = json.loads(env.etcdctl("get", key, "-w", "json")).get("kvs") or []
    return int(kvs[0]["lease"]) if kvs else 0


def test_a_thousand_registrations_share_one_lease_and_leave_one_by_one(env: Env) -> None:
    p = f"{env.ns}services/"
    rec = env.hist = recorder(env.endpoints, [p], env.reserved)    # etcdctl's writes are marked as another client's
    before = leases(env)

    async def go() -> None:
        reg = AsyncRegistry(Connection(env.endpoints), prefix=p)
        regs = await asyncio.gather(*(reg.register("bulk", f"i{i:04d}", host="10.0.0.1", port=1000 + i, ttl=3)
                                      for i in range(1000)))
        lease = regs[0].lease_id
        assert {r.lease_id for r in regs} == {lease} and lease
        assert {r.state for r in regs} == {"registered"}
        new = await asyncio.to_thread(leases, env)
        assert new - before == {lease}, f"one new lease for 1,000 registrations, not {len(new - before)}"
        ttl = json.loads(await asyncio.to_thread(env.etcdctl, "lease", "timetolive", format(lease, "x"), "--keys",
                                                 "-w", "json"))
        assert len(ttl["keys"]) == 1000
        assert len(await reg.discover("bulk")) == 1000
        # one leaves: its key is deleted, the lease and the others stay
        gone = regs[17]
        await gone.deregister()
        assert gone.state == "deregistered"
        assert await asyncio.to_thread(env.get, gone.key) is None
        assert lease in await asyncio.to_thread(leases, env), "deregistering one must not revoke the shared lease"
        await asyncio.sleep(4)                      # more than the TTL: the shared lease is kept alive
        found = await reg.discover("bulk")
        assert len(found) == 999 and "i0017" not in {i.id for i in found}
        # a registration of its own: deregistering it revokes its lease
        solo = await reg.register("bulk", "solo", host="10.0.0.2", port=80, ttl=3, own_lease=True)
        assert solo.lease_id not in (0, lease)
        assert await asyncio.to_thread(lease_of, env, solo.key) == solo.lease_id
        solo_lease = solo.lease_id
        await solo.deregister()
        assert solo_lease not in await asyncio.to_thread(leases, env)
        assert lease in await asyncio.to_thread(leases, env)
        await reg.close()                           # revokes the shared lease: every key at once

    try:
        asyncio.run(go())
        rec.sync()
        events = [e for e in rec.snapshot() if rec.ours(e)]
    finally:
        rec.stop()
        env.hist = None
    assert leases(env) & {e.lease for e in events if e.lease} == set()
    puts = Counter(e.key for e in events if e.type == "put")
    assert len(puts) == 1001 and set(puts.values()) == {1}, \
        f"one put per registration, no needless writes: {[(k, n) for k, n in puts.items() if n > 1][:5]}"
    deletes = [e for e in events if e.type == "delete"]
    assert len(deletes) == 1001                     # the one deregistered, the solo one, then 999 with the lease
    assert deletes[0].key == f"{p}bulk/i0017"
    assert [k for k in env.dump(p) if not k.endswith(SYNC_MARK)] == []


def test_deregistering_never_deletes_a_key_another_holder_took(env: Env) -> None:
    """Two registries (two leases) hold one id: the one whose value is not current deregisters; the
    key, now the other's, is not touched (the delete compares the key's lease)."""
    p = f"{env.ns}services/"
    rec = env.hist = recorder(env.endpoints, [p], env.reserved)    # etcdctl's writes are marked as another client's
    try:
        first = Registry(Connection(env.endpoints), prefix=p)
        second = Registry(Connection(env.endpoints), prefix=p)
        keep = first.register("api", "bystander", host="10.0.0.9", port=80, ttl=5)
        a = first.register("api", "shared", host="10.0.0.1", port=80, ttl=5)
        b = second.register("api", "shared", host="10.0.0.2", port=80, ttl=5)
        assert a.lease_id != b.lease_id and lease_of(env, a.key) == b.lease_id
        start = rec.sync()
        a.deregister()
        assert env.get(b.key) == b'{"host":"10.0.0.2","port":80}'
        assert env.get(keep.key) is not None
        time.sleep(1.5)                             # a heal would have had time to show
        end = rec.sync()
        assert [e for e in rec.writes_between(start, end)] == [], "the other holder's key was written or deleted"
        b.deregister()
        wait_for(lambda: env.get(b.key) is None, 5, "the last holder deregistered")
        first.close()
        second.close()
    finally:
        rec.stop()
        env.hist = None


def test_shared_lease_heals_deleted_keys_and_survives_revocation(env: Env) -> None:
    p = f"{env.ns}services/"
    reg = Registry(Connection(env.endpoints), prefix=p)
    regs = [reg.register("heal", f"h{i}", host="10.0.0.1", port=1000 + i, ttl=10) for i in range(20)]
    lease = regs[0].lease_id
    rec = env.hist = recorder(env.endpoints, [p], env.reserved)    # etcdctl's writes are marked as another client's
    try:
        start = rec.sync()
        for r in regs[:3]:
            env.etcdctl("del", r.key)
        wait_for(lambda: all(env.get(r.key) is not None for r in regs[:3]), 5, "deleted keys put back")
        assert all(lease_of(env, r.key) == lease for r in regs[:3]), "put back under the shared lease"
        time.sleep(1.0)
        mid = rec.sync()
        healed = [e for e in rec.writes_between(start, mid) if rec.ours(e)]
        assert sorted(e.key for e in healed) == sorted(r.key for r in regs[:3]), \
            f"only the deleted keys are written, once each: {[(e.type, e.key) for e in healed]}"
        # the lease itself is revoked: everything is registered again, once, under one new lease
        env.etcdctl("lease", "revoke", format(lease, "x"))
        wait_for(lambda: len(reg.discover("heal")) == 20 and regs[0].lease_id != lease, 10, "re-registered")
        new = regs[0].lease_id
        assert {lease_of(env, r.key) for r in regs} == {new}
        wait_for(lambda: {r.state for r in regs} == {"registered"}, 5, "state registered again")
        time.sleep(1.0)
        end = rec.sync()
        puts = Counter(e.key for e in rec.writes_between(mid, end) if e.type == "put")
        assert len(puts) == 20 and set(puts.values()) == {1}, f"one put per key after the revoke: {puts}"
    finally:
        rec.stop()
        env.hist = None
        reg.close()
    assert [k for k in env.dump(p) if not k.endswith(SYNC_MARK)] == []


def test_register_without_waiting_while_etcd_is_down(tmp_path: Path) -> None:
    with EtcdCluster(1, base_dir=str(tmp_path / "etcd")) as cluster:
        member = cluster.members[0]
        member.stop()
        conn = Connection(cluster.endpoints, timeout=1)
        reg = Registry(conn, prefix="/services/")
        with pytest.raises(EtcdConnectionError):
            reg.register("api", "waited", host="h", port=1, ttl=2)      # waits, fails: nothing left behind
        r = reg.register("api", "api-1", host="10.0.0.1", port=80, ttl=2, wait=False)
        assert r.state == "registering"
        time.sleep(1.5)                             # it keeps trying (no raise, no traceback)
        assert r.state == "registering"
        member.start()
        r.wait_registered(timeout=15)
        assert r.state == "registered" and r.lease_id
        view = reg.view("api")
        assert [i.id for i in view.instances] == ["api-1"] and view.healthy
        time.sleep(3)                               # more than the TTL: kept alive, the failed one never appears
        assert reg.discover("api") == [Instance("api-1", "10.0.0.1", 80)]
        # an outage longer than the TTL: re-registering, then lost, then registered again
        member.stop()
        wait_for(lambda: r.state == "re-registering", 10, "re-registering while etcd is away")
        wait_for(lambda: not view.healthy, 10, "the view says it is not connected")
        wait_for(lambda: r.state == "lost", 10, "lost once the TTL has passed without a renewal")
        stale = view.last_event
        assert stale is not None and time.time() - stale > 1
        member.start()
        wait_for(lambda: r.state == "registered", 20, "registered again when etcd is back")
        wait_for(lambda: reg.discover("api") == [Instance("api-1", "10.0.0.1", 80)], 10, "key back")
        wait_for(lambda: view.healthy and view.last_event and view.last_event > stale, 15, "the view reconnected")
        view.cancel()
        r.deregister()
        assert r.state == "deregistered"
        assert reg.discover("api") == []
        reg.close()


def test_view_picks_round_robin_and_skips_failed_instances(env: Env) -> None:
    p = f"{env.ns}services/"
    reg = Registry(Connection(env.endpoints), prefix=p)
    for n in ("a", "b", "c"):
        env.put(f"{p}web/{n}", json.dumps({"host": f"10.0.0.{ord(n) - 96}", "port": 80}))
    with reg.view("web") as view:
        assert [i.id for i in view.instances] == ["a", "b", "c"]
        assert view.healthy and view.last_event is not None and view.revision > 0
        picks = [view.pick() for _ in range(6)]
        assert Counter(i.id for i in picks if i) == {"a": 2, "b": 2, "c": 2}
        b = next(i for i in view.instances if i.id == "b")
        view.mark_failed(b, for_=300)
        assert {view.pick().id for _ in range(6)} == {"a", "c"}     # type: ignore[union-attr]
        view.mark_failed("a", for_=300)
        assert {view.pick().id for _ in range(4)} == {"c"}          # type: ignore[union-attr]
        view.mark_failed("c", for_=300)
        assert {view.pick().id for _ in range(6)} == {"a", "b", "c"}, "all failed: pick from all"  # type: ignore[union-attr]
        view.mark_failed("c", for_=0.2)
        view.mark_failed("a", for_=0.2)
        wait_for(lambda: {view.pick().id for _ in range(4)} == {"a", "c"}, 5, "marks expire")  # type: ignore[union-attr]
        # the list follows etcd; a numeric-string port ("8080", what Node services write) is read
        env.put(f"{p}web/d", '{"host":"10.0.0.4","port":"8080"}')
        wait_for(lambda: [i.id for i in view.instances] == ["a", "b", "c", "d"], 5, "new instance in the view")
        assert view.instances[-1] == Instance("d", "10.0.0.4", 8080)
        env.delete(f"{p}web/a")
        wait_for(lambda: [i.id for i in view.instances] == ["b", "c", "d"], 5, "deleted instance gone")
    reg.close()
    empty = Registry(Connection(env.endpoints), prefix=p).view("nothing")
    assert empty.pick() is None and empty.instances == []
    empty.cancel()


def test_discovery_reads_a_numeric_string_port(env: Env) -> None:
    p = f"{env.ns}services/"
    env.put(f"{p}node/n1", '{"host":"10.0.0.1","port":"8080"}')
    env.put(f"{p}node/n2", '{"host":"10.0.0.2","port":"http"}')     # still skipped: not a number

    async def go() -> None:
        reg = AsyncRegistry(Connection(env.endpoints), prefix=p)
        assert await reg.discover("node") == [Instance("n1", "10.0.0.1", 8080)]
        view = await reg.view("node")
        assert view.pick() == Instance("n1", "10.0.0.1", 8080)
        view.cancel()
        await view.wait_closed()
        await reg.close()

    asyncio.run(go())


def test_a_lease_left_empty_lapses_and_the_next_registration_gets_a_new_one(env: Env) -> None:
    p = f"{env.ns}services/"
    reg = Registry(Connection(env.endpoints), prefix=p)
    r = reg.register("idle", "i1", host="h", port=1, ttl=1)
    first = r.lease_id
    r.deregister()
    wait_for(lambda: first not in leases(env), 10, "the empty lease is not renewed and lapses")
    r2 = reg.register("idle", "i2", host="h", port=2, ttl=1)
    assert r2.state == "registered" and r2.lease_id not in (0, first)
    assert lease_of(env, r2.key) == r2.lease_id
    reg.close()
    assert env.get(r2.key) is None


def test_the_default_prefix_is_the_formats() -> None:
    conn = Connection("http://127.0.0.1:1")          # never connected: the prefix is decided up front
    assert AsyncRegistry(conn).prefix == "/services/"
    assert AsyncRegistry(conn, format="grpc").prefix == "services/"     # where gRPC's etcd resolver looks
    assert AsyncRegistry(conn, prefix="/svc/", format="grpc").prefix == "/svc/"
