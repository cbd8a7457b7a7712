"""A daemon (re)started while the head of its git ref does not load runs the newest commit of that
repository its apply set's history recorded, fetched by SHA, reports the broken head on /readyz and in
its log, and takes the next commit that loads. Without a usable entry it exits 2 as before. Real etcd,
real git (`git daemon` on loopback), the history checker on every test."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, wait_for
from gitrepos import Repo
from history import Recorder
# the git daemon tests' manifest, fixtures (private git identity, a repository served by `git daemon`,
# daemons stopped at the end) and daemon wrapper
from test_git_daemon import CONFIG, GitDaemon, daemons, git_identity, served  # noqa: F401

from etcdsync.core.history import encode_entry, entry_key, make_entry
from etcdsync.errors import GitSourceError
from etcdsync.sources.git import GitSource

BROKEN = "kind: [unclosed\n"


def entries(env: Env) -> list[dict[str, object]]:
    r = env.cli("history", "--reserved-prefix", env.reserved, "-o", "json")
    assert r.code == 0, r
    return json.loads(r.out)["entries"]  # type: ignore[no-any-return]


def clear_cache(tmp_path: Path) -> None:
    """Forget every fetched commit: the daemon must fetch the recorded commit by its SHA."""
    shutil.rmtree(tmp_path / "home" / ".cache" / "etcdsync", ignore_errors=True)


def started(env: Env, url: str, *extra: str, applyset: tuple[str, ...] = ("--applyset", "g")
            ) -> subprocess.CompletedProcess[str]:
    """`etcdsync run --git` expected to exit at start-up."""
    return subprocess.run([sys.executable, "-m", "etcdsync", "run", "--git", url, "--path", "manifests", *applyset,
                           "--reserved-prefix", env.reserved, "--endpoints", ",".join(env.endpoints),
                           *extra], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_restart_on_a_broken_head_runs_the_recorded_commit_until_a_good_one_arrives(
        env: Env, history: Recorder, served: tuple[Repo, str], daemons: list[GitDaemon], tmp_path: Path) -> None:
    repo, url = served
    a, b = f"{env.ns}app/a", f"{env.ns}app/b"
    history.declare({a: "one", b: "two"})
    first = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    d = GitDaemon(env, url, "--interval", "1s")
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 200, 30, lambda: f"daemon ready ({d.logs()[-800:]})")
    wait_for(lambda: any(e["kind"] == "reconcile" for e in entries(env)), 10, "reconcile recorded")
    assert d.stop() == 0

    # commit 2: a valid file that changes a value beside a broken one; nothing of it may be applied
    second = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="two"), "manifests/bad.yaml": BROKEN})
    clear_cache(tmp_path)
    d = GitDaemon(env, url, "--interval", "1s")
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 503 and d.ready().get("revision") == first, 30,
             lambda: f"daemon up on the recorded commit ({d.logs()[-1500:]})")
    ready = d.ready()
    assert ready["head"] == second and not ready["ready"], ready
    assert f"{second[:12]}:manifests/bad.yaml" in ready["manifests"], ready
    assert "from history entry" in ready["source"] and f"head {second[:12]} does not load" in ready["source"], ready
    assert f"the ref's head {second[:12]} does not load" in d.logs() and f"running commit {first[:12]}" in d.logs()
    assert d.proc.poll() is None
    # drift is repaired from the commit it runs, and the repair's entry names that commit, not the head
    drift = env.put(a, "hand")
    wait_for(lambda: env.get(a) == b"one", 10, "repaired")

    def fixes() -> list[dict[str, Any]]:
        # a repair from the watch event, or the start-up reconcile when the drift landed during it
        return [e for e in entries(env) if e["kind"] in ("repair", "reconcile") and e["id"] > drift
                and a in e["keys"]]

    wait_for(fixes, 10, "repair recorded")
    [rep] = fixes()
    assert rep["source"]["commit"] == first, rep  # type: ignore[index]
    assert env.get(a) == b"one"

    # commit 3 loads: applied, reported ready on it
    history.declare({a: "three", b: "two"})
    third = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="three"), "manifests/bad.yaml": None})
    wait_for(lambda: env.get(a) == b"three", 20, lambda: f"commit 3 applied ({d.logs()[-800:]})")
    wait_for(lambda: d.request("/readyz")[0] == 200, 10, "ready on commit 3")
    ready = d.ready()
    assert ready["revision"] == third and "head" not in ready and "from history" not in ready["source"], ready
    assert "Traceback" not in d.logs()
    history.assert_quiet(1.5, under=f"{env.ns}app/")
    assert d.stop() == 0


def test_a_repair_after_a_broken_commit_records_the_commit_it_runs(
        env: Env, history: Recorder, served: tuple[Repo, str], daemons: list[GitDaemon]) -> None:
    """The provenance of a write is the commit whose manifests it applies, never a newer head that does
    not load (or a restart would take that broken commit for the last good one)."""
    repo, url = served
    a, b = f"{env.ns}app/a", f"{env.ns}app/b"
    history.declare({a: "one", b: "two"})
    first = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    d = GitDaemon(env, url, "--interval", "1s")
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 200, 30, lambda: f"daemon ready ({d.logs()[-800:]})")
    second = repo.commit({"manifests/app.yaml": BROKEN})
    wait_for(lambda: f"{second[:12]}:manifests/app.yaml" in d.ready().get("manifests", ""), 20, "broken commit reported")
    ready = d.ready()
    assert ready["revision"] == first and ready["head"] == second, ready
    drift = env.put(a, "hand")
    wait_for(lambda: env.get(a) == b"one", 10, "repaired")

    def fixes() -> list[dict[str, Any]]:
        # a repair from the watch event, or the start-up reconcile when the drift landed during it
        return [e for e in entries(env) if e["kind"] in ("repair", "reconcile") and e["id"] > drift
                and a in e["keys"]]

    wait_for(fixes, 10, "repair recorded")
    [rep] = fixes()
    assert rep["source"]["commit"] == first, rep  # type: ignore[index]
    assert d.stop() == 0


def test_no_usable_entry_is_exit_2_with_one_line(env: Env, history: Recorder, served: tuple[Repo, str],
                                                 tmp_path: Path) -> None:
    repo, url = served
    # first start on a broken commit: no history at all
    bad = repo.commit({"manifests/app.yaml": BROKEN})
    rev = env.revision()
    r = started(env, url)
    assert r.returncode == 2, r
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{bad[:12]}:manifests/app.yaml" in last, r.stderr
    assert "no earlier commit to run instead" in last and "records no commit of" in last, last
    assert "Traceback" not in r.stderr and env.untouched_since(rev)

    # the recorded commit is not on the server (hand-written, or the branch was rewritten and collected)
    ghost = make_entry(applyset="g", kind="reconcile", who="x", revisions=[rev], now=1.0,
                       source={"commit": "0" * 40, "repository": url, "path": "manifests"})
    env.put(entry_key(env.reserved, "g", ghost.id), encode_entry(ghost))
    clear_cache(tmp_path)
    r = started(env, url)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "no earlier commit to run instead" in last and "0" * 40 in last, r.stderr
    assert "Traceback" not in r.stderr

    # a hostile "commit" in a hand-written entry never reaches git: not a SHA, not a candidate
    evil = make_entry(applyset="g", kind="reconcile", who="x", revisions=[rev + 5], now=2.0,
                      source={"commit": "--upload-pack=touch " + str(tmp_path / "pwned"), "repository": url,
                              "path": "manifests"})
    env.put(entry_key(env.reserved, "g", evil.id), encode_entry(evil))
    r = started(env, url)
    assert r.returncode == 2 and "0" * 40 in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(GitSourceError, match="not a full commit SHA"):
        asyncio.run(GitSource(url, cache_dir=tmp_path / "c").fetch_commit("--upload-pack=touch x"))

    # without --applyset: an entry of another apply set naming a good commit of this repository is not
    # a reason to run that commit under this daemon's name (nor to guess the name from it)
    good = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    bad = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one"), "manifests/x.yaml": BROKEN})
    other = make_entry(applyset="other", kind="apply", who="x", revisions=[rev + 9], now=3.0,
                       source={"commit": good, "repository": url, "path": "manifests"})
    env.put(entry_key(env.reserved, "other", other.id), encode_entry(other))
    r = started(env, url, applyset=())
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and f"{bad[:12]}:manifests/x.yaml" in last and "another apply set" in last, r.stderr


def test_the_recorded_commit_broken_too_is_exit_2(env: Env, history: Recorder, served: tuple[Repo, str],
                                                  daemons: list[GitDaemon], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, url = served
    a, b = f"{env.ns}app/a", f"{env.ns}app/b"
    history.declare({a: "one", b: "two"})
    text = CONFIG.format(ns=env.ns, a="{fromEnv: APP_A}")
    first = repo.commit({"manifests/app.yaml": text})
    monkeypatch.setenv("APP_A", "one")
    d = GitDaemon(env, url, "--interval", "1s", "--env-allow", "APP_A")
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 200, 30, lambda: f"daemon ready ({d.logs()[-800:]})")
    wait_for(lambda: any(e["kind"] == "reconcile" for e in entries(env)), 10, "reconcile recorded")
    assert d.stop() == 0
    monkeypatch.delenv("APP_A")
    second = repo.commit({"manifests/app.yaml": text, "manifests/bad.yaml": BROKEN})
    rev = env.revision()
    r = started(env, url, "--env-allow", "APP_A")      # commit 1 needs APP_A, which is gone now
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and f"{second[:12]}:manifests/bad.yaml" in last, r.stderr
    assert "no earlier commit to run instead" in last and first[:12] in last and "APP_A" in last, last
    assert "Traceback" not in r.stderr and env.untouched_since(rev)
