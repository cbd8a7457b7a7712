"""Manifest files -> documents -> DesiredState.

Pipeline: ``collect_files`` (one layer per ``-f`` path) -> read + parse each file into positioned node
trees (``yamlnodes``) -> per document: apiVersion/kind, schema validation (``schema``), and compilation
into keys (``values``; fromFile/fromEnv are *not* read yet) -> overlays (a later layer's document with
the same kind and name merges into the earlier one: data key by key, instances by id, other spec fields
when given; ``spec.overlay: replace`` replaces it whole) -> per merged document: keys under its prefix,
instances under its prefix and format -> read the fromFile/fromEnv sources of the keys that survived,
check sizes, reject an etcd key declared twice -> DesiredState.

Every failure is a ManifestError with file, line and column; nothing else escapes ``load_manifests``.

(Over 350 lines: the stages of the pipeline share one context of files, layers and positions; the
YAML reader, the schema and the value rules already live in their own modules.)
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdsync.core.instances import encode_instance, grpc_addr, instance_key
from etcdsync.core.model import (
    LINE_BITS,
    LINE_MAX,
    DesiredKey,
    DesiredState,
    HealthCheck,
    Policy,
    ServiceDecl,
    ServiceInstance,
    Source,
    compact_source,
)
from etcdsync.errors import ManifestError
from etcdsync.settings import RESERVED_PREFIX, parse_duration, services_prefix

from . import values
from .schema import API_VERSION, KINDS, validate_document
from .yamlnodes import MAP, SCALAR, SEQ, SPOOFING, Document, Node, iter_documents, node_error, read_file
from .yamlnodes import shown as _show

# etcd's default --max-request-bytes (1.5 MiB), minus 1 KiB for the request's own overhead.
MAX_KEY_VALUE_BYTES = 1536 * 1024 - 1024


_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SPOOF_CHARS = re.compile(f"[{SPOOFING}]")
# anything wrong with a relative key: control characters, lone surrogates, bidirectional or zero-width
# characters, a leading '/', '.'/'..' or empty segments
_BAD_KEY = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{SPOOFING}]|^/|(?:^|/)\\.\\.?(?:/|$)|//|/$")


# ------------------------------------------------------------------------------------------------
# files

def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    seen_dirs: set[str] = set()
    todo = [root]
    while todo:
        d = todo.pop()
        try:
            real = os.path.realpath(d)
            if real in seen_dirs:  # a symlink loop
                continue
            seen_dirs.add(real)
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            raise ManifestError(f"cannot read manifest directory: {e.strerror or type(e).__name__}", str(d)) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = entry.is_file()
            except OSError:
                continue
            if is_dir:
                todo.append(Path(entry.path))
            elif entry.name.lower().endswith((".yaml", ".yml")):
                if not is_file and entry.is_symlink() and not os.path.exists(entry.path):
                    # skipping it would silently drop its documents (and prune their keys)
                    raise ManifestError("manifest file is a broken symbolic link", entry.path)
                if is_file:
                    found.append(Path(entry.path))
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def collect_files(paths: Sequence[str | os.PathLike[str]]) -> list[list[Path]]:
    """One list of manifest files per ``-f`` path: the file itself, or the ``*.yaml``/``*.yml`` files
    of a directory, recursively, sorted by relative path (hidden files and directories skipped)."""
    layers: list[list[Path]] = []
    for p in paths:
        path = Path(p)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ManifestError("manifest path not found", os.fspath(p)) from None
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise ManifestError(f"cannot access manifest path {os.fspath(p)}: {reason}", os.fspath(p)) from None
        layers.append(_walk(path) if stat.S_ISDIR(st.st_mode) else [path])
    return layers


# ------------------------------------------------------------------------------------------------
# compiled documents

@dataclass(slots=True)
class _Inst:
    """One entry of a Service's ``instances``, checked but not yet turned into a key (the key and the
    value depend on the document's prefix and format, which a later layer may change)."""

    id: str                          # the id, or host:port when none is given (grpc)
    has_id: bool
    host: str
    port: int
    metadata_json: str | None
    metadata: Any
    ttl: float | None                # the instance's own; None: the document's
    check: HealthCheck | None
    where: str                       # "spec.instances[0]"
    source: Source
    remove: bool = False


@dataclass(slots=True)
class _Doc:
    kind: str
    name: str
    file: str
    source: Source
    spec_at: Source | None = None
    mode: str = "merge"                                                # spec.overlay
    layer_no: int = 0                                                  # 0: the first -f path
    statics: list[DesiredKey] = field(default_factory=list)            # value known
    deferred: list[tuple[DesiredKey, values.Entry]] = field(default_factory=list)  # fromFile/fromEnv
    live: list[ServiceInstance] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    # spec fields as given in this layer (None: not given); after a merge, the effective ones
    prefix: str | None = None
    prefix_at: Source | None = None
    policy: Policy | None = None
    prune: bool | None = None
    fmt: str | None = None
    ttl: float | None = None
    check: HealthCheck | None = None
    # overlays
    key_prefix: str = ""                      # what the keys in statics/deferred start with
    explicit: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # rel key -> own (policy, prune)
    removes: list[tuple[str, Source]] = field(default_factory=list)       # `remove: true` data keys
    instances: list[_Inst] = field(default_factory=list)
    items: dict[str, tuple[DesiredKey, values.Entry | None]] | None = None  # merged data, by rel key
    layers: tuple[Source, ...] = ()           # the documents merged into this one, one per layer
    removed_rel: dict[str, Source] = field(default_factory=dict)          # rel key -> the `remove: true`
    removed_inst: dict[str, tuple[_Inst, Source]] = field(default_factory=dict)
    removed: dict[str, Source] = field(default_factory=dict)              # etcd key -> the `remove: true`

    service: ServiceDecl | None = None
    name_at: Source | None = None             # a Service's metadata.name (the registry lint points there)
    labels: dict[str, str] = field(default_factory=dict)                   # metadata.labels (merged)

    @property
    def ident(self) -> str:
        return f"{self.kind}/{self.name}"


def _src(file: str, node: Node) -> Source:
    return Source(file, node.line, node.column)


def _check_display(text: str, what: str, file: str, node: Node | Source) -> None:
    """Reject text that would display as something else: bidirectional or zero-width characters, and
    text not in Unicode NFC (the NFC and NFD forms of one word would be two keys that look alike)."""
    if text.isascii():
        return
    if _SPOOF_CHARS.search(text):
        raise node_error(f"{what} '{_show(text)}' contains a bidirectional or zero-width character "
                   "(it would display as something else)", file, node)
    if not unicodedata.is_normalized("NFC", text):
        nfc = unicodedata.normalize("NFC", text)

        def points(t: str) -> str:
            return _show(t.encode("ascii", "backslashreplace").decode("ascii"))

        raise node_error(f"{what} '{_show(text)}' ('{points(text)}') is not in Unicode NFC: write it as '{_show(nfc)}' "
                   f"('{points(nfc)}'; two forms of one word would be two different keys)", file, node)


def _check_prefix(prefix: str, what: str, file: str, node: Node | Source, reserved: str) -> None:
    if _BAD_CHARS.search(prefix):
        raise node_error(f"{what} '{_show(prefix)}' contains a control character", file, node)
    _check_display(prefix, what, file, node)
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise node_error(f"{what} '{_show(prefix)}' contains a '.' or '..' path segment", file, node)
    if reserved and prefix.startswith(reserved):
        raise node_error(f"{what} '{_show(prefix)}' is under etcdsync's reserved prefix {reserved}", file, node)


def _check_name(name: str, what: str, file: str, node: Node | Source) -> None:
    if not name:
        raise node_error(f"{what} must not be empty", file, node)
    if _BAD_CHARS.search(name):
        raise node_error(f"{what} '{_show(name)}' contains a control character", file, node)
    _check_display(name, what, file, node)
    if "/" in name:
        raise node_error(f"{what} '{_show(name)}' must not contain '/'", file, node)
    if name == "." or ".." in name:
        raise node_error(f"{what} '{_show(name)}' must not be '.' or contain '..'", file, node)


def _check_full_key(key: str, file: str, node: Node | Source, reserved: str) -> None:
    if reserved and key.startswith(reserved):
        raise node_error(f"key '{_show(key)}' is under etcdsync's reserved prefix {reserved}", file, node)


def _duration(value: Any, where: str, file: str, node: Node) -> float:
    seconds = parse_duration(value)
    if seconds is None:
        raise node_error(f"{where} is not a valid duration: use e.g. 10s, 1m30s, 500ms or a number of seconds (> 0)", file, node)
    return seconds


def _health_check(plain: Mapping[str, Any], where: str, file: str, node: Node) -> HealthCheck:
    kwargs: dict[str, Any] = {}
    for opt in ("interval", "timeout"):
        if opt in plain:
            kwargs[opt] = _duration(plain[opt], f"{where}.{opt}", file, node.get(opt) or node)
    if "failures" in plain:
        kwargs["failures"] = plain["failures"]
    if "http" in plain:
        path = plain["http"]
        if _BAD_CHARS.search(path) or " " in path:
            raise node_error(f"{where}.http must be a URL path without spaces or control characters", file, node.get("http") or node)
        return HealthCheck("http", path, **kwargs)
    return HealthCheck("tcp", None, **kwargs)


def _compile_configset(doc: _Doc, root: Node, spec: Mapping[str, Any], reserved: str) -> None:
    """The document's keys, under its own prefix (or, in an overlay that gives none, relative: the
    merge puts them under the prefix of the earlier layer's document)."""
    file = doc.file
    spec_node = root.get("spec")
    assert spec_node is not None
    doc.spec_at = _src(file, spec_node)
    prefix = ""
    if "prefix" in spec:
        prefix_node = spec_node.get("prefix") or spec_node
        prefix = spec["prefix"]
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise node_error(f"prefix '{_show(prefix)}' must start and end with '/' (e.g. /config/payments/): keys are "
                       "the prefix followed by the relative key", file, prefix_node)
        _check_prefix(prefix, "prefix", file, prefix_node, reserved)
        doc.prefix, doc.prefix_at = prefix, _src(file, prefix_node)
    doc.key_prefix = prefix
    if "policy" in spec:
        doc.policy = Policy(spec["policy"])
    if "prune" in spec:
        doc.prune = bool(spec["prune"])
    policy = Policy.ENFORCE if doc.policy is None else doc.policy
    prune = True if doc.prune is None else doc.prune
    data = spec_node.get("data")
    if data is None or data.kind != MAP:
        return
    ident = doc.ident
    statics = doc.statics
    # The data mapping is consumed: each pair is released once compiled, so that its nodes' memory
    # is reused for the keys being built (the node tree of a large ConfigSet was most of the loader's
    # peak memory, and the daemon's resident size stayed at that peak). Nothing reads the tree after
    # this: the document was validated and its other fields converted before.
    pairs, data.items = data.items, []
    max_quick = MAX_KEY_VALUE_BYTES // 4     # key + value under this: within etcd's limit whatever the bytes
    new = tuple.__new__                      # a NamedTuple built without its Python-level __new__
    for i in range(len(pairs)):          # by index: each pair is dropped from the list as it is read
        pair = pairs[i]
        pairs[i] = None
        if len(pair) == 4:
            # the common pair, compacted by the reader: an untagged ASCII scalar value (the text rule)
            # (no Source per key: the file and the position packed in one int, see model.compact_source)
            rel, line, column, text = pair
            full = _checked_key(prefix, rel, file, line, column, reserved)
            value = text.encode("ascii")
            if len(full) + len(value) > max_quick:
                _check_size(full, value, Source(file, line, column))
            if line <= LINE_MAX:
                statics.append(new(DesiredKey, (full, value, prefix, policy, prune, False, ident, file,
                                                line | column << LINE_BITS)))  # DesiredKey(...)
            else:
                statics.append(DesiredKey(full, value, prefix, policy, prune, False, ident, Source(file, line, column)))
            continue
        key_node, value_node = pair
        rel = key_node.value or ""
        full = _checked_key(prefix, rel, file, key_node.line, key_node.column, reserved)
        source = Source(file, key_node.line, key_node.column)   # for messages; the key holds it compact
        origin, at = compact_source(file, key_node.line, key_node.column)
        if value_node.kind == SCALAR and value_node.tag is None:
            # fast path: the text rule
            try:
                value = (value_node.value or "").encode("utf-8")
            except UnicodeEncodeError:
                value = values.encode_text(value_node.value or "", value_node, file)
            _check_size(full, value, source)
            statics.append(DesiredKey(full, value, prefix, policy, prune, False, ident, origin, at))
            continue
        if values.is_removal(rel, value_node, file):
            if doc.mode == "replace":
                raise node_error(f"key '{_show(rel)}': remove: true has no meaning in a document with spec.overlay: replace "
                           "(it replaces the earlier layers' document whole: leave the key out)", file, key_node)
            doc.removes.append((rel, source))
            continue
        entry = values.compile_entry(key_node, value_node, file, policy, prune)
        if entry.own_policy or entry.own_prune:
            doc.explicit[rel] = (entry.own_policy, entry.own_prune)
        dk = DesiredKey(full, entry.value or b"", prefix, entry.policy, entry.prune, entry.secret, ident, origin, at)
        if entry.value is None:
            doc.deferred.append((dk, entry))
        else:
            _check_size(full, entry.value, source)
            statics.append(dk)


def _checked_key(prefix: str, rel: str, file: str, line: int, column: int, reserved: str) -> str:
    """The full key of `rel` under `prefix`, once `rel` is a valid, displayable key outside the
    reserved prefix (a ManifestError at `file:line:column` otherwise)."""
    # what _BAD_KEY finds needs a character str.isprintable() refuses, a '.', '//' or a '/' at
    # either end: a (non-empty) key with none of them is fine without running the expression
    if not (rel and rel.isprintable() and "." not in rel and "//" not in rel and rel[0] != "/"
            and rel[-1] != "/") and (not rel or _BAD_KEY.search(rel)):
        _reject_key(rel, file, Source(file, line, column))
    if not rel.isascii():
        _check_display(rel, "key", file, Source(file, line, column))
    full = prefix + rel
    if reserved and full.startswith(reserved):
        _check_full_key(full, file, Source(file, line, column), reserved)
    return full


def _reject_key(rel: str, file: str, key_node: Node | Source) -> None:
    if not rel:
        raise node_error("empty key in data", file, key_node)
    if _BAD_CHARS.search(rel):
        raise node_error(f"key '{_show(rel)}' contains a control character or lone surrogate (NUL, newline, ...)", file, key_node)
    _check_display(rel, "key", file, key_node)
    if rel.startswith("/"):
        raise node_error(f"key '{_show(rel)}' must be relative to the prefix (remove the leading '/')", file, key_node)
    if "//" in rel or rel.endswith("/"):
        raise node_error(f"key '{_show(rel)}' has an empty path segment ('//' or a trailing '/')", file, key_node)
    raise node_error(f"key '{_show(rel)}' contains a '.' or '..' path segment (keys must stay under their prefix)", file, key_node)


def _check_size(key: str, value: bytes, source: Source) -> None:
    size = len(key) + len(value)
    if size > MAX_KEY_VALUE_BYTES // 4:  # cheap bound first: a str char is at most 4 UTF-8 bytes
        size = len(key.encode("utf-8", "surrogatepass")) + len(value)
        if size > MAX_KEY_VALUE_BYTES:
            raise ManifestError(
                f"key '{_show(key)}' is too large: key and value are {size} bytes, over etcd's request limit "
                f"({MAX_KEY_VALUE_BYTES} bytes)",
                source.file, source.line, source.column,
            )


def _compile_service(doc: _Doc, root: Node, spec: Mapping[str, Any], reserved: str) -> None:
    """Check the document's fields and instances; the keys are made by ``_finish_service`` once the
    layers are merged (prefix and format decide every key)."""
    file = doc.file
    spec_node = root.get("spec")
    assert spec_node is not None
    doc.spec_at = _src(file, spec_node)
    meta_node = root.get("metadata")
    name_node = (meta_node.get("name") if meta_node is not None else None) or root
    doc.name_at = _src(file, name_node)
    _check_name(doc.name, "service name", file, name_node)
    if "format" in spec:
        doc.fmt = spec["format"]
    if "prefix" in spec:
        doc.prefix, doc.prefix_at = spec["prefix"], _src(file, spec_node.get("prefix") or spec_node)
    if "ttl" in spec:
        doc.ttl = _duration(spec["ttl"], "spec.ttl", file, spec_node.get("ttl") or spec_node)
    if "check" in spec:
        doc.check = _health_check(spec["check"], "spec.check", file, spec_node.get("check") or spec_node)

    inst_list = spec_node.get("instances")
    if inst_list is None or inst_list.kind != SEQ:
        return
    seen_ids: dict[str, Node] = {}
    for i, inst_node in enumerate(inst_list.items):
        where = f"spec.instances[{i}]"
        inst = values.to_python(inst_node, file)
        id_node = inst_node.get("id")
        if id_node is not None:
            id_: str = id_node.value or ""
            _check_name(id_, "instance id", file, id_node)
        if inst.get("remove"):
            assert id_node is not None  # the schema requires it
            if doc.mode == "replace":
                raise node_error(f"instance '{_show(id_)}': remove: true has no meaning in a document with spec.overlay: "
                           "replace (it replaces the earlier layers' document whole: leave the instance out)",
                           file, inst_node)
            extra = [k for k in inst if k not in ("id", "remove")]
            if extra:
                raise node_error(f"instance '{_show(id_)}': an instance with remove: true holds only id and remove, "
                           f"not '{_show(extra[0])}'", file, inst_node.key_node(extra[0]) or inst_node)
            host, port = "", 0
        else:
            host = inst["host"]
            port = inst["port"]
            host_node = inst_node.get("host") or inst_node
            if _BAD_CHARS.search(host) or "/" in host or " " in host:
                raise node_error(f"{where}.host '{_show(host)}' must not contain '/', spaces or control characters", file, host_node)
            _check_display(host, f"{where}.host", file, host_node)
            if id_node is None:
                id_ = grpc_addr(host, port)
        first = seen_ids.get(id_)
        if first is not None:
            raise node_error(
                f"duplicate instance id '{_show(id_)}' in service '{doc.name}' (first at line {first.line})",
                file, id_node or inst_node,
            )
        seen_ids[id_] = id_node or inst_node
        if inst.get("remove"):
            doc.instances.append(_Inst(id_, True, host, port, None, None, None, None, where, _src(file, inst_node), True))
            continue
        metadata_json: str | None = None
        metadata: Any = None
        meta_node = inst_node.get("metadata")
        if meta_node is not None and not meta_node.is_null:
            metadata_json = values.to_json(meta_node, file)
            metadata = json.loads(metadata_json)
        ttl = _duration(inst["ttl"], f"{where}.ttl", file, inst_node.get("ttl") or inst_node) if "ttl" in inst else None
        check = (
            _health_check(inst["check"], f"{where}.check", file, inst_node.get("check") or inst_node)
            if "check" in inst else None
        )
        doc.instances.append(_Inst(id_, id_node is not None, host, port, metadata_json, metadata, ttl, check, where,
                                   _src(file, inst_node)))


def _finish_service(doc: _Doc, reserved: str) -> None:
    """The keys and live registrations of a Service document, its layers merged."""
    _no_earlier_layer(doc)
    fmt = doc.fmt or "json"
    if doc.prefix is not None:
        assert doc.prefix_at is not None
        prefix, file, at = doc.prefix, doc.prefix_at.file, doc.prefix_at
    else:
        assert doc.spec_at is not None
        prefix, file, at = services_prefix(fmt), doc.spec_at.file, doc.spec_at
    if fmt == "grpc" and prefix.startswith("/"):
        raise node_error(
            f"prefix '{_show(prefix)}' must not start with '/' for the grpc format: gRPC's etcd resolver strips one "
            f"leading slash from the target (use e.g. '{_show(prefix[1:])}')",
            file, at,
        )
    if fmt == "json" and not prefix.startswith("/"):
        raise node_error(f"prefix '{_show(prefix)}' must start with '/' (e.g. /services/)", file, at)
    _check_prefix(prefix, "prefix", file, at, reserved)
    svc_prefix = f"{prefix}{doc.name}/"
    _check_prefix(svc_prefix, "service prefix", file, at, reserved)
    doc.prefixes.append(svc_prefix)
    doc.service = ServiceDecl(doc.name, prefix, fmt, doc.name_at or doc.source)
    for inst in doc.instances:
        src = inst.source
        if not inst.has_id and fmt == "json":
            raise node_error(f"missing required field 'id' in {inst.where}", src.file, src)
        if doc.layers:
            src = Source(src.file, src.line, src.column, src.overrides, doc.layers)
        value = encode_instance(fmt, inst.host, inst.port, metadata_json=inst.metadata_json)
        key = instance_key(prefix, doc.name, inst.id, fmt, inst.host, inst.port)
        _check_full_key(key, src.file, src, reserved)
        ttl = inst.ttl if inst.ttl is not None else doc.ttl
        check = inst.check if inst.check is not None else doc.check
        if ttl is None and check is None:
            _check_size(key, value, src)
            doc.statics.append(DesiredKey(key, value, svc_prefix, Policy.ENFORCE, True, False, doc.ident, src))
        else:
            doc.live.append(
                ServiceInstance(
                    service=doc.name, id=inst.id, host=inst.host, port=inst.port, key=key, value=value,
                    prefix=svc_prefix, format=fmt, metadata=inst.metadata, ttl=ttl, check=check, document=doc.ident,
                    source=src,
                )
            )
    for inst, at in doc.removed_inst.values():
        doc.removed[instance_key(prefix, doc.name, inst.id, fmt, inst.host, inst.port)] = at


def _skip_data(path: tuple[Any, ...], node: Node) -> Any:
    # keep the (possibly huge) data mapping out of schema validation: values.py checks its values
    if path == ("spec", "data") and node.kind == MAP:
        return {}
    return None


def _compile_document(d: Document, reserved: str) -> _Doc:
    root, file = d.root, d.file
    if root.kind != MAP:
        raise node_error("a manifest document must be a mapping (apiVersion, kind, metadata, spec)", file, root)
    for field_ in ("apiVersion", "kind"):
        if root.get(field_) is None:
            raise node_error(f"missing required field '{field_}'", file, root)
    api_node = root.get("apiVersion")
    kind_node = root.get("kind")
    assert api_node is not None and kind_node is not None
    api = api_node.value if api_node.kind == SCALAR else None
    if api != API_VERSION:
        shown = f" '{_show(api)}'" if api is not None else ""
        raise node_error(f"unknown apiVersion{shown} (expected {API_VERSION})", file, api_node)
    kind = kind_node.value if kind_node.kind == SCALAR else None
    if kind not in KINDS:
        shown = f" '{_show(kind)}'" if kind is not None else ""
        raise node_error(f"unknown kind{shown} (expected one of {', '.join(KINDS)})", file, kind_node)
    plain = values.to_python(root, file, skip=_skip_data)
    validate_document(kind, plain, root, file)
    name: str = plain["metadata"]["name"]
    meta_node = root.get("metadata")
    name_node = (meta_node.get("name") if meta_node is not None else None) or root
    if _BAD_CHARS.search(name):
        raise node_error(f"metadata.name '{_show(name)}' contains a control character", file, name_node)
    _check_display(name, "metadata.name", file, name_node)
    doc = _Doc(kind, name, file, _src(file, root))
    doc.labels = dict(plain["metadata"].get("labels") or {})
    spec = plain.get("spec") or {}
    doc.mode = spec.get("overlay", "merge")
    if kind == "ConfigSet":
        _compile_configset(doc, root, spec, reserved)
    elif kind == "Service":
        _compile_service(doc, root, spec, reserved)
    else:
        _check_name(name, "apply set name", file, name_node)
    return doc


# ------------------------------------------------------------------------------------------------
# overlays: a later layer's document merges into (or, with spec.overlay: replace, replaces) the
# earlier layers' document of the same kind and name

def _items(doc: _Doc) -> dict[str, tuple[DesiredKey, values.Entry | None]]:
    """A ConfigSet's keys by relative key."""
    if doc.items is not None:
        return doc.items
    n = len(doc.key_prefix)
    items: dict[str, tuple[DesiredKey, values.Entry | None]] = {dk.key[n:]: (dk, None) for dk in doc.statics}
    for dk, entry in doc.deferred:
        items[dk.key[n:]] = (dk, entry)
    return items


def _overriding(source: Source | None, earlier: Source | None) -> Source | None:
    if source is None or earlier is None:  # pragma: no cover - the loader sets every source
        return source
    return Source(source.file, source.line, source.column,
                  (*earlier.overrides, Source(earlier.file, earlier.line, earlier.column)))


def _merge(acc: _Doc, over: _Doc) -> _Doc:
    """``over`` (a later layer) on top of ``acc`` (the earlier layers, merged): a new document."""
    _no_earlier_layer(acc)  # a first document's `remove: true` had nothing to remove either
    layers = (*(acc.layers or (acc.source,)), over.source)
    replace = over.mode == "replace"
    out = _Doc(over.kind, over.name, over.file, over.source, over.spec_at, over.mode, layer_no=over.layer_no,
               layers=layers)
    # spec fields: the later layer's when given (replace: only the later layer's)
    for name in ("prefix", "prefix_at", "policy", "prune", "fmt", "ttl", "check"):
        mine = getattr(over, name)
        setattr(out, name, mine if mine is not None or replace else getattr(acc, name))
    out.labels = dict(over.labels) if replace else {**acc.labels, **over.labels}  # label by label
    if over.kind == "ConfigSet":
        _require_prefix(acc)
        if replace:
            _require_prefix(over)
        before = _items(acc)
        items = {} if replace else dict(before)
        out.explicit = {} if replace else dict(acc.explicit)
        out.removed_rel = {} if replace else dict(acc.removed_rel)
        for rel, at in over.removes:
            if rel not in items:
                raise ManifestError(f"key '{_show(rel)}': remove: true, but no earlier -f layer declares it in "
                                    f"{over.ident} (nothing to remove)", at.file, at.line, at.column)
            del items[rel]
            out.explicit.pop(rel, None)
            out.removed_rel[rel] = at
        for rel, (dk, entry) in _items(over).items():
            earlier = before.get(rel)
            if earlier is not None:
                dk = dk._replace(origin=_overriding(dk.source, earlier[0].source), at=0)
            items[rel] = (dk, entry)
            out.explicit.pop(rel, None)
            out.removed_rel.pop(rel, None)
        out.explicit.update(over.explicit)
        out.items = items
    else:
        by_id = {i.id: i for i in acc.instances}
        instances = {} if replace else dict(by_id)
        out.removed_inst = {} if replace else dict(acc.removed_inst)
        for inst in over.instances:
            if inst.remove:
                gone = instances.pop(inst.id, None)
                if gone is None:
                    at = inst.source
                    raise ManifestError(f"instance '{_show(inst.id)}': remove: true, but no earlier -f layer declares "
                                        f"it in {over.ident} (nothing to remove)", at.file, at.line, at.column)
                out.removed_inst[inst.id] = (gone, inst.source)
                continue
            earlier_inst = by_id.get(inst.id)
            if earlier_inst is not None:
                source = _overriding(inst.source, earlier_inst.source)
                assert source is not None
                inst = _Inst(inst.id, inst.has_id, inst.host, inst.port, inst.metadata_json, inst.metadata, inst.ttl,
                             inst.check, inst.where, source)
            instances[inst.id] = inst
            out.removed_inst.pop(inst.id, None)
        out.instances = list(instances.values())
    return out


def _no_earlier_layer(doc: _Doc) -> None:
    """`remove: true` in a document that merged into nothing: there is nothing to remove."""
    if doc.removes:
        rel, at = doc.removes[0]
        raise ManifestError(f"key '{_show(rel)}': remove: true, but no earlier -f layer declares {doc.ident} "
                            "(nothing to remove)", at.file, at.line, at.column)
    for inst in doc.instances:
        if inst.remove:
            at = inst.source
            raise ManifestError(f"instance '{_show(inst.id)}': remove: true, but no earlier -f layer declares "
                                f"{doc.ident} (nothing to remove)", at.file, at.line, at.column)


def _require_prefix(doc: _Doc) -> None:
    if doc.prefix is not None:
        return
    at = doc.spec_at or doc.source
    hint = ""
    if doc.mode == "replace" and doc.layer_no:
        hint = " (a document with spec.overlay: replace is whole)"
    elif doc.layer_no:
        hint = f" (no earlier -f layer declares {doc.ident} to merge into)"
    raise ManifestError(f"missing required field 'prefix' in spec{hint}", at.file, at.line, at.column)


def _finish_configset(doc: _Doc, reserved: str) -> None:
    """A merged ConfigSet's keys under its (possibly new) prefix, with the defaults of its policy and
    prune for the keys that do not set their own."""
    _no_earlier_layer(doc)
    _require_prefix(doc)
    assert doc.prefix is not None
    doc.prefixes.append(doc.prefix)
    if doc.items is None:
        return  # one layer: compiled as it stands
    prefix, layers = doc.prefix, doc.layers
    policy = Policy.ENFORCE if doc.policy is None else doc.policy
    prune = True if doc.prune is None else doc.prune
    statics: list[DesiredKey] = []
    deferred: list[tuple[DesiredKey, values.Entry]] = []
    for rel, (dk, entry) in doc.items.items():
        own_policy, own_prune = doc.explicit.get(rel, (False, False))
        src = dk.source
        assert src is not None
        src = Source(src.file, src.line, src.column, src.overrides, layers)
        key = prefix + rel
        dk = dk._replace(key=key, prefix=prefix, policy=dk.policy if own_policy else policy,
                         prune=dk.prune if own_prune else prune, document=doc.ident, origin=src, at=0)
        _check_full_key(key, src.file, src, reserved)
        if entry is None:
            _check_size(key, dk.value, src)
            statics.append(dk)
        else:
            deferred.append((dk, entry))
    doc.statics, doc.deferred = statics, deferred
    doc.removed = {prefix + rel: at for rel, at in doc.removed_rel.items()}


# ------------------------------------------------------------------------------------------------
# load

class _Ctx:
    file: str | None = None


def load_manifests(
    paths: Sequence[str | os.PathLike[str]],
    *,
    environ: Mapping[str, str] | None = None,
    reserved_prefix: str = RESERVED_PREFIX,
    file_roots: Sequence[str | os.PathLike[str]] = (),
    env_allow: Sequence[str] = (),
) -> DesiredState:
    """Load, validate and overlay the manifests of ``paths`` (one layer each) into a DesiredState.

    A fromFile source must resolve (symbolic links followed) inside the root of its layer (the ``-f``
    directory, or the directory of an ``-f`` file) or inside one of ``file_roots``, and never under
    /proc, /sys or /dev. fromEnv never reads ETCDSYNC_* or ETCDCTL_*, and with ``env_allow`` (shell
    globs) only matching names.

    Raises only ManifestError (file, line, column), whose message never contains a secret value.
    """
    ctx = _Ctx()
    # Loading creates ~10 objects per key and no reference cycles: the cyclic GC would only rescan
    # them again and again (it doubles the time of a 100,000-key load), so pause it meanwhile.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sources = _Sources([os.path.realpath(r) for r in file_roots], tuple(env_allow))
        return _load(paths, os.environ if environ is None else environ, reserved_prefix, ctx, sources)
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError("nesting is too deep", ctx.file) from None
    except MemoryError:
        raise ManifestError("out of memory while loading (file too large?)", ctx.file) from None
    except Exception as e:  # a bug or an unforeseen input: still one clean error, no secret in it
        raise ManifestError(f"cannot load manifest: internal error ({type(e).__name__})", ctx.file) from e
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass(slots=True)
class _Sources:
    file_roots: list[str]
    env_allow: tuple[str, ...]
    by_root: dict[str, values.SourcePolicy] = field(default_factory=dict)

    def policy(self, root: str) -> values.SourcePolicy:
        p = self.by_root.get(root)
        if p is None:
            p = self.by_root[root] = values.SourcePolicy((root, *self.file_roots), self.env_allow)
        return p


def _layer_root(path: str | os.PathLike[str]) -> str:
    """The resolved -f directory, or the resolved directory an -f file was named in (fromFile paths
    are relative to that directory, also when the file itself is a symbolic link)."""
    if os.path.isdir(path):
        return os.path.realpath(path)
    return os.path.realpath(os.path.dirname(os.path.abspath(path)))


def _load(paths: Sequence[str | os.PathLike[str]], environ: Mapping[str, str], reserved: str, ctx: _Ctx,
          sources: _Sources) -> DesiredState:
    layers = collect_files(paths)
    files: list[str] = []
    final: dict[tuple[str, str], _Doc] = {}
    root_of: dict[str, str] = {}
    for layer_no, (layer_path, layer) in enumerate(zip(paths, layers, strict=True)):
        in_layer: dict[tuple[str, str], _Doc] = {}
        root = _layer_root(layer_path)
        for path in layer:
            file = os.fspath(path)
            root_of[file] = root
            ctx.file = file
            files.append(file)
            text = read_file(file)
            n_docs = 0
            for d in iter_documents(text, file, compact_data=True):
                n_docs += 1
                doc = _compile_document(d, reserved)
                doc.layer_no = layer_no
                ident = (doc.kind, doc.name)
                other = in_layer.get(ident)
                if other is not None:
                    raise ManifestError(
                        f"duplicate document {doc.ident}: also declared at {other.source} "
                        "(one -f layer may declare each kind/name once; later -f paths merge into earlier ones)",
                        file, doc.source.line, doc.source.column,
                    )
                earlier = final.get(ident)
                if earlier is not None and doc.kind != "ApplySet":
                    doc = _merge(earlier, doc)
                in_layer[ident] = doc
            if not n_docs:
                # an editor mid-save or `: > file`: reading it as "declares nothing" would prune its keys
                raise ManifestError("holds no documents; delete the file to prune its keys", file)
        final.update(in_layer)
    ctx.file = None

    docs = list(final.values())
    for doc in docs:
        ctx.file = doc.file
        if doc.kind == "ConfigSet":
            _finish_configset(doc, reserved)
        elif doc.kind == "Service":
            _finish_service(doc, reserved)
    ctx.file = None
    applysets = [d for d in docs if d.kind == "ApplySet"]
    if len(applysets) > 1:
        a, b = applysets[0], applysets[1]
        raise ManifestError(
            f"more than one ApplySet document: '{a.name}' at {a.source} and '{b.name}'",
            b.file, b.source.line, b.source.column,
        )

    keys: dict[str, DesiredKey] = {}
    live: list[ServiceInstance] = []
    live_keys: dict[str, Source] = {}
    prefixes: set[str] = set()

    def duplicate(key: str, first: Source | None, source: Source) -> ManifestError:
        return ManifestError(
            f"duplicate etcd key '{_show(key)}': declared at {first} and at {source}",
            source.file, source.line, source.column,
        )

    for doc in docs:
        ctx.file = doc.file
        prefixes.update(doc.prefixes)
        statics = doc.statics
        if doc.deferred:
            statics = list(statics)
            for dk, entry in doc.deferred:
                assert dk.source is not None
                file = dk.source.file  # after a merge, not necessarily the document's last file
                value = values.resolve_entry(entry, file, environ, sources.policy(root_of[file]))
                _check_size(dk.key, value, dk.source)
                statics.append(dk._replace(value=value))
        added = {dk.key: dk for dk in statics}
        if len(added) == len(statics) and added.keys().isdisjoint(keys):
            keys.update(added)      # the usual case, at C speed; any clash is found and named below
        else:
            for dk in statics:
                assert dk.source is not None
                seen = keys.get(dk.key)
                if seen is not None:
                    raise duplicate(dk.key, seen.source, dk.source)
                keys[dk.key] = dk
        for inst in doc.live:
            source = inst.source or doc.source
            first = keys[inst.key].source if inst.key in keys else live_keys.get(inst.key)
            if first is not None:
                raise duplicate(inst.key, first, source)
            live_keys[inst.key] = source
            live.append(inst)
    for key, dk in keys.items() if live_keys else ():
        if key in live_keys:  # a live instance declared before a static key
            assert dk.source is not None
            raise duplicate(key, live_keys[key], dk.source)
    ctx.file = None

    removed = {key: at for doc in docs for key, at in doc.removed.items() if key not in keys and key not in live_keys}
    applyset = applysets[0] if applysets else None
    return DesiredState(
        keys={key: keys[key] for key in sorted(keys)},
        live=tuple(live),
        prefixes=tuple(sorted(prefixes)),
        applyset=applyset.name if applyset else None,
        applyset_source=applyset.source if applyset else None,
        files=tuple(files),
        sources=tuple(sorted({path for p in sources.by_root.values() for path in p.read})),
        removed=dict(sorted(removed.items())),
        services=tuple(d.service for d in docs if d.service is not None),
        labels={d.ident: d.labels for d in docs if d.kind != "ApplySet"},
    )
