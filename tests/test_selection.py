"""Partial apply, the pure parts: `-l/--selector` parsing (core/selector.py), a loaded tree narrowed
to the selected documents, and the planner's pruning under a selection and with `--prune=false`.
No etcd (in the mutation score's test list); the CLI against etcd is tests/test_selectors.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdsync.core.inventory import Chunk, Entry, Inventory
from etcdsync.core.model import DesiredKey, DesiredState, Selection
from etcdsync.core.plan import Action, Observed, plan
from etcdsync.core.selector import Requirement, matches, parse_selector, select
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
    assert select(d, "team!=pay").live == ()       # the live instances of an unselected Service are left out
    assert sorted(select(d, "team=pay,tier=web").keys) == ["/a/x", "/a/y"]
    assert sorted(select(d, "team=pay,tier!=web").keys) == ["/services/web/w1"]
    assert select(d, None) is d
    assert s.selection == Selection("team=pay", frozenset({"ConfigSet/a", "Service/web"}), s.selection.declared, 3)
    assert (s.selection.selector, s.selection.total) == ("team=pay", 3)


def test_a_selector_that_selects_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    d = load(tmp_path)
    with pytest.raises(ManifestError) as e:
        select(d, "team=nobody")
    assert str(e.value) == ("-l/--selector 'team=nobody' selects none of the 3 ConfigSet and Service documents "
                            "(labels in the manifests: team=ops, team=pay, tier=web)")
    with pytest.raises(ManifestError, match="labels in the manifests: none"):
        select(DesiredState(labels={"ConfigSet/a": {}}), "x=y")


@pytest.mark.parametrize("n, shown", [
    (10, "l0=v, l1=v, l2=v, l3=v, l4=v, l5=v, l6=v, l7=v, l8=v, l9=v"),
    (11, "l0=v, l10=v, l1=v, l2=v, l3=v, l4=v, l5=v, l6=v, l7=v, l8=v (and 1 more)"),
    (13, "l0=v, l10=v, l11=v, l12=v, l1=v, l2=v, l3=v, l4=v, l5=v, l6=v (and 3 more)"),
])
def test_a_selector_that_selects_nothing_names_at_most_ten_labels(n: int, shown: str) -> None:
    labels = {f"ConfigSet/d{i}": {f"l{i}": "v"} for i in range(n)}
    with pytest.raises(ManifestError) as e:
        select(DesiredState(labels=labels), "x=y")
    assert str(e.value) == (f"-l/--selector 'x=y' selects none of the {n} ConfigSet and Service documents "
                            f"(labels in the manifests: {shown})")


def test_labels_named_in_the_error_are_shown_without_control_characters() -> None:
    with pytest.raises(ManifestError) as e:
        select(DesiredState(labels={"ConfigSet/a": {"t\x1b": "a\u009b"}, "Service/b": {"t": "x"}}), "t=y")
    assert str(e.value) == ("-l/--selector 't=y' selects none of the 2 ConfigSet and Service "
                            "documents (labels in the manifests: t\\u001b=a\\u009b, t=x)")


def test_a_selection_keeps_the_rest_of_the_state_and_matches_all_terms() -> None:
    d = DesiredState(keys={"/a/x": key("/a/x", A), "/b/x": key("/b/x", B)}, prefixes=("/a/", "/b/"),
                     labels={A: {"team": "a", "tier": "web"}, B: {"team": "b", "tier": "web"}}, applyset="s")
    s = select(d, "tier=web")
    assert dict(s.keys) == dict(d.keys) and s.prefixes == d.prefixes and s.applyset == "s"
    assert s.selection == Selection("tier=web", frozenset({A, B}), frozenset({"/a/x", "/b/x"}), 2)
    assert list(select(d, "tier=web,team=b").keys) == ["/b/x"]
    assert list(select(d, "team!=b,tier=web").keys) == ["/a/x"]
    assert matches((), {}) and matches(parse_selector("a=b,c!=d"), {"a": "b"})
    assert not matches(parse_selector("a=b,c!=d"), {"a": "b", "c": "d"})
    assert not matches(parse_selector("a=b,c!=d"), {"c": "x"})


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
