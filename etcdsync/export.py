"""An existing etcd tree -> ConfigSet manifest YAML (pure), written so that loading it gives back the
exact value bytes: plain scalars where the text is unambiguous, JSON-style double quotes otherwise.
"""

from __future__ import annotations

import json
import re

_PLAIN = re.compile(r"^[A-Za-z0-9_./+=@$^()\[\]{}<>,;~-]?[A-Za-z0-9_./+=@$^()<>;~ -]*$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_NAME = re.compile(r"[^a-z0-9-]+")


def _scalar(text: str) -> str:
    """YAML scalar whose loaded text (etcdsync's value rule) is exactly `text`."""
    if (
        text
        and _PLAIN.match(text)
        and text == text.strip()
        and not text.startswith(("-", "?", "[", "{", ",", "&", "*", "!", "|", ">", "%", "@", "~"))
        and ": " not in text
        and " #" not in text
    ):
        return text
    return json.dumps(text, ensure_ascii=False)


def _key(text: str) -> str:
    return text if _PLAIN_KEY.match(text) else json.dumps(text, ensure_ascii=False)


def default_name(prefix: str) -> str:
    name = _NAME.sub("-", prefix.lower()).strip("-")
    return name or "root"


def export_prefix(
    prefix: str,
    items: list[tuple[str, bytes, int]],
    *,
    name: str | None = None,
    policy: str | None = None,
) -> tuple[str, list[str]]:
    """(YAML text, warnings) for (key, value, lease) items under `prefix`."""
    warnings: list[str] = []
    lines = [
        "apiVersion: etcdsync/v1",
        "kind: ConfigSet",
        "metadata:",
        f"  name: {_scalar(name or default_name(prefix))}",
        "spec:",
        f"  prefix: {_scalar(prefix)}",
    ]
    if policy:
        lines.append(f"  policy: {policy}")
    data: list[str] = []
    for key, value, lease in sorted(items):
        rel = key[len(prefix):]
        if lease:
            warnings.append(f"{key}: held by a lease (a live registration), not exported")
            continue
        segments = rel.split("/")
        if not rel or rel.startswith("/") or ".." in segments or "." in segments or any(ord(ch) < 32 for ch in rel):
            warnings.append(f"{key}: relative key {rel!r} cannot be declared in a manifest, not exported")
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            warnings.append(f"{key}: value is not UTF-8 text, not exported (use fromFile for binary values)")
            continue
        data.append(f"    {_key(rel)}: {_scalar(text)}")
    lines.append("  data:" if data else "  data: {}")
    lines.extend(data)
    return "\n".join(lines) + "\n", warnings
