"""Service-instance keys and values, exact bytes both ways and the exact refusal for every bad value
(mutation score of instances.py)."""

from __future__ import annotations

import pytest

from etcdsync.core.instances import decode_instance, encode_instance, grpc_addr, instance_key


@pytest.mark.parametrize("host, port, addr", [
    ("h", 80, "h:80"), ("::1", 80, "[::1]:80"), ("[::1]", 80, "[::1]:80"), ("10.0.0.1", 1, "10.0.0.1:1"),
])
def test_grpc_addr(host: str, port: int, addr: str) -> None:
    assert grpc_addr(host, port) == addr


@pytest.mark.parametrize("fmt, metadata, metadata_json, value", [
    ("json", None, None, '{"host":"hé","port":80}'),
    ("json", {"b": 1, "a": "é"}, None, '{"host":"hé","port":80,"metadata":{"b":1,"a":"é"}}'),
    ("json", {"x": 1}, '{"n":1.10}', '{"host":"hé","port":80,"metadata":{"n":1.10}}'),
    ("json", {}, None, '{"host":"hé","port":80,"metadata":{}}'),
    ("grpc", None, None, '{"Op":0,"Addr":"hé:80","Metadata":null}'),
    ("grpc", {"b": 1, "a": "é"}, None, '{"Op":0,"Addr":"hé:80","Metadata":"{\\"b\\":1,\\"a\\":\\"é\\"}"}'),
    ("grpc", None, '{"n":1.10}', '{"Op":0,"Addr":"hé:80","Metadata":"{\\"n\\":1.10}"}'),
])
def test_encode_instance_exact_bytes(fmt: str, metadata: dict[str, object] | None, metadata_json: str | None,
                                     value: str) -> None:
    assert encode_instance(fmt, "hé", 80, metadata, metadata_json=metadata_json) == value.encode("utf-8")


def test_encode_instance_port_is_an_integer_and_nan_is_refused() -> None:
    assert encode_instance("json", "h", True, None) == b'{"host":"h","port":1}'  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_instance("json", "h", 1, {"x": float("nan")})
    with pytest.raises(ValueError, match=r"^unknown instance format 'xml' \(expected json or grpc\)$"):
        encode_instance("xml", "h", 1)


def test_instance_key() -> None:
    assert instance_key("/svc/", "api", "i1", "json", "h", 80) == "/svc/api/i1"
    assert instance_key("/svc/", "api", None, "grpc", "::1", 80) == "/svc/api/[::1]:80"
    assert instance_key("/svc/", "api", "i1", "grpc", "h", 80) == "/svc/api/h:80"
    with pytest.raises(ValueError, match=r"^an instance id is required for the json format$"):
        instance_key("/svc/", "api", "", "json", "h", 80)
    with pytest.raises(ValueError, match=r"^an instance id is required for the json format$"):
        instance_key("/svc/", "api", None, "json", "h", 80)
    with pytest.raises(ValueError, match=r"^unknown instance format 'xml' \(expected json or grpc\)$"):
        instance_key("/svc/", "api", "i1", "xml", "h", 80)


@pytest.mark.parametrize("key, value, fmt, decoded", [
    ("/svc/api/i1", '{"host":"h","port":80}', "json", ("i1", "h", 80, None)),
    (b"/svc/api/i\xc3\xa9", b'{"host":"h","port":80,"metadata":{"a":1},"x":2}', "json", ("ié", "h", 80, {"a": 1})),
    ("i1", '{"host":"h","port":0}', "json", ("i1", "h", 0, None)),
    ("/svc/api/n", '{"host":"h","port":"8080"}', "json", ("n", "h", 8080, None)),
    ("/svc/api/n", '{"host":"h","port":"1"}', "json", ("n", "h", 1, None)),
    ("/svc/api/n", '{"host":"h","port":"65535"}', "json", ("n", "h", 65535, None)),
    ("/svc/api/h:80", '{"Op":0,"Addr":"h:80","Metadata":null}', "grpc", ("h:80", "h", 80, None)),
    ("/svc/api/x", '{"Addr":"[::1]:65535"}', "grpc", ("x", "::1", 65535, None)),
    ("/svc/api/x", '{"Addr":"h:1","Metadata":"{\\"a\\":1}"}', "grpc", ("x", "h", 1, {"a": 1})),
    ("/svc/api/x", '{"Addr":"h:1","Metadata":"not json"}', "grpc", ("x", "h", 1, "not json")),
    ("/svc/api/x", '{"Addr":"h:1","Metadata":{"a":1}}', "grpc", ("x", "h", 1, {"a": 1})),
    ("/svc/api/x", '{"Addr":"a:b:1"}', "grpc", ("x", "a:b", 1, None)),
    ("/svc/api/x", '{"Addr":"[h:1"}', "grpc", ("x", "[h", 1, None)),
    ("/svc/api/x", '{"Addr":"h]:1"}', "grpc", ("x", "h]", 1, None)),
])
def test_decode_instance(key: str | bytes, value: str, fmt: str, decoded: tuple[object, ...]) -> None:
    assert decode_instance(key, value, fmt) == decoded


@pytest.mark.parametrize("key, value, fmt, message", [
    ("/svc/api/", '{"host":"h","port":80}', "json", "key has no instance id"),
    ("/svc/api/i", "{", "json", "value is not JSON: JSONDecodeError"),
    ("/svc/api/i", b"\xff", "json", "value is not JSON: UnicodeDecodeError"),
    ("/svc/api/i", None, "json", "value is not JSON: TypeError"),
    ("/svc/api/i", "[]", "json", "value is not a JSON object"),
    ("/svc/api/i", '{"port":80}', "json", "value has no string 'host'"),
    ("/svc/api/i", '{"host":"","port":80}', "json", "value has no string 'host'"),
    ("/svc/api/i", '{"host":1,"port":80}', "json", "value has no string 'host'"),
    ("/svc/api/i", '{"host":"h"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":"8o"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":"0"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":"65536"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":" 80"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":"\u0668\u0660"}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":""}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"host":"h","port":true}', "json", "value has no integer 'port'"),
    ("/svc/api/i", '{"Op":1,"Addr":"h:1"}', "grpc", "value is not an Add operation (Op != 0)"),
    ("/svc/api/i", '{"Op":null,"Addr":"h:1"}', "grpc", "value is not an Add operation (Op != 0)"),
    ("/svc/api/i", '{"Op":0}', "grpc", "value has no string 'Addr'"),
    ("/svc/api/i", '{"Addr":1}', "grpc", "value has no string 'Addr'"),
    ("/svc/api/i", '{"Addr":"h"}', "grpc", "Addr is not host:port"),
    ("/svc/api/i", '{"Addr":":80"}', "grpc", "Addr is not host:port"),
    ("/svc/api/i", '{"Addr":"h:"}', "grpc", "Addr is not host:port"),
    ("/svc/api/i", '{"Addr":"h:-1"}', "grpc", "Addr is not host:port"),
    ("/svc/api/i", '{"Addr":"h:0"}', "grpc", "port out of range"),
    ("/svc/api/i", '{"Addr":"h:65536"}', "grpc", "port out of range"),
    ("/svc/api/i", '{"host":"h","port":1}', "xml", "unknown instance format 'xml' (expected json or grpc)"),
])
def test_decode_instance_refusals(key: str, value: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        decode_instance(key, value, fmt)
    assert str(e.value) == message
    assert e.value.__suppress_context__ is message.startswith("value is not JSON")  # no chained JSON error


@pytest.mark.parametrize("fmt, host, port, metadata", [
    ("json", "h", 80, {"a": [1, "é"]}), ("grpc", "::1", 443, {"a": 1}), ("grpc", "h", 1, None),
])
def test_encode_then_decode(fmt: str, host: str, port: int, metadata: dict[str, object] | None) -> None:
    key = instance_key("/s/", "api", "i1", fmt, host, port)
    assert decode_instance(key, encode_instance(fmt, host, port, metadata), fmt)[1:] == (host, port, metadata)
