"""End to end: `apply`/`diff --git` and `etcdsync run --git` against a real etcd and real git
repositories (bare repositories served by file:// and by `git daemon` on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Env, wait_for
from gitrepos import Repo, git_daemon, isolate
from history import Recorder

from etcdsync.local.etcdbin import free_ports

CONFIG = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: app}}
spec:
  prefix: {ns}app/
  data:
    a: {a}
    b: two
"""
SECRET = b"webhook-secret"


@pytest.fixture(autouse=True)
def git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private HOME, cache and identity for every git process (ours, the CLI's and the daemon's)."""
    isolate(monkeypatch, tmp_path / "home")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Repo, str]]:
    """A repository and its git:// URL, served by `git daemon` on a free loopback port."""
    base = tmp_path / "served"
    base.mkdir()
    repo = Repo(base)
    with git_daemon(base, tmp_path / "git-daemon.log") as port:
        yield repo, f"git://127.0.0.1:{port}/config.git"


class GitDaemon:
    """`etcdsync run --git ...` as a subprocess with its HTTP endpoint."""

    def __init__(self, env: Env, url: str, *extra: str) -> None:
        self.port = free_ports(1)[0]
        self.log = env.tmp / f"daemon-{self.port}.log"
        secret = env.tmp / "hook.secret"
        secret.write_bytes(SECRET + b"\n")
        args = [sys.executable, "-m", "etcdsync", "run", "--git", url, "--path", "manifests", "--applyset", "g",
                "--reserved-prefix", env.reserved, "--metrics-addr", f"127.0.0.1:{self.port}",
                "--endpoints", ",".join(env.endpoints), "--webhook-secret-file", str(secret), *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)

    def request(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> dict[str, Any]:
        return json.loads(self.request("/readyz")[1])

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def daemons() -> Iterator[list[GitDaemon]]:
    started: list[GitDaemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)


def push_hook(sha: str, ref: str = "refs/heads/main", secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": ref, "after": sha}).encode()
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "Content-Type": "application/json"}


def test_diff_and_apply_read_a_repository(env: Env, history: Recorder, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    sha = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    url = f"file://{repo.bare}"
    r = env.cli("diff", "--git", url, "--path", "manifests", "--applyset", "g")
    assert r.code == 1 and f"+ {env.ns}app/a" in r.out, r
    r = env.cli("apply", "--git", url, "--path", "manifests", "--applyset", "g")
    assert r.code == 0, r
    assert env.get(f"{env.ns}app/a") == b"one"
    # a bad commit: the error names the commit and the file in the repository; nothing is written
    bad = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="[unclosed")})
    rev = env.revision()
    r = env.cli("apply", "--git", url, "--path", "manifests", "--applyset", "g")
    assert r.code == 2 and f"{bad[:12]}:manifests/app.yaml:" in r.err and "Traceback" not in r.err, r
    assert env.untouched_since(rev) and sha != bad
    # usage errors
    r = env.cli("apply", "--git", url, "-f", str(tmp_path), "--applyset", "g")
    assert r.code == 2 and "-f and --git" in r.err, r
    r = env.cli("diff", "--ref", "main", "--applyset", "g")
    assert r.code == 2 and "--ref needs --git" in r.err, r
    r = env.cli("diff", "--git", "ext::sh -c touch% /tmp/pwned", "--applyset", "g")
    assert r.code == 2 and "refused" in r.err and len(r.err.strip().splitlines()) == 1, r


def test_the_daemon_follows_commits_keeps_the_last_good_one_and_takes_webhooks(
        env: Env, history: Recorder, served: tuple[Repo, str], daemons: list[GitDaemon]) -> None:
    repo, url = served
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    first = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    d = GitDaemon(env, url, "--interval", "1s")
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 200, 30, f"daemon ready ({d.logs()[-800:]})")
    assert d.ready()["revision"] == first and env.get(f"{env.ns}app/a") == b"one"

    # a new commit is applied within the polling interval
    history.declare({f"{env.ns}app/a": "two", f"{env.ns}app/b": "two"})
    second = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="two")})
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"two", 20, f"second commit applied ({d.logs()[-800:]})")
    wait_for(lambda: d.ready().get("revision") == second, 10, "readyz names the commit")

    # a broken commit keeps the last good state and is reported with its SHA
    bad = repo.commit({"manifests/app.yaml": "kind: [unclosed\n"})
    wait_for(lambda: f"{bad[:12]}:manifests/app.yaml" in d.ready().get("manifests", ""), 20,
             f"broken commit reported ({d.logs()[-800:]})")
    assert env.get(f"{env.ns}app/a") == b"two"
    history.declare({f"{env.ns}app/a": "three", f"{env.ns}app/b": "two"})
    repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="three")})
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"three", 20, "the fixed commit is applied")
    history.assert_quiet(1.5, under=f"{env.ns}app/")
    assert d.stop() == 0


def test_a_push_webhook_fetches_at_once(env: Env, history: Recorder, served: tuple[Repo, str],
                                        daemons: list[GitDaemon]) -> None:
    repo, url = served
    history.declare({f"{env.ns}app/a": "one", f"{env.ns}app/b": "two"})
    repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="one")})
    d = GitDaemon(env, url, "--interval", "1h")      # only the webhook can bring a new commit in time
    daemons.append(d)
    wait_for(lambda: d.request("/readyz")[0] == 200, 30, f"daemon ready ({d.logs()[-800:]})")

    history.declare({f"{env.ns}app/a": "hooked", f"{env.ns}app/b": "two"})
    sha = repo.commit({"manifests/app.yaml": CONFIG.format(ns=env.ns, a="hooked")})
    body, headers = push_hook(sha, secret=b"wrong")
    assert d.request("/hooks/git", body, headers)[0] == 401
    body, headers = push_hook(sha, ref="refs/heads/other")
    assert d.request("/hooks/git", body, headers)[0] == 204            # another branch: nothing to do
    time.sleep(1.0)
    assert env.get(f"{env.ns}app/a") == b"one", "a refused or unrelated hook fetched"
    assert d.request("/hooks/git", b"x" * 10, {"X-GitHub-Event": "push"})[0] == 401
    assert d.request("/hooks/git")[0] == 405                              # GET
    body, headers = push_hook(sha)
    assert d.request("/hooks/git", body, headers)[0] == 202
    wait_for(lambda: env.get(f"{env.ns}app/a") == b"hooked", 15, f"webhook fetch ({d.logs()[-800:]})")
    assert "Traceback" not in d.logs()
    assert d.stop() == 0
