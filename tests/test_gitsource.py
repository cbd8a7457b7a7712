"""The git source against real repositories: bare repos in tmp, served on 127.0.0.1 by `git daemon`
(git://), by `git http-backend` behind a small HTTP server (http://, with a Basic-auth corner), and
read through file://. Pure rules (URLs, refs, redaction, webhooks) are unit-tested alone.

Every git call of these tests runs with HOME in tmp and GIT_CONFIG_NOSYSTEM, so the machine's git
configuration cannot interfere and no git identity is needed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gitrepos import GIT_TIMEOUT, Repo, git, git_daemon, isolate

from etcdsync.core.webhook import MAX_BODY_BYTES, Push, concerns, parse_push, read_request
from etcdsync.errors import GitSourceError, ManifestError, WebhookError
from etcdsync.local.etcdbin import free_ports
from etcdsync.sources.git import GitSource, check_path, check_ref, parse_url, redact

# ------------------------------------------------------------------------------------------------
# environment and servers

@pytest.fixture(scope="module", autouse=True)
def git_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private HOME and identity for every git process of this module (ours and GitSource's)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        yield home


@dataclass
class Servers:
    base: Path
    git_port: int
    http_port: int

    def repo(self, name: str) -> Repo:
        return Repo(self.base, name)

    def git_url(self, repo: Repo) -> str:
        return f"git://127.0.0.1:{self.git_port}/{repo.name}.git"

    def http_url(self, repo: Repo, *, private: bool = False) -> str:
        return f"http://127.0.0.1:{self.http_port}/{'private/' if private else ''}{repo.name}.git"


class _GitHttp(BaseHTTPRequestHandler):
    """`git http-backend` as CGI; paths under /private/ want Basic auth (user:right)."""

    base: Path

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith("/private/"):
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"user:right").decode():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = path[len("/private"):]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_PROJECT_ROOT": str(self.base), "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
               "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
        r = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=GIT_TIMEOUT)
        head, _, payload = r.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            key, _, value = line.decode("latin-1").partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, git_env: Path) -> Iterator[Servers]:
    """`git daemon` and `git http-backend` over one base directory, on 127.0.0.1, stopped at the end."""
    base = tmp_path_factory.mktemp("served")
    handler = type("Handler", (_GitHttp,), {"base": base})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        with git_daemon(base, base.parent / f"{base.name}-daemon.log") as port:
            yield Servers(base, port, http.server_address[1])
    finally:
        http.shutdown()
        http.server_close()
        thread.join(10)


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A listening socket that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s
    finally:
        s.close()


def closed_port() -> int:
    return free_ports(1)[0]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def source(url: str, tmp_path: Path, ref: str | None = None, path: str | None = None, **options: Any) -> GitSource:
    return GitSource(url, ref, path, cache_dir=tmp_path / "cache", **options)


def tree(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden ones too) -> its text; symbolic links as '-> target'."""
    out: dict[str, str] = {}
    for d, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            p = Path(d, name)
            rel = p.relative_to(directory).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_text()
    return out


# ------------------------------------------------------------------------------------------------
# pure rules

@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/pwned", "fd::3", "EXT::x", "foo+bar::https://host/r.git", "-uhelp", "--upload-pack=x",
    "ftp://host/r.git", "rsync://host/r", "", "https://host/r\n.git",
])
def test_refused_urls(url: str) -> None:
    with pytest.raises(GitSourceError) as e:
        parse_url(url)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("url", "protocol"), [
    ("https://example.com/r.git", "https"), ("http://127.0.0.1:8080/r.git", "http"),
    ("ssh://git@example.com/r.git", "ssh"), ("git+ssh://example.com/r.git", "ssh"),
    ("git@example.com:team/r.git", "ssh"), ("example.com:r.git", "ssh"),
    ("git://127.0.0.1/r.git", "git"), ("file:///srv/r.git", "file"), ("/srv/r.git", "file"), ("./r.git", "file"),
])
def test_accepted_urls_allow_only_their_transport(url: str, protocol: str) -> None:
    assert parse_url(url).protocol == protocol


def test_local_path_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("r.git").url == str(tmp_path / "r.git")


@pytest.mark.parametrize("url", ["https://user:s3cret-token@example.com/r.git", "ssh://git:s3cret-token@host/r.git",
                                 "http://:s3cret-token@127.0.0.1/r.git"])
def test_password_in_url_refused_and_never_shown(url: str) -> None:
    with pytest.raises(GitSourceError) as e:
        GitSource(url)
    assert "s3cret-token" not in str(e.value) and "password or token" in str(e.value)
    assert "***@" in str(e.value)


@pytest.mark.parametrize(("text", "shown"), [
    ("fatal: could not read Password for 'https://tok3n@github.com': terminal prompts disabled",
     "fatal: could not read Password for 'https://***@github.com': terminal prompts disabled"),
    ("https://a:b@h/x and http://c@d/y", "https://***@h/x and http://***@d/y"),
    ("https://u:p@ss@host/r", "https://***@host/r"),
    ("git@github.com:org/r.git", "git@github.com:org/r.git"),   # an scp-like user is not a secret
    ("https://host/r.git", "https://host/r.git"),
])
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize("ref", ["-x", "a..b", "a b", "a:b", "a~1", "a^", "x.lock", "/a", "a/", "@{u}", "a\\b",
                                 "a*", "abc1234", "a//b", ".hidden"])
def test_bad_refs(ref: str) -> None:
    if ref == "abc1234":   # an abbreviated SHA is a (valid) branch name, never a SHA
        assert check_ref(ref) == "abc1234"
        return
    with pytest.raises(GitSourceError):
        check_ref(ref)


def test_refs_and_paths() -> None:
    sha = "A" * 40
    assert check_ref(sha) == "a" * 40 and check_ref("b" * 64) == "b" * 64
    assert check_ref(None) is None and check_ref("HEAD") is None
    assert check_ref("release/1.2") == "release/1.2" and check_ref("refs/tags/v1") == "refs/tags/v1"
    assert check_path(None) == "" and check_path(".") == "" and check_path("a/./b/") == "a/b"
    for bad in ("/etc", "../x", "a/../../b"):
        with pytest.raises(GitSourceError):
            check_path(bad)


# ------------------------------------------------------------------------------------------------
# fetch and checkout

def test_branch_over_git_daemon_and_new_commit_detected(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("branch")
    first = repo.commit({"manifests/a.yaml": "one\n", "README": "r\n"})
    src = source(servers.git_url(repo), tmp_path, "main", "manifests")

    async def go() -> None:
        assert await src.changed(None)
        snap = await src.pull()
        assert snap.sha == first and src.resolved_ref == "refs/heads/main"
        assert tree(snap.root) == {"manifests/a.yaml": "one\n", "README": "r\n"}
        assert tree(snap.path) == {"a.yaml": "one\n"} and snap.path == snap.root / "manifests"
        assert os.path.realpath(src.current) == str(snap.root)
        assert git("--git-dir", src.cache / "repo.git", "rev-parse", "--is-shallow-repository") == "true"
        assert not await src.changed(first)

        second = repo.commit({"manifests/a.yaml": "two\n", "manifests/b.yaml": "bee\n"})
        assert await src.changed(first)
        snap2 = await src.pull()
        assert snap2.sha == second and snap2.root != snap.root
        assert tree(snap2.path) == {"a.yaml": "two\n", "b.yaml": "bee\n"}
        assert tree(snap.path) == {"a.yaml": "one\n"}   # the older snapshot is untouched
        assert os.path.realpath(src.current) == str(snap2.root)

    run(go())


def test_default_branch_is_the_remote_head(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("head")
    repo.commit({"x": "main\n"})
    trunk = repo.commit({"x": "trunk\n"}, branch="trunk")
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=repo.bare)
    for url in (servers.git_url(repo), servers.http_url(repo), repo.file_url):
        src = source(url, tmp_path)
        snap = run(src.pull())
        assert (snap.sha, src.resolved_ref) == (trunk, "refs/heads/trunk"), url
        assert (snap.root / "x").read_text() == "trunk\n"


def test_tags_lightweight_and_annotated(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("tags")
    old = repo.commit({"v": "1\n"})
    repo.tag("light", old)
    new = repo.commit({"v": "2\n"})
    repo.tag("v2", annotated=True)
    for ref, want in (("light", old), ("v2", new), ("refs/tags/v2", new)):
        src = source(repo.file_url, tmp_path, ref)
        assert run(src.fetch()) == want, ref       # the commit, also through an annotated tag object
        assert run(src.remote_sha()) == want
        assert (run(src.checkout(want)).root / "v").read_text() == ("1\n" if want == old else "2\n")


def test_branch_and_tag_of_one_name_is_ambiguous(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("ambiguous")
    repo.commit({"v": "1\n"}, branch="same")
    repo.tag("same")
    with pytest.raises(GitSourceError, match="both a branch and a tag; say refs/heads/same or refs/tags/same"):
        run(source(repo.file_url, tmp_path, "same").fetch())
    assert run(source(repo.file_url, tmp_path, "refs/heads/same").fetch())


def test_commit_sha_fetched_by_sha(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("bysha")
    old = repo.commit({"v": "old\n"})
    repo.commit({"v": "new\n"})
    for url in (servers.git_url(repo), servers.http_url(repo)):   # protocol v2 allows a want of any reachable SHA
        src = source(url, tmp_path, old.upper())
        assert run(src.fetch()) == old
        assert (run(src.checkout(old)).root / "v").read_text() == "old\n"
        assert git("--git-dir", src.cache / "repo.git", "rev-parse", "--is-shallow-repository") == "true"
        assert not run(src.changed(old)) and run(src.remote_sha()) == old   # a SHA never moves


def test_commit_sha_falls_back_to_a_full_fetch(servers: Servers, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Protocol v0 servers refuse a want of an unadvertised SHA: one full fetch of branches and tags."""
    repo = servers.repo("fallback")
    old = repo.commit({"v": "old\n"})
    repo.commit({"v": "new\n"})
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")   # the client speaks protocol v0, as old servers do
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    src = source(servers.git_url(repo), tmp_path, old)
    assert run(src.fetch()) == old
    assert (run(src.checkout(old)).root / "v").read_text() == "old\n"
    assert git("--git-dir", src.cache / "repo.git", "rev-parse", "--is-shallow-repository") == "false"
    missing = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(GitSourceError) as e:
        run(source(servers.git_url(repo), tmp_path, missing).fetch())
    assert f"commit {missing} is not on any branch or tag of the server" in str(e.value) and e.value.sha == missing


def test_unknown_sha_over_protocol_v2(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("nosha")
    repo.commit({"v": "1\n"})
    missing = "f" * 40
    with pytest.raises(GitSourceError, match=f"commit {missing} is not on any branch or tag"):
        run(source(servers.git_url(repo), tmp_path, missing).fetch())


def test_unknown_ref_and_not_a_repository(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("badref")
    repo.commit({"v": "1\n"})
    url = servers.git_url(repo)
    with pytest.raises(GitSourceError) as e:
        run(source(url, tmp_path, "nope").fetch())
    assert str(e.value) == f"{url}: unknown ref 'nope': no such branch or tag on the server"
    for bad in (f"git://127.0.0.1:{servers.git_port}/absent.git", f"http://127.0.0.1:{servers.http_port}/absent.git",
                f"file://{servers.base}/absent.git"):
        with pytest.raises(GitSourceError) as e:
            run(source(bad, tmp_path).fetch())
        msg = str(e.value)
        assert msg.startswith(f"{bad}: ls-remote HEAD: not a repository: ") and "\n" not in msg, msg
        assert not e.value.retryable


def test_empty_repository(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("empty")
    with pytest.raises(GitSourceError, match="no default branch"):
        run(source(repo.file_url, tmp_path).fetch())


def test_unreachable_host_fails_in_one_line(tmp_path: Path) -> None:
    port = closed_port()
    for url in (f"git://127.0.0.1:{port}/r.git", f"http://127.0.0.1:{port}/r.git"):
        with pytest.raises(GitSourceError) as e:
            run(source(url, tmp_path, "main", timeout=20).fetch())
        msg = str(e.value)
        assert msg.startswith(f"{url}: ls-remote main: unreachable: ") and "\n" not in msg, msg
        assert e.value.retryable


def test_silent_server_is_cut_by_the_timeout(tmp_path: Path, silent: socket.socket) -> None:
    url = f"git://127.0.0.1:{silent.getsockname()[1]}/r.git"
    with pytest.raises(GitSourceError) as e:
        run(source(url, tmp_path, timeout=1).fetch())
    assert str(e.value) == f"{url}: git ls-remote HEAD timed out after 1s" and e.value.retryable
    # the git process was killed, not left waiting: its connection reads to the end
    silent.settimeout(20)
    conn, _ = silent.accept()
    conn.settimeout(20)
    with conn:
        received = b""
        for _ in range(1000):
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
    assert b"git-upload-pack /r.git" in received


def test_auth_failure_never_prompts_and_never_shows_the_credential(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("private")
    repo.commit({"v": "1\n"})
    with pytest.raises(GitSourceError) as e:   # git would ask for a password on a terminal: never
        run(source(servers.http_url(repo, private=True), tmp_path, "main", timeout=20).fetch())
    assert ": ls-remote main: authentication failed: " in str(e.value)
    assert "terminal prompts disabled" in str(e.value)
    # a user name may be a token (https://TOKEN@host): git's own message names it, ours never does
    url = servers.http_url(repo, private=True).replace("http://", "http://ghp_T0KEN@")
    with pytest.raises(GitSourceError) as e:
        run(source(url, tmp_path, "main", timeout=20).fetch())
    assert "ghp_T0KEN" not in str(e.value) and "authentication failed" in str(e.value)
    assert str(e.value).startswith(f"http://***@127.0.0.1:{servers.http_port}/private/private.git: ")


def test_credentials_come_from_a_helper(servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git's own authentication: here a credential helper configured through the environment."""
    repo = servers.repo("helper")
    sha = repo.commit({"v": "1\n"})
    helper = tmp_path / "helper.sh"
    helper.write_text("#!/bin/sh\n[ \"$1\" = get ] && printf 'username=user\\npassword=right\\n'\nexit 0\n")
    helper.chmod(0o755)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "credential.helper")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(helper))
    assert run(source(servers.http_url(repo, private=True), tmp_path, "main").pull()).sha == sha


def test_ext_url_refused_also_through_insteadof(servers: Servers, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(GitSourceError, match="remote helpers such as ext::"):
        GitSource(f"ext::sh -c touch% {marker}")
    # a url.*.insteadOf rewrite to ext:: is stopped by git itself: only the URL's own transport is allowed
    port = closed_port()
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.ext::sh -c touch% {marker} .insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"git://127.0.0.1:{port}/")
    with pytest.raises(GitSourceError) as e:
        run(source(f"git://127.0.0.1:{port}/r.git", tmp_path, "main").fetch())
    assert ": protocol not allowed: transport 'ext' not allowed" in str(e.value)
    assert not marker.exists()
    # nor to another transport (here a local repository read through file://)
    repo = servers.repo("local-only")
    repo.commit({"v": "1\n"})
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.{repo.file_url}.insteadOf")
    with pytest.raises(GitSourceError) as e:
        run(source(f"git://127.0.0.1:{port}/r.git", tmp_path, "main").fetch())
    assert ": protocol not allowed: transport 'file' not allowed" in str(e.value)


def test_path_missing_in_a_commit_keeps_the_current_checkout(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("nopath")
    good = repo.commit({"manifests/a.yaml": "a\n"})
    src = source(repo.file_url, tmp_path, "main", "manifests")
    run(src.pull())
    bad = repo.commit({"manifests/a.yaml": None, "other": "x\n"})
    with pytest.raises(GitSourceError) as e:
        run(src.pull())
    assert str(e.value) == f"{repo.file_url}: path 'manifests' does not exist in commit {bad}" and e.value.sha == bad
    assert os.path.realpath(src.current).endswith(good)
    assert sorted(os.listdir(src.cache / "checkouts")) == [good]   # nothing half made is left


def test_checkout_of_an_unfetched_commit(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("unfetched")
    repo.commit({"v": "1\n"})
    with pytest.raises(GitSourceError, match="is not in the cache"):
        run(source(repo.file_url, tmp_path, "main").checkout("a" * 40))
    with pytest.raises(GitSourceError, match="is not a full commit SHA"):
        run(source(repo.file_url, tmp_path, "main").checkout("../x"))


def test_unusable_cache_directory(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("nocache")
    repo.commit({"v": "1\n"})
    (tmp_path / "cache").write_text("a file, not a directory\n")
    with pytest.raises(GitSourceError) as e:
        run(source(repo.file_url, tmp_path, "main").fetch())
    assert str(e.value).startswith(f"{repo.file_url}: cache {tmp_path / 'cache'}/") and "Not a directory" in str(e.value)


def test_checkout_is_the_committed_bytes(servers: Servers, tmp_path: Path) -> None:
    """The repository's .gitattributes cannot rewrite what is loaded (eol, ident, filters)."""
    repo = servers.repo("attrs")
    text = "a: $Id$\nb: 2\n"
    sha = repo.commit({".gitattributes": "* text eol=crlf ident filter=nosuch\n", "m.yaml": text,
                       "run.sh": "#!/bin/sh\n"})
    (repo.work / "run.sh").chmod(0o755)
    sha = repo.commit({})
    snap = run(source(repo.file_url, tmp_path).pull())
    assert snap.sha == sha
    assert (snap.root / "m.yaml").read_bytes() == text.encode()
    assert os.access(snap.root / "run.sh", os.X_OK)


def test_submodules_are_not_followed(servers: Servers, tmp_path: Path) -> None:
    inner = servers.repo("inner")
    inner_sha = inner.commit({"secret": "inner\n"})
    repo = servers.repo("outer")
    (repo.work / ".gitmodules").write_text(f'[submodule "sub"]\n\tpath = sub\n\turl = {inner.file_url}\n')
    git("update-index", "--add", "--cacheinfo", f"160000,{inner_sha},sub", cwd=repo.work)
    repo.commit({"m.yaml": "x\n"})
    snap = run(source(servers.git_url(repo), tmp_path).pull())
    assert "m.yaml" in tree(snap.root) and "secret" not in str(tree(snap.root))


def test_old_checkouts_are_removed(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("prune")
    src = source(repo.file_url, tmp_path, "main", keep=2)
    shas = []
    for i in range(4):
        shas.append(repo.commit({"v": f"{i}\n"}))
        run(src.pull())
    (src.cache / "checkouts" / ".tmp-leftover-1234").mkdir()   # a checkout interrupted by a crash
    shas.append(repo.commit({"v": "4\n"}))
    snap = run(src.pull())
    assert sorted(os.listdir(src.cache / "checkouts")) == sorted(shas[-2:])
    assert os.path.realpath(src.current) == str(snap.root)
    # an earlier commit again (a revert by force-push): checked out anew, the newest once more
    git("push", "-q", "--force", repo.bare, f"{shas[0]}:refs/heads/main", cwd=repo.work)
    assert run(src.pull()).sha == shas[0]
    assert sorted(os.listdir(src.cache / "checkouts")) == sorted([shas[0], shas[-1]])


def test_a_reader_never_sees_a_half_updated_checkout(servers: Servers, tmp_path: Path) -> None:
    """A reader that resolves `current` once and reads everything under it always finds one whole commit."""
    repo = servers.repo("whole")
    n_files, n_commits = 150, 6
    src = source(repo.file_url, tmp_path, "main", keep=n_commits + 1)
    seen: list[tuple[int, frozenset[str]]] = []
    latest: set[str] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(1_000_000):
                if stop.is_set():
                    return
                if not os.path.lexists(src.current):
                    time.sleep(0.001)
                    continue
                root = os.path.realpath(src.current)
                names = [n for n in os.listdir(root)]
                texts = frozenset(Path(root, n).read_text() for n in names)
                seen.append((len(names), texts))
                latest.update(texts)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(n_commits):
            repo.commit({f"f{j:03}": f"commit {i}\n" for j in range(n_files)})
            run(src.pull())
            deadline = time.monotonic() + 20   # let the reader see this commit before the next one
            while f"commit {i}\n" not in latest and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.005)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert {t for _, ts in seen for t in ts} == {f"commit {i}\n" for i in range(n_commits)}
    bad = [(n, sorted(ts)) for n, ts in seen if n != n_files or len(ts) != 1]
    assert not bad, f"{len(bad)} of {len(seen)} reads saw a mixed or partial tree, e.g. {bad[0]}"


def test_concurrent_calls_on_one_cache(servers: Servers, tmp_path: Path) -> None:
    """Two sources on one cache directory (two daemons, or a CLI run beside one) take turns."""
    repo = servers.repo("shared")
    sha = repo.commit({"v": "1\n"})

    async def go() -> list[str]:
        a, b = (source(servers.git_url(repo), tmp_path, "main") for _ in range(2))
        snaps = await asyncio.gather(a.pull(), b.pull(), a.pull())
        return [s.sha for s in snaps]

    assert run(go()) == [sha] * 3


# ------------------------------------------------------------------------------------------------
# loading a snapshot

def _configset(data: str) -> str:
    return f"apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {{name: app}}\nspec:\n  prefix: /config/app/\n  data:\n{data}"


def test_snapshot_loads_and_fromfile_stays_inside_its_path(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("load")
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret\n")
    sha = repo.commit({"manifests/app.yaml": _configset("    url: db\n    cert: {fromFile: certs/tls.pem}\n"),
                       "manifests/certs/tls.pem": "PEM\n", "repo-root.txt": "not a manifest\n"},
                      links={"manifests/shared.yaml": "../common/shared.yaml", "link.txt": str(outside)})
    repo.commit({"common/shared.yaml": _configset("    x: 1\n").replace("name: app", "name: shared")
                .replace("/config/app/", "/config/shared/")})
    src = source(servers.git_url(repo), tmp_path, "main", "manifests")
    snap = run(src.pull())
    assert snap.sha != sha
    state = snap.load()
    values = {k: v.value for k, v in state.keys.items()}
    assert values == {"/config/app/url": b"db", "/config/app/cert": b"PEM\n", "/config/shared/x": b"1"}

    # fromFile outside the -f directory (but inside the repository), and through a link that leaves it
    for target in ("../repo-root.txt", "../link.txt"):
        bad = repo.commit({"manifests/app.yaml": _configset(f"    cert: {{fromFile: '{target}'}}\n")})
        snap = run(src.pull())
        with pytest.raises(ManifestError) as e:
            snap.load()
        msg = str(e.value)
        assert msg.startswith(f"{bad[:12]}:manifests/app.yaml:7:") and "outside the manifest root" in msg, msg
        assert "host secret" not in msg


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../../../../../etc/hostname", "../../.."])
def test_symlink_leaving_the_checkout_is_refused(servers: Servers, tmp_path: Path, target: str) -> None:
    repo = servers.repo(f"escape{abs(hash(target))}")
    good = repo.commit({"manifests/a.yaml": _configset("    a: 1\n")})
    src = source(repo.file_url, tmp_path, "main", "manifests")
    run(src.pull())
    bad = repo.commit({}, links={"manifests/sub/leak.yaml": target})
    with pytest.raises(GitSourceError) as e:
        run(src.pull())
    assert str(e.value) == (f"{repo.file_url}: commit {bad}: 'manifests/sub/leak.yaml' is a symbolic link "
                            "that leaves the checkout") and e.value.sha == bad
    assert os.path.realpath(src.current).endswith(good)


def test_path_that_is_a_symlink_out_is_refused(servers: Servers, tmp_path: Path) -> None:
    repo = servers.repo("pathlink")
    repo.commit({"x": "1\n"}, links={"manifests": str(tmp_path)})
    with pytest.raises(GitSourceError, match="'manifests' is a symbolic link that leaves the checkout"):
        run(source(repo.file_url, tmp_path, "main", "manifests").pull())


# ------------------------------------------------------------------------------------------------
# webhooks (pure)

SECRET = b"It's a Secret to Everybody"
SHA1, SHA2 = "1" * 40, "a" * 40


def github(body: bytes, *, event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    return {"X-GitHub-Event": event,
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


def test_github_signature_of_githubs_documented_example() -> None:
    """GitHub's documentation: secret "It's a Secret to Everybody", body "Hello, World!"."""
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    body = b"Hello, World!"
    assert github(body)["X-Hub-Signature-256"] == sig
    with pytest.raises(WebhookError, match="not JSON"):   # authentic, but not a push payload
        read_request({"x-github-event": "push", "x-hub-signature-256": sig}, body, SECRET)


def test_github_push() -> None:
    body = json.dumps({"ref": "refs/heads/main", "before": SHA1, "after": SHA2, "commits": []}).encode()
    assert read_request(github(body), body, SECRET) == Push("github", "refs/heads/main", SHA2)
    deleted = json.dumps({"ref": "refs/heads/old", "after": "0" * 40}).encode()
    assert read_request(github(deleted), deleted, SECRET) == Push("github", "refs/heads/old", None)
    ping = json.dumps({"zen": "Keep it logically awesome."}).encode()
    assert read_request(github(ping, event="ping"), ping, SECRET) is None


@pytest.mark.parametrize("case", ["other secret", "tampered body", "missing", "sha1 only", "malformed"])
def test_github_bad_signatures(case: str) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": SHA2}).encode()
    headers = github(body)
    if case == "other secret":
        headers = github(body, secret=b"guess")
    elif case == "tampered body":
        body = body.replace(b"main", b"evil")
    elif case == "missing":
        del headers["X-Hub-Signature-256"]
    elif case == "sha1 only":
        del headers["X-Hub-Signature-256"]
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
    else:
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"][7:]
    with pytest.raises(WebhookError) as e:
        read_request(headers, body, SECRET)
    assert e.value.status == 401


def test_gitlab_push_and_tag_push() -> None:
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main", "before": SHA1, "after": SHA2,
                       "checkout_sha": SHA2}).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}
    assert read_request(headers, body, SECRET) == Push("gitlab", "refs/heads/main", SHA2)
    tag = json.dumps({"ref": "refs/tags/v1", "after": "b" * 40, "checkout_sha": "c" * 40}).encode()
    assert read_request({**headers, "X-Gitlab-Event": "Tag Push Hook"}, tag, SECRET) == \
        Push("gitlab", "refs/tags/v1", "c" * 40)   # checkout_sha: the commit, not the tag object
    deleted = json.dumps({"ref": "refs/heads/x", "after": "0" * 40, "checkout_sha": None}).encode()
    assert read_request(headers, deleted, SECRET) == Push("gitlab", "refs/heads/x", None)
    assert read_request({**headers, "X-Gitlab-Event": "Merge Request Hook"}, b"{}", SECRET) is None
    for token in ("wrong", None):
        bad = {**headers, "X-Gitlab-Token": token} if token else {"X-Gitlab-Event": "Push Hook"}
        with pytest.raises(WebhookError) as e:
            read_request(bad, body, SECRET)
        assert e.value.status == 401


def test_webhook_refusals() -> None:
    big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    with pytest.raises(WebhookError) as e:   # refused before any HMAC is computed
        read_request(github(b"{}"), big, SECRET)
    assert e.value.status == 413
    with pytest.raises(WebhookError) as e:
        read_request({}, b"{}", SECRET)
    assert e.value.status == 400
    with pytest.raises(ValueError):
        read_request(github(b"{}", secret=b""), b"{}", b"")
    for payload in ([], {"ref": "main", "after": SHA2}, {"ref": "refs/heads/main"},
                    {"ref": "refs/heads/main", "after": "xyz"}, "[" * 100_000):
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        with pytest.raises(WebhookError) as e:
            read_request(github(body), body, SECRET)
        assert e.value.status == 400, payload
    with pytest.raises(WebhookError):
        parse_push("github", b"\xff\xfe")


@pytest.mark.parametrize(("ref", "followed", "expected"), [
    ("refs/heads/main", "main", True), ("refs/tags/main", "main", True), ("refs/heads/dev", "main", False),
    ("refs/heads/main", "refs/heads/main", True), ("refs/tags/main", "refs/heads/main", False),
    ("refs/heads/main", None, True), ("refs/tags/v1", None, False), ("refs/heads/main", SHA2, False),
    ("refs/heads/release/1", "release/1", True), ("refs/heads/xmain", "main", False),
    ("refs/heads/team/main", "main", False), ("refs/heads/main", "refs/heads/mai", False),
])
def test_push_concerns_the_followed_ref(ref: str, followed: str | None, expected: bool) -> None:
    assert concerns(Push("github", ref, SHA2), followed) is expected
