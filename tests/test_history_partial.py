"""An apply that fails half way still records what it committed.

A plan larger than one transaction is committed batch by batch; when a later batch fails (here: the
user may read a prefix but not write it, so etcd refuses the batch that writes there), the batches
already committed are real writes. They must appear in the history like any apply's, marked as
failed with the error, so that `history`, `explain` and `rollback` know about them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_faults import Ctl, Daemons, cli, start_auth_etcd, wait_for
from test_security import SYNC, configset, daemons  # noqa: F401 - the user, the manifest and the fixture

from etcdsync.local.etcdbin import EtcdCluster

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


def entries_of(cluster: EtcdCluster, applyset: str) -> list[dict[str, object]]:
    r = cli("history", "--applyset", applyset, "--reserved-prefix", RESERVED, "-o", "json",
            endpoints=cluster.endpoints, env=ROOT)
    assert r.code == 0, r.err
    return list(json.loads(r.out)["entries"])


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


def test_a_reconcile_failing_after_some_batches_records_them_as_a_failed_entry(
        auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path, daemons: Daemons) -> None:
    """The daemon's full reconcile commits the batches under /a/, then etcd refuses the one writing /b/
    (retried with backoff, refused each time): the first attempt's writes are one reconcile entry
    marked failed; the retries write nothing and record nothing."""
    cluster, root = auth_etcd
    mdir = tmp_path / "m"
    mdir.mkdir()
    many = {f"k{i:03d}": str(i) for i in range(300)}
    (mdir / "a.yaml").write_text(configset("a", "/a/daemon/", many))
    (mdir / "b.yaml").write_text(configset("b", "/b/", {"y": "1"}))
    d = daemons.start(tmp_path, [mdir], endpoints=cluster.endpoints, reserved=RESERVED, applyset="partial-d",
                      env=SYNC)
    wait_for(lambda: bool(entries_of(cluster, "partial-d")), 20, f"a failed reconcile entry\n{d.logs()[-2000:]}")
    wait_for(lambda: "permission denied" in d.logs(), 10, "the refused batch is logged")
    written = root.values("/a/daemon/")
    assert 0 < len(written) < len(many), len(written)
    assert root.get("/b/y") is None
    [entry] = entries_of(cluster, "partial-d")
    assert entry["kind"] == "reconcile" and "permission denied" in str(entry["failed"]).lower(), entry
    assert entry["keysTotal"] == len(written) and entry["counts"] == {"created": len(written)}
    # the retries find /a/ in sync and write nothing more: still one entry, and nothing more under /a/
    wait_for(lambda: d.logs().lower().count("permission denied") >= 3, 30, f"retries\n{d.logs()[-1500:]}")
    assert len(entries_of(cluster, "partial-d")) == 1
    assert root.values("/a/daemon/") == written
    assert d.alive


def test_an_entry_listing_revisions_etcd_has_not_reached_is_not_recorded(env: Any) -> None:
    """A record that reaches an etcd whose history was replaced (restored from an older snapshot while
    the record waited) finds it at a revision before the writes the entry lists: nothing is put."""
    import asyncio

    from etcdsync.core.history import make_entry
    from etcdsync.etcd.store import Store
    from etcdsync.history import record
    from etcdsync.settings import Connection

    ahead = env.revision() + 1000
    entry = make_entry(applyset="gone", kind="repair", who="d", revisions=[ahead - 2, ahead], repairs=[("/x", ahead)])

    async def go() -> int | None:
        async with Store(Connection(env.endpoints)) as store:
            return await record(store, env.reserved, entry, limit=10)

    rev = env.revision()
    assert asyncio.run(go()) is None
    assert env.dump(env.reserved + "history/gone/") == {}
    assert env.untouched_since(rev)
