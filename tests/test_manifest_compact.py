"""The reader's compact `spec.data` pairs (pure): the manifest loader reads each document's
`spec.data` with `iter_documents(..., compact_data=True)`, which keeps a plain pair as a tuple of
texts and positions instead of two Nodes. Everything else must be exactly as with Nodes: the pairs
(texts, positions, order), every error (message, line and column), the alias weight, and what
`load_manifests` makes of them. Each case runs with libyaml's parser and the pure-Python one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from etcdsync.core.model import Source
from etcdsync.errors import ManifestError
from etcdsync.manifest import load_manifests, yamlnodes
from etcdsync.manifest.yamlnodes import SCALAR

HEAD = "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n  prefix: /c/\n  data:\n"

MIXED = HEAD + """\
    plain: text
    quoted: "1.10"
    single: 'no'
    empty:
    tilde: ~
    utf8: "caf\u00e9"
    k\u00e9y: v
    tagged: !!str 5
    &ka anchored-key: v
    anchored: &va shared
    alias-value: *va
    *ka : aliased-key-is-a-duplicate-elsewhere
    "<<": a quoted merge key is a key
    json: {a: 1, b: [true, null]}
    list: [1, 2]
    long: {value: x, policy: warn}
    block: |
      two
      lines
    flow: {x: y}
    last: end
"""


@pytest.fixture(params=["C", "pure"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "C":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("no libyaml")
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.SafeLoader)
    return request.param


def _pairs(text: str, compact: bool) -> tuple[list[tuple[Any, ...]], int]:
    """The data pairs of the first document, each as (key text, line, column, value), and the data
    node's alias weight; a value that is a Node is shown by kind, text, tag and position."""
    [doc] = list(yamlnodes.iter_documents(text, "m.yaml", compact_data=compact))
    spec = doc.root.get("spec")
    assert spec is not None
    data = spec.get("data")
    assert data is not None
    out = []
    for pair in data.items:
        if len(pair) == 4:
            out.append(pair)
            continue
        k, v = pair
        value = v.value if v.kind == SCALAR and v.tag is None else (v.kind, v.value, v.tag, v.line, v.column)
        out.append((k.value, k.line, k.column, value))
    return out, data.size


def _error(text: str, compact: bool) -> str:
    with pytest.raises(ManifestError) as err:
        list(yamlnodes.iter_documents(text, "m.yaml", compact_data=compact))
    return str(err.value)


def test_compact_pairs_are_the_node_pairs(parser: str) -> None:
    text = MIXED.replace("    *ka : aliased-key-is-a-duplicate-elsewhere\n", "")
    assert _pairs(text, True) == _pairs(text, False)
    pairs, _ = _pairs(text, True)
    [doc] = list(yamlnodes.iter_documents(text, "m.yaml", compact_data=True))
    items = doc.root.get("spec").get("data").items  # type: ignore[union-attr]
    compact = [p[0] for p in items if len(p) == 4]
    assert compact[:5] == ["plain", "quoted", "single", "empty", "tilde"], "the plain pairs are compacted"
    assert "utf8" not in compact and "tagged" not in compact and "anchored" not in compact
    assert pairs[0] == ("plain", 7, 5, "text")


def test_only_spec_data_of_a_manifest_is_compacted(parser: str) -> None:
    other = "spec:\n  data:\n    a: b\n  other:\n    c: d\ndata:\n  e: f\n"
    [doc] = list(yamlnodes.iter_documents(other, "m.yaml", compact_data=True))
    spec = doc.root.get("spec")
    assert spec is not None
    assert all(len(p) == 4 for p in spec.get("data").items)  # type: ignore[union-attr]
    assert all(len(p) == 2 for p in spec.get("other").items)  # type: ignore[union-attr]
    assert all(len(p) == 2 for p in doc.root.get("data").items)  # type: ignore[union-attr]
    [doc] = list(yamlnodes.iter_documents(other, "m.yaml"))
    assert all(len(p) == 2 for p in doc.root.get("spec").get("data").items)  # type: ignore[union-attr]
    anchored = "spec:\n  data: &d\n    a: b\n  again: *d\n"
    [doc] = list(yamlnodes.iter_documents(anchored, "m.yaml", compact_data=True))
    assert all(len(p) == 2 for p in doc.root.get("spec").get("data").items), \
        "an anchored data mapping can be reached by an alias: it keeps its Nodes"  # type: ignore[union-attr]


@pytest.mark.parametrize("data, where", [
    ("    a: 1\n    b: 2\n    a: 3\n", "m.yaml:9:5: duplicate key 'a' (first defined at line 7)"),
    ("    a: 1\n    'a': 3\n", "m.yaml:8:5: duplicate key 'a' (first defined at line 7)"),
    ("    a: 1\n    !!str a: 3\n", "m.yaml:8:5: duplicate key 'a'"),
    ("    &x a: 1\n    *x : 3\n", "duplicate key 'a'"),
    ("    <<: {a: 1}\n", "m.yaml:7:5: merge keys ('<<') are not supported"),
    ("    a: 1\n    <<: *x\n", "m.yaml:8:5: merge keys"),
    ("    a: 1\n    b: *x\n", "m.yaml:8:8: undefined alias '*x'"),
    ("    [a]: 1\n", "mapping keys must be scalars"),
    ("    {a: 1}: 1\n", "mapping keys must be scalars"),
    ("    a: !foo 1\n", "m.yaml:7:8: tag '!foo' is not allowed"),
    ("    !foo a: 1\n", "m.yaml:7:5: tag '!foo' is not allowed"),
    ("    a: &x [*x]\n", "recursive alias"),
    ("    a: b\n   c: d\n", "invalid YAML"),
])
def test_errors_in_data_are_the_same_compacted(parser: str, data: str, where: str) -> None:
    text = HEAD + data
    message = _error(text, True)
    assert message == _error(text, False)
    assert where in message


def test_the_alias_bound_weighs_compact_pairs_like_nodes(parser: str) -> None:
    big = "x" * 5000
    body = "".join(f"    k{i}: {big}\n" for i in range(50))
    assert _pairs(HEAD + body, True)[1] == _pairs(HEAD + body, False)[1]
    # a data mapping (with compact pairs) inside an anchored spec, expanded by aliases past the bound
    doc = ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec: &s\n  prefix: /c/\n  data:\n"
           + "".join(f"    k{i}: v\n" for i in range(2000)) + "x: [" + ", ".join(["*s"] * 6) + "]\n")
    assert "aliases expand to too many nodes" in _error(doc, True) == _error(doc, False)


def test_load_manifests_reads_every_form_with_its_position(parser: str, tmp_path: Path) -> None:
    text = MIXED.replace("    *ka : aliased-key-is-a-duplicate-elsewhere\n", "")
    (tmp_path / "m.yaml").write_text(text, encoding="utf-8")
    state = load_manifests([tmp_path], environ={})
    file = str(tmp_path / "m.yaml")
    got = {k[len("/c/"):]: (d.value, d.source) for k, d in state.keys.items()}
    assert got["plain"] == (b"text", Source(file, 7, 5))
    assert got["quoted"] == (b"1.10", Source(file, 8, 5))
    assert got["single"] == (b"no", Source(file, 9, 5))
    assert got["empty"][0] == b"" and got["tilde"][0] == b"~"
    assert got["utf8"] == ("caf\u00e9".encode(), Source(file, 12, 5))
    assert got["k\u00e9y"][0] == b"v" and got["tagged"][0] == b"5"
    assert got["anchored-key"][0] == b"v" and got["anchored"][0] == b"shared" and got["alias-value"][0] == b"shared"
    assert got["<<"][0] == b"a quoted merge key is a key"
    assert got["json"][0] == b'{"a":1,"b":[true,null]}' and got["list"][0] == b"[1,2]"
    assert got["block"][0] == b"two\nlines\n" and got["last"] == (b"end", Source(file, 26, 5))
    assert state.keys["/c/long"].value == b"x" and state.keys["/c/long"].policy.value == "warn"
    assert list(state.keys) == sorted(state.keys)


@pytest.mark.parametrize("data, where", [
    ("    ok: 1\n    a//b: 1\n", ":8:5: key 'a//b' has an empty path segment"),
    ("    ok: 1\n    /a: 1\n", ":8:5: key '/a' must be relative"),
    ("    ok: 1\n    a/: 1\n", ":8:5: key 'a/' has an empty path segment"),
    ("    ok: 1\n    a/../b: 1\n", ":8:5: key 'a/../b' contains a '.' or '..' path segment"),
    ("    ok: 1\n    ./b: 1\n", ":8:5: key './b' contains a '.'"),
    ("    ok: 1\n    a.b/c.d: 1\n    x/\u200by: 1\n", ":9:5: key 'x/\\u200by' contains a bidirectional or zero-width"),
    ("    ok: 1\n    \"a\\tb\": 1\n", ":8:5: key 'a\\u0009b' contains a control character"),
    ("    ok: 1\n    \"\": 1\n", ":8:5: empty key in data"),
    ("    ok: 1\n    e\u0301: 1\n", ":8:5: key '"),
    ("    ok: \"\\ud800\"\n", ":7:9: value is not valid Unicode"),   # libyaml: its own error at 7:12
])
def test_bad_keys_and_values_are_named_at_their_position(parser: str, tmp_path: Path, data: str, where: str) -> None:
    if parser == "C" and "Unicode" in where:
        where = ":7:12: invalid YAML: found invalid Unicode character escape code"
    (tmp_path / "m.yaml").write_text(HEAD + data, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ManifestError) as err:
        load_manifests([tmp_path], environ={})
    assert where in str(err.value)


def test_a_key_at_the_size_limit_is_refused_at_its_position(parser: str, tmp_path: Path) -> None:
    from etcdsync.manifest.loader import MAX_KEY_VALUE_BYTES

    (tmp_path / "m.yaml").write_text(HEAD + "    ok: 1\n    big: " + "x" * MAX_KEY_VALUE_BYTES + "\n")
    with pytest.raises(ManifestError, match=r"m.yaml:8:5: key '/c/big' is too large"):
        load_manifests([tmp_path], environ={})
    (tmp_path / "m.yaml").write_text(HEAD + "    ok: " + "x" * (MAX_KEY_VALUE_BYTES - len("/c/ok")) + "\n")
    assert len(load_manifests([tmp_path], environ={}).keys["/c/ok"].value) == MAX_KEY_VALUE_BYTES - 5


@pytest.mark.parametrize("code", [c for c in range(0x80) if c not in (0x09, 0x0A, 0x0D) and not 0x20 <= c < 0x7F])
def test_every_ascii_control_character_is_refused_at_its_position(code: int) -> None:
    """decode() checks an ASCII file without its expression unless a byte is left over: each control
    character (also DEL) must still be found, at its line and column."""
    data = b"a: 1\nb: x" + bytes([code]) + b"y\n"
    with pytest.raises(ManifestError, match=rf"^m.yaml:2:5: control character U\+{code:04X} is not allowed"):
        yamlnodes.decode(data, "m.yaml")
    assert yamlnodes.decode(b"a: 1\n\tb: x y\r\n", "m.yaml") == "a: 1\n\tb: x y\r\n"
