"""`etcdsync run` as a real subprocess against real etcd. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Env, wait_for
from history import Declared, Recorder, recorder

from etcdsync.local.etcdbin import EtcdCluster, free_ports

CONFIG = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: app}}
spec:
  prefix: {ns}app/
  data:
    a: {a}
    b: two
    seed: {{value: initial, policy: create-only}}
    watched: {{value: "off", policy: warn}}
"""


class Daemon:
    def __init__(self, env: Env, mdir: Path, *extra: str, endpoints: list[str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.port = free_ports(1)[0]
        self.log = (log_dir or env.tmp) / f"daemon-{self.port}.log"
        args = [sys.executable, "-m", "etcdsync", "run", "-f", str(mdir), "--applyset", "t",
                "--reserved-prefix", env.reserved, "--metrics-addr", f"127.0.0.1:{self.port}",
                "--endpoints", ",".join(endpoints or env.endpoints), "--debounce", "100ms", *extra]
        environ = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), env=environ,
                                     stdin=subprocess.DEVNULL)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> dict[str, Any]:
        return json.loads(self.get("/readyz")[1])

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout, f"daemon ready ({self.logs()[-800:]})")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            if sig != signal.SIGKILL:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.logs()[-2000:]}") from None
        return self.proc.returncode


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGCONT)
            d.proc.kill()
            d.proc.wait(5)


OTHER = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: other}}
spec:
  prefix: {ns}other/
  data: {{x: "1"}}
"""


def manifest(env: Env, a: str = "one", name: str = "m/app.yaml") -> Path:
    """Write CONFIG with `a`; when the test records history, declare the version first."""
    if env.hist is not None:
        env.hist.declare(declared(env, a))
    path = env.write(name, CONFIG.format(ns=env.ns, a=a))
    return path.parent


def declared(env: Env, a: str) -> dict[str, Declared]:
    ns = env.ns
    return {f"{ns}app/a": Declared(a.encode()), f"{ns}app/b": Declared(b"two"),
            f"{ns}app/seed": Declared(b"initial", "create-only"), f"{ns}app/watched": Declared(b"off", "warn")}


def test_edits_never_flap_and_the_daemon_goes_quiet(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    """Regression: each edit used to be "repaired" back to the previous manifest (c0 c1 c0 c1 c2 ...)."""
    mdir = manifest(env, a="c0")
    d = Daemon(env, mdir, "--resync", "1s")
    daemons.append(d)
    d.wait_ready()
    for i in range(1, 6):
        manifest(env, a=f"c{i}")
        wait_for(lambda i=i: env.get(f"{env.ns}app/a") == f"c{i}".encode(), 10, f"edit c{i} applied")
        time.sleep(0.3)
    history.check()
    history.assert_quiet(2.5)   # includes two resyncs
    values = [e.value for e in history.snapshot() if e.key == f"{env.ns}app/a"]
    assert values == [f"c{i}".encode() for i in range(6)], history.history_of(f"{env.ns}app/a")
    assert "drift repaired" not in d.logs()


def test_converges_repairs_drift_follows_edits_and_keeps_last_good_state(env: Env, history: Recorder,
                                                                        daemons: list[Daemon]) -> None:
    mdir = manifest(env)
    env.put(f"{env.ns}app/stranger", "not ours")
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    assert env.get(f"{env.ns}app/a") == b"one"
    # drift on an enforce key: repaired from the watch event
    env.etcdctl("put", f"{env.ns}app/a", "drifted")
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"one", 5, "drift repaired")
    env.etcdctl("del", f"{env.ns}app/b")
    wait_for(lambda: env.get(f"{env.ns}app/b") == b"two", 5, "deleted key restored")
    # create-only: a runtime change stays; deleting restores the seed
    env.etcdctl("put", f"{env.ns}app/seed", "runtime")
    env.etcdctl("put", f"{env.ns}app/watched", "on")
    history.assert_quiet(1.0)                       # neither is written back
    assert env.get(f"{env.ns}app/seed") == b"runtime"
    assert env.get(f"{env.ns}app/watched") == b"on"
    env.etcdctl("del", f"{env.ns}app/seed")
    wait_for(lambda: env.get(f"{env.ns}app/seed") == b"initial", 5, "create-only key restored")
    # a file edit is followed
    manifest(env, a="edited")
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"edited", 5, "file edit applied")
    # a broken edit keeps the last good state and is reported
    history.declare(declared(env, "edited"))     # a broken file declares nothing new
    (mdir / "app.yaml").write_text(CONFIG.format(ns=env.ns, a="broken") + "  bogus: [\n")
    wait_for(lambda: "app.yaml" in str(d.ready().get("manifests")), 5, "readyz reports the manifest error")
    assert d.get("/readyz")[0] == 503
    assert env.get(f"{env.ns}app/a") == b"edited"
    env.etcdctl("put", f"{env.ns}app/a", "drift-again")
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"edited", 5, "last good state still enforced")
    # a file emptied while an editor saves (other files in the tree still declare keys, so the
    # deletion guard would not catch it): a load error, the last good state kept, nothing pruned
    env.write("m/other.yaml", OTHER.format(ns=env.ns))
    history.declare({**declared(env, "edited"), f"{env.ns}other/x": Declared(b"1")})
    wait_for(lambda: "app.yaml" in str(d.ready().get("manifests")), 5, "still reported")
    (mdir / "app.yaml").write_text(CONFIG.format(ns=env.ns, a="edited"))
    wait_for(lambda: env.get(f"{env.ns}other/x") == b"1", 5, "the other file applied")
    (mdir / "app.yaml").write_text("")
    wait_for(lambda: "holds no documents" in str(d.ready().get("manifests")), 5,
             lambda: f"empty file reported\n{d.logs()[-1500:]}")
    history.assert_quiet(1.0)
    assert env.get(f"{env.ns}app/a") == b"edited" and env.get(f"{env.ns}app/b") == b"two"
    assert env.get(f"{env.ns}app/seed") == b"initial"
    assert env.get(f"{env.ns}app/stranger") == b"not ours"
    assert "etcdsync_manifests_valid 0.0" in d.get("/metrics")[1]
    # the file comes back by a rename-style save (write a temporary file, rename it over)
    tmp = mdir / ".app.yaml.swp"
    tmp.write_text(CONFIG.format(ns=env.ns, a="edited"))
    os.replace(tmp, mdir / "app.yaml")
    wait_for(lambda: d.ready().get("manifests") == "ok", 5, "load error resolved")
    _, metrics = d.get("/metrics")
    assert 'etcdsync_drift_total{action="repaired",policy="enforce"}' in metrics
    assert 'etcdsync_drift_total{action="reported",policy="warn"}' in metrics
    assert "etcdsync_manifests_valid 1.0" in metrics
    assert d.get("/healthz") == (200, "ok\n")
    assert d.stop() == 0
    assert env.get(f"{env.ns}app/a") == b"edited", "config keys stay after SIGTERM"


LIVE = """\
apiVersion: etcdsync/v1
kind: Service
metadata: {{name: web}}
spec:
  prefix: {ns}services/
  ttl: 2s
  instances:
    - {{id: plain, host: 127.0.0.1, port: 1}}
    - {{id: checked, host: 127.0.0.1, port: {port}, check: {{tcp: true, interval: 200ms, failures: 2}}}}
"""


def test_live_instances_leases_checks_and_sigterm(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    port = free_ports(1)[0]
    mdir = env.write("m/live.yaml", LIVE.format(ns=env.ns, port=port)).parent
    history.declare(declared(env, "one"))
    env.write("m/app.yaml", CONFIG.format(ns=env.ns, a="one"))
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    plain, checked = f"{env.ns}services/web/plain", f"{env.ns}services/web/checked"
    wait_for(lambda: env.get(plain) == b'{"host":"127.0.0.1","port":1}', 5, "plain live instance registered")
    assert env.get(checked) is None, "nothing listens on the checked port yet"
    # a passing check registers, a failing one deregisters
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        wait_for(lambda: env.get(checked) is not None, 5, "checked instance registered once its check passes")
    finally:
        stop.set()
        t.join(2)
        server.close()
    wait_for(lambda: env.get(checked) is None, 5, "checked instance deregistered after failures")
    # the lease is kept alive past several TTLs
    time.sleep(5)
    assert env.get(plain) is not None
    # someone revokes the lease with etcdctl: re-registered
    lease_hex = env.etcdctl("get", plain, "-w", "json")
    lease_id = json.loads(lease_hex)["kvs"][0]["lease"]
    env.etcdctl("lease", "revoke", format(lease_id, "x"))
    wait_for(lambda: env.get(plain) is not None, 5, "re-registered after lease revoke")
    # logged once the key is written again (by the keepalive loop, or by the watch's answer)
    wait_for(lambda: "re-registered" in d.logs() or "restored" in d.logs(), 5, lambda: d.logs()[-1500:])
    # SIGTERM: leased instances vanish at once, config stays, and the daemon does not fight its own revoke
    assert d.stop() == 0
    assert env.get(plain) is None
    assert "restored" not in d.logs().split("stopping:")[-1]
    assert env.get(f"{env.ns}app/a") == b"one"


def test_crashed_daemon_leaves_live_instances_to_expire(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    mdir = env.write("m/live.yaml", LIVE.format(ns=env.ns, port=1)).parent
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    plain = f"{env.ns}services/web/plain"
    wait_for(lambda: env.get(plain) is not None, 5, "registered")
    d.stop(signal.SIGKILL)
    assert env.get(plain) is not None
    t0 = time.monotonic()
    wait_for(lambda: env.get(plain) is None, 2 + 4, "expired with the lease")
    assert time.monotonic() - t0 < 2 + 2.5


def test_etcd_restart_and_compaction(tmp_path: Path, daemons: list[Daemon]) -> None:
    cluster = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    cluster.start()
    try:
        env = Env(cluster.endpoints, "/r/", "/r/.etcdsync/", tmp_path)
        env.hist = recorder(env.endpoints, [env.ns], env.reserved)
        mdir = manifest(env)
        d = Daemon(env, mdir, "--timeout", "1")
        daemons.append(d)
        d.wait_ready()
        member = cluster.members[0]
        member.stop()
        wait_for(lambda: d.get("/readyz")[0] == 503, 15, "not ready while etcd is down")
        member.start()
        env.etcdctl("put", "/r/app/a", "drift-after-restart")
        wait_for(lambda: env.get("/r/app/a") == b"one", 15, f"drift repaired after restart\n{d.logs()[-1500:]}")
        wait_for(lambda: d.get("/readyz")[0] == 200, 15, "ready again")
        # compaction while the daemon is paused: it must notice and re-read everything
        d.proc.send_signal(signal.SIGSTOP)
        for i in range(5):
            env.etcdctl("put", "/r/app/a", f"while-paused-{i}")
        rev = env.revision()
        env.etcdctl("compact", str(rev))
        d.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: env.get("/r/app/a") == b"one", 15, f"converged after compaction\n{d.logs()[-1500:]}")
        env.hist.check()
        env.hist.assert_quiet(1.5)
        assert d.stop() == 0
    finally:
        if env.hist is not None:
            env.hist.stop()
        cluster.stop()


def test_leader_election_takeover_and_fencing(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    # two trees, one apply set: each daemon's value is "declared" while it leads
    history.declare(declared(env, "from-a"))
    a_dir = env.write("a/app.yaml", CONFIG.format(ns=env.ns, a="from-a")).parent
    b_dir = env.write("b/app.yaml", CONFIG.format(ns=env.ns, a="from-b")).parent
    a = Daemon(env, a_dir, "--leader-elect", "--election-ttl", "2s")
    daemons.append(a)
    a.wait_ready()
    wait_for(lambda: a.ready()["leader"] is True, 10, "first daemon elected")
    b = Daemon(env, b_dir, "--leader-elect", "--election-ttl", "2s")
    daemons.append(b)
    b.wait_ready()
    assert b.ready()["leader"] is False
    assert env.get(f"{env.ns}app/a") == b"from-a"
    history.assert_quiet(1.0, under=f"{env.ns}app/")   # the standby must not write
    # pause the leader past its lease: the standby takes over within a few seconds
    history.declare(declared(env, "from-b"))
    a.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"from-b", 15,
             lambda: f"standby took over\n--- a ---\n{a.logs()[-1500:]}\n--- b ---\n{b.logs()[-2500:]}")
    assert time.monotonic() - t0 < 10
    rev_before = int(json.loads(env.etcdctl("get", f"{env.ns}app/a", "-w", "json"))["kvs"][0]["mod_revision"])
    # the paused ex-leader wakes up and sees "drift" (from-b); its fenced writes must not commit
    a.proc.send_signal(signal.SIGCONT)
    history.assert_quiet(3.0, under=f"{env.ns}app/")   # no config write by either daemon
    kv = json.loads(env.etcdctl("get", f"{env.ns}app/a", "-w", "json"))["kvs"][0]
    assert int(kv["mod_revision"]) == rev_before, f"ex-leader wrote!\n{a.logs()[-2000:]}"
    wait_for(lambda: a.ready()["leader"] is False, 10, "ex-leader steps down")
    # kill the new leader: the old one takes over again
    history.declare(declared(env, "from-a"))
    b.stop(signal.SIGKILL)

    def stuck() -> str:
        a.proc.send_signal(signal.SIGUSR1)   # the daemon logs where each of its tasks waits
        time.sleep(0.5)
        return f"takeover after kill\n--- a ---\n{a.logs()[-6000:]}\n--- b ---\n{b.logs()[-1500:]}"

    wait_for(lambda: env.get(f"{env.ns}app/a") == b"from-a", 15, stuck)
    assert a.stop() == 0


def test_a_key_removed_from_the_manifest_is_deleted_once_and_never_resurrected(
        env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    """Regression: the reconcile deleted a removed key, then "drift repair" put it back, unowned."""
    extra = "    gone: soon\n"
    history.declare({**declared(env, "one"), f"{env.ns}app/gone": Declared(b"soon")})
    mdir = env.write("m/app.yaml", CONFIG.format(ns=env.ns, a="one") + extra).parent
    d = Daemon(env, mdir, "--resync", "1s")
    daemons.append(d)
    d.wait_ready()
    assert env.get(f"{env.ns}app/gone") == b"soon"
    manifest(env, a="two")      # drops `gone`, changes `a`
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"two", 10, "edit applied")
    wait_for(lambda: env.get(f"{env.ns}app/gone") is None, 10, "removed key pruned")
    history.assert_quiet(2.5)
    assert env.get(f"{env.ns}app/gone") is None, history.history_of(f"{env.ns}app/gone")
    gone = [e.type for e in history.snapshot() if e.key == f"{env.ns}app/gone"]
    assert gone == ["put", "delete"], history.history_of(f"{env.ns}app/gone")
    r = env.cli("diff", "-f", str(mdir), "--applyset", "t")
    assert r.code == 0, r.out + r.err


def test_only_manifests_and_their_sources_trigger_a_reload(env: Env, history: Recorder,
                                                           daemons: list[Daemon]) -> None:
    """Regression: the daemon's own log file next to the manifest made it reload ~10 times a second.
    A fromFile source outside the -f folder is watched, and a resync re-reads it from disk."""
    certs = env.tmp / "certs"
    certs.mkdir()
    (certs / "tls.pem").write_text("cert-1")
    mdir = env.tmp / "m"
    text = CONFIG.format(ns=env.ns, a="one") + "    cert: {fromFile: ../certs/tls.pem}\n"
    history.declare({**declared(env, "one"), f"{env.ns}app/cert": Declared(b"cert-1")})
    env.write("m/app.yaml", text)
    d = Daemon(env, mdir / "app.yaml", "--resync", "2s", "--file-root", str(certs), log_dir=mdir)
    daemons.append(d)
    d.wait_ready()
    assert env.get(f"{env.ns}app/cert") == b"cert-1"
    # the daemon logs into the manifest folder, and someone writes other files there: no reloads
    (mdir / "notes.txt").write_text("x")
    (mdir / "other.yaml").write_text("not named with -f")
    time.sleep(1.5)
    reloads = d.logs().count("manifests changed") + d.logs().count("manifests re-read")
    assert reloads == 0, d.logs()[-2000:]
    # the source changes outside the -f folder: followed
    history.declare({**declared(env, "one"), f"{env.ns}app/cert": Declared(b"cert-2")})
    (certs / "tls.pem").write_text("cert-2")
    wait_for(lambda: env.get(f"{env.ns}app/cert") == b"cert-2", 10, f"source change applied\n{d.logs()[-1500:]}")
    # the source's folder is swapped (how Kubernetes updates a mounted secret): the watch may not see
    # it, the resync re-reads the source from disk
    history.declare({**declared(env, "one"), f"{env.ns}app/cert": Declared(b"cert-3")})
    (env.tmp / "certs").rename(env.tmp / "certs.old")
    (env.tmp / "certs").mkdir()
    (env.tmp / "certs" / "tls.pem").write_text("cert-3")
    wait_for(lambda: env.get(f"{env.ns}app/cert") == b"cert-3", 10, f"resync re-read the source\n{d.logs()[-1500:]}")
    history.assert_quiet(2.5)


def test_metrics_tell_the_truth_without_a_readyz_request(env: Env, history: Recorder,
                                                         daemons: list[Daemon]) -> None:
    mdir = manifest(env)
    env.put(f"{env.ns}app/watched", "on")           # warn drift, present before the daemon starts
    d = Daemon(env, mdir, "--resync", "500ms")
    daemons.append(d)

    def metric(name: str) -> float | None:
        for line in d.get("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    wait_for(lambda: metric("etcdsync_ready") == 1.0, 20, f"ready in /metrics alone\n{d.logs()[-1500:]}")
    assert metric("etcdsync_leader") == 1.0, "without --leader-elect the daemon writes: it is the leader"
    warn = 'etcdsync_drift_total{action="reported",policy="warn"}'
    assert metric(warn) == 1.0
    time.sleep(2)                                   # four resyncs: the same drift is not counted again
    assert metric(warn) == 1.0
    env.put(f"{env.ns}app/watched", "again")        # a new drift is
    wait_for(lambda: metric(warn) == 2.0, 5, "new warn drift counted once")


def test_concurrent_applies_print_no_traceback(env: Env, history: Recorder) -> None:
    """Regression: three applies racing on 3,000 keys printed `Task exception was never retrieved`."""
    lines = [f"    k{i:05d}: v{i}" for i in range(3000)]
    env.write("big/app.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: big}\n"
              f"spec:\n  prefix: {env.ns}big/\n  data:\n" + "\n".join(lines) + "\n")
    history.declare({f"{env.ns}big/k{i:05d}": f"v{i}" for i in range(3000)})
    for _round in range(2):
        env.delete(f"{env.ns}big/k00000")
        procs = [subprocess.Popen([sys.executable, "-m", "etcdsync", "apply", "--reserved-prefix", env.reserved,
                                   "-f", str(env.tmp / "big"), "--applyset", "big", "--endpoints", ",".join(env.endpoints)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdin=subprocess.DEVNULL) for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            text = err.decode(errors="replace")
            assert p.returncode in (0, 3), text
            assert "Traceback" not in text and "never retrieved" not in text, text
        env.etcdctl("del", "--prefix", f"{env.ns}big/")
        env.etcdctl("del", "--prefix", env.reserved)


def test_a_repair_never_overwrites_a_newer_write_it_has_not_seen(env: Env, history: Recorder,
                                                                 daemons: list[Daemon]) -> None:
    """Two writes land while the daemon is paused: the repair of the first must fail its compare (the
    second is newer), so the key is repaired once, from what the daemon has seen, never twice."""
    mdir = manifest(env)
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    key = f"{env.ns}app/a"
    for i in range(3):
        d.proc.send_signal(signal.SIGSTOP)
        try:
            env.put(key, f"first-{i}")
            env.put(key, f"second-{i}")
        finally:
            d.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: env.get(key) == b"one", 10, "repaired")
        history.assert_quiet(0.5)
    ours = [e for e in history.snapshot() if e.key == key and history.ours(e)]
    assert len(ours) == 1 + 3, history.history_of(key)


def test_a_repair_never_recreates_a_key_the_set_no_longer_owns(env: Env, history: Recorder,
                                                               daemons: list[Daemon]) -> None:
    """Another apply set takes a key over; then someone deletes it. The daemon still declares it (its
    reconcile is refused by the ownership conflict and keeps the last good state), but it no longer
    owns the key, so its repair must not put it back."""
    mdir = manifest(env)
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    other = env.write("other/b.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: b}}
        spec:
          prefix: {env.ns}app/
          data: {{b: two}}
        """)
    r = env.run("apply", "-f", str(other), "--applyset", "other", "--take-ownership")
    assert r.code == 0, r.err
    wait_for(lambda: "conflict" in str(d.ready().get("reconcile")), 10, f"conflict reported\n{d.logs()[-1500:]}")
    env.delete(f"{env.ns}app/b")
    history.assert_quiet(1.5)                       # a repair would take milliseconds
    assert env.get(f"{env.ns}app/b") is None, f"re-created a key another set owns\n{d.logs()[-1500:]}"


LIVE2 = """\
apiVersion: etcdsync/v1
kind: Service
metadata: {{name: api}}
spec:
  prefix: {ns}services/
  ttl: 5s
  instances:
{instances}
"""


def test_live_instance_removed_or_changed_by_an_edit(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    def write(instances: str) -> Path:
        return env.write("m/live.yaml", LIVE2.format(ns=env.ns, instances=instances)).parent

    mdir = write("    - {id: one, host: 127.0.0.1, port: 1}\n    - {id: two, host: 127.0.0.1, port: 2}")
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    one, two = f"{env.ns}services/api/one", f"{env.ns}services/api/two"
    wait_for(lambda: env.get(one) and env.get(two), 5, "both registered")
    write("    - {id: one, host: 127.0.0.1, port: 11}")
    wait_for(lambda: env.get(two) is None, 5, f"removed instance deregistered\n{d.logs()[-1500:]}")
    wait_for(lambda: env.get(one) == b'{"host":"127.0.0.1","port":11}', 5, "changed instance re-registered")
    assert env.kv(one).lease != 0


def test_a_prefix_added_by_an_edit_is_watched(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    mdir = manifest(env)
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    history.declare({**declared(env, "one"), f"{env.ns}new/x": Declared(b"1")})
    env.write("m/new.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: new}}
        spec:
          prefix: {env.ns}new/
          data: {{x: "1"}}
        """)
    wait_for(lambda: env.get(f"{env.ns}new/x") == b"1", 10, "new prefix applied")
    time.sleep(0.5)
    env.put(f"{env.ns}new/x", "drift")
    wait_for(lambda: env.get(f"{env.ns}new/x") == b"1", 4, f"drift under the new prefix repaired\n{d.logs()[-1500:]}")


def test_another_writer_changing_the_inventory_triggers_a_full_reconcile(env: Env, history: Recorder,
                                                                        daemons: list[Daemon]) -> None:
    mdir = manifest(env)
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    inv = f"{env.reserved}sets/t/inventory/"
    assert env.dump(inv)
    time.sleep(1.0)   # the first reconcile's own inventory write must not count as another writer's
    assert reconciles(d) == 1.0, d.logs()[-1500:]
    env.etcdctl("del", "--prefix", inv)          # someone wipes what the daemon owns
    wait_for(lambda: len(b"".join(env.dump(inv).values()).split(b'"')) > 4, 4,
             f"inventory re-recorded by a full reconcile\n{d.logs()[-1500:]}")
    history.assert_quiet(1.0)
    # one full reconcile for the other writer's change and none for our own rewrite; a watchdog probe
    # on a loaded machine may add one harmless re-read (it restarts a watch it thinks is silent)
    assert reconciles(d) in (2.0, 3.0), f"one full reconcile for the other writer's change\n{d.logs()}"
    if reconciles(d) == 3.0:
        assert "silent" in d.logs(), d.logs()


def reconciles(d: Daemon) -> float:
    for line in d.get("/metrics")[1].splitlines():
        if line.startswith('etcdsync_reconciles_total{result="success"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_reconcile_that_fails_half_way_never_lets_repairs_restore_the_old_manifest(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """An edit is committed in several transactions, and its last one can never commit (a value
    larger than the server's --max-request-bytes), so the reconcile fails half way. The keys of the
    batches that did commit hold the new manifest's values: a drift on them must be repaired to the
    new value, never to the previous manifest's."""
    with EtcdCluster(1, extra_args=["--max-request-bytes", "80000"]) as small:
        env = Env(small.endpoints, "/half/", "/half/.etcdsync/", tmp_path)
        env.hist = recorder(env.endpoints, [env.ns], env.reserved)
        try:
            def write(v: str, big: bool = False) -> Path:
                keys = {f"/half/k{i:02d}": v for i in range(40)}
                env.hist.declare({**keys, "/half/zz": "x" * 100_000} if big else keys)
                data = "\n".join(f"    k{i:02d}: {v}" for i in range(40))
                if big:
                    data += "\n    zz: " + "x" * 100_000
                return env.write("m/app.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: h}\n"
                                 f"spec:\n  prefix: /half/\n  data:\n{data}\n").parent

            mdir = write("old")
            d = Daemon(env, mdir)
            daemons.append(d)
            d.wait_ready()
            write("new", big=True)
            wait_for(lambda: "refuses" in str(d.ready().get("reconcile")), 20,
                     lambda: f"the reconcile failed half way\n{d.logs()[-1500:]}")
            assert env.get("/half/k00") == b"new", "the first batch committed"
            assert env.get("/half/zz") is None
            env.put("/half/k00", "drift")
            wait_for(lambda: env.get("/half/k00") != b"drift", 5, "drift repaired")
            assert env.get("/half/k00") == b"new", env.hist.history_of("/half/k00")
            env.hist.check()
        finally:
            env.hist.stop()


def test_a_stray_key_under_the_election_prefix_never_silences_the_daemons(env: Env, history: Recorder,
                                                                          daemons: list[Daemon]) -> None:
    """A key without a lease (or not named like a candidate) with the lowest create_revision would
    otherwise be "the leader" forever: nobody would write."""
    env.put(f"{env.reserved}election/t/0000000000000000", "squatter")
    env.put(f"{env.reserved}election/t/not-a-candidate", "x")
    mdir = manifest(env)
    d = Daemon(env, mdir, "--leader-elect", "--election-ttl", "2s")
    daemons.append(d)
    d.wait_ready()
    wait_for(lambda: d.ready()["leader"] is True, 10, lambda: f"elected\n{d.logs()[-1500:]}")
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"one", 5, "the elected daemon writes")
    assert "not a candidate" in d.logs()


def test_a_live_instance_that_becomes_static_config_is_kept(env: Env, history: Recorder,
                                                           daemons: list[Daemon]) -> None:
    """An edit turns a registered instance into a plain key (same key): the key is under the
    daemon's own lease, which is not another client's conflict, and dropping the registration must
    not delete the key that is now static config."""
    live = env.write("m/live.yaml", LIVE2.format(ns=env.ns, instances="    - {id: one, host: 127.0.0.1, port: 1}"))
    d = Daemon(env, live.parent)
    daemons.append(d)
    d.wait_ready()
    key = f"{env.ns}services/api/one"
    wait_for(lambda: env.kv(key) is not None and env.kv(key).lease != 0, 5, "registered under a lease")
    history.declare({key: '{"host":"127.0.0.1","port":1}'})
    live.unlink()
    env.write("m/static.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: s}}
        spec:
          prefix: {env.ns}services/api/
          data: {{one: '{{"host":"127.0.0.1","port":1}}'}}
        """)
    wait_for(lambda: env.kv(key) is not None and env.kv(key).lease == 0, 10,
             lambda: f"now static, without the lease\n{d.logs()[-1500:]}")
    history.assert_quiet(1.5)
    assert env.get(key) == b'{"host":"127.0.0.1","port":1}'
    assert d.ready()["reconcile"] == "ok"


@pytest.mark.parametrize("token", ["etcdsync-test", "rebuilt"], ids=["same-cluster", "new-cluster-id"])
def test_etcd_restored_from_an_older_snapshot_is_re_read_and_drift_is_repaired_at_once(
        tmp_path: Path, daemons: list[Daemon], token: str) -> None:
    """etcd's revision goes backwards (data restored from an older snapshot; or a rebuilt cluster with
    a new id): the daemon must not wait for revisions the cluster does not have, nor take the new
    history's revisions for ones it already handled. It re-reads, converges and repairs drift."""
    from test_connection import restore_snapshot

    from etcdsync.local.etcdbin import find_binary

    cluster = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    cluster.start()
    try:
        env = Env(cluster.endpoints, "/s/", "/s/.etcdsync/", tmp_path)
        snap = tmp_path / "snap.db"
        subprocess.run([find_binary("etcdctl"), "--endpoints", cluster.endpoints[0], "snapshot", "save", str(snap)],
                       check=True, capture_output=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
        mdir = manifest(env, a="one")
        # 300 drifts of one key on purpose: flap detection (5 repairs a minute) would rightly leave
        # the key alone, depending on how many of them the daemon repairs before the next lands
        d = Daemon(env, mdir, "--timeout", "2", "--flap-threshold", "1000")
        daemons.append(d)
        d.wait_ready()
        for i in range(300):                     # revisions the restored cluster will not have
            env.put("/s/app/a", f"drift-{i}")
        wait_for(lambda: env.get("/s/app/a") == b"one", 10, "repaired before the restore")
        restore_snapshot(cluster, snap, token)   # the snapshot predates every key of the daemon
        wait_for(lambda: env.get("/s/app/a") == b"one", 20,
                 lambda: f"re-applied after the restore\n{d.logs()[-2500:]}")
        assert "forgetting every revision" in d.logs() or "compacted" in d.logs(), d.logs()[-2500:]
        env.hist = recorder(env.endpoints, [env.ns], env.reserved)
        env.hist.declare(declared(env, "one"))
        t0 = time.monotonic()
        env.put("/s/app/a", "drift-after-restore")
        wait_for(lambda: env.get("/s/app/a") == b"one", 10, lambda: f"drift repaired\n{d.logs()[-2500:]}", step=0.02)
        # a repair takes milliseconds; the watchdog (5 s) would hide a watch waiting for a lost revision
        assert time.monotonic() - t0 < 3, "drift repair waited for revisions the cluster does not have"
        env.hist.check()
        before = reconciles(d)
        env.hist.assert_quiet(2.0)
        assert reconciles(d) == before, f"the daemon keeps re-reading after the restore\n{d.logs()[-2500:]}"
        assert d.stop() == 0
    finally:
        if env.hist is not None:
            env.hist.stop()
        cluster.stop()
