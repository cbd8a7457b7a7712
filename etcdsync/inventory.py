"""What each apply set owns, as kept in etcd under the reserved prefix (pure: parse and encode).

Layout (R is the reserved prefix, default `/.etcdsync/`):

    R sets/<applyset>/inventory/<chunk-id>   JSON chunk: {"v":1,"prefixes":{prefix:[relative keys]},
                                             "noprune":[keys],"secret":[keys]}
    R ownership                              fence bumped by every transaction that adds ownership

An inventory is split into chunks so that 100,000 owned keys stay within etcd's request limits: a
transaction that creates or adopts keys writes them together with a new chunk listing exactly those
keys (so a key etcdsync wrote is always in the inventory), and a transaction that deletes keys
rewrites the chunks that listed them (so a key leaves the inventory only with its deletion).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import EtcdsyncError, UsageError

APPLYSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CHUNK_VERSION = 1


class InventoryError(EtcdsyncError):
    """An inventory chunk in etcd cannot be read; etcdsync refuses to guess what it owns."""


def check_applyset_name(name: str) -> str:
    if not APPLYSET_NAME.match(name):
        raise UsageError(f"applyset {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


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


@dataclass(slots=True)
class Chunk:
    """One inventory chunk: its etcd key, the mod_revision we read it at, and its entries."""

    key: str
    mod_revision: int
    entries: dict[str, Entry] = field(default_factory=dict)


@dataclass(slots=True)
class Inventory:
    """What one apply set owns; `chunks_of` maps a key to every chunk that lists it."""

    applyset: str
    chunks: dict[str, Chunk] = field(default_factory=dict)
    owned: dict[str, Entry] = field(default_factory=dict)
    chunks_of: dict[str, list[str]] = field(default_factory=dict)

    def add_chunk(self, chunk: Chunk) -> None:
        self.chunks[chunk.key] = chunk
        for key, entry in chunk.entries.items():
            self.owned.setdefault(key, entry)
            self.chunks_of.setdefault(key, []).append(chunk.key)

    @property
    def prefixes(self) -> set[str]:
        return {e.prefix for e in self.owned.values()}


@dataclass(slots=True)
class Ownership:
    """Every apply set's inventory as read at one revision, plus the ownership fence."""

    reserved: str
    sets: dict[str, Inventory] = field(default_factory=dict)
    fence_revision: int = 0

    def inventory(self, applyset: str) -> Inventory:
        return self.sets.get(applyset) or Inventory(applyset)

    def owners_except(self, applyset: str) -> dict[str, str]:
        """key -> name of the (first, by name) other apply set that owns it."""
        out: dict[str, str] = {}
        for name in sorted(self.sets):
            if name == applyset:
                continue
            for key in self.sets[name].owned:
                out.setdefault(key, name)
        return out


def encode_chunk(entries: Mapping[str, Entry]) -> bytes:
    prefixes: dict[str, list[str]] = {}
    noprune: list[str] = []
    secret: list[str] = []
    for key in sorted(entries):
        entry = entries[key]
        if not key.startswith(entry.prefix):
            raise ValueError(f"{key}: not under its recorded prefix {entry.prefix}")
        prefixes.setdefault(entry.prefix, []).append(key[len(entry.prefix):])
        if not entry.prune:
            noprune.append(key)
        if entry.secret:
            secret.append(key)
    doc: dict[str, object] = {"v": CHUNK_VERSION, "prefixes": prefixes}
    if noprune:
        doc["noprune"] = noprune
    if secret:
        doc["secret"] = secret
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_chunk(key: str, value: bytes) -> dict[str, Entry]:
    try:
        doc = json.loads(value)
        if not isinstance(doc, dict) or doc.get("v") != CHUNK_VERSION:
            raise ValueError(f"unsupported inventory version {doc.get('v') if isinstance(doc, dict) else doc!r}")
        noprune = set(doc.get("noprune", ()))
        secret = set(doc.get("secret", ()))
        out: dict[str, Entry] = {}
        for prefix, rels in doc["prefixes"].items():
            plain = Entry(prefix, True)  # shared: entries are frozen
            for rel in rels:
                if not isinstance(rel, str):
                    raise ValueError("relative key is not a string")
                full = prefix + rel
                if full in noprune or full in secret:
                    out[full] = Entry(prefix, full not in noprune, full in secret)
                else:
                    out[full] = plain
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InventoryError(f"{key}: inventory chunk is not readable ({exc}); "
                             "fix or delete it by hand, etcdsync will not guess what it owns") from None


def parse_ownership(kvs: Iterable[tuple[str, bytes, int]], reserved: str) -> Ownership:
    """Build every set's inventory from (key, value, mod_revision) triples under the reserved prefix."""
    own = Ownership(reserved)
    base = sets_prefix(reserved)
    fence = fence_key(reserved)
    for key, value, mod_revision in kvs:
        if key == fence:
            own.fence_revision = mod_revision
            continue
        if not key.startswith(base):
            continue
        name, _, rest = key[len(base):].partition("/")
        if not rest.startswith("inventory/"):
            continue
        inv = own.sets.get(name)
        if inv is None:
            inv = own.sets[name] = Inventory(name)
        inv.add_chunk(Chunk(key, mod_revision, decode_chunk(key, value)))
    return own
