"""The value rules: how a node of a manifest becomes the exact bytes stored in etcd.

- A scalar is written as its text in the file (plain scalars: the source text, so ``no``, ``on``,
  ``1.10``, ``0755``, ``1e3``, ``~`` arrive as written; an empty value is the empty string; quoted and
  block scalars: their string content).
- A mapping or list is compact JSON, keys in file order, with YAML 1.2 core typing inside it:
  ``true``/``false`` -> booleans, ``null``/``~``/empty -> null, numbers keep their written form when
  it is valid JSON (``1.10``, ``1e3``) and are normalized otherwise (``+5``, ``0o17``, ``0x1F``,
  ``.5``, ``0755``); ``.inf``/``.nan`` are an error; anything else (``no``, ``on``) is a string.
- The long form ``{value|fromFile|fromEnv: ..., secret, policy, prune}`` carries per-key options.

No message raised here ever quotes a value's text: the value may be a secret.

(Over 350 lines: the typing rules and the fromFile/fromEnv source policy are one contract, "which
bytes reach etcd", pinned together by the value tests and their mutants.)
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # C-accelerated; ensure_ascii=False
from typing import Any

from etcdsync.core.model import Policy

from .schema import OPTION_NAMES as _OPTION_NAMES
from .yamlnodes import CORE_TAG_PREFIX, MAP, SCALAR, Node, node_error, shown

OPTION_NAMES = frozenset(_OPTION_NAMES)
SOURCE_NAMES = ("value", "fromFile", "fromEnv")
POLICIES = tuple(p.value for p in Policy)

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_INT_DEC = re.compile(r"[-+]?[0-9]+")
_INT_OCT = re.compile(r"0o[0-7]+")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"([-+]?)(\.[0-9]+|[0-9]+(?:\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")

_T_STR = CORE_TAG_PREFIX + "str"
_T_INT = CORE_TAG_PREFIX + "int"
_T_FLOAT = CORE_TAG_PREFIX + "float"
_T_BOOL = CORE_TAG_PREFIX + "bool"
_T_NULL = CORE_TAG_PREFIX + "null"

# max bytes read through fromFile (etcd's request limit is far below; the loader reports the size)
MAX_FROM_FILE_BYTES = 2 * 1024 * 1024


# ------------------------------------------------------------------------------------------------
# YAML 1.2 core typing of one scalar

def resolve_scalar(node: Node, file: str | None) -> tuple[str, Any]:
    """(type, text) of a scalar: type in null|bool|int|float|str; text is the scalar's text."""
    text = node.value or ""
    tag = node.tag
    if tag is None:
        if not node.plain:
            return "str", text
        if text in _NULL:
            return "null", text
        if text in _TRUE or text in _FALSE:
            return "bool", text
        if _INT_DEC.fullmatch(text) or _INT_OCT.fullmatch(text) or _INT_HEX.fullmatch(text):
            return "int", text
        if _FLOAT.fullmatch(text) or _INF.fullmatch(text) or _NAN.fullmatch(text):
            return "float", text
        return "str", text
    if tag == _T_STR:
        return "str", text
    if tag == _T_NULL:
        if text in _NULL:
            return "null", text
        raise node_error("value tagged '!!null' is not null", file, node)
    if tag == _T_BOOL:
        if text in _TRUE or text in _FALSE:
            return "bool", text
        raise node_error("value tagged '!!bool' is not true or false", file, node)
    if tag == _T_INT:
        if _INT_DEC.fullmatch(text) or _INT_OCT.fullmatch(text) or _INT_HEX.fullmatch(text):
            return "int", text
        raise node_error("value tagged '!!int' is not an integer", file, node)
    if tag == _T_FLOAT:
        if _INT_DEC.fullmatch(text) or _FLOAT.fullmatch(text) or _INF.fullmatch(text) or _NAN.fullmatch(text):
            return "float", text
        if _INT_OCT.fullmatch(text) or _INT_HEX.fullmatch(text):
            return "int", text
        raise node_error("value tagged '!!float' is not a number", file, node)
    raise node_error("unsupported tag", file, node)  # pragma: no cover - the builder rejects other tags


def _int_value(text: str) -> int:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _float_value(text: str) -> float:
    if _INF.fullmatch(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.fullmatch(text):
        return float("nan")
    return float(text)


def scalar_to_python(node: Node, file: str | None) -> Any:
    kind, text = resolve_scalar(node, file)
    try:
        if kind == "str":
            return text
        if kind == "null":
            return None
        if kind == "bool":
            return text in _TRUE
        if kind == "int":
            return _int_value(text)
        return _float_value(text)
    except ValueError:  # e.g. int() over Python's digit limit
        raise node_error("number is too large", file, node) from None


def to_python(node: Node, file: str | None, skip: Any = None) -> Any:
    """Plain Python value of a node with YAML 1.2 core typing (mapping keys are their text).

    ``skip(path) -> replacement | None`` lets the caller substitute a subtree (used to keep the
    potentially huge ``spec.data`` out of schema validation). Depth is bounded by the builder.
    """
    def conv(n: Node, path: tuple[Any, ...]) -> Any:
        if skip is not None and path:
            repl = skip(path, n)
            if repl is not None:
                return repl
        if n.kind == SCALAR:
            return scalar_to_python(n, file)
        if n.kind == MAP:
            return {(k.value or ""): conv(v, path + (k.value or "",)) for k, v in n.items}
        return [conv(v, path + (i,)) for i, v in enumerate(n.items)]

    return conv(node, ())


# ------------------------------------------------------------------------------------------------
# JSON

def _json_number(kind: str, text: str, node: Node, file: str | None) -> str:
    if _JSON_NUMBER.fullmatch(text):
        return text
    if _INF.fullmatch(text) or _NAN.fullmatch(text):
        raise node_error("infinity and NaN are not representable in JSON (quote the value to store a string)", file, node)
    try:
        if _INT_OCT.fullmatch(text) or _INT_HEX.fullmatch(text):
            return str(_int_value(text))
    except ValueError:
        raise node_error("number is too large", file, node) from None
    m = _FLOAT.fullmatch(text) if not _INT_DEC.fullmatch(text) else re.fullmatch(r"([-+]?)([0-9]+)()", text)
    if m is None:  # pragma: no cover - resolve_scalar only returns number kinds for these forms
        raise node_error("invalid number", file, node)
    sign, mantissa, exponent = m.group(1), m.group(2), m.group(3) or ""
    sign = "-" if sign == "-" else ""
    if "." in mantissa:
        whole, frac = mantissa.split(".", 1)
        whole = whole.lstrip("0") or "0"
        frac = frac or "0"
        mantissa = f"{whole}.{frac}"
    else:
        mantissa = mantissa.lstrip("0") or "0"
    return f"{sign}{mantissa}{exponent}"


# first characters a plain scalar needs to be anything but a string under the core schema
_MAYBE_TYPED = frozenset("0123456789+-.~nNtTfF")


def _json_scalar(node: Node, file: str | None) -> str:
    text = node.value or ""
    if node.tag is None and (not node.plain or (text and text[0] not in _MAYBE_TYPED)):
        return _json_string(text)  # fast path: certainly a string
    kind, text = resolve_scalar(node, file)
    if kind == "str":
        return _json_string(text)
    if kind == "null":
        return "null"
    if kind == "bool":
        return "true" if text in _TRUE else "false"
    return _json_number(kind, text, node, file)


def to_json(node: Node, file: str | None) -> str:
    """Compact JSON text of a node (1.2 core typing, keys in file order, numbers as written)."""
    out: list[str] = []
    append = out.append

    def emit(n: Node) -> None:
        if n.kind == SCALAR:
            append(_json_scalar(n, file))
        elif n.kind == MAP:
            append("{")
            first = True
            for k, v in n.items:
                if not first:
                    append(",")
                first = False
                append(_json_string(k.value or ""))
                append(":")
                emit(v)
            append("}")
        else:
            append("[")
            first = True
            for v in n.items:
                if not first:
                    append(",")
                first = False
                emit(v)
            append("]")

    emit(node)
    return "".join(out)


def encode_text(text: str, node: Node, file: str | None) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        raise node_error("value is not valid Unicode (lone surrogate escape)", file, node) from None


def node_value(node: Node, file: str | None) -> bytes:
    """Bytes of a value node: a scalar's text, or compact JSON for a mapping or list."""
    if node.kind == SCALAR:
        return encode_text(node.value or "", node, file)
    return encode_text(to_json(node, file), node, file)


# ------------------------------------------------------------------------------------------------
# data entries and the long form

@dataclass(slots=True)
class Entry:
    """One `data` entry before its source is read (fromFile/fromEnv are resolved only for the
    documents that survive overlays)."""

    rel_key: str
    key_node: Node
    value_node: Node
    value: bytes | None
    from_file: str | None = None
    from_env: str | None = None
    secret: bool = False
    policy: Policy = Policy.ENFORCE
    prune: bool = True


def is_long_form(node: Node) -> bool:
    return node.kind == MAP and bool(node.items) and all((k.value or "") in OPTION_NAMES for k, _ in node.items)


def _bool_option(name: str, node: Node, file: str | None) -> bool:
    if node.kind == SCALAR:
        kind, text = resolve_scalar(node, file)
        if kind == "bool":
            return text in _TRUE
    raise node_error(f"option '{name}' must be true or false", file, node)


def _source_text(name: str, node: Node, file: str | None) -> str:
    if node.kind != SCALAR or not (node.value or ""):
        raise node_error(f"option '{name}' must be a non-empty string", file, node)
    return node.value or ""


# a mapping holding one of these is meant as the long form, never as a JSON value
LONG_FORM_MARKERS = frozenset({"secret", "fromFile", "fromEnv"})


def _check_not_mistyped_long_form(rel_key: str, value_node: Node, file: str | None) -> None:
    """A mapping with secret/fromFile/fromEnv among its keys must be the long form: a typo such as
    ``{valeu: X, secret: true}`` would otherwise store (and print) the secret as JSON."""
    if value_node.kind != MAP or not any((k.value or "") in LONG_FORM_MARKERS for k, _ in value_node.items):
        return
    for k, _ in value_node.items:
        name = k.value or ""
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1, cutoff=0.5) or \
                difflib.get_close_matches(name.lower(), [o.lower() for o in _OPTION_NAMES], n=1, cutoff=0.5)
            hint = ""
            if close:
                hint = f" (did you mean '{next(o for o in _OPTION_NAMES if o.lower() == close[0].lower())}'?)"
            raise node_error(
                f"key '{shown(rel_key)}': '{shown(name, 40)}' is not an option of the long form{hint}; a mapping with "
                f"secret, fromFile or fromEnv may hold only {', '.join(_OPTION_NAMES)} "
                "(to store a JSON object, write {value: {...}})",
                file, k,
            )


def compile_entry(key_node: Node, value_node: Node, file: str | None, policy: Policy, prune: bool) -> Entry:
    rel_key = key_node.value or ""
    if not is_long_form(value_node):
        _check_not_mistyped_long_form(rel_key, value_node, file)
        return Entry(rel_key, key_node, value_node, node_value(value_node, file), policy=policy, prune=prune)
    opts = {(k.value or ""): v for k, v in value_node.items}
    sources = [s for s in SOURCE_NAMES if s in opts]
    if len(sources) != 1:
        what = "none of" if not sources else "more than one of"
        raise node_error(
            f"key '{shown(rel_key)}' looks like the long form (only option keys) but has {what} value, fromFile, fromEnv; "
            "to store such a mapping as JSON, write {value: {...}}",
            file, value_node,
        )
    entry = Entry(rel_key, key_node, value_node, None, policy=policy, prune=prune)
    if "secret" in opts:
        entry.secret = _bool_option("secret", opts["secret"], file)
    if "prune" in opts:
        entry.prune = _bool_option("prune", opts["prune"], file)
    if "policy" in opts:
        pn = opts["policy"]
        text = pn.value if pn.kind == SCALAR else None
        if text not in POLICIES:
            shown_ = f" '{shown(text, 40)}'" if text is not None else ""
            raise node_error(f"invalid policy{shown_}: expected one of {', '.join(POLICIES)}", file, pn)
        entry.policy = Policy(text)
    src = sources[0]
    if src == "value":
        entry.value = node_value(opts["value"], file)
    elif src == "fromFile":
        entry.from_file = _source_text("fromFile", opts["fromFile"], file)
    else:
        name = _source_text("fromEnv", opts["fromEnv"], file)
        if "=" in name:
            raise node_error("option 'fromEnv' must be an environment variable name", file, opts["fromEnv"])
        entry.from_env = name
    return entry


# never read through fromFile, whatever --file-root says: kernel interfaces (/proc/self/environ holds
# etcdsync's own credentials) and devices (a read that never ends)
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
# never read through fromEnv: etcdsync's own settings and credentials, and etcdctl's
FORBIDDEN_ENV = ("ETCDSYNC_", "ETCDCTL_")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What fromFile and fromEnv may read: files inside ``roots`` (resolved directories, the manifest
    root first), variables matching ``env_allow`` (when given) and never etcdsync's own."""

    roots: tuple[str, ...]
    env_allow: tuple[str, ...] = ()
    read: list[str] = field(default_factory=list)   # resolved paths of the files read, in order

    def check_file(self, path: str, shown_path: str, where: str, node: Node, file: str | None) -> str:
        real = os.path.realpath(path)
        if any(_inside(real, r) for r in FORBIDDEN_ROOTS):
            raise node_error(f"{where}: '{shown_path}' is under /proc, /sys or /dev, which are never read", file, node)
        if not any(_inside(real, r) for r in self.roots):
            root = self.roots[0] if self.roots else "?"
            raise node_error(f"{where}: '{shown_path}' resolves to {shown(real)}, outside the manifest root {shown(root)}"
                       " (allow a directory with --file-root DIR)", file, node)
        return real

    def check_env(self, name: str, where: str, node: Node, file: str | None) -> None:
        if name.upper().startswith(FORBIDDEN_ENV):
            raise node_error(f"{where}: environment variable {shown(name)} is one of etcdsync's own settings "
                       f"({', '.join(p + '*' for p in FORBIDDEN_ENV)}), which are never read", file, node)
        if self.env_allow and not any(fnmatch.fnmatchcase(name, g) for g in self.env_allow):
            raise node_error(f"{where}: environment variable {shown(name)} is not allowed by --env-allow "
                       f"({' '.join(shown(g, 40) for g in self.env_allow)})", file, node)


def resolve_entry(entry: Entry, file: str | None, environ: Mapping[str, str], policy: SourcePolicy) -> bytes:
    """The value bytes of an entry, reading fromFile (relative to ``file``'s directory, contained by
    ``policy``) or fromEnv (filtered by ``policy``)."""
    if entry.value is not None:
        return entry.value
    if entry.from_file is not None:
        node = entry.value_node.get("fromFile") or entry.value_node
        where = f"fromFile of key '{shown(entry.rel_key)}'"
        base = os.path.dirname(file) if file else "."
        path = os.path.join(base, entry.from_file)
        try:
            real = policy.check_file(path, shown(entry.from_file), where, node, file)
            # open what was checked (the resolved path), not a name whose links may change meanwhile
            if not stat.S_ISREG(os.stat(real).st_mode):  # a FIFO or device would block or never end
                raise node_error(f"{where}: '{shown(entry.from_file)}' is not a regular file "
                           "(a pipe, device or directory)", file, node)
            with open(real, "rb") as f:
                data = f.read(MAX_FROM_FILE_BYTES + 1)
            policy.read.append(real)
        except OSError as e:
            raise node_error(
                f"{where}: cannot read '{shown(entry.from_file)}' ({e.strerror or type(e).__name__})",
                file, node,
            ) from None
        except ValueError:  # embedded NUL in the path
            raise node_error(f"{where}: invalid path", file, node) from None
        if len(data) > MAX_FROM_FILE_BYTES:
            raise node_error(
                f"{where}: '{shown(entry.from_file)}' is larger than etcd's request limit", file, node
            )
        return data
    assert entry.from_env is not None
    node = entry.value_node.get("fromEnv") or entry.value_node
    where = f"fromEnv of key '{shown(entry.rel_key)}'"
    policy.check_env(entry.from_env, where, node, file)
    value = environ.get(entry.from_env)
    if value is None:
        raise node_error(f"{where}: environment variable {shown(entry.from_env)} is not set", file, node)
    if value == "" and entry.secret:
        # CI systems turn a missing secret into an empty variable: never write an empty secret
        raise node_error(f"{where}: environment variable {shown(entry.from_env)} is empty "
                   "(a secret must not be empty)", file, node)
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")
