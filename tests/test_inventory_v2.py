"""Inventory format 2 against real etcd: an inventory written by format 1 (the exact bytes the previous
version wrote) is read and used, a selector apply never prunes its keys (their document is not
recorded), and the next writes upgrade it; etcd's history shows nothing unowned touched."""

from __future__ import annotations

import json

from conftest import Env
from history import Recorder

from etcdsync.core.inventory import Entry, decode_chunk

TREE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: a, labels: {team: a}}
spec:
  prefix: {ns}a/
  data: {x: '2', y: '1'}
---
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: b, labels: {team: b}}
spec:
  prefix: {ns}b/
  data: {x: '1'}
"""


def chunks(env: Env) -> dict[str, bytes]:
    return env.dump(env.reserved + "sets/t/inventory/")


def test_a_format_1_inventory_is_read_used_and_upgraded(env: Env, history: Recorder) -> None:
    ns = env.ns
    v1_key = f"{env.reserved}sets/t/inventory/0f1e2d3c4b5a6978"
    # what the previous version left: four keys it created, listed in one chunk of format 1 (the
    # exact bytes encode_chunk wrote: sorted keys, compact JSON), and a key nobody owns
    v1 = ('{"v":1,"prefixes":{"' + ns + 'a/":["old","x","y"],"' + ns + 'b/":["x"]}}').encode()
    history.outside_txn({f"{ns}a/x": "1", f"{ns}a/y": "1", f"{ns}a/old": "1", f"{ns}b/x": "1",
                         f"{ns}a/stranger": "not ours", v1_key: v1})
    history.declare({f"{ns}a/x": "2", f"{ns}a/y": "1", f"{ns}b/x": "1"})
    m = env.write("m/tree.yaml", TREE)

    # read and used: the keys are ours (no adoption, no conflict), the document is not recorded yet
    r = env.cli("diff", "-f", str(m), "--applyset", "t", "-o", "json")
    assert r.code == 1, r
    changes = {c["key"]: c for c in json.loads(r.out)["changes"]}
    assert changes[f"{ns}a/x"]["action"] == "update"
    assert changes[f"{ns}a/old"]["action"] == "delete"
    assert changes[f"{ns}b/x"]["action"] == "unchanged"
    assert "document (not recorded) -> ConfigSet/b" in changes[f"{ns}b/x"]["note"], changes[f"{ns}b/x"]
    assert f"{ns}a/stranger" not in changes

    # a selector apply: a's keys are written and recorded as a's; "old" has no recorded document, so
    # nothing tells it was a's: it is not pruned
    r = env.cli("apply", "-f", str(m), "--applyset", "t", "-l", "team=a")
    assert r.code == 0, r
    assert "applied: 0 created, 1 updated, 0 deleted, 0 unchanged (1 ownership record updated)" in r.out, r.out
    assert env.get(f"{ns}a/x") == b"2" and env.get(f"{ns}a/old") == b"1"
    # the chunks this apply rewrote are format 2; what is left of the old chunk records no document
    now = chunks(env)
    assert now[v1_key] == ('{"v":2,"prefixes":{"' + ns + 'a/":["old"],"' + ns + 'b/":["x"]}}').encode()
    owned = {k: e for ck, v in now.items() for k, e in decode_chunk(ck, v).items()}
    assert owned == {f"{ns}a/x": Entry(f"{ns}a/", document="ConfigSet/a"),
                     f"{ns}a/y": Entry(f"{ns}a/", document="ConfigSet/a"),
                     f"{ns}a/old": Entry(f"{ns}a/"), f"{ns}b/x": Entry(f"{ns}b/")}
    # `inventory` shows each key's recorded document: '-' (null in JSON) where none is recorded yet
    r = env.cli("inventory", "--applyset", "t", "--reserved-prefix", env.reserved)
    assert r.code == 0, r
    rows = {line.split()[0]: line.split()[2] for line in r.out.splitlines()[2:]}
    assert rows == {f"{ns}a/old": "-", f"{ns}a/x": "ConfigSet/a", f"{ns}a/y": "ConfigSet/a", f"{ns}b/x": "-"}, r.out
    r = env.cli("inventory", "--applyset", "t", "--reserved-prefix", env.reserved, "-o", "json")
    docs = {k["key"]: k["document"] for k in json.loads(r.out)["applysets"][0]["keys"]}
    assert docs == {f"{ns}a/old": None, f"{ns}a/x": "ConfigSet/a", f"{ns}a/y": "ConfigSet/a", f"{ns}b/x": None}, r.out

    # the next full apply prunes "old" and records b's document: every chunk is format 2, every key
    # has its document
    r = env.cli("apply", "-f", str(m), "--applyset", "t")
    assert r.code == 0, r
    assert "0 created, 0 updated, 1 deleted, 2 unchanged (1 ownership record updated)" in r.out, r.out
    now = chunks(env)
    assert v1_key not in now
    assert all(json.loads(v)["v"] == 2 for v in now.values())
    owned = {k: e for ck, v in now.items() for k, e in decode_chunk(ck, v).items()}
    assert owned == {f"{ns}a/x": Entry(f"{ns}a/", document="ConfigSet/a"),
                     f"{ns}a/y": Entry(f"{ns}a/", document="ConfigSet/a"),
                     f"{ns}b/x": Entry(f"{ns}b/", document="ConfigSet/b")}
    assert env.get(f"{ns}a/old") is None and env.get(f"{ns}a/stranger") == b"not ours"
    assert env.cli("diff", "-f", str(m), "--applyset", "t").code == 0
    assert history.unconverged() == []


def test_a_format_2_inventory_refuses_a_key_with_two_documents_and_writes_nothing(env: Env, history: Recorder) -> None:
    ns = env.ns
    bad = ('{"v":2,"prefixes":{"' + ns + 'a/":["x"]},"documents":{"ConfigSet/a":{"' + ns + 'a/":true},'
           '"ConfigSet/b":{"' + ns + 'a/":["x"]}}}').encode()
    history.outside_txn({f"{ns}a/x": "1", f"{ns}a/y": "1", f"{env.reserved}sets/t/inventory/bad": bad})
    m = env.write("m/tree.yaml", TREE)
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--applyset", "t")
    assert r.code == 2, r
    assert r.err.strip().endswith("has two documents ('ConfigSet/a' and 'ConfigSet/b')); fix or delete it by hand, "
                                  "etcdsync will not guess what it owns"), r.err
    assert env.untouched_since(rev)
