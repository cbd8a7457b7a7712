"""The loader's fast schema check (`schema.conforms`) against jsonschema itself.

A valid tree never imports jsonschema: `conforms` decides, and jsonschema is loaded only to word the
errors of an invalid document. So `conforms` must never call an invalid document valid. Pure: the
documents are generated (Hypothesis) from the schema's own vocabulary, mostly near-valid ones, and
each definition of MANIFEST_SCHEMA is checked alone too.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from etcdsync.manifest.schema import KINDS, MANIFEST_SCHEMA, fast_valid

DEFS = MANIFEST_SCHEMA["$defs"]


def _names(schema: Any, out: set[str]) -> set[str]:
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k == "properties":
                out.update(v)
            if k in ("required",):
                out.update(v)
            _names(v, out)
    elif isinstance(schema, list):
        for v in schema:
            _names(v, out)
    return out


NAMES = sorted(_names(MANIFEST_SCHEMA, set()) | {"extra", "Value", ""})
STRINGS = ["", "x", "10s", "1m30s", "500ms", "1.5h", "s", "10", "/", "/config/", "/config", "config/", "//",
           "/healthz", "healthz", "enforce", "warn", "create-only", "merge", "replace", "json", "grpc",
           "etcdsync/v1", "ConfigSet", "Service", "ApplySet", "value", "localhost", "0"]
SCALARS = st.one_of(
    st.sampled_from(STRINGS), st.text(max_size=6), st.booleans(), st.none(),
    st.sampled_from([0, 1, -1, 3000, 65535, 65536, 0.0, 1.0, 1.5, -0.5, 2.0, math.inf, -math.inf, math.nan]),
    st.integers(-5, 70000), st.floats(allow_nan=True),
)


def values(names: list[str]) -> st.SearchStrategy[Any]:
    """JSON-like values whose mapping keys are mostly `names` (so that near-valid shapes are common)."""
    keys = st.one_of(st.sampled_from(names), st.sampled_from(NAMES))
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=10,
    )


VALUES = values(NAMES)


def _valid_skeleton(kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "etcdsync/v1", "kind": kind, "metadata": {"name": "n"}}
    if kind == "ConfigSet":
        doc["spec"] = {"prefix": "/config/", "policy": "warn", "prune": False, "data": {}}
    elif kind == "Service":
        doc["spec"] = {"ttl": "10s", "instances": [{"id": "a", "host": "h", "port": 1, "check": {"tcp": True}}]}
    return doc


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid document of a kind with a few paths replaced, removed or added."""
    kind = draw(st.sampled_from(KINDS))
    doc = _valid_skeleton(kind)
    for _ in range(draw(st.integers(0, 4))):
        node: Any = doc
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
            child = node[key]
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
        action = draw(st.sampled_from(["set", "del", "add"]))
        if isinstance(node, dict):
            if action == "del" and node:
                del node[draw(st.sampled_from(sorted(node)))]
            else:
                key = draw(st.sampled_from(sorted(node) if action == "set" and node else NAMES))
                node[key] = draw(VALUES)
        elif isinstance(node, list):
            if action == "del" and node:
                node.pop()
            else:
                node.append(draw(VALUES))
    return kind, doc


def _jsonschema_valid(name: str, instance: Any) -> bool:
    return Draft202012Validator({"$defs": DEFS, "$ref": f"#/$defs/{name}"}).is_valid(instance)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_fast_check_agrees_with_jsonschema_on_documents(case: tuple[str, dict[str, Any]]) -> None:
    kind, doc = case
    assert fast_valid(kind, doc) == _jsonschema_valid(kind, doc), doc


@pytest.mark.parametrize("name", sorted(DEFS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_check_agrees_with_jsonschema_on_each_definition(name: str, data: st.DataObject) -> None:
    from etcdsync.manifest.schema import conforms

    own = sorted(_names(DEFS[name], set()) | ({"remove"} if name == "dataValue" else set())) or NAMES
    value = data.draw(values(own))
    assert conforms(DEFS[name], value, DEFS) == _jsonschema_valid(name, value), value


# Hand-picked edges of the type rules (bool is not a number, 1.0 is an integer, NaN compares false).
EDGES = [
    ("instance", {"id": "a", "host": "h", "port": 1.0}), ("instance", {"id": "a", "host": "h", "port": True}),
    ("instance", {"id": "a", "host": "h", "port": 0}), ("instance", {"id": "a", "host": "h", "port": 65536}),
    ("instance", {"id": "a", "host": "h", "port": math.nan}), ("instance", {"id": 1, "remove": True}),
    ("instance", {"id": "", "remove": True}), ("instance", {"remove": 1}), ("instance", {"id": "a", "remove": True}),
    ("check", {"tcp": True, "http": "/x"}), ("check", {"tcp": 1}), ("check", {"http": "x"}), ("check", {}),
    ("duration", 0), ("duration", False), ("duration", math.nan), ("duration", -1.5), ("duration", "10"),
    ("longForm", {"value": 1, "fromFile": "f"}), ("longForm", {"fromEnv": ""}), ("longForm", {"secret": True}),
    ("dataValue", {"value": 1, "x": 2}), ("dataValue", {"secret": True, "x": 2}), ("dataValue", {"remove": True}),
    ("dataValue", {"remove": True, "value": 1}), ("dataValue", {}), ("dataValue", {"remove": False}),
    ("metadata", {"name": "n", "labels": {"a": 1}}), ("metadata", {"name": ""}), ("remove", 1), ("policy", "Warn"),
]


@pytest.mark.parametrize(("name", "value"), EDGES)
def test_fast_check_agrees_with_jsonschema_on_edges(name: str, value: Any) -> None:
    from etcdsync.manifest.schema import conforms

    assert conforms(DEFS[name], value, DEFS) == _jsonschema_valid(name, value), value


@pytest.mark.parametrize("kind", KINDS)
def test_the_valid_skeletons_are_valid(kind: str) -> None:
    assert fast_valid(kind, _valid_skeleton(kind)) is True
    assert _jsonschema_valid(kind, _valid_skeleton(kind))


def test_an_unknown_keyword_is_left_to_jsonschema() -> None:
    from etcdsync.manifest import schema

    assert schema.conforms({"type": "string"}, "x", DEFS)
    with pytest.raises(schema._Unsupported):
        schema.conforms({"maxLength": 3}, "x", DEFS)
    with pytest.raises(schema._Unsupported):
        schema.conforms({"$ref": "other.json"}, "x", DEFS)
