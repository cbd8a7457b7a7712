"""The value rules called directly on YAML nodes: exact kinds, bytes, entries and the exact message and
position of every refusal (mutation score of manifest/values.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from etcdsync.core.model import Policy
from etcdsync.errors import ManifestError
from etcdsync.manifest.values import (
    MAX_FROM_FILE_BYTES,
    Entry,
    SourcePolicy,
    compile_entry,
    is_removal,
    node_value,
    resolve_entry,
    resolve_scalar,
    scalar_to_python,
    to_json,
    to_python,
)
from etcdsync.manifest.yamlnodes import CORE_TAG_PREFIX, MAP, SCALAR, SEQ, Node

F = "m.yaml"


def sc(text: str | None, plain: bool = True, tag: str | None = None, line: int = 3, col: int = 4) -> Node:
    return Node(SCALAR, text, plain, None if tag is None else CORE_TAG_PREFIX + tag, line, col)


def mp(*pairs: tuple[str | None, Node], line: int = 2, col: int = 2) -> Node:
    n = Node(MAP, None, False, None, line, col)
    n.items = [(sc(k, line=line + i, col=col), v) for i, (k, v) in enumerate(pairs)]
    return n


def sq(*items: Node) -> Node:
    n = Node(SEQ, None, False, None, 2, 2)
    n.items = list(items)
    return n


def fails(message: str, fn: Any, *args: Any) -> None:
    with pytest.raises(ManifestError) as e:
        fn(*args)
    assert str(e.value) == message
    assert e.value.__suppress_context__ or e.value.__context__ is None


# ------------------------------------------------------------------------------------------------
# YAML 1.2 core typing


@pytest.mark.parametrize("text, plain, tag, kind", [
    ("x", False, None, "str"), ("123", False, None, "str"), (None, True, None, "null"), ("~", True, None, "null"),
    ("True", True, None, "bool"), ("FALSE", True, None, "bool"), ("0o17", True, None, "int"),
    ("0x1F", True, None, "int"), ("-5", True, None, "int"), ("1.5e3", True, None, "float"),
    ("-.inf", True, None, "float"), (".NaN", True, None, "float"), ("no", True, None, "str"),
    ("123", True, "str", "str"), ("", True, "null", "null"), ("null", False, "null", "null"),
    ("true", True, "bool", "bool"), ("false", True, "bool", "bool"),
    ("7", True, "int", "int"), ("0o7", True, "int", "int"), ("0xA", True, "int", "int"),
    ("7", True, "float", "float"), ("7.5", True, "float", "float"), (".inf", True, "float", "float"),
    (".nan", True, "float", "float"), ("0o7", True, "float", "int"), ("0xA", True, "float", "int"),
])
def test_resolve_scalar_kinds(text: str | None, plain: bool, tag: str | None, kind: str) -> None:
    assert resolve_scalar(sc(text, plain, tag), F) == (kind, text or "")


@pytest.mark.parametrize("text, tag, message", [
    ("x", "null", "value tagged '!!null' is not null"),
    ("yes", "bool", "value tagged '!!bool' is not true or false"),
    ("1.5", "int", "value tagged '!!int' is not an integer"),
    ("x", "float", "value tagged '!!float' is not a number"),
    ("0o8", "float", "value tagged '!!float' is not a number"),
    ("x", "timestamp", "unsupported tag"),
])
def test_resolve_scalar_refusals(text: str, tag: str, message: str) -> None:
    fails(f"{F}:3:4: {message}", resolve_scalar, sc(text, True, tag), F)


@pytest.mark.parametrize("text, tag, value", [
    ("0o17", None, 15), ("0x1F", None, 31), ("0755", None, 755), ("-5", None, -5), ("true", None, True),
    ("False", None, False), ("~", None, None), ("no", None, "no"), ("1.5", None, 1.5), (".inf", None, math.inf),
    ("+.inf", None, math.inf), ("-.Inf", None, -math.inf), ("7", "float", 7.0),
])
def test_scalar_to_python(text: str, tag: str | None, value: Any) -> None:
    out = scalar_to_python(sc(text, True, tag), F)
    assert out == value and type(out) is type(value)


def test_scalar_to_python_nan_and_too_large() -> None:
    assert math.isnan(scalar_to_python(sc(".nan"), F))
    fails(f"{F}:3:4: number is too large", scalar_to_python, sc("9" * 5000), F)


def test_to_python_with_empty_keys_and_skip() -> None:
    node = mp((None, sc("1")), ("a", sq(sc("x"), mp(("b", sc("~"))))))
    assert to_python(node, F) == {"": 1, "a": ["x", {"b": None}]}
    seen: list[tuple[Any, ...]] = []

    def skip(path: tuple[Any, ...], n: Node) -> Any:
        seen.append(path)
        return "SKIPPED" if path == ("a", 1) else None

    assert to_python(node, F, skip) == {"": 1, "a": ["x", "SKIPPED"]}
    assert seen == [("",), ("a",), ("a", 0), ("a", 1)]


# ------------------------------------------------------------------------------------------------
# JSON of collections


@pytest.mark.parametrize("text, json", [
    ("1.10", "1.10"), ("1e3", "1e3"), ("+5", "5"), ("0o17", "15"), ("0x1F", "31"), (".5", "0.5"), ("0755", "755"),
    ("000", "0"), ("00.50", "0.50"), ("5.", "5.0"), ("-007.0e+2", "-7.0e+2"), ("+0.0", "0.0"), ("-0", "-0"),
    ("true", "true"), ("FALSE", "false"), ("~", "null"), ("no", '"no"'), ("é\"", '"é\\""'),
])
def test_json_scalars(text: str, json: str) -> None:
    assert to_json(sq(sc(text)), F) == f"[{json}]"


def test_json_of_nested_collections() -> None:
    node = mp(("a", sq(sc("1"), sc("x", plain=False), sc(None))), (None, mp()), ("c", sq()))
    assert to_json(node, F) == '{"a":[1,"x",null],"":{},"c":[]}'


@pytest.mark.parametrize("text, message", [
    (".inf", "infinity and NaN are not representable in JSON (quote the value to store a string)"),
    ("-.inf", "infinity and NaN are not representable in JSON (quote the value to store a string)"),
    (".nan", "infinity and NaN are not representable in JSON (quote the value to store a string)"),
    ("0x" + "f" * 4000, "number is too large"),
])
def test_json_number_refusals(text: str, message: str) -> None:
    fails(f"{F}:3:4: {message}", to_json, sq(sc(text)), F)


def test_node_value() -> None:
    assert node_value(sc("no"), F) == b"no"
    assert node_value(sc(None), F) == b""
    assert node_value(sc("é"), F) == "é".encode()
    assert node_value(mp(("a", sc("1"))), F) == b'{"a":1}'
    fails(f"{F}:3:4: value is not valid Unicode (lone surrogate escape)", node_value, sc("\ud800"), F)
    fails(f"{F}:2:2: value is not valid Unicode (lone surrogate escape)", node_value, mp(("a", sc("\ud800", False))), F)


# ------------------------------------------------------------------------------------------------
# data entries and the long form


def test_compile_entry_short_form() -> None:
    k, v = sc("db/url"), sc("x")
    e = compile_entry(k, v, F, Policy.WARN, False)
    assert (e.rel_key, e.key_node, e.value_node, e.value, e.policy, e.prune, e.secret) == (
        "db/url", k, v, b"x", Policy.WARN, False, False)
    assert compile_entry(sc(None), sc("x"), F, Policy.ENFORCE, True).rel_key == ""


def test_compile_entry_long_form_every_option() -> None:
    k = sc("k")
    v = mp(("value", sc("x")), ("secret", sc("true")), ("prune", sc("false")), ("policy", sc("create-only")))
    e = compile_entry(k, v, F, Policy.WARN, True)
    assert (e.rel_key, e.key_node, e.value_node, e.value, e.policy, e.prune, e.secret) == (
        "k", k, v, b"x", Policy.CREATE_ONLY, False, True)
    e = compile_entry(k, mp(("fromEnv", sc("HOME"))), F, Policy.WARN, False)
    assert (e.value, e.from_env, e.from_file, e.policy, e.prune, e.secret, e.key_node) == (
        None, "HOME", None, Policy.WARN, False, False, k)
    e = compile_entry(k, mp(("fromFile", sc("a.txt")), ("prune", sc("true"))), F, Policy.ENFORCE, False)
    assert (e.value, e.from_env, e.from_file, e.prune) == (None, None, "a.txt", True)


def test_compile_entry_records_which_options_the_entry_gives_itself() -> None:
    k = sc("k")
    for value, own in ((sc("x"), (False, False)), (mp(("value", sc("x"))), (False, False)),
                       (mp(("value", sc("x")), ("prune", sc("true"))), (False, True)),
                       (mp(("value", sc("x")), ("policy", sc("enforce"))), (True, False)),
                       (mp(("value", sc("x")), ("policy", sc("warn")), ("prune", sc("false"))), (True, True))):
        e = compile_entry(k, value, F, Policy.ENFORCE, True)
        assert (e.own_policy, e.own_prune) == own, value
        assert type(e.own_policy) is bool and type(e.own_prune) is bool


# ------------------------------------------------------------------------------------------------
# `{remove: true}` in an overlay


def test_is_removal_true_only_for_remove_true_alone() -> None:
    for text in ("true", "True", "TRUE"):
        assert is_removal("k", mp(("remove", sc(text))), F) is True
    assert is_removal("k", mp(("remove", sc("true", tag="bool"))), F) is True
    for node in (sc("remove"), sq(sc("remove")), mp(("value", sc("remove"))), mp((None, sc("true"))),
                 mp(("remove", sc("true")), ("when", sc("later"))),       # a JSON object with a "remove" field
                 mp((None, sc("x")), ("remove", sc("true")))):           # a null key is no option name
        assert is_removal("k", node, F) is False


def test_remove_beside_options_is_refused_at_the_mapping() -> None:
    fails("m.yaml:2:2: key 'k\\u001b': 'remove' stands alone ({remove: true} removes the key an earlier layer declares); "
          "to store such a mapping as JSON, write {value: {...}}",
          is_removal, "k\x1b", mp(("remove", sc("true")), ("value", sc("1"))), F)
    fails("m.yaml:2:2: key 'k': 'remove' stands alone ({remove: true} removes the key an earlier layer declares); "
          "to store such a mapping as JSON, write {value: {...}}",
          is_removal, "k", mp(("secret", sc("true")), ("remove", sc("true"))), F)


@pytest.mark.parametrize("value", [sc("false"), sc("true", plain=False), sc("yes"), sc("1"), sc(None),
                                   sq(sc("true")), mp(("a", sc("true")))])
def test_remove_must_be_true(value: Node) -> None:
    value.line, value.column = 5, 9
    fails("m.yaml:5:9: key 'k\\u001b': remove must be true (to keep the key, leave it out of the overlay)",
          is_removal, "k\x1b", mp(("remove", value)), F)


def test_remove_with_a_bad_tag_is_refused_at_the_value_in_its_file() -> None:
    fails("m.yaml:3:4: value tagged '!!bool' is not true or false",
          is_removal, "k", mp(("remove", sc("maybe", tag="bool"))), F)


@pytest.mark.parametrize("value, message", [
    (mp(("secret", sc("true"))), "2:2: key 'k' looks like the long form (only option keys) but has none of value, "
     "fromFile, fromEnv; to store such a mapping as JSON, write {value: {...}}"),
    (mp(("value", sc("1")), ("fromEnv", sc("X"))), "2:2: key 'k' looks like the long form (only option keys) but "
     "has more than one of value, fromFile, fromEnv; to store such a mapping as JSON, write {value: {...}}"),
    (mp(("value", sc("1")), ("secret", sc("yes"), )), "3:4: option 'secret' must be true or false"),
    (mp(("value", sc("1")), ("prune", mp())), "2:2: option 'prune' must be true or false"),
    (mp(("value", sc("1")), ("policy", sc("nope"))), "3:4: invalid policy 'nope': expected one of enforce, warn, "
     "create-only"),
    (mp(("value", sc("1")), ("policy", sc("p" * 45))), "3:4: invalid policy '" + "p" * 37 + "...': expected one of "
     "enforce, warn, create-only"),
    (mp(("value", sc("1")), ("policy", mp())), "2:2: invalid policy: expected one of enforce, warn, create-only"),
    (mp(("fromEnv", sc("A=B"))), "3:4: option 'fromEnv' must be an environment variable name"),
    (mp(("fromEnv", sc(""))), "3:4: option 'fromEnv' must be a non-empty string"),
    (mp(("fromFile", mp())), "2:2: option 'fromFile' must be a non-empty string"),
])
def test_compile_entry_long_form_refusals(value: Node, message: str) -> None:
    fails(f"{F}:{message}", compile_entry, sc("k"), value, F, Policy.ENFORCE, True)


HINTLESS = ("is not an option of the long form; a mapping with secret, fromFile or fromEnv may hold only value, "
            "fromFile, fromEnv, secret, policy, prune (to store a JSON object, write {value: {...}})")


def mistyped(hint: str) -> str:
    return HINTLESS.replace("long form;", f"long form (did you mean '{hint}'?);")


@pytest.mark.parametrize("name, message", [
    ("valeu", "'valeu' " + mistyped("value")),
    ("valxxx", "'valxxx' " + mistyped("value")),
    ("VALxxx", "'VALxxx' " + mistyped("value")),
    ("FROMFILE", "'FROMFILE' " + mistyped("fromFile")),
    ("zzzzzz", "'zzzzzz' " + HINTLESS),
    (None, "'' " + HINTLESS),
    ("q" * 45, "'" + "q" * 37 + "...' " + HINTLESS),
])
def test_mistyped_long_form(name: str | None, message: str) -> None:
    value = mp(("secret", sc("true")), (name, sc("x")))
    fails(f"{F}:3:2: key 'k\\u001b': {message}", compile_entry, sc("k\x1b"), value, F, Policy.ENFORCE, True)


def test_a_json_mapping_without_markers_is_stored_as_json() -> None:
    v = mp(("valeu", sc("1")), (None, sc("2")))
    assert compile_entry(sc("k"), v, F, Policy.ENFORCE, True).value == b'{"valeu":1,"":2}'


# ------------------------------------------------------------------------------------------------
# fromFile and fromEnv


def entry(**kw: Any) -> Entry:
    name = "fromFile" if "from_file" in kw else "fromEnv"
    node = mp((name, sc("src", line=5, col=9)))
    node.items[0][1].line, node.items[0][1].column = 5, 9
    return Entry("k\x1b", sc("k"), node, None, **kw)


def test_from_file_relative_to_the_manifest_and_recorded(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "v.txt").write_bytes(b"\x00data")
    policy = SourcePolicy((str(tmp_path) + "/",))
    assert resolve_entry(entry(from_file="v.txt"), str(tmp_path / "d" / F), {}, policy) == b"\x00data"
    assert policy.read == [str(tmp_path / "d" / "v.txt")]


def test_from_file_without_a_manifest_file_is_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "v.txt").write_bytes(b"cwd")
    monkeypatch.chdir(tmp_path)
    assert resolve_entry(entry(from_file="v.txt"), None, {}, SourcePolicy((str(tmp_path),))) == b"cwd"


def test_from_file_size_limit(tmp_path: Path) -> None:
    (tmp_path / "max").write_bytes(b"x" * MAX_FROM_FILE_BYTES)
    (tmp_path / "over").write_bytes(b"x" * (MAX_FROM_FILE_BYTES + 1))
    policy = SourcePolicy((str(tmp_path),))
    assert len(resolve_entry(entry(from_file="max"), str(tmp_path / F), {}, policy)) == MAX_FROM_FILE_BYTES
    fails(f"{tmp_path / F}:5:9: fromFile of key 'k\\u001b': 'over' is larger than etcd's request limit",
          resolve_entry, entry(from_file="over"), str(tmp_path / F), {}, policy)


def test_from_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    f = str(tmp_path / F)
    where = f"{f}:5:9: fromFile of key 'k\\u001b'"
    policy = SourcePolicy((str(tmp_path),))
    fails(f"{where}: 'dir' is not a regular file (a pipe, device or directory)",
          resolve_entry, entry(from_file="dir"), f, {}, policy)
    fails(f"{where}: cannot read 'missing' (No such file or directory)",
          resolve_entry, entry(from_file="missing"), f, {}, policy)
    fails(f"{where}: invalid path", resolve_entry, entry(from_file="a\x00b"), f, {}, policy)
    fails(f"{where}: '/proc/self/environ' is under /proc, /sys or /dev, which are never read",
          resolve_entry, entry(from_file="/proc/self/environ"), f, {}, policy)
    outside = os.path.realpath("/etc/hostname")
    fails(f"{where}: '/etc/hostname' resolves to {outside}, outside the manifest root {tmp_path} "
          "(allow a directory with --file-root DIR)", resolve_entry, entry(from_file="/etc/hostname"), f, {}, policy)
    fails(f"{where}: '/etc/hostname' resolves to {outside}, outside the manifest root ? "
          "(allow a directory with --file-root DIR)",
          resolve_entry, entry(from_file="/etc/hostname"), f, {}, SourcePolicy(()))


def test_root_with_a_trailing_slash_contains_its_files(tmp_path: Path) -> None:
    (tmp_path / "v").write_bytes(b"1")
    assert resolve_entry(entry(from_file="v"), str(tmp_path / F), {}, SourcePolicy((str(tmp_path) + "/",))) == b"1"
    fails(f"{tmp_path / F}:5:9: fromFile of key 'k\\u001b': '../x' resolves to {tmp_path.parent / 'x'}, outside the "
          f"manifest root {tmp_path}x/ (allow a directory with --file-root DIR)",
          resolve_entry, entry(from_file="../x"), str(tmp_path / F), {}, SourcePolicy((str(tmp_path) + "x/",)))


def test_from_env() -> None:
    where = f"{F}:5:9: fromEnv of key 'k\\u001b'"
    assert resolve_entry(entry(from_env="A"), F, {"A": "é\udcff"}, SourcePolicy(())) == "é".encode() + b"\xff"
    assert resolve_entry(entry(from_env="A"), F, {"A": ""}, SourcePolicy(())) == b""
    assert resolve_entry(entry(from_env="A"), F, {"A": b"raw"}, SourcePolicy(())) == b"raw"  # type: ignore[dict-item]
    fails(f"{where}: environment variable A is not set", resolve_entry, entry(from_env="A"), F, {}, SourcePolicy(()))
    fails(f"{where}: environment variable A is empty (a secret must not be empty)",
          resolve_entry, entry(from_env="A", secret=True), F, {"A": ""}, SourcePolicy(()))
    fails(f"{where}: environment variable etcdsync_X is one of etcdsync's own settings (ETCDSYNC_*, ETCDCTL_*), "
          "which are never read", resolve_entry, entry(from_env="etcdsync_X"), F, {"etcdsync_X": "1"},
          SourcePolicy(()))
    allow = ("APP_*", "q" * 45)
    fails(f"{where}: environment variable B is not allowed by --env-allow (APP_* {'q' * 37}...)",
          resolve_entry, entry(from_env="B"), F, {"B": "1"}, SourcePolicy((), allow))
    assert resolve_entry(entry(from_env="APP_1"), F, {"APP_1": "1"}, SourcePolicy((), allow)) == b"1"


def test_a_given_value_is_returned_as_is() -> None:
    e = Entry("k", sc("k"), sc("v"), b"v", from_file="ignored")
    assert resolve_entry(e, F, {}, SourcePolicy(())) == b"v"


# ------------------------------------------------------------------------------------------------
# mutants that survived the first round


def test_tag_errors_name_the_file_through_every_caller() -> None:
    bad = sc("x", True, "bool")
    fails(f"{F}:3:4: value tagged '!!bool' is not true or false", scalar_to_python, bad, F)
    fails(f"{F}:3:4: value tagged '!!bool' is not true or false", to_python, sq(bad), F)
    fails(f"{F}:3:4: value tagged '!!bool' is not true or false",
          compile_entry, sc("k"), mp(("value", sc("1")), ("secret", bad)), F, Policy.ENFORCE, True)


def test_a_root_whose_name_ends_in_x_contains_its_files(tmp_path: Path) -> None:
    root = tmp_path / "rootX"
    root.mkdir()
    (root / "v").write_bytes(b"1")
    assert resolve_entry(entry(from_file="v"), str(root / F), {}, SourcePolicy((str(root),))) == b"1"
