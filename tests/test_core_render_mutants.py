"""The diff text, the summaries and the JSON of a plan, asserted whole: every symbol, colour, note, count
and field (mutation score of render.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from etcdsync.core.model import HealthCheck, Policy, ServiceInstance, Source
from etcdsync.core.plan import Action, Change, LiveStatus, Plan
from etcdsync.core.render import (
    MAX_FIELDS,
    change_json,
    commit_json,
    commit_line,
    escape,
    origin_json,
    plan_counts,
    plan_json,
    render_change,
    render_live,
    render_plan,
    result_summary,
    results_json,
    secret_hash,
    show_value,
    summary,
    unchanged_keys,
)

P = "/p/"


def h(value: bytes) -> str:
    return "sha256:" + hashlib.sha256(value).hexdigest()[:8]


def st(text: str, fg: str | None = None, bold: bool = False) -> str:
    """A style that shows what it was asked for."""
    return f"<{fg}{'!' if bold else ''}|{text}>"


def counts(changes: tuple[Change, ...]) -> dict[str, int]:
    return {a.value: sum(1 for c in changes if c.action is a) for a in Action}


def rich_plan() -> Plan:
    cs = (
        Change(Action.CREATE, P + "a", None, b"new", 0, own=True),
        Change(Action.UPDATE, P + "b", b"l1\nl2\nl3\nl4\n", b"l1\nX\nl3\nl4\n", 5, note="adopted: x", own=True),
        Change(Action.ADOPT, P + "c", b"v", b"v", 6, own=True, owner="o", note="taken"),
        Change(Action.DELETE, P + "d", b"\xff\xfe", None, 7),
        Change(Action.RELEASE, P + "e", None, None, 0, note="already absent"),
        Change(Action.UNCHANGED, P + "f", b"1", b"1", 8),
        Change(Action.UNCHANGED, P + "g", b"1", b"1", 8, retag=True, note="ownership record: prune true -> false"),
        Change(Action.DRIFT, P + "h", b"old", b"new", 9, note="drift held by policy warn", policy=Policy.WARN),
        Change(Action.CONFLICT, P + "i", b"x", b"y", 9, owner="o", note="owned by apply set 'o'"),
        Change(Action.CONFLICT, P + "j", b"x", b"y", 9, lease=0xAB, note="held"),
        Change(Action.UPDATE, P + "k", b"s1", b"s2", 9, secret=True, document="ConfigSet/x",
               origin=Source("f.yaml", 2, 3)),
    )
    i = ServiceInstance("svc", "i1", "h", 1, "/svc/i1", b"{}", "/svc/", ttl=10.5)
    j = ServiceInstance("svc", "i2", "h", 1, "/svc/i2", b"{}", "/svc/", check=HealthCheck("tcp"))
    return Plan("me", cs, (LiveStatus(i, True, b"{}"), LiveStatus(j, False, None)), 3, "refused x", counts(cs))


SUMMARY = ("1 to create, 2 to update, 1 to delete, 3 unchanged (1 ownership record to update, 1 to adopt, "
           "1 to release, 1 drifted, held by policy warn, 1 owned by another apply set, "
           "1 held by another client's lease, 2 live instances left to `etcdsync run`)")
LIVE = ["* /svc/i1  (live, ttl 10.5s: registered; written only by `etcdsync run`)",
        "* /svc/i2  (live, health-checked: not registered; written only by `etcdsync run`)"]
HEAD = ["+ /p/a", "    + new", "~ /p/b  (adopted: x)", "    @@ -1,4 +1,4 @@", "      l1", "    - l2", "    + X",
        "      l3", "      l4", "> /p/c  (taken)"]


def test_render_plan_whole_text() -> None:
    assert render_plan(rich_plan()).split("\n") == HEAD + [
        "- /p/d", "    - (2 bytes, not UTF-8)",
        "< /p/e  (already absent)",
        "= /p/g  (ownership record: prune true -> false)",
        "! /p/h  (drift held by policy warn)", "    - old", "    + new",
        "x /p/i  (owned by apply set 'o')",
        "x /p/j  (held)",
        "~ /p/k  (secret)", f"    - (secret, {h(b's1')})", f"    + (secret, {h(b's2')})",
        *LIVE, "", SUMMARY, "refused: refused x"]


def test_render_plan_verbose_with_a_limit() -> None:
    assert render_plan(rich_plan(), verbose=True, limit=3).split("\n") == HEAD + [
        "... and 8 more keys (-v or -o json lists every key)", *LIVE, "", SUMMARY, "refused: refused x"]


def test_render_plan_verbose_shows_unchanged_keys() -> None:
    text = render_plan(rich_plan(), verbose=True)
    assert "\n= /p/f\n" in text
    assert "\n= /p/f\n" not in render_plan(rich_plan())


@pytest.mark.parametrize("limit, tail", [
    (1, "... and 1 more key (-v or -o json lists every key)"),
    (0, "... and 2 more keys (-v or -o json lists every key)"),
])
def test_render_plan_limit_counts_the_hidden_keys(limit: int, tail: str) -> None:
    cs = (Change(Action.CREATE, P + "a", None, b"1", 0), Change(Action.CREATE, P + "b", None, b"2", 0))
    lines = render_plan(Plan("me", cs, counts=counts(cs)), limit=limit).split("\n")
    assert lines[-3:] == [tail, "", "2 to create, 0 to update, 0 to delete, 0 unchanged"]
    assert len(lines) == 2 * (2 - (2 - limit)) + 3


def test_render_plan_limit_exactly_reached_hides_nothing() -> None:
    cs = (Change(Action.CREATE, P + "a", None, b"1", 0),)
    assert render_plan(Plan("me", cs, counts=counts(cs)), limit=1) == (
        "+ /p/a\n    + 1\n\n1 to create, 0 to update, 0 to delete, 0 unchanged")


def test_render_plan_with_style_and_nothing_to_show() -> None:
    empty = Plan("me", (), counts=counts(()))
    assert render_plan(empty, style=st) == "0 to create, 0 to update, 0 to delete, 0 unchanged"
    cs = (Change(Action.CREATE, P + "k", None, b"1", 0),)
    assert render_plan(Plan("me", cs, refused="no", counts=counts(cs)), style=st) == (
        "<green!|+ /p/k>\n    <green|+ 1>\n\n1 to create, 0 to update, 0 to delete, 0 unchanged\n<red!|refused: no>")


@pytest.mark.parametrize("action, lines", [
    (Action.CREATE, ["<green!|+ /p/k>", "    <green|+ a>", "    <green|+ c>"]),
    (Action.UPDATE, ["<yellow!|~ /p/k>", "    <cyan|@@ -1,2 +1,2 @@>", "    <None|  a>", "    <red|- b>",
                     "    <green|+ c>"]),
    (Action.ADOPT, ["<cyan!|> /p/k>"]),
    (Action.DELETE, ["<red!|- /p/k>", "    <red|- a>", "    <red|- b>"]),
    (Action.RELEASE, ["<blue!|< /p/k>"]),
    (Action.UNCHANGED, ["<None!|= /p/k>"]),
    (Action.DRIFT, ["<magenta!|! /p/k>", "    <cyan|@@ -1,2 +1,2 @@>", "    <None|  a>", "    <red|- b>",
                    "    <green|+ c>"]),
    (Action.CONFLICT, ["<red!|x /p/k>"]),
])
def test_render_change_symbols_colours_and_bodies(action: Action, lines: list[str]) -> None:
    assert render_change(Change(action, P + "k", b"a\nb\n", b"a\nc\n", 1), st) == lines


def test_render_change_secret_delete_and_escaped_note() -> None:
    c = Change(Action.DELETE, P + "k\x1b", b"x", None, 1, secret=True)
    assert render_change(c, st) == ["<red!|- /p/k\\x1b>  (secret)", f"    <red|- (secret, {h(b'x')})>"]
    c = Change(Action.DELETE, P + "k", b"x", None, 1, secret=True, note="n\x07")
    assert render_change(c) == ["- /p/k  (n\\x07)", f"    - (secret, {h(b'x')})"]


def test_value_diff_single_line_and_multi_vs_single() -> None:
    c = Change(Action.UPDATE, P + "k", b"a\nb\n", b"z", 1)
    assert render_change(c) == ["~ /p/k", "    - a", "    - b", "    + z"]
    c = Change(Action.UPDATE, P + "k", b"a\nb\n", b"a\nb\nc\n", 1)
    assert render_change(c) == ["~ /p/k", "    @@ -1,2 +1,3 @@", "      a", "      b", "    + c"]
    c = Change(Action.UPDATE, P + "k", None, b"a\nb\n", 1)
    assert render_change(c) == ["~ /p/k", "    + a", "    + b"]


def test_value_diff_of_multiline_secrets_never_shows_lines() -> None:
    c = Change(Action.DRIFT, P + "k", b"a\nb\n", b"a\nc\n", 1, secret=True)
    assert render_change(c) == ["! /p/k  (secret)",
                                 "    - (secret, " + h(b"a\nb\n") + ")", "    + (secret, " + h(b"a\nc\n") + ")"]


def test_value_diff_context_is_two_lines() -> None:
    old = b"".join(b"l%d\n" % i for i in range(9))
    new = old.replace(b"l4\n", b"X\n")
    body = render_change(Change(Action.UPDATE, P + "k", old, new, 1))[1:]
    assert body == ["    @@ -3,5 +3,5 @@", "      l2", "      l3", "    - l4", "    + X", "      l5", "      l6"]


@pytest.mark.parametrize("value, lines", [
    (None, []),
    (b"", ['""  (empty)']),
    (b"one", ["one"]),
    (b"a\nb", ["a", "b", "\\ no newline at end"]),
    (b"a\nb\n", ["a", "b"]),
    (b"a\n", ["a"]),
    (b"\x1b[2J\ttab\r\n", ["\\x1b[2J\\ttab\\r"]),
    ("\u202e\u200b".encode(), ["\\u202e\\u200b"]),
    (b"\xff", ["(1 bytes, not UTF-8)"]),
    (b"x" * 2000, ["x" * 2000]),
    (b"x" * 2001, ["x" * 2000, "... (2001 bytes in all)"]),
    (b"x\n" * 20, ["x"] * 20),
    (b"x\n" * 21, ["x"] * 20 + ["... (42 bytes in all)"]),
    (b"\x1b\n" * 21, ["\\x1b"] * 20 + ["... (42 bytes in all)"]),
])
def test_show_value(value: bytes | None, lines: list[str]) -> None:
    assert show_value(value, False) == lines


def test_show_value_secret() -> None:
    assert show_value(None, True) == []
    assert show_value(b"", True) == [f"(secret, {h(b'')})"]
    assert show_value(b"\xff", True) == ["(secret, " + h(b"\xff") + ")"]
    assert secret_hash(None) == "absent"
    assert secret_hash(b"abc") == "sha256:ba7816bf"


@pytest.mark.parametrize("text, shown", [
    ("plain", "plain"),
    ("a\x00b\x7f\x9f\u2066\ufeff\ud800", "a\\x00b\\x7f\\x9f\\u2066\\ufeff\\ud800"),
    ("\t\n\r", "\\t\\n\\r"),
    ("\x1f\x80\xa0é", "\\x1f\\x80\xa0é"),
    ("\u200b\u200f\u202a\u202e\u2060\u2064\u2066\u2069\u2065\u2070", "\\u200b\\u200f\\u202a\\u202e\\u2060\\u2064\\u2066\\u2069\u2065\u2070"),
])
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_render_live() -> None:
    i = ServiceInstance("svc", "i1", "h", 1, "/svc/\x1b", b"{}", "/svc/", ttl=10.0)
    assert render_live(LiveStatus(i, False, None), st) == (
        "<blue|* /svc/\\x1b>  (live, ttl 10s: not registered; written only by `etcdsync run`)")


@pytest.mark.parametrize("changes, tail", [
    ((), ""),
    ((Change(Action.UNCHANGED, "/a", b"1", b"1", 1, retag=True), Change(Action.DRIFT, "/b", b"1", b"2", 1, retag=True),
      Change(Action.UPDATE, "/c", b"1", b"2", 1, retag=True)),
     " (2 ownership records to update, 1 drifted, held by policy warn)"),
    ((Change(Action.ADOPT, "/a", b"1", b"1", 1, own=True), Change(Action.DRIFT, "/b", b"1", b"2", 1, own=True),
      Change(Action.CREATE, "/c", None, b"2", 0, own=True), Change(Action.UPDATE, "/d", b"1", b"2", 1, own=True)),
     " (2 to adopt, 1 drifted, held by policy warn)"),
    ((Change(Action.RELEASE, "/a", None, None, 0), Change(Action.RELEASE, "/b", None, None, 0)),
     " (2 to release)"),
    ((Change(Action.CONFLICT, "/a", None, b"1", 0, owner="o"), Change(Action.CONFLICT, "/b", None, b"1", 0, owner="o")),
     " (2 owned by another apply set)"),
    ((Change(Action.CONFLICT, "/a", None, b"1", 0, lease=1), Change(Action.CONFLICT, "/b", None, b"1", 0, lease=2)),
     " (2 held by another client's lease)"),
])
def test_summary_extras(changes: tuple[Change, ...], tail: str) -> None:
    n = counts(changes)
    # a drifted key that the apply adopts is counted as adopted, not also as unchanged
    unchanged = n["unchanged"] + sum(1 for c in changes if c.action is Action.DRIFT and not c.own)
    head = f"{n['create']} to create, {n['update']} to update, {n['delete']} to delete, {unchanged} unchanged"
    p = Plan("me", changes, counts=n)
    assert summary(p) == head + tail
    # the JSON summary has the text's numbers, and its partition counts every key once
    js = plan_json(p, applyset_origin="flag")["summary"]
    assert (js["create"], js["update"], js["delete"], js["unchanged"]) == (n["create"], n["update"], n["delete"], unchanged)
    assert sum(js[k] for k in ("create", "update", "delete", "unchanged", "adopt", "release", "conflict")) == len(changes)


def test_summary_one_live_instance() -> None:
    i = ServiceInstance("svc", "i1", "h", 1, "/svc/i1", b"{}", "/svc/", ttl=1)
    assert summary(Plan("me", (), (LiveStatus(i, False, None),), counts=counts(()))) == (
        "0 to create, 0 to update, 0 to delete, 0 unchanged (1 live instance left to `etcdsync run`)")


def test_result_summary() -> None:
    done = {c.key: c for c in (
        Change(Action.CREATE, "/a", None, b"1", 0, own=True),
        Change(Action.CREATE, "/a2", None, b"1", 0),
        Change(Action.UPDATE, "/b", b"0", b"1", 1, own=True),
        Change(Action.UPDATE, "/b2", b"0", b"1", 1),
        Change(Action.UPDATE, "/b3", b"0", b"1", 1),
        Change(Action.ADOPT, "/c", b"1", b"1", 1, own=True),
        Change(Action.DRIFT, "/c2", b"1", b"2", 1, own=True),
        Change(Action.DELETE, "/d", b"1", None, 1),
        Change(Action.RELEASE, "/e", None, None, 0),
        Change(Action.RELEASE, "/e2", None, None, 0),
        Change(Action.UNCHANGED, "/f", b"1", b"1", 1, retag=True),
    )}
    assert result_summary(done, 7) == ("2 created, 3 updated, 1 deleted, 7 unchanged "
                                       "(1 ownership record updated, 2 adopted, 2 released)")
    assert result_summary({}, 0) == "0 created, 0 updated, 0 deleted, 0 unchanged"
    # -o json: the same numbers, and each key's result in the words the text counts it under
    js = results_json(done, 7)
    assert js["summary"] == {"created": 2, "updated": 3, "deleted": 1, "unchanged": 7, "adopted": 2, "released": 2,
                             "ownership": 1}
    assert [r["result"] for r in js["results"]] == ["created", "created", "updated", "updated", "updated", "adopted",
                                                    "adopted", "deleted", "released", "released", "unchanged"]
    two = {"/a": Change(Action.UNCHANGED, "/a", b"1", b"1", 1, retag=True),
           "/b": Change(Action.DRIFT, "/b", b"1", b"2", 1, retag=True)}
    assert result_summary(two, 0) == "0 created, 0 updated, 0 deleted, 0 unchanged (2 ownership records updated)"


def test_plan_json_whole() -> None:
    s1, s2 = h(b"s1"), h(b"s2")
    base = {"policy": "enforce", "secret": False, "adopt": False}
    assert plan_json(rich_plan(), applyset_origin="flag") == {
        "applyset": "me", "applysetFrom": "flag", "inSync": False, "refused": "refused x",
        "summary": {"create": 1, "update": 2, "adopt": 1, "delete": 1, "release": 1, "unchanged": 3, "drift": 1,
                    "conflict": 2, "ownership": 1},
        "commit": None,
        "changes": [
            {**base, "key": "/p/a", "action": "create", "old": None, "new": "new"},
            {**base, "key": "/p/b", "action": "update", "old": "l1\nl2\nl3\nl4\n", "new": "l1\nX\nl3\nl4\n",
             "adopt": True, "note": "adopted: x"},
            {**base, "key": "/p/c", "action": "adopt", "old": "v", "new": "v", "owner": "o", "note": "taken"},
            {**base, "key": "/p/d", "action": "delete", "old": {"base64": "//4="}, "new": None},
            {**base, "key": "/p/e", "action": "release", "old": None, "new": None, "note": "already absent"},
            {**base, "key": "/p/f", "action": "unchanged", "old": "1", "new": "1"},
            {**base, "key": "/p/g", "action": "unchanged", "old": "1", "new": "1",
             "note": "ownership record: prune true -> false"},
            {**base, "key": "/p/h", "action": "drift", "old": "old", "new": "new", "policy": "warn",
             "note": "drift held by policy warn"},
            {**base, "key": "/p/i", "action": "conflict", "old": "x", "new": "y", "owner": "o",
             "note": "owned by apply set 'o'"},
            {**base, "key": "/p/j", "action": "conflict", "old": "x", "new": "y", "lease": "00000000000000ab", "note": "held"},
            {**base, "key": "/p/k", "action": "update", "old": {"secret": True, "hash": s1},
             "new": {"secret": True, "hash": s2}, "secret": True, "document": "ConfigSet/x",
             "source": "f.yaml:2:3", "origin": {"value": "f.yaml:2:3", "overrides": [], "layers": []}},
        ],
        "live": [
            {"key": "/svc/i1", "service": "svc", "id": "i1", "registered": True, "ttl": 10.5, "checked": False},
            {"key": "/svc/i2", "service": "svc", "id": "i2", "registered": False, "ttl": None, "checked": True},
        ],
    }


def test_plan_json_in_sync() -> None:
    c = Change(Action.UNCHANGED, "/a", b"1", b"1", 1)
    out = plan_json(Plan("me", (c,), counts=counts((c,))), applyset_origin="default")
    assert (out["inSync"], out["refused"], out["summary"]["adopt"], out["summary"]["ownership"]) == (True, None, 0, 0)


def test_change_json_result_and_adopt_flag() -> None:
    c = Change(Action.CREATE, "/a", None, b"1", 0, own=True)
    assert change_json(c, "ok") == {"key": "/a", "action": "create", "old": None, "new": "1", "policy": "enforce",
                                    "secret": False, "adopt": False, "result": "ok"}
    assert change_json(c._replace(action=Action.UPDATE, old=b"0"))["adopt"] is True
    assert change_json(c._replace(action=Action.UPDATE, old=b"0", owner="o"))["adopt"] is False
    assert change_json(c._replace(action=Action.UPDATE, old=b"0", own=False))["adopt"] is False
    assert "result" not in change_json(c)
    assert change_json(c._replace(new=None, secret=True))["new"] is None


# ------------------------------------------------------------------------------------------------
# mutants that survived the first round


def test_a_secret_create_is_masked() -> None:
    c = Change(Action.CREATE, P + "k", None, b"hunter2", 0, secret=True)
    assert render_change(c) == ["+ /p/k  (secret)", "    + (secret, " + h(b"hunter2") + ")"]


def test_long_values_are_cut_at_newlines_only() -> None:
    assert show_value(b"a b\n" * 21, False) == ["a b"] * 20 + ["... (84 bytes in all)"]


def test_single_line_old_against_multi_line_new_is_not_a_line_diff() -> None:
    c = Change(Action.UPDATE, P + "k", b"z", b"a\nb\n", 1)
    assert render_change(c) == ["~ /p/k", "    - z", "    + a", "    + b"]


def test_result_summary_counts_only_non_put_adoptions() -> None:
    done = {c.key: c for c in (
        Change(Action.CREATE, "/a", None, b"1", 0, own=True),
        Change(Action.ADOPT, "/c", b"1", b"1", 1, own=True),
        Change(Action.ADOPT, "/d", b"1", b"1", 1, own=True),
    )}
    assert result_summary(done, 0) == "1 created, 0 updated, 0 deleted, 0 unchanged (2 adopted)"


# ------------------------------------------------------------------------------------------------
# field diffs, commit lines, origins of removed keys and live instances, summaries of bare plans

def test_field_lines_exact_signs_colours_values_and_shortening() -> None:
    old = json.dumps({"n": 1, "gone": [1, 2], "s": "é", "w": "x" * 78}).encode()
    new = json.dumps({"n": 2, "add": {"k": [1, 2]}, "s": "\u202e", "w": "x" * 79}).encode()
    for action, head in ((Action.UPDATE, "<yellow!|~ /p/k>"), (Action.DRIFT, "<magenta!|! /p/k>")):
        assert render_change(Change(action, P + "k", old, new, 1), st) == [
            head,
            "    <yellow|~ n: 1 → 2>",
            '    <green|+ add: {"k":[1,2]}>',
            '    <yellow|~ s: "é" → "\\u202e">',        # not ASCII-escaped; escaped only when unsafe
            f'    <yellow|~ w: "{"x" * 78}" → "{"x" * 78}…>',   # 80 characters shown whole, 81 shortened to 80
            "    <red|- gone: [1,2]>",
        ]


def test_field_lines_cap_counts_only_what_is_over_the_cap() -> None:
    old = json.dumps({}).encode()
    exactly = json.dumps({f"k{i}": i for i in range(MAX_FIELDS)}).encode()
    lines = render_change(Change(Action.UPDATE, P + "k", old, exactly, 1), st)
    assert len(lines) == 1 + MAX_FIELDS and lines[-1] == f"    <green|+ k{MAX_FIELDS - 1}: {MAX_FIELDS - 1}>"
    over = json.dumps({f"k{i}": i for i in range(MAX_FIELDS + 2)}).encode()
    lines = render_change(Change(Action.UPDATE, P + "k", old, over, 1), st)
    assert len(lines) == 2 + MAX_FIELDS
    assert lines[-1] == "    <cyan|... and 2 more changed fields (-o json lists them)>"


def test_the_same_json_written_differently_is_said_then_shown() -> None:
    c = Change(Action.UPDATE, P + "k", b'{"a": 1}', b'{"a":1}', 1)
    assert render_change(c, st) == ["<yellow!|~ /p/k>", "    <cyan|the same JSON, written differently (key order or spacing)>",
                                     '    <red|- {"a": 1}>', '    <green|+ {"a":1}>']
    assert change_json(c)["fields"] == []


def test_fields_only_for_updates_and_drift_of_a_value_that_is_not_secret() -> None:
    old, new = b'{"a":1}', b'{"a":2}'
    assert change_json(Change(Action.UPDATE, "/k", old, new, 1))["fields"] == [
        {"path": "a", "op": "update", "old": 1, "new": 2}]
    assert change_json(Change(Action.DRIFT, "/k", old, new, 1))["fields"] == [
        {"path": "a", "op": "update", "old": 1, "new": 2}]
    for c in (Change(Action.UNCHANGED, "/k", old, old, 1), Change(Action.CONFLICT, "/k", old, new, 1, owner="o"),
              Change(Action.ADOPT, "/k", old, old, 1, own=True), Change(Action.UPDATE, "/k", old, new, 1, secret=True)):
        assert "fields" not in change_json(c), c.action


def test_commit_line_and_json() -> None:
    assert commit_line(0, 8) == "commit: 1 transaction (atomic)"
    assert commit_line(1, 8) == "commit: 1 transaction (atomic)"
    assert commit_line(2, 8) == ("commit: 2 transactions of at most 8 operations "
                                 "(not atomic: readers can see it half applied)")
    assert commit_json(1, 8) == {"transactions": 1, "maxOperations": 8, "atomic": True}
    assert commit_json(2, 8) == {"transactions": 2, "maxOperations": 8, "atomic": False}
    assert commit_json(0, 8)["atomic"] is True
    c = Change(Action.CREATE, "/a", None, b"1", 0, own=True)
    p = Plan("me", (c,), counts=counts((c,)))
    assert plan_json(p, applyset_origin="flag", commit=(2, 8))["commit"] == commit_json(2, 8)
    assert plan_json(p, applyset_origin="flag")["commit"] is None


def test_unchanged_keys_are_those_neither_committed_nor_written() -> None:
    cs = (Change(Action.CREATE, "/a", None, b"1", 0), Change(Action.UNCHANGED, "/b", b"1", b"1", 1),
          Change(Action.UNCHANGED, "/c", b"1", b"1", 1, retag=True), Change(Action.UNCHANGED, "/d", b"1", b"1", 1),
          Change(Action.DRIFT, "/e", b"1", b"2", 1))
    p = Plan("me", cs, counts=counts(cs))
    assert unchanged_keys(p, {}) == 3
    assert unchanged_keys(p, {"/a": cs[0], "/c": cs[2]}) == 3
    assert unchanged_keys(p, {"/a": cs[0], "/b": cs[1]}) == 2
    assert unchanged_keys(Plan("me", ()), {}) == 0


def test_in_sync_means_nothing_to_write_and_no_conflict() -> None:
    conflict = Change(Action.CONFLICT, "/a", b"0", b"1", 1, owner="o")
    create = Change(Action.CREATE, "/b", None, b"1", 0)
    for cs, in_sync in (((conflict,), False), ((create,), False), ((conflict, create), False), ((), True)):
        assert plan_json(Plan("me", cs, counts=counts(cs)), applyset_origin="flag")["inSync"] is in_sync


def test_plan_counts_of_a_plan_built_without_counts() -> None:
    zero = {"create": 0, "update": 0, "delete": 0, "unchanged": 0, "adopt": 0, "release": 0, "conflict": 0,
            "drift": 0, "ownership": 0}
    assert plan_counts(Plan("me", ())) == zero
    c = Change(Action.UNCHANGED, "/a", b"1", b"1", 1)
    assert plan_counts(Plan("me", (c,))) == {**zero, "unchanged": 1}


def test_origins_of_removed_keys_of_overridden_keys_and_of_live_instances() -> None:
    layer1, layer2, over = Source("base/a.yaml", 1, 1), Source("prod/a.yaml", 4, 1), Source("base/a.yaml", 6, 3)
    src = Source("prod/a.yaml", 7, 5, overrides=(over,), layers=(layer1, layer2))
    assert origin_json(src) == {"value": "prod/a.yaml:7:5", "overrides": ["base/a.yaml:6:3"],
                                "layers": ["base/a.yaml:1:1", "prod/a.yaml:4:1"]}
    gone = Change(Action.DELETE, "/p/gone", b"1", None, 3)
    kept = Change(Action.UPDATE, "/p/kept", b"0", b"1", 3, origin=src)
    removed = {"/p/gone": layer2, "/p/kept": layer2}
    p = Plan("me", (gone, kept), counts=counts((gone, kept)))
    for out in (plan_json(p, applyset_origin="flag", removed=removed)["changes"],
                results_json({c.key: c for c in (gone, kept)}, 0, removed=removed)["results"]):
        assert out[0]["origin"] == {"removedBy": "prod/a.yaml:4:1"} and "source" not in out[0]
        assert out[1]["source"] == "prod/a.yaml:7:5" and out[1]["origin"] == origin_json(src)   # declared: not removed
    assert "origin" not in plan_json(p, applyset_origin="flag")["changes"][0]
    assert "origin" not in results_json({"/p/gone": gone}, 0)["results"][0]
    i = ServiceInstance("svc", "i1", "h", 1, "/svc/i1", b"{}", "/svc/", ttl=5, source=src)
    (live,) = plan_json(Plan("me", (), (LiveStatus(i, False, None),)), applyset_origin="flag")["live"]
    assert live == {"key": "/svc/i1", "service": "svc", "id": "i1", "registered": False, "ttl": 5, "checked": False,
                    "source": "prod/a.yaml:7:5", "origin": origin_json(src)}
