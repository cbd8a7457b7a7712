"""Service-instance keys and values, shared by the manifest loader and the registry library.

Two formats:

- ``json`` (the common Node ``etcd3`` registry pattern): key ``<prefix><service>/<id>``, value
  ``{"host":...,"port":...}`` plus ``"metadata":{...}`` only when given.
- ``grpc`` (etcd's ``naming/endpoints``, what grpc-go's etcd resolver reads): key
  ``<prefix><service>/<host>:<port>``, value exactly ``{"Op":0,"Addr":"host:port","Metadata":...}``
  where Metadata is the metadata as a JSON *string* (a map makes some grpc-go versions panic) or null.

Encoding is strict and canonical (compact JSON, ``ensure_ascii=False``); decoding is lenient about
extra fields, since other clients write these keys too. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def grpc_addr(host: str, port: int) -> str:
    """``host:port``; an IPv6 literal is bracketed (``[::1]:80``), as Go's net.Dial expects."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def encode_json(host: str, port: int, metadata: Mapping[str, Any] | None = None, *, metadata_json: str | None = None) -> bytes:
    """The json-format value. ``metadata_json`` (already compact JSON text) takes precedence over
    ``metadata``; the manifest loader uses it to keep numbers as written."""
    meta = metadata_json if metadata_json is not None else (None if metadata is None else _dumps(dict(metadata)))
    text = f'{{"host":{_dumps(host)},"port":{int(port)}'
    if meta is not None:
        text += f',"metadata":{meta}'
    return (text + "}").encode("utf-8")


def encode_grpc(host: str, port: int, metadata: Mapping[str, Any] | None = None, *, metadata_json: str | None = None) -> bytes:
    """The grpc-format (naming/endpoints) value: ``{"Op":0,"Addr":"host:port","Metadata":<string|null>}``."""
    meta = metadata_json if metadata_json is not None else (None if metadata is None else _dumps(dict(metadata)))
    meta_field = "null" if meta is None else _dumps(meta)
    return f'{{"Op":0,"Addr":{_dumps(grpc_addr(host, port))},"Metadata":{meta_field}}}'.encode("utf-8")


def encode_instance(fmt: str, host: str, port: int, metadata: Mapping[str, Any] | None = None, *, metadata_json: str | None = None) -> bytes:
    if fmt == "json":
        return encode_json(host, port, metadata, metadata_json=metadata_json)
    if fmt == "grpc":
        return encode_grpc(host, port, metadata, metadata_json=metadata_json)
    raise ValueError(f"unknown instance format {fmt!r} (expected json or grpc)")


def instance_key(prefix: str, service: str, id: str | None, fmt: str, host: str, port: int) -> str:
    """``<prefix><service>/<id>`` (json) or ``<prefix><service>/<host>:<port>`` (grpc)."""
    if fmt == "json":
        if not id:
            raise ValueError("an instance id is required for the json format")
        return f"{prefix}{service}/{id}"
    if fmt == "grpc":
        return f"{prefix}{service}/{grpc_addr(host, port)}"
    raise ValueError(f"unknown instance format {fmt!r} (expected json or grpc)")


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("Addr is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return host, port


def decode_instance(key: str | bytes, value: str | bytes, fmt: str) -> tuple[str, str, int, Any]:
    """``(id, host, port, metadata)`` from a stored key and value; ValueError when unparsable.

    The id is the last path segment of the key (for grpc, ``host:port``). json: extra fields are
    accepted, ``host`` must be a string and ``port`` an integer (or a numeric string, 1-65535). grpc: ``Addr`` is parsed as
    ``host:port``; ``Metadata`` may be a JSON string (decoded; kept as the raw string when it is not
    JSON), a JSON value written directly by another client, or null/absent (None).
    """
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    id_ = key.rsplit("/", 1)[-1]
    if not id_:
        raise ValueError("key has no instance id")
    try:
        obj = json.loads(value)
    except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"value is not JSON: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise ValueError("value is not a JSON object")
    if fmt == "json":
        host, port = obj.get("host"), obj.get("port")
        if not isinstance(host, str) or not host:
            raise ValueError("value has no string 'host'")
        if isinstance(port, str) and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            port = int(port)             # "8080": what Node services writing process.env.PORT produce
        if not isinstance(port, int) or isinstance(port, bool):
            raise ValueError("value has no integer 'port'")
        return id_, host, port, obj.get("metadata")
    if fmt == "grpc":
        if obj.get("Op", 0) != 0:
            raise ValueError("value is not an Add operation (Op != 0)")
        addr = obj.get("Addr")
        if not isinstance(addr, str):
            raise ValueError("value has no string 'Addr'")
        host, port = _split_addr(addr)
        meta = obj.get("Metadata")
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                pass
        return id_, host, port, meta
    raise ValueError(f"unknown instance format {fmt!r} (expected json or grpc)")
