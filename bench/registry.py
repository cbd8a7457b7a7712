"""Registry workload, run in its own process: `python -m bench.registry --endpoint URL --count 1000`.

Registers `count` instances with `etcdsync.aio.AsyncRegistry.register(..., ttl=10)` one after the
other (each awaited before the next: bound by the round trip), deregisters them, then registers
`count` instances at once (`asyncio.gather`, what a process hosting many instances does at start-up:
pipelined into shared transactions), then measures the CPU this process spends keeping them alive
over a window (and etcd's CPU over the same window), checks that every instance is still
registered, and deregisters them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from etcdsync.aio import AsyncRegistry
from etcdsync.settings import Connection

from .results import REGISTRY, Measurement
from .servers import PYTHON, Etcd, subprocess_env
from .timing import cpu_seconds, run_timed


async def _run(endpoint: str, count: int, window: float, ttl: float, etcd_pid: int) -> dict[str, float]:
    seq = AsyncRegistry(Connection(endpoints=[endpoint]))
    await seq.discover("warm-up")                 # connect first: the figures are of registering only
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for i in range(count):
        await seq.register("sequential", f"i{i}", host="127.0.0.1", port=10000 + i % 50000, ttl=ttl)
    sequential_s = time.perf_counter() - t0
    sequential_cpu = cpu_seconds() - cpu0
    await seq.close()
    reg = AsyncRegistry(Connection(endpoints=[endpoint]))
    await reg.discover("warm-up")
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(reg.register("bench", f"i{i}", host="127.0.0.1", port=10000 + i % 50000, ttl=ttl)
                           for i in range(count)))
    register_s = time.perf_counter() - t0
    register_cpu = cpu_seconds() - cpu0
    await asyncio.sleep(1.0)                      # let the first keepalive tasks settle into their rhythm
    c0, e0, w0 = cpu_seconds(), cpu_seconds(etcd_pid), time.perf_counter()
    await asyncio.sleep(window)
    cpu, etcd_cpu, wall = cpu_seconds() - c0, cpu_seconds(etcd_pid) - e0, time.perf_counter() - w0
    alive = len(await reg.discover("bench"))
    t1 = time.perf_counter()
    await reg.close()
    deregister_s = time.perf_counter() - t1
    return {"count": count, "ttl": ttl, "register_seconds": register_s, "register_cpu_seconds": register_cpu,
            "sequential_register_seconds": sequential_s, "sequential_register_cpu_seconds": sequential_cpu,
            "window_seconds": wall, "keepalive_cpu_seconds": cpu, "keepalive_cpu_per_second": cpu / wall,
            "etcd_cpu_per_second": etcd_cpu / wall, "alive_after_window": alive,
            "deregister_seconds": deregister_s}


def measure(etcd: Etcd, count: int, window: float, ttl: float = 10) -> Measurement:
    """Run the workload in a child process (so its CPU time is its own) and collect its JSON."""
    cmd = [PYTHON, "-m", "bench.registry", "--endpoint", etcd.endpoint, "--count", str(count),
           "--window", str(window), "--ttl", str(ttl), "--etcd-pid", str(etcd.pid)]
    done = run_timed(cmd, env=subprocess_env(), timeout=120 + window + count * 0.05)
    if done.returncode != 0:
        raise RuntimeError(f"registry workload failed: {done.stderr.strip()[-800:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["alive_after_window"] != count:
        raise RuntimeError(f"only {out['alive_after_window']} of {count} instances alive after the window")
    return Measurement(REGISTRY, count, seconds=out["register_seconds"], details=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--etcd-pid", type=int, required=True)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(_run(a.endpoint, a.count, a.window, a.ttl, a.etcd_pid))))


if __name__ == "__main__":
    main()
