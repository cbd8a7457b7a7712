"""Partial apply: `-l/--selector` (documents by metadata.labels) and `--prune=false`.

Pure parts first (selector parsing, selection of a loaded tree, the planner's pruning under a
selection), then the real CLI against real etcd, with etcd's history checked (tests/history.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ROOT, Env, wait_for
from history import Recorder

from etcdsync.core.inventory import Chunk, Entry, Inventory, decode_chunk
from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.core.plan import Action, Observed, plan
from etcdsync.core.selector import Requirement, parse_selector, select
from etcdsync.errors import ManifestError, UsageError
from etcdsync.manifest import load_manifests
from etcdsync.settings import Options

# ------------------------------------------------------------------------------------------------
# selector syntax


@pytest.mark.parametrize("text, want", [
    ("a=b", (Requirement("a", True, "b"),)),
    ("a==b", (Requirement("a", True, "b"),)),
    ("a!=b", (Requirement("a", False, "b"),)),
    ("a=b,c=d", (Requirement("a", True, "b"), Requirement("c", True, "d"))),
    (" team = pay , tier!=db ", (Requirement("team", True, "pay"), Requirement("tier", False, "db"))),
    ("app.kubernetes.io/name=web", (Requirement("app.kubernetes.io/name", True, "web"),)),
    ("tier=", (Requirement("tier", True, ""),)),
])
def test_selector_syntax(text: str, want: tuple[Requirement, ...]) -> None:
    assert parse_selector(text) == want


@pytest.mark.parametrize("text, message", [
    ("", "-l/--selector: empty selector (use key=value[,key=value] or key!=value)"),
    ("  ", "-l/--selector: empty selector (use key=value[,key=value] or key!=value)"),
    ("team", "-l/--selector 'team': term 'team' is not key=value or key!=value"),
    ("a=b=c", "-l/--selector 'a=b=c': term 'a=b=c' is not key=value or key!=value"),
    ("=b", "-l/--selector '=b': term '=b' is not key=value or key!=value"),
    ("!a", "-l/--selector '!a': term '!a' is not key=value or key!=value"),
    ("a in (b,c)", "-l/--selector 'a in (b,c)': term 'a in (b' is not key=value or key!=value"),
    ("a=b,", "-l/--selector 'a=b,': empty term (two commas, or a comma at an end)"),
    ("a=b,,c=d", "-l/--selector 'a=b,,c=d': empty term (two commas, or a comma at an end)"),
    ("a b=c", "-l/--selector 'a b=c': term 'a b=c' is not key=value or key!=value"),
    ("a=\x1b", "-l/--selector 'a=\\u001b': contains a control character"),
])
def test_bad_selector_is_one_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_selector(text)
    assert str(e.value) == message


def test_requirements_match_like_kubectl() -> None:
    (eq,) = parse_selector("team=a")
    (ne,) = parse_selector("team!=a")
    assert eq.matches({"team": "a"}) and not eq.matches({"team": "b"}) and not eq.matches({})
    assert not ne.matches({"team": "a"}) and ne.matches({"team": "b"}) and ne.matches({})
    assert str(eq) == "team=a" and str(ne) == "team!=a"


# ------------------------------------------------------------------------------------------------
# a loaded tree narrowed to the selected documents

TREE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: a, labels: {team: pay, tier: web}}
spec: {prefix: /a/, data: {x: "1", y: "2"}}
---
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: b, labels: {team: ops}}
spec: {prefix: /b/, data: {x: "1"}}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: web, labels: {team: pay}}
spec:
  prefix: /services/
  instances: [{id: w1, host: h, port: 1}, {id: w2, host: h, port: 2, ttl: 5s}]
---
apiVersion: etcdsync/v1
kind: ApplySet
metadata: {name: set, labels: {team: pay}}
"""


def load(tmp_path: Path, text: str = TREE, *more: str) -> DesiredState:
    files = []
    for i, t in enumerate((text, *more)):
        f = tmp_path / f"layer{i}" / "m.yaml"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(t)
        files.append(f)
    return load_manifests(files)


def test_the_loader_keeps_labels_per_document(tmp_path: Path) -> None:
    d = load(tmp_path)
    assert d.labels == {"ConfigSet/a": {"team": "pay", "tier": "web"}, "ConfigSet/b": {"team": "ops"},
                        "Service/web": {"team": "pay"}}
    assert d.keys["/a/x"].document == "ConfigSet/a"


def test_overlays_merge_labels_label_by_label_and_replace_replaces_them(tmp_path: Path) -> None:
    over = ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: a, labels: {tier: db, env: prod}}\n"
            "spec: {data: {z: '3'}}\n---\n"
            "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: b, labels: {env: prod}}\n"
            "spec: {overlay: replace, prefix: /b/, data: {x: '1'}}\n")
    d = load(tmp_path, TREE, over)
    assert d.labels["ConfigSet/a"] == {"team": "pay", "tier": "db", "env": "prod"}
    assert d.labels["ConfigSet/b"] == {"env": "prod"}


def test_select_keeps_the_selected_documents_keys_and_live_instances(tmp_path: Path) -> None:
    d = load(tmp_path)
    s = select(d, "team=pay")
    assert sorted(s.keys) == ["/a/x", "/a/y", "/services/web/w1"]
    assert [i.key for i in s.live] == ["/services/web/w2"]
    assert s.selection is not None
    assert s.selection.documents == {"ConfigSet/a", "Service/web"}      # never the ApplySet
    assert s.selection.declared == {"/a/x", "/a/y", "/b/x", "/services/web/w1", "/services/web/w2"}
    assert s.applyset == "set" and s.files == d.files and s.prefixes == d.prefixes
    assert sorted(select(d, "team!=pay").keys) == ["/b/x"]
    assert sorted(select(d, "team=pay,tier=web").keys) == ["/a/x", "/a/y"]
    assert sorted(select(d, "team=pay,tier!=web").keys) == ["/services/web/w1"]
    assert select(d, None) is d


def test_a_selector_that_selects_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    d = load(tmp_path)
    with pytest.raises(ManifestError) as e:
        select(d, "team=nobody")
    assert str(e.value) == ("-l/--selector 'team=nobody' selects none of the 3 ConfigSet and Service documents "
                            "(labels in the manifests: team=ops, team=pay, tier=web)")
    with pytest.raises(ManifestError, match="labels in the manifests: none"):
        select(DesiredState(labels={"ConfigSet/a": {}}), "x=y")


# ------------------------------------------------------------------------------------------------
# the planner under a selection and with prune off

A, B = "ConfigSet/a", "ConfigSet/b"


def key(k: str, doc: str, value: str = "v") -> DesiredKey:
    return DesiredKey(k, value.encode(), k[:3], document=doc)


def owned(entries: dict[str, Entry]) -> Inventory:
    inv = Inventory("me")
    inv.add_chunk(Chunk("/r/sets/me/inventory/c", 3, entries))
    return inv


def test_a_selection_prunes_only_undeclared_keys_recorded_as_a_selected_documents() -> None:
    full = DesiredState(keys={"/a/keep": key("/a/keep", A), "/b/keep": key("/b/keep", B),
                              "/b/moved": key("/b/moved", B)},
                        labels={A: {"team": "a"}, B: {"team": "b"}})
    observed = {k: Observed(b"v", 5) for k in ("/a/keep", "/b/keep", "/b/moved", "/a/gone", "/b/gone", "/u/gone",
                                               "/x/gone")}
    inv = owned({"/a/keep": Entry("/a/", document=A), "/b/keep": Entry("/b/", document=B),
                 "/b/moved": Entry("/b/", document=A),     # moved from a (selected) to b: still declared
                 "/a/gone": Entry("/a/", document=A),       # a's, no longer declared: pruned
                 "/b/gone": Entry("/b/", document=B),       # b's: not selected
                 "/u/gone": Entry("/u/"),                   # no document recorded (format 1)
                 "/x/gone": Entry("/x/", document="ConfigSet/x")})   # a document no longer in the tree
    p = plan(full, observed, inv, {}, Options(selector="team=a"))
    assert [(c.key, c.action) for c in p.changes] == [("/a/gone", Action.DELETE), ("/a/keep", Action.UNCHANGED)]
    assert p.changes[0].document == A
    assert p.kept == 5 and p.owned_after == 6   # b/keep and b/moved too: declared, not selected
    # the caller may select first (the daemon does): the same plan
    assert plan(select(full, "team=a"), observed, inv, {}, Options(selector="team=a")) == p
    # without a selection every undeclared owned key is pruned
    whole = plan(full, observed, inv, {}, Options())
    assert {c.key for c in whole.changes if c.action is Action.DELETE} == {"/a/gone", "/b/gone", "/u/gone", "/x/gone"}
    # the moved key's record is rewritten only by a plan that selects its new document
    moved = next(c for c in whole.changes if c.key == "/b/moved")
    assert moved.retag and moved.note == "ownership record: document ConfigSet/a -> ConfigSet/b"


def test_prune_false_plans_puts_only() -> None:
    full = DesiredState(keys={"/a/new": key("/a/new", A)}, labels={A: {}})
    inv = owned({"/a/gone": Entry("/a/", document=A), "/a/absent": Entry("/a/", document=A),
                 "/a/kept": Entry("/a/", False, document=A)})
    p = plan(full, {"/a/gone": Observed(b"v", 5), "/a/kept": Observed(b"v", 5)}, inv, {}, Options(prune=False))
    assert [(c.key, c.action) for c in p.changes] == [("/a/new", Action.CREATE)]
    assert p.kept == 3 and p.owned_after == 4
    # nor are releases planned (a released key would leave the inventory): all three stay owned
    p = plan(full, {"/a/kept": Observed(b"v", 5)}, inv, {}, Options(prune=False))
    assert [c.action for c in p.changes] == [Action.CREATE]


def test_an_unrecorded_document_is_recorded_by_the_next_plan_that_declares_the_key() -> None:
    full = DesiredState(keys={"/a/x": key("/a/x", A)}, labels={A: {}})
    p = plan(full, {"/a/x": Observed(b"v", 5)}, owned({"/a/x": Entry("/a/")}), {})
    (c,) = p.changes
    assert c.action is Action.UNCHANGED and c.retag and c.note == "ownership record: document (not recorded) -> ConfigSet/a"
    p = plan(full, {"/a/x": Observed(b"v", 5)}, owned({"/a/x": Entry("/a/", document=A)}), {})
    assert not p.has_changes


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
