"""Field-level differences between two JSON documents (pure).

A ConfigSet value written as a mapping or a list is stored as JSON. When one field inside it changes,
two whole lines of JSON hide what changed; `field_changes` names the changed paths instead:
`limit: 3 → 4`, `+ beta: true`, `- items[2]: "x"`.

Paths: mapping keys joined with dots (`db.pool.size`); a key that is not a plain word is quoted
(`["a.b"]`, `["two words"]`); list items by index (`items[2]`). Lists are compared as sequences, so an
item inserted or removed in the middle is one change, not a change of every item after it; an item
replaced in place is compared field by field. Only two JSON objects, or two JSON arrays, are compared
this way: anything else (text, numbers, a mapping that became a list, invalid JSON) returns None, and
the caller shows the values whole.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_MISSING: Any = object()


@dataclass(frozen=True)
class FieldChange:
    """One changed path. `op` is "add", "remove" or "update"; `old`/`new` are JSON values (absent
    when added or removed)."""

    path: str
    op: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "op": self.op}
        if self.op != "add":
            out["old"] = self.old
        if self.op != "remove":
            out["new"] = self.new
        return out


def parse_container(value: bytes | None) -> dict[str, Any] | list[Any] | None:
    """The JSON object or array `value` holds, or None (absent, not UTF-8, not JSON, or a scalar)."""
    if value is None:
        return None
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, (dict, list)) else None


def field_changes(old: bytes | None, new: bytes | None) -> list[FieldChange] | None:
    """The changed paths between two JSON objects (or two arrays), in document order; None when the
    two values are not both objects or both arrays. An empty list: the same JSON written differently
    (key order, spacing)."""
    a, b = parse_container(old), parse_container(new)
    if a is None or b is None or type(a) is not type(b):
        return None
    out: list[FieldChange] = []
    try:
        _diff(a, b, "", out)
    except RecursionError:
        return None
    return out


def _join(base: str, key: str) -> str:
    if _WORD.match(key):
        return f"{base}.{key}" if base else key
    return f"{base}[{json.dumps(key, ensure_ascii=False)}]"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same(a: Any, b: Any) -> bool:
    # not a == b: 1 == 1.0 == True in Python, three different values in JSON
    return _canonical(a) == _canonical(b)


def _diff(a: Any, b: Any, path: str, out: list[FieldChange]) -> None:
    if _same(a, b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key, value in b.items():
            old = a.get(key, _MISSING)
            if old is _MISSING:
                out.append(FieldChange(_join(path, key), "add", new=value))
            else:
                _diff(old, value, _join(path, key), out)
        for key, value in a.items():
            if key not in b:
                out.append(FieldChange(_join(path, key), "remove", old=value))
        return
    if isinstance(a, list) and isinstance(b, list):
        matcher = difflib.SequenceMatcher(None, [_canonical(x) for x in a], [_canonical(x) for x in b],
                                          autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            if tag == "replace" and i2 - i1 == j2 - j1:
                for k in range(i2 - i1):
                    _diff(a[i1 + k], b[j1 + k], f"{path}[{j1 + k}]", out)
                continue
            for i in range(i1, i2):
                out.append(FieldChange(f"{path}[{i}]", "remove", old=a[i]))
            for j in range(j1, j2):
                out.append(FieldChange(f"{path}[{j}]", "add", new=b[j]))
        return
    out.append(FieldChange(path or "(value)", "update", old=a, new=b))
