"""The daemon and the history: a reconcile records an entry, drift repairs are coalesced into one
entry and marked as repairs by `explain`, a flapping key is recorded, and `suspend` stops the daemon's
writes (a hand edit stays) until `resume` (then it is repaired). Real etcd, the daemon a subprocess."""

from __future__ import annotations

import json
import time

from conftest import Env, wait_for
from history import Recorder
from test_daemon import Daemon, daemons, manifest  # noqa: F401 - the fixture

KEY = "app/a"


def entries(env: Env) -> list[dict[str, object]]:
    r = env.cli("history", "--reserved-prefix", env.reserved, "-o", "json")
    assert r.code == 0, r
    return json.loads(r.out)["entries"]  # type: ignore[no-any-return]


def test_explain_marks_the_other_writer_and_the_daemons_repair(env: Env, history: Recorder,
                                                               daemons: list[Daemon]) -> None:
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    key = env.ns + KEY
    wait_for(lambda: any(e["kind"] == "reconcile" for e in entries(env)), 10, "reconcile recorded")
    drift = env.put(key, "hand")
    wait_for(lambda: env.get(key) == b"one", 10, "repaired")
    repaired = env.kv(key).mod_revision
    wait_for(lambda: any(e["kind"] == "repair" for e in entries(env)), 10, lambda: f"repair recorded\n{d.logs()[-1500:]}")
    [rep] = [e for e in entries(env) if e["kind"] == "repair"]
    assert rep["repairs"] == [[key, repaired]] and rep["who"].startswith("etcdsync-run@")  # type: ignore[union-attr]
    r = env.cli("explain", key, "-f", str(mdir), "--reserved-prefix", env.reserved, "-o", "json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["owner"] == "t" and doc["declared"]["policy"] == "enforce"
    assert doc["declared"]["origin"]["value"].endswith("app.yaml:7:5"), doc["declared"]
    assert doc["current"]["value"] == "one" and doc["current"]["modRevision"] == repaired
    rows = {e["revision"]: e for e in doc["history"]["events"]}
    assert rows[drift]["writer"] == "other" and rows[drift]["how"] == "drift (another writer)"
    assert rows[repaired]["writer"] == "etcdsync" and rows[repaired]["how"] == "repair"
    created = min(rows)
    assert rows[created]["how"] == "reconcile" and rows[created]["value"] == "one"
    text = env.cli("explain", key, "-f", str(mdir), "--reserved-prefix", env.reserved)
    assert text.code == 0 and "etcdsync repair (entry" in text.out and "drift (another writer)" in text.out, text.out
    assert "owner:     apply set t" in text.out and "app.yaml:7:5" in text.out
    history.assert_quiet(1.5)     # converged: no more entries either


def test_a_flapping_key_is_recorded(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir, "--flap-threshold", "2", "--flap-window", "30s", "--flap-cooldown", "30s")
    daemons.append(d)
    d.wait_ready()
    key = env.ns + KEY
    for i in range(2):
        env.put(key, f"fight{i}")
        wait_for(lambda: env.get(key) == b"one", 10, "repaired")
    wait_for(lambda: any(key in e.get("flapping", []) for e in entries(env)), 10,  # type: ignore[operator]
             lambda: f"flapping recorded\n{d.logs()[-1500:]}")
    text = env.cli("history", "--reserved-prefix", env.reserved).out
    assert f"flapping: {key}" in text, text


def test_suspend_keeps_a_hand_edit_until_resume(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    key = env.ns + KEY
    r = env.cli("suspend", "--applyset", "t", "--reserved-prefix", env.reserved, "--reason", "hotfix")
    assert r.code == 0 and "suspended" in r.out, r
    wait_for(lambda: d.ready().get("suspended"), 5, "readyz says suspended")
    ready = d.ready()
    assert ready["suspended"]["reason"] == "hotfix" and ready["reconcile"] == "suspended" and ready["ready"]
    assert "etcdsync_suspended 1.0" in d.get("/metrics")[1]
    env.put(key, "hand")               # the emergency hand edit
    manifest(env, a="two")             # and a manifest change: neither is applied while suspended
    time.sleep(0.5)
    history.assert_quiet(1.5)
    assert env.get(key) == b"hand"
    assert "suspended by" in d.logs()
    again = env.cli("suspend", "--applyset", "t", "--reserved-prefix", env.reserved)
    assert again.code == 3 and "suspended already" in again.err, again
    r = env.cli("resume", "--applyset", "t", "--reserved-prefix", env.reserved)
    assert r.code == 0 and "resumed" in r.out, r
    wait_for(lambda: env.get(key) == b"two", 10, lambda: f"repaired after resume\n{d.logs()[-1500:]}")
    wait_for(lambda: d.ready().get("suspended") is False, 5, "readyz says resumed")
    assert "etcdsync_suspended 0.0" in d.get("/metrics")[1]


def test_a_daemon_started_while_suspended_writes_nothing(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    mdir = manifest(env, a="one")
    assert env.cli("suspend", "--applyset", "t", "--reserved-prefix", env.reserved).code == 0
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    assert d.ready()["suspended"]
    history.assert_quiet(1.0)
    assert env.get(env.ns + KEY) is None
    assert env.cli("resume", "--applyset", "t", "--reserved-prefix", env.reserved).code == 0
    wait_for(lambda: env.get(env.ns + KEY) == b"one", 10, "applied after resume")


def test_entries_name_the_digest_of_the_manifests_in_force(env: Env, history: Recorder, daemons: list[Daemon]) -> None:
    """Reconciles and repairs record the digest of the manifests loaded when they wrote (computed once
    per loaded state, again after an edit)."""
    mdir = manifest(env, a="one")
    d = Daemon(env, mdir)
    daemons.append(d)
    d.wait_ready()
    key = env.ns + KEY

    def newest(kind: str) -> str:
        found = [e for e in entries(env) if e["kind"] == kind]
        return str(found[0]["source"]["digest"]) if found else ""  # type: ignore[index]

    wait_for(lambda: newest("reconcile"), 10, "reconcile recorded")
    first = newest("reconcile")
    env.put(key, "hand")
    wait_for(lambda: newest("repair"), 10, lambda: f"repair recorded\n{d.logs()[-1500:]}")
    assert newest("repair") == first
    manifest(env, a="two")
    wait_for(lambda: newest("reconcile") not in ("", first), 10, lambda: f"edit recorded\n{d.logs()[-1500:]}")
    second = newest("reconcile")
    repairs = len([e for e in entries(env) if e["kind"] == "repair"])
    env.put(key, "hand again")
    wait_for(lambda: len([e for e in entries(env) if e["kind"] == "repair"]) > repairs, 10, "second repair recorded")
    assert newest("repair") == second != first
