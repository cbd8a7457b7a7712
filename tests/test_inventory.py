"""Inventory chunks: encoding round trip, parsing every set, refusing unreadable chunks."""

from __future__ import annotations

import pytest

from etcdsync.errors import UsageError
from etcdsync.inventory import (
    Entry,
    InventoryError,
    check_applyset_name,
    decode_chunk,
    encode_chunk,
    fence_key,
    parse_ownership,
)

R = "/.etcdsync/"


def test_chunk_round_trip_keeps_prefix_and_prune() -> None:
    entries = {"/c/a/x": Entry("/c/a/"), "/c/a/y/z": Entry("/c/a/", prune=False), "/s/n/1": Entry("/s/n/")}
    raw = encode_chunk(entries)
    assert decode_chunk("k", raw) == entries
    assert b'"noprune":["/c/a/y/z"]' in raw


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"v":2,"prefixes":{}}', b'{"v":1}', b'{"v":1,"prefixes":{"/a/":[1]}}'])
def test_unreadable_chunk_is_an_error_naming_it(raw: bytes) -> None:
    with pytest.raises(InventoryError, match="/.etcdsync/sets/x/inventory/1"):
        decode_chunk("/.etcdsync/sets/x/inventory/1", raw)


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
