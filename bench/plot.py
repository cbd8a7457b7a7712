"""latest.png: time against N, log-log, for etcdsync apply and each baseline (matplotlib is optional)."""

from __future__ import annotations

from pathlib import Path

from .results import APPLY, DIFF_NOOP, ETCDCTL_LOOP, PUT_LOOP, TXN128, TXN128_X8, Results

SERIES = [
    (APPLY, "etcdsync apply (whole process)", "o-"),
    (DIFF_NOOP, "etcdsync diff, no-op (whole process)", "o--"),
    (PUT_LOOP, "one put per key (etcd3aio)", "s-"),
    (TXN128, "txns of 128 puts, 1 in flight", "^-"),
    (TXN128_X8, "txns of 128 puts, 8 in flight", "v-"),
    (ETCDCTL_LOOP, "etcdctl put per key, shell loop", "D"),
]


def draw(r: Results, path: Path) -> str | None:
    """Write the plot; returns a message instead when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install '.[bench]')"
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for workload, label, style in SERIES:
        points = sorted((m.n, m.seconds) for m in r.measurements if m.workload == workload and m.seconds)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("keys (N)")
    ax.set_ylabel("seconds")
    ax.set_title(f"etcdsync vs. raw etcd writes ({r.machine.get('cores')} cores, etcd {r.machine.get('etcd')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
