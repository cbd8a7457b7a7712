"""Run etcdsync's benchmarks: `python bench/run.py [--quick] [--sizes 1000,10000,100000] [--no-plot]`.

Prints markdown tables (ready for the README), writes bench/results/<timestamp>.json and latest.json,
and draws bench/results/latest.png. See bench/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # `python bench/run.py`: import `bench` and `etcdsync` from this checkout, not from bench/ itself
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
    sys.path.insert(0, str(ROOT))

from bench import baselines, daemon, manifests, registry, workloads  # noqa: E402
from bench.machine import code_version, describe  # noqa: E402
from bench.plot import draw  # noqa: E402
from bench.report import render  # noqa: E402
from bench.results import ETCDCTL_LOOP, PUT_LOOP, TXN128, TXN128_X8, Measurement, Results  # noqa: E402
from bench.servers import fresh_etcd  # noqa: E402
from bench.targets import REPAIR_N, add_ratios, evaluate  # noqa: E402
from etcdsync.local.etcdbin import find_version  # noqa: E402

REPEAT_BUDGET = 90.0     # seconds per workload and size: the 100,000-key put loop runs once
# --only: startup (--help, 1-key diff), cli (apply/diff/drift per N), baselines (raw transactions per N),
# loops (a put per key, an etcdctl per key: the slow ones), daemon (RSS, idle CPU), repair (drift repair at
# 1,000 and the largest N, paused member), registry
GROUPS = ("startup", "cli", "baselines", "loops", "daemon", "repair", "registry")


def compile_bytecode() -> str:
    """Compile etcdsync's modules to bytecode before timing anything, as installing the package does
    (pip writes .pyc files). Without it, an environment with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout) compiles every module of the checkout again in every timed run."""
    import compileall

    ok = compileall.compile_dir(str(ROOT / "etcdsync"), quiet=1)
    return "compiled before the runs" if ok else "compiling failed (timings include compiling)"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run.py", description="etcdsync benchmarks against a local etcd.")
    ap.add_argument("--sizes", help="comma separated key counts (default 1000,10000,100000; --quick: 1000)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: N=1,000, 50 drifts, 100 registrations, short idle windows (< 60 s)")
    ap.add_argument("--drifts", type=int, help="drifts for the repair latency (default 1000; --quick: 50)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    ap.add_argument("--no-plot", action="store_true", help="do not draw latest.png")
    ap.add_argument("--etcd", metavar="VERSION",
                    help="the etcd minor version to run (3.4 or 3.5; default: the one the tests use first, "
                         "or ETCDSYNC_ETCD_BIN); scripts/bench runs both")
    ap.add_argument("--only", metavar="GROUPS",
                    help=f"comma separated workload groups to run (default all): {', '.join(GROUPS)}")
    ap.add_argument("--repeat", type=int,
                    help="runs per workload, median reported (default 3, --quick 1); a workload is "
                         f"repeated only while its runs fit in {REPEAT_BUDGET:.0f} s")
    a = ap.parse_args(argv)
    a.only = set(GROUPS) if not a.only else {g.strip() for g in a.only.split(",") if g.strip()}
    if a.only - set(GROUPS):
        ap.error(f"--only: unknown group(s) {', '.join(sorted(a.only - set(GROUPS)))} (known: {', '.join(GROUPS)})")
    sizes = a.sizes or ("1000" if a.quick else "1000,10000,100000")
    try:
        a.sizes = sorted({int(s.replace("_", "")) for s in sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes {sizes!r}: expected comma separated integers")
    if not a.sizes or min(a.sizes) < 100 or max(a.sizes) > 1_000_000:
        ap.error("--sizes: each size must be between 100 and 1,000,000")
    a.drifts = a.drifts if a.drifts is not None else (50 if a.quick else 1000)
    if not 1 <= a.drifts <= 100_000:
        ap.error("--drifts: between 1 and 100,000")
    a.idle_seconds = 2.0 if a.quick else 30.0      # a clock tick (10 ms) is 0.03 % of 30 s
    a.registry_count = 100 if a.quick else 1000
    a.registry_window = 4.0 if a.quick else 20.0
    a.help_runs = 5 if a.quick else 10
    a.etcdctl_keys = 100 if a.quick else None       # None: all keys of the smallest N
    a.repeat = a.repeat if a.repeat is not None else (1 if a.quick else 3)
    if not 1 <= a.repeat <= 20:
        ap.error("--repeat: between 1 and 20")
    return a


class Runner:
    """Runs each workload, keeps going when one fails (the failure is noted and the exit code is 1)."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.failed = 0

    def __call__(self, what: str, fn: Callable[[], Measurement | list[Measurement]], repeat: int = 1) -> None:
        """Run `fn` up to `repeat` times (while the runs fit in REPEAT_BUDGET); keep the median run."""
        log(what)
        start = time.perf_counter()
        runs: list[list[Measurement]] = []
        try:
            while len(runs) < repeat:
                t = time.perf_counter()
                out = fn()
                runs.append(out if isinstance(out, list) else [out])
                took = time.perf_counter() - t
                if len(runs) < repeat:
                    if time.perf_counter() - start + took > REPEAT_BUDGET:
                        break
                    log(f"  run {len(runs)} took {took:.1f}s; again")
        except Exception as exc:  # noqa: BLE001 - report and go on with the other workloads
            self.failed += 1
            self.results.notes.append(f"FAILED: {what}: {type(exc).__name__}: {exc}")
            log(f"FAILED: {what}: {exc}\n{traceback.format_exc()}")
            return
        for i in range(len(runs[0])):
            self.results.add(median_run([r[i] for r in runs]))
        log(f"  done in {time.perf_counter() - start:.1f}s")


def median_run(runs: list[Measurement]) -> Measurement:
    """The run with the median time, carrying every run's seconds in its details."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda m: m.seconds if m.seconds is not None else 0.0)
    m = ordered[(len(ordered) - 1) // 2]          # the lower median for an even count
    m.details["runs_seconds"] = [r.seconds for r in runs]
    return m


def baseline(workload: str, items: list[tuple[bytes, bytes]], in_flight: int = 0) -> Measurement:
    """One baseline on its own fresh etcd; checks that every key arrived."""
    with fresh_etcd() as etcd:
        if workload == ETCDCTL_LOOP:
            seconds = baselines.etcdctl_loop(etcd.endpoint, items)
        elif workload == PUT_LOOP:
            seconds = asyncio.run(baselines.put_loop(etcd.addr, items))
        else:
            seconds = asyncio.run(baselines.txn_batches(etcd.addr, items, in_flight))
        written = asyncio.run(baselines.count_prefix(etcd.addr, manifests.PREFIX.encode()))
    if written != len(items):
        raise RuntimeError(f"{workload}: {written} keys in etcd, expected {len(items)}")
    details = {"in_flight": in_flight} if in_flight else {}
    return Measurement(workload, len(items), seconds=seconds, details=details)


def etcdsync_chain(mdir: Path, n: int) -> list[Measurement]:
    """apply into an empty etcd -> no-op diff -> 1 % drift + apply, on one fresh etcd."""
    with fresh_etcd() as etcd:
        return [workloads.apply_empty(mdir, etcd, n), workloads.diff_noop(mdir, etcd, n),
                workloads.apply_drifted(mdir, etcd, n)]


def daemon_footprint(mdir: Path, n: int, idle_seconds: float, work: Path) -> list[Measurement]:
    """The daemon on N keys already in sync (applied by the CLI first, untimed): RSS, idle CPU."""
    with fresh_etcd() as etcd:
        workloads.apply_empty(mdir, etcd, n)
        return daemon.rss_and_idle(mdir, etcd, n, idle_seconds, work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.etcd:
        try:
            os.environ["ETCDSYNC_ETCD_BIN"] = find_version(args.etcd, "etcd")
            os.environ["ETCDSYNC_ETCDCTL_BIN"] = find_version(args.etcd, "etcdctl")
        except (FileNotFoundError, ValueError) as exc:
            print(f"bench/run.py: --etcd {args.etcd}: {exc}", file=sys.stderr)
            return 2
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    results = Results(mode="quick" if args.quick else "full", sizes=args.sizes,
                      machine=describe(tempfile.gettempdir()), code=code_version(ROOT),
                      started=started.strftime("%Y-%m-%d %H:%M UTC"),
                      argv=sys.argv[1:] if argv is None else list(argv))
    results.machine["loadavg_start"] = list(os.getloadavg())
    results.machine["repeat"] = args.repeat
    results.machine["bytecode"] = compile_bytecode()
    if args.only != set(GROUPS):
        results.notes.append(f"partial run: only {', '.join(g for g in GROUPS if g in args.only)}")
    run = Runner(results)
    with tempfile.TemporaryDirectory(prefix="etcdsync-bench-") as tmp:
        work = Path(tmp)
        only = args.only
        if "startup" in only:
            run(f"etcdsync --help start-up x{args.help_runs}", lambda: workloads.startup_help(args.help_runs))

            def floor() -> Measurement:
                with fresh_etcd() as etcd:
                    return workloads.process_floor(etcd, work, args.help_runs)

            run(f"etcdsync diff of a 1-key manifest x{args.help_runs} (fixed cost of a run)", floor)
        for n in args.sizes:
            mdir = work / f"manifests-{n}"
            manifests.write_manifest(mdir, n)
            if "cli" in only:
                run(f"etcdsync apply, no-op diff, apply after 1 % drift: N={n:,}",
                    partial(etcdsync_chain, mdir, n), args.repeat)
            items = manifests.items(n)
            if "loops" in only:
                run(f"baseline put per key, N={n:,}", partial(baseline, PUT_LOOP, items), args.repeat)
            if "baselines" in only:
                run(f"baseline txns of 128, N={n:,}", partial(baseline, TXN128, items, 1), args.repeat)
                run(f"baseline txns of 128 x8 in flight, N={n:,}", partial(baseline, TXN128_X8, items, 8), args.repeat)
            if "loops" in only and n == min(args.sizes):
                sample = items[:args.etcdctl_keys] if args.etcdctl_keys else items
                run(f"baseline etcdctl loop, {len(sample):,} keys", partial(baseline, ETCDCTL_LOOP, sample))
        n = max(args.sizes)
        if "daemon" in only:
            run(f"daemon RSS and idle CPU, N={n:,} ({args.idle_seconds:g}s idle)",
                lambda: daemon_footprint(work / f"manifests-{n}", n, args.idle_seconds, work))
        rdir = work / f"manifests-{REPAIR_N}"
        if not rdir.exists():
            manifests.write_manifest(rdir, REPAIR_N)

        def repair() -> Measurement:
            with fresh_etcd() as etcd:
                return daemon.drift_repair(rdir, etcd, REPAIR_N, args.drifts, work)

        def repair_pair() -> list[Measurement]:
            # both sizes at once, in alternating rounds: their ratio is not at the mercy of the machine's
            # mood during one of two separate runs
            with fresh_etcd() as small, fresh_etcd() as big:
                return daemon.drift_repair_interleaved((rdir, small, REPAIR_N), (work / f"manifests-{n}", big, n),
                                                       args.drifts, work)

        if "repair" in only and n != REPAIR_N:
            run(f"daemon drift repair at N={REPAIR_N:,} and N={n:,} interleaved, {args.drifts:,} drifts each",
                repair_pair)
        elif "repair" in only:
            run(f"daemon drift repair, {args.drifts:,} drifts", repair)
        if "repair" in only:
            run(f"daemon drift repair on 3 members, one paused (each in turn), {args.drifts:,} drifts",
                lambda: daemon.drift_repair_paused(rdir, REPAIR_N, args.drifts, work))

        def reg() -> Measurement:
            with fresh_etcd() as etcd:
                return registry.measure(etcd, args.registry_count, args.registry_window)

        if "registry" in only:
            run(f"registry, {args.registry_count:,} instances, {args.registry_window:g}s keepalive window", reg)

    results.machine["loadavg_end"] = list(os.getloadavg())       # includes this run's own processes
    busy = results.machine["loadavg_start"][0]
    if busy > 0.5 * (os.cpu_count() or 1):
        results.notes.append(f"the machine was busy with other work before the run (1-minute load average "
                             f"{busy:.1f} on {os.cpu_count()} cores): expect noisy numbers")
    add_ratios(results)
    evaluate(results)
    results.duration_seconds = time.perf_counter() - t0
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    if args.etcd:
        stamp += f"-etcd{args.etcd}"
    out_dir = Path(args.out)
    print(render(results))
    print()
    path, latest = results.write(out_dir, stamp, f"etcd{args.etcd}" if args.etcd else "")
    print(f"results: {path} and {latest}")
    if not args.no_plot:
        plot = out_dir / (f"latest-etcd{args.etcd}.png" if args.etcd else "latest.png")
        problem = draw(results, plot)
        print(problem or f"plot: {plot}")
    print(f"total: {results.duration_seconds:.0f} s")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
