"""A git repository as a source of manifests: fetch into a cache, check out each commit whole.

Why: `etcdsync run --git URL` should follow a repository without a separate git-sync process, and must
never load a half-updated tree. Each commit is checked out into a new directory of its own, published by
one rename and never modified afterwards, so a `Snapshot` is always one commit's whole tree.

It drives the `git` command (2.30 or later; developed and tested with 2.39) through asyncio
subprocesses. Authentication is git's own (SSH keys, `GIT_SSH_COMMAND`, credential helpers,
`GIT_ASKPASS`); a password or token inside the URL is refused, and every message passes through
`redact`. Every git call is bounded by a timeout (its whole process group is killed), runs with
`GIT_TERMINAL_PROMPT=0`, without a controlling terminal and with stdin closed (nothing can wait for a
password), with only the URL's own transport allowed (`GIT_ALLOW_PROTOCOL`, so an `ext::` URL, or a
`url.*.insteadOf` rewrite to one, cannot run a command), with hooks off (`core.hooksPath=/dev/null`) and
submodules not followed (a submodule is an empty directory in the checkout).

Cache layout, one directory per (URL, ref) under ``cache_dir``::

    <key>/repo.git             bare repository; shallow (depth 1) fetches of the followed ref
    <key>/checkouts/<sha>/     one whole commit, never modified once published
    <key>/current -> checkouts/<sha>   swapped atomically after each checkout
    <key>/lock                 flock: one process at a time fetches or checks out

A commit SHA as the ref is fetched by SHA (servers on protocol v2, GitHub and GitLab allow it); a server
that refuses (protocol v0 without `uploadpack.allowReachableSHA1InWant`) gets one full fetch of every
branch and tag instead, and the SHA must then be among them.

(Over 350 lines: the URL and ref checks, the git plumbing with its timeouts and error mapping, and the
publish-by-rename checkout are one safety argument; split apart, each part would re-state it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.model import DesiredState
from ..errors import GitSourceError, ManifestError
from ..manifest import load_manifests

log = logging.getLogger(__name__)

MIN_GIT_VERSION = (2, 30)
DEFAULT_TIMEOUT = 60.0          # seconds, for each git call
DEFAULT_KEEP = 3                # published checkouts kept (the current one included)
_LOCAL_REF = "refs/etcdsync/target"
_MESSAGE_CAP = 300              # characters of git's own words in one of our messages
# Every path gets the blob's committed bytes: no filter (LFS pointers stay pointers), no end-of-line
# conversion, no `ident`; attributes in $GIT_DIR/info/attributes override the repository's .gitattributes.
_ATTRIBUTES = "* -text -crlf !eol -ident -filter !working-tree-encoding -export-subst -export-ignore\n"
_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.symlinks=true",
    "-c", "protocol.ext.allow=never",
    "-c", "submodule.recurse=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "gc.autoDetach=false",           # no background gc outliving the call and its timeout
    "-c", "maintenance.autoDetach=false",
    "-c", "credential.interactive=false",  # git 2.46+: never ask
    "-c", "advice.detachedHead=false",
)
# inherited variables that would point git at another repository, index or object store
_DROPPED_ENV = {
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_CONFIG_PARAMETERS", "GIT_QUARANTINE_PATH", "GIT_PREFIX", "GIT_SHALLOW_FILE", "GIT_REPLACE_REF_BASE",
    "GIT_GRAFT_FILE", "GIT_ATTR_SOURCE", "GIT_PROTOCOL", "GIT_ALLOW_PROTOCOL", "GIT_PROTOCOL_FROM_USER",
    "GIT_EXTERNAL_DIFF", "GIT_EDITOR", "GIT_PAGER",
}

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HELPER = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_PROTOCOLS = {"https": "https", "http": "http", "ssh": "ssh", "git+ssh": "ssh", "ssh+git": "ssh",
              "git": "git", "file": "file"}
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"]*@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^[-/.]|/$|/\.|\.lock(?:/|$)|\.$|//")
_SCP = re.compile(r"(?:[^@/:]+@)?[^/:]+:")


def _git_error(message: str, *, retryable: bool = False, sha: str | None = None) -> GitSourceError:
    return GitSourceError(redact(message), retryable=retryable, sha=sha)


def redact(text: str) -> str:
    """`text` with the user information of every URL in it (a user name may be a token) replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}***@", text)


@dataclass(frozen=True, slots=True)
class Remote:
    """A checked remote URL: ``url`` is what git gets, ``shown`` what messages name, ``protocol`` the only
    transport git may use for it."""

    url: str
    shown: str
    protocol: str


def parse_url(url: str) -> Remote:
    """Check a repository URL: `scheme://...` (https, http, ssh, git, file), scp-like `[user@]host:path`
    (ssh) or a local path (file). Refused: `<transport>::<address>` (remote helpers such as `ext::`,
    which run commands), other schemes, a leading `-`, control characters, and a password in the URL."""
    shown = redact(_CONTROL.sub("?", url))
    if not url or _CONTROL.search(url):
        raise _git_error(f"{shown or '(empty)'}: a repository URL must be non-empty, without control characters")
    if url.startswith("-"):
        raise _git_error(f"{shown}: a repository URL must not start with '-'")
    if _HELPER.match(url):
        raise _git_error(f"{shown}: '<transport>::' URLs (remote helpers such as ext::) are refused; "
                             "use https://, ssh://, git:// or file://")
    m = _SCHEME.match(url)
    if m:
        scheme, authority = m.group(1).lower(), m.group(2)
        protocol = _PROTOCOLS.get(scheme)
        if protocol is None:
            raise _git_error(f"{shown}: unsupported URL scheme '{scheme}' (https, http, ssh, git or file)")
        userinfo = authority.rpartition("@")[0] if "@" in authority else ""
        if ":" in userinfo:
            raise _git_error(f"{shown}: a password or token in the URL is refused (it would show in process "
                                 "lists and logs); use a credential helper, GIT_ASKPASS or an SSH key")
        return Remote(url, shown, protocol)
    if _SCP.match(url) and not url.startswith(("/", "./", "../")):
        return Remote(url, shown, "ssh")
    absolute = os.path.abspath(url)
    return Remote(absolute, redact(absolute), "file")


def check_ref(ref: str | None) -> str | None:
    """None or "HEAD" (the remote's default branch), a full commit SHA (lower-cased), or a branch, tag or
    `refs/...` name that git would accept."""
    if ref is None or ref == "HEAD":
        return None
    if _SHA.fullmatch(ref.lower()):
        return ref.lower()
    if not ref or _BAD_REF.search(ref) or ref.endswith(".lock"):
        raise _git_error(f"ref '{_CONTROL.sub('?', ref)}' is not a valid branch, tag or commit SHA "
                             "(a commit SHA must be the full 40 or 64 hex digits)")
    return ref


def check_path(path: str | None) -> str:
    """The repository-relative directory to load ('' = the whole repository), normalised."""
    if path is None:
        return ""
    p = PurePosixPath(path)
    if _CONTROL.search(path) or p.is_absolute() or ".." in p.parts:
        raise _git_error(f"path '{_CONTROL.sub('?', path)}' must be relative to the repository root, "
                             "without '..'")
    return "" if str(p) == "." else str(p)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "etcdsync" / "git"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One commit's whole tree: ``root`` is its checkout (never modified once published), ``path`` the
    ``--path`` directory inside it, to be loaded like any ``-f`` directory."""

    sha: str
    root: Path
    path: Path

    def load(self, *, environ: Mapping[str, str] | None = None, reserved_prefix: str = "/.etcdsync/",
             file_roots: Sequence[str | os.PathLike[str]] = (), env_allow: Sequence[str] = ()) -> DesiredState:
        """`load_manifests([self.path])`; a ManifestError names its file as `<sha12>:<repository path>`."""
        try:
            return load_manifests([self.path], environ=environ, reserved_prefix=reserved_prefix,
                                  file_roots=file_roots, env_allow=env_allow)
        except ManifestError as e:
            file = e.file
            if file is not None and _inside(os.path.abspath(file), str(self.root)):
                file = f"{self.sha[:12]}:{os.path.relpath(os.path.abspath(file), self.root)}"
            raise ManifestError(e.message, file, e.line, e.column) from None


class _GitFailed(Exception):
    def __init__(self, stderr: str) -> None:
        self.stderr = stderr
        super().__init__(stderr)


_git_version: tuple[int, ...] | None = None


class GitSource:
    """Follows `ref` (branch, tag, full commit SHA; None = the remote's default branch) of the repository
    at `url`; `path` is the directory inside it that holds the manifests.

    `await fetch()` -> the commit SHA the ref names now (fetched into the cache); `await checkout(sha)`
    -> a Snapshot of that commit; `await changed(since)` tells a poller whether a new commit arrived
    (one `git ls-remote`, no download). Calls on one cache directory are serialised, also across
    processes. Raises GitSourceError.
    """

    def __init__(self, url: str, ref: str | None = None, path: str | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 keep: int = DEFAULT_KEEP) -> None:
        self.remote = parse_url(url)
        self.ref = check_ref(ref)
        self.path = check_path(path)
        if not 0 < timeout <= 3600:
            raise _git_error(f"{self.remote.shown}: timeout must be between 0 and 3600 seconds")
        if keep < 1:
            raise _git_error(f"{self.remote.shown}: keep must be at least 1")
        self.timeout = timeout
        self.keep = keep
        key = hashlib.sha256(f"{self.remote.url}\0{self.ref or 'HEAD'}".encode()).hexdigest()[:16]
        self.cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / key
        self.current = self.cache / "current"
        self.resolved_ref: str | None = None   # the full ref name once known ("refs/heads/main")
        self._repo = self.cache / "repo.git"
        self._checkouts = self.cache / "checkouts"
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The URL as messages show it (user information replaced by ***)."""
        return self.remote.shown

    def __repr__(self) -> str:
        return f"GitSource({self.remote.shown!r}, ref={self.ref!r}, path={self.path!r})"

    # ---------------------------------------------------------------------------------------- public

    async def remote_sha(self) -> str:
        """The commit the ref names on the server now (for a SHA ref, the SHA itself)."""
        if self.ref is not None and _SHA.fullmatch(self.ref):
            return self.ref
        ref, sha = await self._ls_remote()
        self.resolved_ref = ref
        return sha

    async def changed(self, since_sha: str | None) -> bool:
        """Whether the ref names another commit than `since_sha` (None: nothing seen yet)."""
        return since_sha is None or await self.remote_sha() != since_sha

    async def fetch(self) -> str:
        """Bring the commit the ref names into the cache (shallow where possible) and return its SHA."""
        async with self._locked():
            await self._init_repo()
            if self.ref is not None and _SHA.fullmatch(self.ref):
                await self._fetch_sha(self.ref)
                return self.ref
            ref, sha = await self._ls_remote()
            self.resolved_ref = ref
            if not await self._has_commit(sha):
                await self._run_remote("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1",
                                       "--no-recurse-submodules", "--", self.remote.url, f"+{ref}:{_LOCAL_REF}",
                                       what=f"fetch {ref}")
                sha = (await self._git("rev-parse", "--verify", "--end-of-options", f"{_LOCAL_REF}^{{commit}}")
                       ).decode().strip()
            else:
                await self._git("update-ref", _LOCAL_REF, sha)
            return sha

    async def fetch_commit(self, sha: str) -> str:
        """Bring commit `sha` of this repository into the cache by its SHA (as for a SHA ref), whatever
        ref is followed; returns it lower-cased. `sha` may come from elsewhere (a history entry): it must
        be a full SHA, or nothing runs."""
        sha = sha.lower()
        if not _SHA.fullmatch(sha):
            raise _git_error(f"{self.remote.shown}: '{_CONTROL.sub('?', sha)[:80]}' is not a full commit SHA")
        async with self._locked():
            await self._init_repo()
            await self._fetch_sha(sha)
        return sha

    async def checkout(self, sha: str) -> Snapshot:
        """A Snapshot of commit `sha` (fetched before): its whole tree in a directory of its own, published
        by one rename; `current` then points at it and all but the newest `keep` checkouts are removed.
        A `path` missing in that commit, or a symbolic link under it that leaves the checkout, is an
        error naming the SHA (and nothing is published)."""
        sha = sha.lower()
        if not _SHA.fullmatch(sha):
            raise _git_error(f"{self.remote.shown}: '{_CONTROL.sub('?', sha)[:80]}' is not a full commit SHA")
        async with self._locked():
            final = self._checkouts / sha
            if not final.is_dir():
                await self._init_repo()
                if not await self._has_commit(sha):
                    raise _git_error(f"{self.remote.shown}: commit {sha} is not in the cache (fetch it first)",
                                         sha=sha)
                tmp = self._checkouts / f".tmp-{sha[:12]}-{secrets.token_hex(4)}"
                try:
                    await self._check_out_into(sha, tmp)
                    await asyncio.to_thread(self._check_tree, sha, tmp)
                    try:
                        os.rename(tmp, final)
                    except OSError as e:  # published meanwhile (by a process that ignored the lock)
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                finally:
                    if tmp.exists():
                        await asyncio.to_thread(shutil.rmtree, tmp, True)
            else:
                await asyncio.to_thread(self._check_tree, sha, final)
            os.utime(final)   # the newest checkout is the last one pruned
            self._point_current(sha)
            await asyncio.to_thread(self._prune, sha)
            return Snapshot(sha, final, final / self.path if self.path else final)

    async def pull(self) -> Snapshot:
        """`fetch()` then `checkout()` of the commit it returned."""
        return await self.checkout(await self.fetch())

    # ---------------------------------------------------------------------------------------- git

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=self.remote.protocol, GIT_NO_REPLACE_OBJECTS="1",
                   LC_ALL="C", LANGUAGE="C", GCM_INTERACTIVE="never")
        env.update(extra or {})
        return env

    async def _git(self, *args: str, env: Mapping[str, str] | None = None, what: str | None = None,
                   git_dir: bool = True) -> bytes:
        """Run one git command, bounded by the timeout; raises _GitFailed (with stderr) on a non-zero exit
        and GitSourceError on a timeout or a missing git."""
        await _check_git_version(self.remote.shown)
        argv = ["git", *_CONFIG, *(["--git-dir", str(self._repo)] if git_dir else []), *args]
        label = what or args[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env(env), start_new_session=True)
        except OSError as e:
            raise _git_error(f"{self.remote.shown}: cannot run git: {e.strerror or e}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            raise _git_error(f"{self.remote.shown}: git {label} timed out after {self.timeout:g}s",
                                 retryable=True) from None
        finally:
            if proc.returncode is None:   # timed out or cancelled: the whole group (ssh, helpers) goes
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
        if proc.returncode != 0:
            raise _GitFailed(err.decode("utf-8", "replace"))
        return out

    async def _run_remote(self, *args: str, what: str) -> bytes:
        """A git command that talks to the remote; a failure becomes one GitSourceError line."""
        try:
            return await self._git(*args, what=what)
        except _GitFailed as e:
            raise self._error(what, e.stderr) from None

    def _error(self, what: str, stderr: str, sha: str | None = None) -> GitSourceError:
        said = _summary(stderr)
        kind, retryable = _classify(stderr)
        return _git_error(f"{self.remote.shown}: {what}: {kind}{': ' + said if said else ''}",
                              retryable=retryable, sha=sha)

    async def _ls_remote(self) -> tuple[str, str]:
        """(full ref name, commit SHA) of the followed ref on the server, peeled through annotated tags."""
        if self.ref is None:
            out = await self._run_remote("ls-remote", "--symref", "--", self.remote.url, "HEAD",
                                         what="ls-remote HEAD")
            refs = _parse_ls_remote(out)
            target = refs.get("ref: HEAD")
            if "HEAD" not in refs:
                raise _git_error(f"{self.remote.shown}: the repository has no default branch (empty "
                                     "repository?); give a ref")
            if target is None or not target.startswith("refs/heads/"):
                raise _git_error(f"{self.remote.shown}: the server does not say which branch HEAD is; give a ref")
            return target, refs["HEAD"]
        names = [self.ref] if self.ref.startswith("refs/") else [f"refs/heads/{self.ref}", f"refs/tags/{self.ref}"]
        patterns = [p for n in names for p in (n, f"{n}^{{}}")]
        refs = _parse_ls_remote(await self._run_remote("ls-remote", "--", self.remote.url, *patterns,
                                                       what=f"ls-remote {self.ref}"))
        found = [n for n in names if n in refs]
        if not found:
            raise _git_error(f"{self.remote.shown}: unknown ref '{self.ref}': no such branch or tag on the server")
        if len(found) > 1:
            raise _git_error(f"{self.remote.shown}: ref '{self.ref}' is both a branch and a tag; "
                                 f"say refs/heads/{self.ref} or refs/tags/{self.ref}")
        ref = found[0]
        return ref, refs.get(f"{ref}^{{}}", refs[ref])

    async def _fetch_sha(self, sha: str) -> None:
        if await self._has_commit(sha):
            await self._git("update-ref", _LOCAL_REF, sha)
            return
        try:
            await self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1",
                            "--no-recurse-submodules", "--", self.remote.url, f"+{sha}:{_LOCAL_REF}",
                            what=f"fetch {sha}")
            return
        except _GitFailed as e:
            kind, _ = _classify(e.stderr)
            if kind != "refused":   # unreachable, auth, not a repository: the deeper fetch would fail too
                raise self._error(f"fetch {sha}", e.stderr, sha) from None
            log.info("%s: the server refuses a fetch by SHA; fetching every branch and tag", self.remote.shown)
        await self._run_remote("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                               "--", self.remote.url, "+refs/heads/*:refs/etcdsync/heads/*",
                               "+refs/tags/*:refs/etcdsync/tags/*", what="fetch every branch and tag")
        if not await self._has_commit(sha):
            raise _git_error(f"{self.remote.shown}: commit {sha} is not on any branch or tag of the server",
                                 sha=sha)
        await self._git("update-ref", _LOCAL_REF, sha)

    async def _has_commit(self, sha: str) -> bool:
        try:
            await self._git("cat-file", "-e", f"{sha}^{{commit}}")
            return True
        except _GitFailed:
            return False

    async def _init_repo(self) -> None:
        if (self._repo / "HEAD").exists():
            return
        tmp = self.cache / f".init-{secrets.token_hex(4)}"
        try:
            try:
                await self._git("init", "--quiet", "--bare", "--template=", str(tmp), git_dir=False)
            except _GitFailed as e:
                raise self._error("init the cache repository", e.stderr) from None
            (tmp / "info").mkdir(exist_ok=True)
            (tmp / "info" / "attributes").write_text(_ATTRIBUTES)
            os.rename(tmp, self._repo)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    async def _check_out_into(self, sha: str, directory: Path) -> None:
        """The tree of `sha` into the new `directory`, through a private index (no hooks, no worktree)."""
        directory.mkdir(parents=True)
        index = self.cache / f".index-{secrets.token_hex(4)}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            await self._git("read-tree", "--end-of-options", sha, env=env, what="read-tree")
            await self._git("--work-tree", str(directory), "checkout-index", "--all", "--force", env=env,
                            what="checkout-index")
        except _GitFailed as e:
            raise _git_error(f"{self.remote.shown}: cannot check out commit {sha}: {_summary(e.stderr)}",
                                 sha=sha) from None
        finally:
            index.unlink(missing_ok=True)

    def _check_tree(self, sha: str, root: Path) -> None:
        """The path exists in the commit, and no symbolic link under it leads out of the checkout."""
        real_root = os.path.realpath(root)
        top = root / self.path if self.path else root
        if not os.path.lexists(top):
            raise _git_error(f"{self.remote.shown}: path '{self.path}' does not exist in commit {sha}", sha=sha)
        links = [top] if top.is_symlink() else []
        if top.is_dir() and not top.is_symlink():
            for d, dirs, files in os.walk(top):
                links += [Path(d, n) for n in (*dirs, *files) if os.path.islink(os.path.join(d, n))]
        for link in links:
            if not _inside(os.path.realpath(link), real_root):
                rel = link.relative_to(root).as_posix()
                raise _git_error(f"{self.remote.shown}: commit {sha}: '{rel}' is a symbolic link that leaves "
                                     "the checkout", sha=sha)

    def _point_current(self, sha: str) -> None:
        tmp = self.cache / f".current-{secrets.token_hex(4)}"
        os.symlink(os.path.join("checkouts", sha), tmp)
        os.replace(tmp, self.current)

    def _prune(self, current: str) -> None:
        """Remove leftovers of interrupted checkouts and all but the newest `keep` checkouts."""
        done: list[tuple[float, str]] = []
        with os.scandir(self._checkouts) as it:
            for entry in it:
                if entry.name.startswith(".tmp-"):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif entry.name != current and _SHA.fullmatch(entry.name):
                    done.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
        done.sort(reverse=True)
        for _, name in done[self.keep - 1:]:
            log.debug("%s: removing the old checkout %s", self.remote.shown, name)
            shutil.rmtree(self._checkouts / name, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """This object's calls one at a time, and one process at a time on the cache directory (flock)."""
        async with self._lock:
            try:
                self._checkouts.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self.cache / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    deadline = time.monotonic() + self.timeout
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if time.monotonic() > deadline:
                                raise _git_error(f"{self.remote.shown}: the cache {self.cache} stayed locked by "
                                                     f"another process for {self.timeout:g}s", retryable=True) from None
                            await asyncio.sleep(0.05)
                    yield
                finally:
                    os.close(fd)
            except OSError as e:   # the cache directory: not writable, full disk, not a directory
                raise _git_error(f"{self.remote.shown}: cache {self.cache}: {e.strerror or e}") from None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _parse_ls_remote(out: bytes) -> dict[str, str]:
    """`ls-remote` lines -> {ref: sha}; a `--symref` line `ref: <target>\\t<name>` -> {"ref: <name>": target}."""
    refs: dict[str, str] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: "):
            refs[f"ref: {name}"] = left[5:]
        elif _SHA.fullmatch(left):
            refs[name] = left
    return refs


def _summary(stderr: str) -> str:
    """Git's own words, on one line: its meaningful lines, redacted, joined, capped."""
    skip = ("hint:", "please make sure you have the correct access rights", "and the repository exists")
    lines = []
    for raw in stderr.splitlines():
        line = _CONTROL.sub("", raw).strip()
        for prefix in ("fatal: ", "error: ", "remote: "):
            line = line.removeprefix(prefix)
        if line and not line.lower().startswith(skip) and line not in lines:
            lines.append(line)
    said = redact("; ".join(lines))
    return said if len(said) <= _MESSAGE_CAP else said[:_MESSAGE_CAP - 1] + "…"


_KINDS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("protocol not allowed", False, ("not allowed",)),
    ("refused", False, ("not our ref", "unadvertised object")),
    ("authentication failed", False, ("authentication failed", "could not read username", "could not read password",
                                      "terminal prompts disabled", "permission denied (publickey",
                                      "host key verification failed", "the requested url returned error: 403",
                                      "the requested url returned error: 401")),
    ("unreachable", True, ("unable to connect", "connection refused", "could not resolve", "failed to connect",
                           "connection timed out", "network is unreachable", "no route to host",
                           "couldn't connect", "connection reset", "connection closed", "unable to access",
                           "the remote end hung up unexpectedly", "returned error: 5")),
    ("not a repository", False, ("does not appear to be a git repository", "not exported", "not found", "no such repository",
                                 "returned error: 404", "not a git repository")),
    ("unknown ref", False, ("couldn't find remote ref",)),
)


def _classify(stderr: str) -> tuple[str, bool]:
    """(what went wrong, in a few words; whether trying again later may help)."""
    low = stderr.lower()
    for kind, retryable, needles in _KINDS:
        if any(n in low for n in needles):
            return kind, retryable
    return "git failed", False


async def _check_git_version(shown: str) -> None:
    global _git_version
    if _git_version is not None:
        return
    try:
        proc = await asyncio.create_subprocess_exec("git", "version", stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
    except FileNotFoundError:
        raise _git_error(f"{shown}: the git command is not installed (git "
                             f"{'.'.join(map(str, MIN_GIT_VERSION))} or later is needed)") from None
    except (OSError, TimeoutError) as e:
        raise _git_error(f"{shown}: cannot run 'git version': {e}") from None
    m = re.search(rb"(\d+)\.(\d+)", out)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if version < MIN_GIT_VERSION:
        raise _git_error(f"{shown}: git {'.'.join(map(str, version))} is too old "
                             f"({'.'.join(map(str, MIN_GIT_VERSION))} or later is needed)")
    _git_version = version
