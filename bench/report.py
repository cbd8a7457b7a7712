"""The terminal report: markdown tables ready to paste into the README."""

from __future__ import annotations

from .machine import code_line, one_line
from .results import (
    APPLY,
    APPLY_DRIFT,
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
    Results,
)

ROWS = [
    (APPLY, "etcdsync apply into an empty etcd"),
    (DIFF_NOOP, "etcdsync diff, no-op (in sync)"),
    (APPLY_DRIFT, "etcdsync apply, 1 % of keys drifted"),
    (PUT_LOOP, "baseline: one put per key, sequential"),
    (TXN128, "baseline: txns of 128 puts, 1 in flight"),
    (TXN128_X8, "baseline: txns of 128 puts, 8 in flight"),
    (ETCDCTL_LOOP, "baseline: `etcdctl put` per key, shell loop"),
]
RATIOS = [
    ("vs_txn128", "apply ÷ txns of 128, 1 in flight", "×"),
    ("vs_txn128_x8", "apply ÷ txns of 128, 8 in flight", "×"),
    ("put_loop_speedup", "put-per-key loop ÷ apply (speed-up)", "×"),
    ("etcdctl_speedup", "etcdctl loop ÷ apply (speed-up)", "×"),
]


def secs(s: float) -> str:
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.2f} s"
    return f"{s:.1f} s"


def num(n: int) -> str:
    return f"{n:,}"


def sizes_table(r: Results) -> list[str]:
    head = "| workload | " + " | ".join(f"N = {num(n)}" for n in r.sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(r.sizes)]
    for workload, label in ROWS:
        cells = []
        for n in r.sizes:
            m = r.get(workload, n)
            if m is None or m.seconds is None:
                other = next((x for x in r.measurements if x.workload == workload and x.n not in r.sizes), None)
                cells.append(f"{secs(other.seconds)} for {num(other.n)} keys"
                             if other is not None and other.seconds is not None and n == r.sizes[0] else "–")
            else:
                cells.append(f"{secs(m.seconds)} ({m.n / m.seconds:,.0f}/s)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label, unit in RATIOS:
        cells = []
        for n in r.sizes:
            m = r.get(APPLY, n)
            v = m.ratios.get(key) if m else None
            cells.append("–" if v is None else f"{v:.2f}{unit}")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def single_table(r: Results) -> list[str]:
    lines = ["| daemon, library, start-up | measured |", "|---|---:|"]
    d = r.get(DRIFT_REPAIR, min((m.n for m in r.measurements if m.workload == DRIFT_REPAIR), default=0))
    if d:
        x = d.details
        lines.append(f"| drift repair, {num(x['repaired'])} of {num(x['drifts'])} drifts repaired "
                     f"(manifest of {num(d.n)} keys), from sending the wrong value to seeing the right one "
                     f"again: p50 / p99 / max | {secs(x['p50'])} / {secs(x['p99'])} / {secs(x['max'])} |")
        if x.get("event_to_event_p50") is not None:
            lines.append(f"| drift repair as a watcher sees it (drift event → repair event): p50 / p99 | "
                         f"{secs(x['event_to_event_p50'])} / {secs(x['event_to_event_p99'])} |")
        h = x.get("daemon_histogram") or {}
        if h.get("mean_seconds") is not None:
            lines.append(f"| daemon's own `etcdsync_drift_repair_seconds` (event → commit): count / mean | "
                         f"{num(h['count'])} / {secs(h['mean_seconds'])} |")
    for big in (m for m in r.measurements if m.workload == DRIFT_REPAIR and "p50_vs_1000" in m.ratios):
        x = big.details
        lines.append(f"| drift repair at {num(big.n)} owned keys: p50 / p99 (p50 ÷ p50 at {num(d.n if d else 0)}) | "
                     f"{secs(x['p50'])} / {secs(x['p99'])} ({big.ratios['p50_vs_1000']:.2f}×) |")
        if x.get("interleaved_rounds") and d is not None:
            lines.append(f"| the two sizes were measured at once, in {x['interleaved_rounds']} alternating rounds "
                         f"each; median of the per-round p50 ratios | {x['round_p50_ratio_median']:.2f}× |")
        if x.get("raw_p50") is not None and d is not None and d.details.get("raw_p50") is not None:
            y = d.details
            lines.append(f"| the same repair without etcdsync (the bench client writes the declared value back in "
                         f"a transaction guarded by the drift's revision): p50 / p99 at {num(d.n)}, at "
                         f"{num(big.n)} | {secs(y['raw_p50'])} / {secs(y['raw_p99'])}, "
                         f"{secs(x['raw_p50'])} / {secs(x['raw_p99'])} |")
    p = r.get(DRIFT_REPAIR_PAUSED)
    if p:
        x = p.details
        pinned = next((ph for ph in x["phases"] if ph.get("pinned")), None)
        lines.append(f"| drift repair on 3 members, one SIGSTOPped (each in turn), from the drift's commit: "
                     f"p50 / p99 / max | {secs(x['p50'])} / {secs(x['p99'])} / {secs(x['max'])} |")
        if pinned is not None and pinned.get("first_after_pause") is not None:
            lines.append(f"| the same, first repair after the daemon's own member was paused (the watch notices "
                         f"the silence and moves) | {secs(pinned['first_after_pause'])} |")
    s = r.get(STARTUP)
    if s and s.seconds is not None:
        lines.append(f"| `{s.details['command']}`, median of {s.details['runs']} | {secs(s.seconds)} |")
    f = r.get(FLOOR)
    if f and f.seconds is not None:
        lines.append(f"| `etcdsync diff` of a 1-key manifest, median of {f.details['runs']} (the fixed cost of "
                     f"every run: start-up, imports, connect) | {secs(f.seconds)} |")
    m = r.get(DAEMON_RSS)
    if m:
        lines.append(f"| daemon RSS, {num(m.n)} owned keys, once ready (peak) | {m.value:.0f} MB "
                     f"({m.details['vm_hwm_bytes'] / 1e6:.0f} MB) |")
        lines.append(f"| daemon start-up to /readyz, {num(m.n)} keys in sync | {secs(m.details['ready_seconds'])} |")
    m = r.get(DAEMON_IDLE_CPU)
    if m:
        lines.append(f"| daemon idle CPU, {num(m.n)} keys, over {m.details['window_seconds']:.0f} s | "
                     f"{m.value:.2f} % of a core ({m.details['cpu_seconds']:.2f} CPU-s) |")
    m = r.get(REGISTRY)
    if m and m.seconds is not None:
        x = m.details
        lines.append(f"| registry: register {num(m.n)} instances (ttl {x['ttl']:g} s) at once (asyncio.gather) | "
                     f"{secs(m.seconds)} ({1000 * m.seconds / m.n:.2f} ms each) |")
        if "sequential_register_seconds" in x:
            s = x["sequential_register_seconds"]
            lines.append(f"| registry: register {num(m.n)} instances one after another (each awaited) | "
                         f"{secs(s)} ({1000 * s / m.n:.2f} ms each) |")
        lines.append(f"| registry: keepalive CPU of the registering process over {x['window_seconds']:.0f} s | "
                     f"{100 * x['keepalive_cpu_per_second']:.1f} % of a core (etcd: "
                     f"{100 * x['etcd_cpu_per_second']:.1f} %) |")
    return lines


def _fmt_target_value(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return secs(v)
    if unit == "×":
        return f"{v:.2f}×"
    return f"{v:.2f} {unit}" if v < 10 else f"{v:.0f} {unit}"


def targets_table(r: Results) -> list[str]:
    lines = ["| target | measured | status |", "|---|---:|---|"]
    for t in r.targets:
        lines.append(f"| {t.name} | {_fmt_target_value(t.measured, t.unit)} | "
                     f"{'**missed**' if t.status == 'missed' else t.status} |")
    return lines


def render(r: Results) -> str:
    out = [f"### etcdsync benchmarks ({r.mode} run, {r.started})", "",
           f"Machine: {one_line(r.machine)}.", "", f"Code: {code_line(r.code)}.", "",
           "Whole-process wall time for etcdsync (interpreter start-up, YAML loading, planning, writes); "
           "baselines time only their writes, in one process, with the same client (etcd3aio). "
           "Each cell: seconds (keys/s), " + (f"the median of up to {r.machine.get('repeat')} runs (fewer "
           "for slow ones)" if r.machine.get("repeat", 1) > 1 else "one run") + ". A fresh etcd for every workload.", "",
           *sizes_table(r), "", *single_table(r), "", *targets_table(r)]
    if r.notes:
        out += ["", *(f"- {n}" for n in r.notes)]
    return "\n".join(out)
