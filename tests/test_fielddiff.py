"""Field-level diffs inside JSON values: the pure comparison, its text and JSON rendering (golden)."""

from __future__ import annotations

import json
from typing import Any

from etcdsync.core.fielddiff import FieldChange, field_changes
from etcdsync.core.inventory import Chunk, Entry, Inventory
from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.core.plan import Observed, plan
from etcdsync.core.render import MAX_FIELDS, plan_json, render_plan


def fc(old: Any, new: Any) -> list[FieldChange] | None:
    return field_changes(json.dumps(old).encode(), json.dumps(new).encode())


def test_one_field_of_a_mapping_changes() -> None:
    assert fc({"beta": True, "limit": 3}, {"beta": True, "limit": 4}) == [FieldChange("limit", "update", 3, 4)]


def test_added_and_removed_fields_in_document_order() -> None:
    got = fc({"a": 1, "gone": "x", "b": 2}, {"b": 2, "new": True, "a": 1})
    assert got == [FieldChange("new", "add", new=True), FieldChange("gone", "remove", old="x")]


def test_nested_paths_and_quoted_keys() -> None:
    got = fc({"db": {"pool": {"size": 5}}, "a.b": 1, "two words": 1, "ünï": 1},
             {"db": {"pool": {"size": 6}}, "a.b": 2, "two words": 2, "ünï": 2})
    assert [f.path for f in got or []] == ["db.pool.size", '["a.b"]', '["two words"]', '["ünï"]']


def test_a_list_item_removed_in_the_middle_is_one_change() -> None:
    got = fc({"items": ["a", "b", "c", "d"]}, {"items": ["a", "b", "d"]})
    assert got == [FieldChange("items[2]", "remove", old="c")]


def test_list_items_added_and_replaced() -> None:
    assert fc(["a", "b"], ["a", "x", "b"]) == [FieldChange("[1]", "add", new="x")]
    assert fc([{"n": 1, "k": "v"}], [{"n": 2, "k": "v"}]) == [FieldChange("[0].n", "update", 1, 2)]
    assert fc(["a"], ["b", "c"]) == [FieldChange("[0]", "remove", old="a"), FieldChange("[0]", "add", new="b"),
                                     FieldChange("[1]", "add", new="c")]


def test_json_types_are_told_apart() -> None:
    # equal in Python, different values in JSON
    assert fc({"v": 1}, {"v": 1.0}) == [FieldChange("v", "update", 1, 1.0)]
    assert fc({"v": 1}, {"v": True}) == [FieldChange("v", "update", 1, True)]
    assert fc({"v": {}}, {"v": []}) == [FieldChange("v", "update", {}, [])]


def test_same_json_written_differently_is_an_empty_list() -> None:
    assert field_changes(b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}') == []


def test_not_both_objects_or_both_arrays_is_none() -> None:
    for old, new in ((b"5", b"6"), (b'{"a":1}', b"[1]"), (b"not json", b'{"a":1}'), (b'{"a":1}', None),
                     (b"\xff", b'{"a":1}'), (b'"text"', b'"other"'), (b'{"a":1}', b'{"a":1')):
        assert field_changes(old, new) is None, (old, new)


def test_deeply_nested_input_does_not_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert field_changes(deep, b"[1]") is None


P = "/config/shop/"


def field_plan(secret: bool = False, wide: bool = False) -> Any:
    new = {"beta": True, "limit": 4, "items": ["a", "b", "d"], "db": {"url": "postgres://db/\x1b[31mred"}}
    old = {"limit": 3, "items": ["a", "b", "c", "d"], "db": {"url": "postgres://old"}, "retired": "yes"}
    if wide:
        new = {f"k{i}": i for i in range(MAX_FIELDS + 5)}
        old = {}
    keys = [DesiredKey(P + "features", json.dumps(new).encode(), P, document="ConfigSet/shop", secret=secret),
            DesiredKey(P + "text", b"line", P, document="ConfigSet/shop"),
            DesiredKey(P + "reordered", b'{"a":1,"b":2}', P, document="ConfigSet/shop")]
    desired = DesiredState(keys={k.key: k for k in keys}, live=(), prefixes=(P,))
    observed = {P + "features": Observed(json.dumps(old).encode(), 3), P + "text": Observed(b"old line", 4),
                P + "reordered": Observed(b'{"b": 2, "a": 1}', 5)}
    inv = Inventory("shop")
    inv.add_chunk(Chunk("/.etcdsync/sets/shop/inventory/a", 2, {P + k: Entry(P) for k in ("features", "text", "reordered")}))
    return plan(desired, observed, inv, {})


def test_text_diff_shows_changed_fields_golden(golden: Any) -> None:
    golden("diff-fields.txt", render_plan(field_plan()) + "\n")


def test_json_output_carries_the_field_changes_golden(golden: Any) -> None:
    doc = plan_json(field_plan(), applyset_origin="flag")
    golden("diff-fields.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    features = next(c for c in doc["changes"] if c["key"] == P + "features")
    assert {"path": "limit", "op": "update", "old": 3, "new": 4} in features["fields"]
    text = next(c for c in doc["changes"] if c["key"] == P + "text")
    assert "fields" not in text


def test_secret_values_get_no_field_diff() -> None:
    p = field_plan(secret=True)
    out = render_plan(p)
    assert "limit" not in out and "postgres" not in out and "sha256:" in out
    doc = plan_json(p, applyset_origin="flag")
    assert all("fields" not in c for c in doc["changes"] if c["secret"])
    assert "postgres" not in json.dumps(doc)


def test_many_changed_fields_are_capped_in_text_not_in_json() -> None:
    p = field_plan(wide=True)
    out = render_plan(p)
    assert f"k{MAX_FIELDS - 1}: " in out and f"k{MAX_FIELDS}: " not in out
    assert "... and 5 more changed fields (-o json lists them)" in out
    features = next(c for c in plan_json(p, applyset_origin="flag")["changes"] if c["key"] == P + "features")
    assert len(features["fields"]) == MAX_FIELDS + 5
