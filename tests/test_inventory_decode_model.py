"""decode_chunk reads a chunk of the shape etcdsync writes a list at a time (`_decoded_common`) and
every other one key by key. Whatever the chunk, it must answer exactly what the key-by-key reading
did before the fast reading existed: the same entries (in the same order, with the desired state's
key strings) or the same InventoryError, word for word. The model below is that earlier
decode_chunk, kept here verbatim (pure logic: no etcd)."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etcdsync.core import inventory as inv
from etcdsync.core.inventory import Entry, decode_chunk, encode_chunk
from etcdsync.core.model import DesiredKey
from etcdsync.errors import InventoryError

R = "/.etcdsync/"
K = "/.etcdsync/sets/s/inventory/1"


def model_decode_chunk(key: str, value: bytes, *, reserved: str | None = None,
                       keys: Mapping[str, DesiredKey] | None = None) -> dict[str, Entry]:
    """decode_chunk as it was before `_decoded_common` (commit bb7dd45)."""
    try:
        doc = json.loads(value, object_pairs_hook=inv._no_duplicates)
        if not isinstance(doc, dict):
            raise inv._Bad("not a JSON object")
        version = doc.get("v")
        if type(version) is not int or version not in inv.READABLE_VERSIONS:
            raise inv._Bad(f"unsupported inventory version {json.dumps(version)}")
        extra = set(doc) - inv._FIELDS[version]
        if extra:
            raise inv._Bad(f"unknown field {min(extra)!r}")
        prefixes = doc.get("prefixes")
        if not isinstance(prefixes, dict):
            raise inv._Bad("'prefixes' is not an object")
        out: dict[str, Entry] = {}
        for prefix, rels in prefixes.items():
            inv._check_prefix(prefix, reserved)
            if not isinstance(rels, list):
                raise inv._Bad(f"the keys of prefix {prefix!r} are not a list")
            plain = Entry(prefix, True)
            for rel in rels:
                full = prefix + inv._check_rel(rel, prefix)
                if keys is not None and (d := keys.get(full)) is not None:
                    full = d.key
                out[full] = plain
        noprune = inv._key_list(doc, "noprune", out)
        secret = inv._key_list(doc, "secret", out)
        documents = inv._documents(doc, prefixes)
        shared: dict[tuple[str, bool, bool, str], Entry] = {}
        for full in noprune | secret | documents.keys():
            record = (out[full].prefix, full not in noprune, full in secret, documents.get(full, ""))
            entry = shared.get(record)
            if entry is None:
                entry = shared[record] = Entry(*record)
            out[full] = entry
        return out
    except (ValueError, RecursionError) as exc:
        reason = str(exc).replace("\n", " ")
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise InventoryError(f"{inv._shown(key)}: inventory chunk is not readable ({inv._shown(reason)}); "
                             "fix or delete it by hand, etcdsync will not guess what it owns") from None


def outcome(fn: object, value: bytes, keys: Mapping[str, DesiredKey] | None,
            reserved: str | None = R) -> tuple[str, object]:
    try:
        out = fn(K, value, reserved=reserved, keys=keys)  # type: ignore[operator]
    except InventoryError as exc:
        return "refused", str(exc)
    return "read", list(out.items())


def same(value: bytes, keys: Mapping[str, DesiredKey] | None = None, reserved: str | None = R) -> tuple[str, object]:
    new = outcome(decode_chunk, value, keys, reserved)
    old = outcome(model_decode_chunk, value, keys, reserved)
    assert new == old, value
    if new[0] == "read" and keys is not None:   # an owned key that is declared is the declared string
        got = decode_chunk(K, value, reserved=reserved, keys=keys)
        for full in got:
            if full in keys:
                assert full is keys[full].key
    return new


# -- random chunks: mostly the shape etcdsync writes, bent in every way an attacker could ------------

GOOD_RELS = ["x", "y", "a/b", "b", "x/", "a//b", "...", ".x", "x.", "a/.b", "b/x", "é", "\\", "a b"]
GOOD_PREFIXES = ["/a/", "/a/b/", "/b/", "/", "//"]
BAD_PREFIXES = ["/.etcdsync/x/", "/a", "/./", "/a/../", "", "/\x01/", "/a/.."]
DOCS = ["ConfigSet/a", "C/b"]
BAD_DOCS = ["a", "C/", "C/\x01", "/a"]
CHARS = list("ab./\\é\x00\x01\x1f\x7f\x9f\xa0 ")


@st.composite
def chunk_docs(draw: st.DrawFn) -> object:
    """A chunk as a seeded fuzzer makes it (hypothesis draws only the seed: its own choices favour
    the edges, which would refuse nearly every chunk): about half of them read."""
    rnd = random.Random(draw(st.integers(0, 2**32)))

    def odds(p: float) -> bool:
        return rnd.random() < p

    def text() -> str:
        return "".join(rnd.choice(CHARS) for _ in range(rnd.randrange(7)))

    def junk() -> object:
        return rnd.choice([None, True, False, 0, 1, 2, 1.5, "x", text(), [1], ["x", 1], {}, {"a": 1}])

    def rel() -> object:
        return rnd.choice(GOOD_RELS) if odds(0.95) else text() if odds(0.8) else junk()

    def rels() -> object:
        return [rel() for _ in range(rnd.randrange(6))] if odds(0.97) else junk()

    def prefix() -> str:
        return rnd.choice(GOOD_PREFIXES) if odds(0.95) else rnd.choice(BAD_PREFIXES) if odds(0.7) else text()

    prefixes = {prefix(): rels() for _ in range(rnd.randrange(4))}
    doc: dict[str, object] = {"v": 2 if odds(0.85) else rnd.choice([1, 1, 1, 0, 3, True, 2.0, "2"])}
    if odds(0.98):
        doc["prefixes"] = prefixes if odds(0.98) else junk()
    listed = [p + r for p, rs in prefixes.items() if isinstance(rs, list) for r in rs if isinstance(r, str)]
    if odds(0.7) and doc["v"] != 1 or odds(0.03):
        def group() -> object:
            if odds(0.85):
                return True
            if odds(0.7) and isinstance(prefixes.get(p), list):
                return rnd.sample([r for r in prefixes[p] if isinstance(r, str)] or ["x"], 1) \
                    if odds(0.8) else [rel()]
            return junk()
        documents: dict[str, object] = {}
        for _ in range(rnd.randrange(4)):
            name = rnd.choice(DOCS) if odds(0.95) else rnd.choice(BAD_DOCS)
            groups: dict[str, object] = {}
            for _ in range(rnd.randrange(3)):
                p = rnd.choice(list(prefixes)) if prefixes and odds(0.9) else prefix()
                groups[p] = group()
            documents[name] = groups if odds(0.97) else junk()
        doc["documents"] = documents if odds(0.97) else junk()
    for field in ("noprune", "secret"):
        if odds(0.3):
            doc[field] = [rnd.choice(listed) if listed and odds(0.95) else text() if odds(0.5) else junk()
                          for _ in range(rnd.randrange(4))] if odds(0.95) else junk()
    if odds(0.02):
        doc[rnd.choice(["extra", "v2", "Prefixes"])] = junk()
    return doc if odds(0.99) else junk()


def declared(value: bytes) -> dict[str, DesiredKey]:
    """A desired state declaring every other key the chunk could list (equal strings, other objects)."""
    out: dict[str, DesiredKey] = {}
    try:
        doc = json.loads(value)
        names = [p + r for p, rels in doc["prefixes"].items() for r in rels]
    except Exception:
        return out
    for i, full in enumerate(names):
        if isinstance(full, str) and i % 2 == 0:
            k = "".join(list(full))     # an equal string that is not the chunk's own object
            out[k] = DesiredKey(k, b"v", "/")
    return out


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunk_docs(), st.booleans(), st.booleans())
def test_random_chunks_read_as_the_key_by_key_reading_did(doc: object, with_keys: bool, with_reserved: bool) -> None:
    value = json.dumps(doc, ensure_ascii=bool(with_keys)).encode("utf-8")
    same(value, declared(value) if with_keys else None, R if with_reserved else None)


@st.composite
def written(draw: st.DrawFn) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for prefix in draw(st.lists(st.sampled_from(["/a/", "/a/b/", "/b/", "/c/d/"]), max_size=3, unique=True)):
        for rel in draw(st.lists(st.sampled_from(["x", "y", "z/w", "b/x", "q.r", "é"]), max_size=4, unique=True)):
            key = prefix + rel
            if key not in entries:
                entries[key] = Entry(prefix, draw(st.booleans()), draw(st.booleans()),
                                     draw(st.sampled_from(["", "ConfigSet/a", "ConfigSet/a", "Service/b"])))
    return entries


@settings(max_examples=1000, deadline=None)
@given(written(), st.data())
def test_chunks_as_written_and_bytes_flipped_read_as_before(entries: dict[str, Entry], data: st.DataObject) -> None:
    value = encode_chunk(entries)
    assert same(value, declared(value)) == ("read", list(decode_chunk(K, value).items()))
    assert dict(decode_chunk(K, value)) == entries
    at = data.draw(st.integers(0, len(value) - 1))
    by = data.draw(st.sampled_from(b'./\\"[]{},:0a\x00\x7f'))
    same(value[:at] + bytes([by]) + value[at + 1:], declared(value))
    same(value[:at] + bytes([by]) + value[at:], declared(value))


# -- hostile chunks, each pinned: the fast reading must decline them all, the reference refuse them ---

HOSTILE = [
    b'{"v":2,"prefixes":{"/a/":["x","../b"]},"documents":{"C/a":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x",".."]}}',
    b'{"v":2,"prefixes":{"/a/":["x","."]}}',
    b'{"v":2,"prefixes":{"/a/":["x/.."]}}',
    b'{"v":2,"prefixes":{"/a/":["x/./y"]}}',
    b'{"v":2,"prefixes":{"/a/":["/x"]}}',
    b'{"v":2,"prefixes":{"/a/":["x",""]}}',
    b'{"v":2,"prefixes":{"/a/":["x\\u0000/../y"]}}',
    b'{"v":2,"prefixes":{"/a/":["x\\u0000"]}}',
    b'{"v":2,"prefixes":{"/a/":["x\\u0000y"]}}',             # a NUL inside a key, not at a boundary
    b'{"v":2,"prefixes":{"/a/":["\\u0000"]}}',
    b'{"v":2,"prefixes":{"/a/":["\\u0000\\u0000"]}}',
    b'{"v":2,"prefixes":{"/a/":["x\\u001f"]}}',
    b'{"v":2,"prefixes":{"/a/":["x\\u009f"]}}',
    b'{"v":2,"prefixes":{"/a/":["x",1]}}',
    b'{"v":2,"prefixes":{"/a/":["x",["y"]]}}',
    b'{"v":2,"prefixes":{"/a/":["x",null]}}',
    b'{"v":2,"prefixes":{"/a/":"x"}}',
    b'{"v":2,"prefixes":{"/a/../":["x"]}}',
    b'{"v":2,"prefixes":{"/.etcdsync/":["ownership"]}}',
    b'{"v":2,"prefixes":{"/a":["x"]}}',
    b'{"v":2,"prefixes":{"/a/":["x","x"]},"documents":{"C/a":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["b/x"],"/a/b/":["x"]},"documents":{"C/a":{"/a/":true},"C/b":{"/a/b/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":true},"C/b":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":true,"/b/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":1}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"documents":{"a":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"noprune":["/a/y"]}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"secret":"/a/x"}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"secret":[1]}',
    b'{"v":1,"prefixes":{"/a/":["x"]},"documents":{"C/a":{"/a/":true}}}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"v":2}',
    b'{"v":2,"prefixes":{"/a/":["x"]},"extra":1}',
    b'{"v":2.0,"prefixes":{"/a/":["x"]}}',
    b'{"v":true,"prefixes":{"/a/":["x"]}}',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_chunks_are_refused_as_before_and_never_read_fast(value: bytes) -> None:
    try:
        doc = json.loads(value, object_pairs_hook=inv._no_duplicates)
    except ValueError:
        doc = None      # refused by the JSON reading itself (a field twice), before either reading
    assert doc is None or inv._decoded_common(doc, R, None) is None
    assert same(value)[0] == "refused"


@example(["x", "..."])
@example(["a\x00b"])
@example(["a", "\x00"])
@example(["a/b", "x"])
@example(["a/.b", ".c"])
@example(["\xa0"])
@example(["é", "a b", "x\u2028"])
@given(st.lists(st.text(alphabet=st.sampled_from(CHARS), max_size=6), max_size=6))
def test_plain_rels_accepts_only_what_check_rel_accepts(rels: list[str]) -> None:
    """True only when _check_rel accepts every key; and for printable keys, exactly then."""
    def each() -> bool:
        try:
            for rel in rels:
                inv._check_rel(rel, "/p/")
        except inv._Bad:
            return False
        return True
    if inv._plain_rels(rels):   # type: ignore[arg-type]
        assert each()
    elif "".join(rels).isprintable():
        assert not each()


def test_the_common_shape_is_read_fast() -> None:
    """What etcdsync writes (whole prefixes per document, flags by key) never needs the key-by-key reading."""
    entries = {f"/a/k{i}": Entry("/a/", i % 3 != 0, i % 5 == 0, "ConfigSet/a") for i in range(50)}
    entries.update({f"/b/k{i}é": Entry("/b/", True, False, "") for i in range(5)})
    doc = json.loads(encode_chunk(entries))
    assert inv._decoded_common(doc, R, None) == entries
