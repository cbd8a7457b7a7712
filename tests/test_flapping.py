"""End to end: a writer that fights the daemon makes the key flap; the daemon leaves it alone for the
cool-down (repairs and full reconciles alike), says so on /readyz and /metrics, then repairs again."""

from __future__ import annotations

import time

from conftest import Env, wait_for
from history import Recorder
from test_daemon import Daemon, daemons, manifest  # noqa: F401  (daemons: a fixture)


def test_a_fought_key_is_left_alone_for_the_cool_down(env: Env, history: Recorder, daemons: list[Daemon]) -> None:  # noqa: F811
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir, "--resync", "1s", "--flap-threshold", "3", "--flap-window", "60s", "--flap-cooldown", "6s")
    daemons.append(d)
    d.wait_ready()
    key = f"{env.ns}app/a"
    for i in range(3):
        env.put(key, f"fight-{i}")
        wait_for(lambda: env.get(key) == b"one", 10, f"repair {i} ({d.logs()[-600:]})")
    # (the repair is visible in etcd a moment before the daemon counts it)
    wait_for(lambda: d.ready().get("flapping") == [key], 5, f"readyz lists the flapping key ({d.logs()[-600:]})")
    assert "flapping" in d.logs()
    assert "etcdsync_flapping_keys 1.0" in d.get("/metrics")[1]

    env.put(key, "fight-3")
    started = time.monotonic()
    time.sleep(2.0)                       # two resync periods: full reconciles must hold it too
    assert env.get(key) == b"fight-3", "a flapping key was repaired during its cool-down"
    assert time.monotonic() - started < 6, "the check ran past the cool-down (machine too slow to tell)"
    wait_for(lambda: env.get(key) == b"one", 15, f"repaired after the cool-down ({d.logs()[-600:]})")
    wait_for(lambda: "flapping" not in d.ready(), 5, "readyz forgets the key")
    assert "etcdsync_flapping_keys 0.0" in d.get("/metrics")[1]
    assert d.stop() == 0


def test_the_end_of_a_cool_down_repairs_without_waiting_for_the_resync(env: Env, history: Recorder,
                                                                        daemons: list[Daemon]) -> None:  # noqa: F811
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir, "--resync", "1h", "--flap-threshold", "2", "--flap-cooldown", "2s")
    daemons.append(d)
    d.wait_ready()
    key = f"{env.ns}app/a"
    for i in range(2):
        env.put(key, f"fight-{i}")
        wait_for(lambda: env.get(key) == b"one", 10, f"repair {i} ({d.logs()[-600:]})")
    env.put(key, "fight-2")
    wait_for(lambda: env.get(key) == b"one", 15, f"repaired when the cool-down ended ({d.logs()[-600:]})")
    assert d.stop() == 0
