"""Saved plans: `etcdsync diff --out PLAN`, then `etcdsync apply --plan PLAN`, against real etcd.

The plan is applied exactly or refused: a key that moved since the plan was made is named with both
revisions (exit 3, nothing written); a secret is in the file only as a salted hash and a changed
secret is refused; a plan is bound to its cluster, apply set and reserved prefix; keys a fresh plan
would add are not written. A malformed plan file is a usage error (exit 2, one line naming it).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from history import Recorder

from etcdsync.core import planfile
from etcdsync.core.model import DesiredKey, DesiredState
from etcdsync.errors import UsageError

SECRET = "pl4n-S3CRET-value"


def write_manifest(env: Env, data: dict[str, str], *, secret: bool = False) -> Path:
    body = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in data.items())
    if secret:
        body += "    token: {fromEnv: APP_TOKEN, secret: true}\n"
    path = env.tmp / "m" / "app.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n"
                    f"  prefix: {env.ns}app/\n  data:\n{body}")
    return path.parent


def keys(env: Env, data: dict[str, str]) -> dict[str, str]:
    return {f"{env.ns}app/{k}": v for k, v in data.items()}


def test_a_saved_plan_is_applied_exactly_keys_a_fresh_plan_would_add_are_not_written(env: Env, history: Recorder) -> None:
    m = write_manifest(env, {"a": "1", "b": "1", "gone": "1"})
    history.declare(keys(env, {"a": "1", "b": "1", "gone": "1"}))
    assert env.cli("apply", "-f", str(m), "--applyset", "s").code == 0
    m = write_manifest(env, {"a": "2", "b": "1", "c": "1"})
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--applyset", "s", "--out", str(plan))
    assert r.code == 1, r.err
    assert "commit: 1 transaction (atomic)" in r.out
    assert f"apply --plan {plan}" in r.err
    doc = json.loads(plan.read_text())
    assert doc["format"] == "etcdsync-plan" and doc["version"] == 1 and doc["applyset"] == "s"
    assert doc["reservedPrefix"] == env.reserved and len(doc["clusterId"]) == 16
    assert {c["key"]: c["action"] for c in doc["changes"]} == {
        f"{env.ns}app/a": "update", f"{env.ns}app/c": "create", f"{env.ns}app/gone": "delete"}
    # after the plan was made: the manifests gain a key, and etcd loses one the plan leaves alone
    m = write_manifest(env, {"a": "2", "b": "1", "c": "1", "d": "1"})
    history.declare(keys(env, {"a": "2", "b": "1", "c": "1", "d": "1"}))
    env.delete(f"{env.ns}app/b")
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 0, r.err
    assert "the manifests changed since" in r.err
    assert "commit: 1 transaction (atomic)" in r.out
    assert "applied: 1 created, 1 updated, 1 deleted, 0 unchanged in 1 transaction" in r.out
    assert env.dump(f"{env.ns}app/") == {f"{env.ns}app/a": b"2", f"{env.ns}app/c": b"1"}, \
        "apply --plan wrote a key the saved plan did not hold (b or d)"
    # a fresh apply then converges (the history checks the rest)
    assert env.cli("apply", "-f", str(m), "--applyset", "s").code == 0
    assert env.get(f"{env.ns}app/d") == b"1" and env.get(f"{env.ns}app/b") == b"1"


def test_a_stale_plan_is_refused_naming_every_stale_key_and_writes_nothing(env: Env, history: Recorder) -> None:
    m = write_manifest(env, {"a": "1", "b": "1", "c": "1", "d": "1"})
    history.declare(keys(env, {"a": "1", "b": "1", "c": "1", "d": "1"}))
    assert env.cli("apply", "-f", str(m)).code == 0
    m = write_manifest(env, {"a": "2", "b": "2", "c": "2", "new": "1"})
    plan = env.tmp / "plan.json"
    assert env.cli("diff", "-f", str(m), "--out", str(plan)).code == 1
    planned = {c["key"]: c["revision"] for c in json.loads(plan.read_text())["changes"]}
    ra = env.put(f"{env.ns}app/a", "theirs")           # another writer, after the plan
    env.delete(f"{env.ns}app/d")                        # planned delete: now gone
    rn = env.put(f"{env.ns}app/new", "someone")         # planned create: now exists
    rev = env.revision()
    history.declare(keys(env, {"a": "2", "b": "2", "c": "2", "new": "1"}))
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 3, r.out + r.err
    err = r.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the saved plan is stale: 3 planned keys changed"), r.err
    assert f"{env.ns}app/a: planned at revision {planned[f'{env.ns}app/a']}, now at revision {ra}" in r.err
    assert f"{env.ns}app/d: planned at revision {planned[f'{env.ns}app/d']}, now absent" in r.err
    assert f"{env.ns}app/new: absent when planned, now at revision {rn}" in r.err
    assert f"{env.ns}app/b" not in r.err and f"{env.ns}app/c" not in r.err
    assert env.untouched_since(rev), "a stale plan wrote something"
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), "-o", "json")
    assert r.code == 3
    doc = json.loads(r.out)
    assert {s["key"]: (s["plannedRevision"], s["currentRevision"]) for s in doc["stale"]} == {
        f"{env.ns}app/a": (planned[f"{env.ns}app/a"], ra), f"{env.ns}app/d": (planned[f"{env.ns}app/d"], 0),
        f"{env.ns}app/new": (0, rn)}
    assert env.untouched_since(rev)
    env.delete(f"{env.ns}app/new")                       # let the history's convergence hold
    assert env.cli("apply", "-f", str(m), "--max-deletes", "5").code == 0


def test_a_secret_is_saved_as_a_hash_and_a_changed_secret_is_refused(env: Env, history: Recorder) -> None:
    m = write_manifest(env, {"a": "1"}, secret=True)
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--out", str(plan), env={"APP_TOKEN": SECRET})
    assert r.code == 1, r.err
    text = plan.read_text()
    assert SECRET not in text, "the plan file holds the secret in clear"
    token = next(c for c in json.loads(text)["changes"] if c["key"].endswith("/token"))
    assert token["secret"] is True and set(token["value"]) == {"secretHash"}
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), env={"APP_TOKEN": SECRET + "-rotated"})
    assert r.code == 3, r.err
    assert f"{env.ns}app/token: the secret's value in the manifests is not the one planned" in r.err
    assert SECRET not in r.err + r.out
    assert env.untouched_since(rev)
    history.declare({**keys(env, {"a": "1"}), f"{env.ns}app/token": SECRET})
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), env={"APP_TOKEN": SECRET})
    assert r.code == 0, r.err
    assert SECRET not in r.err + r.out
    assert env.get(f"{env.ns}app/token") == SECRET.encode()


def test_a_plan_is_refused_on_another_cluster_apply_set_or_reserved_prefix(env: Env, history: Recorder,
                                                                           tmp_path: Path) -> None:
    from etcdsync.local.etcdbin import EtcdCluster

    m = write_manifest(env, {"a": "1"})
    plan = env.tmp / "plan.json"
    assert env.cli("diff", "-f", str(m), "--applyset", "one", "--out", str(plan)).code == 1
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), "--applyset", "two")
    assert r.code == 3 and "the plan was made for apply set 'one', --applyset names 'two'" in r.err, r.err
    r = env.cli("apply", "--reserved-prefix", f"{env.ns}.other/", "-f", str(m), "--plan", str(plan))
    assert r.code == 3 and "the plan was made for reserved prefix" in r.err, r.err
    with EtcdCluster(1, base_dir=str(tmp_path / "other")) as other:
        r = env.cli("apply", "-f", str(m), "--plan", str(plan), env={"ETCDSYNC_ENDPOINTS": other.endpoints[0]})
        assert r.code == 3, r.err
        assert "the plan was made for etcd cluster" in r.err and r.err.count("\n") == 1
        assert env.untouched_since(rev)

        async def count() -> int:
            from etcdsync.etcd.store import Store
            from etcdsync.settings import Connection

            async with Store(Connection(other.endpoints)) as s:
                kvs, _ = await s.get_prefix("/")
                return len(kvs)

        assert asyncio.run(count()) == 0, "a plan for another cluster wrote to this one"
    assert env.untouched_since(rev)
    history.declare(keys(env, {"a": "1"}))
    r = env.cli("apply", "-f", str(m), "--plan", str(plan), "-o", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["applyset"] == "one" and doc["savedPlan"]["manifestsChanged"] is False
    assert doc["commit"] == {"transactions": 1, "maxOperations": 128, "atomic": True}
    assert [c["key"] for c in doc["applied"]["results"]] == [f"{env.ns}app/a"]


def test_a_plan_without_changes_applies_nothing(env: Env, history: Recorder) -> None:
    m = write_manifest(env, {"a": "1"})
    history.declare(keys(env, {"a": "1"}))
    assert env.cli("apply", "-f", str(m)).code == 0
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--out", str(plan))
    assert r.code == 0 and "commit:" not in r.out
    assert json.loads(plan.read_text())["changes"] == []
    rev = env.revision()
    r = env.cli("apply", "-f", str(m), "--plan", str(plan))
    assert r.code == 0 and "in sync: nothing to apply" in r.out, r.out + r.err
    assert env.untouched_since(rev)


def test_a_refused_diff_writes_no_plan_file(env: Env, history: Recorder) -> None:
    m = write_manifest(env, {"a": "1"})
    history.declare(keys(env, {"a": "1"}))
    assert env.cli("apply", "-f", str(m), "--applyset", "one").code == 0
    plan = env.tmp / "plan.json"
    r = env.cli("diff", "-f", str(m), "--applyset", "two", "--out", str(plan))
    assert r.code == 3
    assert not plan.exists()


def test_a_writer_racing_the_check_is_a_conflict_never_a_new_plan(env: Env, history: Recorder) -> None:
    """Between the staleness check and the commit another writer changes a planned key: the compare
    fails and apply --plan stops (exit 3 naming the key); it does not re-plan and overwrite."""
    from etcdsync.apply import apply_saved
    from etcdsync.errors import ConflictError
    from etcdsync.etcd.store import Store
    from etcdsync.manifest import load_manifests
    from etcdsync.settings import Connection

    m = write_manifest(env, {"a": "1"})
    history.declare(keys(env, {"a": "1"}))
    assert env.cli("apply", "-f", str(m)).code == 0
    m = write_manifest(env, {"a": "2"})
    plan = env.tmp / "plan.json"
    assert env.cli("diff", "-f", str(m), "--out", str(plan)).code == 1
    saved = planfile.decode(plan.read_text(), str(plan))
    desired = load_manifests([str(m)], reserved_prefix=env.reserved)

    def on_plan(_p: Any, _attempt: int) -> None:
        env.put(f"{env.ns}app/a", "theirs")

    async def go() -> None:
        async with Store(Connection(env.endpoints)) as store:
            await apply_saved(store, saved, desired, on_plan=on_plan)

    history.declare(keys(env, {"a": "2"}))
    with pytest.raises(ConflictError) as err:
        asyncio.run(go())
    assert err.value.keys == (f"{env.ns}app/a",)
    assert "never re-planned" in str(err.value)
    assert env.get(f"{env.ns}app/a") == b"theirs"
    assert env.cli("apply", "-f", str(m)).code == 0


# -- the file format (pure) -------------------------------------------------------------------------------

def _valid() -> dict[str, Any]:
    return {"format": "etcdsync-plan", "version": 1, "applyset": "s", "reservedPrefix": "/.etcdsync/",
            "clusterId": "cdf818194e3a8c32", "revision": 7, "manifestDigest": "sha256:00", "salt": "0" * 32,
            "ownedBefore": 0, "counts": {"create": 1},
            "commit": {"transactions": 1, "maxOperations": 128, "atomic": True},
            "changes": [{"key": "/a/x", "action": "create", "revision": 0, "prefix": "/a/", "policy": "enforce",
                         "prune": True, "secret": False, "own": True, "retag": False, "owner": None, "lease": 0,
                         "owned": None, "value": "1", "note": "", "document": "ConfigSet/a"}]}


def test_a_valid_plan_file_decodes() -> None:
    saved = planfile.decode(json.dumps(_valid()), "p.json")
    assert saved.applyset == "s" and saved.changes[0].change.new == b"1"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "p.json: plan format version 2 is newer than this etcdsync reads (1)"),
    (lambda d: d.pop("format"), "p.json: not a plan file"),
    (lambda d: d.update(extra=1), "p.json: unknown field 'extra'"),
    (lambda d: d.pop("clusterId"), "p.json: missing field 'clusterId'"),
    (lambda d: d.update(revision="7"), "p.json: 'revision' must be an integer"),
    (lambda d: d["changes"][0].update(action="explode"), "p.json: changes[0] (/a/x): 'explode' is not a valid Action"),
    (lambda d: d["changes"][0].update(action="conflict"), "a conflict is not a change"),
    (lambda d: d["changes"][0].update(value=None), "'value' must be a string"),
    (lambda d: d["changes"][0].update(secret=True), "a secret's 'value' must be"),
    (lambda d: d["changes"][0].update(revision=5), "a create is planned against an absent key"),
    (lambda d: d["changes"].append(dict(d["changes"][0])), "/a/x: listed twice"),
    (lambda d: d.update(applyset="../x"), "applyset '../x'"),
])
def test_a_malformed_plan_file_is_one_usage_error_naming_it(mutate: Any, message: str) -> None:
    doc = _valid()
    mutate(doc)
    with pytest.raises(UsageError) as err:
        planfile.decode(json.dumps(doc), "p.json")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_json_names_the_line() -> None:
    with pytest.raises(UsageError, match=r"^p.json:3: not a plan file: invalid JSON"):
        planfile.decode('{\n "format": "etcdsync-plan",\n oops\n}', "p.json")


def test_the_manifest_digest_leaves_secret_values_out() -> None:
    def state(value: bytes, secret: bool) -> DesiredState:
        return DesiredState(keys={"/a/k": DesiredKey("/a/k", value, "/a/", secret=secret)}, prefixes=("/a/",))

    assert planfile.manifest_digest(state(b"1", True)) == planfile.manifest_digest(state(b"2", True))
    assert planfile.manifest_digest(state(b"1", False)) != planfile.manifest_digest(state(b"2", False))


def test_the_manifest_digest_tells_every_declared_field_and_key_boundary_apart() -> None:
    from etcdsync.core.model import Policy

    def digest(*keys: DesiredKey) -> str:
        return planfile.manifest_digest(DesiredState(keys={k.key: k for k in keys}, prefixes=("/a/",)))

    base = DesiredKey("/a/k", b"v", "/a/")
    variants = [
        DesiredKey("/a/k", b"v", "/a/", Policy.WARN), DesiredKey("/a/k", b"v", "/a/", prune=False),
        DesiredKey("/a/k", b"v", "/a/", secret=True), DesiredKey("/a/k", b"v", "/"), DesiredKey("/a/kv", b"", "/a/"),
        DesiredKey("/a/k", b"v\n", "/a/"), DesiredKey("/a/k", b"v", "/a/", document="other"),
    ]
    assert digest(base) == digest(DesiredKey("/a/k", b"v", "/a/"))
    assert digest(variants[-1]) == digest(base), "the document is not declared state"
    assert len({digest(base), *(digest(v) for v in variants[:-1])}) == len(variants)
    # where one key's value ends and the next key begins is part of what is hashed
    assert digest(DesiredKey("/a/k", b"1", "/a/"), DesiredKey("/a/l", b"23", "/a/")) != \
        digest(DesiredKey("/a/k", b"12", "/a/"), DesiredKey("/a/l", b"3", "/a/"))


def test_bad_plan_files_through_the_cli_exit_2_with_one_line(env: Env) -> None:
    m = write_manifest(env, {"a": "1"})
    bad = env.tmp / "bad.json"
    bad.write_text('{"format": "etcdsync-plan", "version": 99}')
    rev = env.revision()
    for path, expect in ((bad, "newer than this etcdsync reads"), (env.tmp / "missing.json", "No such file")):
        r = env.cli("apply", "-f", str(m), "--plan", str(path))
        assert r.code == 2, r.err
        assert r.err.count("\n") == 1 and expect in r.err and "Traceback" not in r.err
    assert env.untouched_since(rev)
