"""Every rejection of DESIGN.md section 2: a ManifestError naming file, line and column (pure)."""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdsync.errors import ManifestError
from etcdsync.manifest import load_manifests, yamlnodes
from etcdsync.manifest.loader import MAX_KEY_VALUE_BYTES

H = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: app
spec:
  prefix: /c/
  data:
"""
S = """\
apiVersion: etcdsync/v1
kind: Service
metadata:
  name: svc
spec:
"""
DOC = "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: a}\n"


@pytest.fixture(params=["C", "pure"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's C parser and with PyYAML's pure-Python one."""
    if request.param == "C":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("no libyaml")
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.SafeLoader)
    return request.param


def load_error(tmp_path: Path, content: str | bytes, environ: dict[str, str] | None = None, name: str = "m.yaml") -> ManifestError:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    with pytest.raises(ManifestError) as ei:
        load_manifests([path], environ=environ or {})
    e = ei.value
    assert e.file == str(path)
    assert "\n" not in str(e)
    return e


# (content, message fragment, line, column)
CASES = {
    # structure
    "unknown-field": ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata:\n  name: app\nspec:\n  prefx: /c/\n", "unknown field 'prefx' in spec (did you mean 'prefix'?)", 6, 3),
    "unknown-top-level-field": (DOC + "spec: {prefix: /c/}\nextra: 1\n", "unknown field 'extra'", 5, 1),
    "unknown-metadata-field": (DOC.replace("{name: a}", "{name: a, namespace: x}") + "spec: {prefix: /c/}\n", "unknown field 'namespace' in metadata", 3, 21),
    "unknown-instance-field": (S + "  instances:\n    - {id: a, host: h, port: 80, weight: 1}\n", "unknown field 'weight' in spec.instances[0]", 7, 34),
    "applyset-spec-field": ("apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: a}\nspec: {x: 1}\n", "unknown field 'x' in spec", 4, 8),
    "unknown-apiVersion": ("apiVersion: etcdsync/v2\nkind: ConfigSet\n", "unknown apiVersion 'etcdsync/v2' (expected etcdsync/v1)", 1, 13),
    "unknown-kind": ("apiVersion: etcdsync/v1\nkind: ConfigMap\n", "unknown kind 'ConfigMap' (expected one of ConfigSet, Service, ApplySet)", 2, 7),
    "missing-apiVersion": ("kind: ConfigSet\n", "missing required field 'apiVersion'", 1, 1),
    "missing-kind": ("apiVersion: etcdsync/v1\n", "missing required field 'kind'", 1, 1),
    "missing-metadata": ("apiVersion: etcdsync/v1\nkind: ConfigSet\nspec: {prefix: /c/}\n", "missing required field 'metadata'", 1, 1),
    "missing-name": ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {}\nspec: {prefix: /c/}\n", "missing required field 'name' in metadata", 3, 11),
    "empty-name": ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: ''}\nspec: {prefix: /c/}\n", "metadata.name must not be empty", 3, 18),
    "name-not-string": ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: [a]}\nspec: {prefix: /c/}\n", "metadata.name must be a string, not a list", 3, 18),
    "label-not-string": ("apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: a, labels: {x: 1}}\n", "metadata.labels.x must be a string", 3, 33),
    "missing-spec": (DOC, "missing required field 'spec'", 1, 1),
    "null-spec": (DOC + "spec:\n", "spec must be a mapping, not null", 4, 6),
    "missing-prefix": (DOC + "spec: {data: {a: 1}}\n", "missing required field 'prefix' in spec", 4, 7),
    "document-is-scalar": ("hello\n", "a manifest document must be a mapping", 1, 1),
    "document-is-list": ("- a\n", "a manifest document must be a mapping", 1, 1),
    "policy-enum": (DOC + "spec: {prefix: /c/, policy: enforced}\n", "invalid spec.policy 'enforced': expected one of enforce, warn, create-only", 4, 29),
    "prune-not-bool": (DOC + "spec: {prefix: /c/, prune: no}\n", "spec.prune must be true or false, not a string", 4, 28),
    "data-is-list": (H + "    - a\n", "spec.data must be a mapping, not a list", 8, 5),
    "second-document-error": (DOC + "spec: {prefix: /c/}\n---\n" + DOC + "spec: {prefix: /d/, bad: 1}\n", "unknown field 'bad' in spec", 9, 21),
    # YAML syntax
    "invalid-yaml-flow": (H + "    a: [1, 2\n", "invalid YAML", 9, 1),
    "invalid-yaml-mapping": (H + "    a: b: c\n", "invalid YAML: mapping values are not allowed", 8, 9),
    "tab-indentation": (H + "    a: 1\n\tb: 2\n", "invalid YAML", 9, 1),
    "duplicate-key": (H + "    a: 1\n    b: 2\n    a: 3\n", "duplicate key 'a' (first defined at line 8)", 10, 5),
    "duplicate-key-quoted": (H + "    a: 1\n    'a': 2\n", "duplicate key 'a' (first defined at line 8)", 9, 5),
    "duplicate-key-in-json": (H + "    a: {x: 1, y: 2, x: 3}\n", "duplicate key 'x'", 8, 21),
    "duplicate-key-structure": (DOC + "spec:\n  prefix: /c/\n  prefix: /d/\n", "duplicate key 'prefix' (first defined at line 5)", 6, 3),
    "non-scalar-key": (H + "    ? {a: 1}\n    : x\n", "mapping keys must be scalars", 8, 7),
    "alias-to-map-as-key": (H + "    a: &m {x: 1}\n    *m : 2\n", "mapping keys must be scalars", 9, 5),
    "merge-key": (H + "    base: &b {x: 1}\n    a:\n      <<: *b\n      y: 2\n", "merge keys ('<<') are not supported", 10, 7),
    "recursive-alias": (H + "    a: &a [1, *a]\n", "recursive alias '*a'", 8, 15),
    "undefined-alias": (H + "    a: *nope\n", "undefined alias '*nope'", 8, 8),
    "control-character": (H + "    a: x\x07y\n", "control character U+0007 is not allowed", 8, 9),
    # tags
    "python-tag": (H + "    a: !!python/object/apply:os.system ['echo pwned']\n", "tag '!!python/object/apply:os.system' is not allowed", 8, 8),
    "python-tag-verbatim": (H + "    a: !<tag:yaml.org,2002:python/name:os.system> x\n", "tag '!!python/name:os.system' is not allowed", 8, 8),
    "custom-tag": (H + "    a: !foo bar\n", "tag '!foo' is not allowed", 8, 8),
    "custom-tag-on-map": (H + "    a: !foo {x: 1}\n", "tag '!foo' is not allowed", 8, 8),
    "non-specific-tag": (H + "    a: ! x\n", "tag '!' is not allowed", 8, 8),
    "binary-tag": (H + "    a: !!binary aGk=\n", "tag '!!binary' is not allowed", 8, 8),
    "set-tag": (H + "    a: !!set {x}\n", "tag '!!set' is not allowed", 8, 8),
    "tag-directive": ("%TAG !e! tag:example.com,2000:\n---\n" + H + "    a: !e!x y\n", "tag 'tag:example.com,2000:x' is not allowed", 10, 8),
    "map-tag-on-scalar": (H + "    a: !!map x\n", "tag '!!map' cannot be used on a scalar", 8, 8),
    "int-tag-on-list": (H + "    a: !!int [1]\n", "tag '!!int' cannot be used on a list", 8, 8),
    "int-tag-mismatch": (H + "    a: [!!int x]\n", "value tagged '!!int' is not an integer", 8, 9),
    "null-tag-mismatch": (H + "    a: [!!null x]\n", "value tagged '!!null' is not null", 8, 9),
    # keys
    "key-dotdot": (H + "    ../etc/passwd: 1\n", "key '../etc/passwd' contains a '.' or '..' path segment", 8, 5),
    "key-inner-dotdot": (H + "    a/../../b: 1\n", "'..' path segment", 8, 5),
    "key-trailing-dotdot": (H + "    a/..: 1\n", "'..' path segment", 8, 5),
    "key-dot": (H + "    a/./b: 1\n", "'.' or '..' path segment", 8, 5),
    "prefix-dotdot": (DOC + "spec:\n  prefix: /c/../d/\n", "prefix '/c/../d/' contains a '.' or '..' path segment", 5, 11),
    "key-nul": (H + '    "a\\0b": 1\n', "key 'a\\u0000b' contains a control character", 8, 5),
    "key-newline": (H + '    "a\\nb": 1\n', "contains a control character", 8, 5),
    "prefix-nul": (DOC + 'spec:\n  prefix: "/c\\0/"\n', "contains a control character", 5, 11),
    "key-leading-slash": (H + "    /abs: 1\n", "key '/abs' must be relative to the prefix", 8, 5),
    "key-empty": (H + '    "": 1\n', "empty key in data", 8, 5),
    "prefix-relative": (DOC + "spec: {prefix: c/}\n", "spec.prefix must start and end with '/'", 4, 16),
    "prefix-reserved": (DOC + "spec:\n  prefix: /.etcdsync/x/\n", "prefix '/.etcdsync/x/' is under etcdsync's reserved prefix /.etcdsync/", 5, 11),
    "key-reserved": (DOC + "spec:\n  prefix: /\n  data:\n    .etcdsync/inventory: x\n", "key '/.etcdsync/inventory' is under etcdsync's reserved prefix", 7, 5),
    # values
    "inf-in-json": (H + "    a: {x: .inf}\n", "infinity and NaN are not representable in JSON", 8, 12),
    "nan-in-json": (H + "    a: [.NaN]\n", "infinity and NaN are not representable in JSON", 8, 9),
    "long-form-without-source": (H + "    a: {secret: true, policy: warn}\n", "looks like the long form (only option keys) but has none of value, fromFile, fromEnv; to store such a mapping as JSON, write {{value: {{...}}}}", 8, 8),
    "long-form-two-sources": (H + "    a: {value: x, fromEnv: Y}\n", "has more than one of value, fromFile, fromEnv", 8, 8),
    "long-form-bad-policy": (H + "    a: {value: x, policy: bogus}\n", "invalid policy 'bogus': expected one of enforce, warn, create-only", 8, 27),
    "long-form-secret-not-bool": (H + "    a: {value: x, secret: yes}\n", "option 'secret' must be true or false", 8, 27),
    "long-form-prune-not-bool": (H + "    a: {value: x, prune: 0}\n", "option 'prune' must be true or false", 8, 26),
    "long-form-empty-fromEnv": (H + "    a: {fromEnv: ''}\n", "option 'fromEnv' must be a non-empty string", 8, 18),
    "long-form-fromFile-map": (H + "    a: {fromFile: {x: 1}}\n", "option 'fromFile' must be a non-empty string", 8, 19),
    # services
    "grpc-prefix-leading-slash": (S + "  format: grpc\n  prefix: /services/\n", "prefix '/services/' must not start with '/' for the grpc format: gRPC's etcd resolver strips one leading slash", 7, 11),
    "json-prefix-relative": (S + "  prefix: services/\n", "prefix 'services/' must start with '/'", 6, 11),
    "port-too-large": (S + "  instances:\n    - {id: a, host: h, port: 70000}\n", "spec.instances[0].port must be between 1 and 65535, not 70000", 7, 30),
    "port-zero": (S + "  instances:\n    - {id: a, host: h, port: 0}\n", "must be between 1 and 65535", 7, 30),
    "port-string": (S + "  instances:\n    - {id: a, host: h, port: '80'}\n", "spec.instances[0].port must be an integer, not a string", 7, 30),
    "port-float": (S + "  instances:\n    - {id: a, host: h, port: 80.5}\n", "must be an integer", 7, 30),
    "missing-port": (S + "  instances:\n    - {id: a, host: h}\n", "missing required field 'port' in spec.instances[0]", 7, 7),
    "missing-host": (S + "  instances:\n    - {id: a, port: 80}\n", "missing required field 'host' in spec.instances[0]", 7, 7),
    "missing-id-json": (S + "  instances:\n    - {host: h, port: 80}\n", "missing required field 'id' in spec.instances[0]", 7, 7),
    "duplicate-instance-id": (S + "  instances:\n    - {id: a, host: h, port: 80}\n    - {id: a, host: h, port: 81}\n", "duplicate instance id 'a' in service 'svc' (first at line 7)", 8, 12),
    "duplicate-grpc-address": (S + "  format: grpc\n  instances:\n    - {host: h, port: 80}\n    - {host: h, port: 80}\n", "duplicate instance id 'h:80'", 9, 7),
    "instance-id-slash": (S + "  instances:\n    - {id: a/b, host: h, port: 80}\n", "instance id 'a/b' must not contain '/'", 7, 12),
    "instance-id-dotdot": (S + "  instances:\n    - {id: '..', host: h, port: 80}\n", "instance id '..' must not be '.' or contain '..'", 7, 12),
    "instance-id-control": (S + '  instances:\n    - {id: "a\\tb", host: h, port: 80}\n', "contains a control character", 7, 12),
    "host-slash": (S + "  instances:\n    - {id: a, host: h/x, port: 80}\n", "host 'h/x' must not contain '/'", 7, 21),
    "service-name-slash": ("apiVersion: etcdsync/v1\nkind: Service\nmetadata: {name: a/b}\nspec: {}\n", "service name 'a/b' must not contain '/'", 3, 18),
    "service-name-dotdot": ("apiVersion: etcdsync/v1\nkind: Service\nmetadata: {name: ..}\nspec: {}\n", "service name '..'", 3, 18),
    "format-enum": (S + "  format: xml\n", "invalid spec.format 'xml': expected one of json, grpc", 6, 11),
    "ttl-invalid": (S + "  ttl: 10 seconds\n", "spec.ttl is not a valid duration", 6, 8),
    "ttl-zero": (S + "  ttl: 0s\n", "spec.ttl is not a valid duration", 6, 8),
    "ttl-negative": (S + "  ttl: -1\n", "spec.ttl is not a valid duration", 6, 8),
    "ttl-inf": (S + "  ttl: .inf\n", "spec.ttl is not a valid duration", 6, 8),
    "instance-ttl-invalid": (S + "  instances:\n    - {id: a, host: h, port: 1, ttl: soon}\n", "spec.instances[0].ttl is not a valid duration", 7, 38),
    "check-both": (S + "  check: {tcp: true, http: /x}\n", "spec.check needs exactly one of 'tcp: true' or 'http: /path'", 6, 10),
    "check-none": (S + "  check: {interval: 5s}\n", "spec.check needs exactly one of", 6, 10),
    "check-tcp-false": (S + "  check: {tcp: false}\n", "invalid spec.check.tcp 'false': expected true", 6, 16),
    "check-http-relative": (S + "  check: {http: healthz}\n", "spec.check.http must start with '/'", 6, 17),
    "check-failures-zero": (S + "  check: {tcp: true, failures: 0}\n", "spec.check.failures must be >= 1", 6, 32),
    "check-bad-interval": (S + "  check: {tcp: true, interval: fast}\n", "spec.check.interval is not a valid duration", 6, 32),
    "metadata-nan": (S + "  instances:\n    - {id: a, host: h, port: 80, metadata: {x: .nan}}\n", "not representable in JSON", 7, 48),
    "metadata-not-map": (S + "  instances:\n    - {id: a, host: h, port: 80, metadata: [x]}\n", "spec.instances[0].metadata must be a mapping, not a list", 7, 44),
    # documents
    "duplicate-document-same-file": (
        "apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: a}\n---\napiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: a}\n",
        "duplicate document ApplySet/a: also declared at {file}:1:1", 5, 1,
    ),
    "two-applysets": (
        "apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: a}\n---\napiVersion: etcdsync/v1\nkind: ApplySet\nmetadata: {name: b}\n",
        "more than one ApplySet document: 'a' at {file}:1:1 and 'b'", 5, 1,
    ),
    "duplicate-etcd-key-across-documents": (
        H + "    x/y: 1\n---\n" + DOC.replace("name: a", "name: b") + "spec:\n  prefix: /c/x/\n  data:\n    y: 2\n",
        "duplicate etcd key '/c/x/y': declared at {file}:8:5 and at {file}:16:5", 16, 5,
    ),
    "duplicate-etcd-key-service-and-config": (
        DOC + "spec:\n  prefix: /services/svc/\n  data:\n    a: 1\n---\n" + S + "  instances:\n    - {id: a, host: h, port: 1}\n",
        "duplicate etcd key '/services/svc/a': declared at {file}:7:5 and at {file}:15:7", 15, 7,
    ),
    "duplicate-etcd-key-live-instance": (
        S + "  instances:\n    - {id: a, host: h, port: 1, ttl: 5s}\n---\n" + DOC + "spec:\n  prefix: /services/svc/\n  data:\n    a: 1\n",
        "duplicate etcd key '/services/svc/a': declared at {file}:7:7 and at {file}:15:5", 15, 5,
    ),
}


@pytest.mark.parametrize(("content", "fragment", "line", "column"), list(CASES.values()), ids=list(CASES))
def test_rejected_with_position(tmp_path: Path, content: str, fragment: str, line: int, column: int) -> None:
    e = load_error(tmp_path, content)
    assert fragment.format(file=tmp_path / "m.yaml") in e.message
    assert (e.line, e.column) == (line, column), e


@pytest.mark.parametrize(
    ("content", "fragment", "line"),
    [
        pytest.param(H + "    a: 1\n\tb: 2\n", "invalid YAML", 9, id="tab"),
        pytest.param(H + "    a: [1, 2\n", "invalid YAML", 9, id="unclosed-flow"),
        pytest.param(H + "    a: 1\n    a: 2\n", "duplicate key 'a'", 9, id="duplicate-key"),
        pytest.param(H + "    a: !!python/object/apply:os.system [ls]\n", "is not allowed", 8, id="python-tag"),
        pytest.param(H + "    a: &a [1, *a]\n", "recursive alias", 8, id="recursive-alias"),
        pytest.param(H + "    a: " + "[" * 10_000 + "]" * 10_000 + "\n", "nesting", 8, id="deep-flow-10000"),
        pytest.param(H + "    a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nesting", 8, id="deep-flow-map-10000"),
        pytest.param(H + "    a:\n" + "".join(" " * (i + 6) + "-\n" for i in range(2_000)), "nesting is too deep", 70, id="deep-block-2000"),
        pytest.param(H + "    a: " + "[" * 100_000 + "\n", "nesting", 8, id="deep-unclosed-100000"),
    ],
)
def test_rejected_with_both_parsers(tmp_path: Path, parser: str, content: str, fragment: str, line: int) -> None:
    t0 = time.perf_counter()
    e = load_error(tmp_path, content)
    assert time.perf_counter() - t0 < 2.0
    assert fragment in e.message
    assert e.line == line


def _laughs(levels: int, width: int) -> str:
    lines = ["    l0: &l0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return H + "\n".join(lines) + "\n"


def test_billion_laughs_is_rejected_fast(tmp_path: Path, parser: str) -> None:
    t0 = time.perf_counter()
    e = load_error(tmp_path, _laughs(9, 10))
    assert time.perf_counter() - t0 < 1.0
    assert "aliases expand to too many nodes" in e.message
    assert e.line == 11  # l3 is where 10 + 100 + 1000 + 10000 nodes pass the bound


def test_moderate_alias_use_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_laughs(3, 9))  # 9 + 81 + 729 expanded nodes
    state = load_manifests([path], environ={})
    assert len(state.keys) == 3


@pytest.mark.parametrize(
    ("content", "fragment", "line", "column"),
    [
        pytest.param((H + "    a: caf\xe9\n").encode("latin-1"), "file is not valid UTF-8 (byte 0xe9)", 8, 11, id="latin-1"),
        pytest.param(b"\xff" + H.encode(), "file is not valid UTF-8", 1, 1, id="first-byte"),
        pytest.param((H + "    a: \u00e9\u00e9 x\n").encode() + b"    b: \xc3\x28\n", "file is not valid UTF-8 (byte 0xc3)", 9, 8, id="bad-sequence"),
        pytest.param((H + "    a: x\n").encode("utf-16"), "UTF-16 byte order mark", 1, 1, id="utf-16-bom"),
        pytest.param((H + "    a: x\n").encode("utf-16-be"), "U+0000", 1, 1, id="utf-16-be-no-bom"),
        pytest.param((H + "    a: x\n").encode("utf-16-le"), "is the file UTF-16?", 1, 2, id="utf-16-le-no-bom"),
        pytest.param(b"\xef\xbb\xbf" + H.encode() + b"    a: \xed\xa0\x80\n", "not valid UTF-8", 8, 8, id="bom-then-surrogate-bytes"),
    ],
)
def test_non_utf8_files(tmp_path: Path, content: bytes, fragment: str, line: int, column: int) -> None:
    e = load_error(tmp_path, content)
    assert fragment in e.message
    assert (e.line, e.column) == (line, column)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (H + "    a: x\n").encode())
    assert load_manifests([path], environ={}).keys["/c/a"].value == b"x"


def test_file_over_64_mib_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlnodes, "MAX_FILE_BYTES", 1000)
    e = load_error(tmp_path, H + "    a: " + "x" * 1000 + "\n")
    assert "file is too large" in e.message


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "nope"], environ={})
    assert ei.value.file == str(tmp_path / "nope")
    assert "not found" in ei.value.message


def test_unreadable_file(tmp_path: Path) -> None:
    d = tmp_path / "x.yaml"
    d.mkdir()
    (d / "inner.yaml").write_text(H + "    a: 1\n")
    # a directory named *.yaml is walked, not read
    assert list(load_manifests([tmp_path], environ={}).keys) == ["/c/a"]


def test_missing_from_file(tmp_path: Path) -> None:
    e = load_error(tmp_path, H + "    a: x\n    cert: {fromFile: certs/missing.pem}\n")
    assert "fromFile of key 'cert': cannot read 'certs/missing.pem'" in e.message
    assert (e.line, e.column) == (9, 22)


def test_from_file_directory(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    e = load_error(tmp_path, H + "    cert: {fromFile: certs}\n")
    assert "'certs' is not a regular file" in e.message


def test_missing_from_env(tmp_path: Path) -> None:
    e = load_error(tmp_path, H + "    token: {fromEnv: PAY_API_TOKEN, secret: true}\n", environ={"OTHER": "x"})
    assert e.message == "fromEnv of key 'token': environment variable PAY_API_TOKEN is not set"
    assert (e.line, e.column) == (8, 22)


def test_value_over_etcd_request_limit(tmp_path: Path) -> None:
    big = "x" * (MAX_KEY_VALUE_BYTES - len("/c/big") + 1)
    e = load_error(tmp_path, H + f"    ok: {big[:-2]}\n    big: {big}\n")
    assert "key '/c/big' is too large" in e.message and "request limit" in e.message
    assert (e.line, e.column) == (9, 5)
    assert len(str(e)) < 300


def test_value_just_under_the_limit_is_fine(tmp_path: Path) -> None:
    v = "x" * (MAX_KEY_VALUE_BYTES - len("/c/k"))
    path = tmp_path / "m.yaml"
    path.write_text(H + f"    k: {v}\n")
    assert len(load_manifests([path], environ={}).keys["/c/k"].value) == len(v)


def test_from_file_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"\0" * (MAX_KEY_VALUE_BYTES + 10))
    e = load_error(tmp_path, H + "    blob: {fromFile: big.bin}\n")
    assert "key '/c/blob' is too large" in e.message


# ------------------------------------------------------------------------------------------------
# secrets never appear in messages

SECRET = "hunter2-SECRET-VALUE"


@pytest.mark.parametrize(
    ("content", "environ"),
    [
        pytest.param(H + "    token: {fromEnv: TOKEN, secret: true}\n", {"TOKEN": SECRET * 100_000}, id="too-large-env"),
        pytest.param(H + f"    token: {{value: {{a: .inf, b: {SECRET}}}, secret: true}}\n", {}, id="inf-in-secret-json"),
        pytest.param(H + f"    token: {{value: {SECRET}, secret: true, policy: {SECRET}}}\n".replace(f"policy: {SECRET}", "policy: nope"), {}, id="bad-policy"),
        pytest.param(H + f"    token: {{value: \"{SECRET}, secret: true}}\n", {}, id="broken-quote"),
        pytest.param(H + f"    token: {{value: {SECRET}, secret: true}}\n    token: x\n", {}, id="duplicate-key"),
        pytest.param(H + f"    token: {{value: {SECRET}, secret: true}}\n---\n" + H.replace("name: app", "name: b") + "    token: y\n", {}, id="duplicate-etcd-key"),
        pytest.param(H + f"    token: {{value: [!!int {SECRET}], secret: true}}\n", {}, id="bad-int-tag"),
        pytest.param(H + f"    token: {{value: {SECRET}, fromEnv: X, secret: true}}\n", {}, id="two-sources"),
        pytest.param(H + f"    token: {{value: \"{SECRET}\\x07\", secret: true}}\n    bad: !custom x\n", {}, id="later-error"),
        pytest.param(H + f"    token: {{value: {SECRET}\x01, secret: true}}\n", {}, id="control-char-in-secret"),
        pytest.param((H + f"    token: {{value: {SECRET}\xe9, secret: true}}\n").encode("latin-1"), {}, id="bad-utf8-in-secret"),
    ],
)
def test_secret_value_is_never_in_the_message(tmp_path: Path, content: str | bytes, environ: dict[str, str]) -> None:
    e = load_error(tmp_path, content, environ=environ)
    assert SECRET not in str(e)
    assert SECRET[:8] not in str(e)
    assert e.line is not None


# ------------------------------------------------------------------------------------------------
# properties: anything either loads or raises ManifestError

_TOKENS = st.sampled_from([
    "apiVersion: etcdsync/v1", "kind: ConfigSet", "kind: Service", "kind: ApplySet", "metadata:", "  name: x",
    "spec:", "  prefix: /c/", "  data:", "    a: 1", "    b: {value: x}", "    c: [1, .inf]", "  instances:",
    "    - {id: a, host: h, port: 80}", "  format: grpc", "  ttl: 5s", "---", "...", "&a", "*a", "*b", "!!str", "!foo",
    "!!python/object:os.system", "<<:", "? ", ": ", "- ", "{", "}", "[", "]", ",", "\"", "'", "#", "|", ">", "%YAML 1.2",
    "\t", "  ", "\n", "~", "null", "\\", "\x00", "\ufeff", "é", "\x85", "\u2028", "%", "@", "`",
])


def _load_anything(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        load_manifests([path], environ={"X": "y"})
    except ManifestError as e:
        assert isinstance(e.message, str) and "\n" not in e.message
        assert "internal error" not in e.message, repr(e.__cause__)  # no unforeseen exception was wrapped


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.lists(_TOKENS, max_size=40), sep=st.sampled_from(["\n", " ", ""]))
def test_property_yamlish_text_loads_or_raises_manifest_error(tmp_path: Path, tokens: list[str], sep: str) -> None:
    _load_anything(tmp_path / "m.yaml", sep.join(tokens).encode("utf-8", "surrogatepass"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_property_random_bytes_load_or_raise_manifest_error(tmp_path: Path, data: bytes) -> None:
    _load_anything(tmp_path / "m.yaml", data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([H, H + "    k: ", H + "    k:\n      ", ""]), data=st.text(alphabet=string.printable + "é✓\x00\x07", max_size=120))
def test_property_document_with_random_tail(tmp_path: Path, prefix: str, data: str) -> None:
    _load_anything(tmp_path / "m.yaml", (prefix + data).encode("utf-8"))


_TREE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), c, max_size=4),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(
    _TREE,
    st.fixed_dictionaries({"apiVersion": st.just("etcdsync/v1"), "kind": st.sampled_from(["ConfigSet", "Service", "ApplySet"]),
                           "metadata": st.one_of(_TREE, st.just({"name": "n"})), "spec": _TREE}),
    st.fixed_dictionaries({"apiVersion": st.just("etcdsync/v1"), "kind": st.just("ConfigSet"), "metadata": st.just({"name": "n"}),
                           "spec": st.fixed_dictionaries({"prefix": st.sampled_from(["/c/", "c", "/"]), "data": _TREE})}),
))
def test_property_dumped_structures_load_or_raise_manifest_error(tmp_path: Path, doc: object) -> None:
    _load_anything(tmp_path / "m.yaml", yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("prefix", ["/config/payments", "config/payments/", "x"])
def test_configset_prefix_must_start_and_end_with_slash(tmp_path: Path, prefix: str) -> None:
    e = load_error(tmp_path, H.replace("prefix: /c/", f"prefix: {prefix}") + "    db/url: x\n")
    assert e.line == 6 and "must start and end with '/'" in e.message


def test_empty_secret_from_env_is_an_error_and_not_quoted(tmp_path: Path) -> None:
    e = load_error(tmp_path, H + "    token: {fromEnv: TOKEN, secret: true}\n", environ={"TOKEN": ""})
    assert e.line == 8 and "is empty" in e.message


def test_empty_non_secret_from_env_is_an_empty_value(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(H + "    note: {fromEnv: NOTE}\n")
    assert load_manifests([path], environ={"NOTE": ""}).keys["/c/note"].value == b""


@pytest.mark.parametrize("rel", ["a//b", "trailing/"])
def test_empty_key_segments_are_rejected(tmp_path: Path, rel: str) -> None:
    e = load_error(tmp_path, H + f"    {rel}: 1\n")
    assert e.line == 8 and "empty path segment" in e.message


def test_many_aliases_of_a_large_scalar_are_bounded(tmp_path: Path) -> None:
    refs = ", ".join(["*b"] * 1500)
    t0 = time.monotonic()
    e = load_error(tmp_path, H + f'    big: &b "{"x" * (1024 * 1024)}"\n    j: [{refs}]\n')
    assert "aliases expand to too many nodes" in e.message
    assert time.monotonic() - t0 < 5


def test_fromfile_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe")
    e = load_error(tmp_path, H + "    k: {fromFile: pipe}\n")
    assert "not a regular file" in e.message


# ------------------------------------------------------------------------------------------------
# the long form is unambiguous: a typo never turns a secret into a printed JSON value

@pytest.mark.parametrize(("entry", "bad", "suggest", "col"), [
    ("k: {valeu: s3cr3t-x, secret: true}", "valeu", "value", 9),
    ("k: {fromfile: pw.txt, secret: true}", "fromfile", "fromFile", 9),
    ("k: {fromEnv: TOKEN, secert: true}", "secert", "secret", 25),
    ("k: {fromEnv: TOKEN, polcy: warn}", "polcy", "policy", 25),
    ("k: {value: s3cr3t-x, secret: true, purne: false}", "purne", "prune", 40),
    ("k: {secret: true, data: s3cr3t-x}", "data", None, 23),
])
def test_long_form_typo_is_an_error_with_the_closest_option(tmp_path: Path, entry: str, bad: str,
                                                              suggest: str | None, col: int) -> None:
    e = load_error(tmp_path, H + "    " + entry + "\n", environ={"TOKEN": "t"})
    assert (e.line, e.column) == (8, col), str(e)
    assert f"'{bad}' is not an option of the long form" in e.message
    if suggest:
        assert f"did you mean '{suggest}'?" in e.message
    assert "s3cr3t" not in str(e)


# ------------------------------------------------------------------------------------------------
# fromFile stays inside the manifest root (or a --file-root); fromEnv never reads etcdsync's own settings

def _tree(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("outside-secret")
    root = tmp_path / "m"
    (root / "files").mkdir(parents=True)
    (root / "files" / "ok.txt").write_text("ok")
    return root


@pytest.mark.parametrize("source", [
    "/etc/passwd", "../../../../../../../../etc/passwd", "../outside/secret.txt", "files/../../outside/secret.txt",
    "link-out", "dirlink/secret.txt",
])
def test_from_file_outside_the_manifest_root_is_refused(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path)
    os.symlink(tmp_path / "outside" / "secret.txt", root / "link-out")
    os.symlink(tmp_path / "outside", root / "dirlink")
    f = root / "app.yaml"
    f.write_text(H + f"    a: x\n    k: {{fromFile: {source}}}\n")
    with pytest.raises(ManifestError) as ei:
        load_manifests([root], environ={})
    e = ei.value
    assert (e.file, e.line, e.column) == (str(f), 9, 19), str(e)
    assert "outside the manifest root" in e.message and "--file-root" in e.message
    assert "outside-secret" not in str(e) and "root:" not in str(e)


@pytest.mark.parametrize("source", ["/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/hostname", "/dev/null",
                                    "../../../../../../proc/self/environ", "proclink"])
def test_proc_sys_dev_are_never_read_even_under_a_file_root(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path)
    os.symlink("/proc/self/environ", root / "proclink")
    (root / "app.yaml").write_text(H + f"    k: {{fromFile: {source}}}\n")
    with pytest.raises(ManifestError) as ei:
        load_manifests([root], environ={}, file_roots=["/"])
    assert "under /proc, /sys or /dev, which are never read" in ei.value.message, str(ei.value)
    assert (ei.value.line, ei.value.column) == (8, 19)


def test_from_file_inside_the_root_or_a_file_root_is_read(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    os.symlink(root / "files" / "ok.txt", root / "link-in")
    (root / "sub").mkdir()
    (root / "sub" / "app.yaml").write_text(H + "    a: {fromFile: ../files/ok.txt}\n    b: {fromFile: ../link-in}\n"
                                           f"    c: {{fromFile: {root / 'files' / 'ok.txt'}}}\n"
                                           "    d: {fromFile: ../../outside/secret.txt}\n")
    with pytest.raises(ManifestError, match="'d'"):
        load_manifests([root], environ={})
    state = load_manifests([root], environ={}, file_roots=[tmp_path / "outside"])
    assert [state.keys[f"/c/{k}"].value for k in "abcd"] == [b"ok", b"ok", b"ok", b"outside-secret"]
    # a file given with -f: its directory is the root
    one = root / "files" / "one.yaml"
    one.write_text(H + "    a: {fromFile: ok.txt}\n")
    assert load_manifests([one], environ={}).keys["/c/a"].value == b"ok"
    one.write_text(H + "    a: {fromFile: ../sub/app.yaml}\n")
    with pytest.raises(ManifestError, match="outside the manifest root"):
        load_manifests([one], environ={})


def test_each_layer_has_its_own_root(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    over = tmp_path / "over"
    over.mkdir()
    (over / "app.yaml").write_text(H + "    k: {fromFile: ../m/files/ok.txt}\n")
    with pytest.raises(ManifestError, match="outside the manifest root"):
        load_manifests([root, over], environ={})
    state = load_manifests([root, over], environ={}, file_roots=[root / "files"])
    assert state.keys["/c/k"].value == b"ok"


@pytest.mark.parametrize("name", ["ETCDSYNC_PASSWORD", "ETCDSYNC_USER", "ETCDCTL_PASSWORD", "etcdsync_password",
                                  "ETCDSYNC_ENDPOINTS"])
def test_from_env_never_reads_etcdsyncs_own_settings(tmp_path: Path, name: str) -> None:
    e = load_error(tmp_path, H + f"    k: {{fromEnv: {name}}}\n", environ={name: "pw-canary"})
    assert (e.line, e.column) == (8, 18)
    assert "etcdsync's own settings" in e.message and "pw-canary" not in str(e)


def test_env_allow_restricts_from_env(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(H + "    a: {fromEnv: APP_TOKEN}\n    b: {fromEnv: HOME}\n")
    environ = {"APP_TOKEN": "t", "HOME": "/root"}
    assert len(load_manifests([f], environ=environ).keys) == 2
    with pytest.raises(ManifestError) as ei:
        load_manifests([f], environ=environ, env_allow=["APP_*", "DB_PASSWORD"])
    assert (ei.value.line, ei.value.column, ei.value.file) == (9, 18, str(f))
    assert "HOME is not allowed by --env-allow (APP_* DB_PASSWORD)" in ei.value.message
    assert len(load_manifests([f], environ=environ, env_allow=["APP_*", "HOME"]).keys) == 2
    # an allow-list can never open etcdsync's own settings
    f.write_text(H + "    a: {fromEnv: ETCDSYNC_PASSWORD}\n")
    with pytest.raises(ManifestError, match="own settings"):
        load_manifests([f], environ={"ETCDSYNC_PASSWORD": "x"}, env_allow=["*"])


# ------------------------------------------------------------------------------------------------
# keys that display as something else are rejected

@pytest.mark.parametrize("key", ["evil\u202egpj.exe", "a\u200bb", "\u2066x\u2069", "a\u200db", "x\ufeffy",
                                 "r\u200fl", "a\u2060b", "a\u202ab"])
def test_keys_with_bidi_or_zero_width_characters_are_rejected(tmp_path: Path, key: str) -> None:
    e = load_error(tmp_path, H + "    ok: 1\n" + f'    "{key}": 1\n')
    assert (e.line, e.column) == (9, 5)
    assert "bidirectional or zero-width" in e.message
    assert not set(str(e)) & set("\u202e\u200b\u2066\u2069\u200d\ufeff\u200f\u2060\u202a")


@pytest.mark.parametrize("where", ["prefix", "name"])
def test_prefix_and_names_with_bidi_characters_are_rejected(tmp_path: Path, where: str) -> None:
    text = H.replace("/c/", "/c\u202e/") if where == "prefix" else S + "  instances: [{id: \"a\u200bb\", host: h, port: 1}]\n"
    e = load_error(tmp_path, text + ("    k: 1\n" if where == "prefix" else ""))
    assert "bidirectional or zero-width" in e.message, str(e)


def test_non_nfc_key_is_rejected_with_the_nfc_form_suggested(tmp_path: Path) -> None:
    nfd = "cafe\u0301/men\u0303u"  # café/menũ, decomposed
    e = load_error(tmp_path, H + f'    "{nfd}": 1\n')
    assert (e.line, e.column) == (8, 5)
    assert "not in Unicode NFC" in e.message
    assert "write it as 'caf\u00e9/me\u00f1u' ('caf\\xe9/me\\xf1u';" in e.message, e.message
    assert "('cafe\\u0301/men\\u0303u')" in e.message
    f = tmp_path / "ok.yaml"
    f.write_text(H + '    "caf\u00e9/me\u00f1u": 1\n', encoding="utf-8")
    assert list(load_manifests([f], environ={}).keys) == ["/c/caf\u00e9/me\u00f1u"]


def test_root_of_a_symlinked_file_is_the_directory_it_was_given_in(tmp_path: Path) -> None:
    # -f a/app.yaml where app.yaml links to b/app.yaml: relative paths are read from a/, so a/ is the root
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ok.txt").write_text("ok")
    (tmp_path / "b" / "secret.txt").write_text("b-secret")
    (tmp_path / "b" / "app.yaml").write_text(H + "    k: {fromFile: ok.txt}\n")
    os.symlink(tmp_path / "b" / "app.yaml", tmp_path / "a" / "app.yaml")
    assert load_manifests([tmp_path / "a" / "app.yaml"], environ={}).keys["/c/k"].value == b"ok"
    (tmp_path / "b" / "app.yaml").write_text(H + "    k: {fromFile: ../b/secret.txt}\n")
    with pytest.raises(ManifestError, match="outside the manifest root"):
        load_manifests([tmp_path / "a" / "app.yaml"], environ={})
