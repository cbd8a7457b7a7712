"""Value rules of DESIGN.md section 2: what bytes each manifest value becomes (pure, no etcd)."""

from __future__ import annotations

import json
import string
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdsync.core.instances import decode_instance, encode_grpc, encode_instance, encode_json, grpc_addr, instance_key
from etcdsync.core.model import Policy
from etcdsync.errors import ManifestError
from etcdsync.manifest import load_manifests

HEADER = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: app
spec:
  prefix: /c/
  data:
"""


def load_text(tmp_path: Path, text: str, name: str = "m.yaml", environ: dict[str, str] | None = None):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_manifests([path], environ=environ or {})


def data_doc(body: str) -> str:
    return HEADER + textwrap.indent(textwrap.dedent(body), "    ")


def value_of(tmp_path: Path, entry: str, environ: dict[str, str] | None = None) -> bytes:
    """Load a ConfigSet whose data is `entry` (for key `k`) and return the bytes of /c/k."""
    state = load_text(tmp_path, data_doc(entry), environ=environ)
    return state.keys["/c/k"].value


# ------------------------------------------------------------------------------------------------
# scalars: written exactly as their text

@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("k: no", b"no", id="no"),
        pytest.param("k: on", b"on", id="on"),
        pytest.param("k: yes", b"yes", id="yes"),
        pytest.param("k: off", b"off", id="off"),
        pytest.param("k: 1.10", b"1.10", id="1.10"),
        pytest.param("k: 0755", b"0755", id="octal-looking"),
        pytest.param("k: 1e3", b"1e3", id="exponent"),
        pytest.param("k: 0x1F", b"0x1F", id="hex"),
        pytest.param("k: +5", b"+5", id="plus"),
        pytest.param("k: .inf", b".inf", id="inf-as-text"),
        pytest.param("k: ~", b"~", id="tilde"),
        pytest.param("k: null", b"null", id="null"),
        pytest.param("k: true", b"true", id="true"),
        pytest.param("k: True", b"True", id="True"),
        pytest.param("k: 5", b"5", id="int"),
        pytest.param("k:", b"", id="empty"),
        pytest.param("k:    # a comment", b"", id="empty-with-comment"),
        pytest.param("k: value # a comment", b"value", id="trailing-comment"),
        pytest.param('k: "quoted: yes"', b"quoted: yes", id="double-quoted"),
        pytest.param("k: 'single ''q'''", b"single 'q'", id="single-quoted"),
        pytest.param('k: "1.10"', b"1.10", id="quoted-number"),
        pytest.param('k: ""', b"", id="quoted-empty"),
        pytest.param('k: "tab\\there\\n"', b"tab\there\n", id="escapes"),
        pytest.param("k: |\n  line1\n  line2\n", b"line1\nline2\n", id="literal-block"),
        pytest.param("k: |-\n  line1\n  line2\n", b"line1\nline2", id="literal-strip"),
        pytest.param("k: >\n  folded\n  text\n", b"folded text\n", id="folded-block"),
        pytest.param("k: plain\n  continued\n", b"plain continued", id="multi-line-plain"),
        pytest.param("k: héllo ✓ 日本", "héllo ✓ 日本".encode(), id="unicode"),
        pytest.param("k: postgres://db:5432/pay?x=1", b"postgres://db:5432/pay?x=1", id="url"),
        pytest.param("k: !!str 5", b"5", id="str-tag"),
        pytest.param("k: !!int 0755", b"0755", id="int-tag-keeps-text"),
        pytest.param("k: 'a: b'", b"a: b", id="colon-in-quotes"),
    ],
)
def test_scalar_is_written_as_its_text(tmp_path: Path, entry: str, expected: bytes) -> None:
    assert value_of(tmp_path, entry) == expected


# ------------------------------------------------------------------------------------------------
# mappings and lists: compact JSON, YAML 1.2 core typing, numbers as written

@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("k: {beta: true, limit: 3}", '{"beta":true,"limit":3}', id="design-example"),
        pytest.param("k: {a: no, b: on, c: yes, d: off}", '{"a":"no","b":"on","c":"yes","d":"off"}', id="1.1-booleans-stay-strings"),
        pytest.param("k: [true, True, TRUE, false, False, FALSE]", "[true,true,true,false,false,false]", id="booleans"),
        pytest.param("k: {a: null, b: ~, c: Null, d: NULL, e: }", '{"a":null,"b":null,"c":null,"d":null,"e":null}', id="nulls"),
        pytest.param("k: [1.10, 1e3, 1E3, 2.5e-3, -7, 0, -0, 12]", "[1.10,1e3,1E3,2.5e-3,-7,0,-0,12]", id="json-numbers-verbatim"),
        pytest.param("k: [+5, 0o17, 0x1F, .5, -.5, 0755, 1., +1.5e3, 007.50, 1.e2]", "[5,15,31,0.5,-0.5,755,1.0,1.5e3,7.50,1.0e2]", id="numbers-normalized"),
        pytest.param('k: ["1", \'true\', "null", "1.10"]', '["1","true","null","1.10"]', id="quoted-are-strings"),
        pytest.param("k: {z: 1, a: 2, m: 3}", '{"z":1,"a":2,"m":3}', id="key-order"),
        pytest.param("k: {a: {b: [no, {c: off, d: [y, n]}]}}", '{"a":{"b":["no",{"c":"off","d":["y","n"]}]}}', id="nested-no"),
        pytest.param("k: {k: é✓, ü: 日本}", '{"k":"é✓","ü":"日本"}', id="unicode"),
        pytest.param("k: {1: a, true: b, null: c, 1.10: d}", '{"1":"a","true":"b","null":"c","1.10":"d"}', id="keys-are-text"),
        pytest.param("k: {q: 'he said \"hi\"', b: 'back\\slash'}", '{"q":"he said \\"hi\\"","b":"back\\\\slash"}', id="json-escaping"),
        pytest.param("k: {}", "{}", id="empty-map"),
        pytest.param("k: []", "[]", id="empty-list"),
        pytest.param("k: [a, [b, [c]]]", '["a",["b",["c"]]]', id="nested-lists"),
        pytest.param("k:\n  a: 1\n  b: [x, y]\n  c:\n    - d: no\n", '{"a":1,"b":["x","y"],"c":[{"d":"no"}]}', id="block-style"),
        pytest.param("k: [!!int '5', !!str 5, !!float 1, !!bool 'true', !!null '']", '[5,"5",1,true,null]', id="core-tags"),
        pytest.param("k:\n  - |\n    line\n", '["line\\n"]', id="block-scalar-in-list"),
        pytest.param("k: [.NaN-ish, inf, nan, 1_000, 1:30]", '[".NaN-ish","inf","nan","1_000","1:30"]', id="1.1-numbers-are-strings"),
        pytest.param("k: [0o8, 0xG, 1e, +.e3]", '["0o8","0xG","1e","+.e3"]', id="not-numbers"),
    ],
)
def test_mapping_or_list_is_compact_json(tmp_path: Path, entry: str, expected: str) -> None:
    value = value_of(tmp_path, entry)
    assert value == expected.encode("utf-8")
    json.loads(value)  # always valid JSON


def test_aliases_reuse_the_anchored_value(tmp_path: Path) -> None:
    state = load_text(tmp_path, data_doc("a: &x {k: no, n: 1.10}\nb: *x\nc: &s plain\nd: *s\n"))
    assert state.keys["/c/a"].value == b'{"k":"no","n":1.10}'
    assert state.keys["/c/b"].value == b'{"k":"no","n":1.10}'
    assert state.keys["/c/d"].value == b"plain"


@pytest.mark.parametrize("text", [".inf", "-.inf", "+.INF", ".nan", ".NaN", "!!float .inf"])
def test_inf_and_nan_inside_json_are_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ManifestError) as ei:
        value_of(tmp_path, f"k: [1, {text}]")
    e = ei.value
    assert "not representable in JSON" in e.message
    assert (e.line, e.column) == (8, 12)


# ------------------------------------------------------------------------------------------------
# the long form

@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("k: {value: hello}", b"hello", id="scalar"),
        pytest.param("k: {value: no}", b"no", id="scalar-no"),
        pytest.param("k: {value: 1.10}", b"1.10", id="scalar-number"),
        pytest.param("k: {value: }", b"", id="empty"),
        pytest.param("k: {value: {a: 1, b: no}}", b'{"a":1,"b":"no"}', id="json-map"),
        pytest.param("k: {value: [1, x]}", b'[1,"x"]', id="json-list"),
        pytest.param("k: {value: {value: x}}", b'{"value":"x"}', id="json-that-looks-like-long-form"),
        pytest.param("k: {value: {secret: true, policy: warn}}", b'{"secret":true,"policy":"warn"}', id="json-of-options"),
        pytest.param("k:\n  value: |\n    multi\n  policy: warn\n", b"multi\n", id="block"),
        pytest.param("k: {value: x, secret: false, prune: true}", b"x", id="all-options"),
        pytest.param("k: {value: x, other: y}", b'{"value":"x","other":"y"}', id="not-all-options-is-json"),
        pytest.param("k: {Value: x}", b'{"Value":"x"}', id="option-names-are-case-sensitive"),
    ],
)
def test_long_form_value(tmp_path: Path, entry: str, expected: bytes) -> None:
    assert value_of(tmp_path, entry) == expected


@pytest.mark.parametrize(
    ("entry", "policy", "prune", "secret"),
    [
        pytest.param("k: x", Policy.ENFORCE, True, False, id="defaults"),
        pytest.param("k: {value: x, policy: warn}", Policy.WARN, True, False, id="policy-warn"),
        pytest.param("k: {value: x, policy: create-only}", Policy.CREATE_ONLY, True, False, id="policy-create-only"),
        pytest.param("k: {value: x, prune: false}", Policy.ENFORCE, False, False, id="prune-false"),
        pytest.param("k: {value: x, secret: true}", Policy.ENFORCE, True, True, id="secret"),
        pytest.param("k: {fromEnv: TOKEN, secret: true, policy: create-only, prune: false}", Policy.CREATE_ONLY, False, True, id="all"),
    ],
)
def test_long_form_options(tmp_path: Path, entry: str, policy: Policy, prune: bool, secret: bool) -> None:
    state = load_text(tmp_path, data_doc(entry), environ={"TOKEN": "t0k"})
    dk = state.keys["/c/k"]
    assert (dk.policy, dk.prune, dk.secret) == (policy, prune, secret)


def test_document_policy_and_prune_are_defaults_for_keys(tmp_path: Path) -> None:
    text = HEADER.replace("  data:\n", "  policy: warn\n  prune: false\n  data:\n") + textwrap.indent(
        "a: 1\nb: {value: 2, policy: enforce, prune: true}\n", "    "
    )
    state = load_text(tmp_path, text)
    a, b = state.keys["/c/a"], state.keys["/c/b"]
    assert (a.policy, a.prune) == (Policy.WARN, False)
    assert (b.policy, b.prune) == (Policy.ENFORCE, True)


def test_from_file_is_relative_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    pem = b"-----BEGIN CERT-----\n\x00\xff binary ok\n"
    (tmp_path / "certs" / "tls.pem").write_bytes(pem)
    (tmp_path / "manifests" / "files").mkdir(parents=True)
    (tmp_path / "manifests" / "files" / "a.txt").write_bytes(b"a")
    text = data_doc("k: {fromFile: ../certs/tls.pem}\na: {fromFile: files/a.txt}\n")
    path = tmp_path / "manifests" / "app.yaml"
    path.write_text(text)
    state = load_manifests([path], environ={}, file_roots=[tmp_path / "certs"])
    assert state.keys["/c/k"].value == pem
    assert state.keys["/c/a"].value == b"a"


def test_from_env(tmp_path: Path) -> None:
    assert value_of(tmp_path, "k: {fromEnv: PAY_TOKEN}", environ={"PAY_TOKEN": "s3cr3t é"}) == "s3cr3t é".encode()


def test_from_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_TEST_VALUE", "from-os")
    path = tmp_path / "m.yaml"
    path.write_text(data_doc("k: {fromEnv: EXAMPLE_TEST_VALUE}"))
    assert load_manifests([path]).keys["/c/k"].value == b"from-os"


def test_from_env_set_but_empty_is_the_empty_value(tmp_path: Path) -> None:
    assert value_of(tmp_path, "k: {fromEnv: EMPTY}", environ={"EMPTY": ""}) == b""


# ------------------------------------------------------------------------------------------------
# keys, sources, document fields

def test_keys_sources_and_document(tmp_path: Path) -> None:
    state = load_text(tmp_path, data_doc("db/url: x\nz: 1\na: {value: 2}\n"))
    assert list(state.keys) == ["/c/a", "/c/db/url", "/c/z"]  # ordered by key
    dk = state.keys["/c/db/url"]
    assert dk.prefix == "/c/"
    assert dk.document == "ConfigSet/app"
    assert (dk.source.file, dk.source.line, dk.source.column) == (str(tmp_path / "m.yaml"), 8, 5)
    assert state.keys["/c/a"].source.line == 10
    assert state.prefixes == ("/c/",)


@pytest.mark.parametrize(
    ("key", "full"),
    [
        ("plain", "/c/plain"),
        ("a/b/c", "/c/a/b/c"),
        ("'1.10'", "/c/1.10"),
        ("1.10", "/c/1.10"),
        ("no", "/c/no"),
        ("ünï/cödé", "/c/ünï/cödé"),
        ("a..b", "/c/a..b"),
        (".hidden", "/c/.hidden"),
    ],
)
def test_key_is_prefix_plus_relative_key_text(tmp_path: Path, key: str, full: str) -> None:
    state = load_text(tmp_path, data_doc(f"{key}: v\n"))
    assert list(state.keys) == [full]


# ------------------------------------------------------------------------------------------------
# service instances

SERVICE = """\
apiVersion: etcdsync/v1
kind: Service
metadata:
  name: my_service
spec:
"""


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        pytest.param(
            "instances:\n  - {id: instance_1, host: localhost, port: 3000, metadata: {zone: a}}",
            "/services/my_service/instance_1",
            b'{"host":"localhost","port":3000,"metadata":{"zone":"a"}}',
            id="json-with-metadata",
        ),
        pytest.param(
            "instances:\n  - {id: i1, host: 10.0.0.1, port: 80}",
            "/services/my_service/i1",
            b'{"host":"10.0.0.1","port":80}',
            id="json-without-metadata",
        ),
        pytest.param(
            "prefix: /reg/\ninstances:\n  - {id: 7, host: h, port: 1, metadata: {w: 1.10, z: no, on: [true, ~]}}",
            "/reg/my_service/7",
            b'{"host":"h","port":1,"metadata":{"w":1.10,"z":"no","on":[true,null]}}',
            id="json-metadata-core-typing",
        ),
        pytest.param(
            "format: grpc\ninstances:\n  - {host: 10.0.0.1, port: 50051, metadata: {zone: a}}",
            "services/my_service/10.0.0.1:50051",
            b'{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"{\\"zone\\":\\"a\\"}"}',
            id="grpc-with-metadata",
        ),
        pytest.param(
            "format: grpc\nprefix: reg/\ninstances:\n  - {id: x, host: h, port: 9}",
            "reg/my_service/h:9",
            b'{"Op":0,"Addr":"h:9","Metadata":null}',
            id="grpc-without-metadata",
        ),
        pytest.param(
            "format: grpc\ninstances:\n  - {host: '::1', port: 9}",
            "services/my_service/[::1]:9",
            b'{"Op":0,"Addr":"[::1]:9","Metadata":null}',
            id="grpc-ipv6",
        ),
    ],
)
def test_static_service_instance(tmp_path: Path, spec: str, key: str, value: bytes) -> None:
    state = load_text(tmp_path, SERVICE + textwrap.indent(spec, "  ") + "\n")
    assert list(state.keys) == [key]
    dk = state.keys[key]
    assert dk.value == value
    assert dk.policy == Policy.ENFORCE and dk.prune and not dk.secret
    assert dk.document == "Service/my_service"
    assert dk.prefix == key[: key.rindex("/") + 1]
    assert dk.source.line == SERVICE.count("\n") + spec.count("\n") + 1
    assert state.live == ()
    assert state.prefixes == (dk.prefix,)


def test_live_instances_ttl_and_check_inheritance(tmp_path: Path) -> None:
    spec = """\
ttl: 10s
check: {http: /healthz, interval: 1m30s, timeout: 500ms, failures: 2}
instances:
  - {id: a, host: h, port: 1}
  - {id: b, host: h, port: 2, ttl: 1.5, check: {tcp: true}}
  - {id: c, host: h, port: 3, ttl: 2h}
"""
    state = load_text(tmp_path, SERVICE + textwrap.indent(spec, "  "))
    assert state.keys == {}
    a, b, c = state.live
    assert (a.id, a.ttl, a.check.kind, a.check.path, a.check.interval, a.check.timeout, a.check.failures) == (
        "a", 10.0, "http", "/healthz", 90.0, 0.5, 2,
    )
    assert (b.ttl, b.check.kind, b.check.interval, b.check.timeout, b.check.failures) == (1.5, "tcp", 5.0, 2.0, 3)
    assert (c.ttl, c.check.path) == (7200.0, "/healthz")
    assert a.key == "/services/my_service/a" and a.value == b'{"host":"h","port":1}'
    assert a.prefix == "/services/my_service/" and a.format == "json" and a.live
    assert a.document == "Service/my_service" and a.source.line == 9
    assert state.prefixes == ("/services/my_service/",)


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [("10s", 10.0), ("1.5s", 1.5), ("500ms", 0.5), ("1m", 60.0), ("1m30s", 90.0), ("2h", 7200.0), ("3", 3.0), ("0.25", 0.25), ("1h1m1s1ms", 3661.001)],
)
def test_durations(tmp_path: Path, ttl: str, seconds: float) -> None:
    state = load_text(tmp_path, SERVICE + f"  ttl: {ttl}\n  instances:\n    - {{id: a, host: h, port: 1}}\n")
    assert state.live[0].ttl == pytest.approx(seconds)


def test_live_instance_metadata_is_parsed(tmp_path: Path) -> None:
    state = load_text(tmp_path, SERVICE + "  ttl: 5s\n  instances:\n    - {id: a, host: h, port: 1, metadata: {w: 2, tags: [x]}}\n")
    assert state.live[0].metadata == {"w": 2, "tags": ["x"]}


# ------------------------------------------------------------------------------------------------
# etcdsync.core.instances

@pytest.mark.parametrize(
    ("fmt", "metadata", "value"),
    [
        ("json", None, b'{"host":"h","port":80}'),
        ("json", {"zone": "a", "w": [1, None]}, b'{"host":"h","port":80,"metadata":{"zone":"a","w":[1,null]}}'),
        ("json", {"é": "✓"}, '{"host":"h","port":80,"metadata":{"é":"✓"}}'.encode()),
        ("grpc", None, b'{"Op":0,"Addr":"h:80","Metadata":null}'),
        ("grpc", {"zone": "a"}, b'{"Op":0,"Addr":"h:80","Metadata":"{\\"zone\\":\\"a\\"}"}'),
    ],
)
def test_encode_and_decode_instance(fmt: str, metadata: dict | None, value: bytes) -> None:
    assert encode_instance(fmt, "h", 80, metadata) == value
    assert (encode_json if fmt == "json" else encode_grpc)("h", 80, metadata) == value
    key = instance_key("/services/", "svc", "i1", fmt, "h", 80)
    assert key == ("/services/svc/i1" if fmt == "json" else "/services/svc/h:80")
    assert decode_instance(key, value, fmt) == (key.rsplit("/", 1)[1], "h", 80, metadata)


@pytest.mark.parametrize(
    ("key", "value", "fmt", "expected"),
    [
        ("/s/a/x", b'{"host":"h","port":1,"extra":true,"metadata":{"k":1}}', "json", ("x", "h", 1, {"k": 1})),
        ("/s/a/x", '{"host":"h","port":1}', "json", ("x", "h", 1, None)),
        ("s/a/[::1]:5", b'{"Op":0,"Addr":"[::1]:5"}', "grpc", ("[::1]:5", "::1", 5, None)),
        ("s/a/h:5", b'{"Addr":"h:5","Metadata":{"direct":1}}', "grpc", ("h:5", "h", 5, {"direct": 1})),
        ("s/a/h:5", b'{"Op":0,"Addr":"h:5","Metadata":"not json"}', "grpc", ("h:5", "h", 5, "not json")),
    ],
)
def test_decode_instance_is_lenient(key: str, value: bytes, fmt: str, expected: tuple) -> None:
    assert decode_instance(key, value, fmt) == expected


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (b"", "json"), (b"not json", "json"), (b"[1]", "json"), (b'{"host":"h"}', "json"), (b'{"host":"h","port":"eighty"}', "json"),
        (b'{"host":"h","port":true}', "json"), (b'{"host":1,"port":80}', "json"), (b"\xff\xfe", "json"),
        (b'{"Op":0}', "grpc"), (b'{"Op":0,"Addr":"nohostport"}', "grpc"), (b'{"Op":0,"Addr":"h:99999"}', "grpc"),
        (b'{"Op":1,"Addr":"h:1"}', "grpc"), (b'{"host":"h","port":1}', "xml"),
    ],
)
def test_decode_instance_rejects_garbage(value: bytes, fmt: str) -> None:
    with pytest.raises(ValueError):
        decode_instance("/s/a/x", value, fmt)


def test_instance_helpers_misc() -> None:
    assert grpc_addr("::1", 80) == "[::1]:80"
    assert grpc_addr("[::1]", 80) == "[::1]:80"
    with pytest.raises(ValueError):
        instance_key("/s/", "a", None, "json", "h", 1)
    with pytest.raises(ValueError):
        encode_instance("xml", "h", 1)


# ------------------------------------------------------------------------------------------------
# properties

_SAFE_TEXT = st.one_of(
    st.text(alphabet="abcdfghijklmpqrstuvwxyzAB _-/é✓\"'\\:#{}[],&*!|>%@`", max_size=12),
    st.sampled_from(["no", "on", "yes", "off", "~", "null", "true", "True", "1.10", "0755", "0x1F", "", " ", "-", "?", ": "]),
)
_JSONABLE = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False), _SAFE_TEXT,
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_SAFE_TEXT, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.one_of(st.lists(_JSONABLE, max_size=4), st.dictionaries(_SAFE_TEXT, _JSONABLE, max_size=4)), flow=st.booleans())
def test_property_yaml_dumped_structure_round_trips_as_json(tmp_path: Path, obj: object, flow: bool) -> None:
    """Any JSON-like structure dumped by PyYAML (which quotes 1.1 booleans etc.) becomes exactly its
    own compact JSON, unless it looks like the long form (then it must be wrapped in {value: ...})."""
    if isinstance(obj, dict) and obj and all(k in {"value", "fromFile", "fromEnv", "secret", "policy", "prune"} for k in obj):
        obj = {"value": obj}
        expected_obj = obj["value"]
    else:
        expected_obj = obj
    dumped = yaml.safe_dump({"k": obj}, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    value = value_of(tmp_path, dumped)
    assert json.loads(value) == expected_obj
    assert value == json.dumps(expected_obj, separators=(",", ":"), ensure_ascii=False).encode() or _floats_in(expected_obj)


def _floats_in(obj: object) -> bool:
    if isinstance(obj, float):
        return True
    if isinstance(obj, dict):
        return any(_floats_in(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_floats_in(v) for v in obj)
    return False


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.ascii_letters + string.digits + " ./-_é", min_size=1, max_size=30))
def test_property_plain_scalar_text_is_kept(tmp_path: Path, text: str) -> None:
    """Any scalar that PyYAML dumps as a (possibly quoted) string arrives exactly as that string."""
    dumped = yaml.safe_dump({"k": text}, allow_unicode=True, width=1000)
    assert value_of(tmp_path, dumped) == text.encode()
