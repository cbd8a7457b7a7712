"""The benchmark harness runs end to end in quick mode (N = 1,000). No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    "apply", "diff_noop", "apply_drift_1pct", "baseline_put_loop", "baseline_txn128", "baseline_txn128_x8",
    "baseline_etcdctl_loop", "drift_repair", "drift_repair_paused", "registry", "startup_help", "process_floor", "daemon_rss", "daemon_idle_cpu",
}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_quick_mode(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path), "--no-plot"],
        cwd=tmp_path, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((tmp_path / "latest.json").read_text())
    stamped = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1 and json.loads(stamped[0].read_text()) == data
    assert data["schema"] == "etcdsync-bench/1" and data["mode"] == "quick" and data["sizes"] == [1000]
    assert {m["workload"] for m in data["measurements"]} == WORKLOADS
    for m in data["measurements"]:
        assert m["seconds"] is not None or m["value"] is not None, m
        assert isinstance(m["n"], int)
    apply = next(m for m in data["measurements"] if m["workload"] == "apply")
    assert {"vs_txn128", "vs_txn128_x8", "put_loop_speedup"} <= set(apply["ratios"])
    assert data["targets"] and all(t["status"] in ("met", "missed", "not measured") for t in data["targets"])
    assert data["machine"]["cores"] and data["machine"]["etcd"] and data["code"]["commit"]

    out = proc.stdout
    assert "Machine: " in out
    assert "| workload | N = 1,000 |" in out
    assert "| target | measured | status |" in out
    assert not (tmp_path / "latest.png").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_interleaved_drift_repair_measures_both_sizes_and_the_raw_repair(tmp_path: Path) -> None:
    """The repair-ratio row: two daemons at once, drifts alternating between them, then the same drifts
    repaired by the bench client alone on the same two etcds."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench import daemon, manifests
        from bench.servers import fresh_etcd
    finally:
        sys.path.remove(str(ROOT))
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    manifests.write_manifest(small_dir, 200)
    manifests.write_manifest(big_dir, 500)
    with fresh_etcd(str(tmp_path)) as small, fresh_etcd(str(tmp_path)) as big:
        ms = daemon.drift_repair_interleaved((small_dir, small, 200), (big_dir, big, 500), 12, tmp_path, rounds=3)
    assert [m.n for m in ms] == [200, 500]
    for m in ms:
        d = m.details
        assert d["drifts"] == d["repaired"] == 12 and d["failures"] == 0, d
        assert len(d["round_p50"]) == 3 and d["interleaved_rounds"] == 3
        assert 0 < d["put_p50"] <= d["p50"] and 0 < d["raw_p50"] <= d["raw_p99"]
        assert m.seconds == d["p50"]
    assert len(ms[1].details["round_p50_ratios"]) == 3 and ms[1].details["round_p50_ratio_median"] > 0
