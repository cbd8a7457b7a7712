"""The pure planner: every Action, the guard, ownership; no etcd."""

from __future__ import annotations

import pytest

from etcdsync.core.inventory import Chunk, Entry, Inventory
from etcdsync.core.model import DesiredKey, DesiredState, Policy
from etcdsync.core.plan import Action, Observed, plan
from etcdsync.settings import Options

P = "/config/app/"


def desired(*keys: DesiredKey) -> DesiredState:
    return DesiredState(keys={k.key: k for k in keys}, prefixes=(P,))


def dk(rel: str, value: str, **kw: object) -> DesiredKey:
    return DesiredKey(key=P + rel, value=value.encode(), prefix=P, **kw)  # type: ignore[arg-type]


def inv(*rels: str, prune: bool = True, name: str = "default") -> Inventory:
    i = Inventory(name)
    i.add_chunk(Chunk("/.etcdsync/sets/default/inventory/x", 7, {P + r: Entry(P, prune) for r in rels}))
    return i


def obs(**values: str) -> dict[str, Observed]:
    return {P + k: Observed(v.encode(), 10 + n) for n, (k, v) in enumerate(values.items())}


def one(p, key="a"):  # type: ignore[no-untyped-def]
    (c,) = [c for c in p.changes if c.key == P + key]
    return c


@pytest.mark.parametrize(
    "policy, etcd_value, owned, action, own",
    [
        (Policy.ENFORCE, None, False, Action.CREATE, True),
        (Policy.ENFORCE, None, True, Action.CREATE, False),
        (Policy.ENFORCE, "1", True, Action.UNCHANGED, False),
        (Policy.ENFORCE, "1", False, Action.ADOPT, True),
        (Policy.ENFORCE, "2", True, Action.UPDATE, False),
        (Policy.ENFORCE, "2", False, Action.UPDATE, True),
        (Policy.WARN, None, False, Action.CREATE, True),
        (Policy.WARN, "2", True, Action.DRIFT, False),
        (Policy.WARN, "2", False, Action.DRIFT, True),
        (Policy.CREATE_ONLY, None, False, Action.CREATE, True),
        (Policy.CREATE_ONLY, "2", True, Action.UNCHANGED, False),
        (Policy.CREATE_ONLY, "2", False, Action.ADOPT, True),
    ],
)
def test_declared_key_outcomes(policy: Policy, etcd_value: str | None, owned: bool, action: Action, own: bool) -> None:
    o = obs(a=etcd_value) if etcd_value is not None else {}
    p = plan(desired(dk("a", "1", policy=policy)), o, inv("a") if owned else inv(), {})
    c = one(p)
    assert (c.action, c.own) == (action, own)
    if action is Action.UPDATE:
        assert c.revision == 10 and c.old == b"2" and c.new == b"1"


def test_undeclared_owned_key_is_deleted_and_unowned_survives() -> None:
    o = obs(a="1", gone="x", stranger="y")
    p = plan(desired(dk("a", "1")), o, inv("a", "gone"), {})
    assert one(p, "gone").action is Action.DELETE
    assert one(p, "gone").revision == 11
    assert not [c for c in p.changes if c.key == P + "stranger"]


def test_prune_false_is_released_not_deleted() -> None:
    p = plan(desired(dk("a", "1")), obs(a="1", keep="x"), inv("a") and _mixed(), {})
    assert one(p, "keep").action is Action.RELEASE


def _mixed() -> Inventory:
    i = inv("a")
    i.add_chunk(Chunk("/.etcdsync/sets/default/inventory/y", 8, {P + "keep": Entry(P, False)}))
    return i


def test_owned_key_already_gone_is_released() -> None:
    p = plan(desired(dk("a", "1")), obs(a="1"), inv("a", "gone"), {})
    assert one(p, "gone").action is Action.RELEASE


def test_retag_when_prune_flag_changes() -> None:
    p = plan(desired(dk("a", "1", prune=False)), obs(a="1"), inv("a"), {})
    c = one(p)
    assert c.action is Action.UNCHANGED and c.retag and p.has_changes


def test_other_owner_is_conflict_unless_take_ownership() -> None:
    p = plan(desired(dk("a", "1")), obs(a="1"), inv(), {P + "a": "other"})
    assert one(p).action is Action.CONFLICT and p.conflicts
    p = plan(desired(dk("a", "2")), obs(a="1"), inv(), {P + "a": "other"}, Options(take_ownership=True))
    c = one(p)
    assert c.action is Action.UPDATE and c.owner == "other" and c.own


def test_in_sync_plan_has_no_changes() -> None:
    p = plan(desired(dk("a", "1"), dk("b", "2")), obs(a="1", b="2"), inv("a", "b"), {})
    assert not p.has_changes and p.refused is None
    assert p.counts["unchanged"] == 2


def test_guard_refuses_empty_result() -> None:
    p = plan(desired(), obs(a="1"), inv("a"), {})
    assert p.refused and "own nothing" in p.refused
    assert plan(desired(), obs(a="1"), inv("a"), {}, Options(allow_empty=True)).refused is None


def test_guard_refuses_too_many_deletes() -> None:
    rels = [f"k{i}" for i in range(5)]
    o = obs(keep="1", **{r: "v" for r in rels})
    p = plan(desired(dk("keep", "1")), o, inv("keep", *rels), {}, Options(max_deletes=4))
    assert p.refused and "--max-deletes 4" in p.refused
    assert plan(desired(dk("keep", "1")), o, inv("keep", *rels), {}, Options(max_deletes=4, force=True)).refused is None
    assert plan(desired(dk("keep", "1")), o, inv("keep", *rels), {}, Options(max_deletes=5)).refused is None


def test_nothing_owned_nothing_declared_is_not_refused() -> None:
    p = plan(desired(), {}, inv(), {})
    assert p.refused is None and not p.has_changes


def test_owned_key_now_under_a_lease_is_released_not_deleted() -> None:
    o = {P + "a": Observed(b"1", 10), P + "live": Observed(b"x", 11, lease=99)}
    p = plan(desired(dk("a", "1")), o, inv("a", "live"), {})
    assert one(p, "live").action is Action.RELEASE


@pytest.mark.parametrize("owned", [False, True])
@pytest.mark.parametrize("value", ["1", "other"])
@pytest.mark.parametrize("policy", list(Policy))
def test_key_held_by_another_clients_lease_is_a_conflict(owned: bool, value: str, policy: Policy) -> None:
    o = {P + "a": Observed(value.encode(), 10, lease=0x694D7C5E8D1C4A0B)}
    p = plan(desired(dk("a", "1", policy=policy)), o, inv("a") if owned else inv(), {})
    c = one(p)
    assert c.action is Action.CONFLICT and c.lease == 0x694D7C5E8D1C4A0B and c.owner is None
    assert c.note == "held by lease 694d7c5e8d1c4a0b of another client"
    assert p.conflict_message("t") == (f"{P}a: held by lease 694d7c5e8d1c4a0b of another client; "
                                       "pass --take-ownership to take it (it is then written without the lease)")


def test_take_ownership_of_a_leased_key_writes_it_without_the_lease() -> None:
    o = {P + "a": Observed(b"1", 10, lease=5), P + "b": Observed(b"x", 11, lease=5)}
    d = desired(dk("a", "1"), dk("b", "2"))
    p = plan(d, o, inv(), {}, Options(take_ownership=True))
    a, b = one(p, "a"), one(p, "b")
    assert (a.action, a.own, a.new) == (Action.UPDATE, True, b"1"), "re-put: a put without lease detaches it"
    assert (b.action, b.own) == (Action.UPDATE, True)
    assert "taken from lease 0000000000000005" in a.note
    # owned already, same value: still re-put so the key never expires
    p = plan(d, o, inv("a", "b"), {}, Options(take_ownership=True))
    assert (one(p, "a").action, one(p, "a").own) == (Action.UPDATE, False)


def test_own_leases_are_not_a_conflict() -> None:
    # a key etcdsync's daemon registered under its own lease that the manifests now declare static
    o = {P + "a": Observed(b"1", 10, lease=7)}
    p = plan(desired(dk("a", "1")), o, inv("a"), {}, Options(own_leases=frozenset({7})))
    assert one(p).action is Action.UPDATE and not p.conflicts


def test_conflict_message_for_another_apply_set() -> None:
    p = plan(desired(dk("a", "1"), dk("b", "1")), {}, inv(), {P + "a": "one", P + "b": "one"})
    assert p.conflict_message("two") == (f"{P}a: owned by apply set 'one', not 'two' (and 1 more key); "
                                         "pass --take-ownership to move them")


def test_keep_unchanged_false_leaves_out_only_keys_in_sync_and_owned_as_declared() -> None:
    """What `etcdsync diff`/`apply` without -v or -o json plan: the same plan without a Change per key
    in sync; `unchanged` and counts["unchanged"] still count them, every other change is listed."""
    state = desired(dk("same", "1"), dk("same2", "2"), dk("new", "1"), dk("drift", "x", policy=Policy.WARN),
                    dk("seed", "x", policy=Policy.CREATE_ONLY), dk("retag", "1", prune=False), dk("adopt", "1"),
                    dk("upd", "new"))
    seen = obs(same="1", same2="2", drift="y", seed="y", retag="1", adopt="1", upd="old", gone="1")
    owned = inv("same", "same2", "drift", "seed", "retag", "upd", "gone")
    full = plan(state, seen, owned, {}, Options(allow_empty=True))
    lean = plan(state, seen, owned, {}, Options(allow_empty=True), keep_unchanged=False)
    in_sync = {P + "same", P + "same2"}
    assert [c for c in full.changes if c.key not in in_sync] == list(lean.changes)
    assert {c.key for c in full.changes if c.key in in_sync} == in_sync
    assert all(c.action is Action.UNCHANGED for c in full.changes if c.key in in_sync)
    assert (full.unchanged, lean.unchanged) == (0, 2)
    assert lean.counts == full.counts and lean.counts["unchanged"] == 4   # the two in sync, seed, retag
    assert (lean.has_changes, lean.owned_after, lean.refused, lean.writes) == \
        (full.has_changes, full.owned_after, full.refused, full.writes)
    assert {c.key for c in lean.changes if c.action is Action.UNCHANGED} == {P + "seed", P + "retag"}


def test_keep_unchanged_false_counts_in_the_summaries() -> None:
    from etcdsync.core.render import plan_counts, render_plan, unchanged_keys

    state = desired(dk("a", "1"), dk("b", "1"), dk("c", "1"))
    seen = obs(a="1", b="1")
    full = plan(state, seen, inv("a", "b"), {})
    lean = plan(state, seen, inv("a", "b"), {}, keep_unchanged=False)
    assert plan_counts(lean) == plan_counts(full) and plan_counts(lean)["unchanged"] == 2
    assert render_plan(lean) == render_plan(full)
    assert render_plan(lean).endswith("1 to create, 0 to update, 0 to delete, 2 unchanged")
    assert unchanged_keys(lean, {}) == unchanged_keys(full, {}) == 2


def test_a_snapshot_that_knows_its_keys_in_sync_plans_as_one_looked_up_key_by_key() -> None:
    """diff.Observed hands plan() its keys in sync at once (core.plan.SyncedObserved): the plan is the
    one made from the same snapshot as a plain dict of Seen, for every combination of value, lease,
    record and owner; and a plan of other keys (a selection) gets nothing from it."""
    import dataclasses
    import itertools

    from etcdsync.diff import Observed as Snapshot
    from etcdsync.etcd.store import KeyValue

    keys, kvs, entries = [], [], {}
    combos = itertools.product([None, "1", "2"], [0, 5], [None, Entry(P, True, False, "ConfigSet/a"),
                                                          Entry(P, False, False, "ConfigSet/a"), Entry(P),
                                                          Entry("/config/", True, False, "ConfigSet/a")],
                               [Policy.ENFORCE, Policy.WARN])
    for n, (etcd_value, lease, entry, policy) in enumerate(combos):
        rel = f"k{n:03d}"
        keys.append(dk(rel, "1", policy=policy, document="ConfigSet/a"))
        if etcd_value is not None:
            kvs.append(KeyValue(P + rel, etcd_value.encode(), 100 + n, 1, 1, lease))
        if entry is not None:
            entries[P + rel] = entry
    kvs.append(KeyValue(P + "undeclared", b"x", 99, 1, 1, 0))
    entries[P + "undeclared"] = Entry(P)
    state = desired(*keys)
    snapshot = Snapshot(state.keys)
    snapshot.add_page(kvs, {}, "/.etcdsync/")
    looked_up = dict(snapshot.items())
    assert snapshot.synced(state.keys) and snapshot.synced(dict(state.keys)) == {}
    i = Inventory("default")
    i.add_chunk(Chunk("/.etcdsync/sets/default/inventory/x", 7, entries))
    for keep in (True, False):
        for options in (Options(), Options(take_ownership=True), Options(prune=False)):
            assert plan(state, snapshot, i, {P + "k001": "other"}, options, keep_unchanged=keep) == \
                plan(state, looked_up, i, {P + "k001": "other"}, options, keep_unchanged=keep)
    other = dataclasses.replace(state, keys={k: d._replace(value=b"2") for k, d in state.keys.items()})
    assert plan(other, snapshot, i, {}) == plan(other, looked_up, i, {})   # other keys: looked up one by one
