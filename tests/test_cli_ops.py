"""The operator commands against a real etcd: get, ls, put, del, inventory, applysets, teardown,
services ls/register, completion, --version. Every test that writes is judged by etcd's history."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Env, wait_for

from etcdsync.cli.keys import read
from etcdsync.cli.main import version_text
from etcdsync.cli.output import safe_text
from etcdsync.etcd.store import Put

APP = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  prefix: {ns}config/app/
  data:
    db/url: postgres://db/app
    retry: 5
    token: {fromEnv: OPS_TOKEN, secret: true}
    keep: {value: seed, prune: false}
"""
CANARY = "canary-OPS-91c2"


def _rev(text: str) -> int:
    m = re.search(r"revision (\d+)", text)
    assert m, text
    return int(m.group(1))


def _apply(env: Env, history: Any, path: Path, applyset: str = "app") -> None:
    history.declare_files(path, reserved_prefix=env.reserved)
    r = env.cli("apply", "-f", str(path), "--applyset", applyset)
    assert r.code == 0, r


def _ops(env: Env, *args: str) -> Any:
    return env.cli(*args, "--reserved-prefix", env.reserved, env={"OPS_TOKEN": CANARY})


def _key_events(history: Any, key: str) -> list[Any]:
    history.sync()
    return [e for e in history.snapshot() if e.key == key]


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_TOKEN", CANARY)


# -- pure ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    (b"plain value", "plain value"),
    (b"caf\xc3\xa9 \xe2\x82\xac", "café €"),
    (b"a\x1b[31mred", '"a\\x1b[31mred"'),
    (b"line1\nline2", '"line1\\nline2"'),
    ("abc\u202egnp.exe".encode(), '"abc\\u202egnp.exe"'),         # bidi override
    ("zero\u200bwidth".encode(), '"zero\\u200bwidth"'),
    (b"not utf8 \xff\xfe", '"not utf8 \\xff\\xfe"'),
    (b'"quoted" start', '"\\"quoted\\" start"'),                   # could be read as an escaped value
    (b'back\\slash \x07', '"back\\\\slash \\x07"'),
])
def test_safe_text(raw: bytes, shown: str) -> None:
    assert safe_text(raw) == shown


def test_safe_text_keeps_newlines_for_a_single_value() -> None:
    assert safe_text(b"-----BEGIN-----\nabc\n", newlines=True) == "-----BEGIN-----\nabc\n"
    assert safe_text(b"x\ny\x1b", newlines=True) == '"x\ny\\x1b"'


# -- get / ls -----------------------------------------------------------------------------------------

def test_get_escapes_and_never_shows_a_secret(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    ns = env.ns
    env.put(f"{ns}config/app/evil", b"x\x1b]0;pwned\x07y")

    r = _ops(env, "get", f"{ns}config/app/db/url")
    assert r.code == 0 and r.out == "postgres://db/app\n", r
    r = _ops(env, "get", f"{ns}config/app/evil")
    assert r.code == 0 and r.out == '"x\\x1b]0;pwned\\x07y"\n' and "\x1b" not in r.out, r
    r = _ops(env, "get", f"{ns}config/app/token")
    assert r.code == 0 and r.out.startswith("(secret, sha256:") and CANARY not in r.out, r

    r = _ops(env, "get", f"{ns}config/app/", "--prefix")
    assert r.code == 0, r
    assert f"{ns}config/app/retry = 5" in r.out
    assert f"{ns}config/app/token = (secret, sha256:" in r.out and CANARY not in r.out
    assert "\x1b" not in r.out

    r = _ops(env, "get", f"{ns}config/app/", "--prefix", "-o", "json")
    doc = json.loads(r.out)
    by_key = {k["key"]: k for k in doc["keys"]}
    assert CANARY not in r.out
    assert by_key[f"{ns}config/app/token"]["secret"] is True and by_key[f"{ns}config/app/token"]["value"] is None
    assert by_key[f"{ns}config/app/evil"]["value"] == "x\x1b]0;pwned\x07y"   # exact, JSON-escaped
    assert by_key[f"{ns}config/app/retry"]["owners"] == ["app"]
    assert by_key[f"{ns}config/app/evil"]["owners"] == []

    r = _ops(env, "get", f"{ns}config/app/nope")
    assert r.code == 2 and r.err.strip() == f"error: {ns}config/app/nope: not found", r


def test_ls_owner_column(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    ns = env.ns
    env.put(f"{ns}config/app/stray", "hand written")
    lease = env.gw.lease_grant(60)
    env._outside(env.gw.put(f"{ns}config/app/live", "x", lease=lease))

    r = _ops(env, "ls", f"{ns}config/app/")
    assert r.code == 0, r
    rows = {line.split()[0]: line.split(None, 1)[1] for line in r.out.splitlines()[1:-1]}
    assert rows[f"{ns}config/app/db/url"] == "app"
    assert rows[f"{ns}config/app/stray"] == "-"
    assert rows[f"{ns}config/app/live"] == f"lease {lease:016x}"
    assert "6 keys, 4 owned by an apply set" in r.out
    r = _ops(env, "ls", ns)
    assert "(etcdsync reserved)" in r.out
    doc = json.loads(_ops(env, "ls", f"{ns}config/app/", "-o", "json").out)
    assert {k["key"]: k["owners"] for k in doc["keys"]}[f"{ns}config/app/retry"] == ["app"]


# -- put / del ----------------------------------------------------------------------------------------

def test_put_refuses_owned_keys_names_set_and_file(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    key = f"{env.ns}config/app/retry"
    before = env.kv(key)

    r = _ops(env, "put", key, "7")
    assert r.code == 3, r
    assert r.err.strip() == (f"error: {key}: owned by apply set 'app'; refusing to put, nothing written "
                             "(--force to do it anyway)")
    r = _ops(env, "put", key, "7", "-f", str(f))
    assert r.code == 3, r
    assert f"owned by apply set 'app', declared by ConfigSet/app at {f}:8:5" in r.err, r.err
    assert env.kv(key).mod_revision == before.mod_revision

    r = _ops(env, "put", key, "7", "--force")
    assert r.code == 0 and f"{key}: updated" in r.out and "sets it back" in r.err, r
    history.mark_outside(_rev(r.out))   # a hand write by the operator, not a reconcile
    assert env.get(key) == b"7"
    events = _key_events(history, key)
    assert [(e.type, e.value) for e in events if e.revision > before.mod_revision] == [("put", b"7")]


def test_put_unowned_creates_updates_and_skips_equal_values(env: Env, history: Any) -> None:
    key = f"{env.ns}free/k"
    r = _ops(env, "put", key, "one")
    assert r.code == 0 and f"{key}: created" in r.out, r
    history.mark_outside(_rev(r.out))
    r = _ops(env, "put", key, "two")
    assert r.code == 0 and f"{key}: updated" in r.out, r
    history.mark_outside(_rev(r.out))
    rev = env.revision()
    r = _ops(env, "put", key, "two")
    assert r.code == 0 and "unchanged" in r.out, r
    assert env.untouched_since(rev), "an equal value must not be written again"
    assert [(e.type, e.value) for e in _key_events(history, key)] == [("put", b"one"), ("put", b"two")]


def test_put_refuses_leased_keys(env: Env, history: Any) -> None:
    key = f"{env.ns}services/a/1"
    lease = env.gw.lease_grant(60)
    env._outside(env.gw.put(key, '{"host":"h","port":1}', lease=lease))
    r = _ops(env, "put", key, "x")
    assert r.code == 3 and f"held by lease {lease:016x}" in r.err, r
    r = _ops(env, "del", key)
    assert r.code == 3 and f"held by lease {lease:016x}" in r.err, r
    assert env.kv(key).lease == lease


@pytest.mark.parametrize("args", [("put", "{reserved}sets/x/inventory/1", "{}"),
                                  ("put", "{reserved}ownership", "x", "--force"),
                                  ("del", "{reserved}ownership", "--force"),
                                  ("del", "{ns}", "--prefix", "--force")])
def test_reserved_prefix_is_refused_always(env: Env, history: Any, args: tuple[str, ...]) -> None:
    argv = [a.replace("{reserved}", env.reserved).replace("{ns}", env.ns) for a in args]
    r = _ops(env, *argv)
    assert r.code == 2 and "reserved prefix" in r.err and len(r.err.strip().splitlines()) == 1, r
    assert env.dump(env.reserved) == {}


def test_del_refuses_owned_keys_and_deletes_only_what_it_saw(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    ns = env.ns
    env.put(f"{ns}config/app/stray", "x")
    for i in range(3):
        env.put(f"{ns}loose/{i}", str(i))

    r = _ops(env, "del", f"{ns}config/app/", "--prefix")
    assert r.code == 3 and "owned by apply set 'app'" in r.err and "more keys" in r.err, r
    assert env.get(f"{ns}config/app/stray") == b"x"

    r = _ops(env, "del", f"{ns}loose/", "--prefix")
    assert r.code == 0 and "deleted 3 keys in 1 transaction" in r.out, r
    history.mark_outside(_rev(r.out))
    assert env.dump(f"{ns}loose/") == {}

    r = _ops(env, "del", f"{ns}config/app/stray")
    assert r.code == 0 and "deleted" in r.out, r
    history.mark_outside(_rev(r.out))

    r = _ops(env, "del", f"{ns}config/app/retry", "--force")
    assert r.code == 0 and "still in their apply set's inventory" in r.err, r
    history.mark_outside(_rev(r.out))
    assert env.get(f"{ns}config/app/retry") is None
    r = env.cli("diff", "-f", str(f), "--applyset", "app", "--reserved-prefix", env.reserved,
                env={"OPS_TOKEN": CANARY})
    assert r.code == 1 and f"+ {ns}config/app/retry" in r.out, r   # the next apply re-creates it

    r = _ops(env, "del", f"{ns}nothing/here")
    assert r.code == 0 and "not found; nothing deleted" in r.out


def test_del_prefix_batches_within_the_server_limit(env: Env, history: Any) -> None:
    for i in range(300):
        env.put(f"{env.ns}many/{i:03d}", "v")
    r = _ops(env, "del", f"{env.ns}many/", "--prefix")
    assert r.code == 0 and "deleted 300 keys in 3 transactions (not atomic as a whole)" in r.out, r
    history.sync()
    revs = {e.revision for e in history.snapshot() if e.type == "delete" and e.key.startswith(f"{env.ns}many/")}
    assert len(revs) == 3
    for rev in revs:
        history.mark_outside(rev)
    assert env.dump(f"{env.ns}many/") == {}


def test_guards_fail_when_ownership_changes_between_read_and_write(env: Env, history: Any) -> None:
    """The race the guarded transaction exists for: an apply adopts or creates the key after the
    operator's command read it as unowned. Without the fence / key compares the hand write wins."""
    from etcdsync.cli.keys import _guards

    ns = env.ns
    fresh, created = f"{ns}config/app/fresh", f"{ns}config/app/created"
    doc = """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: app}
        spec:
          prefix: {ns}config/app/
          data: DATA
        """
    _apply(env, history, env.write("m/v1.yaml", doc.replace("DATA", "{other: o}")))
    env.put(fresh, "f")      # exists, owned by nobody

    async def race(store: Any) -> list[bool]:
        seen_fresh = await read(store, env.reserved, fresh, prefix=False)
        seen_created = await read(store, env.reserved, created, prefix=False)
        assert fresh not in seen_fresh.owners and created not in seen_created.owners and not seen_created.kvs
        # an apply now adopts `fresh` (same value: only the ownership fence moves) and creates `created`
        v2 = env.write("m/v2.yaml", doc.replace("DATA", "{other: o, fresh: f, created: c}"))
        history.declare_files(v2, reserved_prefix=env.reserved)
        r = env.run("apply", "-f", str(v2), "--applyset", "app")   # another process: this loop is busy
        assert r.code == 0 and "1 created" in r.out and "1 adopted" in r.out, r
        a = await store.txn(_guards(seen_fresh, [seen_fresh.kvs[0]]), [Put(fresh, b"hand")])
        b = await store.txn(_guards(seen_created, [created]), [Put(created, b"hand")])
        return [a.succeeded, b.succeeded]

    assert env.store_call(race) == [False, False]
    assert env.get(fresh) == b"f" and env.get(created) == b"c"


# -- inventory / applysets / teardown -----------------------------------------------------------------

def test_inventory_and_applysets(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    g = env.write("m/other.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: o}\n"
                  "spec: {prefix: '{ns}other/', data: {a: '1'}}\n")
    _apply(env, history, g, applyset="other")
    env.delete(f"{env.ns}config/app/retry")

    r = _ops(env, "inventory", "--applyset", "app")
    assert r.code == 0, r
    lines = {line.split()[0]: line.split()[1:] for line in r.out.splitlines()[2:]}
    assert lines[f"{env.ns}config/app/token"] == [f"{env.ns}config/app/", "ConfigSet/app", "present", "prune,secret"]
    assert lines[f"{env.ns}config/app/keep"] == [f"{env.ns}config/app/", "ConfigSet/app", "present", "noprune"]
    assert lines[f"{env.ns}config/app/retry"] == [f"{env.ns}config/app/", "ConfigSet/app", "absent", "prune"]
    assert "other/a" not in r.out
    doc = json.loads(_ops(env, "inventory", "-o", "json").out)
    assert [s["name"] for s in doc["applysets"]] == ["app", "other"]

    r = _ops(env, "applysets")
    assert r.code == 0, r
    rows = [line.split() for line in r.out.splitlines()[1:3]]
    assert rows[0][:2] == ["app", "4"] and rows[1][:2] == ["other", "1"]
    doc = json.loads(_ops(env, "applysets", "-o", "json").out)
    app = doc["applysets"][0]
    assert app["secret"] == 1 and app["inventoryRevision"] > 0 and app["prefixes"] == [f"{env.ns}config/app/"]


def test_teardown(env: Env, history: Any, token: None) -> None:
    f = env.write("m/app.yaml", APP)
    _apply(env, history, f)
    ns = env.ns
    env.put(f"{ns}config/app/stray", "not owned")
    inv = f"{env.reserved}sets/app/"
    assert env.dump(inv)

    r = _ops(env, "teardown", "--applyset", "app")       # stdin is not a terminal
    assert r.code == 2 and "pass --yes" in r.err, r
    assert f"- {ns}config/app/retry" in r.out and "3 to delete" in r.out
    assert CANARY not in r.out + r.err
    r = _ops(env, "teardown", "--applyset", "app", "--yes", "--max-deletes", "2")
    assert r.code == 3 and "more than --max-deletes 2" in r.err, r
    r = _ops(env, "teardown", "--applyset", "nosuch", "--yes")
    assert r.code == 2 and "owns nothing" in r.err, r
    assert len(env.dump(f"{ns}config/app/")) == 5

    history.declare({})
    history.allow_release(f"{ns}config/app/keep")
    r = _ops(env, "teardown", "--applyset", "app", "--yes")
    assert r.code == 0, r
    assert "3 deleted, 1 released (left in etcd), inventory removed" in r.out
    assert env.dump(f"{ns}config/app/") == {f"{ns}config/app/keep": b"seed", f"{ns}config/app/stray": b"not owned"}
    assert env.dump(inv) == {}
    assert "no apply sets" in _ops(env, "applysets").err


def test_teardown_force_beyond_max_deletes_json(env: Env, history: Any) -> None:
    f = env.write("m/big.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: big}\nspec:\n"
                  "  prefix: '{ns}big/'\n  data:\n" + "".join(f"    k{i}: v{i}\n" for i in range(150)))
    _apply(env, history, f, applyset="big")
    history.declare({})
    r = _ops(env, "teardown", "--applyset", "big", "--yes", "-o", "json")
    assert r.code == 3 and json.loads(r.out)["refused"], r
    r = _ops(env, "teardown", "--applyset", "big", "--yes", "--force", "-o", "json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["summary"]["delete"] == 150 and len(doc["applied"]["results"]) == 150
    assert env.dump(f"{env.ns}big/") == {} and env.dump(env.reserved + "sets/") == {}


# -- services -----------------------------------------------------------------------------------------

def test_services_ls_lists_every_service(env: Env, history: Any) -> None:
    p = f"{env.ns}services/"
    env.put(f"{p}checkout/1", '{"host":"a","port":1}')
    env.put(f"{p}checkout/2", '{"host":"b","port":2}')
    env.put(f"{p}checkout-admin/1", '{"host":"c","port":3}')
    env.put(f"{p}broken/1", "not json")
    r = env.cli("services", "ls", "--prefix", p)
    assert r.code == 0, r
    rows = {line.split()[0]: line.split(None, 1)[1] for line in r.out.splitlines()[1:]}
    assert rows == {"broken": "0  (1 unparsable value skipped)", "checkout": "2", "checkout-admin": "1"}
    doc = json.loads(env.cli("services", "ls", "--prefix", p, "-o", "json").out)
    assert doc["services"][1] == {"name": "checkout", "instances": 2, "unparsable": 0}
    r = env.cli("services", "ls", "checkout", "--prefix", p)       # with a name: the instances, as before
    assert r.code == 0 and r.out.splitlines()[0].split() == ["ID", "HOST", "PORT", "METADATA"], r
    assert len(r.out.splitlines()) == 3


def test_services_register_holds_until_sigterm(env: Env, history: Any) -> None:
    p = f"{env.ns}services/"
    key = f"{p}pay/i1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcdsync", "services", "register", "pay", "i1", "--host", "10.0.0.5", "--port", "8080",
         "--ttl", "5s", "--metadata", "zone=a", "--prefix", p],
        env={**os.environ, "ETCDSYNC_ENDPOINTS": ",".join(env.endpoints),
             "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        kv = wait_for(lambda: env.kv(key), timeout=20, what="registration")
        assert kv.lease != 0
        assert json.loads(kv.value) == {"host": "10.0.0.5", "port": 8080, "metadata": {"zone": "a"}}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"registered {key} under lease {kv.lease:016x}" in out and f"deregistered {key}" in out
    assert env.kv(key) is None, "the lease must be revoked on SIGTERM, not left to expire"
    events = _key_events(history, key)
    assert [e.type for e in events] == ["put", "delete"] and events[0].lease == kv.lease


# -- completion / version -----------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(env: Env, shell: str) -> None:
    r = env.cli("completion", shell)
    assert r.code == 0 and "_ETCDSYNC_COMPLETE" in r.out, r


def test_bash_completion_completes_commands(env: Env, tmp_path: Path) -> None:
    shim = tmp_path / "bin" / "etcdsync"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m etcdsync \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    script = env.cli("completion", "bash").out
    (tmp_path / "c.bash").write_text(script)
    p = subprocess.run(["bash", "-c", f"source {tmp_path}/c.bash; COMP_WORDS=(etcdsync inv); COMP_CWORD=1; COMPREPLY=(); "
                        "_etcdsync_completion etcdsync; echo \"${COMPREPLY[@]}\"; "
                        "COMP_WORDS=(etcdsync services re); COMP_CWORD=2; COMPREPLY=(); _etcdsync_completion etcdsync; "
                        "echo \"${COMPREPLY[@]}\""],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"})
    assert p.stdout.splitlines() == ["inventory", "register"], p


@pytest.mark.parametrize(("args", "line"), [
    (("completion",), "error: Missing argument '{bash|zsh|fish}'. Choose from: bash, zsh, fish "
                      "(see 'etcdsync completion --help')"),
    (("hist",), "error: No such command 'hist'. Did you mean 'history'? (see 'etcdsync --help')"),
    (("aply",), "error: No such command 'aply'. (Did you mean one of: 'apply', 'applysets'?) (see 'etcdsync --help')"),
    (("services", "lss"), "error: No such command 'lss'. Did you mean 'ls'? (see 'etcdsync services --help')"),
    (("xyzzy",), "error: No such command 'xyzzy'. (see 'etcdsync --help')"),
])
def test_usage_errors_are_one_plain_line_with_suggestions(env: Env, args: tuple[str, ...], line: str) -> None:
    """A missing choice lists the choices on the line (not click's escaped line breaks), and a typo in
    a command name suggests the commands it was probably meant to be (also before they were imported)."""
    r = env.cli(*args)
    assert r.code == 2 and r.err.splitlines() == [line] and r.out == "", r


def test_version(env: Env, tmp_path: Path) -> None:
    from importlib.metadata import version

    r = env.cli("--version")
    assert r.code == 0, r
    describe = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--tags"],
                              capture_output=True, text=True).stdout.strip()
    first, second = r.out.splitlines()
    assert first == f"etcdsync {version('etcdsync')} (commit {describe})"
    assert second == f"etcd client: etcd3aio {version('etcd3aio')}"
    assert version_text(tmp_path).splitlines()[0] == f"etcdsync {version('etcdsync')}"   # not a checkout


def test_key_argument_does_not_collide_with_the_tls_key_option(env: Env, history: Any) -> None:
    key = f"{env.ns}plain"
    env.put(key, "value")
    # over plain http the client certificate options are not used; they must not replace KEY
    r = _ops(env, "get", key, "--cert", "client.pem", "--key", "client-key.pem")
    assert r.code == 0 and r.out == "value\n", r


def _on_tty(env: Env, answer: bytes, *args: str) -> tuple[int, str]:
    """Run etcdsync with stdin and stdout on a pseudo-terminal, answer its prompt, return (code, output)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ["ETCDSYNC_ENDPOINTS"] = ",".join(env.endpoints)
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "etcdsync", *args])
    out = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"[y/N]" in out:
            os.write(fd, answer + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_teardown_asks_on_a_terminal(env: Env, history: Any) -> None:
    f = env.write("m/app.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\n"
                  "spec: {prefix: '{ns}tty/', data: {a: '1', b: '2'}}\n")
    _apply(env, history, f)
    code, out = _on_tty(env, b"n", "teardown", "--applyset", "app", "--reserved-prefix", env.reserved)
    assert code == 3 and "Delete 2 keys and the inventory of apply set 'app'?" in out and "nothing deleted" in out, out
    assert len(env.dump(f"{env.ns}tty/")) == 2
    history.declare({})
    code, out = _on_tty(env, b"y", "teardown", "--applyset", "app", "--reserved-prefix", env.reserved)
    assert code == 0 and "2 deleted, 0 released" in out, out
    assert env.dump(f"{env.ns}tty/") == {} and env.dump(env.reserved) == {}
