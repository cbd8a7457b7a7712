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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers_faults
import pytest
from conftest import ROOT, wait_for
from helpers_faults import Ctl, find_leader

from etcdsync.aio import AsyncConfigStore, AsyncRegistry
from etcdsync.etcd.store import Store
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection

SIMPLE_TOKENS = ["--auth-token", "simple", "--auth-token-ttl", "2"]


def start_auth_etcd(base: Path, extra: list[str] | None = None) -> tuple[EtcdCluster, Ctl]:
    """One etcd with auth on: user `root`, and user `app` that may use /app/ and /services/."""
    return helpers_faults.start_auth_etcd(base, user="app", password="apppw", role="app",
                                          prefixes=("/app/", "/services/"), extra=extra)


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


# ------------------------------------------------------------------------------------------------
# etcdctl's conventions, password files, IPv6


def test_connection_settings_fall_back_to_etcdctl_variables(tmp_path: Path) -> None:
    ctl_env = {"ETCDCTL_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.2:2379", "ETCDCTL_USER": "root:s3cr:et",
               "ETCDCTL_CACERT": "/ca.pem", "ETCDCTL_CERT": "/c.pem", "ETCDCTL_KEY": "/k.pem"}
    c = Connection.from_env(ctl_env)
    assert c.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert (c.user, c.password) == ("root", "s3cr:et")
    assert (c.ca_cert, c.cert, c.key) == ("/ca.pem", "/c.pem", "/k.pem")
    # etcdsync's own variables come first, one by one
    c = Connection.from_env({**ctl_env, "ETCDSYNC_ENDPOINTS": "http://e:1", "ETCDSYNC_USER": "app",
                             "ETCDSYNC_PASSWORD": "pw", "ETCDSYNC_CACERT": "/mine.pem"})
    assert (c.endpoints, c.user, c.password, c.ca_cert, c.cert) == (("http://e:1",), "app", "pw", "/mine.pem", "/c.pem")
    c = Connection.from_env({"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "pw"})
    assert (c.user, c.password) == ("root", "pw")
    # --user user:password like etcdctl; with --password the user is taken whole
    assert (Connection.from_env({}, user="a:b").user, Connection.from_env({}, user="a:b").password) == ("a", "b")
    c = Connection.from_env({}, user="a:b", password="p")
    assert (c.user, c.password) == ("a:b", "p")
    assert Connection(user="u:p").password == "p"
    # password files: the first line, from the flag or ETCDSYNC_PASSWORD_FILE
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    assert Connection.from_env({}, user="u", password_file=str(pw)).password == "from-file"
    assert Connection.from_env({"ETCDSYNC_USER": "u", "ETCDSYNC_PASSWORD_FILE": str(pw)}).password == "from-file"
    assert Connection.from_env({"ETCDSYNC_USER": "u", "ETCDSYNC_PASSWORD": "env",
                                "ETCDSYNC_PASSWORD_FILE": str(pw)}).password == "env"
    from etcdsync.errors import UsageError

    with pytest.raises(UsageError, match="--password-file .*missing"):
        Connection.from_env({}, user="u", password_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(UsageError, match="empty"):
        Connection.from_env({}, user="u", password_file=str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="one of them"):
        Connection.from_env({}, user="u", password="x", password_file=str(pw))
    assert "from-file" not in repr(Connection.from_env({}, user="u", password_file=str(pw)))


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Ctl]]:
    c, root = start_auth_etcd(tmp_path_factory.mktemp("auth"))
    try:
        yield c, root
    finally:
        c.stop()


def cli_run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m etcdsync ...` with only the given connection variables (none inherited)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDSYNC_", "ETCDCTL_"))}
    return subprocess.run([sys.executable, "-m", "etcdsync", *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "PYTHONPATH": str(ROOT), **env}, stdin=subprocess.DEVNULL)


def test_a_shell_set_up_for_etcdctl_works_unchanged(auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path) -> None:
    cluster, root = auth_etcd
    root("put", "/services/api/i1", '{"host": "10.0.0.1", "port": 80}')
    ep = cluster.endpoints[0]
    pw = tmp_path / "pw"
    pw.write_text("apppw\n")
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    good = {
        "ETCDCTL_USER=app:apppw": ({"ETCDCTL_ENDPOINTS": ep, "ETCDCTL_USER": "app:apppw"}, []),
        "ETCDCTL_USER + ETCDCTL_PASSWORD": ({"ETCDCTL_ENDPOINTS": ep, "ETCDCTL_USER": "app",
                                             "ETCDCTL_PASSWORD": "apppw"}, []),
        "--user app:apppw": ({"ETCDCTL_ENDPOINTS": ep}, ["--user", "app:apppw"]),
        "--password-file": ({"ETCDSYNC_ENDPOINTS": ep}, ["--user", "app", "--password-file", str(pw)]),
        "ETCDSYNC_PASSWORD_FILE": ({"ETCDSYNC_ENDPOINTS": ep, "ETCDSYNC_USER": "app",
                                    "ETCDSYNC_PASSWORD_FILE": str(pw)}, []),
    }
    for name, (env, flags) in good.items():
        p = cli_run("services", "ls", "api", "-o", "json", *flags, env=env)
        assert p.returncode == 0 and "10.0.0.1" in p.stdout, (name, p.stderr[-1500:])
    p = cli_run("services", "ls", "api", "--user", "app", "--password-file", str(bad), env={"ETCDCTL_ENDPOINTS": ep})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "authentication failed" in p.stderr and "wrong" not in p.stderr.replace("wrong user", ""), p.stderr
    p = cli_run("services", "ls", "api", "--user", "app", "--password-file", str(tmp_path / "nope"),
                env={"ETCDCTL_ENDPOINTS": ep})
    assert p.returncode == 2 and "--password-file" in p.stderr and "Traceback" not in p.stderr, p.stderr


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_endpoints(tmp_path: Path) -> None:
    c = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    m = c.members[0]
    urls = f"http://127.0.0.1:{m.client_port},http://[::1]:{m.client_port}"
    m.extra_args += ["--listen-client-urls", urls, "--advertise-client-urls", urls]
    c.start()
    try:
        v6 = f"http://[::1]:{m.client_port}"

        async def go() -> None:
            async with Store(Connection([v6], timeout=3)) as s:
                await s.put("/v6/k", b"v")
                assert (await s.get("/v6/k")).value == b"v"  # type: ignore[union-attr]
                assert s.endpoint == v6

        asyncio.run(go())
        p = cli_run("services", "ls", "api", env={"ETCDCTL_ENDPOINTS": f"[::1]:{m.client_port}"})
        assert p.returncode == 0, p.stderr
        # a v4 and a v6 endpoint of the same member side by side
        assert AsyncConfigStore and asyncio.run(_get_both(f"http://127.0.0.1:{m.client_port}", v6)) == "v"
    finally:
        c.stop()


async def _get_both(a: str, b: str) -> str | None:
    cfg = AsyncConfigStore(Connection([a, b], timeout=3))
    try:
        return await cfg.get("/v6/k")
    finally:
        await cfg.close()


# ------------------------------------------------------------------------------------------------
# TLS and connection errors in words


def start_tls_etcd(base: Path, cert: Path, key: Path, ca: Path | None) -> tuple[EtcdCluster, str]:
    c = EtcdCluster(1, base_dir=str(base))
    m = c.members[0]
    url = f"https://127.0.0.1:{m.client_port}"
    m.extra_args += ["--listen-client-urls", url, "--advertise-client-urls", url, "--cert-file", str(cert),
                     "--key-file", str(key)]
    if ca is not None:
        m.extra_args += ["--client-cert-auth", "--trusted-ca-file", str(ca)]
    m.start(wait=False)
    return c, url


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from certs import make_ca

    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(base / "ca", "ca")
    other = make_ca(base / "other", "other")
    server = ca.issue("server", server=True, cn="localhost")
    elsewhere = ca.issue("elsewhere", server=True, cn="etcd.example", sans="DNS:etcd.example")
    client = ca.issue("client", server=False, cn="app")
    stranger = other.issue("stranger", server=False)
    mtls, mtls_url = start_tls_etcd(base / "mtls", *server, ca.cert)
    named, named_url = start_tls_etcd(base / "named", *elsewhere, None)
    plain = EtcdCluster(1, base_dir=str(base / "plain"))
    try:
        plain.start()
        wait_for(lambda: Ctl([mtls_url], tls=(str(ca.cert), str(client[0]), str(client[1])))("endpoint", "health")
                 is not None, 20, "mTLS etcd healthy", step=0.2)
        wait_for(lambda: socket.create_connection(("127.0.0.1", named.members[0].client_port), 1).close() is None,
                 20, "TLS etcd listening", step=0.2)
        yield {"ca": str(ca.cert), "other_ca": str(other.cert), "client": [str(p) for p in client],
               "stranger": [str(p) for p in stranger], "mtls": mtls_url, "named": named_url,
               "plain": plain.endpoints[0]}
    finally:
        for c in (mtls, named, plain):
            c.stop()


@pytest.fixture
def http1_server() -> Iterator[str]:
    """A plain HTTP/1.1 server on a free loopback port (not etcd), as its URL."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tls_and_protocol_refusals_in_words(tls_servers: dict[str, Any], http1_server: str) -> None:
    t = tls_servers
    client = ["--cert", t["client"][0], "--key", t["client"][1]]
    cases = [
        ("unknown authority", t["mtls"], ["--cacert", t["other_ca"], *client], "unknown authority"),
        ("no client certificate", t["mtls"], ["--cacert", t["ca"]], "requires a client certificate"),
        ("client certificate of another CA", t["mtls"],
         ["--cacert", t["ca"], "--cert", t["stranger"][0], "--key", t["stranger"][1]], "client certificate"),
        ("plain http to a TLS port", t["mtls"].replace("https://", "http://"), [], "use https://"),
        ("https to a plain-HTTP etcd", t["plain"].replace("http://", "https://"), ["--cacert", t["ca"]],
         "speaks plain http"),
        ("host name mismatch", t["named"], ["--cacert", t["ca"]], "does not name this host"),
        # an HTTP/1 server (a metrics port, another service): no use waiting for it to answer gRPC, so it
        # fails at once, not after the 10 s timeout
        ("an HTTP/1 server", http1_server, ["--timeout", "10"], "not etcd's client port"),
    ]
    for name, url, flags, words in cases:
        t0 = time.monotonic()
        p = cli_run("services", "ls", "api", "--endpoints", url, "--timeout", "3", *flags, env={})
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, (name, p.stderr[-1500:])
        assert url in lines[0], (name, lines[0])
        assert words in lines[0].lower(), (name, lines[0])
        assert time.monotonic() - t0 < 3 + 5, (name, time.monotonic() - t0)
    # the right certificates, from etcdctl's variables
    p = cli_run("services", "ls", "api", env={"ETCDCTL_ENDPOINTS": t["mtls"], "ETCDCTL_CACERT": t["ca"],
                                               "ETCDCTL_CERT": t["client"][0], "ETCDCTL_KEY": t["client"][1]})
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------------
# a revision that goes backwards: restore from an older snapshot, or a rebuilt cluster


def restore_snapshot(cluster: EtcdCluster, snapshot: Path, token: str = "etcdsync-test") -> None:
    """Stop the member, replace its data with `snapshot` (etcdctl snapshot restore), start it again.
    The same --initial-cluster-token keeps the cluster id; another one makes a new cluster."""
    import shutil

    from etcdsync.local.etcdbin import find_binary

    m = cluster.members[0]
    m.stop()
    shutil.rmtree(m.data_dir)
    peer = f"http://127.0.0.1:{m.peer_port}"
    subprocess.run([find_binary("etcdctl"), "snapshot", "restore", str(snapshot), "--data-dir", str(m.data_dir),
                    "--name", m.name, "--initial-cluster", f"{m.name}={peer}", "--initial-cluster-token", token,
                    "--initial-advertise-peer-urls", peer], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "ETCDCTL_API": "3"})
    m.start()


@pytest.mark.parametrize("token", ["etcdsync-test", "rebuilt"], ids=["same-cluster", "new-cluster-id"])
def test_restore_from_an_older_snapshot_resyncs_library_watches(lone_etcd: EtcdCluster, tmp_path: Path,
                                                                 token: str) -> None:
    from etcdsync.errors import ClusterChangedError

    ctl = Ctl(lone_etcd.endpoints)
    ctl("put", "/app/flag", "old")
    ctl("put", "/services/api/a1", '{"host": "10.0.0.1", "port": 80}')
    snap = tmp_path / "snap.db"
    ctl("snapshot", "save", str(snap))
    events: list[tuple[str, str, str | None]] = []
    listings: list[list[str]] = []
    changes: list[ClusterChangedError] = []

    async def go() -> None:
        cfg = AsyncConfigStore(Connection(lone_etcd.endpoints, timeout=3))
        reg = AsyncRegistry(Connection(lone_etcd.endpoints, timeout=3))
        await cfg.watch("/app/", lambda ev: events.append((ev.type, ev.key, ev.value)), prefix=True)
        await reg.watch("api", lambda xs: listings.append([i.id for i in xs]))
        (await cfg._client.store()).on_cluster_change.append(changes.append)
        for i in range(30):                                # the history the restore will lose
            await cfg.put(f"/app/noise/{i % 3}", str(i))
        await cfg.put("/app/flag", "new")
        await cfg.put("/app/added", "x")
        await asyncio.to_thread(ctl, "put", "/services/api/a2", '{"host": "10.0.0.2", "port": 80}')
        await asyncio.to_thread(wait_for, lambda: ("put", "/app/added", "x") in events
                                and listings[-1] == ["a1", "a2"], 10, "changes seen before the restore")
        events.clear()
        await asyncio.to_thread(restore_snapshot, lone_etcd, snap, token)
        # the watchers get the restored state, without anyone touching a key
        await asyncio.to_thread(wait_for, lambda: ("put", "/app/flag", "old") in events
                                and ("delete", "/app/added", None) in events and listings[-1] == ["a1"], 20,
                                f"restored state delivered (events {events}, listings {listings[-2:]})")
        # and later changes arrive, though their revisions are below what was seen before
        await asyncio.to_thread(ctl, "put", "/app/flag", "after-restore")
        await asyncio.to_thread(wait_for, lambda: ("put", "/app/flag", "after-restore") in events, 10,
                                "a change after the restore")
        await asyncio.to_thread(ctl, "put", "/services/api/a3", '{"host": "10.0.0.3", "port": 80}')
        await asyncio.to_thread(wait_for, lambda: listings[-1] == ["a1", "a3"], 10, "a registry change after it")
        assert await cfg.get("/app/flag") == "after-restore"
        await cfg.close()
        await reg.close()

    asyncio.run(go())
    assert changes, "the store did not report the change of cluster"
    what = "cluster id changed" if token == "rebuilt" else "revision went backwards"
    assert any(what in str(c) for c in changes), [str(c) for c in changes]


def test_a_watch_raises_cluster_changed_for_a_revision_the_cluster_does_not_have(lone_etcd: EtcdCluster,
                                                                                  tmp_path: Path) -> None:
    from etcdsync.errors import ClusterChangedError, CompactedError

    ctl = Ctl(lone_etcd.endpoints)
    snap = tmp_path / "snap.db"
    ctl("snapshot", "save", str(snap))
    for i in range(20):
        ctl("put", "/w/k", str(i))
    seen = ctl.revision()
    restore_snapshot(lone_etcd, snap)

    async def go() -> BaseException | None:
        async with Store(Connection(lone_etcd.endpoints, timeout=3)) as s:
            try:
                async with asyncio.timeout(10):
                    async for _ in s.watch("/w/", prefix=True, start_revision=seen + 1):
                        pass
            except (ClusterChangedError, TimeoutError) as exc:
                return exc
            return None

    exc = asyncio.run(go())
    assert isinstance(exc, ClusterChangedError) and isinstance(exc, CompactedError), repr(exc)
    assert exc.old_revision == seen and exc.new_revision < seen, (exc.old_revision, exc.new_revision)


# ------------------------------------------------------------------------------------------------
# one pinned endpoint, moving on when it stops answering


@pytest.mark.cluster
def test_pinned_endpoint_moves_off_a_paused_member_and_stays_off(tmp_path: Path) -> None:
    cluster = EtcdCluster(3, base_dir=str(tmp_path / "etcd")).start()
    by_url = {m.endpoint: m for m in cluster.members}
    paused: list[Any] = []
    try:
        async def go() -> None:
            events: list[str] = []
            async with Store(Connection(cluster.endpoints, timeout=6)) as s:
                cfg = AsyncConfigStore(s)
                await cfg.watch("/p/", lambda ev: events.append(ev.value), prefix=True)
                await s.put("/p/k", b"0")
                first = s.endpoint
                # a follower the store does not use may pause: nothing changes (a paused leader
                # would stall the writes the pinned member forwards to it, and the store would move)
                leader = await asyncio.to_thread(find_leader, cluster)
                other = next(m for url, m in by_url.items() if url != first and m is not leader)
                other.pause()
                paused.append(other)
                t0 = time.monotonic()
                for i in range(10):
                    await s.put("/p/k", str(i).encode())
                assert time.monotonic() - t0 < 3 and s.endpoint == first
                other.resume()
                paused.remove(other)
                # the pinned member pauses: the next request moves on within one try (timeout/3)
                by_url[first].pause()
                paused.append(by_url[first])
                t0 = time.monotonic()
                await s.put("/p/k", b"moved")
                assert time.monotonic() - t0 < 6, "the request waited for the paused member"
                assert s.endpoint != first
                # and stays on a member that answers: the next requests are quick
                t0 = time.monotonic()
                for i in range(20):
                    assert (await s.get("/p/k")) is not None
                    await s.put("/p/k", f"after-{i}".encode())
                assert time.monotonic() - t0 < 5
                assert s.endpoint != first
                # the watch on the paused member noticed the silence and resumed elsewhere
                await asyncio.to_thread(wait_for, lambda: "after-19" in events, 10, f"watch events: {events[-3:]}")
                by_url[first].resume()
                paused.remove(by_url[first])
                await s.put("/p/k", b"resumed")
                await asyncio.to_thread(wait_for, lambda: "resumed" in events, 10, "watch after the resume")

        asyncio.run(go())
    finally:
        for m in paused:
            m.resume()
        cluster.stop()
