"""The issue's performance targets, checked against a run's measurements."""

from __future__ import annotations

from .results import (
    APPLY,
    DAEMON_IDLE_CPU,
    DAEMON_RSS,
    DIFF_NOOP,
    DRIFT_REPAIR,
    DRIFT_REPAIR_PAUSED,
    ETCDCTL_LOOP,
    FLOOR,
    PUT_LOOP,
    REGISTRY,
    STARTUP,
    TXN128,
    TXN128_X8,
    Measurement,
    Results,
    Target,
)

REPAIR_N = 1_000
IDLE_CPU_LIMIT = 1.0     # "near zero": under 1 % of one core


def add_ratios(r: Results) -> None:
    """Relate each etcdsync apply to the baselines measured at the same N."""
    for m in r.measurements:
        if m.workload != APPLY or not m.seconds:
            continue
        for key, baseline, speedup in (("vs_txn128", TXN128, False), ("vs_txn128_x8", TXN128_X8, False),
                                       ("put_loop_speedup", PUT_LOOP, True), ("etcdctl_speedup", ETCDCTL_LOOP, True)):
            b = r.get(baseline, m.n)
            if b is not None and b.seconds:
                m.ratios[key] = b.seconds / m.seconds if speedup else m.seconds / b.seconds


    for m in r.measurements:
        b = r.get(TXN128, m.n)
        if m.workload == DIFF_NOOP and m.seconds and b is not None and b.seconds:
            m.ratios["vs_txn128"] = m.seconds / b.seconds
    small = r.get(DRIFT_REPAIR, REPAIR_N)
    for m in r.measurements:
        if m.workload == DRIFT_REPAIR and m.n != REPAIR_N and m.seconds and small is not None and small.seconds:
            m.ratios["p50_vs_1000"] = m.seconds / small.seconds


def _ratio(m: Measurement | None, key: str) -> float | None:
    return None if m is None else m.ratios.get(key)


def evaluate(r: Results) -> None:
    targets: list[tuple[Target, float | None]] = []
    for n, limit in ((10_000, 2.0), (100_000, 1.3)):
        apply = r.get(APPLY, n)
        targets.append((Target(f"apply ≤ {limit:g}× txns of 128 (1 in flight) at N = {n:,}", APPLY, n,
                               "ratio vs_txn128", "<=", limit, "×"), _ratio(apply, "vs_txn128")))
        targets.append((Target(f"apply ≥ 10× faster than the put-per-key loop at N = {n:,}", APPLY, n,
                               "ratio put_loop_speedup", ">=", 10, "×"), _ratio(apply, "put_loop_speedup")))
    diff = r.get(DIFF_NOOP, 100_000)
    targets.append((Target("no-op diff of 100,000 keys ≤ 0.7× txns of 128 writing them", DIFF_NOOP, 100_000,
                           "ratio vs_txn128", "<=", 0.7, "×"), _ratio(diff, "vs_txn128")))
    f = r.get(FLOOR)
    targets.append((Target("`etcdsync diff` of a 1-key manifest ≤ 180 ms", FLOOR, 1, "median seconds", "<=", 0.18,
                           "s"), f.seconds if f else None))
    rep = r.get(DRIFT_REPAIR)
    targets.append((Target("drift repair p50 < 5 ms", DRIFT_REPAIR, rep.n if rep else REPAIR_N, "p50", "<", 0.005, "s"),
                    rep.details["p50"] if rep else None))
    targets.append((Target("drift repair p99 < 25 ms", DRIFT_REPAIR, rep.n if rep else REPAIR_N, "p99", "<", 0.025, "s"),
                    rep.details["p99"] if rep else None))
    big = next((m for m in r.measurements if m.workload == DRIFT_REPAIR and "p50_vs_1000" in m.ratios), None)
    targets.append((Target("drift repair p50 at 100,000 owned keys ≤ 1.2× at 1,000", DRIFT_REPAIR, 100_000,
                           "ratio p50_vs_1000", "<=", 1.2, "×"),
                    big.ratios["p50_vs_1000"] if big is not None and big.n == 100_000 else None))
    paused = r.get(DRIFT_REPAIR_PAUSED)
    targets.append((Target("drift repair p99 with one of three members paused ≤ 1 s", DRIFT_REPAIR_PAUSED,
                           paused.n if paused else REPAIR_N, "p99", "<=", 1.0, "s"),
                    paused.details["p99"] if paused else None))
    reg = r.get(REGISTRY)
    targets.append((Target("register 1,000 instances in one process ≤ 0.3 s", REGISTRY, 1000, "seconds", "<=", 0.3,
                           "s"), reg.seconds if reg is not None and reg.n == 1000 else None))
    targets.append((Target("keepalive CPU of a process holding 1,000 registrations ≤ 2 % of a core", REGISTRY, 1000,
                           "% of one core", "<=", 2.0, "%"),
                    100 * float(reg.details["keepalive_cpu_per_second"]) if reg is not None and reg.n == 1000
                    else None))
    s = r.get(STARTUP)
    targets.append((Target("`etcdsync --help` < 300 ms", STARTUP, 0, "median seconds", "<", 0.3, "s"),
                    s.seconds if s else None))
    rss = r.get(DAEMON_RSS, 100_000)
    targets.append((Target("daemon RSS ≤ 110 MB at 100,000 keys, ready", DAEMON_RSS, 100_000, "VmRSS", "<=", 110,
                           "MB"), rss.value if rss else None))
    targets.append((Target("daemon peak RSS ≤ 140 MB at 100,000 keys", DAEMON_RSS, 100_000, "VmHWM", "<=", 140, "MB"),
                    rss.details["vm_hwm_bytes"] / 1e6 if rss else None))
    idle = r.get(DAEMON_IDLE_CPU)
    targets.append((Target(f"idle daemon CPU near zero (< {IDLE_CPU_LIMIT:g} % of a core)", DAEMON_IDLE_CPU,
                           idle.n if idle else None, "% of one core", "<", IDLE_CPU_LIMIT, "%"),
                    idle.value if idle else None))
    r.targets = []
    for t, measured in targets:
        t.check(measured)
        r.targets.append(t)
