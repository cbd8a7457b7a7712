"""The JSON Schema of one manifest document (the single declaration) and its validation.

``MANIFEST_SCHEMA`` is printed by ``etcdsync schema`` for editor completion and is also what the loader
validates each document against (the sub-schema of the document's kind, so errors are precise instead
of a top-level ``oneOf`` failure). A document is first checked by ``conforms`` below, a small
interpreter of the keywords this schema uses; jsonschema (~40 ms to import) is loaded only when that
check fails, to find and word the errors, so a valid tree never imports it.

The values of ``spec.data`` are described here (scalar | long form | JSON value) but are checked by
``values.py``: the loader hands ``data`` to the validator as an empty object, so a ConfigSet of
100,000 keys costs nothing to validate.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from etcdsync.errors import ManifestError

from .yamlnodes import MAP, SEQ, Node, shown

API_VERSION = "etcdsync/v1"
KINDS = ("ConfigSet", "Service", "ApplySet")
POLICIES = ["enforce", "warn", "create-only"]
OPTION_NAMES = ["value", "fromFile", "fromEnv", "secret", "policy", "prune"]
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_string_map = {"type": "object", "additionalProperties": {"type": "string"}}


def _document(kind: str, spec: dict[str, Any], spec_required: bool, description: str) -> dict[str, Any]:
    return {
        "title": kind,
        "description": description,
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []),
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": "Always etcdsync/v1."},
            "kind": {"const": kind},
            "metadata": {"$ref": "#/$defs/metadata"},
            "spec": spec,
        },
    }


MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:etcdsync:manifest:v1",
    "title": "etcdsync manifest document",
    "description": "One YAML document of an etcdsync manifest tree (many per file, separated by ---).",
    "oneOf": [{"$ref": f"#/$defs/{k}"} for k in KINDS],
    "$defs": {
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Name of the document; (kind, name) is unique per layer and is what a later layer's document merges into.",
                },
                "labels": _string_map,
                "annotations": _string_map,
            },
        },
        "duration": {
            "title": "duration",
            "description": "A duration: a string such as 10s, 1.5s, 500ms, 1m, 1m30s, 2h, or a number of seconds; must be > 0.",
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
        },
        "policy": {
            "enum": POLICIES,
            "description": "enforce: overwrite drift; warn: report drift, never overwrite; create-only: write only when absent.",
        },
        "overlay": {
            "enum": ["merge", "replace"],
            "default": "merge",
            "description": "How this document overlays the document of the same kind and name in earlier -f layers: "
                           "merge (data key by key, instances by id, other spec fields replaced when given) or replace (whole).",
        },
        "remove": {
            "const": True,
            "description": "In an overlay: remove this key or instance, which an earlier -f layer declares.",
        },
        "dataValue": {
            "title": "data value",
            "description": "The value of one key, relative to spec.prefix.",
            "anyOf": [
                {
                    "description": "{remove: true}: an overlay removes the key an earlier -f layer declares.",
                    "type": "object",
                    "required": ["remove"],
                    "additionalProperties": False,
                    "properties": {"remove": {"$ref": "#/$defs/remove"}},
                },
                {
                    "description": "A scalar: stored exactly as written in the file (no implicit typing: no, on, 1.10, 0755 arrive as written; quoted: the string content).",
                    "type": ["string", "number", "boolean", "null"],
                },
                {
                    "description": "A list: stored as compact JSON (YAML 1.2 core types inside: true/false/null and numbers as written).",
                    "type": "array",
                },
                {"$ref": "#/$defs/longForm"},
                {
                    "description": "A mapping that is not the long form (and holds none of secret, fromFile, fromEnv): stored as compact JSON, keys in file order (a JSON value that looks like the long form is written as {value: {...}}).",
                    "type": "object",
                    "not": {"anyOf": [
                        {"minProperties": 1, "propertyNames": {"enum": OPTION_NAMES}},
                        {"required": ["secret"]}, {"required": ["fromFile"]}, {"required": ["fromEnv"]},
                        {"required": ["remove"], "propertyNames": {"enum": [*OPTION_NAMES, "remove"]}},
                    ]},
                },
            ],
        },
        "longForm": {
            "description": "A value with per-key options: exactly one of value, fromFile, fromEnv.",
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "value": {"description": "The value: a scalar (stored as written) or a mapping/list (stored as compact JSON)."},
                "fromFile": {"type": "string", "minLength": 1, "description": "Read the value (bytes) from this file, relative to the manifest's directory."},
                "fromEnv": {"type": "string", "minLength": 1, "description": "Read the value from this environment variable (it must be set)."},
                "secret": {"type": "boolean", "description": "Never show the value in any output, log or error."},
                "policy": {"$ref": "#/$defs/policy"},
                "prune": {"type": "boolean", "description": "false: never delete this key, only release it from the inventory."},
            },
            "oneOf": [{"required": ["value"]}, {"required": ["fromFile"]}, {"required": ["fromEnv"]}],
        },
        "check": {
            "title": "check",
            "description": "Health check gating a live registration: {tcp: true} or {http: /path}.",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tcp": {"const": True, "description": "TCP connect to host:port."},
                "http": {"type": "string", "pattern": "^/", "description": "HTTP GET of this path on host:port; 2xx/3xx is healthy."},
                "interval": {"$ref": "#/$defs/duration"},
                "timeout": {"$ref": "#/$defs/duration"},
                "failures": {"type": "integer", "minimum": 1, "description": "Consecutive failures before deregistering (default 3)."},
            },
            "oneOf": [{"required": ["tcp"]}, {"required": ["http"]}],
        },
        "instance": {
            "type": "object",
            "additionalProperties": False,
            "if": {"required": ["remove"]},
            "then": {"required": ["id"]},
            "else": {"required": ["host", "port"]},
            "properties": {
                "id": {
                    "type": ["string", "integer"],
                    "minLength": 1,
                    "description": "Instance id (key <prefix><name>/<id>); required for the json format, optional for grpc "
                                   "(there the id is host:port). An overlay's instance replaces the earlier one with its id.",
                },
                "remove": {"$ref": "#/$defs/remove"},
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "metadata": {"type": ["object", "null"], "description": "Free-form metadata, stored as JSON."},
                "ttl": {"$ref": "#/$defs/duration"},
                "check": {"$ref": "#/$defs/check"},
            },
        },
        "ConfigSet": _document(
            "ConfigSet",
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "prefix": {
                        "type": "string",
                        "pattern": "^/(.*/)?$",
                        "description": "Every key in data is relative to this prefix, e.g. /config/payments/ (starts and ends with '/'). "
                                       "Required, unless an earlier -f layer's document of the same name gives it.",
                    },
                    "overlay": {"$ref": "#/$defs/overlay"},
                    "policy": {"$ref": "#/$defs/policy", "default": "enforce"},
                    "prune": {"type": "boolean", "default": True, "description": "Default for the keys: false never deletes them."},
                    "data": {
                        "type": ["object", "null"],
                        "description": "Keys (relative to prefix) and their values.",
                        "additionalProperties": {"$ref": "#/$defs/dataValue"},
                    },
                },
            },
            True,
            "Config keys under one prefix.",
        ),
        "Service": _document(
            "Service",
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "prefix": {
                        "type": "string",
                        "description": "Registry prefix; key <prefix><name>/<id>. Default /services/ (json), services/ (grpc: no leading slash).",
                    },
                    "format": {
                        "enum": ["json", "grpc"],
                        "default": "json",
                        "description": 'json: {"host","port","metadata"}; grpc: etcd naming/endpoints {"Op":0,"Addr","Metadata"}.',
                    },
                    "ttl": {"$ref": "#/$defs/duration"},
                    "check": {"$ref": "#/$defs/check"},
                    "instances": {"type": ["array", "null"], "items": {"$ref": "#/$defs/instance"}},
                    "overlay": {"$ref": "#/$defs/overlay"},
                },
            },
            True,
            "Service instances in the registry; with ttl or check they are live registrations held by `etcdsync run`.",
        ),
        "ApplySet": _document(
            "ApplySet",
            {"type": ["object", "null"], "additionalProperties": False, "properties": {}},
            False,
            "Names the apply set of this tree (ownership inventory); at most one per tree.",
        ),
    },
}

_PATTERN_MESSAGES = {
    DURATION_PATTERN: "is not a valid duration: use e.g. 10s, 1m30s, 500ms or a number of seconds",
    "^/": "must start with '/'",
    "^/(.*/)?$": "must start and end with '/' (e.g. /config/payments/): keys are the prefix followed by the relative key",
}
_TITLE_MESSAGES = {
    "duration": "is not a valid duration: use e.g. 10s, 1m30s, 500ms or a number of seconds (> 0)",
    "check": "needs exactly one of 'tcp: true' or 'http: /path'",
}

_validators: dict[str, Any] = {}


def _validator(kind: str) -> Any:
    v = _validators.get(kind)
    if v is None:
        from jsonschema import Draft202012Validator  # lazy: heavy import

        v = Draft202012Validator({"$defs": MANIFEST_SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"})
        _validators[kind] = v
    return v


def _where(path: Any) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return shown(out) if out else "document"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__  # pragma: no cover


_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "object": "a mapping", "array": "a list", "null": "null",
}


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"'{shown(text, 60)}'"


def node_at(root: Node, path: Any) -> Node:
    node = root
    for p in path:
        if isinstance(p, int):
            if node.kind != SEQ or p >= len(node.items):
                break
            node = node.items[p]
        else:
            if node.kind != MAP:
                break
            child = node.get(p)
            if child is None:
                break
            node = child
    return node


def _error_to_manifest(err: Any, root: Node, file: str) -> tuple[tuple[int, int, int], ManifestError]:
    path = list(err.absolute_path)
    where = _where(path)
    node = node_at(root, path)
    v = err.validator
    rank = 0
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        extras = [k for k in err.instance if k not in allowed]
        key = extras[0] if extras else "?"
        key_node = node.key_node(key) if extras else None
        if key_node is not None:
            node = key_node
        msg = f"unknown field '{shown(key, 100)}'" + (f" in {where}" if path else "")
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        elif allowed:
            msg += f" (allowed: {', '.join(allowed)})"
        else:
            msg += " (no fields allowed here)"
    elif v == "required":
        missing = [k for k in err.validator_value if k not in (err.instance or {})]
        msg = f"missing required field '{missing[0] if missing else '?'}'" + (f" in {where}" if path else "")
        rank = 1
    elif v == "type":
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        expected = " or ".join(str(_TYPE_NAMES.get(t, t)) for t in types if t != "null") or "null"
        msg = f"{where} must be {expected}, not {_describe(err.instance)}"
    elif v == "enum":
        msg = f"invalid {where} {_show(err.instance)}: expected one of {', '.join(map(str, err.validator_value))}"
    elif v == "const":
        msg = f"invalid {where} {_show(err.instance)}: expected {json.dumps(err.validator_value)}"
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sch = err.schema
        if "minimum" in sch and "maximum" in sch:
            msg = f"{where} must be between {sch['minimum']} and {sch['maximum']}, not {err.instance}"
        else:
            op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
            msg = f"{where} must be {op} {err.validator_value}, not {err.instance}"
    elif v == "minLength":
        msg = f"{where} must not be empty"
    elif v == "pattern":
        msg = f"{where} {_PATTERN_MESSAGES.get(err.validator_value, 'has an invalid format')}"
    elif v in ("anyOf", "oneOf") and err.schema.get("title") in _TITLE_MESSAGES:
        msg = f"{where} {_TITLE_MESSAGES[err.schema['title']]}"
    elif v in ("anyOf", "oneOf") and err.context:
        from jsonschema.exceptions import best_match

        return _error_to_manifest(best_match(err.context), root, file)
    else:
        msg = f"{where}: {err.message}"
    return (node.line, node.column, rank), ManifestError(msg, file, node.line, node.column)


# ------------------------------------------------------------------------------------------------
# The fast check: is an instance valid under a (sub-)schema of MANIFEST_SCHEMA? Each keyword below
# mirrors jsonschema's Draft 2020-12 implementation (types: bool is neither integer nor number, 1.0 is
# an integer; const/enum: True is not 1; pattern: re.search; a keyword applies only to instances of
# its type). A keyword it does not know makes it answer "unknown", and jsonschema decides.
# tests/test_manifest_schema_fast.py compares it with jsonschema on generated documents.

class _Unsupported(Exception):
    pass


_ANNOTATIONS = frozenset({"title", "description", "default", "$schema", "$id", "$defs"})


def _is_type(instance: Any, name: str) -> bool:
    if name == "string":
        return isinstance(instance, str)
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "null":
        return instance is None
    if name == "boolean":
        return isinstance(instance, bool)
    if isinstance(instance, bool):
        return False
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    if name == "number":
        return isinstance(instance, (int, float))
    raise _Unsupported(name)


def _equal(one: Any, two: Any) -> bool:
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_equal(one[k], two[k]) for k in one)
    if isinstance(one, bool) or isinstance(two, bool):
        return one is two
    return bool(one == two)


def conforms(schema: Mapping[str, Any], instance: Any, defs: Mapping[str, Any]) -> bool:
    """Whether `instance` is valid under `schema` (whose `$ref`s point into `defs`); raises
    _Unsupported for a keyword it does not implement."""
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$ref":
            if not arg.startswith("#/$defs/"):
                raise _Unsupported(arg)
            ok = conforms(defs[arg[len("#/$defs/"):]], instance, defs)
        elif keyword == "type":
            ok = any(_is_type(instance, t) for t in (arg if isinstance(arg, list) else [arg]))
        elif keyword == "const":
            ok = _equal(instance, arg)
        elif keyword == "enum":
            ok = any(_equal(each, instance) for each in arg)
        elif keyword == "anyOf":
            ok = any(conforms(sub, instance, defs) for sub in arg)
        elif keyword == "oneOf":
            ok = sum(1 for sub in arg if conforms(sub, instance, defs)) == 1
        elif keyword == "not":
            ok = not conforms(arg, instance, defs)
        elif keyword == "if":
            branch = "then" if conforms(arg, instance, defs) else "else"
            ok = branch not in schema or conforms(schema[branch], instance, defs)
        elif keyword in ("then", "else"):
            continue                                        # applied with "if"
        elif keyword in ("minLength", "pattern"):
            if not isinstance(instance, str):
                continue
            ok = len(instance) >= arg if keyword == "minLength" else re.search(arg, instance) is not None
        elif keyword in ("minimum", "maximum", "exclusiveMinimum"):
            if not _is_type(instance, "number"):
                continue
            ok = not (instance < arg if keyword == "minimum" else instance > arg if keyword == "maximum"
                      else instance <= arg)
        elif keyword == "items":
            if not isinstance(instance, list):
                continue
            ok = all(conforms(arg, item, defs) for item in instance)
        elif keyword in ("required", "properties", "additionalProperties", "minProperties", "propertyNames"):
            if not isinstance(instance, dict):
                continue
            ok = _object_keyword(keyword, arg, schema, instance, defs)
        else:
            raise _Unsupported(keyword)
        if not ok:
            return False
    return True


def _object_keyword(keyword: str, arg: Any, schema: Mapping[str, Any], instance: dict[str, Any],
                    defs: Mapping[str, Any]) -> bool:
    if keyword == "required":
        return all(name in instance for name in arg)
    if keyword == "properties":
        return all(conforms(sub, instance[name], defs) for name, sub in arg.items() if name in instance)
    if keyword == "minProperties":
        return len(instance) >= int(arg)
    if keyword == "propertyNames":
        return all(conforms(arg, name, defs) for name in instance)
    if "patternProperties" in schema:
        raise _Unsupported("patternProperties")
    extras = [name for name in instance if name not in schema.get("properties", {})]
    if arg is False:
        return not extras
    if arg is True:
        return True
    return all(conforms(arg, instance[name], defs) for name in extras)


def fast_valid(kind: str, plain: Any) -> bool | None:
    """True/False: whether the document is valid against its kind's schema; None: not decided here."""
    defs = MANIFEST_SCHEMA["$defs"]
    try:
        return conforms(defs[kind], plain, defs)
    except _Unsupported:
        return None


def validate_document(kind: str, plain: Any, root: Node, file: str) -> None:
    """Validate one document (already known to have a valid apiVersion and kind) against its kind's
    schema; raise the first error (in file order) as a ManifestError at the offending node."""
    if fast_valid(kind, plain):
        return
    errors = list(_validator(kind).iter_errors(plain))
    if not errors:
        return
    found = [_error_to_manifest(e, root, file) for e in errors]
    found.sort(key=lambda t: t[0])
    raise found[0][1]

