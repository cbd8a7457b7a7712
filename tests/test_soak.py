"""A short fault campaign (bench/soak.py) as part of the suite: about a minute, fixed seed.

SIGKILL and SIGSTOP of etcd members (etcd 3.4, 3 members), quorum loss, compactions, SIGKILL and
restart of the daemon, manifest edits saved in place, by rename, truncated and emptied, and other
clients writing managed and unmanaged keys; etcd's whole history is then checked (flaps, unowned
writes, inventory gaps, overwritten create-only/warn keys, convergence, quiet). `scripts/soak --seed N
--duration S` runs longer campaigns; a failure here prints the seed and the schedule to reproduce it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261202
DURATION = 55.0


def test_short_fault_campaign_finds_no_violation(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.soak import FAULTS, campaign

    lines: list[str] = []
    result = campaign(SEED, DURATION, tmp_path / "soak", say=lines.append)
    print("\n".join(lines))
    print(f"faults {dict(result.faults)}; writers {dict(result.writer_ops)}; {result.events} events, "
          f"{result.versions} manifest versions, daemon started {result.daemon_starts}x")
    assert not result.violations, (f"seed {SEED}: {len(result.violations)} violations:\n  "
                                   + "\n  ".join(result.violations[:20]) + "\n--- schedule ---\n" + "\n".join(lines))
    # the campaign did what it says: every kind of fault, other clients' writes, several versions
    missing = [f for f in FAULTS if not result.faults[f]]
    assert not missing, f"fault kinds never injected: {missing}\n" + "\n".join(lines)
    assert result.daemon_starts >= 2
    assert result.writer_ops["put managed"] > 50 and result.writer_ops["put unmanaged"] > 50, result.writer_ops
    assert result.versions >= 10
