"""The pure half of the apply history (etcdsync/core/history.py): entry shape, retention, who wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etcdsync.core.history import (
    MAX_FAILED,
    MAX_KEYS,
    MAX_REVISIONS,
    Suspension,
    classify,
    decode_entry,
    decode_suspension,
    dropped,
    encode_entry,
    encode_suspension,
    entry_key,
    entry_rows,
    make_entry,
    parse_id,
    suspend_key,
)
from etcdsync.errors import InventoryError, UsageError

R = "/.etcdsync/"


def entry(**kw: object) -> object:
    args: dict[str, object] = {"applyset": "web", "kind": "apply", "who": "me@host", "revisions": [10, 11],
                               "read": 9, "source": {"digest": "sha256:ab"}, "counts": {"created": 2},
                               "keys": ["/a", "/b"], "now": 1000.0}
    args.update(kw)
    return make_entry(**args)  # type: ignore[arg-type]


def test_an_entry_round_trips_and_its_key_sorts_by_id() -> None:
    e = entry()
    key = entry_key(R, "web", e.id)  # type: ignore[attr-defined]
    assert key == "/.etcdsync/history/web/0000000000000011"
    assert decode_entry(key, encode_entry(e), reserved=R) == e  # type: ignore[arg-type]
    assert entry_key(R, "web", 9) < entry_key(R, "web", 10) < entry_key(R, "web", 100)


def test_an_entry_of_an_apply_that_failed_half_way_keeps_its_error_capped() -> None:
    e = entry(failed="etcd: permission denied " + "x" * 1000)
    assert e.failed.startswith("etcd: permission denied") and len(e.failed) == MAX_FAILED  # type: ignore[attr-defined]
    assert json.loads(encode_entry(e))["failed"] == e.failed  # type: ignore[arg-type, attr-defined]
    assert decode_entry(entry_key(R, "web", 11), encode_entry(e), reserved=R) == e  # type: ignore[arg-type]
    assert "failed" not in json.loads(encode_entry(entry()))  # type: ignore[arg-type]
    assert entry_rows([e])[1][3] == "apply (failed)"  # type: ignore[list-item]
    assert entry_rows([entry()])[1][3] == "apply"  # type: ignore[list-item]


def test_lists_are_capped_and_the_span_still_covers_every_write() -> None:
    e = make_entry(applyset="web", kind="reconcile", who="d", revisions=range(1, 501),
                   keys=[f"/k{i}" for i in reversed(range(300))] + ["/k7"])
    assert e.keys == tuple(sorted(f"/k{i}" for i in range(300))[:MAX_KEYS]) and e.keys_total == 300
    assert len(e.revisions) == MAX_REVISIONS and e.span == (1, 500) and e.id == 500
    assert e.wrote(1) == "yes" and e.wrote(500) == "yes" and e.wrote(300) == "probably" and e.wrote(501) is None
    assert decode_entry(entry_key(R, "web", 500), encode_entry(e), reserved=R) == e


@pytest.mark.parametrize("change", [
    lambda d: d.update(v=2), lambda d: d.update(extra=1), lambda d: d.pop("who"), lambda d: d.update(id=12),
    lambda d: d.update(applyset="other"), lambda d: d.update(kind="oops"), lambda d: d.update(revisions=[]),
    lambda d: d.update(revisions=[10, 99]), lambda d: d.update(span=[11, 10]), lambda d: d.update(read=-1),
    lambda d: d.update(source={"evil": "x"}), lambda d: d.update(counts={"created": "2"}),
    lambda d: d.update(keys=[1]), lambda d: d.update(keysTotal=1), lambda d: d.update(repairs=[["/a"]]),
    lambda d: d.update(time=True), lambda d: d.update(v=True), lambda d: d.update(failed=1),
    lambda d: d.update(failed="x" * (MAX_FAILED + 1)),
])
def test_an_entry_of_another_shape_is_an_error_naming_its_key(change: object) -> None:
    doc = json.loads(encode_entry(entry()))  # type: ignore[arg-type]
    change(doc)  # type: ignore[operator]
    key = entry_key(R, "web", 11)
    with pytest.raises(InventoryError, match="history/web/0000000000000011: history entry is not readable"):
        decode_entry(key, json.dumps(doc).encode(), reserved=R)


def test_a_duplicate_field_or_a_bad_key_is_an_error() -> None:
    raw = encode_entry(entry())  # type: ignore[arg-type]
    with pytest.raises(InventoryError, match="appears twice"):
        decode_entry(entry_key(R, "web", 11), raw[:-1] + b',"who":"x"}', reserved=R)
    with pytest.raises(InventoryError, match="not a history entry key"):
        decode_entry("/.etcdsync/history/web/11", raw, reserved=R)


def test_retention_drops_the_oldest_so_that_limit_entries_stay() -> None:
    assert dropped([5, 1, 3], 4) == []
    assert dropped([5, 1, 3], 3) == [1]
    assert dropped([5, 1, 3, 7], 2) == [1, 3, 5]
    assert dropped([], 1) == []
    with pytest.raises(ValueError):
        dropped([1], 0)


def test_classify_tells_etcdsync_writes_repairs_and_other_writers_apart() -> None:
    apply = entry()
    repair = make_entry(applyset="web", kind="repair", who="etcdsync-run@h/1", revisions=[20],
                        repairs=[("/a", 20)], keys=["/a"])
    entries = [apply, repair]
    assert classify(10, entries, "/a") == ("apply", apply)  # type: ignore[arg-type]
    assert classify(20, entries, "/a") == ("repair", repair)  # type: ignore[arg-type]
    assert classify(15, entries, "/a") == ("other", None)  # type: ignore[arg-type]


def test_suspension_records_and_ids() -> None:
    s = Suspension("web", "me@host", 12.5, "rollback in progress")
    assert decode_suspension(suspend_key(R, "web"), encode_suspension(s), reserved=R) == s
    with pytest.raises(InventoryError, match="suspension record is not readable"):
        decode_suspension(suspend_key(R, "web"), b'{"v":1}', reserved=R)
    with pytest.raises(InventoryError):
        decode_suspension(suspend_key(R, "other"), encode_suspension(s), reserved=R)
    assert parse_id("0000000000000042") == 42 == parse_id("42")
    for bad in ("0", "-1", "x", "1" * 17, "４２"):
        with pytest.raises(UsageError):
            parse_id(bad)


def test_the_files_source_names_the_manifests_first_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `history` shows as an apply's source: the manifests as named, then the files they read
    (resolved) relative to the working directory too, not absolute paths sorted before them."""
    from etcdsync.history import files_source
    from etcdsync.manifest import load_manifests

    (tmp_path / "m" / "files").mkdir(parents=True)
    (tmp_path / "m" / "files" / "ca.pem").write_text("pem")
    (tmp_path / "m" / "app.yaml").write_text(
        "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n  prefix: /app/\n  data:\n"
        "    ca: {fromFile: files/ca.pem}\n")
    monkeypatch.chdir(tmp_path)
    source = files_source(load_manifests(["m"], reserved_prefix="/.etcdsync/"))
    assert source["files"] == "m/app.yaml, m/files/ca.pem", source
    monkeypatch.chdir(tmp_path / "m" / "files")     # outside the working directory: absolute
    assert files_source(load_manifests([str(tmp_path / "m")], reserved_prefix="/.etcdsync/"))["files"] == \
        f"{tmp_path}/m/app.yaml, ca.pem"
