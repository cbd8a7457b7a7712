"""etcdsync's one-shot commands, timed as whole processes (what a CI job pays)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from etcd3aio.kv import KVService

from . import manifests
from .results import APPLY, APPLY_DRIFT, DIFF_NOOP, FLOOR, STARTUP, Measurement
from .servers import Etcd, etcdsync_cmd, raw_client, subprocess_env
from .timing import Completed, median, run_timed

APPLIED = re.compile(r"applied: (\d+) created, (\d+) updated, (\d+) deleted, (\d+) unchanged")


def _cli(verb: str, manifest_dir: Path, etcd: Etcd) -> Completed:
    cmd = etcdsync_cmd(verb, "-f", str(manifest_dir), "--applyset", manifests.APPLYSET,
                       "--endpoints", etcd.endpoint, "--no-color")
    return run_timed(cmd, env=subprocess_env(), cwd=str(manifest_dir), timeout=600)


def _applied(done: Completed, what: str) -> dict[str, int]:
    if done.returncode != 0:
        raise RuntimeError(f"{what}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    m = APPLIED.search(done.stdout)
    if not m:
        raise RuntimeError(f"{what}: no 'applied:' line in its output: {done.stdout[-400:]}")
    return dict(zip(("created", "updated", "deleted", "unchanged"), map(int, m.groups()), strict=True))


def apply_empty(manifest_dir: Path, etcd: Etcd, n: int) -> Measurement:
    """`etcdsync apply` of N keys into an empty etcd."""
    done = _cli("apply", manifest_dir, etcd)
    counts = _applied(done, "apply")
    if counts["created"] != n:
        raise RuntimeError(f"apply created {counts['created']} keys, expected {n}")
    return Measurement(APPLY, n, seconds=done.seconds, details={"applied": counts})


def diff_noop(manifest_dir: Path, etcd: Etcd, n: int) -> Measurement:
    """`etcdsync diff` when etcd already matches (exit 0 expected)."""
    done = _cli("diff", manifest_dir, etcd)
    if done.returncode != 0:
        raise RuntimeError(f"no-op diff: exit {done.returncode} (expected 0): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    return Measurement(DIFF_NOOP, n, seconds=done.seconds)


async def _drift(addr: str, indexes: list[int]) -> None:
    ops = [KVService.txn_op_put(f"{manifests.PREFIX}{manifests.rel_key(i)}".encode(), f"drift-{i}".encode())
           for i in indexes]
    async with raw_client(addr) as client:
        assert client.kv is not None
        for start in range(0, len(ops), 128):
            await client.kv.txn([], ops[start:start + 128])


def apply_drifted(manifest_dir: Path, etcd: Etcd, n: int) -> Measurement:
    """Drift 1 % of the keys with a raw client, then time `etcdsync apply` repairing them."""
    indexes = manifests.drift_indexes(n)
    asyncio.run(_drift(etcd.addr, indexes))
    done = _cli("apply", manifest_dir, etcd)
    counts = _applied(done, "apply after drift")
    if counts["updated"] != len(indexes):
        raise RuntimeError(f"apply after drift updated {counts['updated']} keys, expected {len(indexes)}")
    return Measurement(APPLY_DRIFT, n, seconds=done.seconds, details={"drifted": len(indexes), "applied": counts})


def startup_help(runs: int) -> Measurement:
    """`etcdsync --help`: the console script next to this interpreter when installed, else `-m`."""
    from .servers import PYTHON

    script = Path(PYTHON).parent / "etcdsync"
    cmd = [str(script), "--help"] if script.exists() else etcdsync_cmd("--help")
    env = subprocess_env()
    times = []
    run_timed(cmd, env=env, timeout=60)      # one unmeasured run: warm the page cache and .pyc files
    for _ in range(runs):
        done = run_timed(cmd, env=env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"--help: exit {done.returncode}: {done.stderr.strip()[-400:]}")
        times.append(done.seconds)
    return Measurement(STARTUP, 0, seconds=median(times),
                       details={"runs": runs, "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
                                "min": min(times), "max": max(times)})


def process_floor(etcd: Etcd, work: Path, runs: int) -> Measurement:
    """`etcdsync diff` of a 1-key manifest (in sync): interpreter, imports, connect, read, exit.

    What every one-shot command pays whatever N is; compare it with the baselines at small N.
    """
    mdir = work / "manifests-floor"
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "floor.yaml").write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata:\n  name: floor\n"
                                     "spec:\n  prefix: /floor/\n  data:\n    key: value\n")
    _applied(_cli("apply", mdir, etcd), "apply of the 1-key manifest")
    times = []
    for _ in range(runs):
        done = _cli("diff", mdir, etcd)
        if done.returncode != 0:
            raise RuntimeError(f"1-key diff: exit {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}")
        times.append(done.seconds)
    return Measurement(FLOOR, 1, seconds=median(times), details={"runs": runs, "min": min(times), "max": max(times)})
