"""The guards of apply, each shown by a race or a limit that breaks it when the guard is missing.

Every test here records etcd's history (tests/history.py) and is checked at its end. A test that only
looked at final values would pass with most of these guards removed: the re-plan after a conflict
usually reaches the same final value, so each test also asserts that the racing key was re-read
(`retried`) and what the second plan saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Env
from history import Declared, Recorder

from etcdsync.apply import apply
from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.diff import observe
from etcdsync.errors import OwnershipError
from etcdsync.etcd.store import Store
from etcdsync.execute import MAX_IN_FLIGHT, Limits
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection, Options


def state(prefix: str, values: dict[str, str]) -> DesiredState:
    keys = {prefix + k: DesiredKey(prefix + k, v.encode(), prefix) for k, v in values.items()}
    return DesiredState(keys=dict(sorted(keys.items())), prefixes=(prefix,))


def run(env: Env, desired: DesiredState, *, applyset: str = "t", **kw: Any) -> Any:
    if env.hist is not None:
        env.hist.declare({k: Declared(d.value, d.policy.value) for k, d in desired.keys.items()})

    async def go() -> Any:
        async with Store(Connection(env.endpoints)) as store:
            return await apply(store, desired, applyset=applyset, reserved=env.reserved, **kw)

    return asyncio.run(go())


def owned(env: Env, applyset: str) -> set[str]:
    async def go() -> set[str]:
        async with Store(Connection(env.endpoints)) as store:
            snap = await observe(store, DesiredState(), applyset=applyset, reserved=env.reserved)
            return set(snap.ownership.inventory(applyset).owned)

    return asyncio.run(go())


def racing(env: Env, key: str, value: str) -> tuple[Any, list[tuple[int, bytes | None]]]:
    """An on_plan hook that writes `key` once, after the first plan and before its transactions."""
    seen: list[tuple[int, bytes | None]] = []

    def on_plan(plan: Any, attempt: int) -> None:
        c = next((c for c in plan.changes if c.key == key), None)
        seen.append((attempt, c.old if c else None))
        if attempt == 0:
            env.put(key, value)

    return on_plan, seen


def test_a_delete_compares_the_revision_it_planned(env: Env, history: Recorder) -> None:
    p = f"{env.ns}d/"
    run(env, state(p, {"keep": "1", "a": "1", "b": "1"}))
    on_plan, seen = racing(env, p + "b", "changed by someone")
    out = run(env, state(p, {"keep": "1", "a": "1"}), on_plan=on_plan)
    assert p + "b" in out.retried, "the delete did not compare b's revision: it deleted a write it never saw"
    assert seen == [(0, b"1"), (1, b"changed by someone")]
    assert env.get(p + "b") is None


def test_an_adoption_compares_the_value_it_saw(env: Env, history: Recorder) -> None:
    p = f"{env.ns}ad/"
    env.put(p + "x", "1")                       # exists, unowned, with the declared value: adopted
    on_plan, seen = racing(env, p + "x", "2")
    out = run(env, state(p, {"x": "1"}), on_plan=on_plan)
    assert p + "x" in out.retried, "adopted a key whose value changed under it"
    assert seen == [(0, b"1"), (1, b"2")]
    assert env.get(p + "x") == b"1"             # enforce: overwritten, after it was seen
    assert owned(env, "t") == {p + "x"}


def test_a_create_compares_absence(env: Env, history: Recorder) -> None:
    p = f"{env.ns}cr/"
    run(env, state(p, {"base": "1"}))
    on_plan, seen = racing(env, p + "y", "theirs")
    out = run(env, state(p, {"base": "1", "y": "mine"}), on_plan=on_plan)
    assert p + "y" in out.retried, "created over a key another client created meanwhile"
    assert seen == [(0, None), (1, b"theirs")]


def test_two_apply_sets_adopting_one_key_at_once_never_both_own_it(env: Env, history: Recorder) -> None:
    """The ownership fence: set A plans an adoption, set B adopts the same key before A commits."""
    p = f"{env.ns}fence/"
    env.put(p + "z", "1")
    m = env.write("b/z.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: z}}
        spec:
          prefix: {p}
          data: {{z: "1"}}
        """)

    def on_plan(plan: Any, attempt: int) -> None:
        if attempt == 0:
            r = env.run("apply", "-f", str(m), "--applyset", "b")
            assert r.code == 0, r.err

    with pytest.raises(OwnershipError):
        run(env, state(p, {"z": "1"}), applyset="a", on_plan=on_plan)
    assert owned(env, "b") == {p + "z"}
    assert owned(env, "a") == set(), "both apply sets recorded the key as theirs"


def test_batches_count_their_compares_against_the_servers_limit(tmp_path: Any) -> None:
    """Adoptions carry more compares than operations; a batch must fit both under --max-txn-ops."""
    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"]) as small:
        env = Env(small.endpoints, "/lim/", "/lim/.etcdsync/", tmp_path)
        for i in range(30):
            env.put(f"/lim/k{i:02d}", "v")      # unowned, declared value: 30 adoptions
        limits = Limits(max_ops=8)
        out = run(env, state("/lim/", {f"k{i:02d}": "v" for i in range(30)}), limits=limits)
        assert out.plan.has_changes
        assert limits.max_ops == 8, "a batch went over the server's limit and had to be shrunk"
        assert len(owned(env, "t")) == 30


def test_deletes_commit_after_every_put(tmp_path: Any) -> None:
    from history import recorder

    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"]) as small:
        env = Env(small.endpoints, "/ord/", "/ord/.etcdsync/", tmp_path)
        env.hist = recorder(env.endpoints, ["/ord/"], env.reserved)
        try:
            old = {f"old{i:02d}": "1" for i in range(20)}
            run(env, state("/ord/", old), limits=Limits(max_ops=8))
            start = env.hist.sync()
            new = {f"new{i:02d}": "1" for i in range(20)}
            run(env, state("/ord/", new), limits=Limits(max_ops=8), options=Options(force=True))
            env.hist.check()
            writes = [e for e in env.hist.snapshot() if e.revision > start and env.hist.ours(e)
                      and not e.key.startswith(env.reserved)]
            puts = [e.revision for e in writes if e.type == "put"]
            deletes = [e.revision for e in writes if e.type == "delete"]
            assert len(puts) == 20 and len(deletes) == 20
            assert max(puts) < min(deletes), "a delete committed before the last put (prune must run last)"
        finally:
            env.hist.stop()


def test_removing_a_prefix_prunes_only_owned_keys_under_it(env: Env, history: Recorder) -> None:
    base = f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: base}}
        spec:
          prefix: {env.ns}base/
          data: {{keep: "1"}}
        """
    gone = f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: gone}}
        spec:
          prefix: {env.ns}gone/
          data: {{a: "1"}}
        """
    env.put(f"{env.ns}gone/stranger", "not ours")
    env.write("m/base.yaml", base)
    env.write("m/gone.yaml", gone)
    history.declare({f"{env.ns}base/keep": "1", f"{env.ns}gone/a": "1"})
    assert env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t").code == 0
    (env.tmp / "m" / "gone.yaml").unlink()
    history.declare({f"{env.ns}base/keep": "1"})
    r = env.cli("apply", "-f", str(env.tmp / "m"), "--applyset", "t")
    assert r.code == 0, r.err
    assert env.get(f"{env.ns}gone/a") is None
    assert env.get(f"{env.ns}gone/stranger") == b"not ours"


def test_reads_larger_than_one_page_see_every_key(env: Env, history: Recorder) -> None:
    """More keys than one ranged read returns (10,000 per page): a second apply must find them all."""
    n = 10_050
    lines = "\n".join(f"    k{i:05d}: v" for i in range(n))
    m = env.write("big/app.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: big}\n"
                  f"spec:\n  prefix: {env.ns}big/\n  data:\n{lines}\n")
    history.declare({f"{env.ns}big/k{i:05d}": "v" for i in range(n)})
    assert env.cli("apply", "-f", str(m), "--applyset", "big").code == 0
    r = env.cli("diff", "-f", str(m), "--applyset", "big")
    assert r.code == 0, r.out[-500:]
    assert len(env.dump(f"{env.ns}big/")) == n


def test_a_conflict_names_the_compares_that_failed_and_only_those(env: Env, history: Recorder) -> None:
    """A lost election fence is named; a valid one is not blamed when another key moved."""
    from etcdsync.errors import ConflictError
    from etcdsync.etcd.store import created_at

    p = f"{env.ns}names/"
    run(env, state(p, {"a": "1"}))
    lost = f"{env.reserved}election/t/gone"
    with pytest.raises(ConflictError) as err:
        run(env, state(p, {"a": "2"}), fences=[created_at(lost, 12345)], max_attempts=1)
    assert err.value.keys == (lost,)
    live = f"{env.reserved}election/t/me"
    rev = env.put(live, "candidate")
    n = {"i": 0}

    def on_plan(plan: Any, attempt: int) -> None:
        n["i"] += 1
        env.put(p + "a", f"writer-{n['i']}")

    with pytest.raises(ConflictError) as err:
        run(env, state(p, {"a": "3"}), fences=[created_at(live, rev)], on_plan=on_plan, max_attempts=1)
    assert err.value.keys == (p + "a",), "a valid fence was reported as changed"


@pytest.mark.parametrize("case", ["delete", "adopt", "release", "retag"])
def test_diff_exits_1_when_the_only_change_is_ownership_or_a_delete(env: Env, history: Recorder, case: str) -> None:
    """`diff` exit 1 means "apply would write something": also when no value changes."""
    def doc(data: str) -> str:
        return ("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: o}\n"
                f"spec:\n  prefix: {env.ns}o/\n  data:\n{data}")

    m = env.tmp / "m"
    before = "    a: '1'\n    b: '2'\n"
    after = {"delete": "    a: '1'\n",
             "adopt": "    a: '1'\n    b: '2'\n    c: '3'\n",
             "release": "    a: '1'\n",
             "retag": "    a: '1'\n    b: {value: '2', prune: false}\n"}[case]
    if case == "release":
        before = "    a: '1'\n    b: {value: '2', prune: false}\n"
    history.declare({f"{env.ns}o/a": "1", f"{env.ns}o/b": "2"})
    env.write("m/o.yaml", doc(before))
    assert env.cli("apply", "-f", str(m), "--applyset", "t").code == 0
    if case == "adopt":
        env.put(f"{env.ns}o/c", "3")
    env.write("m/o.yaml", doc(after))
    r = env.cli("diff", "-f", str(m), "--applyset", "t")
    assert r.code == 1, f"{case}: diff said in sync\n{r.out}{r.err}"
    if case == "release":
        history.allow_release(f"{env.ns}o/b")
    declared = {"delete": {f"{env.ns}o/a": "1"}, "adopt": {f"{env.ns}o/a": "1", f"{env.ns}o/b": "2", f"{env.ns}o/c": "3"},
                "release": {f"{env.ns}o/a": "1"}, "retag": {f"{env.ns}o/a": "1", f"{env.ns}o/b": "2"}}[case]
    history.declare(declared)
    r = env.cli("apply", "-f", str(m), "--applyset", "t")
    assert r.code == 0, r.err
    assert env.cli("diff", "-f", str(m), "--applyset", "t").code == 0


def test_a_plan_superseded_by_newer_manifests_commits_nothing_more(env: Env, history: Recorder) -> None:
    """The daemon asks before every transaction whether newer manifests were loaded meanwhile (etcd
    was away, an editor saved again): if so, nothing more of the older plan is written."""
    from etcdsync.execute import Superseded

    p = f"{env.ns}sup/"
    commits: list[int] = []
    newer = {"loaded": False}

    def on_commit(revision: int) -> None:
        commits.append(revision)
        newer["loaded"] = True          # the file watcher loads a newer manifest after the first batch

    n = 10 * (MAX_IN_FLIGHT + 2)        # transactions of at most 7 keys: more than are ever in flight at once
    with pytest.raises(Superseded):
        run(env, state(p, {f"k{i:03d}": "v" for i in range(n)}), limits=Limits(max_ops=8),
            on_commit=on_commit, superseded=lambda: newer["loaded"])
    assert 1 <= len(commits) <= MAX_IN_FLIGHT       # batches already in flight may land, no new one starts
    assert 0 < len(env.dump(p)) < n
    with pytest.raises(Superseded):     # and a plan superseded before its first write writes nothing
        run(env, state(p, {"other": "x"}), superseded=lambda: True, options=Options(force=True, allow_empty=True))
    assert env.get(p + "other") is None
