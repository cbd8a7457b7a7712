"""Soak test (not in CI): an hour of writers, compactions and 100 leased instances against one daemon.

    scripts/soak                       # 1 hour (set-up first, like scripts/bench)
    scripts/soak --duration 120        # a short run

Starts a local etcd and `etcdsync run` on a generated tree (1,000 config keys and a Service with 100
instances under a 10 s lease), then until the duration is over: writers drift managed keys and write
unmanaged keys under the managed prefix, etcd is compacted every minute, and every `--sample`
seconds it records the daemon's RSS, open file descriptors, CPU, drift-repair latency (from the
drifting put's response until the declared value is back), the number of live instances registered,
and whether any unmanaged key was ever changed by someone else than the writers. Prints a table over
time and writes bench/results/soak-<timestamp>.json. Only 127.0.0.1; every loop is bounded by the
duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etcdsync.etcdbin import EtcdCluster, free_ports  # noqa: E402
from etcdsync.settings import Connection  # noqa: E402
from etcdsync.store import Store  # noqa: E402

PREFIX = "/soak/config/"
SERVICES = "/soak/services/"
N_KEYS = 1000
N_INSTANCES = 100


def write_manifests(d: Path) -> None:
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata: {name: soak}", "spec:",
             f"  prefix: {PREFIX}", "  data:"]
    lines += [f"    k{i:04d}: value-{i}" for i in range(N_KEYS)]
    lines += ["---", "apiVersion: etcdsync/v1", "kind: Service", "metadata: {name: api}", "spec:",
              f"  prefix: {SERVICES}", "  ttl: 10s", "  instances:"]
    lines += [f"    - {{id: i{i:03d}, host: 10.1.{i // 250}.{i % 250}, port: 8080}}" for i in range(N_INSTANCES)]
    (d / "soak.yaml").write_text("\n".join(lines) + "\n")


def proc_stats(pid: int) -> tuple[float, int, float]:
    """(RSS MB, open fds, CPU seconds) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


async def soak(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="etcdsync-soak-"))
    mdir = tmp / "manifests"
    mdir.mkdir()
    write_manifests(mdir)
    cluster = EtcdCluster(1, base_dir=str(tmp / "etcd"))
    cluster.start()
    port = free_ports(1)[0]
    log = open(tmp / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "etcdsync", "run", "-f", str(mdir), "--applyset", "soak", "--endpoints",
         cluster.endpoints[0], "--metrics-addr", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    samples: list[dict[str, object]] = []
    foreign_writes: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError("daemon not ready after 30 s")
        async with Store(Connection(cluster.endpoints)) as store:
            rng = random.Random(1)
            end = time.monotonic() + args.duration
            next_sample = time.monotonic() + args.sample
            next_compact = time.monotonic() + 60
            latencies: list[float] = []
            unmanaged: dict[str, bytes] = {}
            cpu0 = proc_stats(daemon.pid)[2]
            t_cpu0 = time.monotonic()
            while time.monotonic() < end:
                if daemon.poll() is not None:
                    raise RuntimeError(f"daemon exited with {daemon.returncode}")
                # a writer drifts one managed key and measures the repair
                i = rng.randrange(N_KEYS)
                key = f"{PREFIX}k{i:04d}"
                await store.put(key, b"drift")
                t0 = time.perf_counter()
                for _ in range(1000):  # bounded: ~2 s
                    kv = await store.get(key)
                    if kv is not None and kv.value == f"value-{i}".encode():
                        latencies.append(time.perf_counter() - t0)
                        break
                    await asyncio.sleep(0.002)
                else:
                    latencies.append(float("inf"))
                # another writes unmanaged keys under the managed prefix
                ukey = f"{PREFIX}unmanaged/u{rng.randrange(50)}"
                value = f"w{rng.randrange(10**6)}".encode()
                await store.put(ukey, value)
                unmanaged[ukey] = value
                now = time.monotonic()
                if now >= next_compact:
                    await store.compact(await store.revision())
                    next_compact = now + 60
                if now >= next_sample:
                    for k, v in unmanaged.items():
                        kv = await store.get(k)
                        if kv is None or kv.value != v:
                            foreign_writes.append(k)
                    live, _ = await store.get_prefix(f"{SERVICES}api/")
                    rss, fds, cpu = proc_stats(daemon.pid)
                    finite = sorted(x for x in latencies if x != float("inf"))
                    sample = {
                        "t": round(args.duration - (end - now)),
                        "rss_mb": round(rss, 1),
                        "fds": fds,
                        "cpu_pct": round(100 * (cpu - cpu0) / max(now - t_cpu0, 1e-9), 1),
                        "drifts": len(latencies),
                        "repair_p50_ms": round(1000 * statistics.median(finite), 2) if finite else None,
                        "repair_p99_ms": round(1000 * finite[int(0.99 * (len(finite) - 1))], 2) if finite else None,
                        "unrepaired": sum(1 for x in latencies if x == float("inf")),
                        "live_instances": len(live),
                        "unmanaged_clobbered": len(foreign_writes),
                    }
                    samples.append(sample)
                    print(" ".join(f"{k}={v}" for k, v in sample.items()), flush=True)
                    latencies = []
                    cpu0, t_cpu0 = cpu, now
                    next_sample = now + args.sample
                await asyncio.sleep(args.interval)
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        cluster.stop()
    first, last = samples[0], samples[-1]
    return {
        "duration_seconds": args.duration,
        "samples": samples,
        "rss_growth_mb": round(float(last["rss_mb"]) - float(first["rss_mb"]), 1),  # type: ignore[arg-type]
        "fd_growth": int(last["fds"]) - int(first["fds"]),  # type: ignore[call-overload]
        "unmanaged_clobbered": len(foreign_writes),
        "daemon_log": str(tmp / "daemon.log"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600, help="seconds (default 3600)")
    ap.add_argument("--sample", type=float, default=60, help="seconds between samples (default 60)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between writer rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    args.sample = min(args.sample, max(args.duration / 4, 1))
    result = asyncio.run(soak(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("soak-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(result, indent=2))
    print(f"RSS growth {result['rss_growth_mb']} MB, fd growth {result['fd_growth']}, "
          f"unmanaged keys clobbered {result['unmanaged_clobbered']}; results: {path}")
    sys.exit(1 if result["unmanaged_clobbered"] else 0)


if __name__ == "__main__":
    main()
