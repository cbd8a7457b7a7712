"""Partial apply: `-l/--selector` (documents by metadata.labels) and `--prune=false`: the real CLI
against real etcd, with etcd's history checked (tests/history.py). The pure parts (selector parsing,
selection of a loaded tree, the planner's pruning under a selection) are tests/test_selection.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ROOT, Env, wait_for
from history import Recorder

from etcdsync.core.inventory import Entry, decode_chunk

# ------------------------------------------------------------------------------------------------
# end to end: the CLI against etcd

DOCS = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: a, labels: {{team: a}}}}
spec:
  prefix: {ns}a/
  data: {{{a}}}
---
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: b, labels: {{team: b}}}}
spec:
  prefix: {ns}b/
  data: {{{b}}}
"""


def write_docs(env: Env, a: dict[str, str], b: dict[str, str], hist: Recorder | None = None) -> Path:
    """The two-document tree; with `hist`, declare the whole tree's keys first."""
    ns = env.ns
    if hist is not None:
        hist.declare({**{f"{ns}a/{k}": v for k, v in a.items()}, **{f"{ns}b/{k}": v for k, v in b.items()}})
    body = DOCS.format(ns=ns, a=", ".join(f"{k}: '{v}'" for k, v in a.items()),
                       b=", ".join(f"{k}: '{v}'" for k, v in b.items()))
    path = env.tmp / "m" / "tree.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path.parent


def owned_keys(env: Env) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for k, v in env.dump(env.reserved + "sets/").items():
        out.update(decode_chunk(k, v))
    return out


def test_a_selector_apply_prunes_only_its_documents_keys(env: Env, history: Recorder) -> None:
    ns = env.ns
    env.put(f"{ns}a/stranger", "not ours")
    m = write_docs(env, {"x": "1", "y": "1"}, {"x": "1", "y": "1"}, history)
    assert env.cli("apply", "-f", str(m), "--applyset", "t").code == 0
    assert owned_keys(env)[f"{ns}a/x"] == Entry(f"{ns}a/", document="ConfigSet/a")
    # both documents lose y and change x
    m = write_docs(env, {"x": "2"}, {"x": "2"}, history)
    r = env.cli("diff", "-f", str(m), "--applyset", "t", "-l", "team=a")
    assert r.code == 1, r
    assert "0 to create, 1 to update, 1 to delete, 0 unchanged" in r.out, r.out
    assert f"{ns}b/" not in r.out
    assert r.err.strip() == ("note: -l team=a: 2 owned keys of other documents or no longer declared left out of the "
                             "plan (neither written nor pruned)"), r.err
    r = env.cli("apply", "-f", str(m), "--applyset", "t", "-l", "team=a", "-o", "json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert sorted((c["key"], c["action"]) for c in doc["changes"]) == [(f"{ns}a/x", "update"), (f"{ns}a/y", "delete")]
    assert env.get(f"{ns}a/x") == b"2" and env.get(f"{ns}a/y") is None
    assert env.get(f"{ns}b/x") == b"1" and env.get(f"{ns}b/y") == b"1", "an unselected document is not touched"
    assert f"{ns}b/y" in owned_keys(env), "and its keys stay owned"
    assert env.get(f"{ns}a/stranger") == b"not ours"
    # --selector is the long form; != selects the other document
    r = env.cli("diff", "-f", str(m), "--applyset", "t", "--selector", "team!=a")
    assert r.code == 1 and "0 to create, 1 to update, 1 to delete, 0 unchanged" in r.out, r.out
    # a full apply converges the rest
    r = env.cli("apply", "-f", str(m), "--applyset", "t")
    assert r.code == 0 and "1 updated, 1 deleted" in r.out, r.out
    assert env.get(f"{ns}b/y") is None and env.get(f"{ns}a/stranger") == b"not ours"
    assert history.unconverged() == []


def test_a_selector_apply_never_prunes_keys_of_a_removed_or_moved_document(env: Env, history: Recorder) -> None:
    ns = env.ns
    m = write_docs(env, {"x": "1", "moving": "1"}, {"x": "1"}, history)
    env.write("m/c.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: c, labels: {team: a}}\n"
                          "spec: {prefix: {ns}c/, data: {k: '1'}}\n")
    history.declare({f"{ns}a/x": "1", f"{ns}a/moving": "1", f"{ns}b/x": "1", f"{ns}c/k": "1"})
    assert env.cli("apply", "-f", str(m), "--applyset", "t").code == 0
    # document c (labelled team=a) is deleted; a's key "moving" moves to b (same key: b gets prefix ns)
    (m / "c.yaml").unlink()
    m = write_docs(env, {"x": "1"}, {"x": "1"}, None)
    (m / "moved.yaml").write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: moved, labels: {team: b}}\n"
                                  f"spec: {{prefix: {ns}a/, data: {{moving: '1'}}}}\n")
    history.declare({f"{ns}a/x": "1", f"{ns}a/moving": "1", f"{ns}b/x": "1"})
    r = env.cli("apply", "-f", str(m), "--applyset", "t", "-l", "team=a")
    assert r.code == 0 and "in sync" in r.out, r
    assert env.get(f"{ns}c/k") == b"1", "a removed document's labels are unknown: its keys are not pruned by -l"
    assert env.get(f"{ns}a/moving") == b"1", "a key another (unselected) document declares is never pruned"
    r = env.cli("apply", "-f", str(m), "--applyset", "t", "-l", "team=b")
    assert r.code == 0 and "(1 ownership record updated)" in r.out, r.out
    assert owned_keys(env)[f"{ns}a/moving"].document == "ConfigSet/moved"
    r = env.cli("apply", "-f", str(m), "--applyset", "t")
    assert r.code == 0 and "1 deleted" in r.out, r.out
    assert env.get(f"{ns}c/k") is None


def test_a_selector_that_selects_nothing_is_exit_2_and_writes_nothing(env: Env, history: Recorder) -> None:
    m = write_docs(env, {"x": "1"}, {"x": "1"}, history)
    rev = env.revision()
    for cmd in ("diff", "apply"):
        r = env.cli(cmd, "-f", str(m), "--applyset", "t", "-l", "team=c")
        assert r.code == 2, r
        assert r.err.strip() == ("error: -l/--selector 'team=c' selects none of the 2 ConfigSet and Service documents "
                                 "(labels in the manifests: team=a, team=b)"), r.err
        assert r.out == ""
    assert env.untouched_since(rev)


@pytest.mark.parametrize("flags, line", [
    (("-l", "team"), "error: -l/--selector 'team': term 'team' is not key=value or key!=value"),
    (("-l", ""), "error: -l/--selector: empty selector (use key=value[,key=value] or key!=value)"),
    (("--prune", "maybe"), "error: Invalid value for '--prune': 'maybe' is not one of 'true', 'false'."),
    (("--prune=",), "error: Invalid value for '--prune': '' is not one of 'true', 'false'."),
])
def test_bad_partial_apply_flags_are_one_line_exit_2_from_the_real_cli(env: Env, history: Recorder,
                                                                      flags: tuple[str, ...], line: str) -> None:
    m = write_docs(env, {"x": "1"}, {"x": "1"}, history)
    rev = env.revision()
    r = env.run("apply", "-f", str(m), "--applyset", "t", *flags)
    assert r.code == 2, r
    assert line in r.err and "Traceback" not in r.err, r.err
    assert env.untouched_since(rev)


def test_prune_false_writes_puts_only_and_keeps_the_removed_keys_owned(env: Env, history: Recorder) -> None:
    ns = env.ns
    m = write_docs(env, {"x": "1", "y": "1"}, {"x": "1"}, history)
    assert env.cli("apply", "-f", str(m), "--applyset", "t").code == 0
    m = write_docs(env, {"x": "2", "z": "1"}, {"x": "1"}, history)
    assert env.cli("diff", "-f", str(m), "--applyset", "t", "--prune=false").code == 1
    r = env.run("apply", "-f", str(m), "--applyset", "t", "--prune=false")   # the real CLI, kubectl's spelling
    assert r.code == 0, r
    assert "applied: 1 created, 1 updated, 0 deleted" in r.out, r.out
    assert "note: --prune=false: 1 owned key of other documents or no longer declared left out of the plan" in r.err
    assert env.get(f"{ns}a/y") == b"1" and env.get(f"{ns}a/z") == b"1" and env.get(f"{ns}a/x") == b"2"
    assert f"{ns}a/y" in owned_keys(env), "a key left out by --prune=false stays in the inventory"
    # in sync apart from the prune: diff --prune false says so
    assert env.cli("diff", "-f", str(m), "--applyset", "t", "--prune", "false").code == 0
    r = env.cli("apply", "-f", str(m), "--applyset", "t", "--prune=true")
    assert r.code == 0 and "0 created, 0 updated, 1 deleted" in r.out, r.out
    assert env.get(f"{ns}a/y") is None and f"{ns}a/y" not in owned_keys(env)
    assert history.unconverged() == []


def test_run_with_a_selector_reconciles_and_repairs_only_its_documents(env: Env, history: Recorder) -> None:
    import os
    import signal
    import subprocess
    import sys

    from etcdsync.local.etcdbin import free_ports

    ns = env.ns
    m = write_docs(env, {"x": "1"}, {"x": "1"}, history)
    assert env.cli("apply", "-f", str(m), "--applyset", "t").code == 0
    m = write_docs(env, {"x": "2"}, {"x": "2", "new": "1"}, history)
    port = free_ports(1)[0]
    log = env.tmp / "daemon.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "etcdsync", "run", "-f", str(m), "--applyset", "t", "-l", "team=a",
                                 "--reserved-prefix", env.reserved, "--endpoints", ",".join(env.endpoints),
                                 "--metrics-addr", f"127.0.0.1:{port}", "--debounce", "100ms", "--resync", "1s"],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: env.get(f"{ns}a/x") == b"2", 20, lambda: f"selected document applied\n{log.read_text()[-1500:]}")
        # drift on a selected key is repaired; on an unselected (owned) key it is left alone
        env.put(f"{ns}a/x", "drift")
        env.put(f"{ns}b/x", "drift")
        wait_for(lambda: env.get(f"{ns}a/x") == b"2", 5, "selected drift repaired")
        time.sleep(1.5)   # a resync too
        assert env.get(f"{ns}b/x") == b"drift" and env.get(f"{ns}b/new") is None
        # an edit that leaves the selector matching nothing keeps the last good state
        (m / "tree.yaml").write_text((m / "tree.yaml").read_text().replace("team: a", "team: z"))
        wait_for(lambda: "selects none" in log.read_text(), 5, "the empty selection is reported")
        env.put(f"{ns}a/x", "drift-again")
        wait_for(lambda: env.get(f"{ns}a/x") == b"2", 5, "the last good selection is still enforced")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
