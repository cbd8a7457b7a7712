"""Saved plans under concurrency, against real etcd, judged by the history checker: a writer between
the check and the commit, another apply of the same file at the same moment, and a plan split into
batches whose second batch meets a conflict (what is left, how it is reported, how a re-run converges)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from history import Recorder

from etcdsync.core import planfile
from etcdsync.errors import ConflictError


def write_manifest(env: Env, data: dict[str, str]) -> Path:
    body = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in data.items())
    path = env.tmp / "m" / "app.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n"
                    f"  prefix: {env.ns}app/\n  data:\n{body}")
    return path.parent


def keys(env: Env, data: dict[str, str]) -> dict[str, str]:
    return {f"{env.ns}app/{k}": v for k, v in data.items()}


def apply_saved_in_process(env: Env, m: Path, plan: Path, on_plan: Any) -> Any:
    """apply_saved with a hook right before the first write (after every check passed)."""
    from etcdsync.apply import apply_saved
    from etcdsync.etcd.store import Store
    from etcdsync.manifest import load_manifests
    from etcdsync.settings import Connection

    saved = planfile.decode(plan.read_text(), str(plan))
    desired = load_manifests([str(m)], reserved_prefix=env.reserved)

    async def go() -> Any:
        async with Store(Connection(env.endpoints)) as store:
            return await apply_saved(store, saved, desired, on_plan=on_plan)

    return asyncio.run(go())


def test_two_applies_of_one_plan_at_once_exactly_one_applies(env: Env, history: Recorder) -> None:
    """Both pass every check; the second one (a real process) commits first, right before the first
    one's commit: the first one's compares fail, it writes nothing, and nothing is written twice (the
    history checker fails on a put of the value a key already holds)."""
    data = {"a": "1", "b": "1"}
    history.declare(keys(env, data))
    m = write_manifest(env, data)
    assert env.cli("apply", "-f", str(m)).code == 0
    data = {"a": "2", "b": "2", "c": "new"}
    m = write_manifest(env, data)
    plan = env.tmp / "plan.json"
    assert env.cli("diff", "-f", str(m), "--out", str(plan)).code == 1
    history.declare(keys(env, data))
    other: list[Any] = []

    def on_plan(_p: Any, _attempt: int) -> None:
        other.append(env.run("apply", "-f", str(m), "--plan", str(plan)))

    with pytest.raises(ConflictError) as err:
        apply_saved_in_process(env, m, plan, on_plan)
    assert other[0].code == 0, other[0].err
    assert "applied: 1 created, 2 updated" in other[0].out
    assert "0 changes were committed before" in str(err.value) and "never re-planned" in str(err.value)
    assert env.dump(f"{env.ns}app/") == {k: v.encode() for k, v in keys(env, data).items()}
    # and once more, later: the plan is stale now (every key moved), so it is refused
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 3 and "the saved plan is stale: 3 planned keys changed" in r.err, r.err
    assert env.untouched_since(rev)


def test_a_split_plan_with_a_conflict_in_its_second_batch(env: Env, history: Recorder) -> None:
    """200 creates: two transactions. Another writer creates a key of the second batch after the
    checks: the first batch is committed (and owned), the second is not; the error says how many
    changes were committed and names the key; the saved plan is stale from then on (naming the
    keys), and a fresh apply converges."""
    n = 200
    data = {f"k{i:03d}": "v" for i in range(n)}
    history.declare({f"{env.ns}app/seed": "1"})
    assert env.cli("apply", "-f", str(write_manifest(env, {"seed": "1"}))).code == 0
    m = write_manifest(env, {"seed": "1", **data})
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--out", str(plan))
    assert r.code == 1 and "commit: 2 transactions" in r.out, r.out
    history.declare(keys(env, {"seed": "1", **data}))
    last = f"{env.ns}app/k{n - 1:03d}"

    def on_plan(_p: Any, _attempt: int) -> None:
        env.put(last, "theirs")

    with pytest.raises(ConflictError) as err:
        apply_saved_in_process(env, m, plan, on_plan)
    msg = str(err.value)
    assert msg.startswith(f"{last}: changed by another writer while the saved plan was being applied"), msg
    now = env.dump(f"{env.ns}app/")
    written = sorted(k for k, v in now.items() if v == b"v")
    assert 0 < len(written) < n, "not the half-applied case this test is about"
    assert f"; {len(written)} changes were committed before;" in msg, msg
    assert now[last] == b"theirs"
    # the inventory lists exactly what was committed (the history checker checks each put's ownership too)
    r = env.cli("inventory", "--reserved-prefix", env.reserved, "--applyset", "default", "-o", "json")
    assert r.code == 0, r.err
    owned = {k["key"] for k in json.loads(r.out)["applysets"][0]["keys"]}
    assert owned == {f"{env.ns}app/seed", *written}, "the inventory is not what was committed"
    # re-running the plan: stale, naming the keys committed and the other writer's key, nothing written
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 3 and f"the saved plan is stale: {len(written) + 1} planned keys changed" in r.err, r.err[:300]
    assert f"{last}: absent when planned, now at revision" in r.err
    assert env.untouched_since(rev)
    # a fresh apply converges (the other writer's key is declared and unowned: adopted and updated)
    r = env.cli("apply", "-f", str(m))
    assert r.code == 0, r.err
    assert env.dump(f"{env.ns}app/") == {k: v.encode() for k, v in keys(env, {"seed": "1", **data}).items()}
