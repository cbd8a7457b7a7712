"""Files, layers, overlays and the assembled DesiredState (DESIGN.md sections 2 and 3; pure)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from etcdsync.core.model import DesiredState, Policy, Source
from etcdsync.errors import ManifestError
from etcdsync.manifest import MANIFEST_SCHEMA, collect_files, load_manifests

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def configset(name: str, prefix: str, data: dict[str, str]) -> str:
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata:", f"  name: {name}", "spec:", f"  prefix: {prefix}", "  data:"]
    lines += [f"    {k}: {v}" for k, v in data.items()]
    return "\n".join(lines) + "\n"


def applyset(name: str) -> str:
    return f"apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata:\n  name: {name}\n"


DESIGN_EXAMPLE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: payments
spec:
  prefix: /config/payments/        # every key below is relative to it
  policy: enforce                  # enforce (default) | warn | create-only
  data:
    db/url: postgres://db:5432/pay
    retry/max: 5                   # written as the text "5"
    region: no                     # written as "no": no YAML-1.1 boolean surprise
    version: 1.10                  # written as "1.10", not "1.1"
    features: {beta: true, limit: 3}   # mapping or list: written as compact JSON
    banner: {value: hello, policy: create-only}
    tls/cert: {fromFile: ../certs/tls.pem}
    api/token: {fromEnv: PAY_API_TOKEN, secret: true}
---
apiVersion: etcdsync/v1
kind: Service
metadata:
  name: my_service
spec:
  prefix: /services/               # default; key = <prefix><name>/<id>
  format: json                     # json (default) | grpc (etcd's naming/endpoints format)
  ttl: 10s                         # optional: instances live under a lease held by `etcdsync run`
  instances:
    - id: instance_1
      host: localhost
      port: 3000
      metadata: {zone: a}
      check: {tcp: true, interval: 5s}      # optional; or {http: /healthz}
"""


def test_design_example(tmp_path: Path) -> None:
    write(tmp_path / "certs" / "tls.pem", "CERT\n")
    f = write(tmp_path / "manifests" / "app.yaml", DESIGN_EXAMPLE)
    state = load_manifests([tmp_path / "manifests"], environ={"PAY_API_TOKEN": "tok"},
                           file_roots=[tmp_path / "certs"])  # ../certs is outside the manifest root
    assert isinstance(state, DesiredState)
    assert {k: v.value for k, v in state.keys.items()} == {
        "/config/payments/api/token": b"tok",
        "/config/payments/banner": b"hello",
        "/config/payments/db/url": b"postgres://db:5432/pay",
        "/config/payments/features": b'{"beta":true,"limit":3}',
        "/config/payments/region": b"no",
        "/config/payments/retry/max": b"5",
        "/config/payments/tls/cert": b"CERT\n",
        "/config/payments/version": b"1.10",
    }
    assert state.keys["/config/payments/api/token"].secret
    assert state.keys["/config/payments/banner"].policy is Policy.CREATE_ONLY
    (inst,) = state.live
    assert inst.key == "/services/my_service/instance_1"
    assert inst.value == b'{"host":"localhost","port":3000,"metadata":{"zone":"a"}}'
    assert inst.ttl == 10.0 and inst.check is not None and inst.check.interval == 5.0
    assert inst.source == Source(str(f), 27, 7)
    assert state.prefixes == ("/config/payments/", "/services/my_service/")
    assert state.files == (str(f),)
    assert state.applyset is None


# ------------------------------------------------------------------------------------------------
# files

def test_collect_files_walks_directories_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for rel in ["b.yaml", "a.yml", "sub/z.yaml", "sub/a.yaml", "a/b.yaml", "notes.txt", "x.json", ".hidden.yaml",
                ".git/config.yaml", "sub/.swp.yaml", "UPPER.YAML", "dir.yaml/inner.yaml"]:
        write(root / rel, "")
    single = write(tmp_path / "single.txt", "")  # a file given explicitly is read whatever its name
    layers = collect_files([root, single])
    assert [[p.relative_to(root).as_posix() for p in layers[0]], layers[1]] == [
        ["UPPER.YAML", "a/b.yaml", "a.yml", "b.yaml", "dir.yaml/inner.yaml", "sub/a.yaml", "sub/z.yaml"],
        [single],
    ]


def test_collect_files_is_deterministic_and_handles_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", "")
    (root / "loop").symlink_to(root, target_is_directory=True)
    layers = collect_files([str(root)])
    assert layers == collect_files([os.fspath(root)])
    assert [p.name for p in layers[0]][0] == "a.yaml"


def test_collect_files_broken_symlink_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", "")
    (root / "b.yaml").symlink_to(tmp_path / "gone.yaml")
    (root / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not a manifest: ignored
    with pytest.raises(ManifestError) as ei:
        collect_files([root])
    assert ei.value.file == str(root / "b.yaml")
    assert "broken symbolic link" in ei.value.message


@pytest.mark.parametrize("missing", ["nope.yaml", "nope/dir"])
def test_collect_files_missing_path(tmp_path: Path, missing: str) -> None:
    with pytest.raises(ManifestError) as ei:
        collect_files([tmp_path, tmp_path / missing])
    assert ei.value.file == str(tmp_path / missing)
    assert ei.value.message.startswith("manifest path not found")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("\n\n", id="blank-lines"),
        pytest.param("# only a comment\n", id="comment"),
        pytest.param("---\n", id="one-separator"),
        pytest.param("---\n# c\n---\n...\n", id="empty-documents"),
        pytest.param("~\n", id="null-document"),
        pytest.param("\ufeff", id="bom-only"),
    ],
)
def test_a_file_without_documents_is_an_error(tmp_path: Path, content: str) -> None:
    # an editor mid-save or `: > file` must never read as "this file declares nothing" (which prunes)
    write(tmp_path / "m" / "a.yaml", configset("a", "/a/", {"k": "1"}))
    f = write(tmp_path / "m" / "b.yaml", content)
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "m"], environ={})
    assert ei.value.file == str(f)
    assert ei.value.message == "holds no documents; delete the file to prune its keys"


def test_empty_directory_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert load_manifests([tmp_path / "m"], environ={}) == DesiredState()


def test_many_documents_and_empty_ones_between(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "---\n# nothing\n---\n" + configset("a", "/a/", {"k": "1"}) + "---\n---\n" + configset("b", "/b/", {"k": "2"}) + "...\n")
    state = load_manifests([f], environ={})
    assert list(state.keys) == ["/a/k", "/b/k"]
    assert state.keys["/b/k"].source == Source(str(f), 21, 5)


def test_files_lists_every_file_read(tmp_path: Path) -> None:
    a = write(tmp_path / "base" / "a.yaml", configset("a", "/a/", {"k": "1"}))
    b = write(tmp_path / "base" / "b.yaml", applyset("s"))
    o = write(tmp_path / "over.yaml", "# a comment\n---\n" + configset("o", "/o/", {}))
    assert load_manifests([tmp_path / "base", o], environ={}).files == (str(a), str(b), str(o))


# ------------------------------------------------------------------------------------------------
# overlays

def test_later_layer_replaces_a_document_whole(tmp_path: Path) -> None:
    write(tmp_path / "base" / "app.yaml", configset("app", "/config/app/", {"a": "1", "b": "2", "only-base": "x"}))
    write(tmp_path / "base" / "other.yaml", configset("other", "/config/other/", {"k": "v"}))
    over = write(tmp_path / "prod" / "app.yaml", configset("app", "/config/app/", {"a": "10", "c": "30"}))
    state = load_manifests([tmp_path / "base", tmp_path / "prod"], environ={})
    assert {k: v.value for k, v in state.keys.items()} == {
        "/config/app/a": b"10", "/config/app/c": b"30", "/config/other/k": b"v",
    }
    assert state.keys["/config/app/a"].source == Source(str(over), 8, 5)


def test_overlay_can_change_prefix_and_kind_is_part_of_identity(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", configset("app", "/old/", {"a": "1"}) + "---\n" + applyset("app"))
    write(tmp_path / "over.yaml", configset("app", "/new/", {"a": "2"}))
    state = load_manifests([tmp_path / "base.yaml", tmp_path / "over.yaml"], environ={})
    assert list(state.keys) == ["/new/a"]
    assert state.prefixes == ("/new/",)
    assert state.applyset == "app"


def test_replaced_document_sources_are_not_read(tmp_path: Path) -> None:
    """fromEnv/fromFile of a document replaced by an overlay are never needed."""
    write(tmp_path / "base.yaml", configset("app", "/c/", {"token": "{fromEnv: ONLY_IN_DEV}", "cert": "{fromFile: dev.pem}"}))
    write(tmp_path / "prod.yaml", configset("app", "/c/", {"token": "{fromEnv: PROD_TOKEN}"}))
    state = load_manifests([tmp_path / "base.yaml", tmp_path / "prod.yaml"], environ={"PROD_TOKEN": "p"})
    assert state.keys["/c/token"].value == b"p"


def test_replaced_document_is_still_validated(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", configset("app", "/c/", {"../escape": "1"}))
    write(tmp_path / "prod.yaml", configset("app", "/c/", {"ok": "1"}))
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "base.yaml", tmp_path / "prod.yaml"], environ={})
    assert ei.value.file == str(tmp_path / "base.yaml") and ei.value.line == 8


def test_same_layer_duplicate_document_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "m" / "a.yaml", configset("app", "/a/", {"k": "1"}))
    b = write(tmp_path / "m" / "b.yaml", "# header\n" + configset("app", "/b/", {"k": "1"}))
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "m"], environ={})
    e = ei.value
    assert (e.file, e.line, e.column) == (str(b), 2, 1)
    assert e.message.startswith("duplicate document ConfigSet/app: also declared at " + f"{a}:1:1")


def test_same_file_given_twice_is_an_overlay_of_itself(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", configset("app", "/a/", {"k": "1"}))
    assert list(load_manifests([f, f], environ={}).keys) == ["/a/k"]


def test_duplicate_etcd_key_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "m" / "a.yaml", configset("one", "/c/", {"x/y": "1"}))
    b = write(tmp_path / "m" / "b.yaml", configset("two", "/c/x/", {"y": "2"}))
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "m"], environ={})
    e = ei.value
    assert (e.file, e.line, e.column) == (str(b), 8, 5)
    assert e.message == f"duplicate etcd key '/c/x/y': declared at {a}:8:5 and at {b}:8:5"


def test_duplicate_etcd_key_across_layers(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", configset("one", "/c/", {"k": "1"}))
    write(tmp_path / "over.yaml", configset("two", "/c/", {"k": "2"}))
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "base.yaml", tmp_path / "over.yaml"], environ={})
    assert "duplicate etcd key '/c/k'" in ei.value.message
    assert ei.value.file == str(tmp_path / "over.yaml")


# ------------------------------------------------------------------------------------------------
# apply sets, prefixes, services

def test_applyset_document(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", configset("a", "/a/", {"k": "1"}) + "---\n" + applyset("payments-prod"))
    state = load_manifests([f], environ={})
    assert state.applyset == "payments-prod"
    assert state.applyset_source == Source(str(f), 10, 1)


@pytest.mark.parametrize("spec", ["", "spec:\n", "spec: {}\n"])
def test_applyset_spec_is_optional(tmp_path: Path, spec: str) -> None:
    f = write(tmp_path / "m.yaml", applyset("x") + spec)
    assert load_manifests([f], environ={}).applyset == "x"


def test_applyset_overlay_replaces_same_name_and_rejects_two_names(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", applyset("one"))
    write(tmp_path / "b.yaml", applyset("one"))
    write(tmp_path / "c.yaml", applyset("two"))
    assert load_manifests([tmp_path / "a.yaml", tmp_path / "b.yaml"], environ={}).applyset_source.file == str(tmp_path / "b.yaml")
    with pytest.raises(ManifestError) as ei:
        load_manifests([tmp_path / "a.yaml", tmp_path / "c.yaml"], environ={})
    assert ei.value.message.startswith("more than one ApplySet document: 'one'")


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_applyset_name_rules(tmp_path: Path, name: str) -> None:
    f = write(tmp_path / "m.yaml", f"apiVersion: etcdsync/v1\nkind: ApplySet\nmetadata:\n  name: '{name}'\n")
    with pytest.raises(ManifestError) as ei:
        load_manifests([f], environ={})
    assert ei.value.line == 4


def test_prefixes_sorted_unique_including_empty_documents(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        configset("b", "/z/", {"k": "1"}) + "---\n" + configset("a", "/a/", {}) .replace("  data:\n", "")
        + "---\napiVersion: etcdsync/v1\nkind: Service\nmetadata: {name: svc}\nspec: {}\n"
        + "---\napiVersion: etcdsync/v1\nkind: Service\nmetadata: {name: g}\nspec: {format: grpc, instances: []}\n",
    )
    state = load_manifests([f], environ={})
    assert state.prefixes == ("/a/", "/services/svc/", "/z/", "services/g/")


def test_configset_data_may_be_empty_or_null(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", configset("a", "/a/", {}) + "---\n" + configset("b", "/b/", {}).replace("  data:\n", "  data: {}\n"))
    state = load_manifests([f], environ={})
    assert state.keys == {} and state.prefixes == ("/a/", "/b/")


def test_static_and_live_instances_are_split(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", """\
        apiVersion: etcdsync/v1
        kind: Service
        metadata: {name: api}
        spec:
          instances:
            - {id: static, host: 10.0.0.1, port: 80}
            - {id: leased, host: 10.0.0.2, port: 80, ttl: 10}
            - {id: checked, host: 10.0.0.3, port: 80, check: {http: /healthz}}
        """)
    state = load_manifests([f], environ={})
    assert list(state.keys) == ["/services/api/static"]
    dk = state.keys["/services/api/static"]
    assert (dk.prefix, dk.policy, dk.prune, dk.document, dk.source) == (
        "/services/api/", Policy.ENFORCE, True, "Service/api", Source(str(f), 6, 7),
    )
    assert [(i.id, i.ttl, i.check and i.check.kind) for i in state.live] == [("leased", 10.0, None), ("checked", None, "http")]
    assert state.prefixes == ("/services/api/",)


def test_custom_reserved_prefix(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", configset("a", "/.etcdsync/", {"k": "1"}))
    assert list(load_manifests([f], environ={}, reserved_prefix="/_owner/").keys) == ["/.etcdsync/k"]
    g = write(tmp_path / "g.yaml", configset("a", "/_owner/x/", {"k": "1"}))
    with pytest.raises(ManifestError):
        load_manifests([g], environ={}, reserved_prefix="/_owner/")


def test_large_configset(tmp_path: Path) -> None:
    n = 20_000
    f = tmp_path / "big.yaml"
    f.write_text(configset("big", "/big/", {f"k{i:05d}": f"v{i}" for i in range(n)}))
    state = load_manifests([f], environ={})
    assert len(state.keys) == n
    assert next(iter(state.keys)) == "/big/k00000"
    assert state.keys["/big/k19999"].source.line == 7 + n


def test_gc_state_is_restored(tmp_path: Path) -> None:
    import gc

    f = write(tmp_path / "m.yaml", "kind: [")
    assert gc.isenabled()
    with pytest.raises(ManifestError):
        load_manifests([f], environ={})
    assert gc.isenabled()


# ------------------------------------------------------------------------------------------------
# schema

def test_schema_is_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    assert MANIFEST_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert [s["$ref"] for s in MANIFEST_SCHEMA["oneOf"]] == ["#/$defs/ConfigSet", "#/$defs/Service", "#/$defs/ApplySet"]


def test_schema_accepts_the_design_example_as_plain_yaml() -> None:
    import yaml
    from jsonschema import Draft202012Validator

    v = Draft202012Validator(MANIFEST_SCHEMA)
    for doc in yaml.safe_load_all(DESIGN_EXAMPLE):
        assert not list(v.iter_errors(doc))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("text", True), (5, True), (1.5, True), (None, True), (False, True), ([1, "a"], True), ({}, True),
        ({"a": 1}, True), ({"value": {"a": 1}}, True), ({"fromEnv": "X", "secret": True}, True),
        ({"value": "x", "policy": "warn", "prune": False}, True), ({"value": "x", "other": 1}, True),
        ({"secret": True}, False), ({"value": "x", "fromEnv": "Y"}, False), ({"value": "x", "policy": "bogus"}, False),
        ({"fromFile": ""}, False),
    ],
)
def test_schema_describes_data_values_like_the_loader(value: object, ok: bool) -> None:
    from jsonschema import Draft202012Validator

    v = Draft202012Validator({"$defs": MANIFEST_SCHEMA["$defs"], "$ref": "#/$defs/dataValue"})
    assert v.is_valid(value) is ok


def test_import_is_light() -> None:
    code = "import sys, etcdsync.manifest; print('jsonschema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False"


def test_sources_lists_the_resolved_from_file_paths_read(tmp_path: Path) -> None:
    # the daemon watches these to re-load when a source changes
    write(tmp_path / "m" / "files" / "a.txt", "a")
    write(tmp_path / "m" / "files" / "b.txt", "b")
    os.symlink(tmp_path / "m" / "files" / "b.txt", tmp_path / "m" / "link.txt")
    write(tmp_path / "m" / "app.yaml", configset("app", "/c/", {"a": "{fromFile: files/a.txt}", "b": "{fromFile: link.txt}",
                                                                  "c": "{fromFile: files/a.txt}", "d": "plain"}))
    state = load_manifests([tmp_path / "m"], environ={})
    real = os.path.realpath(tmp_path / "m" / "files")
    assert state.sources == (f"{real}/a.txt", f"{real}/b.txt")
    assert load_manifests([write(tmp_path / "n.yaml", applyset("x"))], environ={}).sources == ()
