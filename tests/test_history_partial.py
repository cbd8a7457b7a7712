"""An apply that fails half way still records what it committed.

A plan larger than one transaction is committed batch by batch; when a later batch fails (here: the
user may read a prefix but not write it, so etcd refuses the batch that writes there), the batches
already committed are real writes. They must appear in the history like any apply's, marked as
failed with the error, so that `history`, `explain` and `rollback` know about them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_faults import Ctl, cli, start_auth_etcd

from etcdsync.local.etcdbin import EtcdCluster

SYNC = {"ETCDSYNC_USER": "sync", "ETCDSYNC_PASSWORD": "syncpw"}
ROOT = {"ETCDSYNC_USER": "root", "ETCDSYNC_PASSWORD": "rootpw"}
RESERVED = "/.etcdsync/"


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Ctl]]:
    """User `sync` may read and write /a/ and the reserved prefix, and only read /b/."""
    c, root = start_auth_etcd(tmp_path_factory.mktemp("etcd-partial"), user="sync", password="syncpw",
                              role="syncer", prefixes=("/a/", RESERVED))
    try:
        root("role", "grant-permission", "syncer", "read", "/b/", "--prefix=true")
        yield c, root
    finally:
        c.stop()


def configset(name: str, prefix: str, data: dict[str, str]) -> str:
    rows = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in data.items())
    return f"apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {{name: {name}}}\nspec:\n  prefix: {prefix}\n  data:\n{rows}"


def test_an_apply_failing_after_some_batches_records_them_as_a_failed_entry(
        auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path) -> None:
    cluster, root = auth_etcd
    mdir = tmp_path / "m"
    mdir.mkdir()
    many = {f"k{i:03d}": str(i) for i in range(300)}           # more than one transaction's worth
    (mdir / "a.yaml").write_text(configset("a", "/a/app/", many))
    (mdir / "b.yaml").write_text(configset("b", "/b/", {"x": "1"}))   # sorts after /a/: a later batch
    run = cli("apply", "-f", str(mdir), "--applyset", "partial", "--reserved-prefix", RESERVED,
              endpoints=cluster.endpoints, env=SYNC)
    assert run.code != 0, run.out
    assert "Traceback" not in run.err
    assert "permission denied" in run.err.lower(), run.err
    written = root.values("/a/app/")
    assert 0 < len(written) < len(many) + 1, "some batches were committed before the refused one"
    assert root.get("/b/x") is None
    # the error says that part of the plan was committed, and where that is recorded
    assert "committed" in run.err and "history" in run.err, run.err

    listed = cli("history", "--applyset", "partial", "--reserved-prefix", RESERVED, "-o", "json",
                 endpoints=cluster.endpoints, env=ROOT)
    assert listed.code == 0, listed.err
    entries = json.loads(listed.out)["entries"]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["kind"] == "apply"
    assert "permission denied" in entry["failed"].lower()
    assert entry["counts"] == {"created": len(written)}
    assert entry["keysTotal"] == len(written)
    assert set(entry["keys"]) <= set(written)
    text = cli("history", "--applyset", "partial", "--reserved-prefix", RESERVED,
               endpoints=cluster.endpoints, env=ROOT)
    assert "failed" in text.out, text.out

    # the next apply (by a user who may write /b/) completes the rest and records a normal entry
    done = cli("apply", "-f", str(mdir), "--applyset", "partial", "--reserved-prefix", RESERVED,
               endpoints=cluster.endpoints, env=ROOT)
    assert done.code == 0, done.err
    assert len(root.values("/a/app/")) == len(many) and root.get("/b/x") == b"1"
    entries = json.loads(cli("history", "--applyset", "partial", "--reserved-prefix", RESERVED, "-o", "json",
                             endpoints=cluster.endpoints, env=ROOT).out)["entries"]
    assert len(entries) == 2 and "failed" not in entries[0]
    assert entries[0]["counts"] == {"created": len(many) + 1 - len(written)}
