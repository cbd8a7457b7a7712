"""Real git repositories for tests: a private git environment, bare repositories fed from a work
repository, and `git daemon` serving them on a free loopback port (shared by the git source's tests
and the end-to-end tests of `--git`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from etcdsync.local.etcdbin import free_ports

GIT_TIMEOUT = 30


def isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    """A private HOME, config and identity for every git process (the test's and etcdsync's), so the
    machine's git configuration cannot interfere."""
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_CONFIG_GLOBAL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_ASKPASS", "SSH_ASKPASS",
                "GIT_CONFIG_COUNT"):
        mp.delenv(var, raising=False)
    for who in ("AUTHOR", "COMMITTER"):
        mp.setenv(f"GIT_{who}_NAME", "etcdsync test")
        mp.setenv(f"GIT_{who}_EMAIL", "test@etcdsync.invalid")


def git(*args: str | os.PathLike[str], cwd: Path | None = None) -> str:
    r = subprocess.run(["git", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT)
    assert r.returncode == 0, f"git {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout.strip()


class Repo:
    """A bare repository (what the servers serve) fed from a work repository next to it."""

    def __init__(self, base: Path, name: str = "config") -> None:
        self.name = name
        self.bare = base / f"{name}.git"
        self.work = base / "work" / name
        git("init", "-q", "--bare", "-b", "main", self.bare)
        git("init", "-q", "-b", "main", self.work)

    def commit(self, files: dict[str, str | None], *, links: dict[str, str] | None = None, branch: str = "main",
               message: str = "change") -> str:
        """Write (text) or remove (None) files, commit, push to the bare repository; the new SHA."""
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        for name, target in (links or {}).items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, path)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "--force", self.bare, f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, rev: str = "HEAD", *, annotated: bool = False) -> None:
        git("tag", *(["-a", "-m", name] if annotated else []), name, rev, cwd=self.work)
        git("push", "-q", self.bare, f"refs/tags/{name}", cwd=self.work)

    @property
    def file_url(self) -> str:
        return f"file://{self.bare}"


@contextmanager
def git_daemon(base: Path, log: Path) -> Iterator[int]:
    """`git daemon` exporting the repositories under `base` on a free 127.0.0.1 port (yielded), stopped
    (its whole process group) when the block ends."""
    port = free_ports(1)[0]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["git", "daemon", "--export-all", f"--base-path={base}", f"--port={port}", "--listen=127.0.0.1",
             "--reuseaddr", "--informative-errors", "--init-timeout=10", "--timeout=30", str(base)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"git daemon exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"git daemon did not listen on {port}: {log.read_text()}")
