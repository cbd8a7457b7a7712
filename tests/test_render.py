"""Text and JSON rendering of plans; the text diff is pinned by golden files (pytest --update-golden)."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest

from etcdsync.core.inventory import Chunk, Entry, Inventory
from etcdsync.core.model import DesiredKey, DesiredState, Policy, ServiceInstance
from etcdsync.core.plan import Action, Change, Observed, plan
from etcdsync.core.render import plan_json, render_plan

P = "/config/shop/"
SECRET_OLD, SECRET_NEW = b"hunter2-old", b"hunter2-new"


def sample_plan() -> Any:
    def d(rel: str, v: bytes, **kw: Any) -> DesiredKey:
        return DesiredKey(P + rel, v, P, document="ConfigSet/shop", **kw)

    keys = [
        d("new", b"postgres://db:5432/pay"),
        d("changed", b"5"),
        d("same", b"x"),
        d("adopted", b"exists"),
        d("token", SECRET_NEW, secret=True),
        d("cert", b"line1\nline2-new\nline3\n"),
        d("warned", b"off", policy=Policy.WARN),
        d("seed", b"initial", policy=Policy.CREATE_ONLY),
        d("empty", b""),
    ]
    live = ServiceInstance("gw", "gw-1", "127.0.0.1", 80, "/services/gw/gw-1", b"{}", "/services/gw/", ttl=10.0)
    desired = DesiredState(keys={k.key: k for k in keys}, live=(live,), prefixes=(P, "/services/gw/"))
    observed = {
        P + "changed": Observed(b"4", 3), P + "same": Observed(b"x", 4), P + "adopted": Observed(b"exists", 5),
        P + "token": Observed(SECRET_OLD, 6), P + "cert": Observed(b"line1\nline2\nline3\n", 7),
        P + "warned": Observed(b"on", 8), P + "seed": Observed(b"runtime", 9), P + "gone": Observed(b"bye", 10),
        P + "binary": Observed(b"\xff\xfe", 11),
    }
    inv = Inventory("shop")
    inv.add_chunk(Chunk("/.etcdsync/sets/shop/inventory/a", 2, {
        P + k: Entry(P, document="ConfigSet/shop") for k in ("changed", "same", "token", "cert", "warned", "seed", "gone", "binary")}))
    return plan(desired, observed, inv, {})


def test_text_diff_golden(golden: Any) -> None:
    golden("diff.txt", render_plan(sample_plan()) + "\n")


def test_verbose_text_diff_golden(golden: Any) -> None:
    golden("diff-verbose.txt", render_plan(sample_plan(), verbose=True) + "\n")


def test_colored_diff_golden(golden: Any) -> None:
    golden("diff-color.txt", render_plan(sample_plan(), style=click.style) + "\n")


def test_secrets_are_masked_everywhere() -> None:
    p = sample_plan()
    text = render_plan(p, verbose=True) + json.dumps(plan_json(p, applyset_origin="flag"))
    assert b"hunter2" not in text.encode()
    assert "sha256:" in text


def test_json_has_one_entry_per_key() -> None:
    doc = plan_json(sample_plan(), applyset_origin="flag")
    keys = [c["key"] for c in doc["changes"]]
    assert len(keys) == len(set(keys)) == 11
    assert doc["live"][0]["registered"] is False
    assert {c["key"]: c["old"] for c in doc["changes"]}[P + "binary"] == {"base64": "//4="}


def test_long_diffs_are_cut_with_a_count() -> None:
    from etcdsync.core.inventory import Inventory as Inv

    keys = [DesiredKey(f"{P}k{i:03d}", b"v", P) for i in range(30)]
    p = plan(DesiredState(keys={k.key: k for k in keys}, prefixes=(P,)), {}, Inv("x"), {})
    text = render_plan(p, limit=10)
    assert text.count("\n+ ") + text.startswith("+ ") == 10
    assert "... and 20 more keys (-v or -o json lists every key)" in text
    assert "30 to create" in text


def test_ownership_only_changes_are_named_in_the_summary() -> None:
    # a key moved to another document's prefix and a prune flag flipped: nothing to put, but the
    # inventory is rewritten, so `diff` exits 1 and the summary must say why
    a, b = "/config/", "/config/shop/"
    keys = [DesiredKey(b + "moved", b"1", b, document="ConfigSet/shop"),
            DesiredKey(a + "kept", b"2", a, prune=False, document="ConfigSet/all")]
    inv = Inventory("x")
    inv.add_chunk(Chunk("/.etcdsync/sets/x/inventory/a", 2, {b + "moved": Entry(a, document="ConfigSet/shop"),
                                                        a + "kept": Entry(a, document="ConfigSet/all")}))
    observed = {b + "moved": Observed(b"1", 3), a + "kept": Observed(b"2", 4)}
    p = plan(DesiredState(keys={k.key: k for k in keys}, prefixes=(a, b)), observed, inv, {})
    assert p.has_changes
    text = render_plan(p)
    assert text.splitlines()[-1] == "0 to create, 0 to update, 0 to delete, 2 unchanged (2 ownership records to update)"
    assert "= /config/shop/moved  (ownership record: prefix /config/ -> /config/shop/)" in text
    assert "= /config/kept  (ownership record: prune true -> false)" in text
    assert plan_json(p, applyset_origin="flag")["summary"]["ownership"] == 2
    one = plan(DesiredState(keys={keys[0].key: keys[0]}, prefixes=(b,)), observed, inv, {})
    assert render_plan(one).endswith("0 to create, 0 to update, 1 to delete, 1 unchanged (1 ownership record to update)")


def test_result_summary_names_ownership_updates_and_grammar() -> None:
    from etcdsync.core.plan import Action, Change
    from etcdsync.core.render import result_summary

    done = {"/k": Change(Action.UNCHANGED, "/k", b"1", b"1", 3, "/", retag=True)}
    assert result_summary(done, 0) == "0 created, 0 updated, 0 deleted, 0 unchanged (1 ownership record updated)"


HOSTILE = [
    "\x1b]0;TITLE\x07", "\x1b[2J\x1b[H", "\x9b31m", "a\rb", "\x08\x08ok", "x\u202egnp.exe", "zero\u200bwidth",
    "\u2066iso\u2069", "\x00nul", "\x7f", "bom\ufeff",
]
UNSAFE = set("\x1b\x07\x9b\r\x08\u202e\u200b\u2066\u2069\x00\x7f\ufeff")


@pytest.mark.parametrize("bad", HOSTILE)
def test_text_diff_escapes_control_and_bidi_characters_in_keys_and_values(bad: str) -> None:
    key = P + "k" + bad
    keys = [DesiredKey(P + "new", ("v" + bad + "\nline2").encode(), P), DesiredKey(P + "upd", ("1" + bad).encode(), P)]
    observed = {P + "upd": Observed(("0" + bad).encode(), 3), key: Observed(bad.encode(), 4)}
    inv = Inventory("x")
    inv.add_chunk(Chunk("/.etcdsync/sets/x/inventory/a", 2, {key: Entry(P), P + "upd": Entry(P)}))
    p = plan(DesiredState(keys={k.key: k for k in keys}, prefixes=(P,)), observed, inv, {})
    for text in (render_plan(p), render_plan(p, verbose=True), render_plan(p, style=click.style)):
        assert not UNSAFE & set(click.unstyle(text)), repr(text)
    from etcdsync.core.render import escape

    text = render_plan(p)
    assert "line2" in text and f"{P}k{escape(bad)}" in text and escape(bad) != bad
    # JSON output escapes them by JSON's rules
    doc = json.dumps(plan_json(p, applyset_origin="flag"), indent=2)
    assert not UNSAFE & set(doc)
    assert json.loads(doc)["changes"][0]["key"] == key


def test_escape_is_readable() -> None:
    from etcdsync.core.render import escape

    assert escape("a\x1b]0;T\x07b\u202ec\u200bd\te") == "a\\x1b]0;T\\x07b\\u202ec\\u200bd\\te"
    assert escape("plain ünïcödé €") == "plain ünïcödé €"


def test_one_result_per_change_and_one_definition_of_adopted() -> None:
    from etcdsync.core.render import Result, count_results, result_of

    cases = [
        (Change(Action.CREATE, "/a", None, b"1", 0, own=True), Result.CREATED),
        (Change(Action.UPDATE, "/b", b"0", b"1", 1, own=True), Result.UPDATED),     # adopted and updated: updated
        (Change(Action.ADOPT, "/c", b"1", b"1", 1, own=True), Result.ADOPTED),
        (Change(Action.ADOPT, "/c2", b"1", b"1", 1, own=True, owner="o"), Result.ADOPTED),   # taken over
        (Change(Action.DRIFT, "/c3", b"1", b"2", 1, own=True), Result.ADOPTED),      # recorded, value held by warn
        (Change(Action.DRIFT, "/d", b"1", b"2", 1), Result.SKIPPED),
        (Change(Action.CONFLICT, "/e", b"1", b"2", 1, owner="o"), Result.SKIPPED),
        (Change(Action.DELETE, "/f", b"1", None, 1), Result.DELETED),
        (Change(Action.RELEASE, "/g", None, None, 0), Result.RELEASED),
        (Change(Action.UNCHANGED, "/h", b"1", b"1", 1, retag=True), Result.UNCHANGED),
    ]
    assert [result_of(c) for c, _ in cases] == [r for _, r in cases]
    counts = count_results(c for c, _ in cases)
    assert counts[Result.ADOPTED] == 3 and counts[Result.SKIPPED] == 2 and sum(counts.values()) == len(cases)
