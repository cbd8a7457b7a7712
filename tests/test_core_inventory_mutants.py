"""Inventory chunks and the ownership record, asserted exactly: encoded bytes, decoded entries, and the
exact refusal for every malformed shape (mutation score of inventory.py)."""

from __future__ import annotations

import pytest

from etcdsync.core.inventory import (
    LOOKUPS_BEFORE_INDEX,
    Chunk,
    Entry,
    Inventory,
    Ownership,
    check_applyset_name,
    decode_chunk,
    encode_chunk,
    fence_key,
    inventory_prefix,
    parse_ownership,
    resolve_applyset,
    sets_prefix,
)
from etcdsync.core.model import DesiredKey, DesiredState, Source
from etcdsync.errors import InventoryError, UsageError

R = "/.etcdsync/"
K = R + "sets/me/inventory/c1"


def test_key_layout() -> None:
    assert sets_prefix(R) == "/.etcdsync/sets/"
    assert inventory_prefix(R, "me") == "/.etcdsync/sets/me/inventory/"
    assert fence_key(R) == "/.etcdsync/ownership"


@pytest.mark.parametrize("name", ["a", "A9._-", "x" * 63])
def test_applyset_names_accepted(name: str) -> None:
    assert check_applyset_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "x" * 64, "a/b", "a b"])
def test_applyset_names_refused(name: str) -> None:
    with pytest.raises(UsageError) as e:
        check_applyset_name(name)
    assert str(e.value) == (f"applyset {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")


def test_encode_chunk_exact_bytes() -> None:
    entries = {"/b/y": Entry("/b/", False, True), "/a/x": Entry("/a/"), "/a/z/é": Entry("/a/", True, True),
               "/b/w": Entry("/b/", False)}
    assert encode_chunk(entries) == ('{"v":2,"prefixes":{"/a/":["x","z/é"],"/b/":["w","y"]},'
                                     '"noprune":["/b/w","/b/y"],"secret":["/a/z/é","/b/y"]}').encode()
    assert decode_chunk(K, encode_chunk(entries)) == entries


def test_encode_chunk_plain_and_empty() -> None:
    assert encode_chunk({"/a/x": Entry("/a/")}) == b'{"v":2,"prefixes":{"/a/":["x"]}}'
    assert encode_chunk({}) == b'{"v":2,"prefixes":{}}'
    assert encode_chunk({"/a/x": Entry("/a/", document="ConfigSet/a")}) == \
        b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":true}}}'
    mixed = {"/a/x": Entry("/a/", document="ConfigSet/b"), "/a/y": Entry("/a/", document="ConfigSet/a"),
             "/a/z": Entry("/a/", False, True)}
    assert encode_chunk(mixed) == (b'{"v":2,"prefixes":{"/a/":["x","y","z"]},'
                                   b'"documents":{"ConfigSet/a":{"/a/":["y"]},"ConfigSet/b":{"/a/":["x"]}},'
                                   b'"noprune":["/a/z"],"secret":["/a/z"]}')
    assert decode_chunk(K, encode_chunk(mixed)) == mixed


def test_encode_chunk_refuses_a_key_outside_its_prefix() -> None:
    with pytest.raises(ValueError, match=r"^/b/x: not under its recorded prefix /a/$"):
        encode_chunk({"/b/x": Entry("/a/")})


def test_decode_chunk_entries() -> None:
    value = b'{"v":1,"prefixes":{"/a/":["x","y"],"/b/":[]},"noprune":["/a/y"],"secret":["/a/x","/a/y"]}'
    assert decode_chunk(K, value) == {"/a/x": Entry("/a/", True, True), "/a/y": Entry("/a/", False, True)}
    assert decode_chunk(K, b'{"v":1,"prefixes":{}}') == {}
    value = b'{"v":2,"prefixes":{"/a/":["x","y"],"/b/":["z"]},"documents":{"C/a":{"/a/":["y"],"/b/":true}},"noprune":["/a/y"]}'
    assert decode_chunk(K, value) == {"/a/x": Entry("/a/"), "/a/y": Entry("/a/", False, False, "C/a"),
                                      "/b/z": Entry("/b/", True, False, "C/a")}


def refusal(reason: str, key: str = K) -> str:
    return (f"{key}: inventory chunk is not readable ({reason}); "
            "fix or delete it by hand, etcdsync will not guess what it owns")


@pytest.mark.parametrize("value, reason", [
    (b"[]", "not a JSON object"),
    (b'{"prefixes":{}}', "unsupported inventory version null"),
    (b'{"v":3,"prefixes":{}}', "unsupported inventory version 3"),
    (b'{"v":0,"prefixes":{}}', "unsupported inventory version 0"),
    (b'{"v":1,"prefixes":{},"documents":{}}', "unknown field 'documents'"),
    (b'{"v":2,"prefixes":{},"documents":[]}', "'documents' is not an object"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"/a":{"/a/":true}}}', "document '/a' is not <kind>/<name>"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/":{"/a/":true}}}', "document 'C/' is not <kind>/<name>"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":[]}}',
     "the keys of document 'C/a' are not a non-empty object of prefixes"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{}}}',
     "the keys of document 'C/a' are not a non-empty object of prefixes"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/b/":true}}}',
     "document 'C/a' names prefix '/b/', which the chunk does not list"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":false}}}',
     "the keys of document 'C/a' under '/a/' are not true or a list of strings"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":[]}}}',
     "the keys of document 'C/a' under '/a/' are not true or a list of strings"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":["x",1]}}}',
     "the keys of document 'C/a' under '/a/' are not true or a list of strings"),
    (b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":["z","y","x"]}}}',
     "document 'C/a' names 'y' under '/a/', which the chunk does not list"),
    (b'{"v":2,"prefixes":{"/a/":["x","y"]},"documents":{"C/a":{"/a/":true},"C/b":{"/a/":["y"]}}}',
     "key '/a/y' has two documents ('C/a' and 'C/b')"),
    (b'{"v":true,"prefixes":{}}', "unsupported inventory version true"),
    (b'{"v":1.0,"prefixes":{}}', "unsupported inventory version 1.0"),
    (b'{"v":"1","prefixes":{}}', 'unsupported inventory version "1"'),
    (b'{"v":1,"prefixes":{},"zz":1,"yy":2}', "unknown field 'yy'"),
    (b'{"v":1}', "'prefixes' is not an object"),
    (b'{"v":1,"prefixes":[]}', "'prefixes' is not an object"),
    (b'{"v":1,"v":1,"prefixes":{}}', "field 'v' appears twice"),
    (b'{"v":1,"prefixes":{"/a":["x"]}}', "prefix '/a' does not end with '/' or holds a control character"),
    (b'{"v":1,"prefixes":{"/\\u0001/":["x"]}}', "prefix '/\\x01/' does not end with '/' or holds a control character"),
    (b'{"v":1,"prefixes":{"/a/../":["x"]}}', "prefix '/a/../' has a '.' or '..' segment"),
    (b'{"v":1,"prefixes":{"/./":["x"]}}', "prefix '/./' has a '.' or '..' segment"),
    (b'{"v":1,"prefixes":{"/.etcdsync/x/":["x"]}}', "prefix '/.etcdsync/x/' is under the reserved prefix"),
    (b'{"v":1,"prefixes":{"/a/":"x"}}', "the keys of prefix '/a/' are not a list"),
    (b'{"v":1,"prefixes":{"/a/":[1]}}', "a key under '/a/' is not a string"),
    (b'{"v":1,"prefixes":{"/a/":[""]}}', "key '' under '/a/' is not a relative key that stays under its prefix"),
    (b'{"v":1,"prefixes":{"/a/":["/x"]}}', "key '/x' under '/a/' is not a relative key that stays under its prefix"),
    (b'{"v":1,"prefixes":{"/a/":["x/../../y"]}}',
     "key 'x/../../y' under '/a/' is not a relative key that stays under its prefix"),
    (b'{"v":1,"prefixes":{"/a/":["./x"]}}', "key './x' under '/a/' is not a relative key that stays under its prefix"),
    (b'{"v":1,"prefixes":{"/a/":["x\\u007f"]}}',
     "key 'x\\x7f' under '/a/' is not a relative key that stays under its prefix"),
    (b'{"v":1,"prefixes":{"/a/":["x"]},"noprune":"/a/x"}', "'noprune' is not a list of strings"),
    (b'{"v":1,"prefixes":{"/a/":["x"]},"secret":[1]}', "'secret' is not a list of strings"),
    (b'{"v":1,"prefixes":{"/a/":["x"]},"secret":["/a/z","/a/y"]}', "'secret' names '/a/y', which the chunk does not list"),
    (b'{"v":1,"prefixes":{"/a/":["x"]},"noprune":["/b/x"]}', "'noprune' names '/b/x', which the chunk does not list"),
])
def test_decode_chunk_refusals(value: bytes, reason: str) -> None:
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, value, reserved=R)
    assert str(e.value) == refusal(reason)


def test_decode_chunk_without_reserved_accepts_any_prefix() -> None:
    assert decode_chunk(K, b'{"v":1,"prefixes":{"/.etcdsync/x/":["k"]}}') == {"/.etcdsync/x/k": Entry("/.etcdsync/x/")}


def test_decode_chunk_not_json_and_long_reasons_are_shortened() -> None:
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, b"{")
    assert str(e.value) == refusal("Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    long_field = "f" * 300
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, b'{"v":1,"prefixes":{},"' + long_field.encode() + b'":1}')
    reason = f"unknown field {long_field!r}"
    assert str(e.value) == refusal(reason[:197] + "...")
    exact = "f" * (200 - len("unknown field ''"))
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, b'{"v":1,"prefixes":{},"' + exact.encode() + b'":1}')
    assert str(e.value) == refusal(f"unknown field {exact!r}")


def test_decode_chunk_multiline_reason_is_one_line_and_key_is_escaped() -> None:
    with pytest.raises(InventoryError) as e:
        decode_chunk(K + "\x1b", b'{"v":1,"prefixes":{},"a\\nb":1}')
    assert str(e.value) == refusal("unknown field 'a\\nb'", K + "\\u001b")
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, b"[" * 100000)
    assert "inventory chunk is not readable" in str(e.value)


def test_inventory_add_chunk_keeps_the_first_entry_and_every_chunk() -> None:
    inv = Inventory("me")
    inv.add_chunk(Chunk("c1", 3, {"/a/x": Entry("/a/"), "/a/y": Entry("/a/")}))
    inv.add_chunk(Chunk("c2", 4, {"/a/x": Entry("/b/", False), "/c/z": Entry("/c/")}))
    assert inv.owned == {"/a/x": Entry("/a/"), "/a/y": Entry("/a/"), "/c/z": Entry("/c/")}
    assert inv.chunks_of == {"/a/x": ["c1", "c2"], "/a/y": ["c1"], "/c/z": ["c2"]}
    assert list(inv.chunks) == ["c1", "c2"] and inv.chunks["c2"].mod_revision == 4
    assert inv.prefixes == {"/a/", "/c/"}


def test_ownership_inventory_and_owners_except() -> None:
    a, b = Inventory("a"), Inventory("b")
    a.add_chunk(Chunk("c", 1, {"/k1": Entry("/"), "/k2": Entry("/")}))
    b.add_chunk(Chunk("c", 1, {"/k2": Entry("/"), "/k3": Entry("/")}))
    own = Ownership(R, {"b": b, "a": a})
    assert own.inventory("a") is a
    empty = own.inventory("zz")
    assert (empty.applyset, empty.owned, empty.chunks) == ("zz", {}, {})
    assert own.owners_except("a") == {"/k2": "b", "/k3": "b"}
    assert own.owners_except("b") == {"/k1": "a", "/k2": "a"}
    assert own.owners_except("c") == {"/k1": "a", "/k2": "a", "/k3": "b"}


def test_parse_ownership() -> None:
    kvs = [
        (R + "ownership", b"me", 41),
        (R + "sets/me/inventory/c1", b'{"v":1,"prefixes":{"/a/":["x"]}}', 5),
        (R + "sets/me/inventory/c2", b'{"v":1,"prefixes":{"/a/":["y"]},"noprune":["/a/y"]}', 6),
        (R + "sets/you/inventory/c1", b'{"v":1,"prefixes":{"/b/":["z"]}}', 7),
        (R + "sets/me/other/c1", b"not json", 8),
        (R + "sets/me", b"not json", 8),
        (R + "leader/x", b"not json", 9),
        ("/elsewhere", b"not json", 9),
    ]
    own = parse_ownership(kvs, R)
    assert own.reserved == R and own.fence_revision == 41
    assert sorted(own.sets) == ["me", "you"]
    me = own.sets["me"]
    assert me.applyset == "me"
    assert me.owned == {"/a/x": Entry("/a/"), "/a/y": Entry("/a/", False)}
    assert {k: c.mod_revision for k, c in me.chunks.items()} == {R + "sets/me/inventory/c1": 5,
                                                                R + "sets/me/inventory/c2": 6}
    assert own.sets["you"].owned == {"/b/z": Entry("/b/")}
    assert parse_ownership([], R).fence_revision == 0


@pytest.mark.parametrize("value", [b"", b"-bad", b"a b", b"\xff"])
def test_parse_ownership_refuses_a_bad_fence(value: bytes) -> None:
    with pytest.raises(InventoryError) as e:
        parse_ownership([(R + "ownership", value, 3)], R)
    assert str(e.value) == ("/.etcdsync/ownership: ownership fence holds no apply set name; "
                            "fix or delete it by hand, etcdsync will not guess what it owns")


@pytest.mark.parametrize("key", [
    R + "sets/-x/inventory/c1", R + "sets/me/inventory/", R + "sets/me/inventory/a/b", R + "sets//inventory/c",
    R + "sets/me/inventory/" + "c" * 129, R + "sets/me/inventory/c\x01",
])
def test_parse_ownership_refuses_a_bad_chunk_key(key: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_ownership([(key, b'{"v":1,"prefixes":{}}', 3)], R)
    shown = key.replace("\x01", "\\u0001")
    assert str(e.value) == (f"{shown}: not an inventory chunk key (sets/<apply set>/inventory/<id>); "
                            "fix or delete it by hand, etcdsync will not guess what it owns")


def test_parse_ownership_accepts_the_longest_chunk_id_and_checks_reserved_prefixes() -> None:
    key = R + "sets/me/inventory/" + "c" * 128
    assert parse_ownership([(key, b'{"v":1,"prefixes":{"/a/":["x"]}}', 3)], R).sets["me"].owned == {"/a/x": Entry("/a/")}
    with pytest.raises(InventoryError, match="is under the reserved prefix"):
        parse_ownership([(key, b'{"v":1,"prefixes":{"/.etcdsync/a/":["x"]}}', 3)], R)


def test_decode_chunk_reason_of_201_characters_is_shortened() -> None:
    field = "f" * (201 - len("unknown field ''"))
    with pytest.raises(InventoryError) as e:
        decode_chunk(K, b'{"v":1,"prefixes":{},"' + field.encode() + b'":1}')
    assert str(e.value) == refusal(f"unknown field {field!r}"[:197] + "...")


def test_parse_ownership_skips_foreign_keys_before_the_chunks() -> None:
    kvs = [
        ("/elsewhere", b"x", 1),
        (R + "sets/me/other/c1", b"x", 2),
        (R + "sets/me/inventory/c1", b'{"v":1,"prefixes":{"/a/":["x"]}}', 5),
    ]
    assert parse_ownership(kvs, R).sets["me"].owned == {"/a/x": Entry("/a/")}


def test_a_document_may_list_every_key_of_its_prefix() -> None:
    """A list naming all the chunk's keys under a prefix is as valid as `true` (a subset, not a strict one)."""
    value = b'{"v":2,"prefixes":{"/a/":["x","y"]},"documents":{"C/a":{"/a/":["y","x"]}}}'
    assert decode_chunk(K, value) == {"/a/x": Entry("/a/", document="C/a"), "/a/y": Entry("/a/", document="C/a")}


# ------------------------------------------------------------------------------------------------
# the apply set's name: the flag, else the ApplySet document, else "default"

def test_resolve_applyset_flag_document_default() -> None:
    src = Source("m/set.yaml", 2, 1)
    assert resolve_applyset("web", DesiredState()) == ("web", "flag")
    assert resolve_applyset("web", DesiredState(applyset="web", applyset_source=src)) == ("web", "flag")
    assert resolve_applyset(None, DesiredState(applyset="doc", applyset_source=src)) == ("doc", "document")
    assert resolve_applyset("", DesiredState(applyset="doc", applyset_source=src)) == ("doc", "document")
    assert resolve_applyset(None, DesiredState()) == ("default", "default")


def test_resolve_applyset_refuses_a_flag_that_differs_from_the_document_and_bad_names() -> None:
    src = Source("m/set.yaml", 2, 1)
    with pytest.raises(UsageError) as e:
        resolve_applyset("web", DesiredState(applyset="doc", applyset_source=src))
    assert str(e.value) == "--applyset 'web' differs from the ApplySet document 'doc' at m/set.yaml:2:1; use one of them"
    for flag, desired in (("a b", DesiredState()), (None, DesiredState(applyset="a b", applyset_source=src))):
        with pytest.raises(UsageError) as e:
            resolve_applyset(flag, desired)
        assert str(e.value) == "applyset 'a b': use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


# -- declared keys held once, shared records, lazily decoded chunks of other apply sets ----------------

def test_decode_chunk_holds_a_declared_key_as_the_desired_states_own_string() -> None:
    declared = "".join(["/a/", "x"])    # built at run time: another object than the chunk's "/a/" + "x"
    keys = {declared: DesiredKey(declared, b"v", "/a/")}
    out = decode_chunk(K, b'{"v":2,"prefixes":{"/a/":["x","y"]},"noprune":["/a/x"]}', keys=keys)
    assert out == {"/a/x": Entry("/a/", False), "/a/y": Entry("/a/")}
    assert [k for k in out if k is declared] == ["/a/x"]    # the declared string, not a second copy


def test_decode_chunk_shares_one_entry_per_distinct_record() -> None:
    out = decode_chunk(K, b'{"v":2,"prefixes":{"/a/":["x","y","z"]},'
                          b'"documents":{"ConfigSet/a":{"/a/":["x","y"]}},"noprune":["/a/x","/a/y"]}')
    assert out == {"/a/x": Entry("/a/", False, False, "ConfigSet/a"), "/a/y": Entry("/a/", False, False, "ConfigSet/a"),
                   "/a/z": Entry("/a/")}
    assert out["/a/x"] is out["/a/y"]


def test_parse_ownership_holds_the_own_sets_declared_keys_as_their_own_strings() -> None:
    declared = "".join(["/a/", "x"])
    keys = {declared: DesiredKey(declared, b"v", "/a/")}
    own = parse_ownership([(K, b'{"v":2,"prefixes":{"/a/":["x"]}}', 5)], R, applyset="me", keys=keys)
    [key] = own.sets["me"].owned
    assert key == "/a/x" and key is declared


def lazy(*others: tuple[str, bytes]) -> Ownership:
    """Ownership as `diff` reads it for apply set "me": the other sets' chunks kept raw."""
    kvs = [(K, encode_chunk({"/m/1": Entry("/m/")}), 5)]
    kvs += [(f"{R}sets/{name}/inventory/c{i}", raw, 6 + i) for i, (name, raw) in enumerate(others)]
    return parse_ownership(kvs, R, applyset="me")


def test_another_sets_raw_chunk_keeps_its_revision_and_is_checked_against_the_reserved_prefix() -> None:
    own = lazy(("you", b'{"v":1,"prefixes":{"/o/":["x"]}}'), ("zed", b'{"v":1,"prefixes":{"/.etcdsync/o/":["x"]}}'))
    you, zed = own.sets["you"].chunks[R + "sets/you/inventory/c0"], own.sets["zed"].chunks[R + "sets/zed/inventory/c1"]
    assert (you.mod_revision, you.decoded, zed.mod_revision, zed.decoded) == (6, False, 7, False)
    assert own.owners_except("me").get("/o/x") == "you"
    with pytest.raises(InventoryError) as e:
        own.owners_except("me").get("/.etcdsync/o/x")
    assert str(e.value) == refusal("prefix '/.etcdsync/o/' is under the reserved prefix", R + "sets/zed/inventory/c1")


def test_chunk_states_and_repr() -> None:
    empty = Chunk("k", 3)
    assert (empty.entries, empty.decoded, repr(empty)) == ({}, True, "Chunk('k', 3, 0 entries)")
    raw = Chunk("k", 4, raw=b'{"v":1,"prefixes":{"/a/":["x"]}}', reserved=R)
    assert (raw.decoded, repr(raw)) == (False, "Chunk('k', 4, not decoded)")
    assert raw.entries == {"/a/x": Entry("/a/")}
    assert (raw.decoded, repr(raw)) == (True, "Chunk('k', 4, 1 entries)")


def test_inventory_built_with_chunks_or_none() -> None:
    empty = Inventory("zz")
    assert (empty.owned, empty.chunks_of, empty.prefixes, empty.lists("/a/x")) == ({}, {}, set(), False)
    inv = Inventory("me", {"any": Chunk("c1", 3, {"/a/x": Entry("/a/")})})
    assert list(inv.chunks) == ["c1"] and inv.chunks_of == {"/a/x": ["c1"]}
    assert (inv.lists("/a/x"), inv.lists("/a/y")) == (True, False)   # before and after `owned` is built
    assert inv.owned == {"/a/x": Entry("/a/")}
    assert (inv.lists("/a/x"), inv.lists("/a/y")) == (True, False)


def test_a_key_utf_8_cannot_encode_is_still_found() -> None:
    # json.loads decodes bytes with "surrogatepass": a lone surrogate written as its three bytes is a key
    own = lazy(("you", b'{"v":1,"prefixes":{"/o/":["\xed\xa0\x80"]}}'))
    assert own.owners_except("me").get("/o/\ud800") == "you"


def test_a_key_with_an_empty_segment_is_found_after_every_slash() -> None:
    own = lazy(("you", encode_chunk({"/o//x": Entry("/o//")})))     # lists "x" under "/o//"
    assert own.owners_except("me").get("/o//x") == "you"


def test_other_owners_decode_every_chunk_at_the_lookup_after_the_limit() -> None:
    own = lazy(("you", encode_chunk({"/o/a": Entry("/o/")})), ("zed", encode_chunk({"/z/b": Entry("/z/")})))
    chunks = [c for name in ("you", "zed") for c in own.sets[name].chunks.values()]
    others = own.owners_except("me")
    with pytest.raises(KeyError) as e:
        others["/q/nobody"]
    assert e.value.args == ("/q/nobody",)
    for _ in range(LOOKUPS_BEFORE_INDEX - 1):
        assert others.get("/q/nobody") is None
    assert not any(c.decoded for c in chunks)        # 32 look-ups: no chunk quotes "nobody"
    assert others.get("/q/nobody") is None
    assert all(c.decoded for c in chunks)            # the 33rd built the index
    assert (others.get("/o/a"), others.get("/z/b")) == ("you", "zed")


def test_listing_takes_every_set_only_beyond_the_limit() -> None:
    own = lazy(("you", encode_chunk({"/o/a": Entry("/o/")})), ("zed", encode_chunk({"/z/b": Entry("/z/")})))
    keys = [f"/q/{i}" for i in range(LOOKUPS_BEFORE_INDEX)]
    assert [inv.applyset for inv in own.listing("me", keys)] == ["me"]
    assert [inv.applyset for inv in own.listing("me", [*keys, "/q/x"])] == ["me", "you", "zed"]


# -- decode_chunk's list-at-a-time reading (_decoded_common) and its key-by-key reading (_decoded) ----

def _fast(value: bytes, keys: dict[str, DesiredKey] | None = None, reserved: str | None = R) -> dict[str, Entry] | None:
    import json

    from etcdsync.core import inventory as inv
    return inv._decoded_common(json.loads(value), reserved, keys)


def _declared(*fulls: str) -> dict[str, DesiredKey]:
    """Declared keys equal to the chunk's, as other string objects (so `is` tells which one a dict holds)."""
    return {"".join(list(f)): DesiredKey("".join(list(f)), b"v", "/") for f in fulls}


WRITTEN = {
    "/a/x": Entry("/a/", True, False, "ConfigSet/a"),
    "/a/y": Entry("/a/", False, False, "ConfigSet/a"),
    "/a/z": Entry("/a/", False, False, "ConfigSet/a"),
    "/a/s": Entry("/a/", True, True, "ConfigSet/a"),
    "/b/k": Entry("/b/", True, False, ""),
    "/b/.k": Entry("/b/", True, False, ""),
    "/c/q": Entry("/c/", True, False, "Service/c"),
}


@pytest.mark.parametrize("entries", [
    WRITTEN,
    {k: e for k, e in WRITTEN.items() if not e.document},                    # no "documents" field
    {k: e for k, e in WRITTEN.items() if e.prune and not e.secret},          # no "noprune", no "secret"
    {"/b/k": Entry("/b/")},                                                  # one prefix, one key
])
@pytest.mark.parametrize("with_keys", [False, True])
def test_every_shape_etcdsync_writes_is_read_a_list_at_a_time(entries: dict[str, Entry], with_keys: bool) -> None:
    """A chunk as encode_chunk writes it (every field present or not, several prefixes, documents
    naming whole prefixes, flags by key) is read by _decoded_common, never declined, with the entries
    decode_chunk gives and the declared key strings."""
    value = encode_chunk(entries)
    keys = _declared(*entries) if with_keys else None
    fast = _fast(value, keys)
    assert fast is not None
    assert fast == entries and list(fast.items()) == list(decode_chunk(K, value, reserved=R, keys=keys).items())
    if keys is not None:
        assert all(full is keys[full].key for full in fast)
    assert _fast(value, keys, None) == entries


def test_a_written_chunk_never_reaches_the_key_by_key_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    from etcdsync.core import inventory as inv

    def refused(*args: object) -> None:
        raise AssertionError("the key-by-key reading was used")
    monkeypatch.setattr(inv, "_decoded", refused)
    assert decode_chunk(K, encode_chunk(WRITTEN), reserved=R, keys=_declared("/a/x")) == WRITTEN


def test_flagged_keys_of_one_record_share_one_entry() -> None:
    """As _flag does: one Entry object per distinct record, also in the list-at-a-time reading."""
    out = _fast(encode_chunk(WRITTEN))
    assert out is not None
    assert out["/a/y"] is out["/a/z"] and out["/a/x"] is not out["/a/y"]
    assert out["/b/k"] is out["/b/.k"]


def test_a_declined_chunk_read_key_by_key_holds_the_declared_key_strings() -> None:
    """A document naming some keys of a prefix (not `true`) is not the shape etcdsync writes: the
    list-at-a-time reading declines it, and the key-by-key one still holds an owned key that is also
    declared as the desired state's string."""
    value = b'{"v":2,"prefixes":{"/a/":["x","y"]},"documents":{"ConfigSet/a":{"/a/":["x"]}}}'
    keys = _declared("/a/x", "/a/y")
    assert _fast(value, keys) is None
    out = decode_chunk(K, value, reserved=R, keys=keys)
    assert out == {"/a/x": Entry("/a/", True, False, "ConfigSet/a"), "/a/y": Entry("/a/")}
    assert all(full is keys[full].key for full in out)
    assert decode_chunk(K, value, reserved=R, keys={}) == out


@pytest.mark.parametrize(("rels", "plain"), [
    ([], True),
    (["x"], True),
    ([".x", "a/.b", "x.", "..."], True),
    (["a", ""], False),
    (["a", "/x"], False),
    (["a", "b/../c"], False),
    (["a", ".."], False),
    (["a", "x\x01"], False),
    (["a", 1], False),
])
def test_plain_rels_over_a_whole_list(rels: list[object], plain: bool) -> None:
    from etcdsync.core import inventory as inv
    assert inv._plain_rels(rels) is plain
