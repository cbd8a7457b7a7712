"""The config file of named contexts (like kubeconfig): which etcd, as whom, with which files.

    # ~/.config/etcdsync/config.yaml (or $XDG_CONFIG_HOME/etcdsync/config.yaml, or ETCDSYNC_CONFIG)
    current-context: staging
    contexts:
      staging:
        endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]   # or one comma separated string
        user: deploy
        password-file: secrets/staging.pass       # relative paths: relative to this file
        cacert: certs/ca.pem
        cert: certs/client.pem
        key: certs/client-key.pem
        reserved-prefix: /.etcdsync/
        timeout: 10s

A context is the lowest layer of the connection settings: flags > ETCDSYNC_* > ETCDCTL_* > the
context > defaults. The file never holds a password (`password:` and `user: name:secret` are
refused): only the name of a file that does. A config file that another user could change (group- or
world-writable, or owned by someone other than you or root) is refused, since it chooses where your
password is sent. Every problem is one UsageError naming the file and, when it has one, the line.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ManifestError, UsageError
from .manifest.yamlnodes import MAP, SCALAR, SEQ, Node, iter_documents, read_file, shown
from .settings import Context, parse_duration, reserved_prefix_problem

FIELDS = ("endpoints", "user", "password-file", "cacert", "cert", "key", "reserved-prefix", "timeout")
_PATH_FIELDS = ("password-file", "cacert", "cert", "key")


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: its contexts by name (in file order) and the current one."""

    path: str
    contexts: Mapping[str, Context]
    current: str | None
    current_lines: tuple[int, int] | None = None
    """First and last line of `current-context: NAME` (to rewrite it in place), None when absent."""


def default_path(environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """The config file's path and whether it was named explicitly (ETCDSYNC_CONFIG)."""
    env = os.environ if environ is None else environ
    if env.get("ETCDSYNC_CONFIG"):
        return env["ETCDSYNC_CONFIG"], True
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "etcdsync", "config.yaml"), False


def _check_permissions(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: the config file is not a regular file")
    if st.st_uid not in (os.geteuid(), 0):
        raise UsageError(f"{path}: the config file is owned by another user (uid {st.st_uid}); refusing to use it "
                         "(it chooses where your password is sent)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"{path}: the config file is writable by group or others; refusing to use it "
                         f"(it chooses where your password is sent): chmod go-w {path}")


def _err(path: str, node: Node, message: str) -> UsageError:
    return UsageError(f"{path}:{node.line}: {message}")


def _scalar(path: str, node: Node, what: str) -> str:
    if node.kind != SCALAR or node.is_null or not node.value:
        raise _err(path, node, f"{what}: expected a non-empty string")
    return node.value


def _context(path: str, name: str, node: Node) -> Context:
    where = f"context {name!r}"
    if node.kind != MAP:
        raise _err(path, node, f"{where}: expected a mapping of {', '.join(FIELDS)}")
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, object] = {}
    for key_node, value_node in node.items:
        field = key_node.value or ""
        if field == "password":
            raise _err(path, key_node, f"{where}: a password in clear is not accepted in the config file; "
                                       "write it to a file (chmod 600) and name that file with password-file")
        if field not in FIELDS:
            raise _err(path, key_node, f"{where}: unknown field '{shown(field)}' (expected one of {', '.join(FIELDS)})")
        if field == "endpoints":
            items = value_node.items if value_node.kind == SEQ else [value_node]
            endpoints = [_scalar(path, item, f"{where}: endpoints") for item in items]
            split = tuple(part.strip() for ep in endpoints for part in ep.split(",") if part.strip())
            if not split:
                raise _err(path, value_node, f"{where}: endpoints: at least one endpoint is required")
            values["endpoints"] = split
            continue
        text = _scalar(path, value_node, f"{where}: {field}")
        if field == "user" and ":" in text:
            raise _err(path, value_node, f"{where}: user must be a user name: 'user:password' would put a password "
                                         "in clear in the config file (use password-file)")
        if field in _PATH_FIELDS:
            text = os.path.join(base, os.path.expanduser(text))
        if field == "reserved-prefix":
            problem = reserved_prefix_problem(text)
            if problem:
                raise _err(path, value_node, f"{where}: reserved-prefix '{shown(text)}': {problem}")
        if field == "timeout":
            seconds = parse_duration(text)
            if seconds is None:
                raise _err(path, value_node, f"{where}: timeout '{shown(text)}' is not a duration (e.g. 5s, 500ms, 10)")
            values["timeout"] = seconds
            continue
        values[field.replace("-", "_").replace("cacert", "ca_cert")] = text
    if values.get("password_file") and not values.get("user"):
        raise _err(path, node, f"{where}: password-file given without a user")
    if bool(values.get("cert")) != bool(values.get("key")):
        raise _err(path, node, f"{where}: give both cert and key, or neither")
    return Context(name, path, **values)  # type: ignore[arg-type]


def parse(text: str, path: str) -> ConfigFile:
    """A config file's text -> its contexts (pure: no file is read)."""
    try:
        docs = list(iter_documents(text, path))
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if len(docs) > 1:
        raise _err(path, docs[1].root, "the config file holds more than one YAML document")
    if not docs:
        return ConfigFile(path, {}, None)
    root = docs[0].root
    if root.kind != MAP:
        raise _err(path, root, "expected a mapping with 'contexts' and 'current-context'")
    contexts: dict[str, Context] = {}
    current: str | None = None
    current_lines: tuple[int, int] | None = None
    for key_node, value_node in root.items:
        key = key_node.value or ""
        if key == "current-context":
            current_lines = (key_node.line, key_node.line if value_node.is_null else max(key_node.line, value_node.line))
            if not value_node.is_null:
                current = _scalar(path, value_node, "current-context")
        elif key == "contexts":
            if value_node.is_null:
                continue
            if value_node.kind != MAP:
                raise _err(path, value_node, "contexts: expected a mapping of context names to their settings")
            for name_node, ctx_node in value_node.items:
                name = _scalar(path, name_node, "context name")
                contexts[name] = _context(path, name, ctx_node)
        else:
            raise _err(path, key_node, f"unknown field '{shown(key)}' (expected contexts, current-context)")
    return ConfigFile(path, contexts, current, current_lines)


def _names(contexts: Mapping[str, Context]) -> str:
    return "contexts: " + ", ".join(contexts) if contexts else "it has no contexts"


def load(path: str) -> ConfigFile:
    """Read and parse the config file at `path` (its permissions checked first)."""
    _check_permissions(path)
    try:
        text = read_file(path)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    return parse(text, path)


def find(environ: Mapping[str, str] | None = None) -> ConfigFile | None:
    """The config file, or None when there is none at the default path. A file named by
    ETCDSYNC_CONFIG must exist."""
    path, explicit = default_path(environ)
    if not explicit and not os.path.lexists(path):
        return None
    if explicit and not os.path.lexists(path):
        raise UsageError(f"ETCDSYNC_CONFIG={path}: no such file")
    return load(path)


def select(flag: str | None, environ: Mapping[str, str] | None = None) -> Context | None:
    """The context in effect: --context, else ETCDSYNC_CONTEXT, else the file's current-context;
    None when none is chosen (or there is no config file and none was asked for)."""
    env = os.environ if environ is None else environ
    wanted, origin = (flag, "--context") if flag else (env.get("ETCDSYNC_CONTEXT") or None, "ETCDSYNC_CONTEXT")
    config = find(env)
    if config is None:
        if wanted:
            raise UsageError(f"{origin} {wanted}: no config file ({default_path(env)[0]}; set ETCDSYNC_CONFIG to use another)")
        return None
    name = wanted or config.current
    if name is None:
        return None
    if not wanted:
        assert config.current_lines is not None
        origin = f"{config.path}:{config.current_lines[0]}: current-context"
    ctx = config.contexts.get(name)
    if ctx is None:
        raise UsageError(f"{origin} {shown(name)}: no such context in {config.path} ({_names(config.contexts)})")
    return ctx


def set_current(config: ConfigFile, name: str) -> None:
    """Rewrite the file with `current-context: name`, in place of the old line (comments and the
    rest of the file kept), atomically: a temporary file in the same directory, renamed over it."""
    if name not in config.contexts:
        raise UsageError(f"{shown(name)}: no such context in {config.path} ({_names(config.contexts)})")
    with open(config.path, encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    new = f"current-context: {_quoted(name)}\n"
    if config.current_lines is not None:
        first, last = config.current_lines
        lines[first - 1:last] = [new]
    else:
        lines.insert(0, new)
    st = os.stat(config.path)
    directory = os.path.dirname(os.path.abspath(config.path))
    fd, tmp = tempfile.mkstemp(prefix=".config.yaml.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, config.path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _quoted(name: str) -> str:
    """`name` as a YAML scalar: plain when that reads back as the same string, else single-quoted."""
    plain = name.replace("-", "").replace("_", "").replace(".", "").isalnum() and not name[0].isdigit()
    if plain and name.lower() not in ("null", "true", "false", "yes", "no", "on", "off", "y", "n"):
        return name
    return "'" + name.replace("'", "''") + "'"
