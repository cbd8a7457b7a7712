"""SIGTERM while the daemon's reconcile has transactions in flight (a rolling update of its pod).

The daemon stops sending transactions, waits (bounded) for the ones in flight, records what the
reconcile committed as a failed history entry ("stopped: the daemon is stopping"), takes its
"applying" marker away, and exits 0; a new daemon completes the rest. Before, the stop cancelled the
reconcile wherever it was: in-flight transactions with an unknown outcome, and thousands of keys
written with no history entry.

Real etcd, the daemon a subprocess, SIGTERM sent the moment its first write is seen on a watch; the
history checker runs on the whole test.
"""

from __future__ import annotations

import asyncio
import signal
import time

from conftest import Env, wait_for
from history import Recorder
from test_daemon import Daemon, daemons  # noqa: F401 - the fixture
from test_history_daemon import entries
from test_suspend_in_flight import N, big_manifest, key_revisions

from etcdsync.etcd.store import Store
from etcdsync.settings import Connection


async def stop_on_first_write(env: Env, start: int, started: list[Daemon]) -> None:
    async with Store(Connection(env.endpoints)) as store:
        events = store.watch_prefix(f"{env.ns}big/", start_revision=start + 1)
        started.append(Daemon(env, env.tmp / "m"))
        deadline = time.monotonic() + 30
        async for batch in events:
            if batch.events:
                break
            assert time.monotonic() < deadline, "the daemon wrote nothing within 30 s"
        started[-1].proc.send_signal(signal.SIGTERM)
        await events.aclose()  # type: ignore[attr-defined]


def test_sigterm_mid_reconcile_records_what_was_committed_and_the_next_daemon_completes_it(
        env: Env, history: Recorder, daemons: list[Daemon]) -> None:  # noqa: F811
    data = big_manifest(env)
    history.declare(data)
    asyncio.run(stop_on_first_write(env, env.revision(), daemons))
    [d] = daemons
    assert d.proc.wait(30) == 0, d.logs()[-2000:]
    assert "Traceback" not in d.logs(), d.logs()[-3000:]
    written = key_revisions(env)
    assert 0 < len(written) < N, f"{len(written)} of {N} keys written: the stop did not land mid-reconcile"
    [entry] = entries(env)
    assert entry["failed"] == "stopped: the daemon is stopping", entry
    assert entry["counts"] == {"created": len(written)}, (entry["counts"], len(written))
    assert env.dump(f"{env.reserved}applying/") == {}, "the reconcile's marker is taken away"
    history.sync()
    again = Daemon(env, env.tmp / "m")
    daemons.append(again)
    wait_for(lambda: len(key_revisions(env)) == N, 30, lambda: f"the next daemon completes it\n{again.logs()[-1500:]}")
    assert set(key_revisions(env)) == set(data)
