"""The apply history end to end: `apply` (files and --git) records entries, `history` lists them,
retention bounds them, `rollback` plans and applies an old state with compares, and refuses a
compacted one. Real etcd, real git repositories, the history checker on every test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Env
from history import Recorder
from gitrepos import Repo, isolate

CONFIG = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: app}}
spec:
  prefix: {ns}app/
  data:
    a: {a}
    b: two
{extra}"""


def write(env: Env, history: Recorder, a: str, extra: dict[str, str] | None = None) -> Path:
    extra = extra or {}
    history.declare({f"{env.ns}app/a": a, f"{env.ns}app/b": "two", **{f"{env.ns}app/{k}": v for k, v in extra.items()}})
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    return env.write("m/app.yaml", CONFIG.format(ns=env.ns, a=a, extra=lines))


def entries(env: Env, *extra: str) -> list[dict[str, object]]:
    r = env.cli("history", "--reserved-prefix", env.reserved, "-o", "json", *extra)
    assert r.code == 0, r
    return json.loads(r.out)["entries"]   # type: ignore[no-any-return]


def test_apply_records_one_entry_per_writing_apply_with_a_file_digest_and_bounded_retention(
        env: Env, history: Recorder) -> None:
    path = write(env, history, "one")
    r = env.cli("apply", "-f", str(path), "--applyset", "web")
    assert r.code == 0, r
    [first] = entries(env)
    assert first["kind"] == "apply" and first["applyset"] == "web" and "@" in str(first["who"])
    source = first["source"]
    assert isinstance(source, dict) and str(source["digest"]).startswith("sha256:") and "commit" not in source
    assert first["keys"] == [f"{env.ns}app/a", f"{env.ns}app/b"] and first["counts"] == {"created": 2}
    assert env.kv(f"{env.ns}app/a").mod_revision in first["revisions"]  # type: ignore[operator]
    # an apply that writes nothing records nothing
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    assert len(entries(env)) == 1
    # three more writing applies with --history-limit 2: only the last two stay
    digests = {source["digest"]}
    for a in ("two", "three", "four"):
        path = write(env, history, a)
        r = env.cli("apply", "-f", str(path), "--applyset", "web", "--history-limit", "2")
        assert r.code == 0, r
        digests.add(entries(env)[0]["source"]["digest"])  # type: ignore[index]
    kept = entries(env, "--applyset", "web")
    assert len(kept) == 2 and len(digests) == 4, kept
    assert [e["counts"] for e in kept] == [{"updated": 1}, {"updated": 1}]
    assert kept[0]["id"] == env.kv(f"{env.ns}app/a").mod_revision
    text = env.cli("history", "--reserved-prefix", env.reserved)
    assert text.code == 0 and "ID" in text.out and "apply" in text.out and "files sha256:" in text.out, text
    assert len(env.dump(env.reserved + "history/web/")) == 2
    history.sync()
    assert len(history.entries()) == 4   # the apply that wrote nothing recorded nothing


def test_apply_from_git_records_the_commit(env: Env, history: Recorder, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path / "home")
    repo = Repo(tmp_path / "r")
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    sha = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one", extra="")})
    r = env.cli("apply", "--git", f"file://{repo.bare}", "--path", "manifests", "--applyset", "g")
    assert r.code == 0, r
    [e] = entries(env)
    assert e["source"] == {"commit": sha, "repository": f"file://{repo.bare}", "path": "manifests"}
    text = env.cli("history", "--reserved-prefix", env.reserved).out
    assert sha[:12] in text


def test_rollback_shows_the_diff_then_applies_it_with_compares_and_records_it(env: Env, history: Recorder) -> None:
    path = write(env, history, "one")
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    first = entries(env)[0]["id"]
    path = write(env, history, "two", {"c": "new"})
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    assert env.get(f"{env.ns}app/c") == b"new"
    # the plan only: the diff, exit 1, nothing written
    rev = env.revision()
    r = env.cli("rollback", str(first), "--reserved-prefix", env.reserved)
    assert r.code == 1, r
    assert f"~ {env.ns}app/a" in r.out and f"- {env.ns}app/c" in r.out and "1 to update, 1 to delete" in r.out, r.out
    assert env.untouched_since(rev)
    # --apply: back to entry `first`, recorded as a rollback
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved)
    assert r.code == 0, r
    assert "rolled back: 0 created, 1 updated, 1 deleted" in r.out, r.out
    assert env.get(f"{env.ns}app/a") == b"one" and env.get(f"{env.ns}app/c") is None
    latest = entries(env)[0]
    assert latest["kind"] == "rollback" and latest["source"] == {"rollbackOf": str(first)}
    # rolled back already: nothing to do
    r = env.cli("rollback", str(first), "--reserved-prefix", env.reserved)
    assert r.code == 0 and "nothing to roll back" in r.out, r
    # unknown id, bad id
    r = env.cli("rollback", "999999999", "--reserved-prefix", env.reserved)
    assert r.code == 2 and "not found" in r.err and "Traceback" not in r.err, r
    r = env.cli("rollback", "abc", "--reserved-prefix", env.reserved)
    assert r.code == 2 and "history entry id" in r.err, r


def test_rollback_does_not_overwrite_a_concurrent_writer(env: Env, history: Recorder) -> None:
    """The rollback is an apply: a key another client changed after the plan is re-read, and the
    history checker sees every write compare (never a blind overwrite)."""
    path = write(env, history, "one")
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    first = entries(env)[0]["id"]
    path = write(env, history, "two")
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    env.put(f"{env.ns}app/b", "hand")       # another writer drifts b after the last apply
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved, "-o", "json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["rollbackOf"] == first and {c["key"] for c in doc["applied"]["results"]} == {
        f"{env.ns}app/a", f"{env.ns}app/b"}
    assert env.get(f"{env.ns}app/b") == b"two"


def test_rollback_to_a_compacted_revision_is_refused_clearly(env: Env, history: Recorder) -> None:
    path = write(env, history, "one")
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    first = entries(env)[0]["id"]
    path = write(env, history, "two")
    assert env.cli("apply", "-f", str(path), "--applyset", "web").code == 0
    history.sync()
    env.store_call(lambda s: s.compact(history.compactable()))
    rev = env.revision()
    r = env.cli("rollback", str(first), "--apply", "--reserved-prefix", env.reserved)
    assert r.code == 2, r
    assert f"revision {first} was compacted" in r.err and "nothing can be rolled back" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert env.untouched_since(rev) and env.get(f"{env.ns}app/a") == b"two"
