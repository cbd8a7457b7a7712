"""Saved plans (pure): the file `etcdsync diff --out PLAN` writes and `etcdsync apply --plan PLAN` reads.

A saved plan is the list of writes a diff decided, each with the revision it was planned against,
plus what binds it to one place: the apply set, the reserved prefix, etcd's cluster id and a digest
of the declared state. It never holds a secret value: a secret to write is recorded as a salted
hash, and the value is read again from the manifests when the plan is applied (a different value is
refused). The file is untrusted input: at apply time each of its changes must be exactly the change a
fresh plan of the manifests against etcd makes (`unknown`, `stale`, `mismatches`), and the fresh
change is what is executed (`to_apply`, with the deletion guard run again). Encoding, decoding with
strict validation, and those checks live here; reading etcd and writing are the caller's
(`etcdsync.apply.apply_saved`).

Format (JSON, one object; see the README's CLI reference):

    {"format": "etcdsync-plan", "version": 1, "applyset": ..., "reservedPrefix": ..., "clusterId": ...,
     "revision": N, "manifestDigest": "sha256:...", "salt": "<32 hex>", "ownedBefore": N,
     "counts": {action: N, ...}, "commit": {"transactions": N, "maxOperations": N, "atomic": bool},
     "changes": [{"key", "action", "revision", "prefix", "policy", "prune", "secret", "own", "retag",
                  "owner", "lease", "owned", "value", "note", "document"}, ...]}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from ..errors import UsageError
from ..settings import Options
from .inventory import Entry, check_applyset_name
from .model import DesiredState, Policy
from .plan import Action, Change, ObservedLike, Plan, guard

FORMAT = "etcdsync-plan"
VERSION = 1

_CHANGE_FIELDS = {"key", "action", "revision", "prefix", "policy", "prune", "secret", "own", "retag", "owner",
                  "lease", "owned", "value", "note", "document"}
_TOP_FIELDS = {"format", "version", "applyset", "reservedPrefix", "clusterId", "revision", "manifestDigest", "salt",
               "ownedBefore", "counts", "commit", "changes"}
_PUTS = (Action.CREATE, Action.UPDATE)


def manifest_digest(desired: DesiredState) -> str:
    """A digest of what the manifests declare: every key with its value, prefix, policy and flags,
    and every live instance. Secret values are left out (a saved plan checks them one by one), so
    the digest can be shown and stored; file names, comments and layout do not count.

    Each key is one length-prefixed line (``len:key len:prefix policy:prune secret len(value)``), and
    the values follow all the lines; the lengths make it unambiguous. (It used to be a JSON list and
    a hash per key: 3x the time over 100,000 keys. A plan saved before then only shows the
    "manifests changed since the plan" note.) Computed only for `diff --out` and `apply --plan`."""
    keys = desired.keys
    flags = {(p, prune, secret): f"{p.value}:{prune:d}{secret:d}"
             for p in Policy for prune in (False, True) for secret in (False, True)}
    lines: list[str] = []
    values: list[bytes] = []
    for key in sorted(keys):
        d = keys[key]
        secret = d.secret
        value = b"(secret)" if secret else d.value
        prefix = d.prefix
        lines.append(f"{len(key)}:{key}{len(prefix)}:{prefix}{flags[d.policy, d.prune, secret]}{len(value)}\n")
        values.append(value)
    h = hashlib.sha256(b"etcdsync-manifest-digest/2\0")
    h.update("".join(lines).encode("utf-8", "surrogatepass"))
    h.update(b"".join(values))
    for i in sorted(desired.live, key=lambda i: i.key):
        h.update(json.dumps([i.key, i.ttl, i.check is not None]).encode() + b"\0")
        h.update(hashlib.sha256(i.value).digest())
    return "sha256:" + h.hexdigest()


def plan_id(saved: SavedPlan) -> str:
    """A saved plan's identity (16 hex digits, from its random salt): the name of its claim while
    it is applied, so that two processes applying one plan file cannot both write."""
    return hashlib.sha256(b"etcdsync-plan-claim\0" + saved.salt.encode()).hexdigest()[:16]


def secret_digest(salt: str, key: str, value: bytes) -> str:
    """The salted hash a saved plan holds instead of a secret value."""
    return "sha256:" + hashlib.sha256(salt.encode() + b"\0" + key.encode() + b"\0" + value).hexdigest()


class SavedChange(NamedTuple):
    """One planned write: the change (`new` is None for a secret: only `value_hash` is known) and the
    key's ownership record as planned (`owned`: its entry in this set's inventory, else None)."""

    change: Change
    value_hash: str | None = None
    owned: Entry | None = None


class SavedPlan(NamedTuple):
    applyset: str
    reserved: str
    cluster_id: str
    revision: int
    digest: str
    salt: str
    owned_before: int
    counts: Mapping[str, int]
    transactions: int
    max_ops: int
    changes: tuple[SavedChange, ...]


class Stale(NamedTuple):
    """A planned key that moved since the plan: its revision then and now (0: absent), or its owner."""

    key: str
    planned: int
    current: int
    why: str = ""

    def __str__(self) -> str:
        if self.why:
            return f"{self.key}: {self.why}"
        then = f"planned at revision {self.planned}" if self.planned else "absent when planned"
        now = f"now at revision {self.current}" if self.current else "now absent"
        return f"{self.key}: {then}, {now}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "plannedRevision": self.planned, "currentRevision": self.current}
        if self.why:
            out["reason"] = self.why
        return out


# -- encode ---------------------------------------------------------------------------------------------

def _value(c: Change, salt: str) -> Any:
    if c.action not in _PUTS or c.new is None:
        return None
    if c.secret:
        return {"secretHash": secret_digest(salt, c.key, c.new)}
    try:
        return c.new.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(c.new).decode("ascii")}


def _entry_json(e: Entry | None) -> dict[str, Any] | None:
    return None if e is None else {"prefix": e.prefix, "prune": e.prune, "secret": e.secret, "document": e.document}


def encode(p: Plan, *, reserved: str, cluster_id: str, revision: int, digest: str, salt: str,
           owned: Mapping[str, Entry], transactions: int, max_ops: int) -> str:
    """The plan file's text. `owned`: this apply set's inventory as planned (key -> entry)."""
    changes = []
    for c in p.writes:
        changes.append({
            "key": c.key, "action": c.action.value, "revision": c.revision, "prefix": c.prefix,
            "policy": c.policy.value, "prune": c.prune, "secret": c.secret, "own": c.own, "retag": c.retag,
            "owner": c.owner, "lease": c.lease, "owned": _entry_json(owned.get(c.key)),
            "value": _value(c, salt), "note": c.note, "document": c.document,
        })
    doc = {
        "format": FORMAT, "version": VERSION, "applyset": p.applyset, "reservedPrefix": reserved,
        "clusterId": cluster_id, "revision": revision, "manifestDigest": digest, "salt": salt,
        "ownedBefore": p.owned_before, "counts": dict(p.counts),
        "commit": {"transactions": transactions, "maxOperations": max_ops, "atomic": transactions <= 1},
        "changes": changes,
    }
    return json.dumps(doc, indent=1, ensure_ascii=True) + "\n"


# -- decode ---------------------------------------------------------------------------------------------

class _Bad(ValueError):
    pass


def _get(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if name not in doc:
        raise _Bad(f"{where}missing field {name!r}")
    value = doc[name]
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        want = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}
        raise _Bad(f"{where}{name!r} must be {want.get(kind, str(kind)) if isinstance(kind, type) else 'a string or null'}")
    return value


INT64_MAX = (1 << 63) - 1      # etcd's revisions, leases and counts are int64
MAX_BYTES = 256 << 20          # a plan file larger than this is refused unread (100,000 keys: ~45 MB)


def _nonneg(doc: Mapping[str, Any], name: str, where: str = "") -> int:
    value: int = _get(doc, name, int, where)
    if value < 0:
        raise _Bad(f"{where}{name!r} must not be negative")
    if value > INT64_MAX:
        raise _Bad(f"{where}{name!r} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise _Bad(f"not a plan file: {name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a field given twice (json.loads would silently keep the last)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"not a plan file: field {k!r} given twice")
        out[k] = v
    return out


def _unknown(doc: Mapping[str, Any], allowed: set[str], where: str = "") -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise _Bad(f"{where}unknown field {extra[0]!r}")


def _entry(raw: Any, where: str) -> Entry | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Bad(f"{where}'owned' must be an object or null")
    _unknown(raw, {"prefix", "prune", "secret", "document"}, where + "owned: ")
    document = _get(raw, "document", str, where + "owned: ") if "document" in raw else ""
    return Entry(_get(raw, "prefix", str, where + "owned: "), _get(raw, "prune", bool, where + "owned: "),
                 _get(raw, "secret", bool, where + "owned: "), document)


def _change(raw: Any, i: int) -> SavedChange:
    where = f"changes[{i}]: "
    if not isinstance(raw, dict):
        raise _Bad(f"{where}must be an object")
    _unknown(raw, _CHANGE_FIELDS, where)
    key: str = _get(raw, "key", str, where)
    where = f"changes[{i}] ({key}): "
    try:
        action = Action(_get(raw, "action", str, where))
        policy = Policy(_get(raw, "policy", str, where))
    except ValueError as exc:
        raise _Bad(f"{where}{exc}") from None
    if action in (Action.CONFLICT,):
        raise _Bad(f"{where}a conflict is not a change a plan can apply")
    secret: bool = _get(raw, "secret", bool, where)
    owner = raw.get("owner")
    if owner is not None and not isinstance(owner, str):
        raise _Bad(f"{where}'owner' must be a string or null")
    value = raw.get("value")
    new: bytes | None = None
    value_hash: str | None = None
    if action in _PUTS:
        if secret:
            if not isinstance(value, dict) or set(value) != {"secretHash"} or not isinstance(value["secretHash"], str) \
                    or not value["secretHash"].startswith("sha256:"):
                raise _Bad(f"{where}a secret's 'value' must be {{\"secretHash\": \"sha256:...\"}}")
            value_hash = value["secretHash"]
        elif isinstance(value, str):
            new = value.encode("utf-8")
        elif isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
            try:
                new = base64.b64decode(value["base64"], validate=True)
            except (binascii.Error, ValueError):
                raise _Bad(f"{where}'value' is not valid base64") from None
        else:
            raise _Bad(f"{where}'value' must be a string, {{\"base64\": ...}} or (secret) {{\"secretHash\": ...}}")
    elif value is not None:
        raise _Bad(f"{where}'value' must be null for a {action.value}")
    revision = _nonneg(raw, "revision", where)
    if action is Action.CREATE and revision:
        raise _Bad(f"{where}a create is planned against an absent key (revision 0)")
    change = Change(
        action=action, key=key, old=None, new=new, revision=revision, prefix=_get(raw, "prefix", str, where),
        policy=policy, prune=_get(raw, "prune", bool, where), secret=secret, own=_get(raw, "own", bool, where),
        retag=_get(raw, "retag", bool, where), owner=owner, note=_get(raw, "note", str, where),
        document=_get(raw, "document", str, where), lease=_nonneg(raw, "lease", where),
    )
    if not change.writes:
        raise _Bad(f"{where}writes nothing (a plan file lists only writes)")
    return SavedChange(change, value_hash, _entry(raw.get("owned"), where))


def decode(text: str, name: str) -> SavedPlan:
    """Parse and check a plan file's text; any problem is a UsageError naming `name` (and the line,
    for a JSON syntax error)."""
    try:
        doc = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name}:{exc.lineno}: not a plan file: invalid JSON ({exc.msg})") from None
    except _Bad as exc:
        raise UsageError(f"{name}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{name}: not a plan file: nested too deeply") from None
    except ValueError:   # an integer of more than 4,300 digits (Python's limit on int parsing)
        raise UsageError(f"{name}: not a plan file: a number too large") from None
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise _Bad(f"not a plan file (no \"format\": \"{FORMAT}\"; write one with `etcdsync diff --out`)")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _Bad("'version' must be a positive integer")
        if version > VERSION:
            raise _Bad(f"plan format version {version} is newer than this etcdsync reads ({VERSION}); "
                       "apply it with the etcdsync version that wrote it, or make the plan again")
        _unknown(doc, _TOP_FIELDS)
        applyset: str = _get(doc, "applyset", str)
        try:
            check_applyset_name(applyset)
        except UsageError as exc:
            raise _Bad(str(exc)) from None
        reserved: str = _get(doc, "reservedPrefix", str)
        cluster_id: str = _get(doc, "clusterId", str)
        digest: str = _get(doc, "manifestDigest", str)
        salt: str = _get(doc, "salt", str)
        if len(salt) < 16:
            raise _Bad("'salt' is too short")
        counts_raw: dict[str, Any] = _get(doc, "counts", dict)
        counts = {a.value: 0 for a in Action}
        for k, v in counts_raw.items():
            if k not in counts or not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= INT64_MAX:
                raise _Bad(f"counts: {k!r} is not an action with a count")
            counts[k] = v
        commit: dict[str, Any] = _get(doc, "commit", dict)
        raw_changes: list[Any] = _get(doc, "changes", list)
        changes = tuple(_change(raw, i) for i, raw in enumerate(raw_changes))
        seen: set[str] = set()
        for sc in changes:
            if sc.change.key in seen:
                raise _Bad(f"{sc.change.key}: listed twice")
            seen.add(sc.change.key)
        return SavedPlan(applyset, reserved, cluster_id, _nonneg(doc, "revision"), digest, salt,
                         _nonneg(doc, "ownedBefore"), counts, _nonneg(commit, "transactions", "commit: "),
                         _nonneg(commit, "maxOperations", "commit: "), changes)
    except _Bad as exc:
        raise UsageError(f"{name}: {exc}") from None


# -- checks before applying -----------------------------------------------------------------------------

def stale(saved: SavedPlan, observed: Mapping[str, ObservedLike], mine: Mapping[str, Entry],
          others: Mapping[str, str], keys: set[str] | None = None) -> list[Stale]:
    """Every planned key that moved since the plan was made: its mod_revision (0: absent) differs,
    or its ownership record does (this set's entry, another set, or none). `mine`: this set's
    inventory now; `others`: key -> the other apply set that owns it now; `keys`: check only these."""
    out: list[Stale] = []
    for sc in saved.changes:
        c = sc.change
        if keys is not None and c.key not in keys:
            continue
        obs = observed.get(c.key)
        now = obs.mod_revision if obs is not None else 0
        if now != c.revision:
            out.append(Stale(c.key, c.revision, now))
            continue
        entry = mine.get(c.key)
        if entry != sc.owned:
            was = "owned by this apply set" if sc.owned is not None else "not owned by it"
            is_ = "owned by it" if entry is not None else "not owned by it"
            if sc.owned is not None and entry is not None:
                is_ = "recorded differently"
            out.append(Stale(c.key, c.revision, now, f"ownership record changed ({was} when planned, now {is_})"))
            continue
        if entry is None and others.get(c.key) != c.owner:
            then = f"apply set {c.owner!r}" if c.owner else "no apply set"
            owner = others.get(c.key)
            out.append(Stale(c.key, c.revision, now, f"owned by {then} when planned, now by "
                             + (f"apply set {owner!r}" if owner else "no apply set")))
    return out


def secret_mismatches(saved: SavedPlan, desired: DesiredState) -> list[str]:
    """Secret keys whose value in the manifests is not the one planned (or that are no longer
    declared as secrets): one line each, naming the key, never a value."""
    out = []
    for sc in saved.changes:
        if sc.value_hash is None:
            continue
        key = sc.change.key
        d = desired.keys.get(key)
        if d is None or not d.secret:
            out.append(f"{key}: no longer declared as a secret in the manifests")
        elif secret_digest(saved.salt, key, d.value) != sc.value_hash:
            out.append(f"{key}: the secret's value in the manifests is not the one planned")
    return out


def unknown(saved: SavedPlan, fresh: Plan, keys: set[str] | None = None) -> list[str]:
    """Planned keys for which `fresh` (the plan of the manifests against etcd now) has no change at
    all: neither declared by the manifests nor owned by the plan's apply set. A plan made by `diff`
    never lists one; a forged or hand-edited file may (a key outside the declared prefixes, under the
    reserved prefix, someone else's). One line each."""
    known = {c.key for c in fresh.changes}
    return [f"{sc.change.key}: not declared by the manifests nor owned by apply set {saved.applyset!r}"
            for sc in saved.changes
            if (keys is None or sc.change.key in keys) and sc.change.key not in known]


# the fields of a change that decide what is written (the rest: notes, the document's name, are display)
_DECIDING = ("action", "revision", "prefix", "policy", "prune", "secret", "own", "retag", "owner", "lease")


def mismatches(saved: SavedPlan, fresh: Plan, keys: set[str] | None = None) -> tuple[list[str], list[Change]]:
    """Check every saved change against `fresh`, the plan the manifests and etcd call for now (made
    with apply's own options): a saved change is applied only when it is exactly the fresh plan's
    change for that key (same action, revision, ownership record, lease, and value: for a secret,
    its hash). Returns the problems (one line each, naming the key, never a value) and, when there
    are none, the fresh changes to execute (values, notes and documents from the manifests, never
    from the file). A key the fresh plan does not know at all is `unknown`'s to report."""
    by_key = {c.key: c for c in fresh.changes}
    problems: list[str] = []
    out: list[Change] = []
    for sc in saved.changes:
        c = sc.change
        if keys is not None and c.key not in keys:
            continue
        f = by_key.get(c.key)
        if f is None:
            continue
        if f.action is Action.CONFLICT:
            problems.append(f"{c.key}: {f.note}; pass --take-ownership to `apply --plan` to take it")
            continue
        if not f.writes:
            problems.append(f"{c.key}: the plan says {c.action.value}, the manifests call for no write to it now "
                            f"({f.action.value}{': ' + f.note if f.note else ''})")
            continue
        if c.action is not f.action:
            problems.append(f"{c.key}: the plan says {c.action.value}, the manifests and etcd call for "
                            f"{f.action.value} now")
            continue
        differ = [name for name in _DECIDING if getattr(c, name) != getattr(f, name)]
        if differ:
            problems.append(f"{c.key}: the plan's {', '.join(differ)} differ from what the manifests and etcd "
                            "call for now")
            continue
        if c.action in _PUTS:
            same = (sc.value_hash is not None and f.new is not None
                    and secret_digest(saved.salt, c.key, f.new) == sc.value_hash) \
                if c.secret else (sc.value_hash is None and c.new == f.new)
            if not same:
                problems.append(f"{c.key}: the plan's value is not the value the manifests declare")
                continue
        out.append(f)
    return problems, out


def to_apply(applyset: str, changes: list[Change], owned_before: int, options: Options) -> Plan:
    """The checked changes as the Plan the executor runs, counted from the changes themselves (never
    from the file's counts) and judged again by the deletion guard with apply's own options."""
    counts = {a.value: 0 for a in Action}
    for c in changes:
        counts[c.action.value] += 1
    p = Plan(applyset, tuple(sorted(changes, key=lambda c: c.key)), (), owned_before, None, counts)
    return replace(p, refused=guard(p, options))
