"""history, explain, rollback, suspend and resume against hostile records and a changed world: entries
hand-written by another client (malformed, huge, escape sequences, impossible times), a rollback that
would take a key the apply set no longer owns, a secret's past values, a garbage suspension record.
Real etcd, the history checker on every test."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Env
from history import Recorder

from etcdsync.core.history import entry_key, make_entry

CONFIG = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: app}}
spec:
  prefix: {ns}app/
  data:
{data}"""
ESC = "\x1b]0;owned\x07\x1b[31m"


def write(env: Env, history: Recorder, data: dict[str, str], secret: tuple[str, ...] = ()) -> Path:
    history.declare({f"{env.ns}app/{k}": v for k, v in data.items()})
    lines = "".join(f"    {k}: {{value: {v}, secret: true}}\n" if k in secret else f"    {k}: {v}\n"
                    for k, v in data.items())
    return env.write("m/app.yaml", CONFIG.format(ns=env.ns, data=lines))


def apply(env: Env, path: Path) -> None:
    r = env.cli("apply", "-f", str(path), "--applyset", "web")
    assert r.code == 0, r


def newest(env: Env) -> int:
    r = env.cli("history", "--reserved-prefix", env.reserved, "--applyset", "web", "-o", "json")
    assert r.code == 0, r
    return int(json.loads(r.out)["entries"][0]["id"])


def clean(*texts: str) -> bool:
    return not any("\x1b" in t or "\x07" in t or "Traceback" in t for t in texts)


def test_hostile_entries_never_crash_history_explain_or_rollback(env: Env, history: Recorder) -> None:
    apply(env, write(env, history, {"a": "one"}))
    good = newest(env)
    hist = f"{env.reserved}history/web/"
    rev = env.revision()
    doc = make_entry(applyset="web", kind="apply", who="x", revisions=[rev + 100], now=1.0).as_json()
    hostile = {
        rev + 101: {**doc, "id": rev + 101, "span": [rev + 100, rev + 101], "time": float("nan")},
        rev + 102: {**doc, "id": rev + 102, "span": [rev + 100, rev + 102], "time": float("inf")},
        rev + 103: {**doc, "id": rev + 103, "span": [rev + 100, rev + 103], "time": 1e300},
        rev + 104: {**doc, "id": rev + 104, "span": [rev + 100, rev + 104], "who": 7},
        rev + 105: {**doc, "id": rev + 105, "span": [rev + 100, rev + 105], "keys": [{"a": 1}]},
        rev + 106: {**doc, "id": rev + 106, "span": [rev + 100, rev + 106], "who": ESC + "who",
                    "keys": [ESC + "key"], "keysTotal": 1, "source": {"commit": ESC + "c", "repository": ESC}},
    }
    for i, d in hostile.items():
        env.put(f"{hist}{i:016d}", json.dumps(d))
    env.put(f"{hist}{rev + 107:016d}", b"\xff\xfe not json " + ESC.encode())
    env.put(f"{hist}{rev + 108:016d}", "[" * 100_000)
    env.put(f"{hist}{rev + 109:016d}", json.dumps({**doc, "who": "w" * 900_000}))
    env.put(f"{hist}x{ESC}", "{}")
    for args in (("history",), ("history", "-o", "json"), ("history", "--applyset", "web")):
        r = env.cli(*args, "--reserved-prefix", env.reserved)
        assert r.code == 0 and clean(r.out, r.err), r
        assert str(good) in r.out, r
    text = env.cli("history", "--reserved-prefix", env.reserved)
    assert "not readable" in text.err and "\\x1b" in text.out and "\\u001b" in text.err, text
    assert str(rev + 106) in text.out and str(rev + 103) not in text.out
    r = env.cli("explain", f"{env.ns}app/a", "--reserved-prefix", env.reserved, "-o", "json")
    assert r.code == 0 and clean(r.out, r.err), r
    assert json.loads(r.out)["history"]["events"][0]["writer"] == "etcdsync", r.out
    r = env.cli("explain", f"{env.ns}app/a", "--reserved-prefix", env.reserved)
    assert r.code == 0 and clean(r.out, r.err), r
    r = env.cli("rollback", str(good), "--reserved-prefix", env.reserved)
    assert r.code == 0 and "nothing to roll back" in r.out and clean(r.out, r.err), r
    r = env.cli("rollback", str(rev + 101), "--reserved-prefix", env.reserved)
    assert r.code == 2 and clean(r.out, r.err) and "not readable" in r.err, r


def test_rollback_never_prints_who_raw(env: Env, history: Recorder) -> None:
    apply(env, write(env, history, {"a": "one"}))
    good = newest(env)
    key = entry_key(env.reserved, "web", good)
    entry = json.loads(env.get(key) or b"")
    entry["who"] = ESC + "mallory"
    env.put(key, json.dumps(entry))
    apply(env, write(env, history, {"a": "two"}))
    r = env.cli("rollback", str(good), "--reserved-prefix", env.reserved)
    assert r.code == 1 and clean(r.out, r.err) and "mallory" in r.out, r


def test_rollback_never_takes_a_key_the_set_does_not_own_now(env: Env, history: Recorder) -> None:
    ns = env.ns
    apply(env, write(env, history, {"a": "one", "c": "mine"}))
    first = newest(env)
    apply(env, write(env, history, {"a": "two"}))             # c pruned: the set owns it no more
    assert env.get(f"{ns}app/c") is None
    env.put(f"{ns}app/c", "someone else's")                   # re-created by another client: unowned
    rev = env.revision()
    for extra in ((), ("--apply",), ("--apply", "-o", "json")):
        r = env.cli("rollback", str(first), *extra, "--reserved-prefix", env.reserved)
        assert r.code == 3 and f"{ns}app/c" in r.err and "not own" in r.err and clean(r.out, r.err), r
    assert env.untouched_since(rev) and env.get(f"{ns}app/c") == b"someone else's"
    # held by a lease now: a conflict as in apply
    env.delete(f"{ns}app/c")
    lease = env.gw.lease_grant(60)
    env._outside(env.gw.put(f"{ns}app/c", "leased", lease=lease))
    rev = env.revision()
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved)
    assert r.code == 3 and f"{ns}app/c" in r.err, r
    assert env.untouched_since(rev)
    # absent now: re-created (what a rollback is for), with the compare of an absent key
    env.delete(f"{ns}app/c")
    history.declare({f"{ns}app/a": "one", f"{ns}app/c": "mine"})
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved)
    assert r.code == 0 and env.get(f"{ns}app/c") == b"mine", r


def test_rollback_of_another_sets_entry_is_refused(env: Env, history: Recorder) -> None:
    apply(env, write(env, history, {"a": "one"}))
    web = newest(env)
    r = env.cli("rollback", str(web), "--applyset", "other", "--apply", "--reserved-prefix", env.reserved)
    assert r.code == 3 and "apply set 'web'" in r.err and "not 'other'" in r.err, r


def test_explain_never_shows_a_secret_in_clear_in_any_revision(env: Env, history: Recorder) -> None:
    apply(env, write(env, history, {"a": "one", "token": "s3cret-1"}, secret=("token",)))
    apply(env, write(env, history, {"a": "one", "token": "s3cret-2"}, secret=("token",)))
    apply(env, write(env, history, {"a": "one"}))             # no longer declared: pruned
    key = f"{env.ns}app/token"
    assert env.get(key) is None
    for args in ((), ("-o", "json"), ("-f", str(env.tmp / "m"))):
        r = env.cli("explain", key, "--reserved-prefix", env.reserved, *args)
        assert r.code == 0 and "s3cret" not in r.out + r.err, r
    # declared again, not secret any more: its earlier (secret) values stay hidden
    apply(env, write(env, history, {"a": "one", "token": "plain"}))
    r = env.cli("explain", key, "--reserved-prefix", env.reserved, "-o", "json", "-f", str(env.tmp / "m"))
    assert r.code == 0 and "s3cret" not in r.out and "plain" in r.out, r


def test_resume_and_suspend_with_a_garbage_record(env: Env, history: Recorder) -> None:
    key = f"{env.reserved}suspend/web"
    r = env.cli("resume", "--applyset", "web", "--reserved-prefix", env.reserved)
    assert r.code == 0 and "was not suspended" in r.out, r
    env.put(key, ESC + "garbage")
    r = env.cli("suspend", "--applyset", "web", "--reserved-prefix", env.reserved)
    assert r.code == 3 and "suspended already" in r.err and clean(r.out, r.err), r
    r = env.cli("resume", "--applyset", "web", "--reserved-prefix", env.reserved)
    assert r.code == 0 and "resumed" in r.out and clean(r.out, r.err), r
    assert env.get(key) is None
