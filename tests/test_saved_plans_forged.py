"""A saved plan file is untrusted input (it travels through CI artifacts): against real etcd, a
hand-edited or forged plan must not make `etcdsync apply --plan` write anything a normal apply with the
same manifests and flags would not write. Every change of the file is checked again at apply time
against a fresh plan of the manifests and etcd, and the guards (ownership, leases, --take-ownership,
the deletion guard) run again with apply's own flags: a change that is not exactly what the fresh plan
calls for is refused (exit 3, one line naming the key, nothing written)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from history import Recorder

from etcdsync.core.inventory import Entry, encode_chunk, inventory_prefix


def write_manifest(env: Env, data: dict[str, str], name: str = "app") -> Path:
    body = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in data.items()) or "    {}\n"
    if not data:
        body = ""
    path = env.tmp / f"m-{name}" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec_data = f"  data:\n{body}" if data else "  data: {}\n"
    path.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: %s}\nspec:\n"
                    "  prefix: %sapp/\n%s" % (name, env.ns, spec_data))
    return path.parent


def keys(env: Env, data: dict[str, str]) -> dict[str, str]:
    return {f"{env.ns}app/{k}": v for k, v in data.items()}


def change(key: str, action: str, **kw: Any) -> dict[str, Any]:
    prefix = kw.pop("prefix", key.rsplit("/", 1)[0] + "/")
    c = {"key": key, "action": action, "revision": 0, "prefix": prefix, "policy": "enforce", "prune": True,
         "secret": False, "own": action == "create", "retag": False, "owner": None, "lease": 0, "owned": None,
         "value": None, "note": "", "document": "ConfigSet/app"}
    c.update(kw)
    return c


def make_plan(env: Env, *, base: dict[str, str] | None = None, to: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Apply `base` as apply set 's', then save a genuine plan to `to`: (manifest dir, plan file)."""
    base = {"a": "1"} if base is None else base
    to = {"a": "2"} if to is None else to
    m = write_manifest(env, base)
    assert env.cli("apply", "-f", str(m), "--applyset", "s").code == 0
    m = write_manifest(env, to)
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--applyset", "s", "--out", str(plan))
    assert r.code == 1, r.err
    return m, plan


def forge(plan: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(plan.read_text())
    edit(doc)
    plan.write_text(json.dumps(doc))


def refused(env: Env, m: Path, plan: Path, *needles: str, flags: tuple[str, ...] = ()) -> None:
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), *flags)
    assert r.code == 3, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    for needle in needles:
        assert needle in r.err, r.err
    assert "Traceback" not in r.err
    assert env.untouched_since(rev), "a forged plan wrote something"


def test_a_forged_plan_cannot_write_a_key_outside_the_declared_prefixes(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    outside = f"{env.ns}elsewhere/x"
    forge(plan, lambda d: d["changes"].append(change(outside, "create", value="pwned")))
    refused(env, m, plan, outside, "not declared by the manifests")
    assert env.get(outside) is None


def test_a_forged_plan_cannot_write_under_the_reserved_prefix(env: Env, history: Recorder) -> None:
    """A forged inventory chunk for another apply set would make that set 'own' (and prune) a key it
    never wrote; an election key or an apply marker would fool the daemon or the views."""
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    victim = f"{env.ns}precious/db"
    env.put(victim, "keep me")
    chunk = f"{inventory_prefix(env.reserved, 'victim')}ffffffffffffffff"
    forged = encode_chunk({victim: Entry(f"{env.ns}precious/", True, False)}).decode()
    forge(plan, lambda d: d["changes"].append(change(chunk, "create", value=forged, own=False,
                                                     prefix=env.reserved)))
    refused(env, m, plan, chunk)
    assert env.get(chunk) is None


def test_a_forged_plan_cannot_delete_a_key_it_does_not_own(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    theirs = f"{env.ns}app/theirs"
    rev = env.put(theirs, "someone else's")
    forge(plan, lambda d: d["changes"].append(change(theirs, "delete", revision=rev, own=False)))
    refused(env, m, plan, theirs, "not declared by the manifests")
    assert env.get(theirs) == b"someone else's"


def test_a_forged_plan_cannot_delete_a_declared_key(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1", "b": "1"}))
    m, plan = make_plan(env, base={"a": "1", "b": "1"}, to={"a": "2", "b": "1"})
    b = f"{env.ns}app/b"
    rev = env.kv(b).mod_revision
    owned = {"prefix": f"{env.ns}app/", "prune": True, "secret": False, "document": "ConfigSet/app"}
    forge(plan, lambda d: d["changes"].append(change(b, "delete", revision=rev, own=False, owned=owned)))
    refused(env, m, plan, b, "the manifests call for no write")
    assert env.get(b) == b"1"


@pytest.mark.parametrize("field, forged, message", [
    ("value", "evil", "the plan's value is not the value the manifests declare"),
    ("prune", False, "the plan's prune differ"),
    ("policy", "create-only", "the plan's policy differ"),
    ("own", True, "the plan's own differ"),
    ("action", "delete", "the plan says delete, the manifests and etcd call for update"),
])
def test_a_forged_plan_cannot_change_what_a_planned_key_gets(env: Env, history: Recorder, field: str, forged: Any,
                                                             message: str) -> None:
    """The value (non-secret, in clear in the file) or a flag of a planned change edited in the file."""
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    forge(plan, lambda d: d["changes"][0].update({field: forged, **({"value": None} if forged == "delete" else {})}))
    refused(env, m, plan, f"{env.ns}app/a: {message}")
    assert env.get(f"{env.ns}app/a") == b"1"


def test_a_plan_whose_key_the_manifests_now_declare_otherwise_is_refused(env: Env, history: Recorder) -> None:
    """Not only forgery: the manifests changed a planned key's value after the plan was made. Writing
    the planned value would write an older manifest's value over the newer one's intent."""
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    m = write_manifest(env, {"a": "3"})
    refused(env, m, plan, f"{env.ns}app/a", "not the value the manifests declare")
    history.declare(keys(env, {"a": "3"}))
    assert env.cli("apply", "-f", str(m), "--applyset", "s").code == 0


def test_a_forged_plan_cannot_take_a_key_of_another_apply_set(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1", "shared": "theirs"}))
    other = write_manifest(env, {"shared": "theirs"}, name="other")
    assert env.cli("apply", "-f", str(other), "--applyset", "other").code == 0
    m, plan = make_plan(env)
    # the manifests of 's' declare it too: a genuine diff refuses (conflict) and writes no file
    m = write_manifest(env, {"a": "2", "shared": "mine"})
    shared = f"{env.ns}app/shared"
    rev = env.kv(shared).mod_revision
    forge(plan, lambda d: d["changes"].append(change(shared, "update", revision=rev, own=True, owner="other",
                                                     value="mine")))
    refused(env, m, plan, shared, "owned by apply set 'other'", "--take-ownership")
    assert env.get(shared) == b"theirs"


def test_a_forged_plan_cannot_take_a_key_held_under_another_clients_lease(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    m = write_manifest(env, {"a": "2", "leader": "me"})
    leader = f"{env.ns}app/leader"
    lease = env.gw.lease_grant(60)
    rev = env._outside(env.gw.put(leader, "them", lease=lease))
    forge(plan, lambda d: d["changes"].append(change(leader, "update", revision=rev, own=True, lease=lease,
                                                     value="me")))
    refused(env, m, plan, leader, "held by lease")
    kv = env.kv(leader)
    assert kv.value == b"them" and kv.lease == lease


@pytest.mark.parametrize("flag", ["--allow-empty", "--take-ownership"])
def test_the_guards_run_again_with_applys_own_flags(env: Env, history: Recorder, flag: str) -> None:
    """A plan made with --allow-empty (or --take-ownership) is applied only when apply is given it
    too: the CD step decides, not the file."""
    if flag == "--allow-empty":
        history.declare(keys(env, {"a": "1"}))
        m, _ = make_plan(env)
        m = write_manifest(env, {})
        needle = "would own nothing afterwards"
        final: dict[str, str] = {}
    else:
        history.declare(keys(env, {"shared": "theirs"}))
        other = write_manifest(env, {"shared": "theirs"}, name="other")
        assert env.cli("apply", "-f", str(other), "--applyset", "other").code == 0
        m = write_manifest(env, {"shared": "mine"})
        needle = "owned by apply set 'other'"
        final = {"shared": "mine"}
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--applyset", "s", "--out", str(plan), flag)
    assert r.code == 1, r.err
    refused(env, m, plan, needle, flag)
    history.declare(keys(env, final))
    if flag == "--take-ownership":
        history.allow_release(f"{env.ns}app/shared")
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), flag)
    assert r.code == 0, r.err
    assert env.dump(f"{env.ns}app/") == {k: v.encode() for k, v in keys(env, final).items()}


def test_the_deletion_guard_runs_again_with_applys_max_deletes(env: Env, history: Recorder) -> None:
    history.declare(keys(env, {"a": "1", "b": "1", "c": "1", "d": "1"}))
    m, plan = make_plan(env, base={"a": "1", "b": "1", "c": "1", "d": "1"}, to={"a": "1"})
    refused(env, m, plan, "3 keys to delete, more than --max-deletes 2", flags=("--max-deletes", "2"))
    history.declare(keys(env, {"a": "1"}))
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), "--max-deletes", "2", "--force")
    assert r.code == 0, r.err
    assert env.dump(f"{env.ns}app/") == {f"{env.ns}app/a": b"1"}


def test_forged_counts_and_notes_are_not_what_is_shown(env: Env, history: Recorder) -> None:
    """The summary and the diff shown come from the checked changes, not from the file's counts or
    notes (which could hide a delete or put escape sequences on the terminal)."""
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    history.declare(keys(env, {"a": "2"}))

    def edit(d: dict[str, Any]) -> None:
        d["counts"] = {"create": 0, "update": 0, "delete": 0}
        d["changes"][0]["note"] = "\x1b]0;owned\x07\x1b[2J"
        d["changes"][0]["document"] = "\x1b[31mConfigSet/x"

    forge(plan, edit)
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 0, r.err
    assert "\x1b" not in r.out + r.err
    assert "1 to update" in r.out, r.out


# -- malformed plan files: one line, exit 2, nothing written, bounded in time ----------------------------

def _doc(env: Env) -> dict[str, Any]:
    return {"format": "etcdsync-plan", "version": 1, "applyset": "s", "reservedPrefix": env.reserved,
            "clusterId": "cdf818194e3a8c32", "revision": 7, "manifestDigest": "sha256:00", "salt": "0" * 32,
            "ownedBefore": 0, "counts": {"create": 1},
            "commit": {"transactions": 1, "maxOperations": 128, "atomic": True},
            "changes": [change(f"{env.ns}app/a", "create", value="1")]}


MALFORMED: dict[str, Callable[[Env, Path], str]] = {
    # name -> write the file at the path given (or return another path), returning a word the error must hold
    "huge (sparse 4 GiB)": lambda env, p: (open(p, "wb").truncate(4 << 30), "too large")[1],
    "deeply nested": lambda env, p: (p.write_text("[" * 200_000 + "]" * 200_000), "nested too deeply")[1],
    "not UTF-8": lambda env, p: (p.write_bytes(b'{"format": "etcdsync-plan\xff"}'), "not UTF-8")[1],
    "NaN": lambda env, p: (p.write_text(json.dumps({**_doc(env), "revision": float("nan")})), "NaN is not")[1],
    "Infinity": lambda env, p: (p.write_text(json.dumps(_doc(env)).replace('"revision": 7', '"revision": Infinity')),
                                "Infinity is not")[1],
    "duplicate field": lambda env, p: (p.write_text(json.dumps(_doc(env))[:-1] + ', "applyset": "other"}'),
                                       "field 'applyset' given twice")[1],
    "a 5000-digit number": lambda env, p: (p.write_text(json.dumps(_doc(env)).replace('"revision": 7',
                                                                                      '"revision": ' + "9" * 5000)),
                                           "number too large")[1],
    "revision over int64": lambda env, p: (p.write_text(json.dumps({**_doc(env), "revision": 1 << 70})),
                                           "'revision' is out of range")[1],
    "lease over int64": lambda env, p: (p.write_text(json.dumps(_doc(env)).replace('"lease": 0', f'"lease": {1 << 64}')),
                                        "'lease' is out of range")[1],
    "a directory": lambda env, p: (p.mkdir(), "is a directory")[1],   # click's check, one line too
    "/dev/zero": lambda env, p: (p.symlink_to("/dev/zero"), "not a regular file")[1],
    "a FIFO": lambda env, p: (os.mkfifo(p), "not a regular file")[1],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_plan_file_is_one_line_exit_2_nothing_written(env: Env, case: str) -> None:
    m = write_manifest(env, {"a": "1"})
    path = env.tmp / "plan.json"
    needle = MALFORMED[case](env, path)
    rev = env.revision()
    started = time.monotonic()
    r = env.run("apply", "-f", str(m), "--plan", str(path), timeout=30)   # a subprocess: a hang is a failure
    assert time.monotonic() - started < 20
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: ") and "Traceback" not in r.err, r.err
    assert needle in r.err, r.err
    assert "internal error" not in r.err
    assert env.untouched_since(rev)


@pytest.mark.parametrize("key", ["\x1b[2J\x1b]0;pwned\x07", "\u202eevil", "\ud800lone"])
def test_a_plan_files_keys_never_reach_the_terminal_raw(env: Env, history: Recorder, key: str) -> None:
    """A key with control, bidi characters or a lone surrogate, from the file: escaped in every line,
    refused (it is declared by no manifest), nothing written."""
    history.declare(keys(env, {"a": "1"}))
    m, plan = make_plan(env)
    bad = f"{env.ns}app/{key}"
    forge(plan, lambda d: d["changes"].append(change(bad, "create", value="x")))
    for output in ("text", "json"):
        rev = env.revision()
        r = env.run("apply", "-f", str(m), "--plan", str(plan), "-o", output)
        assert r.code in (2, 3), (r.code, r.err)
        assert not any(ch in r.out + r.err for ch in "\x1b\x07\u202e"), r.err
        assert "\\ud800" in r.err + r.out or "\ud800" not in key
        assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
        assert env.untouched_since(rev)
