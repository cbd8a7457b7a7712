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
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from etcd3aio._protobuf import Compare
from etcd3aio.kv import KVService, prefix_range_end

from etcdsync.local.etcdbin import EtcdCluster, free_ports

from . import manifests
from .results import DAEMON_IDLE_CPU, DAEMON_RSS, DRIFT_REPAIR, DRIFT_REPAIR_PAUSED, Measurement
from .servers import Etcd, etcdsync_cmd, raw_client, subprocess_env
from .timing import cpu_over, percentile, status_kib

READY_TIMEOUT = 300.0
REPAIR_TIMEOUT = 2.0          # a drift not repaired within this counts as a failure
PAUSED_REPAIR_TIMEOUT = 10.0  # the same with a member paused (a failover may come first)


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

    def tail_log(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_daemon(manifest_dir: Path, endpoints: str, log_path: Path) -> RunningDaemon:
    """Start `etcdsync run` against `endpoints` (comma separated) and wait (bounded) until /readyz answers 200."""
    port = free_ports(1)[0]
    # a random key may be drifted several times a minute here: that is the workload, not a writer
    # fighting the daemon, so flap detection must not stop the repairs being measured
    cmd = etcdsync_cmd("run", "-f", str(manifest_dir), "--applyset", manifests.APPLYSET,
                       "--endpoints", endpoints, "--metrics-addr", f"127.0.0.1:{port}", "--flap-threshold", "1000")
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
    from_ack: list[float]         # put answered (the drift is committed) -> the same
    event_to_event: list[float]   # the watcher sees the drift -> it sees the declared value again
    coalesced: int = 0            # drift and repair arrived in one watch response (event_to_event is 0)
    failures: int = 0             # not repaired within REPAIR_TIMEOUT


async def _measure_repairs(addr: str, n: int, drifts: int, seed: int = 7,
                           timeout: float = REPAIR_TIMEOUT) -> Repairs:
    """Drift random keys one at a time and watch for the repair (every wait bounded)."""
    rng = random.Random(seed)
    prefix = manifests.PREFIX.encode()
    out = Repairs([], [], [])
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
                acked = time.perf_counter()
                drift_seen: tuple[float, int] | None = None
                try:
                    async with asyncio.timeout(timeout):
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
                out.from_ack.append(seen - acked)
                if drift_seen is not None:
                    out.event_to_event.append(seen - drift_seen[0])
                    out.coalesced += drift_seen[1] == number
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
    return out


async def _measure_raw_repairs(addr: str, n: int, drifts: int, seed: int = 7) -> list[float]:
    """The repair without etcdsync: drift a random key, and as soon as the watch shows the drift, write
    the declared value back in a transaction guarded by the drift's mod_revision (as the daemon's repair
    is), until the watch shows it. Seconds from sending the drift to seeing the repair, per drift."""
    rng = random.Random(seed)
    prefix = manifests.PREFIX.encode()
    out: list[float] = []
    async with raw_client(addr) as client:
        assert client.kv is not None and client.watch is not None
        kv, watch = client.kv, client.watch
        revisions: asyncio.Queue[int] = asyncio.Queue()
        created = asyncio.Event()

        async def pump() -> None:
            async for resp in watch.watch(prefix, range_end=prefix_range_end(prefix)):
                if resp.created:
                    created.set()
                for ev in resp.events:
                    revisions.put_nowait(ev.kv.mod_revision)

        async def seen(rev: int) -> None:
            while await revisions.get() != rev:
                pass

        watcher = asyncio.create_task(pump())
        try:
            async with asyncio.timeout(10):
                await created.wait()
            for d in range(drifts):
                i = rng.randrange(n)
                key = f"{manifests.PREFIX}{manifests.rel_key(i)}".encode()
                sent = time.perf_counter()
                async with asyncio.timeout(REPAIR_TIMEOUT):
                    rev = (await kv.put(key, f"drift-{d}".encode())).header.revision
                    await seen(rev)
                    guard = Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=rev)
                    done = await kv.txn([guard], [KVService.txn_op_put(key, manifests.value(i).encode())])
                    if not done.succeeded:
                        raise RuntimeError(f"raw repair of {key!r}: the guard failed")
                    await seen(done.header.revision)
                out.append(time.perf_counter() - sent)
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


def _repair_measurement(n: int, drifts: int, r: Repairs, hist: dict[str, object], ready_seconds: float,
                        extra: dict[str, object] | None = None) -> Measurement:
    lat = r.from_send
    p50 = percentile(lat, 50)
    rtt = [s - a for s, a in zip(r.from_send, r.from_ack, strict=True)]
    details: dict[str, object] = {
        "drifts": drifts, "repaired": len(lat), "failures": r.failures,
        "measured_from": "sending the drifting put (so its own round trip is included), until a watch on "
                         "the prefix, in the same client, sees the declared value again",
        "p50": p50, "p90": percentile(lat, 90), "p99": percentile(lat, 99), "max": max(lat),
        "event_to_event_p50": percentile(r.event_to_event, 50) if r.event_to_event else None,
        "event_to_event_p99": percentile(r.event_to_event, 99) if r.event_to_event else None,
        "event_to_event_coalesced": r.coalesced,
        # the drifting put's own round trip (etcd's share), and the rest (the daemon's and the watches')
        "put_p50": percentile(rtt, 50), "put_p99": percentile(rtt, 99),
        "from_ack_p50": percentile(r.from_ack, 50), "from_ack_p99": percentile(r.from_ack, 99),
        "daemon_histogram": hist, "daemon_ready_seconds": ready_seconds, **(extra or {}),
    }
    return Measurement(DRIFT_REPAIR, n, seconds=p50, details=details)


def _daemon_histogram(d: RunningDaemon) -> dict[str, object]:
    status, body = d.get("/metrics")
    return repair_histogram(body.decode()) if status == 200 else {}


def drift_repair(manifest_dir: Path, etcd: Etcd, n: int, drifts: int, work: Path) -> Measurement:
    """Start the daemon on N keys (it applies them), then drift and time the repairs."""
    d = start_daemon(manifest_dir, etcd.endpoint, work / f"daemon-repair-{n}.log")
    try:
        time.sleep(0.5)                       # let the watches settle after the first reconcile
        r = asyncio.run(_measure_repairs(etcd.addr, n, drifts))
        hist = _daemon_histogram(d)
    finally:
        d.stop()
    if not r.from_send:
        raise RuntimeError(f"no drift was repaired within {REPAIR_TIMEOUT}s: {d.tail_log()}")
    return _repair_measurement(n, drifts, r, hist, d.ready_seconds)


REPAIR_ROUNDS = 20   # the interleaved comparison alternates this many rounds on each daemon


def drift_repair_interleaved(small: tuple[Path, Etcd, int], big: tuple[Path, Etcd, int], drifts: int,
                             work: Path, rounds: int = REPAIR_ROUNDS) -> list[Measurement]:
    """Drift repair on two daemons at once (each on its own etcd: N small and N big keys), measured in
    alternating rounds of drifts/rounds drifts each, so that whatever else the machine does during the
    run weighs on both sizes alike. The ratio of the two p50s is the one to read; per round ratios
    are kept in the details to show its spread."""
    rounds = max(1, min(rounds, drifts))
    running: list[RunningDaemon] = []
    try:
        for mdir, etcd, n in (small, big):
            running.append(start_daemon(mdir, etcd.endpoint, work / f"daemon-repair-{n}.log"))
        time.sleep(0.5)                       # let the watches settle after the first reconcile
        per = [Repairs([], [], []) for _ in running]
        round_p50: list[list[float]] = [[] for _ in running]
        for k in range(rounds):
            count = drifts // rounds + (k < drifts % rounds)
            order = (0, 1) if k % 2 == 0 else (1, 0)      # neither size always goes first
            for i in order:
                _, etcd, n = (small, big)[i]
                r = asyncio.run(_measure_repairs(etcd.addr, n, count, seed=1000 * i + k))
                acc = per[i]
                acc.from_send += r.from_send
                acc.from_ack += r.from_ack
                acc.event_to_event += r.event_to_event
                acc.coalesced += r.coalesced
                acc.failures += r.failures
                if r.from_send:
                    round_p50[i].append(percentile(r.from_send, 50))
        hists = [_daemon_histogram(d) for d in running]
    finally:
        for d in running:
            d.stop()
    for (_, _, n), r, d in zip((small, big), per, running, strict=True):
        if not r.from_send:
            raise RuntimeError(f"no drift was repaired within {REPAIR_TIMEOUT}s at N={n:,}: {d.tail_log()}")
    # the same drifts repaired by this client, without etcdsync, on the same two etcds (daemons stopped):
    # what etcd itself makes of a guarded repair at each size
    raw: list[list[float]] = [[], []]
    for k in range(rounds):
        count = drifts // rounds + (k < drifts % rounds)
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            _, etcd, n = (small, big)[i]
            raw[i] += asyncio.run(_measure_raw_repairs(etcd.addr, n, count, seed=1000 * i + k))
    ratios = [b / s for s, b in zip(round_p50[0], round_p50[1], strict=False) if s]
    shared = {"interleaved_rounds": rounds}
    return [
        _repair_measurement(small[2], drifts, per[0], hists[0], running[0].ready_seconds,
                            {**shared, "round_p50": round_p50[0], "raw_p50": percentile(raw[0], 50),
                             "raw_p99": percentile(raw[0], 99)}),
        _repair_measurement(big[2], drifts, per[1], hists[1], running[1].ready_seconds,
                            {**shared, "round_p50": round_p50[1], "round_p50_ratios": ratios,
                             "round_p50_ratio_median": percentile(ratios, 50) if ratios else None,
                             "raw_p50": percentile(raw[1], 50), "raw_p99": percentile(raw[1], 99)}),
    ]


def rss_and_idle(manifest_dir: Path, etcd: Etcd, n: int, idle_seconds: float, work: Path) -> list[Measurement]:
    """The daemon on N keys that are already in sync: VmRSS once ready, then CPU over an idle window."""
    d = start_daemon(manifest_dir, etcd.endpoint, work / "daemon-rss.log")
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


def drift_repair_paused(manifest_dir: Path, n: int, drifts: int, work: Path) -> Measurement:
    """Drift repair on a 3-member cluster while one member is paused (SIGSTOP), each member in turn.

    The daemon gets all three endpoints and pins one of them (at random, like etcd's own client).
    For each member k: pause it, drift `drifts // 3` keys through a client of a live member and
    time each repair, continue it, and wait until it is healthy again. One of the three phases
    pauses the member the daemon is pinned to (its first repair waits for the silent watch to be
    noticed and the move to another member: reported as `first_after_pause`); one may pause the
    raft leader (then the cluster itself elects a new one before anything commits).
    """
    tmp = tempfile.mkdtemp(prefix="etcdsync-bench-paused-")
    cluster = EtcdCluster(3, base_dir=tmp)
    phases: list[dict[str, object]] = []
    every: list[float] = []
    from_send: list[float] = []
    failures = 0
    try:
        cluster.start()
        d = start_daemon(manifest_dir, ",".join(cluster.endpoints), work / "daemon-paused.log")
        try:
            time.sleep(0.5)
            per = max(1, drifts // 3)
            # the member the daemon is pinned to goes last, paused while it is a follower if it can
            # be (a paused leader stalls the whole cluster: that phase measures etcd, not etcdsync)
            order = list(cluster.members)
            status, body = d.get("/readyz")
            pinned = json.loads(body).get("endpoint") if status == 200 else None
            order.sort(key=lambda m: (m.endpoint == pinned, bool(_is_leader(m.endpoint))))
            for k, member in enumerate(order):
                live = next(m for m in cluster.members if m is not member)
                if member.endpoint == pinned and _is_leader(member.endpoint):
                    _move_leader(member.endpoint, live.endpoint)
                was_leader = _is_leader(member.endpoint)
                was_pinned = member.endpoint == pinned
                member.pause()
                try:
                    r = asyncio.run(_measure_repairs(live.endpoint.removeprefix("http://"), n, per, seed=k,
                                                     timeout=PAUSED_REPAIR_TIMEOUT))
                finally:
                    member.resume()
                member.wait_ready()
                time.sleep(0.5)                       # let it catch up before the next member stops
                failures += r.failures
                every += r.from_ack
                from_send += r.from_send
                lat = r.from_ack
                phases.append({"paused": member.name, "leader": was_leader, "pinned": was_pinned, "drifts": per, "repaired": len(lat),
                               "failures": r.failures, "first_put_seconds": r.from_send[0] - r.from_ack[0] if lat else None,
                               "first_after_pause": lat[0] if lat else None,
                               "p50": percentile(lat, 50) if lat else None,
                               "p99": percentile(lat, 99) if lat else None, "max": max(lat) if lat else None})
        finally:
            d.stop()
        moves = [line for line in d.tail_log(100_000).splitlines() if "; using http" in line]
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if not every:
        raise RuntimeError(f"no drift was repaired with a member paused: {d.tail_log()}")
    details: dict[str, object] = {
        "members": 3, "drifts": sum(int(p["drifts"]) for p in phases),  # type: ignore[call-overload]
        "repaired": len(every), "failures": failures,
        "measured_from": "the drifting put's answer (the drift is committed) until a watch on a live member "
                         "sees the declared value again, with one member SIGSTOPped (each member in turn); the "
                         "time the put itself took is left out: with the raft leader paused, etcd commits "
                         "nothing until it gives the proposal up and a new leader is elected (~6 s here), "
                         "whoever the client is",
        "from_send_p99": percentile(from_send, 99), "from_send_max": max(from_send),
        "p50": percentile(every, 50), "p90": percentile(every, 90), "p99": percentile(every, 99), "max": max(every),
        "first_after_pause_max": max(float(p["first_after_pause"] or 0.0) for p in phases),  # type: ignore[arg-type]
        "phases": phases, "daemon_endpoint_moves": len(moves), "daemon_moves_log": moves[-6:],
    }
    return Measurement(DRIFT_REPAIR_PAUSED, n, seconds=percentile(every, 50), details=details)


def _gateway(endpoint: str, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(f"{endpoint}/v3/{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        out: dict[str, object] = json.loads(r.read())
    return out


def _is_leader(endpoint: str) -> bool | None:
    """Whether the member at `endpoint` is the raft leader (etcd's JSON gateway), None if unknown."""
    try:
        status = _gateway(endpoint, "maintenance/status", {})
        return str(status["header"]["member_id"]) == str(status["leader"])  # type: ignore[index]
    except (OSError, KeyError, ValueError):
        return None


def _move_leader(leader: str, to: str) -> None:
    """Hand the raft leadership from the member at `leader` to the one at `to` (bounded wait)."""
    target = _gateway(to, "maintenance/status", {})["header"]["member_id"]  # type: ignore[index]
    _gateway(leader, "maintenance/transfer-leadership", {"targetID": target})
    deadline = time.monotonic() + 5
    while _is_leader(leader) and time.monotonic() < deadline:
        time.sleep(0.05)
