"""Ctrl-C (SIGINT) or SIGTERM while `etcdsync apply` writes a plan of many transactions.

The first signal stops the apply after the transactions already in flight: it sends no new one,
waits for those (their outcome is then known), records what was committed as a failed history
entry, takes its "applying" marker away, says on stderr how many changes were committed, and exits
130. The next apply completes the rest. (Before, SIGINT ended the apply with "aborted" and recorded
nothing, and SIGTERM killed it: thousands of keys written with no history entry.) A second signal
stops at once.

Real etcd; the apply is a subprocess, signalled the moment its first write is seen on a watch; the
history checker runs on the whole test (every key written is in the inventory at its revision).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, Env
from helpers_faults import Ctl
from history import Recorder

from etcdsync.etcd.store import Store
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection

N = 20_000     # ~160 transactions of 128 operations: the apply lasts well after its first commit


def big_manifest(env: Env) -> dict[str, str]:
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata: {name: big}", "spec:",
             f"  prefix: {env.ns}big/", "  data:"]
    lines += [f"    k{i:05d}: v{i}" for i in range(N)]
    env.write("m/big.yaml", "\n".join(lines) + "\n")
    return {f"{env.ns}big/k{i:05d}": f"v{i}" for i in range(N)}


def apply_cmd(env: Env, *extra: str) -> list[str]:
    return [sys.executable, "-m", "etcdsync", "apply", "--reserved-prefix", env.reserved, "-f", str(env.tmp / "m"),
            "--applyset", "t", *extra]


async def signal_on_first_write(env: Env, start: int, sig: int, *extra: str,
                                again: float | None = None) -> subprocess.Popen[str]:
    """Start the apply; send `sig` as soon as its first key is seen (and again `again` s later)."""
    proc_env = {**os.environ, "ETCDSYNC_ENDPOINTS": ",".join(env.endpoints)}
    proc_env["PYTHONPATH"] = str(ROOT) + os.pathsep + proc_env.get("PYTHONPATH", "")
    async with Store(Connection(env.endpoints)) as store:
        events = store.watch_prefix(f"{env.ns}big/", start_revision=start + 1)
        proc = subprocess.Popen(apply_cmd(env, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=proc_env, cwd=env.tmp, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        async for batch in events:
            if batch.events:
                break
            assert proc.poll() is None, f"the apply ended before writing: {proc.communicate()}"
            assert time.monotonic() < deadline, "the apply wrote nothing within 30 s"
        proc.send_signal(sig)
        if again is not None:
            await asyncio.sleep(again)
            if proc.poll() is None:
                proc.send_signal(sig)
        await events.aclose()  # type: ignore[attr-defined]
    return proc


def written(env: Env) -> set[str]:
    return {k for k in env.dump(f"{env.ns}big/")}


def history_entries(env: Env) -> list[dict[str, object]]:
    r = env.cli("history", "--reserved-prefix", env.reserved, "--applyset", "t", "-o", "json")
    assert r.code == 0, r
    return json.loads(r.out)["entries"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_apply_stops_after_its_transactions_in_flight_and_records_them(
        env: Env, history: Recorder, sig: signal.Signals) -> None:
    data = big_manifest(env)
    history.declare(data)
    proc = asyncio.run(signal_on_first_write(env, env.revision(), sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert f"interrupted ({sig.name}): stopping after the transactions in flight" in err, err
    keys = written(env)
    assert 0 < len(keys) < N, f"{len(keys)} of {N} keys written: the interrupt did not land mid-apply"
    # what it wrote is recorded, as a failed entry, and said on stderr
    [entry] = history_entries(env)
    assert entry["failed"] and "interrupted" in str(entry["failed"]), entry
    assert entry["counts"] == {"created": len(keys)}, (entry["counts"], len(keys))
    assert f"note: {len(keys)} changes were committed before it stopped (history entry {entry['id']})" in err, err
    assert env.dump(f"{env.reserved}applying/") == {}, "the apply's marker is taken away"
    history.sync()
    # the next apply completes the rest
    r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t")
    assert r.code == 0, r
    assert f"applied: {N - len(keys)} created" in r.out, r.out[-500:]
    assert written(env) == set(data)


def test_a_second_signal_stops_at_once(env: Env, history: Recorder) -> None:
    """No waiting for the transactions in flight: the process ends with 130 at once, and the next apply
    converges (what was committed is in the inventory; the marker's lease expires or is revoked)."""
    data = big_manifest(env)
    history.declare(data)
    proc = asyncio.run(signal_on_first_write(env, env.revision(), signal.SIGINT, again=0.0))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert len(written(env)) < N
    history.sync()
    r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t")
    assert r.code == 0, r
    assert written(env) == set(data)


def test_an_interrupt_before_the_first_write_writes_nothing(tmp_path: Path) -> None:
    """SIGTERM while the apply is still reading etcd (a private etcd, paused meanwhile so that the
    signal surely lands then): nothing written, exit 130, and it says so."""
    lone = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    lone.start()
    try:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "app.yaml").write_text(
            "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n  prefix: /app/\n"
            "  data:\n    a: '1'\n")
        proc_env = {**os.environ, "ETCDSYNC_ENDPOINTS": lone.endpoints[0]}
        proc_env["PYTHONPATH"] = str(ROOT) + os.pathsep + proc_env.get("PYTHONPATH", "")
        lone.members[0].pause()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "etcdsync", "apply", "-f", str(tmp_path / "m"), "--applyset",
                                     "t", "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=proc_env, cwd=tmp_path, stdin=subprocess.DEVNULL)
            time.sleep(2.5)       # started, connected, waiting for etcd's answer to its first read
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        finally:
            lone.members[0].resume()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (proc.returncode, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-2:] == ["note: nothing was written",
                                                 "error: interrupted (SIGTERM): nothing written"], err
        kvs = Ctl(lone.endpoints)("get", "", "--prefix", "--keys-only")
        assert not kvs.strip(), kvs
    finally:
        lone.stop()


def test_an_interrupted_saved_plan_records_what_it_committed(env: Env, history: Recorder) -> None:
    """`apply --plan` takes the same way out: 130, a failed entry for what was committed; the plan is
    then stale, and a fresh apply completes the rest."""
    data = big_manifest(env)
    history.declare(data)
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(env.tmp / "m"), "--applyset", "t", "--out", str(plan))
    assert r.code == 1, r
    proc = asyncio.run(signal_on_first_write(env, env.revision(), signal.SIGINT, "--plan", str(plan)))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    keys = written(env)
    assert 0 < len(keys) < N
    [entry] = history_entries(env)
    assert entry["failed"] and entry["counts"] == {"created": len(keys)}, entry
    assert env.dump(f"{env.reserved}claims/") == {}, "the plan's claim is let go"
    history.sync()
    r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t", "--plan", str(plan))
    assert r.code == 3 and "the saved plan is stale" in r.err, r
    r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t")
    assert r.code == 0 and written(env) == set(data), r


def test_an_interrupted_rollback_records_what_it_committed(env: Env, history: Recorder) -> None:
    """`rollback --apply` of 20,000 keys takes the same way out: 130, a failed rollback entry for what
    was committed; the rollback run again completes it."""
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata: {name: big}", "spec:",
             f"  prefix: {env.ns}big/", "  data:"]
    for version in (1, 2):
        env.write("m/big.yaml", "\n".join(lines + [f"    k{i:05d}: v{version}-{i}" for i in range(N)]) + "\n")
        history.declare({f"{env.ns}big/k{i:05d}": f"v{version}-{i}" for i in range(N)})
        r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t")
        assert r.code == 0, r
    first = min(int(str(e["id"])) for e in history_entries(env))
    history.declare({f"{env.ns}big/k{i:05d}": f"v1-{i}" for i in range(N)})
    start = env.revision()
    proc_env = {**os.environ, "ETCDSYNC_ENDPOINTS": ",".join(env.endpoints)}
    proc_env["PYTHONPATH"] = str(ROOT) + os.pathsep + proc_env.get("PYTHONPATH", "")

    async def rollback_and_interrupt() -> subprocess.Popen[str]:
        async with Store(Connection(env.endpoints)) as store:
            events = store.watch_prefix(f"{env.ns}big/", start_revision=start + 1)
            # stdout to a file: the rollback prints its whole plan (40,000 lines) before writing, more
            # than a pipe holds while nobody reads it
            proc = subprocess.Popen([sys.executable, "-m", "etcdsync", "rollback", str(first), "--apply",
                                     "--reserved-prefix", env.reserved, "--applyset", "t"],
                                    stdout=shown, stderr=subprocess.PIPE, text=True,
                                    env=proc_env, cwd=env.tmp, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            async for batch in events:
                if batch.events:
                    break
                assert proc.poll() is None, f"the rollback ended before writing: {proc.communicate()}"
                assert time.monotonic() < deadline, "the rollback wrote nothing within 30 s"
            proc.send_signal(signal.SIGINT)
            await events.aclose()  # type: ignore[attr-defined]
        return proc

    with open(env.tmp / "rollback.out", "w") as shown:
        proc = asyncio.run(rollback_and_interrupt())
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    back = {k for k, v in env.dump(f"{env.ns}big/").items() if v.startswith(b"v1-")}
    assert 0 < len(back) < N, f"{len(back)} of {N} keys rolled back: the interrupt did not land mid-rollback"
    entry = history_entries(env)[0]
    assert entry["kind"] == "rollback" and entry["failed"], entry
    assert entry["counts"] == {"updated": len(back)}, (entry["counts"], len(back))
    history.sync()
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved, "--applyset", "t")
    assert r.code == 0, r
    assert all(v.startswith(b"v1-") for v in env.dump(f"{env.ns}big/").values())
