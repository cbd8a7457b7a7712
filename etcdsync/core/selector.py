"""Label selectors (`-l key=value,key!=value`): parse one, and narrow a desired state to the
documents it selects (pure).

Syntax: terms separated by commas, all of which must hold (AND). A term is `key=value` (also
`key==value`: the label is present with that value) or `key!=value` (the label is absent or has
another value). Blanks around keys and values are ignored; a value may be empty (`tier=` selects
documents whose label `tier` is the empty string). Set-based terms (`key in (a,b)`, `!key`) are not
supported. Only ConfigSet and Service documents are selected (an ApplySet declares no keys).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import ManifestError, UsageError
from .model import DesiredState, Selection

_TERM = re.compile(r"^\s*([^=!,\s]+)\s*(==|=|!=)\s*([^=!,]*?)\s*$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class Requirement(NamedTuple):
    key: str
    equal: bool          # True: key=value; False: key!=value
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (labels.get(self.key) == self.value) is self.equal

    def __str__(self) -> str:
        return f"{self.key}{'=' if self.equal else '!='}{self.value}"


def _shown(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """The requirements of `text`; a UsageError naming the selector and the bad term otherwise."""
    if not text.strip():
        raise UsageError("-l/--selector: empty selector (use key=value[,key=value] or key!=value)")
    if _CONTROL.search(text):
        raise UsageError(f"-l/--selector '{_shown(text)}': contains a control character")
    out: list[Requirement] = []
    for term in text.split(","):
        m = _TERM.match(term)
        if m is None:
            what = "empty term (two commas, or a comma at an end)" if not term.strip() else \
                f"term '{term.strip()}' is not key=value or key!=value"
            raise UsageError(f"-l/--selector '{text}': {what}")
        out.append(Requirement(m.group(1), m.group(2) != "!=", m.group(3)))
    return tuple(out)


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)


def select(desired: DesiredState, selector: str | None) -> DesiredState:
    """`desired` narrowed to the documents `selector` selects (unchanged when `selector` is None).

    The result holds only their keys and live instances, and a Selection the planner reads: which
    documents were selected and every key the whole tree declares (a key that moved to an
    unselected document is still declared, so it is never pruned). A selector that selects no
    document is an error (exit 2, nothing planned), also in the daemon (the last good state is kept).
    """
    if selector is None:
        return desired
    requirements = parse_selector(selector)
    chosen = frozenset(doc for doc, labels in desired.labels.items() if matches(requirements, labels))
    if not chosen:
        seen = sorted({f"{k}={v}" for labels in desired.labels.values() for k, v in labels.items()})
        shown = ", ".join(_shown(s) for s in seen[:10]) + (f" (and {len(seen) - 10} more)" if len(seen) > 10 else "")
        raise ManifestError(f"-l/--selector '{_shown(selector)}' selects none of the {len(desired.labels)} "
                            f"ConfigSet and Service documents (labels in the manifests: {shown or 'none'})")
    declared = frozenset(desired.keys) | frozenset(i.key for i in desired.live)
    return dataclasses.replace(
        desired,
        keys={k: d for k, d in desired.keys.items() if d.document in chosen},
        live=tuple(i for i in desired.live if i.document in chosen),
        selection=Selection(selector, chosen, declared, len(desired.labels)),
    )
