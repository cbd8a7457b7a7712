"""What a benchmark run produced: measurements, target verdicts, and the JSON file format."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "etcdsync-bench/1"

# Workload names, as they appear in the JSON ("workload") and in the smoke test.
APPLY = "apply"                          # etcdsync apply into an empty etcd, whole process
DIFF_NOOP = "diff_noop"                  # etcdsync diff with everything in sync, whole process
APPLY_DRIFT = "apply_drift_1pct"         # etcdsync apply with 1 % of the keys drifted, whole process
PUT_LOOP = "baseline_put_loop"           # one put per key, sequential, etcd3aio
TXN128 = "baseline_txn128"               # transactions of 128 puts, one at a time
TXN128_X8 = "baseline_txn128_x8"         # transactions of 128 puts, 8 in flight
ETCDCTL_LOOP = "baseline_etcdctl_loop"   # `etcdctl put` per key in a shell loop
DRIFT_REPAIR = "drift_repair"            # daemon: wrong value on an enforce key -> restored
DRIFT_REPAIR_PAUSED = "drift_repair_paused"  # the same on 3 members, one of them paused (SIGSTOP)
REGISTRY = "registry"                    # 1,000 leased registrations from one process
STARTUP = "startup_help"                 # `etcdsync --help`
FLOOR = "process_floor"                  # `etcdsync diff` of a 1-key manifest: the fixed cost of a run
DAEMON_RSS = "daemon_rss"                # daemon VmRSS once ready
DAEMON_IDLE_CPU = "daemon_idle_cpu"      # daemon CPU while nothing happens

WORKLOADS = (APPLY, DIFF_NOOP, APPLY_DRIFT, PUT_LOOP, TXN128, TXN128_X8, ETCDCTL_LOOP,
             DRIFT_REPAIR, DRIFT_REPAIR_PAUSED, REGISTRY, STARTUP, FLOOR, DAEMON_RSS, DAEMON_IDLE_CPU)
BASELINES = (PUT_LOOP, TXN128, TXN128_X8, ETCDCTL_LOOP)


@dataclass
class Measurement:
    """One number (with its details) for one workload at one size N.

    `seconds` is the wall time of the timed work (for latency distributions: the median); `value` and
    `unit` carry measurements that are not a duration (RSS, CPU share). `ratios` relate this
    measurement to the baselines of the same N.
    """

    workload: str
    n: int
    seconds: float | None = None
    value: float | None = None
    unit: str = "s"
    details: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def keys_per_second(self) -> float | None:
        if self.seconds and self.workload in (APPLY, DIFF_NOOP, *BASELINES):
            return self.n / self.seconds
        return None


_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass
class Target:
    """A promise from the issue, checked against one measured number."""

    name: str
    workload: str
    n: int | None
    metric: str                 # which number: "seconds", "p50", "ratio_vs_txn128", ...
    comparison: str             # "<=", "<", ">=", ">"
    limit: float
    unit: str
    measured: float | None = None
    status: str = "not measured"   # "met" | "missed" | "not measured"

    def check(self, measured: float | None) -> None:
        self.measured = measured
        if measured is None:
            self.status = "not measured"
        else:
            self.status = "met" if _OPS[self.comparison](measured, self.limit) else "missed"


@dataclass
class Results:
    mode: str
    sizes: list[int]
    machine: dict[str, Any]
    code: dict[str, Any]
    started: str
    argv: list[str]
    measurements: list[Measurement] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    duration_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        return m

    def get(self, workload: str, n: int | None = None) -> Measurement | None:
        for m in self.measurements:
            if m.workload == workload and (n is None or m.n == n):
                return m
        return None

    def to_json(self) -> dict[str, Any]:
        measurements = []
        for m in self.measurements:
            d = asdict(m)
            d["keys_per_second"] = m.keys_per_second
            measurements.append(d)
        counts = {s: sum(1 for t in self.targets if t.status == s) for s in ("met", "missed", "not measured")}
        return {
            "schema": SCHEMA,
            "started": self.started,
            "mode": self.mode,
            "argv": self.argv,
            "sizes": self.sizes,
            "duration_seconds": round(self.duration_seconds, 3),
            "machine": self.machine,
            "code": self.code,
            "measurements": measurements,
            "targets": [asdict(t) for t in self.targets],
            "summary": counts,
            "notes": self.notes,
        }

    def write(self, out_dir: Path, stamp: str, label: str = "") -> tuple[Path, Path]:
        """<stamp>.json and latest.json (and latest-<label>.json: one per etcd version)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        path = out_dir / f"{stamp}.json"
        latest = out_dir / (f"latest-{label}.json" if label else "latest.json")
        path.write_text(text)
        latest.write_text(text)
        if label:
            (out_dir / "latest.json").write_text(text)
        return path, latest
