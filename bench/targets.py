"""The issue's performance targets, checked against a run's measurements."""

from __future__ import annotations

from .results import (
    APPLY,
    DAEMON_IDLE_CPU,
    DAEMON_RSS,
    DIFF_NOOP,
    DRIFT_REPAIR,
    ETCDCTL_LOOP,
    PUT_LOOP,
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


def _ratio(m: Measurement | None, key: str) -> float | None:
    return None if m is None else m.ratios.get(key)


def evaluate(r: Results) -> None:
    targets: list[tuple[Target, float | None]] = []
    for n in (10_000, 100_000):
        apply = r.get(APPLY, n)
        targets.append((Target(f"apply ≤ 1.5× txns of 128 (1 in flight) at N = {n:,}", APPLY, n,
                               "ratio vs_txn128", "<=", 1.5, "×"), _ratio(apply, "vs_txn128")))
        targets.append((Target(f"apply ≥ 10× faster than the put-per-key loop at N = {n:,}", APPLY, n,
                               "ratio put_loop_speedup", ">=", 10, "×"), _ratio(apply, "put_loop_speedup")))
    diff = r.get(DIFF_NOOP, 100_000)
    targets.append((Target("no-op diff of 100,000 keys < 2 s", DIFF_NOOP, 100_000, "seconds", "<", 2.0, "s"),
                    diff.seconds if diff else None))
    rep = r.get(DRIFT_REPAIR)
    targets.append((Target("drift repair p50 < 5 ms", DRIFT_REPAIR, rep.n if rep else REPAIR_N, "p50", "<", 0.005, "s"),
                    rep.details["p50"] if rep else None))
    targets.append((Target("drift repair p99 < 25 ms", DRIFT_REPAIR, rep.n if rep else REPAIR_N, "p99", "<", 0.025, "s"),
                    rep.details["p99"] if rep else None))
    s = r.get(STARTUP)
    targets.append((Target("`etcdsync --help` < 300 ms", STARTUP, 0, "median seconds", "<", 0.3, "s"),
                    s.seconds if s else None))
    rss = r.get(DAEMON_RSS, 100_000)
    targets.append((Target("daemon RSS < 150 MB at 100,000 keys", DAEMON_RSS, 100_000, "VmRSS", "<", 150, "MB"),
                    rss.value if rss else None))
    idle = r.get(DAEMON_IDLE_CPU)
    targets.append((Target(f"idle daemon CPU near zero (< {IDLE_CPU_LIMIT:g} % of a core)", DAEMON_IDLE_CPU,
                           idle.n if idle else None, "% of one core", "<", IDLE_CPU_LIMIT, "%"),
                    idle.value if idle else None))
    r.targets = []
    for t, measured in targets:
        t.check(measured)
        r.targets.append(t)
