"""Atomicity shown and enforceable: diff and apply say how a plan is committed (the executor's own
split), `--atomic` refuses a plan that does not fit one transaction (exit 3, nothing written), and
limits learned from a server with a smaller `--max-txn-ops` are reported and reused in the process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from conftest import Env
from history import Recorder, recorder

from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.local.etcdbin import EtcdCluster


def write_manifest(env: Env, n: int, value: str = "v") -> Path:
    body = "".join(f"    k{i:03d}: {value}\n" for i in range(n))
    path = env.tmp / "m" / "app.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n"
                    f"  prefix: {env.ns}app/\n  data:\n{body}")
    return path.parent


def declared(env: Env, n: int, value: str = "v") -> dict[str, str]:
    return {f"{env.ns}app/k{i:03d}": value for i in range(n)}


def test_a_plan_over_one_transaction_is_shown_split_and_refused_by_atomic(env: Env, history: Recorder) -> None:
    m = write_manifest(env, 200)
    r = env.cli("diff", "-f", str(m))
    assert r.code == 1
    assert "commit: 2 transactions of at most 128 operations (not atomic: readers can see it half applied)" in r.out
    doc = json.loads(env.cli("diff", "-f", str(m), "-o", "json").out)
    assert doc["commit"] == {"transactions": 2, "maxOperations": 128, "atomic": False}
    rev = env.revision()
    r = env.cli("diff", "-f", str(m), "--atomic")
    assert r.code == 3 and "--atomic: the plan needs 2 transactions of at most 128 operations" in r.err, r.err
    r = env.cli("apply", "-f", str(m), "--atomic")
    assert r.code == 3, r.err
    assert r.err.strip().splitlines()[-1:] == ["error: --atomic: the plan needs 2 transactions of at most 128 "
                                          "operations, not one; refusing (nothing written)"]
    assert env.untouched_since(rev), "--atomic wrote part of a split plan"
    history.declare(declared(env, 200))
    r = env.cli("apply", "-f", str(m), "-o", "json")
    assert r.code == 0
    doc = json.loads(r.out)
    assert doc["commit"]["transactions"] == doc["applied"]["transactions"] == 2, "the count shown is not the count committed"
    # a small plan fits one transaction: --atomic applies it
    m = write_manifest(env, 200, "w")
    history.declare(declared(env, 200, "w"))
    r = env.cli("apply", "-f", str(m), "--atomic")
    assert r.code == 3          # 200 updates still need two
    m2 = env.tmp / "m2"
    m2.mkdir()
    (m2 / "one.yaml").write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: one}\nspec:\n"
                                 f"  prefix: {env.ns}one/\n  data: {{a: '1', b: '2'}}\n")
    history.declare({**declared(env, 200), f"{env.ns}one/a": "1", f"{env.ns}one/b": "2"})
    r = env.cli("apply", "-f", str(m2), "--applyset", "one", "--atomic")
    assert r.code == 0, r.err
    assert "commit: 1 transaction (atomic)" in r.out and "in 1 transaction" in r.out


def test_atomic_against_a_server_with_max_txn_ops_8(tmp_path: Path) -> None:
    """etcd does not publish its --max-txn-ops: the plan looks like one transaction until the server
    refuses it. With --atomic that refusal is final (exit 3, nothing written); without, the run goes on
    with smaller batches and says so."""
    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"], base_dir=str(tmp_path / "etcd")) as small:
        env = Env(small.endpoints, "/atom/", "/atom/.etcdsync/", tmp_path)
        env.hist = recorder(env.endpoints, ["/atom/"], env.reserved)
        try:
            m = write_manifest(env, 20)
            rev = env.revision()
            r = env.cli("apply", "-f", str(m), "--atomic")
            assert r.code == 3, r.out + r.err
            assert "commit: 1 transaction (atomic)" in r.out
            assert "--atomic: etcd refused the plan's one transaction" in r.err and r.err.count("error:") == 1, r.err
            assert env.untouched_since(rev), "--atomic wrote something"
            env.hist.declare(declared(env, 20))
            r = env.cli("apply", "-f", str(m))
            assert r.code == 0, r.err
            assert "note: etcd refused a transaction as too large; continued with batches of at most 8 operations" in r.err
            assert env.dump("/atom/app/") == {k: b"v" for k in declared(env, 20)}
            r = env.cli("apply", "-f", str(write_manifest(env, 20, "w")), "-o", "json")
            doc = json.loads(r.out)
            assert doc["applied"]["limits"]["lowered"] is True and doc["applied"]["limits"]["maxOperations"] <= 8
            env.hist.declare(declared(env, 20, "w"))
            env.hist.check()
        finally:
            env.hist.stop()


def test_limits_learned_are_reused_within_a_process(tmp_path: Path) -> None:
    """The daemon applies many times with one Limits: the second apply does not start again from 128
    (no batch refused), and its layout is the split it commits."""
    from etcdsync.apply import apply
    from etcdsync.etcd.store import Store
    from etcdsync.execute import Limits
    from etcdsync.settings import Connection

    def state(value: str) -> DesiredState:
        keys = {f"/lim/k{i:02d}": DesiredKey(f"/lim/k{i:02d}", value.encode(), "/lim/") for i in range(30)}
        return DesiredState(keys=keys, prefixes=("/lim/",))

    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"], base_dir=str(tmp_path / "etcd")) as small:
        limits = Limits()

        async def go(value: str) -> Any:
            async with Store(Connection(small.endpoints)) as store:
                return await apply(store, state(value), applyset="t", reserved="/.etcdsync/", limits=limits)

        first = asyncio.run(go("1"))
        assert first.shrunk and limits.max_ops <= 8
        second = asyncio.run(go("2"))
        assert not second.shrunk, "the second apply was refused as too large again: limits not reused"
        assert second.layout is not None and second.layout.max_ops == limits.max_ops
        assert second.transactions == second.layout.transactions


def test_commit_line_and_json() -> None:
    from etcdsync.core.plan import Plan
    from etcdsync.core.render import commit_json, commit_line, plan_json

    assert commit_line(1, 128) == "commit: 1 transaction (atomic)"
    assert commit_line(3, 8) == "commit: 3 transactions of at most 8 operations (not atomic: readers can see it half applied)"
    assert commit_json(3, 8) == {"transactions": 3, "maxOperations": 8, "atomic": False}
    assert plan_json(Plan("a", ()), applyset_origin="flag", commit=(1, 128))["commit"] == \
        {"transactions": 1, "maxOperations": 128, "atomic": True}
