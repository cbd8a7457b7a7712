"""What each apply set owns, as kept in etcd under the reserved prefix (pure: parse and encode).

Layout (R is the reserved prefix, default `/.etcdsync/`):

    R sets/<applyset>/inventory/<chunk-id>   JSON chunk: {"v":2,"prefixes":{prefix:[relative keys]},
                                             "documents":{document:{prefix:true|[relative keys]}},
                                             "noprune":[keys],"secret":[keys]}
    R ownership                              fence bumped by every transaction that adds ownership

"prefixes" lists every key the chunk owns (what a reader needs to know what is owned); "documents"
says which document declared them (`true`: every key of the chunk under that prefix, else the
listed ones). A key under no document has none recorded: written by format 1 (no "documents"),
which is still read; every chunk written is format 2, and a full apply records the document of every
key it finds without one (an ownership-record change, like a changed prefix).

An inventory is split into chunks so that 100,000 owned keys stay within etcd's request limits: a
transaction that creates or adopts keys writes them together with a new chunk listing exactly those
keys (so a key etcdsync wrote is always in the inventory), and a transaction that deletes keys
rewrites the chunks that listed them (so a key leaves the inventory only with its deletion).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ..errors import InventoryError, UsageError
from .model import DesiredKey, DesiredState

APPLYSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CHUNK_VERSION = 2
READABLE_VERSIONS = (1, 2)


def check_applyset_name(name: str) -> str:
    if not APPLYSET_NAME.match(name):
        raise UsageError(f"applyset {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def resolve_applyset(flag: str | None, desired: DesiredState) -> tuple[str, str]:
    """The apply set's name and where it came from ("flag", "document" or "default"): the flag, else
    the ApplySet document, else "default"; a flag and a document that disagree are a UsageError."""
    if flag:
        if desired.applyset and desired.applyset != flag:
            raise UsageError(f"--applyset {flag!r} differs from the ApplySet document {desired.applyset!r} "
                             f"at {desired.applyset_source}; use one of them")
        return check_applyset_name(flag), "flag"
    if desired.applyset:
        return check_applyset_name(desired.applyset), "document"
    return "default", "default"


def sets_prefix(reserved: str) -> str:
    return f"{reserved}sets/"


def inventory_prefix(reserved: str, applyset: str) -> str:
    return f"{reserved}sets/{applyset}/inventory/"


def fence_key(reserved: str) -> str:
    return f"{reserved}ownership"


@dataclass(frozen=True, slots=True)
class Entry:
    """One owned key as the inventory records it."""

    prefix: str
    prune: bool = True
    secret: bool = False      # remembered so a key removed from the manifests is still masked
    document: str = ""        # the document that declared it ("ConfigSet/payments"); "": not recorded


class Chunk:
    """One inventory chunk: its etcd key, the mod_revision we read it at, and its entries.

    A chunk read with `parse_ownership(..., applyset=NAME)` for another apply set than NAME keeps
    its raw value and is decoded (strictly, as always) the first time its entries are asked for, so
    a plan of one set does not pay for every other set's inventory (see `OtherOwners`)."""

    __slots__ = ("key", "mod_revision", "_entries", "_raw", "_reserved")

    def __init__(self, key: str, mod_revision: int, entries: dict[str, Entry] | None = None, *,
                 raw: bytes | None = None, reserved: str | None = None) -> None:
        self.key = key
        self.mod_revision = mod_revision
        self._entries = entries if entries is not None or raw is not None else {}
        self._raw = raw
        self._reserved = reserved

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            assert self._raw is not None
            self._entries = decode_chunk(self.key, self._raw, reserved=self._reserved)
            self._raw = None
        return self._entries

    @property
    def decoded(self) -> bool:
        return self._entries is not None

    def may_list(self, key: str) -> bool:
        """False only when this chunk certainly does not list `key` (without decoding it).

        A chunk lists `key` as a relative key `rel` under a prefix ending in "/", so `rel` is one
        of the suffixes of `key` after a "/". In a JSON text without a backslash every string is
        its own UTF-8 bytes between quotes, so when none of those suffixes appears quoted in the raw
        value, no reading of it lists `key`. A value with any escape or not in plain UTF-8, a key that cannot
        be encoded, or a decoded chunk: True (decode and look)."""
        raw = self._raw
        if raw is None or b"\\" in raw or json.detect_encoding(raw) != "utf-8":   # json.loads reads UTF-16/32 too
            return True
        try:
            data = key.encode("utf-8")
        except UnicodeEncodeError:
            return True
        at = data.find(b"/")
        while at != -1:
            if b'"' + data[at + 1:] + b'"' in raw:
                return True
            at = data.find(b"/", at + 1)
        return False

    def __repr__(self) -> str:
        state = f"{len(self._entries)} entries" if self._entries is not None else "not decoded"
        return f"Chunk({self.key!r}, {self.mod_revision}, {state})"


class Inventory:
    """What one apply set owns; `chunks_of` maps a key to every chunk that lists it.

    `owned` and `chunks_of` are built from the chunks when first asked for (decoding them)."""

    __slots__ = ("applyset", "chunks", "_owned", "_chunks_of")

    def __init__(self, applyset: str, chunks: dict[str, Chunk] | None = None) -> None:
        self.applyset = applyset
        self.chunks: dict[str, Chunk] = {}
        self._owned: dict[str, Entry] | None = None
        self._chunks_of: dict[str, list[str]] | None = None
        for chunk in (chunks or {}).values():
            self.add_chunk(chunk)

    def add_chunk(self, chunk: Chunk) -> None:
        self.chunks[chunk.key] = chunk
        self._owned = self._chunks_of = None

    @property
    def owned(self) -> dict[str, Entry]:
        if self._owned is None:
            owned: dict[str, Entry] = {}
            for chunk in self.chunks.values():
                entries = chunk.entries
                if not owned or owned.keys().isdisjoint(entries):   # the usual case: each key in one chunk
                    owned.update(entries)
                    continue
                for key, entry in entries.items():
                    owned.setdefault(key, entry)     # listed twice: the first chunk's entry
            self._owned = owned
        return self._owned

    @property
    def chunks_of(self) -> dict[str, list[str]]:
        if self._chunks_of is None:
            out: dict[str, list[str]] = {}
            for ck, chunk in self.chunks.items():
                for key in chunk.entries:
                    out.setdefault(key, []).append(ck)
            self._chunks_of = out
        return self._chunks_of

    def lists(self, key: str) -> bool:
        """True when some chunk lists `key`; decodes only the chunks that may list it."""
        if self._owned is not None:
            return key in self._owned
        return any(chunk.may_list(key) and key in chunk.entries for chunk in self.chunks.values())

    @property
    def prefixes(self) -> set[str]:
        return {e.prefix for e in self.owned.values()}

    def __repr__(self) -> str:
        return f"Inventory({self.applyset!r}, {len(self.chunks)} chunks)"


LOOKUPS_BEFORE_INDEX = 32   # OtherOwners: single look-ups before every other chunk is decoded at once


class OtherOwners(Mapping[str, str]):
    """key -> name of the (first, by name) apply set other than one that owns it, answered lazily.

    A look-up decodes only the chunks that may list the key (`Chunk.may_list`), so planning a few
    keys costs a few chunks, not every other set's inventory; after LOOKUPS_BEFORE_INDEX look-ups
    (a large plan) every chunk is decoded once into one index, so a large plan costs what it always
    did. Iterating or sizing it builds that index too. Chunks are decoded strictly: one that may list
    a key and does not read is an InventoryError, never "not owned"."""

    def __init__(self, sets: Mapping[str, Inventory], applyset: str) -> None:
        self._sets = [sets[name] for name in sorted(sets) if name != applyset]
        self._index: dict[str, str] | None = None
        self._lookups = 0

    def _build(self) -> dict[str, str]:
        if self._index is None:
            out: dict[str, str] = {}
            for inv in self._sets:
                for key in inv.owned:
                    out.setdefault(key, inv.applyset)
            self._index = out
        return self._index

    def __getitem__(self, key: str) -> str:
        if self._index is None:
            self._lookups += 1
            if self._lookups <= LOOKUPS_BEFORE_INDEX:
                for inv in self._sets:
                    if inv.lists(key):
                        return inv.applyset
                raise KeyError(key)
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())


@dataclass(slots=True)
class Ownership:
    """Every apply set's inventory as read at one revision, plus the ownership fence."""

    reserved: str
    sets: dict[str, Inventory] = field(default_factory=dict)
    fence_revision: int = 0

    def inventory(self, applyset: str) -> Inventory:
        return self.sets.get(applyset) or Inventory(applyset)

    def owners_except(self, applyset: str) -> Mapping[str, str]:
        """key -> name of the (first, by name) other apply set that owns it (lazy: see OtherOwners)."""
        return OtherOwners(self.sets, applyset)

    def listing(self, applyset: str, keys: Collection[str]) -> list[Inventory]:
        """`applyset`'s inventory (when it has one) and every other set's that lists one of `keys`:
        the chunks a plan of `applyset` touching those keys may rewrite. Beyond LOOKUPS_BEFORE_INDEX
        keys, every set (all decoded, as a large plan needs most of them anyway)."""
        if len(keys) > LOOKUPS_BEFORE_INDEX:
            return list(self.sets.values())
        return [inv for name, inv in self.sets.items() if name == applyset or any(inv.lists(k) for k in keys)]


def encode_chunk(entries: Mapping[str, Entry]) -> bytes:
    prefixes: dict[str, list[str]] = {}
    noprune: list[str] = []
    secret: list[str] = []
    by_doc: dict[str, dict[str, list[str]]] = {}       # prefix -> document -> relative keys
    for key in sorted(entries):
        entry = entries[key]
        if not key.startswith(entry.prefix):
            raise ValueError(f"{key}: not under its recorded prefix {entry.prefix}")
        rel = key[len(entry.prefix):]
        prefixes.setdefault(entry.prefix, []).append(rel)
        by_doc.setdefault(entry.prefix, {}).setdefault(entry.document, []).append(rel)
        if not entry.prune:
            noprune.append(key)
        if entry.secret:
            secret.append(key)
    documents: dict[str, dict[str, bool | list[str]]] = {}
    for prefix, docs in by_doc.items():
        for name, rels in docs.items():
            if name:  # a whole prefix of one document (the usual case) is `true`, not its keys again
                documents.setdefault(name, {})[prefix] = True if len(docs) == 1 else rels
    doc: dict[str, object] = {"v": CHUNK_VERSION, "prefixes": prefixes}
    if documents:
        doc["documents"] = {name: documents[name] for name in sorted(documents)}
    if noprune:
        doc["noprune"] = noprune
    if secret:
        doc["secret"] = secret
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CHUNK_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_FIELDS = {1: frozenset({"v", "prefixes", "noprune", "secret"}),
           2: frozenset({"v", "prefixes", "documents", "noprune", "secret"})}
_DOCUMENT = re.compile(r"^[A-Za-z]+/[^\x00-\x1f\x7f-\x9f]+$")


class _Bad(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"field {k!r} appears twice")
        out[k] = v
    return out


def _check_prefix(prefix: object, reserved: str | None) -> str:
    if not isinstance(prefix, str):
        raise _Bad("a prefix is not a string")
    if not prefix.endswith("/") or _CONTROL.search(prefix):
        raise _Bad(f"prefix {prefix!r} does not end with '/' or holds a control character")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise _Bad(f"prefix {prefix!r} has a '.' or '..' segment")
    if reserved and prefix.startswith(reserved):
        raise _Bad(f"prefix {prefix!r} is under the reserved prefix")
    return prefix


def _check_rel(rel: object, prefix: str) -> str:
    if not isinstance(rel, str):
        raise _Bad(f"a key under {prefix!r} is not a string")
    if not rel or rel.startswith("/") or _CONTROL.search(rel) or any(seg in (".", "..") for seg in rel.split("/")):
        raise _Bad(f"key {rel!r} under {prefix!r} is not a relative key that stays under its prefix")
    return rel


def _key_list(doc: dict[str, object], name: str, listed: dict[str, Entry]) -> set[str]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise _Bad(f"{name!r} is not a list of strings")
    keys = set(value)
    unknown = keys - listed.keys()
    if unknown:
        raise _Bad(f"{name!r} names {min(unknown)!r}, which the chunk does not list")
    return keys


def decode_chunk(key: str, value: bytes, *, reserved: str | None = None,
                 keys: Mapping[str, DesiredKey] | None = None) -> dict[str, Entry]:
    """Entries of one chunk, checked against the one shape ``encode_chunk`` writes: anything else
    (a wrong type, an unknown field, a key escaping its prefix) is an InventoryError naming ``key``.
    A chunk read loosely could make `apply` delete keys no apply set ever wrote. With `keys` (the
    desired state's), an owned key that is also declared is that key's own string.

    A chunk as etcdsync writes it is read by `_decoded_common` (checks over whole lists at once);
    any other, and every chunk it declines, by `_decoded` (key by key: the reference, and the one
    that says what is wrong). Both accept exactly the same chunks, with the same entries."""
    try:
        doc = json.loads(value, object_pairs_hook=_no_duplicates)
        out = _decoded_common(doc, reserved, keys)
        return out if out is not None else _decoded(doc, reserved, keys)
    except (ValueError, RecursionError) as exc:  # json's errors and _Bad are ValueErrors
        reason = str(exc).replace("\n", " ")
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise InventoryError(f"{_shown(key)}: inventory chunk is not readable ({_shown(reason)}); "
                             "fix or delete it by hand, etcdsync will not guess what it owns") from None


def _decoded(doc: object, reserved: str | None, keys: Mapping[str, DesiredKey] | None) -> dict[str, Entry]:
    """decode_chunk's reference reading of a parsed chunk, key by key: raises _Bad saying what is wrong."""
    if not isinstance(doc, dict):
        raise _Bad("not a JSON object")
    version = doc.get("v")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise _Bad(f"unsupported inventory version {json.dumps(version)}")
    extra = set(doc) - _FIELDS[version]
    if extra:
        raise _Bad(f"unknown field {min(extra)!r}")
    prefixes = doc.get("prefixes")
    if not isinstance(prefixes, dict):
        raise _Bad("'prefixes' is not an object")
    out: dict[str, Entry] = {}
    for prefix, rels in prefixes.items():
        _check_prefix(prefix, reserved)
        if not isinstance(rels, list):
            raise _Bad(f"the keys of prefix {prefix!r} are not a list")
        plain = Entry(prefix, True)  # shared: entries are frozen
        for rel in rels:
            full = prefix + _check_rel(rel, prefix)
            if keys is not None and (d := keys.get(full)) is not None:
                full = d.key     # the desired state's string: an owned key is not held twice
            out[full] = plain
    noprune = _key_list(doc, "noprune", out)
    secret = _key_list(doc, "secret", out)
    documents = _documents(doc, prefixes)
    _flag(out, noprune, secret, documents)
    return out


def _flag(out: dict[str, Entry], noprune: set[str], secret: set[str], documents: Mapping[str, str]) -> None:
    """Give the keys in `noprune`, `secret` or `documents` their record (one Entry per distinct record)."""
    shared: dict[tuple[str, bool, bool, str], Entry] = {}
    for full in noprune | secret | documents.keys():
        record = (out[full].prefix, full not in noprune, full in secret, documents.get(full, ""))
        entry = shared.get(record)
        if entry is None:
            entry = shared[record] = Entry(*record)
        out[full] = entry


# In a list of relative keys joined by NUL, with a NUL before and after (and no NUL in any key): a
# "." or ".." segment, between a boundary or "/" and the next one.
_DOT_SEGMENT = re.compile(r"[\x00/]\.\.?(?=[\x00/])")


def _plain_rels(rels: list[object]) -> bool:
    """True only when every element of `rels` is a string that _check_rel accepts, checked over the
    whole list at once (not a call per key). False: not known, _check_rel says (a key with a
    character that is not printable, even one _check_rel accepts, is left to it)."""
    if not rels:
        return True
    try:
        flat = "".join(rels)   # type: ignore[arg-type]  # TypeError: not all strings
    except TypeError:
        return False
    if not flat.isprintable():      # no control character (nor NUL: the boundaries below are ours)
        return False
    joined = "\x00" + "\x00".join(rels) + "\x00"   # type: ignore[arg-type]
    if "\x00\x00" in joined or "\x00/" in joined:    # an empty key, or one starting with "/"
        return False
    return not (("/." in joined or "\x00." in joined) and _DOT_SEGMENT.search(joined))


def _decoded_common(doc: object, reserved: str | None,
                    keys: Mapping[str, DesiredKey] | None) -> dict[str, Entry] | None:
    """The entries of a chunk of the shape etcdsync writes (each key listed once, each document
    naming whole prefixes, `true`, no prefix named twice), checked a list at a time; None for
    anything else, which `_decoded` then reads (and refuses, or reads as this would have: None
    never changes what a chunk means, it only costs the slower reading). Raises nothing."""
    if type(doc) is not dict:
        return None
    version = doc.get("v")
    if type(version) is not int or version not in READABLE_VERSIONS or not doc.keys() <= _FIELDS[version]:
        return None
    prefixes = doc.get("prefixes")
    documents = doc.get("documents", {})
    if type(prefixes) is not dict or type(documents) is not dict:
        return None
    named: dict[str, str] = {}    # prefix -> the one document naming all of it
    for name, groups in documents.items():
        if type(groups) is not dict or not groups or not _DOCUMENT.match(name):
            return None
        for prefix, rels in groups.items():
            if rels is not True or prefix in named or prefix not in prefixes:
                return None
            named[prefix] = name
    out: dict[str, Entry] = {}
    listed = 0
    for prefix, rels in prefixes.items():
        if type(rels) is not list or not _plain_rels(rels):
            return None
        try:
            _check_prefix(prefix, reserved)
        except _Bad:
            return None
        listed += len(rels)
        entry = Entry(prefix, True, False, named.get(prefix, ""))   # shared: entries are frozen
        if keys is None:
            out.update(dict.fromkeys([prefix + rel for rel in rels], entry))
        else:
            get = keys.get
            for rel in rels:
                full = prefix + rel
                d = get(full)
                out[full if d is None else d.key] = entry   # the desired state's string (see decode_chunk)
    if len(out) != listed:        # a key listed twice, or under two prefixes: _decoded says what that means
        return None
    if "noprune" in doc or "secret" in doc:
        try:
            noprune = _key_list(doc, "noprune", out)
            secret = _key_list(doc, "secret", out)
        except _Bad:
            return None
        shared: dict[tuple[str, bool, bool, str], Entry] = {}    # as in _flag: one Entry per record
        for full in noprune | secret:
            e = out[full]
            record = (e.prefix, full not in noprune, full in secret, e.document)
            flagged = shared.get(record)
            if flagged is None:
                flagged = shared[record] = Entry(*record)
            out[full] = flagged
    return out


def _documents(doc: dict[str, object], prefixes: dict[str, list[str]]) -> dict[str, str]:
    """Full key -> its document, from a format-2 "documents" object: every key it names must be
    listed under that prefix in "prefixes", and no key may have two documents."""
    value = doc.get("documents", {})
    if not isinstance(value, dict):
        raise _Bad("'documents' is not an object")
    out: dict[str, str] = {}
    for name, groups in value.items():
        if not _DOCUMENT.match(name):
            raise _Bad(f"document {name!r} is not <kind>/<name>")
        if not isinstance(groups, dict) or not groups:
            raise _Bad(f"the keys of document {name!r} are not a non-empty object of prefixes")
        for prefix, rels in groups.items():
            if prefix not in prefixes:
                raise _Bad(f"document {name!r} names prefix {prefix!r}, which the chunk does not list")
            listed = prefixes[prefix]
            if rels is True:
                rels = listed
            elif not isinstance(rels, list) or not rels or not all(isinstance(r, str) for r in rels):
                raise _Bad(f"the keys of document {name!r} under {prefix!r} are not true or a list of strings")
            elif not set(rels) <= set(listed):
                raise _Bad(f"document {name!r} names {min(set(rels) - set(listed))!r} under {prefix!r}, "
                           "which the chunk does not list")
            for rel in rels:
                full = prefix + rel
                if full in out:
                    raise _Bad(f"key {full!r} has two documents ({out[full]!r} and {name!r})")
                out[full] = name
    return out


def _shown(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def parse_ownership(kvs: Iterable[tuple[str, bytes, int]], reserved: str, *, applyset: str | None = None,
                    keys: Mapping[str, DesiredKey] | None = None) -> Ownership:
    """Build every set's inventory from (key, value, mod_revision) triples under the reserved prefix.

    With `applyset`, only that set's chunks are decoded here; every other set's are kept raw and
    decoded when (and if) a plan needs them (see Chunk and OtherOwners). Chunk keys are checked
    here either way. `keys`: see decode_chunk (for `applyset`'s chunks)."""
    own = Ownership(reserved)
    base = sets_prefix(reserved)
    fence = fence_key(reserved)
    for key, value, mod_revision in kvs:
        if key == fence:
            # the fence holds the name of the last apply set that added ownership
            if not APPLYSET_NAME.fullmatch(value.decode("utf-8", "replace")):
                raise InventoryError(f"{_shown(key)}: ownership fence holds no apply set name; "
                                     "fix or delete it by hand, etcdsync will not guess what it owns")
            own.fence_revision = mod_revision
            continue
        if not key.startswith(base):
            continue
        name, _, rest = key[len(base):].partition("/")
        if not rest.startswith("inventory/"):
            continue
        if not APPLYSET_NAME.fullmatch(name) or not _CHUNK_ID.fullmatch(rest[len("inventory/"):]):
            raise InventoryError(f"{_shown(key)}: not an inventory chunk key (sets/<apply set>/inventory/<id>); "
                                 "fix or delete it by hand, etcdsync will not guess what it owns")
        inv = own.sets.get(name)
        if inv is None:
            inv = own.sets[name] = Inventory(name)
        if applyset is None or name == applyset:
            inv.add_chunk(Chunk(key, mod_revision, decode_chunk(key, value, reserved=reserved,
                                                                keys=keys if name == applyset else None)))
        else:
            inv.add_chunk(Chunk(key, mod_revision, raw=bytes(value), reserved=reserved))
    return own
