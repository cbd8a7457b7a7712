"""`etcdsync run` as users run it: a subprocess, ready when /readyz says so.

Drift repair latency is measured from a separate client: put a wrong value on an `enforce` key, then
wait on a watch of the prefix for the event that puts the declared value back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from etcd3aio.kv import prefix_range_end

from etcdsync.local.etcdbin import free_ports

from . import manifests
from .results import DAEMON_IDLE_CPU, DAEMON_RSS, DRIFT_REPAIR, Measurement
from .servers import Etcd, etcdsync_cmd, raw_client, subprocess_env
from .timing import cpu_over, percentile, status_kib

READY_TIMEOUT = 300.0
REPAIR_TIMEOUT = 2.0          # a drift not repaired within this counts as a failure


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[bytes]
    metrics_url: str
    log_path: Path
    ready_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def tail_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_daemon(manifest_dir: Path, etcd: Etcd, log_path: Path) -> RunningDaemon:
    """Start `etcdsync run` and wait (bounded) until /readyz answers 200."""
    port = free_ports(1)[0]
    cmd = etcdsync_cmd("run", "-f", str(manifest_dir), "--applyset", manifests.APPLYSET,
                       "--endpoints", etcd.endpoint, "--metrics-addr", f"127.0.0.1:{port}")
    with open(log_path, "wb") as log:      # a file, not a pipe: the daemon logs every repair
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(),
                                cwd=str(manifest_dir), start_new_session=True)
    d = RunningDaemon(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = start + READY_TIMEOUT
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcdsync run exited with {proc.returncode}: {d.tail_log()}")
        try:
            status, _ = d.get("/readyz")
            if status == 200:
                d.ready_seconds = time.perf_counter() - start
                return d
        except OSError:
            pass
        time.sleep(0.05)
    d.stop()
    raise TimeoutError(f"etcdsync run not ready after {READY_TIMEOUT:.0f}s: {d.tail_log()}")


@dataclass
class Repairs:
    from_send: list[float]        # put sent -> the watcher sees the declared value again
    event_to_event: list[float]   # the watcher sees the drift -> it sees the declared value again
    coalesced: int = 0            # drift and repair arrived in one watch response (event_to_event is 0)
    failures: int = 0             # not repaired within REPAIR_TIMEOUT


async def _measure_repairs(addr: str, n: int, drifts: int) -> Repairs:
    """Drift random keys one at a time and watch for the repair (every wait bounded)."""
    rng = random.Random(7)
    prefix = manifests.PREFIX.encode()
    out = Repairs([], [])
    async with raw_client(addr) as client:
        assert client.kv is not None and client.watch is not None
        kv, watch = client.kv, client.watch
        # (time the response was read, response number, key, value, mod_revision)
        events: asyncio.Queue[tuple[float, int, bytes, bytes, int]] = asyncio.Queue()
        created = asyncio.Event()

        async def pump() -> None:
            number = 0
            async for resp in watch.watch(prefix, range_end=prefix_range_end(prefix)):
                now = time.perf_counter()
                number += 1
                if resp.created:
                    created.set()
                for ev in resp.events:
                    events.put_nowait((now, number, ev.kv.key, ev.kv.value, ev.kv.mod_revision))

        watcher = asyncio.create_task(pump())
        try:
            async with asyncio.timeout(10):
                await created.wait()
            for d in range(drifts):
                i = rng.randrange(n)
                key = f"{manifests.PREFIX}{manifests.rel_key(i)}".encode()
                want, wrong = manifests.value(i).encode(), f"drift-{d}".encode()
                sent = time.perf_counter()
                rev = (await kv.put(key, wrong)).header.revision
                drift_seen: tuple[float, int] | None = None
                try:
                    async with asyncio.timeout(REPAIR_TIMEOUT):
                        while True:
                            seen, number, k, v, mod = await events.get()
                            if k == key and v == wrong and mod == rev:
                                drift_seen = (seen, number)
                            elif k == key and v == want and mod > rev:
                                break
                except TimeoutError:
                    out.failures += 1
                    continue
                out.from_send.append(seen - sent)
                if drift_seen is not None:
                    out.event_to_event.append(seen - drift_seen[0])
                    out.coalesced += drift_seen[1] == number
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
    return out


HIST = re.compile(r'^etcdsync_drift_repair_seconds_(bucket|sum|count)(\{le="([^"]+)"\})? (\S+)$')


def repair_histogram(metrics_text: str) -> dict[str, object]:
    """The daemon's own etcdsync_drift_repair_seconds histogram: count, sum, mean, buckets."""
    buckets: dict[str, float] = {}
    total = count = 0.0
    for line in metrics_text.splitlines():
        m = HIST.match(line)
        if not m:
            continue
        kind, _, le, val = m.groups()
        if kind == "bucket":
            buckets[le] = float(val)
        elif kind == "sum":
            total = float(val)
        else:
            count = float(val)
    return {"count": int(count), "sum_seconds": total, "mean_seconds": (total / count) if count else None,
            "buckets": buckets}


def drift_repair(manifest_dir: Path, etcd: Etcd, n: int, drifts: int, work: Path) -> Measurement:
    """Start the daemon on N keys (it applies them), then drift and time the repairs."""
    d = start_daemon(manifest_dir, etcd, work / "daemon-repair.log")
    try:
        time.sleep(0.5)                       # let the watches settle after the first reconcile
        r = asyncio.run(_measure_repairs(etcd.addr, n, drifts))
        status, body = d.get("/metrics")
        hist = repair_histogram(body.decode()) if status == 200 else {}
    finally:
        d.stop()
    if not r.from_send:
        raise RuntimeError(f"no drift was repaired within {REPAIR_TIMEOUT}s: {d.tail_log()}")
    lat = r.from_send
    p50 = percentile(lat, 50)
    details: dict[str, object] = {
        "drifts": drifts, "repaired": len(lat), "failures": r.failures,
        "measured_from": "sending the drifting put (so its own round trip is included), until a watch on "
                         "the prefix, in the same client, sees the declared value again",
        "p50": p50, "p90": percentile(lat, 90), "p99": percentile(lat, 99), "max": max(lat),
        "event_to_event_p50": percentile(r.event_to_event, 50) if r.event_to_event else None,
        "event_to_event_p99": percentile(r.event_to_event, 99) if r.event_to_event else None,
        "event_to_event_coalesced": r.coalesced,
        "daemon_histogram": hist, "daemon_ready_seconds": d.ready_seconds,
    }
    return Measurement(DRIFT_REPAIR, n, seconds=p50, details=details)


def rss_and_idle(manifest_dir: Path, etcd: Etcd, n: int, idle_seconds: float, work: Path) -> list[Measurement]:
    """The daemon on N keys that are already in sync: VmRSS once ready, then CPU over an idle window."""
    d = start_daemon(manifest_dir, etcd, work / "daemon-rss.log")
    try:
        time.sleep(1.0)
        rss = status_kib(d.pid, "VmRSS") * 1024
        hwm = status_kib(d.pid, "VmHWM") * 1024
        cpu, wall = cpu_over(d.pid, idle_seconds)
        status, body = d.get("/readyz")
        ready = json.loads(body) if status == 200 else {"status": status}
    finally:
        d.stop()
    return [
        Measurement(DAEMON_RSS, n, value=rss / 1e6, unit="MB",
                    details={"vm_rss_bytes": rss, "vm_hwm_bytes": hwm, "ready_seconds": d.ready_seconds}),
        Measurement(DAEMON_IDLE_CPU, n, value=100 * cpu / wall, unit="% of one core",
                    details={"cpu_seconds": cpu, "window_seconds": wall, "readyz": ready}),
    ]
