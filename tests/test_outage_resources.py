"""What a process of etcdsync costs while etcd is away, and that it comes back after.

A daemon (or a library process) runs converged, every etcd endpoint it knows goes away (stopped with
SIGTERM, or paused with SIGSTOP: TCP open, no answers), and for a window of seconds the process's CPU
time (/proc/PID/stat) and the lines it logs are counted; then etcd returns and the process must
converge again. Healthy figures are a few hundredths to a few tenths of a CPU second and a handful of
lines per window (a warning per retry, retries on capped exponential backoff); the bounds below are
far from both that and the broken figures each test names.

Members are only stopped with SIGTERM or paused here, never SIGKILLed: these tests run on etcd 3.4
and 3.5 alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from etcdgw import Gateway
from helpers_faults import Daemons

from etcdsync.local.etcdbin import EtcdCluster, free_ports

DOWN_WINDOW = 8.0     # seconds measured while every endpoint is away


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    d = Daemons()
    try:
        yield d
    finally:
        d.cleanup()


def configset(prefix: str, data: dict[str, str]) -> str:
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata: {name: app}", "spec:", f"  prefix: {prefix}",
             "  data:"]
    return "\n".join(lines + [f"    {k}: {v}" for k, v in data.items()]) + "\n"


def value(gw: Gateway, key: str) -> bytes | None:
    kv = gw.get(key)
    return kv.value if kv else None


# ------------------------------------------------------------------------------------------------
# the daemon's watches while every endpoint refuses

# With several endpoints, a watch that failed because the store moved to another member resumed
# there at once, with no wait: with every member refusing, the daemon went round them as fast as it
# could, ~2.3 CPU-seconds and ~2,300 log lines ("watch: ... resuming from revision N on ...") in 10 s
# with one member and two dead ports, ~4 CPU-seconds and ~5,300 lines with a stopped 3-member
# cluster. Healthy: ~0.1 CPU-second and ~7 lines. Bounds far from both:
WATCH_DOWN_CPU_BOUND = 1.0
WATCH_DOWN_LOG_LINES_BOUND = 80


@pytest.mark.parametrize("layout", ["three-members", "one-member-two-dead-ports"])
def test_daemon_watches_wait_while_every_endpoint_refuses(tmp_path: Path, daemons: Daemons, layout: str) -> None:
    cluster = EtcdCluster(3 if layout == "three-members" else 1, base_dir=str(tmp_path / "etcd"))
    try:
        cluster.start()
        eps = cluster.endpoints + ([f"http://127.0.0.1:{p}" for p in free_ports(2)] if layout != "three-members" else [])
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "app.yaml").write_text(configset("/x/app/", {"a": "one", "b": "two"}))
        d = daemons.start(tmp_path, [mdir], "--timeout", "1", endpoints=eps, reserved="/x/.etcdsync/")
        d.wait_ready(30)
        gw = Gateway(cluster.endpoints, timeout=2)
        assert value(gw, "/x/app/a") == b"one"

        for m in cluster.members:
            m.stop()
        wait_for(lambda: "watch:" in d.logs(), 10, f"the daemon's watch noticing\n{d.logs()[-1500:]}")
        lines, cpu = len(d.logs().splitlines()), cpu_seconds(d.proc.pid)
        time.sleep(DOWN_WINDOW)
        spent, logged = cpu_seconds(d.proc.pid) - cpu, len(d.logs().splitlines()) - lines
        assert d.alive, d.logs()[-2000:]
        assert spent < WATCH_DOWN_CPU_BOUND and logged < WATCH_DOWN_LOG_LINES_BOUND, (
            f"{spent:.2f}s CPU and {logged} log lines in {DOWN_WINDOW:g}s with every endpoint down\n"
            f"{d.logs()[-1500:]}")
        assert d.get("/readyz")[0] == 503

        for m in cluster.members:
            m.start(wait=False)
        for m in cluster.members:
            m.wait_ready()
        d.wait_ready(30)
        # the watches are back: drift is repaired
        gw.put("/x/app/a", "drift")
        wait_for(lambda: value(gw, "/x/app/a") == b"one", 30, f"drift repaired after etcd came back\n{d.logs()[-2000:]}",
                 step=0.1)
        assert d.stop() == 0
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------------
# leader election while etcd is away


def test_elected_daemon_started_while_etcd_is_down_campaigns_once_it_comes_up(tmp_path: Path, daemons: Daemons) -> None:
    """A daemon with --leader-elect whose first campaign found etcd down put its candidate key once
    etcd came up. (Its lease was never granted and nothing tried again: it polled an election it
    was not in, silently and forever, and wrote nothing.)"""
    cluster = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))      # ports chosen, not started yet
    try:
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "app.yaml").write_text(configset("/x/app/", {"a": "one"}))
        d = daemons.start(tmp_path, [mdir], "--leader-elect", "--timeout", "1", endpoints=cluster.endpoints,
                          reserved="/x/.etcdsync/")
        wait_for(lambda: "leader election: etcd" in d.logs(), 20, f"a failed campaign\n{d.logs()[-1500:]}")
        cluster.start()
        gw = Gateway(cluster.endpoints, timeout=2)
        wait_for(lambda: value(gw, "/x/app/a") == b"one", 30, f"elected and converged once etcd came up\n{d.logs()[-2000:]}",
                 step=0.2)
        d.wait_ready(30)
        assert d.ready()["leader"] is True
        assert d.stop() == 0
    finally:
        cluster.stop()
