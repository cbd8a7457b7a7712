"""The planner's every branch, asserted as whole Change tuples (all seventeen fields), exact notes, counts
and guard messages: a wrong field, a wrong branch or a changed word fails here (mutation score)."""

from __future__ import annotations

import pytest

from etcdsync.core.inventory import Chunk, Entry, Inventory
from etcdsync.core.model import DesiredKey, DesiredState, Policy, ServiceInstance, Source, compact_source
from etcdsync.core.plan import Action, Change, Observed, Plan, guard, plan, retag_note
from etcdsync.settings import Options

P = "/config/app/"
Q = "/config/other/"
SRC = Source("m.yaml", 3, 5)
ORIGIN, AT = compact_source("m.yaml", 3, 5)    # a key's position as the loader holds it
DOC = "ConfigSet/app"


def owned_entry(prefix: str, prune: bool = True, secret: bool = False, document: str = DOC) -> Entry:
    """An inventory entry recorded (format 2) as declared by DOC, the document of every `dk` key."""
    return Entry(prefix, prune, secret, document)


def dk(rel: str, value: str = "v", *, prefix: str = P, policy: Policy = Policy.ENFORCE, prune: bool = True,
       secret: bool = False) -> DesiredKey:
    return DesiredKey(prefix + rel, value.encode(), prefix, policy, prune, secret, DOC, ORIGIN, AT)


def state(*keys: DesiredKey, live: tuple[ServiceInstance, ...] = ()) -> DesiredState:
    return DesiredState(keys={k.key: k for k in keys}, live=live, prefixes=(P,))


def inventory(entries: dict[str, Entry], name: str = "me") -> Inventory:
    i = Inventory(name)
    i.add_chunk(Chunk("/.etcdsync/sets/me/inventory/c1", 7, dict(entries)))
    return i


def expect(action: Action, d: DesiredKey, old: str | None, revision: int, **kw: object) -> Change:
    return Change(action, d.key, None if old is None else old.encode(), d.value, revision, d.prefix, d.policy,
                  d.prune, d.secret, document=DOC, origin=ORIGIN, at=AT, **kw)  # type: ignore[arg-type]


def only(p: Plan) -> Change:
    (c,) = p.changes
    return c


def test_every_declared_change_names_where_its_key_was_declared() -> None:
    """The fast paths (create, in sync) and _change (update, conflict) carry the key's compact position."""
    a, b, c, d = dk("a", "1"), dk("b", "2"), dk("c", "3"), dk("d", "4")
    observed = {b.key: Observed(b"2", 5), c.key: Observed(b"old", 6), d.key: Observed(b"x", 7)}
    inv = inventory({b.key: owned_entry(P), c.key: owned_entry(P)})
    p = plan(state(a, b, c, d), observed, inv, {d.key: "other"})
    assert [ch.action for ch in p.changes] == [Action.CREATE, Action.UNCHANGED, Action.UPDATE, Action.CONFLICT]
    assert [(ch.origin, ch.at, ch.source) for ch in p.changes] == [(ORIGIN, AT, SRC)] * 4
    assert [str(ch.source) for ch in p.changes] == ["m.yaml:3:5"] * 4


# ------------------------------------------------------------------------------------------------
# declared keys: one test per branch, the whole Change compared


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("prune, secret", [(True, False), (False, True)])
def test_in_sync_and_owned_is_unchanged_with_every_field(policy: Policy, prune: bool, secret: bool) -> None:
    d = dk("a", "1", policy=policy, prune=prune, secret=secret)
    p = plan(state(d), {d.key: Observed(b"1", 12)}, inventory({d.key: owned_entry(P, prune, secret)}), {})
    assert only(p) == expect(Action.UNCHANGED, d, "1", 12)
    assert not p.has_changes and p.writes == ()


def test_in_sync_but_leased_by_own_lease_is_detached_not_unchanged() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12, lease=0x1F)}, inventory({d.key: owned_entry(P)}), {},
             Options(own_leases=frozenset({0x1F})))
    assert only(p) == expect(Action.UPDATE, d, "1", 12, lease=0x1F, note="detached from etcdsync's own lease 000000000000001f")


@pytest.mark.parametrize("entry, note", [
    (owned_entry(Q), f"ownership record: prefix {Q} -> {P}"),
    (owned_entry(P, False), "ownership record: prune false -> true"),
    (owned_entry(P, True, True), "ownership record: secret true -> false"),
    (owned_entry(Q, False, True), f"ownership record: prefix {Q} -> {P}, prune false -> true, secret true -> false"),
])
def test_same_value_owned_with_other_record_is_a_retag(entry: Entry, note: str) -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12)}, inventory({d.key: entry}), {})
    assert only(p) == expect(Action.UNCHANGED, d, "1", 12, retag=True, note=note)
    assert p.has_changes and p.writes == p.changes
    assert p.counts["unchanged"] == 1


def test_retag_note_reports_new_values_for_prune_and_secret() -> None:
    d = dk("a", prune=False, secret=True)
    assert retag_note(owned_entry(P, True, False), d) == "ownership record: prune true -> false, secret false -> true"
    assert retag_note(owned_entry(P, False, True), d) == "ownership record: "


def test_retag_note_reports_the_document_recorded_and_declared() -> None:
    d = dk("a")
    assert retag_note(owned_entry(P, document=""), d) == "ownership record: document (not recorded) -> ConfigSet/app"
    assert retag_note(owned_entry(P, document="ConfigSet/old"), d) == \
        "ownership record: document ConfigSet/old -> ConfigSet/app"
    assert retag_note(owned_entry(P), d._replace(document="")) == "ownership record: document ConfigSet/app -> (none)"
    assert retag_note(owned_entry(Q, False, document=""), d) == \
        "ownership record: prefix /config/other/ -> /config/app/, prune false -> true, document (not recorded) -> ConfigSet/app"


def test_conflict_with_another_apply_set() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({}), {d.key: "theirs"})
    assert only(p) == expect(Action.CONFLICT, d, "0", 12, owner="theirs", note="owned by apply set 'theirs'")
    assert p.conflicts == p.changes
    assert p.owned_after == 0 and not p.has_changes


def test_conflict_when_absent_keeps_revision_zero() -> None:
    d = dk("a", "1")
    p = plan(state(d), {}, inventory({}), {d.key: "theirs"})
    assert only(p) == expect(Action.CONFLICT, d, None, 0, owner="theirs", note="owned by apply set 'theirs'")


def test_my_own_key_is_not_a_conflict_even_if_another_set_lists_it() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12)}, inventory({d.key: owned_entry(P)}), {d.key: "theirs"})
    assert only(p) == expect(Action.UNCHANGED, d, "1", 12)


@pytest.mark.parametrize("owned, own", [(False, True), (True, False)])
def test_absent_key_is_created(owned: bool, own: bool) -> None:
    d = dk("a", "1")
    inv = inventory({d.key: owned_entry(Q)} if owned else {})
    p = plan(state(d), {}, inv, {})
    assert only(p) == expect(Action.CREATE, d, None, 0, own=own)
    assert p.owned_after == 1


def test_absent_key_of_another_set_is_taken_over() -> None:
    d = dk("a", "1")
    p = plan(state(d), {}, inventory({}), {d.key: "theirs"}, Options(take_ownership=True))
    assert only(p) == expect(Action.CREATE, d, None, 0, own=True, owner="theirs",
                             note="taken over from apply set 'theirs'")


def test_key_under_a_foreign_lease_is_a_conflict() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12, lease=0xABC)}, inventory({}), {},
             Options(own_leases=frozenset({0x1})))
    assert only(p) == expect(Action.CONFLICT, d, "1", 12, lease=0xABC, note="held by lease 0000000000000abc of another client")
    assert p.counts["conflict"] == 1


@pytest.mark.parametrize("owned", [False, True])
def test_foreign_lease_taken_with_take_ownership(owned: bool) -> None:
    d = dk("a", "1")
    inv = inventory({d.key: owned_entry(Q)} if owned else {})
    p = plan(state(d), {d.key: Observed(b"0", 12, lease=0xABC)}, inv, {}, Options(take_ownership=True))
    assert only(p) == expect(Action.UPDATE, d, "0", 12, own=not owned, retag=owned, lease=0xABC,
                             note="taken from lease 0000000000000abc")


def test_foreign_lease_on_a_key_of_another_set_taken_over() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12, lease=0xABC)}, inventory({}), {d.key: "theirs"},
             Options(take_ownership=True))
    assert only(p) == expect(Action.UPDATE, d, "0", 12, own=True, owner="theirs", lease=0xABC,
                             note="taken over from apply set 'theirs'; taken from lease 0000000000000abc")


def test_own_lease_on_unowned_key_is_detached_and_adopted() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12, lease=0x2)}, inventory({}), {},
             Options(own_leases=frozenset({0x2})))
    assert only(p) == expect(Action.UPDATE, d, "0", 12, own=True, lease=0x2,
                             note="detached from etcdsync's own lease 0000000000000002")


@pytest.mark.parametrize("policy, value, action", [
    (Policy.WARN, "1", Action.UNCHANGED),
    (Policy.WARN, "0", Action.DRIFT),
    (Policy.CREATE_ONLY, "0", Action.UNCHANGED),
])
def test_own_lease_under_a_lenient_policy_is_planned_by_value(policy: Policy, value: str, action: Action) -> None:
    d = dk("a", "1", policy=policy)
    p = plan(state(d), {d.key: Observed(value.encode(), 12, lease=0x2)}, inventory({d.key: owned_entry(P)}), {},
             Options(own_leases=frozenset({0x2})))
    note = {Action.UNCHANGED: "create-only: existing value kept" if policy is Policy.CREATE_ONLY else "",
            Action.DRIFT: "drift held by policy warn"}[action]
    assert only(p) == expect(action, d, value, 12, note=note)


def test_same_value_unowned_is_adopted() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12)}, inventory({}), {})
    assert only(p) == expect(Action.ADOPT, d, "1", 12, own=True, note="exists, not owned by any apply set")
    assert p.owned_after == 1 and p.has_changes


def test_same_value_of_another_set_is_taken_over_as_adoption() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"1", 12)}, inventory({}), {d.key: "theirs"}, Options(take_ownership=True))
    assert only(p) == expect(Action.ADOPT, d, "1", 12, own=True, owner="theirs",
                             note="taken over from apply set 'theirs'")


def test_enforce_updates_an_unowned_key_and_adopts_it() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({}), {})
    assert only(p) == expect(Action.UPDATE, d, "0", 12, own=True, note="existed with another value, not owned by any apply set")


def test_enforce_takes_over_and_updates() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({}), {d.key: "theirs"}, Options(take_ownership=True))
    assert only(p) == expect(Action.UPDATE, d, "0", 12, own=True, owner="theirs",
                             note="taken over from apply set 'theirs'")


@pytest.mark.parametrize("entry, retag", [(owned_entry(P), False), (owned_entry(Q), True)])
def test_enforce_updates_an_owned_key(entry: Entry, retag: bool) -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({d.key: entry}), {})
    assert only(p) == expect(Action.UPDATE, d, "0", 12, retag=retag)
    assert p.owned_after == 1


@pytest.mark.parametrize("owned, entry, own, retag", [
    (False, None, True, False),
    (True, owned_entry(P), False, False),
    (True, owned_entry(Q), False, True),
])
def test_warn_reports_drift(owned: bool, entry: Entry | None, own: bool, retag: bool) -> None:
    d = dk("a", "1", policy=Policy.WARN)
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({d.key: entry} if entry else {}), {})
    assert only(p) == expect(Action.DRIFT, d, "0", 12, own=own, retag=retag, note="drift held by policy warn")
    assert p.counts["drift"] == 1


def test_warn_drift_on_a_taken_over_key() -> None:
    d = dk("a", "1", policy=Policy.WARN)
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({}), {d.key: "t"}, Options(take_ownership=True))
    assert only(p) == expect(Action.DRIFT, d, "0", 12, own=True, owner="t", note="drift held by policy warn")


@pytest.mark.parametrize("entry, action, own, retag, note", [
    (None, Action.ADOPT, True, False, "create-only: existing value kept"),
    (owned_entry(P), Action.UNCHANGED, False, False, "create-only: existing value kept"),
    (owned_entry(Q, True, True), Action.UNCHANGED, False, True,
     f"create-only: existing value kept; ownership record: prefix {Q} -> {P}, secret true -> false"),
])
def test_create_only_keeps_the_existing_value(entry: Entry | None, action: Action, own: bool, retag: bool,
                                              note: str) -> None:
    d = dk("a", "1", policy=Policy.CREATE_ONLY)
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({d.key: entry} if entry else {}), {})
    assert only(p) == expect(action, d, "0", 12, own=own, retag=retag, note=note)


def test_create_only_on_a_taken_over_key_is_adopted() -> None:
    d = dk("a", "1", policy=Policy.CREATE_ONLY)
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({}), {d.key: "t"}, Options(take_ownership=True))
    assert only(p) == expect(Action.ADOPT, d, "0", 12, own=True, owner="t", note="create-only: existing value kept")


# ------------------------------------------------------------------------------------------------
# owned keys no longer declared


def gone(rel: str, note: str, action: Action, obs: Observed | None, entry: Entry) -> Change:
    return Change(action, P + rel, obs.value if obs else None, None, obs.mod_revision if obs else 0, entry.prefix,
                  Policy.ENFORCE, entry.prune, entry.secret, note=note, document=entry.document)


@pytest.mark.parametrize("obs, entry, action, note", [
    (None, owned_entry(P), Action.RELEASE, "already absent"),
    (None, owned_entry(P, False, True), Action.RELEASE, "already absent"),
    (Observed(b"x", 30), owned_entry(P, False), Action.RELEASE, "prune: false, kept in etcd"),
    (Observed(b"x", 30, lease=5), owned_entry(P, True, True), Action.RELEASE, "now held by a lease, left alone"),
    (Observed(b"x", 30), owned_entry(P, True, True), Action.DELETE, ""),
    (Observed(b"x", 30), owned_entry(P), Action.DELETE, ""),
])
def test_owned_key_no_longer_declared(obs: Observed | None, entry: Entry, action: Action, note: str) -> None:
    keep = dk("keep", "1")
    observed = {keep.key: Observed(b"1", 9)}
    if obs is not None:
        observed[P + "z"] = obs
    p = plan(state(keep), observed, inventory({keep.key: owned_entry(P), P + "z": entry}), {}, Options(max_deletes=1))
    assert p.changes == (expect(Action.UNCHANGED, keep, "1", 9), gone("z", note, action, obs, entry))
    assert p.owned_before == 2 and p.owned_after == 1
    assert p.refused is None


def test_changes_are_sorted_by_key_and_counted() -> None:
    keys = [dk("c", "1"), dk("a", "1"), dk("b", "1")]
    inv = inventory({P + "b": owned_entry(P), P + "d": owned_entry(P), P + "e": owned_entry(P)})
    observed = {P + "a": Observed(b"0", 1), P + "b": Observed(b"1", 2), P + "d": Observed(b"1", 3)}
    p = plan(state(*keys), observed, inv, {})
    assert [(c.key[len(P):], c.action) for c in p.changes] == [
        ("a", Action.UPDATE), ("b", Action.UNCHANGED), ("c", Action.CREATE), ("d", Action.DELETE),
        ("e", Action.RELEASE)]
    assert dict(p.counts) == {"create": 1, "update": 1, "adopt": 0, "delete": 1, "release": 1, "unchanged": 1,
                              "drift": 0, "conflict": 0}
    assert p.applyset == "me" and p.owned_before == 3 and p.owned_after == 3
    assert repr(p) == ("Plan(applyset='me', changes=5, counts={'create': 1, 'update': 1, 'adopt': 0, 'delete': 1, "
                       "'release': 1, 'unchanged': 1, 'drift': 0, 'conflict': 0})")
    assert [c.key[len(P):] for c in p.writes] == ["a", "c", "d", "e"]


def live_instance(key: str) -> ServiceInstance:
    return ServiceInstance("svc", "i1", "h", 1, key, b"{}", "/svc/", ttl=10)


def test_live_instances_report_presence_and_current_value() -> None:
    a, b = live_instance("/svc/a"), live_instance("/svc/b")
    p = plan(state(live=(a, b)), {"/svc/a": Observed(b"cur", 4)}, inventory({}), {})
    assert [(s.instance, s.present, s.current) for s in p.live] == [(a, True, b"cur"), (b, False, None)]
    assert p.changes == () and not p.has_changes


# ------------------------------------------------------------------------------------------------
# the deletion guard


def deleting(n: int, keep: int) -> tuple[DesiredState, dict[str, Observed], Inventory]:
    kept = [dk(f"k{i}", "1") for i in range(keep)]
    entries = {d.key: owned_entry(P) for d in kept} | {P + f"d{i}": owned_entry(P) for i in range(n)}
    observed = {key: Observed(b"1", 5) for key in entries}
    return state(*kept), observed, inventory(entries)


@pytest.mark.parametrize("n, limit, force, refused", [
    (3, 3, False, None),
    (4, 3, False, "4 keys to delete, more than --max-deletes 3; refusing, pass --force if that is intended"),
    (4, 3, True, None),
])
def test_max_deletes(n: int, limit: int, force: bool, refused: str | None) -> None:
    p = plan(*deleting(n, 1), {}, Options(max_deletes=limit, force=force))
    assert p.refused == refused
    assert p.counts["delete"] == n


def test_emptying_an_apply_set_is_refused_unless_allowed() -> None:
    p = plan(*deleting(2, 0), {})
    assert p.refused == ("apply set 'me' would own nothing afterwards (2 to delete, 0 to release); "
                         "refusing, pass --allow-empty if that is intended")
    assert plan(*deleting(2, 0), {}, Options(allow_empty=True)).refused is None


def test_emptying_by_releases_is_refused_and_counts_them() -> None:
    inv = inventory({P + "a": owned_entry(P), P + "b": owned_entry(P, False)})
    p = plan(state(), {P + "b": Observed(b"1", 3)}, inv, {})
    assert p.refused == ("apply set 'me' would own nothing afterwards (0 to delete, 2 to release); "
                         "refusing, pass --allow-empty if that is intended")


def test_guard_ignores_an_empty_set_with_nothing_to_delete() -> None:
    assert plan(state(), {}, inventory({}), {}).refused is None


def test_guard_checks_emptiness_before_the_delete_limit() -> None:
    p = plan(*deleting(5, 0), {}, Options(max_deletes=1))
    assert p.refused is not None and p.refused.startswith("apply set 'me' would own nothing afterwards (5 to delete")
    p = plan(*deleting(5, 0), {}, Options(max_deletes=1, allow_empty=True))
    assert p.refused == "5 keys to delete, more than --max-deletes 1; refusing, pass --force if that is intended"


def test_guard_on_a_plan_without_counts() -> None:
    p = Plan("s", (), owned_before=0)
    assert guard(p, Options(max_deletes=0)) is None


def test_guard_when_owned_after_is_negative() -> None:
    c = Change(Action.DELETE, P + "a", b"1", None, 3)
    p = Plan("s", (c,), owned_before=0, counts={"delete": 1})
    assert guard(p, Options()) == ("apply set 's' would own nothing afterwards (1 to delete, 0 to release); "
                                   "refusing, pass --allow-empty if that is intended")


def test_default_max_deletes_is_100() -> None:
    assert plan(*deleting(100, 1), {}).refused is None
    assert plan(*deleting(101, 1), {}).refused == (
        "101 keys to delete, more than --max-deletes 100; refusing, pass --force if that is intended")


# ------------------------------------------------------------------------------------------------
# Plan and Change properties


def conflict(key: str, owner: str | None, note: str = "") -> Change:
    return Change(Action.CONFLICT, key, None, b"1", 0, owner=owner, note=note)


@pytest.mark.parametrize("changes, message", [
    ([conflict("/a", "x")], "/a: owned by apply set 'x', not 'me'; pass --take-ownership to move them"),
    ([conflict("/a", "x"), conflict("/b", "y")],
     "/a: owned by apply set 'x', not 'me' (and 1 more key); pass --take-ownership to move them"),
    ([conflict("/a", "x"), conflict("/b", "y"), conflict("/c", None)],
     "/a: owned by apply set 'x', not 'me' (and 2 more keys); pass --take-ownership to move them"),
    ([conflict("/a", None, "held by lease 5 of another client")],
     "/a: held by lease 5 of another client; pass --take-ownership to take it (it is then written without the lease)"),
    ([conflict("/a", None, "n"), conflict("/b", "x"), conflict("/c", "x")],
     "/a: n (and 2 more keys); pass --take-ownership to take it (it is then written without the lease)"),
])
def test_conflict_message(changes: list[Change], message: str) -> None:
    unchanged = Change(Action.UNCHANGED, "/0", b"1", b"1", 1)
    p = Plan("me", (unchanged, *changes))
    assert p.conflict_message("me") == message


@pytest.mark.parametrize("action, retag, own, writes, puts", [
    (Action.CREATE, False, False, True, True),
    (Action.UPDATE, False, False, True, True),
    (Action.ADOPT, False, False, True, False),
    (Action.DELETE, False, False, True, False),
    (Action.RELEASE, False, False, True, False),
    (Action.UNCHANGED, False, False, False, False),
    (Action.UNCHANGED, True, False, True, False),
    (Action.DRIFT, False, False, False, False),
    (Action.DRIFT, False, True, True, False),
    (Action.CONFLICT, False, False, False, False),
])
def test_change_writes_and_puts_value(action: Action, retag: bool, own: bool, writes: bool, puts: bool) -> None:
    c = Change(action, "/k", b"0", b"1", 1, retag=retag, own=own)
    assert (c.writes, c.puts_value) == (writes, puts)
    p = Plan("me", (c,))
    assert p.has_changes is writes
    assert p.writes == ((c,) if writes else ())


def test_owned_after_counts_own_deletes_and_releases() -> None:
    cs = (Change(Action.CREATE, "/a", None, b"1", 0, own=True), Change(Action.CREATE, "/b", None, b"1", 0),
          Change(Action.DELETE, "/c", b"1", None, 1), Change(Action.RELEASE, "/d", None, None, 0),
          Change(Action.DELETE, "/e", b"1", None, 1), Change(Action.UPDATE, "/f", b"1", b"2", 1, own=True))
    assert Plan("me", cs, owned_before=5).owned_after == 4


# ------------------------------------------------------------------------------------------------
# mutants that survived the first round


def test_prune_false_and_secret_are_carried_on_every_planned_change() -> None:
    d = dk("a", "1", prune=False, secret=True)
    p = plan(state(d), {}, inventory({}), {})
    assert only(p) == expect(Action.CREATE, d, None, 0, own=True)
    assert (only(p).prune, only(p).secret) == (False, True)


def test_owned_key_listed_by_another_set_is_updated_not_a_conflict() -> None:
    d = dk("a", "1")
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({d.key: owned_entry(P)}), {d.key: "theirs"})
    assert only(p) == expect(Action.UPDATE, d, "0", 12)


def test_secret_key_with_a_matching_record_is_not_retagged() -> None:
    d = dk("a", "1", secret=True)
    p = plan(state(d), {d.key: Observed(b"0", 12)}, inventory({d.key: owned_entry(P, True, True)}), {})
    assert only(p) == expect(Action.UPDATE, d, "0", 12)


def test_a_lease_conflict_does_not_stop_planning_the_next_keys() -> None:
    first, second = dk("a", "1"), dk("b", "1")
    p = plan(state(first, second), {first.key: Observed(b"1", 12, lease=7)}, inventory({}), {})
    assert [c.action for c in p.changes] == [Action.CONFLICT, Action.CREATE]


def test_a_change_planned_past_the_fast_paths_keeps_the_declared_flags() -> None:
    """prune: false and secret: true reach the Change on every path (_change included: an update, a
    drift, a conflict), where the executor records them in the inventory entry."""
    a = dk("a", "1", prune=False, secret=True)
    b = dk("b", "2", prune=False, policy=Policy.WARN)
    c = dk("c", "3", prune=False)
    observed = {a.key: Observed(b"old", 5), b.key: Observed(b"x", 6), c.key: Observed(b"3", 7)}
    inv = inventory({a.key: owned_entry(P, prune=False, secret=True), b.key: owned_entry(P, prune=False)})
    p = plan(state(a, b, c), observed, inv, {c.key: "theirs"})
    assert p.changes == (expect(Action.UPDATE, a, "old", 5), expect(Action.DRIFT, b, "x", 6, note="drift held by policy warn"),
                         expect(Action.CONFLICT, c, "3", 7, owner="theirs", note="owned by apply set 'theirs'"))
    assert [(ch.prune, ch.secret) for ch in p.changes] == [(False, True), (False, False), (False, False)]


@pytest.mark.parametrize("taken", [False, True])
def test_the_keys_after_a_re_created_or_taken_over_key_are_planned_too(taken: bool) -> None:
    """An owned key someone deleted (re-created) or another set's absent key (taken over) is planned,
    and so is every key declared after it."""
    a, b = dk("a", "1"), dk("b", "2")
    inv = inventory({} if taken else {a.key: owned_entry(P)})
    p = plan(state(a, b), {}, inv, {a.key: "theirs"} if taken else {}, Options(take_ownership=taken))
    first = expect(Action.CREATE, a, None, 0, own=True, owner="theirs", note="taken over from apply set 'theirs'") \
        if taken else expect(Action.CREATE, a, None, 0)
    assert p.changes == (first, expect(Action.CREATE, b, None, 0, own=True))


class _SyncedSnapshot(dict):  # type: ignore[type-arg]
    """An observed mapping that knows its keys in sync (core.plan.SyncedObserved) for the one mapping
    of declared keys it was read for, and records every key looked up one by one."""

    def __init__(self, seen: dict[str, Observed], keys: object) -> None:
        super().__init__(seen)
        self.keys_read_for = keys
        self.looked_up: list[str] = []

    def synced(self, keys: object) -> dict[str, int]:
        if keys is not self.keys_read_for:
            return {}
        return {k: o.mod_revision for k, o in self.items()
                if k in keys and o.value == keys[k].value and not o.lease}  # type: ignore[operator,index]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.looked_up.append(key)
        return super().get(key, default)


@pytest.mark.parametrize("keep", [True, False])
def test_owned_keys_in_sync_by_the_snapshot_are_never_looked_up_one_by_one(keep: bool) -> None:
    """plan() takes the keys a snapshot says are in sync from `synced(desired.keys)`, the very mapping
    of declared keys, and looks up only the others (a drifted, an absent, an unowned key); the plan
    is the one a plain dict of the same keys gives."""
    a, b, c, d = dk("a", "1"), dk("b", "2"), dk("c", "3"), dk("d", "4")
    s = state(a, b, c, d)
    seen = {a.key: Observed(b"1", 11), b.key: Observed(b"old", 12), d.key: Observed(b"4", 14)}
    inv = inventory({a.key: owned_entry(P), b.key: owned_entry(P), c.key: owned_entry(P)})
    snapshot = _SyncedSnapshot(seen, s.keys)
    p = plan(s, snapshot, inv, {}, keep_unchanged=keep)
    assert p == plan(s, dict(seen), inv, {}, keep_unchanged=keep)
    assert set(snapshot.looked_up) == {b.key, c.key, d.key}
    assert (p.changes[0] == expect(Action.UNCHANGED, a, "1", 11)) if keep else (p.unchanged == 1)
