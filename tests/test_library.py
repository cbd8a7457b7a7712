"""The library for services (DESIGN.md section 6) against real etcd: sync facade and asyncio classes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Env, wait_for

import etcdsync
from etcdsync import ConfigStore, Connection, Instance, Registry
from etcdsync.aio import AsyncConfigStore, AsyncRegistry
from etcdsync.local.etcdbin import EtcdCluster


def test_public_names_are_pinned() -> None:
    assert sorted(etcdsync.__all__) == [
        "AuthError", "ClusterChangedError", "ConfigEvent", "ConfigStore", "ConfigValueError", "ConflictError", "Connection",
        "EtcdConnectionError", "EtcdsyncError", "GuardError", "Instance", "ManifestError", "Registration", "Registry",
        "SyncWatch", "UsageError",
    ]
    for name in etcdsync.__all__:
        assert getattr(etcdsync, name) is not None


def test_config_store_round_trips_and_watch(env: Env) -> None:
    cfg = ConfigStore(Connection(env.endpoints))
    k = f"{env.ns}config/a"
    assert cfg.get(k) is None
    cfg.put(k, "1")
    assert cfg.get(k) == "1"
    cfg.put(f"{env.ns}config/b", b"\xff")
    assert cfg.get_bytes(f"{env.ns}config/b") == b"\xff"
    assert set(cfg.get_prefix(f"{env.ns}config/")) == {k, f"{env.ns}config/b"}
    events: list[Any] = []
    threads: set[str] = set()

    def on_change(ev: Any) -> None:
        threads.add(threading.current_thread().name)
        events.append((ev.type, ev.key, ev.value))
        if ev.value == "boom":
            raise ValueError("a broken callback must not kill the watch")

    w = cfg.watch(f"{env.ns}config/", on_change, prefix=True)
    cfg.put(k, "boom")
    cfg.put(k, "2")
    assert cfg.delete(k) is True
    assert cfg.delete(k) is False
    wait_for(lambda: len(events) >= 3, 5, "three events")
    assert events == [("put", k, "boom"), ("put", k, "2"), ("delete", k, None)]
    assert threading.current_thread().name not in threads and not any("loop" in t for t in threads)
    w.cancel()
    single: list[Any] = []
    w2 = cfg.watch(k, lambda ev: single.append(ev.value))
    cfg.put(k + "x", "other key")  # not this key
    cfg.put(k, "3")
    wait_for(lambda: single == ["3"], 5, "single-key watch")
    w2.cancel()


def test_register_discover_watch_deregister(env: Env) -> None:
    reg = Registry(Connection(env.endpoints), prefix=f"{env.ns}services/")
    lists: list[list[Instance]] = []
    w = reg.watch("api", lambda xs: lists.append(xs))
    wait_for(lambda: lists == [[]], 5, "initial empty list")
    r1 = reg.register("api", "api-1", host="10.0.0.1", port=80, metadata={"zone": "a"}, ttl=2)
    with reg.register("api", "api-2", host="10.0.0.2", port=81, ttl=2) as r2:
        assert env.get(r2.key) == b'{"host":"10.0.0.2","port":81}'
        assert reg.discover("api") == [Instance("api-1", "10.0.0.1", 80, {"zone": "a"}), Instance("api-2", "10.0.0.2", 81)]
        wait_for(lambda: lists and len(lists[-1]) == 2, 5, "watch sees both")
        time.sleep(5)  # more than two TTLs: the lease is kept alive
        assert len(reg.discover("api")) == 2
    assert env.get(f"{env.ns}services/api/api-2") is None, "leaving the with block deregisters at once"
    wait_for(lambda: [i.id for i in lists[-1]] == ["api-1"], 5, "watch sees the deregistration")
    # registering the same id again replaces, never duplicates
    r1b = reg.register("api", "api-1", host="10.0.0.9", port=80, ttl=2)
    assert [i.host for i in reg.discover("api")] == ["10.0.0.9"]
    r1.deregister()
    assert [i.host for i in reg.discover("api")] == ["10.0.0.9"], "the old lease's revoke leaves the new value"
    r1b.deregister()
    assert reg.discover("api") == []
    w.cancel()


def test_reregistration_after_lease_revoke(env: Env) -> None:
    reg = Registry(Connection(env.endpoints), prefix=f"{env.ns}services/")
    r = reg.register("api", "api-1", host="h", port=1, ttl=1)
    old = r.lease_id
    env.etcdctl("lease", "revoke", format(old, "x"))        # deletes the key with the lease
    wait_for(lambda: r.lease_id != old and env.get(r.key) is not None, 5, "re-registered under a new lease")
    lease = json.loads(env.etcdctl("get", r.key, "-w", "json"))["kvs"][0]["lease"]
    assert lease == r.lease_id != old
    r.deregister()


def test_a_registration_deleted_by_someone_else_is_put_back(env: Env) -> None:
    reg = Registry(Connection(env.endpoints), prefix=f"{env.ns}services/")
    r = reg.register("api", "api-1", host="10.0.0.1", port=80, ttl=10)
    try:
        for _ in range(3):
            env.etcdctl("del", r.key)
            t0 = time.monotonic()
            wait_for(lambda: env.get(r.key) is not None, 5, "registration put back")
            took = time.monotonic() - t0
            assert took < 2.5, f"put back after {took:.2f}s"       # about a second; the margin is for a busy machine
            assert env.get(r.key) == b'{"host":"10.0.0.1","port":80}'
            lease = json.loads(env.etcdctl("get", r.key, "-w", "json"))["kvs"][0]["lease"]
            assert lease == r.lease_id, "put back under the registration's own lease"
    finally:
        r.deregister()
    assert env.get(r.key) is None, "a deregistered key is not put back"
    time.sleep(1.5)
    assert env.get(r.key) is None


def test_two_holders_of_one_id_take_turns(env: Env) -> None:
    """Two processes register the same service and id: when the one whose value is current stops,
    the other re-asserts the key (it never stays unregistered), and neither overwrites the other
    while both live."""
    p = f"{env.ns}services/"
    mine = Registry(Connection(env.endpoints), prefix=p)
    r = mine.register("api", "shared", host="10.0.0.1", port=80, ttl=10)
    code = (
        "import sys, time\n"
        "from etcdsync import Registry, Connection\n"
        f"r = Registry(Connection({env.endpoints!r}), prefix={p!r})\n"
        "r.register('api', 'shared', host='10.0.0.2', port=80, ttl=10)\n"
        "print('registered', flush=True)\n"
        "sys.stdin.readline()\n"           # until told to stop; interpreter exit deregisters
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "registered"
        assert b"10.0.0.2" in (env.get(r.key) or b""), "the later registration's value is current"
        time.sleep(1.5)
        assert b"10.0.0.2" in (env.get(r.key) or b""), "the live holders do not fight over the value"
        assert other.stdin is not None
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(15) == 0
        wait_for(lambda: b"10.0.0.1" in (env.get(r.key) or b""), 5, "the remaining holder re-asserted its key")
    finally:
        other.kill()
        other.wait(5)
        r.deregister()
    assert env.get(r.key) is None


def test_discover_reads_other_clients_values_and_skips_garbage(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    p = f"{env.ns}services/"
    env.put(p + "web/node-a", '{"host":"a","port":1,"weight":5,"metadata":{"v":2}}')  # extra fields: fine
    env.put(p + "web/broken", "not json")
    env.put(p + "web/noport", '{"host":"x"}')
    env.put(p + "web/sub/deeper", '{"host":"d","port":2}')  # not an instance of "web"
    reg = Registry(Connection(env.endpoints), prefix=p)
    assert reg.discover("web") == [Instance("node-a", "a", 1, {"v": 2})]
    assert "web/broken" in caplog.text and "web/noport" in caplog.text


def test_grpc_format_is_byte_exact(env: Env) -> None:
    p = f"{env.ns[1:]}grpc/"  # gRPC prefixes do not start with '/'
    reg = Registry(Connection(env.endpoints), prefix=p, format="grpc")
    r = reg.register("checkout", host="10.0.0.21", port=50051, metadata={"zone": "b"})
    assert r.key == f"{p}checkout/10.0.0.21:50051"
    assert env.get(r.key) == b'{"Op":0,"Addr":"10.0.0.21:50051","Metadata":"{\\"zone\\":\\"b\\"}"}'
    r2 = reg.register("checkout", host="10.0.0.22", port=50051)
    assert env.get(r2.key) == b'{"Op":0,"Addr":"10.0.0.22:50051","Metadata":null}'
    assert reg.discover("checkout") == [Instance("10.0.0.21:50051", "10.0.0.21", 50051, {"zone": "b"}),
                                        Instance("10.0.0.22:50051", "10.0.0.22", 50051, None)]
    reg.close()
    assert env.get(r.key) is None


def test_watch_sees_lease_expiry_and_loses_no_event_at_start(env: Env) -> None:
    p = f"{env.ns}services/"
    reg = Registry(Connection(env.endpoints), prefix=p)
    # writes racing the watch start: the snapshot plus the watch from its revision see all of them
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        for i in range(200):
            if stop.is_set():
                break
            key = f"{p}race/i{i:03d}"
            env.etcdctl("put", key, json.dumps({"host": "h", "port": 1000 + i}))
            written.append(key)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.2)
    seen: list[list[Instance]] = []
    w = reg.watch("race", lambda xs: seen.append(xs))
    time.sleep(0.5)
    stop.set()
    t.join(30)
    wait_for(lambda: seen and len(seen[-1]) == len(written), 10, "every racing write seen")
    w.cancel()
    # expiry of a SIGKILLed registrant's lease is seen by watchers
    lists: list[list[Instance]] = []
    w = reg.watch("victim", lambda xs: lists.append(xs))
    code = (
        "import time, sys\n"
        "from etcdsync import Registry, Connection\n"
        f"r = Registry(Connection({env.endpoints!r}), prefix={p!r})\n"
        "r.register('victim', 'v1', host='h', port=1, ttl=1)\n"
        "print('registered', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "registered"
        wait_for(lambda: lists and len(lists[-1]) == 1, 5, "registrant seen")
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: lists[-1] == [], 1 + 2 + 1, "expiry seen by the watcher")
        assert time.monotonic() - t0 < 1 + 2
    finally:
        proc.kill()
        proc.wait(5)
        w.cancel()


def test_interpreter_exit_deregisters(env: Env) -> None:
    p = f"{env.ns}services/"
    code = (
        "from etcdsync import Registry, Connection\n"
        f"r = Registry(Connection({env.endpoints!r}), prefix={p!r})\n"
        "r.register('exiting', 'e1', host='h', port=1, ttl=30)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert env.get(f"{p}exiting/e1") is None


def test_thread_safety_of_shared_objects(env: Env) -> None:
    conn = Connection(env.endpoints)
    reg = Registry(conn, prefix=f"{env.ns}services/")
    cfg = ConfigStore(conn)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                r = reg.register("mt", f"t{n}-{i}", host="h", port=1000 + i, ttl=5)
                cfg.put(f"{env.ns}mt/{n}/{i}", str(i))
                assert any(x.id == f"t{n}-{i}" for x in reg.discover("mt"))
                if i % 2:
                    r.deregister()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(reg.discover("mt")) == 8 * 5
    assert len(cfg.get_prefix(f"{env.ns}mt/")) == 80
    reg.close()
    assert reg.discover("mt") == []


def test_asyncio_classes(env: Env) -> None:
    async def go() -> None:
        conn = Connection(env.endpoints)
        cfg = AsyncConfigStore(conn)
        await cfg.put(f"{env.ns}aio/x", "1")
        assert await cfg.get(f"{env.ns}aio/x") == "1"
        seen: list[Any] = []

        async def on_change(ev: Any) -> None:
            seen.append(ev.value)

        w = await cfg.watch(f"{env.ns}aio/", on_change, prefix=True)
        await cfg.put(f"{env.ns}aio/x", "2")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == ["2"]
        w.cancel()
        reg = AsyncRegistry(conn, prefix=f"{env.ns}services/")
        async with await reg.register("a", "1", host="h", port=2, ttl=2):
            assert [i.id for i in await reg.discover("a")] == ["1"]
        assert await reg.discover("a") == []
        await cfg.close()
        await reg.close()

    asyncio.run(go())


def test_registration_and_watch_survive_an_etcd_restart(tmp_path: Path) -> None:
    with EtcdCluster(1, base_dir=str(tmp_path / "etcd")) as cluster:
        conn = Connection(cluster.endpoints, timeout=1)
        reg = Registry(conn, prefix="/services/")
        lists: list[list[Instance]] = []
        w = reg.watch("api", lambda xs: lists.append(xs))
        r = reg.register("api", "api-1", host="h", port=1, ttl=2)
        wait_for(lambda: lists and len(lists[-1]) == 1, 5, "registered")
        member = cluster.members[0]
        member.stop()
        time.sleep(3)  # longer than the TTL while etcd is down
        member.start()
        wait_for(lambda: reg.discover("api") == [Instance("api-1", "h", 1)], 15, "registered again after restart")
        other = Registry(conn, prefix="/services/")
        r2 = other.register("api", "api-2", host="h", port=2, ttl=2)
        wait_for(lambda: lists and len(lists[-1]) == 2, 15, "watch resumed after restart")
        r2.deregister()
        r.deregister()
        w.cancel()


def test_services_ls_and_watch_cli(env: Env) -> None:
    p = f"{env.ns}services/"
    env.put(p + "web/w1", '{"host":"10.0.0.1","port":80,"metadata":{"zone":"a"}}')
    r = env.cli("services", "ls", "web", "--prefix", p)
    assert r.code == 0, r
    assert r.out.splitlines() == ["ID  HOST      PORT  METADATA", 'w1  10.0.0.1  80    {"zone":"a"}']
    r = env.cli("services", "ls", "web", "--prefix", p, "-o", "json")
    assert json.loads(r.out) == {"service": "web", "instances": [
        {"id": "w1", "host": "10.0.0.1", "port": 80, "metadata": {"zone": "a"}}]}
    proc = subprocess.Popen([sys.executable, "-m", "etcdsync", "services", "watch", "web", "--prefix", p, "-o", "json",
                             "--endpoints", ",".join(env.endpoints)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert len(json.loads(proc.stdout.readline())["instances"]) == 1
        env.put(p + "web/w2", '{"host":"10.0.0.2","port":80}')
        assert len(json.loads(proc.stdout.readline())["instances"]) == 2
        env.delete(p + "web/w1")
        assert [i["id"] for i in json.loads(proc.stdout.readline())["instances"]] == ["w2"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    assert code == 0


def test_examples_run(env: Env) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "ETCDSYNC_ENDPOINTS": ",".join(env.endpoints)}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "config_center.py")], capture_output=True,
                         text=True, timeout=60, env=environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "db/url: postgres://db:5432/app",
        "all: {'/config/example/db/url': 'postgres://db:5432/app', '/config/example/retry/max': '5'}",
        "changed: put /config/example/retry/max = '7'",
        "changed: delete /config/example/retry/max = None",
        "after delete: None",
    ]
    watcher = subprocess.Popen([sys.executable, str(ROOT / "examples" / "watch_services.py"), "my_service",
                                "--seconds", "20"], stdout=subprocess.PIPE, text=True, env=environ)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "my_service: 0 instances: (none)\n"
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "self_register.py")], capture_output=True,
                             text=True, timeout=60, env=environ)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "found instance_1 at localhost:3000 metadata={'zone': 'a'}",
            "found instance_2 at localhost:3001 metadata=None",
            "after instance_2 left: ['instance_1']",
            "after deregister: []",
        ]
        lines = [watcher.stdout.readline().strip() for _ in range(4)]
        assert lines[-1] == "my_service: 0 instances: (none)", lines
    finally:
        watcher.kill()
        watcher.wait(5)
