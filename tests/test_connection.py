"""Connection behaviour against real etcd, on whichever etcd version the run selected (3.4 and 3.5).

- Auth tokens: with `--auth-token simple --auth-token-ttl 2` the store, a library watch, a held
  registration and a long-running CLI command survive expiring tokens and an etcd restart.
- `--timeout` is the time a request may take, also while the client is still connecting.
- etcdctl's conventions (ETCDCTL_* variables, `--user user:password`, password files) and IPv6.
- TLS and connection failures in words, naming the endpoint.
- Registrations that heal; a revision that goes backwards (restore from an older snapshot).
- Endpoint pinning and failover with a paused member of three.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, wait_for
from helpers_faults import Ctl

from etcdsync.aio import AsyncConfigStore, AsyncRegistry
from etcdsync.etcdbin import EtcdCluster
from etcdsync.settings import Connection
from etcdsync.store import Store

SIMPLE_TOKENS = ["--auth-token", "simple", "--auth-token-ttl", "2"]


def start_auth_etcd(base: Path, extra: list[str] | None = None) -> tuple[EtcdCluster, Ctl]:
    """One etcd with auth on: user `root`, and user `app` that may use /app/ and /services/."""
    c = EtcdCluster(1, extra_args=extra or [], base_dir=str(base))
    c.start()
    try:
        ctl = Ctl(c.endpoints)
        ctl("user", "add", "root:rootpw", "--interactive=false")
        ctl("role", "add", "app")
        for prefix in ("/app/", "/services/"):
            ctl("role", "grant-permission", "app", "readwrite", prefix, "--prefix=true")
        ctl("user", "add", "app:apppw", "--interactive=false")
        ctl("user", "grant-role", "app", "app")
        ctl("auth", "enable")
    except BaseException:
        c.stop()
        raise
    return c, Ctl(c.endpoints, user="root:rootpw")


@pytest.fixture
def token_etcd(tmp_path: Path) -> Iterator[tuple[EtcdCluster, Ctl]]:
    """A private etcd whose simple auth tokens live 2 s (the tests also restart it)."""
    c, root = start_auth_etcd(tmp_path / "etcd", SIMPLE_TOKENS)
    try:
        yield c, root
    finally:
        c.stop()


def restart(cluster: EtcdCluster, root: Ctl) -> None:
    m = cluster.members[0]
    m.stop()
    m.start(wait=False)
    wait_for(lambda: root.revision() > 0, 20, "etcd back after restart", step=0.2)


def app_conn(cluster: EtcdCluster, **kw: Any) -> Connection:
    return Connection(cluster.endpoints, "app", "apppw", **kw)


# ------------------------------------------------------------------------------------------------
# auth tokens that expire


def test_store_reauthenticates_after_token_expiry_and_restart(token_etcd: tuple[EtcdCluster, Ctl]) -> None:
    cluster, root = token_etcd

    async def go() -> None:
        async with Store(app_conn(cluster, timeout=3)) as s:
            await s.put("/app/a", b"1")
            await asyncio.sleep(3.5)                   # the 2 s token has expired
            assert (await s.get("/app/a")).value == b"1"  # type: ignore[union-attr]
            await s.put("/app/a", b"2")
            await asyncio.to_thread(restart, cluster, root)   # a restart forgets every simple token
            assert (await s.get("/app/a")).value == b"2"  # type: ignore[union-attr]
            await asyncio.sleep(3.5)
            await s.put("/app/a", b"3")
            lease = await s.lease_grant(5)
            assert await s.lease_keepalive(lease) > 0

    asyncio.run(go())
    assert root.get("/app/a") == b"3"


def test_library_watch_and_registration_survive_token_expiry(token_etcd: tuple[EtcdCluster, Ctl]) -> None:
    cluster, root = token_etcd
    seen: list[tuple[str, str | None]] = []
    listings: list[list[str]] = []

    async def go() -> None:
        cfg = AsyncConfigStore(app_conn(cluster, timeout=3))
        reg = AsyncRegistry(app_conn(cluster, timeout=3))
        await cfg.watch("/app/w/", lambda ev: seen.append((ev.key, ev.value)), prefix=True)
        await reg.watch("api", lambda insts: listings.append([i.id for i in insts]))
        r = await reg.register("api", "a1", host="10.0.0.1", port=80, ttl=2)
        for round_ in range(2):
            await asyncio.sleep(4)                     # tokens expire; the lease is renewed meanwhile
            await asyncio.to_thread(root, "put", f"/app/w/k{round_}", f"v{round_}")
            await asyncio.to_thread(wait_for, lambda r=round_: (f"/app/w/k{r}", f"v{r}") in seen, 10,
                                    f"watch event {round_} after token expiry")
            assert await asyncio.to_thread(root.get, r.key) is not None, "registration lost"
        await asyncio.to_thread(restart, cluster, root)
        await asyncio.to_thread(root, "put", "/app/w/after-restart", "x")
        await asyncio.to_thread(wait_for, lambda: ("/app/w/after-restart", "x") in seen, 15,
                                "watch event after an etcd restart")
        await asyncio.sleep(3)
        await asyncio.to_thread(wait_for, lambda: root.get(r.key) is not None, 10, "registration back after restart")
        await asyncio.to_thread(root, "put", "/services/api/a2", '{"host": "10.0.0.2", "port": 81}')
        await asyncio.to_thread(wait_for, lambda: listings and listings[-1] == ["a1", "a2"], 10,
                                f"registry watch after restart (listings {listings[-3:]})")
        assert (await cfg.get("/app/w/k1")) == "v1"
        await reg.close()
        await cfg.close()

    asyncio.run(go())
    assert root.get("/services/api/a1") is None        # deregistered on close


def test_long_running_cli_command_survives_token_expiry(token_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path) -> None:
    cluster, root = token_etcd
    env = {**os.environ, "ETCDSYNC_ENDPOINTS": cluster.endpoints[0], "ETCDSYNC_USER": "app",
           "ETCDSYNC_PASSWORD": "apppw", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "etcdsync", "services", "watch", "api", "--timeout", "3"],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        time.sleep(4)                                  # the command's token expires while it waits
        root("put", "/services/api/x1", '{"host": "10.0.0.1", "port": 80}')
        wait_for(lambda: "x1" in out.read_text(), 10, f"first change after token expiry: {out.read_text()[-800:]}")
        restart(cluster, root)
        time.sleep(3)
        root("put", "/services/api/x2", '{"host": "10.0.0.2", "port": 80}')
        wait_for(lambda: "x2" in out.read_text(), 15, f"change after an etcd restart: {out.read_text()[-800:]}")
        assert p.poll() is None, out.read_text()
        assert "Traceback" not in out.read_text()
    finally:
        p.terminate()
        p.wait(10)


# ------------------------------------------------------------------------------------------------
# --timeout while connecting


@pytest.fixture
def lone_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A private one-member etcd that a test may pause, restart or wipe."""
    c = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def paused_for(cluster: EtcdCluster, seconds: float) -> Any:
    """Pause the member now and resume it `seconds` later (a timer thread)."""
    import threading

    m = cluster.members[0]
    m.pause()
    t = threading.Timer(seconds, m.resume)
    t.start()
    return t


def test_a_request_waits_for_a_paused_etcd_within_its_timeout(lone_etcd: EtcdCluster) -> None:
    from etcdsync import ConfigStore

    Ctl(lone_etcd.endpoints)("put", "/k", "v")
    t = paused_for(lone_etcd, 1.5)
    t0 = time.monotonic()
    try:
        assert ConfigStore(Connection(lone_etcd.endpoints, timeout=5)).get("/k") == "v"
    finally:
        t.join()
    assert time.monotonic() - t0 >= 1.4


def test_cli_timeout_covers_connecting_to_a_paused_etcd(lone_etcd: EtcdCluster, tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\n"
                    "spec:\n  prefix: /app/\n  data:\n    x: '1'\n")
    env = {**os.environ, "ETCDSYNC_ENDPOINTS": lone_etcd.endpoints[0], "PYTHONPATH": str(ROOT)}
    t = paused_for(lone_etcd, 1.5)
    try:
        p = subprocess.run([sys.executable, "-m", "etcdsync", "diff", "-f", str(path), "--applyset", "t", "--timeout", "6"],
                           capture_output=True, text=True, env=env, timeout=60)
    finally:
        t.join()
    assert p.returncode == 1, p.stderr[-1500:]          # 1: there are differences to apply
    assert "/app/x" in p.stdout
    # and a dead endpoint still fails within the timeout, in words
    lone_etcd.members[0].stop()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "etcdsync", "diff", "-f", str(path), "--applyset", "t", "--timeout", "2"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr[-1500:]
    assert lone_etcd.endpoints[0] in p.stderr and "unreachable" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 2 + 5
