"""YAML text -> a tree of positioned nodes, built iteratively from PyYAML's event stream.

We never let PyYAML construct Python objects: its composer and constructor recurse (a deeply nested
document raises RecursionError), keep the last of two duplicate keys, expand aliases without bound and
know python tags. Instead we read the parser's events (libyaml's C parser when available; both parsers
are state machines, so nesting depth costs them nothing) and build our own nodes with an explicit stack:

- every node keeps its kind, scalar text, style, explicit tag and 1-based start line/column;
- duplicate mapping keys, non-scalar keys and merge keys (``<<``) are rejected;
- nesting is bounded (``MAX_DEPTH``), aliases re-use the anchored node (the tree is a DAG) and the
  number of nodes reachable through aliases is bounded (``MAX_ALIAS_NODES`` per document, a node
  counting once more per KiB of its text), recursive aliases are rejected;
- only the YAML core tags (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``, ``!!map``,
  ``!!seq``) are accepted; ``!!python/...``, ``!foo`` and friends are rejected with their position.

Reading bytes (size bound, strict UTF-8, BOM, control characters) also lives here, so that every
problem with a file's text is reported with its line and column. (That is why it runs over 350
lines: one iterative builder, with its compact form of a manifest's ``spec.data`` for large
ConfigSets, and the byte checks that feed it.)
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from typing import Any

import yaml

from etcdsync.core.model import Source
from etcdsync.errors import ManifestError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000

SCALAR = "scalar"
MAP = "map"
SEQ = "seq"

CORE_TAG_PREFIX = "tag:yaml.org,2002:"
SCALAR_TAGS = frozenset(CORE_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null"))
MAP_TAG = CORE_TAG_PREFIX + "map"
SEQ_TAG = CORE_TAG_PREFIX + "seq"

_Loader: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

# Characters YAML 1.2 allows in a stream (c-printable) -- anything else is reported by us, with an
# exact position, rather than by the parser (libyaml reports a byte offset, not a line/column).
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PRINTABLE_ASCII = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F)])   # the ASCII characters it allows


# control characters, lone surrogates, and characters that make text display as something else
# (bidirectional controls U+200E/F, U+202A-E, U+2066-9; zero-width U+200B-D, U+2060-4, U+FEFF)
SPOOFING = "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_UNPRINTABLE_IN_MESSAGE = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{SPOOFING}]")


def node_error(message: str, file: str | None, node: Node | Source) -> ManifestError:
    """A ManifestError at `node`'s position in `file` (a node, or a Source recorded from one)."""
    return ManifestError(message, file, node.line, node.column)


def shown(text: str, limit: int = 200) -> str:
    """``text`` made safe for a one-line message: control characters and lone surrogates escaped,
    long text shortened."""
    if _UNPRINTABLE_IN_MESSAGE.search(text):
        text = _UNPRINTABLE_IN_MESSAGE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


_NO_ITEMS: list[Any] = []


class Node:
    """One YAML node. ``items`` is a list of (key, value) node pairs for a map, of nodes for a seq."""

    __slots__ = ("kind", "value", "plain", "tag", "line", "column", "items", "size", "open")

    def __init__(self, kind: str, value: str | None, plain: bool, tag: str | None, line: int, column: int) -> None:
        self.kind = kind
        self.value = value          # scalar text (event.value), None for collections
        self.plain = plain          # True for a plain (unquoted, non-block) scalar
        self.tag = tag              # explicit core tag, or None
        self.line = line            # 1-based
        self.column = column        # 1-based
        self.items: list[Any] = [] if kind != SCALAR else _NO_ITEMS  # scalars share one (never appended to)
        # weight of this subtree, aliases expanded: one per node, plus one per KiB of scalar text (so
        # many aliases of one large scalar are bounded like many aliases of a large subtree)
        self.size = 1 + (len(value) >> 10 if value else 0)
        self.open = kind != SCALAR  # collection still being built (an alias to it is recursive)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        if self.kind == SCALAR:
            return f"Node(scalar {self.value!r} @{self.line}:{self.column})"
        return f"Node({self.kind} n={len(self.items)} @{self.line}:{self.column})"

    # -- helpers for the loader -------------------------------------------------------------
    def get(self, key: str) -> Node | None:
        """The value node for ``key`` in a map node (by key text), else None."""
        if self.kind == MAP:
            for k, v in self.items:
                if k.value == key:
                    return v  # type: ignore[no-any-return]
        return None

    def key_node(self, key: str) -> Node | None:
        if self.kind == MAP:
            for k, _ in self.items:
                if k.value == key:
                    return k  # type: ignore[no-any-return]
        return None

    @property
    def is_null(self) -> bool:
        """A plain ``null``/``~``/empty scalar (or an explicit ``!!null``)."""
        if self.kind != SCALAR:
            return False
        if self.tag is not None:
            return self.tag == CORE_TAG_PREFIX + "null"
        return self.plain and self.value in ("", "~", "null", "Null", "NULL")


class Document:
    """One non-empty document of a file."""

    __slots__ = ("root", "file", "index")

    def __init__(self, root: Node, file: str, index: int) -> None:
        self.root = root
        self.file = file
        self.index = index      # 0-based position of the document in its file


# ------------------------------------------------------------------------------------------------
# bytes -> text

def _position_of_offset(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return line, column


def _position_of_index(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def decode(data: bytes, file: str) -> str:
    """Strict UTF-8 (an optional BOM is stripped); control characters are rejected with a position."""
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(f"file is too large ({len(data)} bytes, limit {MAX_FILE_BYTES})", file)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError("file is not UTF-8 (it starts with a UTF-16 byte order mark); save it as UTF-8", file, 1, 1)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = _position_of_offset(data, e.start)
        raise ManifestError(f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})", file, line, column) from None
    # an ASCII file (the usual) is checked by deleting its allowed bytes in C: anything left over is a
    # control character, which the expression then finds with its position (it costs ~50 instructions
    # a character: a tenth of loading a large manifest)
    m = _NOT_PRINTABLE.search(text) if not data.isascii() or data.translate(None, _PRINTABLE_ASCII) else None
    if m is not None:
        line, column = _position_of_index(text, m.start())
        ch = ord(m.group())
        hint = " (is the file UTF-16? save it as UTF-8)" if ch == 0 else ""
        raise ManifestError(f"control character U+{ch:04X} is not allowed in YAML{hint}", file, line, column)
    return text


def read_file(path: str) -> str:
    """Read and decode a manifest file; every failure is a ManifestError naming it."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO given with -f would block forever
            raise ManifestError("not a regular file (a pipe, device or directory)", path)
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ManifestError(f"cannot read manifest file: {e.strerror or type(e).__name__}", path) from None
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(f"file is too large (over {MAX_FILE_BYTES} bytes)", path)
    return decode(data, path)


# ------------------------------------------------------------------------------------------------
# text -> documents

def _mark(event: Any) -> tuple[int, int]:
    m = event.start_mark
    return m.line + 1, m.column + 1


def _check_tag(tag: str | None, kind: str, event: Any, file: str) -> str | None:
    if tag is None:
        return None
    ok = (tag in SCALAR_TAGS) if kind == SCALAR else (tag == (MAP_TAG if kind == MAP else SEQ_TAG))
    if ok:
        return tag
    line, column = _mark(event)
    tag_text = shown("!!" + tag[len(CORE_TAG_PREFIX):] if tag.startswith(CORE_TAG_PREFIX) else tag, 100)
    if tag in SCALAR_TAGS or tag in (MAP_TAG, SEQ_TAG):
        what = {SCALAR: "a scalar", MAP: "a mapping", SEQ: "a list"}[kind]
        raise ManifestError(f"tag '{tag_text}' cannot be used on {what}", file, line, column)
    raise ManifestError(
        f"tag '{tag_text}' is not allowed (only the YAML core tags !!str, !!int, !!float, !!bool, !!null, !!map, !!seq)",
        file, line, column,
    )


def _yaml_error(e: yaml.YAMLError, file: str) -> ManifestError:
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    context = getattr(e, "context", None)
    if problem is None:
        problem = getattr(e, "reason", None) or "cannot parse"
    msg = f"invalid YAML: {problem}"
    if context:
        msg += f" ({context})"
    if mark is not None:
        return ManifestError(msg, file, mark.line + 1, mark.column + 1)
    return ManifestError(msg, file)


class _Frame:
    __slots__ = ("node", "key", "seen", "compact")

    def __init__(self, node: Node, compact: bool = False) -> None:
        self.node = node
        # pending key of a map: a Node, or in a compact map (text, line, column, plain) until its
        # value turns out to need a Node
        self.key: Node | tuple[str, int, int, bool] | None = None
        self.seen: dict[str, int] | None = {} if node.kind == MAP else None   # key text -> its line
        self.compact = compact


def _key_node(key: Node | tuple[str, int, int, bool]) -> Node:
    if isinstance(key, Node):
        return key
    text, line, column, plain = key
    return Node(SCALAR, text, plain, None, line, column)


def iter_documents(text: str, file: str, *, compact_data: bool = False) -> Iterator[Document]:
    """Yield the non-empty documents of ``text`` (documents holding only a null are skipped).

    With ``compact_data`` (the manifest loader), the items of each document's ``spec.data`` mapping
    (unless it is anchored: an alias could then reach it) are built without a Node per scalar where
    that loses nothing: a pair whose value is an untagged, unanchored, ASCII scalar is the tuple
    ``(key text, key line, key column, value text)``; every other pair is ``(key Node, value Node)``
    as usual. (A 100,000-key ConfigSet is 200,000 scalars: their Nodes were a third of the load time.)
    The checks are the same for both forms: duplicate and merge keys, the alias bound (a compact pair
    weighs what its two Nodes would), positions."""
    try:
        yield from _iter_documents(text, file, compact_data)
    except ManifestError:
        raise
    except yaml.YAMLError as e:
        raise _yaml_error(e, file) from None
    except RecursionError:
        raise ManifestError(f"nesting is too deep (limit {MAX_DEPTH} levels)", file) from None
    except MemoryError:
        raise ManifestError("file is too large to parse", file) from None


def _iter_documents(text: str, file: str, compact_data: bool) -> Iterator[Document]:
    stack: list[_Frame] = []
    anchors: dict[str, Node] = {}
    expanded = 0
    root: Node | None = None
    doc_index = -1

    def check_key(text_: str, plain: bool, tag: str | None, seen: dict[str, int], line: int, column: int) -> None:
        if text_ == "<<" and plain and tag is None:
            raise ManifestError("merge keys ('<<') are not supported: write the values explicitly", file, line, column)
        first = seen.get(text_)
        if first is not None:
            raise ManifestError(f"duplicate key '{shown(text_)}' (first defined at line {first})", file, line, column)
        seen[text_] = line

    def attach(node: Node, event: Any) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        frame = stack[-1]
        parent = frame.node
        parent.size += node.size
        if parent.kind == SEQ:
            parent.items.append(node)
            return
        if frame.key is None:
            # a key
            if node.kind != SCALAR:
                line, column = _mark(event)
                raise ManifestError("mapping keys must be scalars (strings)", file, line, column)
            assert frame.seen is not None
            check_key(node.value or "", node.plain, node.tag, frame.seen, node.line, node.column)
            frame.key = node
        else:
            parent.items.append((_key_node(frame.key), node))
            frame.key = None

    scalar_event = yaml.ScalarEvent
    # the parser's own get_event until it returns None (what yaml.parse does, without a generator
    # frame resumed per event)
    parser = _Loader(text)
    try:
        for event in iter(parser.get_event, None):
            cls = type(event)
            if cls is scalar_event:
                # the hot path (most events are scalars): attach() inlined
                m = event.start_mark
                tag = event.tag
                value = event.value
                if stack:
                    frame = stack[-1]
                    if frame.compact and tag is None and event.anchor is None:
                        # spec.data of a manifest: no Node for a plain pair (see iter_documents)
                        parent = frame.node
                        key = frame.key
                        if key is None:
                            seen = frame.seen
                            assert seen is not None
                            line = m.line + 1
                            if value in seen or value == "<<":
                                check_key(value, not event.style, None, seen, line, m.column + 1)
                            seen[value] = line
                            frame.key = (value, line, m.column + 1, not event.style)
                            parent.size += 1 + (len(value) >> 10)
                            continue
                        if value.isascii() and type(key) is tuple:
                            parent.items.append((key[0], key[1], key[2], value))
                            parent.size += 1 + (len(value) >> 10)
                            frame.key = None
                            continue
                if tag is not None:
                    # a plain scalar's implicit tag is never set; "!" (non-specific) is an explicit tag too
                    tag = _check_tag(tag, SCALAR, event, file)
                node = Node(SCALAR, value, not event.style, tag, m.line + 1, m.column + 1)
                if event.anchor is not None:
                    anchors[event.anchor] = node
                if not stack:
                    root = node
                    continue
                frame = stack[-1]
                parent = frame.node
                parent.size += node.size
                seen = frame.seen
                if seen is None:
                    parent.items.append(node)
                elif frame.key is None:
                    check_key(value or "", node.plain, tag, seen, node.line, node.column)
                    frame.key = node
                else:
                    parent.items.append((_key_node(frame.key), node))
                    frame.key = None
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                kind = MAP if cls is yaml.MappingStartEvent else SEQ
                line, column = _mark(event)
                if stack and stack[-1].node.kind == MAP and stack[-1].key is None:
                    raise ManifestError("mapping keys must be scalars (strings)", file, line, column)
                if len(stack) >= MAX_DEPTH:
                    raise ManifestError(f"nesting is too deep (limit {MAX_DEPTH} levels)", file, line, column)
                node = Node(kind, None, False, _check_tag(event.tag, kind, event, file), line, column)
                if event.anchor is not None:
                    anchors[event.anchor] = node
                # spec.data: a mapping that is the value of `data` in the value of `spec` of the root
                compact = (compact_data and kind == MAP and event.anchor is None and len(stack) == 2
                           and stack[0].node.kind == MAP and stack[1].node.kind == MAP
                           and _key_text(stack[0].key) == "spec" and _key_text(stack[1].key) == "data")
                stack.append(_Frame(node, compact))
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                frame = stack.pop()
                frame.node.open = False
                attach(frame.node, event)
            elif cls is yaml.AliasEvent:
                line, column = _mark(event)
                target = anchors.get(event.anchor)
                if target is None:
                    raise ManifestError(f"undefined alias '*{shown(event.anchor, 100)}'", file, line, column)
                if target.open:
                    raise ManifestError(f"recursive alias '*{shown(event.anchor, 100)}' (it refers to a node that contains it)", file, line, column)
                expanded += target.size
                if expanded > MAX_ALIAS_NODES:
                    raise ManifestError(
                        f"aliases expand to too many nodes (over {MAX_ALIAS_NODES} in this document)", file, line, column
                    )
                attach(target, event)
            elif cls is yaml.DocumentStartEvent:
                doc_index += 1
                root = None
                anchors = {}
                expanded = 0
            elif cls is yaml.DocumentEndEvent:
                if root is not None and not root.is_null:
                    yield Document(root, file, doc_index)
                root = None
            # StreamStart/StreamEnd: nothing to do
    finally:
        parser.dispose()


def _key_text(key: Node | tuple[str, int, int, bool] | None) -> str | None:
    if key is None:
        return None
    return key.value if isinstance(key, Node) else key[0]
