"""Inventory chunks: encoding round trip, parsing every set, refusing unreadable chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdsync.core.inventory import (
    LOOKUPS_BEFORE_INDEX,
    Entry,
    check_applyset_name,
    decode_chunk,
    encode_chunk,
    fence_key,
    parse_ownership,
)
from etcdsync.errors import InventoryError, UsageError

R = "/.etcdsync/"


def test_chunk_round_trip_keeps_prefix_and_prune() -> None:
    entries = {"/c/a/x": Entry("/c/a/"), "/c/a/y/z": Entry("/c/a/", prune=False), "/s/n/1": Entry("/s/n/")}
    raw = encode_chunk(entries)
    assert decode_chunk("k", raw) == entries
    assert b'"noprune":["/c/a/y/z"]' in raw


BAD_CHUNKS = [
    b"not json", b"[]", b'{"v":3,"prefixes":{}}', b'{"v":0,"prefixes":{}}', b'{"v":1}', b'{"v":2}', b'{"v":1,"prefixes":{"/a/":[1]}}',
    # a string where the list belongs was read character by character: /other/p, /other/r, ...
    b'{"v":1,"prefixes":{"/other/":"precious"}}',
    b'{"v":true,"prefixes":{}}', b'{"v":1.0,"prefixes":{}}', b'{"v":"1","prefixes":{}}',
    b'{"v":1,"prefixes":[]}', b'{"v":1,"prefixes":{"/a/":{"x":1}}}', b'{"v":1,"prefixes":{"/a/":null}}',
    b'{"v":1,"prefixes":{},"extra":1}',                       # unknown field
    b'{"v":1,"prefixes":{"/a/":["../b/x"]}}',                 # escapes its prefix
    b'{"v":1,"prefixes":{"/a/":["x/../../b"]}}',
    b'{"v":1,"prefixes":{"/a/":["./x"]}}',
    b'{"v":1,"prefixes":{"/a/":["/x"]}}',                     # not relative
    b'{"v":1,"prefixes":{"/a/":[""]}}',
    b'{"v":1,"prefixes":{"/a/":["x\\u0000y"]}}',
    b'{"v":1,"prefixes":{"":["x"]}}',                         # prefix must end with /
    b'{"v":1,"prefixes":{"/a":["x"]}}',
    b'{"v":1,"prefixes":{"/a/../b/":["x"]}}',
    b'{"v":1,"prefixes":{"/.etcdsync/":["ownership"]}}',       # under the reserved prefix
    b'{"v":1,"prefixes":{"/a/":["x"]},"noprune":"/a/x"}',
    b'{"v":1,"prefixes":{"/a/":["x"]},"noprune":["/a/y"]}',    # flags a key the chunk does not list
    b'{"v":1,"prefixes":{"/a/":["x"]},"secret":[1]}',
    b'{"v":1,"prefixes":{"/a/":["x"]},"secret":null}',
    b'\xff\xfe', b'{"v":1,"prefixes":{},"v":1}',
    # format 2's "documents": which document declared each key
    b'{"v":1,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":true}}}',   # not a field of format 1
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":[]}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"a":{"/a/":true}}}',             # not <kind>/<name>
    rb'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a\u0001":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/b/":true}}}',    # a prefix it does not list
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":["y"]}}}',   # a key it does not list
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":false}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":[]}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":"x"}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"ConfigSet/a":{"/a/":true},"Service/b":{"/a/":["x"]}}}',
]


@pytest.mark.parametrize("raw", BAD_CHUNKS)
def test_unreadable_chunk_is_an_error_naming_it(raw: bytes) -> None:
    with pytest.raises(InventoryError, match="^/.etcdsync/sets/x/inventory/1: inventory chunk") as ei:
        decode_chunk("/.etcdsync/sets/x/inventory/1", raw, reserved=R)
    assert "\n" not in str(ei.value)


def test_unreadable_chunk_in_ownership_is_an_error_naming_it() -> None:
    kvs = [(f"{R}sets/a/inventory/1", encode_chunk({"/k/1": Entry("/k/")}), 5),
           (f"{R}sets/a/inventory/2", b'{"v":1,"prefixes":{"/other/":"precious"}}', 6)]
    with pytest.raises(InventoryError, match=f"^{R}sets/a/inventory/2: "):
        parse_ownership(kvs, R)


@pytest.mark.parametrize("key,value", [
    (f"{R}ownership", b"not a set name!"),
    (f"{R}ownership", b""),
    (f"{R}sets/bad name/inventory/1", encode_chunk({"/k/1": Entry("/k/")})),
    (f"{R}sets/a/inventory/", encode_chunk({"/k/1": Entry("/k/")})),
    (f"{R}sets/a/inventory/x/y", encode_chunk({"/k/1": Entry("/k/")})),
])
def test_bad_fence_or_chunk_key_is_an_error_naming_it(key: str, value: bytes) -> None:
    with pytest.raises(InventoryError) as ei:
        parse_ownership([(key, value, 3)], R)
    assert str(ei.value).startswith(key.replace("bad name", "bad name") + ":"), str(ei.value)


def test_parse_ownership_splits_sets_and_reads_fence() -> None:
    kvs = [
        (f"{R}sets/a/inventory/1", encode_chunk({"/k/1": Entry("/k/")}), 5),
        (f"{R}sets/a/inventory/2", encode_chunk({"/k/2": Entry("/k/")}), 6),
        (f"{R}sets/b/inventory/1", encode_chunk({"/k/3": Entry("/k/")}), 7),
        (fence_key(R), b"a", 9),
        (f"{R}election/a/xyz", b"", 3),
    ]
    own = parse_ownership(kvs, R)
    assert set(own.inventory("a").owned) == {"/k/1", "/k/2"}
    assert own.owners_except("a") == {"/k/3": "b"}
    assert own.fence_revision == 9
    assert own.inventory("nobody").owned == {}


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "ä"])
def test_bad_applyset_names(name: str) -> None:
    with pytest.raises(UsageError):
        check_applyset_name(name)


_seg = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    lambda s: "/" not in s and s not in (".", ".."))


@given(st.lists(st.tuples(st.lists(_seg, min_size=1, max_size=3), st.lists(_seg, min_size=1, max_size=3),
                          st.booleans(), st.booleans(), st.sampled_from(["", "ConfigSet/a", "Service/b", "ConfigSet/x/y"])),
                max_size=8))
def test_every_encoded_chunk_decodes_to_itself(raw: list[tuple[list[str], list[str], bool, bool, str]]) -> None:
    entries = {}
    for pre, rel, prune, secret, document in raw:
        prefix = "/" + "/".join(pre) + "/"
        entries[prefix + "/".join(rel)] = Entry(prefix, prune, secret, document)
    assert decode_chunk("k", encode_chunk(entries), reserved=R) == entries


def test_documents_are_recorded_per_prefix_or_per_key() -> None:
    entries = {"/a/x": Entry("/a/", document="ConfigSet/a"), "/a/y": Entry("/a/", document="ConfigSet/a"),
               "/m/1": Entry("/m/", document="ConfigSet/m"), "/m/2": Entry("/m/", document="Service/m"),
               "/m/3": Entry("/m/"), "/u/z": Entry("/u/")}
    raw = encode_chunk(entries)
    assert raw == (b'{"v":2,"prefixes":{"/a/":["x","y"],"/m/":["1","2","3"],"/u/":["z"]},'
                   b'"documents":{"ConfigSet/a":{"/a/":true},"ConfigSet/m":{"/m/":["1"]},"Service/m":{"/m/":["2"]}}}')
    assert decode_chunk("k", raw) == entries


def test_a_format_1_chunk_is_read_with_no_document() -> None:
    # the exact bytes the previous format wrote
    raw = b'{"v":1,"prefixes":{"/a/":["x","y"]},"noprune":["/a/y"],"secret":["/a/x"]}'
    assert decode_chunk("k", raw) == {"/a/x": Entry("/a/", True, True, ""), "/a/y": Entry("/a/", False, False, "")}


# -- other apply sets' chunks are decoded only when a plan needs them ------------------------------

def _lazy(*others: tuple[str, bytes]) -> list[tuple[str, bytes, int]]:
    kvs = [(f"{R}sets/me/inventory/1", encode_chunk({"/m/1": Entry("/m/")}), 5)]
    kvs += [(f"{R}sets/{name}/inventory/{i}", raw, 6 + i) for i, (name, raw) in enumerate(others)]
    return kvs


def test_other_sets_chunks_are_decoded_only_for_the_keys_asked() -> None:
    many = encode_chunk({f"/o/k{i}": Entry("/o/") for i in range(1000)})
    kvs = _lazy(("you", many), ("you", encode_chunk({"/p/a/b": Entry("/p/")})), ("zed", b"not json, never asked"))
    own = parse_ownership(kvs, R, applyset="me")
    assert own.inventory("me").owned == {"/m/1": Entry("/m/")}
    chunks = [c for name in ("you", "zed") for c in own.sets[name].chunks.values()]
    assert not any(c.decoded for c in chunks)
    others = own.owners_except("me")
    assert others.get("/q/nobody") is None and others.get("/o/k10000") is None
    assert not any(c.decoded for c in chunks)          # no chunk quotes "k10000", "o/k10000" or "nobody"
    assert others.get("/o/k999") == "you" and others.get("/p/a/b") == "you"
    assert [c.decoded for c in chunks] == [True, True, False]
    # the unreadable chunk of "zed" was never needed: no error (it cannot list any of those keys)


def test_a_chunk_that_may_list_the_key_is_decoded_strictly() -> None:
    own = parse_ownership(_lazy(("you", b'{"v":1,"prefixes":{"/o/":"x"},"junk":1}')), R, applyset="me")
    with pytest.raises(InventoryError, match=f"^{R}sets/you/inventory/0: inventory chunk"):
        own.owners_except("me").get("/o/x")


@pytest.mark.parametrize("raw", [
    b'{"v":1,"prefixes":{"/o/":["\\u0078"]}}',                      # "x", escaped
    b'{"v":1,"prefixes":{"/o/":["x\\u0079"]}}',                     # "xy", partly escaped
    '{"v":1,"prefixes":{"/o/":["x"]}}'.encode("utf-16"),              # json.loads reads UTF-16 too
    '{"v":1,"prefixes":{"/o/":["x"]}}'.encode("utf-32-le"),
])
def test_a_key_listed_in_another_spelling_is_still_found(raw: bytes) -> None:
    own = parse_ownership(_lazy(("you", raw)), R, applyset="me")
    listed = next(iter(decode_chunk("k", raw)))
    assert own.owners_except("me").get(listed) == "you"
    assert own.owners_except("me").get("/o/absent") is None


def test_many_lookups_decode_every_other_set_once_and_answer_the_same() -> None:
    kvs = _lazy(("you", encode_chunk({f"/o/k{i}": Entry("/o/") for i in range(100)})),
                ("abe", encode_chunk({"/o/k1": Entry("/o/"), "/x/y": Entry("/x/")})))
    eager = parse_ownership(kvs, R).owners_except("me")
    lazy = parse_ownership(kvs, R, applyset="me").owners_except("me")
    keys = [f"/o/k{i}" for i in range(0, 200, 3)] + ["/x/y", "/m/1"]
    assert len(keys) > LOOKUPS_BEFORE_INDEX
    assert [lazy.get(k) for k in keys] == [eager.get(k) for k in keys]
    assert lazy.get("/o/k1") == "abe"                   # the first set by name, as before
    assert dict(lazy) == dict(eager) and len(lazy) == 101


def test_listing_finds_every_set_that_lists_a_touched_key() -> None:
    kvs = _lazy(("you", encode_chunk({"/o/a": Entry("/o/")})), ("zed", encode_chunk({"/m/1": Entry("/m/")})),
                ("abe", b"never decoded"))
    own = parse_ownership(kvs, R, applyset="me")
    assert [inv.applyset for inv in own.listing("me", [])] == ["me"]
    assert [inv.applyset for inv in own.listing("me", ["/m/1"])] == ["me", "zed"]
    assert [inv.applyset for inv in own.listing("me", ["/o/a", "/m/1"])] == ["me", "you", "zed"]
    assert [inv.applyset for inv in own.listing("nobody", ["/o/a"])] == ["you"]
