"""An existing etcd tree -> ConfigSet manifest YAML (pure), written so that loading it gives back the
exact value bytes: plain scalars where the text is unambiguous, JSON-style double quotes otherwise.
A key an inventory marks secret is never exported with its value: it becomes a fromEnv placeholder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_PLAIN = re.compile(r"^[A-Za-z0-9_./+=@$^()\[\]{}<>,;~-]?[A-Za-z0-9_./+=@$^()<>;~ -]*$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_NAME = re.compile(r"[^a-z0-9-]+")


# printed escaped inside double quotes (valid YAML escapes): they would display as something else
_SPOOF = re.compile("[\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_ENV_UNSAFE = re.compile(r"[^A-Z0-9]+")


def _quoted(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)  # JSON escapes C0 controls; YAML reads JSON strings
    return _SPOOF.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


def env_name(rel: str, taken: set[str]) -> str:
    """An environment variable name for a secret's placeholder: the relative key in upper case, other
    characters as '_', starting with a letter, never etcdsync's own (ETCDSYNC_*, ETCDCTL_*), unique."""
    base = _ENV_UNSAFE.sub("_", rel.upper()).strip("_") or "SECRET"
    if not base[0].isalpha() or base.startswith(("ETCDSYNC_", "ETCDCTL_")):
        base = f"SECRET_{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


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
    return _quoted(text)


def _key(text: str) -> str:
    return text if _PLAIN_KEY.match(text) else _quoted(text)


def default_name(prefix: str) -> str:
    name = _NAME.sub("-", prefix.lower()).strip("-")
    return name or "root"


def export_prefix(
    prefix: str,
    items: list[tuple[str, bytes, int]],
    *,
    name: str | None = None,
    policy: str | None = None,
    secret: Mapping[str, str] | None = None,
) -> tuple[str, list[str]]:
    """(YAML text, warnings) for (key, value, lease) items under `prefix`.

    ``secret`` maps keys an inventory marks secret to the apply set that owns them: their values are
    never written; each becomes a ``{fromEnv: NAME, secret: true}`` placeholder, with a warning."""
    secret = secret or {}
    env_names: set[str] = set()
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
        if key in secret:
            var = env_name(rel, env_names)
            placeholder = f"{{fromEnv: {var}, secret: true}}"
            warnings.append(f"{key}: marked secret in the inventory (apply set {secret[key]!r}): exported as "
                            f"{placeholder}, not its value; set {var} when applying")
            data.append(f"    {_key(rel)}: {placeholder}")
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
