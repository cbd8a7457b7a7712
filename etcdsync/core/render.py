"""Plans and results as text and JSON (pure: returns strings and dicts, never prints).

Secret values never leave this module in clear: they become a short hash. What a change did to its
key is one `Result` of a closed vocabulary; every count of results is taken by `count_results`.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .model import Source
from .plan import Action, Change, LiveStatus, Plan

if TYPE_CHECKING:
    from .fielddiff import FieldChange

MAX_LINES = 20
MAX_CHARS = 2000
MAX_FIELDS = 50       # changed paths shown under one key before a count of the rest
MAX_FIELD_CHARS = 80  # a field's value is shortened beyond this

_SYMBOL = {
    Action.CREATE: "+", Action.UPDATE: "~", Action.ADOPT: ">", Action.DELETE: "-", Action.RELEASE: "<",
    Action.UNCHANGED: "=", Action.DRIFT: "!", Action.CONFLICT: "x",
}
_COLOR = {
    Action.CREATE: "green", Action.UPDATE: "yellow", Action.ADOPT: "cyan", Action.DELETE: "red",
    Action.RELEASE: "blue", Action.UNCHANGED: None, Action.DRIFT: "magenta", Action.CONFLICT: "red",
}

Style = Callable[..., str]


def _plain(text: str, **_: Any) -> str:
    return text


# what must never reach a terminal or a reader raw: C0/C1 controls (ESC starts OSC/CSI sequences that
# retitle the window, clear the screen or rewrite what was printed), DEL, lone surrogates, and
# characters that make text display as something else (bidirectional and zero-width characters)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named:
        return named
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def escape(text: str) -> str:
    """``text`` safe to print: control, bidirectional and zero-width characters as backslash escapes."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def secret_hash(value: bytes | None) -> str:
    if value is None:
        return "absent"
    return "sha256:" + hashlib.sha256(value).hexdigest()[:8]


def show_value(value: bytes | None, secret: bool) -> list[str]:
    """A value as display lines: masked when secret, shortened when long, marked when binary."""
    if value is None:
        return []
    if secret:
        return [f"(secret, {secret_hash(value)})"]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return [f"({len(value)} bytes, not UTF-8)"]
    if text == "":
        return ['""  (empty)']
    lines = [escape(line) for line in text.split("\n")]
    if len(lines) > 1:
        if lines[-1] == "":
            lines.pop()
        else:
            lines.append("\\ no newline at end")
    if len(text) > MAX_CHARS or len(lines) > MAX_LINES:
        shown = [escape(line) for line in text[:MAX_CHARS].split("\n")[:MAX_LINES]]
        return shown + [f"... ({len(value)} bytes in all)"]
    return lines


def _value_diff(old: bytes | None, new: bytes | None, secret: bool) -> list[tuple[str, str]]:
    """(sign, line) pairs: a line diff for multi-line text, else old then new."""
    a, b = show_value(old, secret), show_value(new, secret)
    if not secret and len(a) > 1 and len(b) > 1:
        out: list[tuple[str, str]] = []
        for line in difflib.unified_diff(a, b, lineterm="", n=2):
            if line.startswith(("---", "+++")):
                continue
            if line.startswith("@@"):
                out.append(("@", line))
            else:
                out.append((line[:1] or " ", line[1:]))
        return out
    return [("-", x) for x in a] + [("+", x) for x in b]


def _field_value(value: Any) -> str:
    text = escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS - 1] + "…"


def _field_line(f: FieldChange) -> tuple[str, str]:
    path = escape(f.path)
    if f.op == "add":
        return "+", f"{path}: {_field_value(f.new)}"
    if f.op == "remove":
        return "-", f"{path}: {_field_value(f.old)}"
    return "~", f"{path}: {_field_value(f.old)} → {_field_value(f.new)}"


def _fields(c: Change) -> list[FieldChange] | None:
    """The changed paths of a JSON object or array value (never for a secret), else None."""
    if c.secret or c.action not in (Action.UPDATE, Action.DRIFT):
        return None
    from .fielddiff import field_changes  # only updates need it: not imported by every diff

    return field_changes(c.old, c.new)


def render_change(c: Change, style: Style = _plain) -> list[str]:
    color = _COLOR[c.action]
    note = f"  ({escape(c.note)})" if c.note else ""
    if c.secret and not note:
        note = "  (secret)"
    head = style(f"{_SYMBOL[c.action]} {escape(c.key)}", fg=color, bold=True) + note
    lines = [head]
    if c.action is Action.CREATE:
        pairs = [("+", x) for x in show_value(c.new, c.secret)]
    elif c.action in (Action.UPDATE, Action.DRIFT):
        fields = _fields(c)
        if fields:
            pairs = [_field_line(f) for f in fields[:MAX_FIELDS]]
            if len(fields) > MAX_FIELDS:
                pairs.append(("@", f"... and {len(fields) - MAX_FIELDS} more changed fields (-o json lists them)"))
        elif fields == []:
            pairs = [("@", "the same JSON, written differently (key order or spacing)")]
            pairs += _value_diff(c.old, c.new, c.secret)
        else:
            pairs = _value_diff(c.old, c.new, c.secret)
    elif c.action is Action.DELETE:
        pairs = [("-", x) for x in show_value(c.old, c.secret)]
    else:
        pairs = []
    for sign, text in pairs:
        fg = {"+": "green", "-": "red", "~": "yellow", "@": "cyan"}.get(sign)
        lines.append("    " + style(f"{sign} {text}" if sign != "@" else text, fg=fg))
    return lines


def render_live(s: LiveStatus, style: Style = _plain) -> str:
    i = s.instance
    state = "registered" if s.present else "not registered"
    what = "ttl " + f"{i.ttl:g}s" if i.ttl else "health-checked"
    return style(f"* {escape(i.key)}", fg="blue") + f"  (live, {what}: {state}; written only by `etcdsync run`)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class Result(StrEnum):
    """What one change does (or did) to its key: one result per key, in one closed vocabulary."""

    CREATED = "created"      # put where there was no key
    UPDATED = "updated"      # put over a different value (whether or not it also became ours)
    ADOPTED = "adopted"      # became ours without its value being written (adopted, taken over, or
                             # recorded while held by policy warn or create-only)
    DELETED = "deleted"
    RELEASED = "released"    # forgotten by the inventory, left in etcd
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"      # differs, but held: policy warn (drift) or owned elsewhere (conflict)


_RESULT_OF_ACTION = {Action.CREATE: Result.CREATED, Action.UPDATE: Result.UPDATED, Action.DELETE: Result.DELETED,
                     Action.RELEASE: Result.RELEASED}


def result_of(c: Change) -> Result:
    """The result of a committed change. The one definition of "adopted": ownership gained without
    the value being created or updated."""
    result = _RESULT_OF_ACTION.get(c.action)
    if result is not None:
        return result
    if c.own:
        return Result.ADOPTED
    if c.action in (Action.DRIFT, Action.CONFLICT):
        return Result.SKIPPED
    return Result.UNCHANGED


def count_results(changes: Iterable[Change]) -> Counter[Result]:
    """How many changes end in each result (every count the summaries show comes from here)."""
    return Counter(result_of(c) for c in changes)


def ownership_only(changes: Iterable[Change]) -> int:
    """Changes whose only write is the key's ownership record (a key moved to another document or
    prefix, a prune or secret flag flipped): `diff` counts them as differences, so the summary must."""
    return sum(1 for c in changes if c.retag and c.action in (Action.UNCHANGED, Action.DRIFT))


def plan_counts(p: Plan) -> dict[str, int]:
    """The numbers of a plan's summary, for its text line and its JSON `summary` alike. `create`,
    `update`, `delete`, `unchanged`, `adopt`, `release` and `conflict` part the keys (each key in one,
    by its `Result`; `unchanged` holds drift held by policy warn, a skipped conflict is `conflict`);
    `drift` and `ownership` count keys among them (drifted; only the ownership record written)."""
    result = count_results(p.changes)
    conflict = p.counts.get(Action.CONFLICT.value, 0)
    return {"create": result[Result.CREATED], "update": result[Result.UPDATED], "delete": result[Result.DELETED],
            "unchanged": result[Result.UNCHANGED] + result[Result.SKIPPED] - conflict + p.unchanged,
            "adopt": result[Result.ADOPTED], "release": result[Result.RELEASED], "conflict": conflict,
            "drift": p.counts.get(Action.DRIFT.value, 0), "ownership": ownership_only(p.changes)}


def summary(p: Plan) -> str:
    n = plan_counts(p)
    line = f"{n['create']} to create, {n['update']} to update, {n['delete']} to delete, {n['unchanged']} unchanged"
    extra = []
    if n["ownership"]:
        extra.append(f"{_plural(n['ownership'], 'ownership record')} to update")
    if n["adopt"]:
        extra.append(f"{n['adopt']} to adopt")
    if n["release"]:
        extra.append(f"{n['release']} to release")
    if n["drift"]:
        extra.append(f"{n['drift']} drifted, held by policy warn")
    if n["conflict"]:
        leased = sum(1 for c in p.changes if c.action is Action.CONFLICT and c.owner is None)
        if n["conflict"] - leased:
            extra.append(f"{n['conflict'] - leased} owned by another apply set")
        if leased:
            extra.append(f"{leased} held by another client's lease")
    if p.live:
        extra.append(f"{_plural(len(p.live), 'live instance')} left to `etcdsync run`")
    return line + (f" ({', '.join(extra)})" if extra else "")


def render_plan(p: Plan, *, style: Style = _plain, verbose: bool = False, limit: int | None = None) -> str:
    """The diff; with `limit`, at most that many changed keys are shown before a count of the rest."""
    lines: list[str] = []
    shown = hidden = 0
    for c in p.changes:
        if c.action is Action.UNCHANGED and not c.writes and not verbose:
            continue
        if limit is not None and shown >= limit:
            hidden += 1
            continue
        shown += 1
        lines.extend(render_change(c, style))
    if hidden:
        lines.append(f"... and {hidden} more {'key' if hidden == 1 else 'keys'} (-v or -o json lists every key)")
    for s in p.live:
        lines.append(render_live(s, style))
    if lines:
        lines.append("")
    lines.append(summary(p))
    if p.refused:
        lines.append(style(f"refused: {p.refused}", fg="red", bold=True))
    return "\n".join(lines)


def commit_line(transactions: int, max_ops: int) -> str:
    """How a plan will be committed: one atomic transaction, or batches a reader can see half applied."""
    if transactions <= 1:
        return "commit: 1 transaction (atomic)"
    return (f"commit: {transactions} transactions of at most {max_ops} operations "
            "(not atomic: readers can see it half applied)")


def commit_json(transactions: int, max_ops: int) -> dict[str, Any]:
    return {"transactions": transactions, "maxOperations": max_ops, "atomic": transactions <= 1}


def applied_counts(done: Mapping[str, Change], unchanged: int) -> dict[str, int]:
    """The numbers of what an apply committed, for its text line and its JSON `applied.summary`
    alike: one per `Result` of the committed changes (`unchanged`: the keys it did not need to touch),
    and `ownership`, the committed changes whose only write was the key's ownership record."""
    count = count_results(done.values())
    return {"created": count[Result.CREATED], "updated": count[Result.UPDATED], "deleted": count[Result.DELETED],
            "unchanged": unchanged, "adopted": count[Result.ADOPTED], "released": count[Result.RELEASED],
            "ownership": ownership_only(done.values())}


def unchanged_keys(p: Plan, done: Mapping[str, Change]) -> int:
    """The keys of a plan an apply did not need to touch (not committed, nothing to write)."""
    return p.unchanged + sum(1 for c in p.changes if c.key not in done and not c.writes)


def result_summary(done: Mapping[str, Change], unchanged: int) -> str:
    """One line for what an apply committed; `unchanged` counts the keys it did not need to touch."""
    n = applied_counts(done, unchanged)
    line = f"{n['created']} created, {n['updated']} updated, {n['deleted']} deleted, {n['unchanged']} unchanged"
    extra = []
    if n["ownership"]:
        extra.append(f"{_plural(n['ownership'], 'ownership record')} updated")
    if n["adopted"]:
        extra.append(f"{n['adopted']} adopted")
    if n["released"]:
        extra.append(f"{n['released']} released")
    return line + (f" ({', '.join(extra)})" if extra else "")


def results_json(done: Mapping[str, Change], unchanged: int, *,
                 removed: Mapping[str, Source] | None = None) -> dict[str, Any]:
    """`applied.summary` and `applied.results` of the JSON documents: each committed change with its
    `result` (the `Result` the text summary counts it under)."""
    removed = removed or {}
    return {"summary": applied_counts(done, unchanged),
            "results": [change_json(c, result=result_of(c).value, removed_by=removed.get(c.key))
                        for c in done.values()]}


def _json_value(value: bytes | None, secret: bool) -> dict[str, Any] | str | None:
    if value is None:
        return None
    if secret:
        return {"secret": True, "hash": secret_hash(value)}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def origin_json(source: Source) -> dict[str, Any]:
    """Which layer a declared key came from: the declaration whose value is used (file:line:column),
    the earlier layers' declarations of the same key it overrode (oldest first), and the documents,
    one per -f layer, that its document was merged from (empty for a single layer)."""
    return {"value": str(source), "overrides": [str(s) for s in source.overrides],
            "layers": [str(s) for s in source.layers]}


def change_json(c: Change, result: str | None = None, *, removed_by: Source | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": c.key,
        "action": c.action.value,
        "old": _json_value(c.old, c.secret),
        "new": _json_value(c.new, c.secret),
        "policy": c.policy.value,
        "secret": c.secret,
        "adopt": c.adopts_unowned,
    }
    if c.owner:
        out["owner"] = c.owner
    if c.lease:
        out["lease"] = f"{c.lease:016x}"
    if c.note:
        out["note"] = c.note
    if c.document:
        out["document"] = c.document
    if c.source:
        out["source"] = str(c.source)
        out["origin"] = origin_json(c.source)
    elif removed_by is not None:
        out["origin"] = {"removedBy": str(removed_by)}
    fields = _fields(c)
    if fields is not None:
        out["fields"] = [f.to_json() for f in fields]
    if result is not None:
        out["result"] = result
    return out


def plan_json(p: Plan, *, applyset_origin: str, removed: Mapping[str, Source] | None = None,
              commit: tuple[int, int] | None = None) -> dict[str, Any]:
    """``removed``: keys an overlay removed (DesiredState.removed), named in the origin of their delete;
    ``commit``: (transactions, max operations) of a plan that passed the guards and writes (else null)."""
    removed = removed or {}
    return {
        "applyset": p.applyset,
        "applysetFrom": applyset_origin,
        "inSync": not p.has_changes and not p.conflicts,   # a conflict is not "in sync", though nothing is written
        "refused": p.refused,
        "summary": plan_counts(p),
        "commit": commit_json(*commit) if commit is not None else None,
        "changes": [change_json(c, removed_by=removed.get(c.key)) for c in p.changes],
        "live": [_live_json(s) for s in p.live],
    }


def _live_json(s: LiveStatus) -> dict[str, Any]:
    i = s.instance
    out = {"key": i.key, "service": i.service, "id": i.id, "registered": s.present, "ttl": i.ttl,
           "checked": i.check is not None}
    if i.source:
        out["source"] = str(i.source)
        out["origin"] = origin_json(i.source)
    return out
