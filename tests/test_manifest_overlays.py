"""Overlays that merge (DESIGN.md section 2; pure): a later -f layer's document with the same kind and
name merges into the earlier one: spec.data key by key, spec.instances by id, other spec fields when
given; `{remove: true}` removes; `spec.overlay: replace` replaces the whole document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from etcdsync.errors import ManifestError
from etcdsync.manifest import load_manifests
from etcdsync.core.model import DesiredState, Policy, Source

REPO = Path(__file__).resolve().parents[1]

BASE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  prefix: /config/app/
  policy: warn
  data:
    a: 1
    b: {value: 2, policy: create-only, secret: true}
    c: 3
    d: {value: 4, prune: false}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: svc}
spec:
  instances:
    - {id: i1, host: h1, port: 1, metadata: {zone: a}}
    - {id: i2, host: h2, port: 2, metadata: {zone: b}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def doc(kind: str, name: str, spec: str) -> str:
    return f"apiVersion: etcdsync/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{textwrap.indent(textwrap.dedent(spec), '  ')}"


def load(*paths: Path, environ: dict[str, str] | None = None) -> DesiredState:
    return load_manifests(list(paths), environ=environ or {})


def values(state: DesiredState) -> dict[str, bytes]:
    return {k: d.value for k, d in state.keys.items()}


def error(*paths: Path) -> ManifestError:
    with pytest.raises(ManifestError) as ei:
        load(*paths)
    return ei.value


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base" / "app.yaml", BASE)


# ------------------------------------------------------------------------------------------------
# data

def test_data_merges_key_by_key_and_the_later_value_wins(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over" / "app.yaml", doc("ConfigSet", "app", "data:\n  a: 10\n  e: 5\n"))
    state = load(base, over)
    assert values(state) == {
        "/config/app/a": b"10", "/config/app/b": b"2", "/config/app/c": b"3", "/config/app/d": b"4",
        "/config/app/e": b"5", "/services/svc/i1": b'{"host":"h1","port":1,"metadata":{"zone":"a"}}',
        "/services/svc/i2": b'{"host":"h2","port":2,"metadata":{"zone":"b"}}',
    }
    a, b, e = (state.keys[f"/config/app/{k}"] for k in "abe")
    # where each value came from: the overlay's line, the earlier declaration it overrode, the layers
    assert a.source == Source(str(over), 6, 5)
    assert a.source is not None and a.source.overrides == (Source(str(base), 8, 5),)
    assert a.source.layers == (Source(str(base), 1, 1), Source(str(over), 1, 1))
    assert b.source == Source(str(base), 9, 5) and b.source is not None and b.source.overrides == ()
    assert e.source is not None and e.source.overrides == () and len(e.source.layers) == 2
    # the base's spec.policy is the default of every key that does not set its own, the overlay's too
    assert (a.policy, b.policy, e.policy) == (Policy.WARN, Policy.CREATE_ONLY, Policy.WARN)
    assert a.document == "ConfigSet/app" and state.prefixes == ("/config/app/", "/services/svc/")


def test_a_later_entry_replaces_the_whole_entry_options_included(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", """\
        data:
          a: {value: x, policy: create-only}
          b: plain
          d: {value: 40}
        """))
    keys = load(base, over).keys
    a, b, d = keys["/config/app/a"], keys["/config/app/b"], keys["/config/app/d"]
    assert (a.value, a.policy) == (b"x", Policy.CREATE_ONLY)
    # b was create-only and secret in the base: the overlay's plain value has neither
    assert (b.value, b.policy, b.secret) == (b"plain", Policy.WARN, False)
    # d had prune: false in the base: the overlay's long form without prune is pruned again
    assert (d.value, d.prune) == (b"40", True)


def test_spec_fields_of_an_overlay_are_the_defaults_of_every_key(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "policy: enforce\nprune: false\n"))
    keys = load(base, over).keys
    assert {k: (d.policy, d.prune) for k, d in keys.items() if k.startswith("/config/")} == {
        "/config/app/a": (Policy.ENFORCE, False),
        "/config/app/b": (Policy.CREATE_ONLY, False),   # its own policy stays
        "/config/app/c": (Policy.ENFORCE, False),
        "/config/app/d": (Policy.ENFORCE, False),
    }
    # a key whose own option is given keeps it against a later spec default
    over2 = write(tmp_path / "over2.yaml", doc("ConfigSet", "app", "policy: create-only\nprune: true\ndata:\n  c: {value: 3, prune: false}\n"))
    keys = load(base, over2).keys
    assert {k[len("/config/app/"):]: d.prune for k, d in keys.items() if k.startswith("/config/")} == {
        "a": True, "b": True, "c": False, "d": False}
    assert (keys["/config/app/b"].policy, keys["/config/app/c"].policy) == (Policy.CREATE_ONLY, Policy.CREATE_ONLY)


def test_a_prefix_change_moves_the_base_keys_too(tmp_path: Path, base: Path) -> None:
    """Keys are relative to the document's prefix: an overlay's prefix is the prefix of all of them."""
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "prefix: /config/staging/app/\ndata:\n  a: 10\n  c: {remove: true}\n"))
    state = load(base, over)
    assert sorted(k for k in state.keys if k.startswith("/config/")) == [
        "/config/staging/app/a", "/config/staging/app/b", "/config/staging/app/d"]
    assert {d.prefix for k, d in state.keys.items() if k.startswith("/config/")} == {"/config/staging/app/"}
    assert state.prefixes == ("/config/staging/app/", "/services/svc/")
    assert state.keys["/config/staging/app/b"].source == Source(str(base), 9, 5)
    assert state.removed == {"/config/staging/app/c": Source(str(over), 8, 5)}


def test_a_moved_base_key_is_checked_under_its_new_prefix(tmp_path: Path) -> None:
    b = write(tmp_path / "b.yaml", doc("ConfigSet", "app", "prefix: /config/\ndata:\n  .etcdsync/x: 1\n"))
    o = write(tmp_path / "o.yaml", doc("ConfigSet", "app", "prefix: /\n"))
    assert values(load(b)) == {"/config/.etcdsync/x": b"1"}
    e = error(b, o)
    assert (e.file, e.line, e.column) == (str(b), 7, 5)
    assert e.message == "key '/.etcdsync/x' is under etcdsync's reserved prefix /.etcdsync/"
    other = write(tmp_path / "other.yaml", doc("ConfigSet", "other", "prefix: /new/\ndata:\n  x: 2\n"))
    moved = write(tmp_path / "m.yaml", doc("ConfigSet", "app", "prefix: /new/\n"))
    b2 = write(tmp_path / "b2.yaml", doc("ConfigSet", "app", "prefix: /old/\ndata:\n  x: 1\n"))
    e = error(b2, moved, other)
    assert "duplicate etcd key '/new/x'" in e.message


def test_remove_a_key(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "data:\n  c: {remove: true}\n  a: {remove: true}\n"))
    state = load(base, over)
    assert sorted(k for k in state.keys if k.startswith("/config/")) == ["/config/app/b", "/config/app/d"]
    assert state.removed == {"/config/app/a": Source(str(over), 7, 5), "/config/app/c": Source(str(over), 6, 5)}
    # a later layer can declare it again
    again = write(tmp_path / "again.yaml", doc("ConfigSet", "app", "data:\n  c: 33\n"))
    state = load(base, over, again)
    assert state.keys["/config/app/c"].value == b"33" and list(state.removed) == ["/config/app/a"]
    # to store the JSON object {"remove":true}, the long form
    json_value = write(tmp_path / "j.yaml", doc("ConfigSet", "app", "data:\n  c: {value: {remove: true}}\n"))
    assert load(base, json_value).keys["/config/app/c"].value == b'{"remove":true}'


def test_removing_what_earlier_layers_do_not_have_is_an_error(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "data:\n  a: 1\n  nope: {remove: true}\n"))
    e = error(base, over)
    assert (e.file, e.line, e.column) == (str(over), 7, 5)
    assert e.message == "key 'nope': remove: true, but no earlier -f layer declares it in ConfigSet/app (nothing to remove)"
    # removed twice: the second layer has nothing left to remove
    once = write(tmp_path / "once.yaml", doc("ConfigSet", "app", "data:\n  a: {remove: true}\n"))
    e = error(base, once, once)
    assert (e.file, e.line, e.message) == (str(once), 6, "key 'a': remove: true, but no earlier -f layer declares it "
                                           "in ConfigSet/app (nothing to remove)")


@pytest.mark.parametrize("layers", ["alone", "new document in an overlay"])
def test_remove_in_a_document_that_merges_into_nothing_is_an_error(tmp_path: Path, base: Path, layers: str) -> None:
    f = write(tmp_path / "x.yaml", doc("ConfigSet", "other", "prefix: /o/\ndata:\n  k: 1\n  gone: {remove: true}\n"))
    e = error(f) if layers == "alone" else error(base, f)
    assert (e.file, e.line, e.column) == (str(f), 8, 5)
    assert e.message == "key 'gone': remove: true, but no earlier -f layer declares ConfigSet/other (nothing to remove)"


def test_remove_in_a_first_layer_is_an_error_also_when_an_overlay_merges_into_it(tmp_path: Path, base: Path) -> None:
    first = write(tmp_path / "first.yaml", doc("ConfigSet", "app", "prefix: /c/\ndata:\n  k: 1\n  gone: {remove: true}\n"))
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "data:\n  k: 2\n"))
    e = error(first, over)
    assert (e.file, e.line, e.column) == (str(first), 8, 5)
    assert e.message == "key 'gone': remove: true, but no earlier -f layer declares ConfigSet/app (nothing to remove)"
    svc = write(tmp_path / "svc.yaml", doc("Service", "s", "instances:\n  - {id: a, host: h, port: 1}\n  - {id: b, remove: true}\n"))
    svc2 = write(tmp_path / "svc2.yaml", doc("Service", "s", "instances:\n  - {id: a, host: h2, port: 1}\n"))
    e = error(svc, svc2)
    assert (e.file, e.line, e.column) == (str(svc), 7, 7)
    assert e.message == "instance 'b': remove: true, but no earlier -f layer declares Service/s (nothing to remove)"


@pytest.mark.parametrize(("value", "message", "column"), [
    ("{remove: false}", "key 'k': remove must be true (to keep the key, leave it out of the overlay)", 17),
    ("{remove: true, value: 1}", "key 'k': 'remove' stands alone", 8),
    ("{remove: yes}", "key 'k': remove must be true", 17),
])
def test_remove_shape_errors(tmp_path: Path, base: Path, value: str, message: str, column: int) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", f"data:\n  a: 1\n  k: {value}\n"))
    e = error(base, over)
    assert (e.file, e.line, e.column) == (str(over), 7, column)
    assert e.message.startswith(message)


def test_a_json_object_with_a_remove_field_among_others_is_still_a_json_value(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", doc("ConfigSet", "app", "prefix: /c/\ndata:\n  k: {remove: true, when: later}\n"))
    assert values(load(f)) == {"/c/k": b'{"remove":true,"when":"later"}'}


# ------------------------------------------------------------------------------------------------
# spec.overlay: replace

def test_overlay_replace_replaces_the_whole_document(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "overlay: replace\nprefix: /config/app/\ndata:\n  a: 10\n"))
    state = load(base, over)
    assert sorted(k for k in state.keys if k.startswith("/config/")) == ["/config/app/a"]
    a = state.keys["/config/app/a"]
    assert a.policy == Policy.ENFORCE  # the base's policy: warn went with the base
    assert a.source is not None and a.source.overrides == (Source(str(base), 8, 5),)
    assert state.removed == {}
    svc = write(tmp_path / "svc.yaml", doc("Service", "svc", "overlay: replace\ninstances:\n  - {id: i9, host: h9, port: 9}\n"))
    assert [k for k in load(base, svc).keys if k.startswith("/services/")] == ["/services/svc/i9"]


def test_overlay_replace_needs_the_whole_document_and_no_remove(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "overlay: replace\ndata:\n  a: 10\n"))
    e = error(base, over)
    assert (e.file, e.line, e.column) == (str(over), 5, 3)
    assert e.message == "missing required field 'prefix' in spec (a document with spec.overlay: replace is whole)"
    rm = write(tmp_path / "rm.yaml", doc("ConfigSet", "app", "overlay: replace\nprefix: /c/\ndata:\n  a: {remove: true}\n"))
    e = error(base, rm)
    assert (e.file, e.line, e.column) == (str(rm), 8, 5)
    assert e.message.startswith("key 'a': remove: true has no meaning in a document with spec.overlay: replace")
    rmi = write(tmp_path / "rmi.yaml", doc("Service", "svc", "overlay: replace\ninstances:\n  - {id: i1, remove: true}\n"))
    e = error(base, rmi)
    assert (e.file, e.line) == (str(rmi), 7)
    assert e.message.startswith("instance 'i1': remove: true has no meaning in a document with spec.overlay: replace")


def test_overlay_replace_or_merge_with_nothing_earlier_is_the_document_as_written(tmp_path: Path) -> None:
    for mode in ("replace", "merge"):
        f = write(tmp_path / f"{mode}.yaml", doc("ConfigSet", "app", f"overlay: {mode}\nprefix: /c/\ndata:\n  a: 1\n"))
        state = load(f)
        assert values(state) == {"/c/a": b"1"}
        assert state.keys["/c/a"].source is not None and state.keys["/c/a"].source.layers == ()


def test_overlay_field_is_checked(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", doc("ConfigSet", "app", "overlay: patch\nprefix: /c/\n"))
    e = error(f)
    assert (e.line, e.column) == (5, 12)
    assert e.message == "invalid spec.overlay 'patch': expected one of merge, replace"


# ------------------------------------------------------------------------------------------------
# prefix given by an earlier layer

def test_a_merging_overlay_needs_no_prefix_but_a_new_document_does(tmp_path: Path, base: Path) -> None:
    new = write(tmp_path / "new.yaml", doc("ConfigSet", "apps", "data:\n  a: 1\n"))
    e = error(base, new)
    assert (e.file, e.line, e.column) == (str(new), 5, 3)
    assert e.message == "missing required field 'prefix' in spec (no earlier -f layer declares ConfigSet/apps to merge into)"
    e = error(new)
    assert (e.line, e.column, e.message) == (5, 3, "missing required field 'prefix' in spec")
    # a base without prefix is wrong even when an overlay gives one
    e = error(new, write(tmp_path / "o.yaml", doc("ConfigSet", "apps", "prefix: /a/\n")))
    assert (e.file, e.line, e.message) == (str(new), 5, "missing required field 'prefix' in spec")


# ------------------------------------------------------------------------------------------------
# instances

def test_instances_merge_by_id(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("Service", "svc", """\
        instances:
          - {id: i2, host: h2b, port: 22}
          - {id: i3, host: h3, port: 3}
          - id: i1
            remove: true
        """))
    state = load(base, over)
    svc = {k: d.value for k, d in state.keys.items() if k.startswith("/services/")}
    # i2 replaced whole (its base metadata is gone), i3 added, i1 removed
    assert svc == {"/services/svc/i2": b'{"host":"h2b","port":22}', "/services/svc/i3": b'{"host":"h3","port":3}'}
    i2 = state.keys["/services/svc/i2"].source
    assert i2 == Source(str(over), 6, 7) and i2 is not None and i2.overrides == (Source(str(base), 19, 7),)
    assert state.removed == {"/services/svc/i1": Source(str(over), 8, 7)}


def test_service_spec_fields_apply_to_the_base_instances(tmp_path: Path, base: Path) -> None:
    live = write(tmp_path / "live.yaml", doc("Service", "svc", "ttl: 10s\n"))
    state = load(base, live)
    assert not [k for k in state.keys if k.startswith("/services/")]
    assert [(i.key, i.ttl, i.metadata) for i in state.live] == [("/services/svc/i1", 10.0, {"zone": "a"}),
                                                                 ("/services/svc/i2", 10.0, {"zone": "b"})]
    grpc = write(tmp_path / "grpc.yaml", doc("Service", "svc", "format: grpc\n"))
    assert {k: v for k, v in values(load(base, grpc)).items() if "svc" in k} == {
        "services/svc/h1:1": b'{"Op":0,"Addr":"h1:1","Metadata":"{\\"zone\\":\\"a\\"}"}',
        "services/svc/h2:2": b'{"Op":0,"Addr":"h2:2","Metadata":"{\\"zone\\":\\"b\\"}"}',
    }


def test_grpc_instances_without_id_merge_by_host_and_port(tmp_path: Path) -> None:
    b = write(tmp_path / "b.yaml", doc("Service", "g", "format: grpc\ninstances:\n  - {host: h, port: 1}\n  - {host: k, port: 2}\n"))
    o = write(tmp_path / "o.yaml", doc("Service", "g", "instances:\n  - {host: h, port: 1, metadata: {z: 1}}\n  - {id: 'k:2', remove: true}\n"))
    assert values(load(b, o)) == {"services/g/h:1": b'{"Op":0,"Addr":"h:1","Metadata":"{\\"z\\":1}"}'}
    # an overlay that makes the format json needs ids
    j = write(tmp_path / "j.yaml", doc("Service", "g", "format: json\nprefix: /services/\n"))
    e = error(b, j)
    assert (e.file, e.line, e.column, e.message) == (str(b), 7, 7, "missing required field 'id' in spec.instances[0]")


def test_instance_remove_errors(tmp_path: Path, base: Path) -> None:
    o = write(tmp_path / "o.yaml", doc("Service", "svc", "instances:\n  - {id: i7, remove: true}\n"))
    e = error(base, o)
    assert (e.file, e.line, e.column) == (str(o), 6, 7)
    assert e.message == "instance 'i7': remove: true, but no earlier -f layer declares it in Service/svc (nothing to remove)"
    e = error(o)
    assert (e.file, e.line, e.message) == (str(o), 6, "instance 'i7': remove: true, but no earlier -f layer declares "
                                           "Service/svc (nothing to remove)")
    h = write(tmp_path / "h.yaml", doc("Service", "svc", "instances:\n  - {id: i1, remove: true, host: x}\n"))
    e = error(base, h)
    assert (e.file, e.line) == (str(h), 6)
    assert e.message == "instance 'i1': an instance with remove: true holds only id and remove, not 'host'"
    n = write(tmp_path / "n.yaml", doc("Service", "svc", "instances:\n  - {remove: true}\n"))
    e = error(base, n)
    assert (e.file, e.line, e.message) == (str(n), 6, "missing required field 'id' in spec.instances[0]")


# ------------------------------------------------------------------------------------------------
# three layers, sources, validate's JSON

def test_three_layers_chain_their_overrides(tmp_path: Path, base: Path) -> None:
    mid = write(tmp_path / "mid.yaml", doc("ConfigSet", "app", "data:\n  a: 2\n"))
    top = write(tmp_path / "top.yaml", doc("ConfigSet", "app", "data:\n  a: 3\n"))
    a = load(base, mid, top).keys["/config/app/a"]
    assert a.value == b"3" and a.source is not None
    assert a.source.overrides == (Source(str(base), 8, 5), Source(str(mid), 6, 5))
    assert [o.overrides for o in a.source.overrides] == [(), ()]  # a flat list, oldest first
    assert a.source.layers == (Source(str(base), 1, 1), Source(str(mid), 1, 1), Source(str(top), 1, 1))


def test_from_file_of_a_base_key_is_read_relative_to_the_base(tmp_path: Path) -> None:
    write(tmp_path / "base" / "files" / "ca.pem", "CA\n")
    write(tmp_path / "base" / "app.yaml", doc("ConfigSet", "app", "prefix: /c/\ndata:\n  ca: {fromFile: files/ca.pem}\n"))
    write(tmp_path / "env" / "app.yaml", doc("ConfigSet", "app", "data:\n  x: 1\n"))
    # each layer's fromFile stays inside its own -f root: no --file-root needed for the base's files
    state = load_manifests([tmp_path / "base", tmp_path / "env"], environ={})
    assert values(state) == {"/c/ca": b"CA\n", "/c/x": b"1"}
    assert state.sources == (str((tmp_path / "base" / "files" / "ca.pem").resolve()),)


def test_validate_json_shows_every_origin_and_removal(tmp_path: Path, base: Path) -> None:
    over = write(tmp_path / "over.yaml", doc("ConfigSet", "app", "data:\n  a: 10\n  c: {remove: true}\n"))
    p = subprocess.run([sys.executable, "-m", "etcdsync", "validate", "-f", str(base), "-f", str(over), "-o", "json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["keys"] == 5 and out["valid"] is True
    layers = [f"{base}:1:1", f"{over}:1:1"]
    assert out["origins"]["/config/app/a"] == {"value": f"{over}:6:5", "overrides": [f"{base}:8:5"], "layers": layers}
    assert out["origins"]["/config/app/b"] == {"value": f"{base}:9:5", "overrides": [], "layers": layers}
    assert out["origins"]["/services/svc/i1"] == {"value": f"{base}:18:7", "overrides": [], "layers": []}
    assert out["removed"] == {"/config/app/c": f"{over}:7:5"}


def test_plan_json_gives_live_instances_their_origin(tmp_path: Path, base: Path) -> None:
    from etcdsync.core.plan import LiveStatus, Plan
    from etcdsync.core.render import plan_json

    over = write(tmp_path / "over.yaml", doc("Service", "svc", "ttl: 5s\ninstances:\n  - {id: i2, host: h2, port: 2}\n"))
    live = {i.id: i for i in load(base, over).live}
    out = plan_json(Plan("t", (), (LiveStatus(live["i2"], False, None),), counts={}), applyset_origin="flag")
    assert out["live"] == [{
        "key": "/services/svc/i2", "service": "svc", "id": "i2", "registered": False, "ttl": 5.0, "checked": False,
        "source": f"{over}:7:7",
        "origin": {"value": f"{over}:7:7", "overrides": [f"{base}:19:7"], "layers": [f"{base}:13:1", f"{over}:1:1"]},
    }]
