"""Security: etcd password auth, TLS with client certificates, and secrets that never leak.

Proved here against real etcd servers:

- Auth: a user whose role may read and write only the managed prefixes and etcdsync's reserved
  prefix can `diff`, `apply` and `run` (the daemon repairs drift and holds a leased registration); a
  write outside its prefixes, a wrong password and missing credentials are each one clear stderr line
  with exit 2 (the password never shown). With `--auth-token simple --auth-token-ttl 2` the daemon's
  token expires while it idles and is wiped by an etcd restart, and drift is still repaired.
- TLS: with a throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate
  (etcd `--client-cert-auth`), `diff`, `apply` and `run` work with `--cacert/--cert/--key`; an unknown
  CA, a missing client certificate and plain http against the TLS port are one-line exit 2 errors in
  bounded time.
- Secrets: canary values declared `secret: true` (from env, file, inline, inside JSON), their rotated
  values, and values other writers put on secret keys never appear in the text diff, `-o json`, `-v`,
  `--debug`, ownership conflicts, guard refusals, errors, the daemon's text and JSON logs (with
  `--debug`), /readyz or /metrics.
- Hardening (issue 11): the README's least-privilege role, created by running the README's own
  commands, lets the daemon's user diff, apply and run, and etcd refuses its writes outside the
  granted prefixes; fromFile cannot read outside the tree (/proc/self/environ, /etc/passwd, `..`,
  symbolic links) unless a --file-root allows it; fromEnv never reads ETCDSYNC_*/ETCDCTL_* and obeys
  --env-allow (CLI and daemon); malformed ownership records are exit 2 and delete nothing; a key held
  under another client's lease is a conflict; escape sequences never reach the terminal; export
  writes placeholders for secrets.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import helpers_faults
import pytest
from certs import make_ca
from conftest import Env
from helpers_faults import ROOT, Ctl, Daemons, cli, wait_for

from etcdsync.local.etcdbin import EtcdCluster

# ------------------------------------------------------------------------------------------------
# password auth


def configset(name: str, prefix: str, data: dict[str, str]) -> str:
    rows = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in data.items())
    return f"apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {{name: {name}}}\nspec:\n  prefix: {prefix}\n  data:\n{rows}"


LIVE = """\
apiVersion: etcdsync/v1
kind: Service
metadata: {name: web}
spec:
  prefix: /a/services/
  ttl: 3s
  instances:
    - {id: w1, host: 127.0.0.1, port: 8080}
"""


def start_auth_etcd(base: Path, extra: list[str] | None = None) -> tuple[EtcdCluster, Ctl]:
    """etcd with auth on: root, and user `sync` whose role covers /a/ and /.etcdsync/ only."""
    return helpers_faults.start_auth_etcd(base, user="sync", password="syncpw", role="syncer",
                                          prefixes=("/a/", "/.etcdsync/"), extra=extra)


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Ctl]]:
    c, root = start_auth_etcd(tmp_path_factory.mktemp("etcd-auth"))
    try:
        yield c, root
    finally:
        c.stop()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    d = Daemons()
    try:
        yield d
    finally:
        d.cleanup()


SYNC = {"ETCDSYNC_USER": "sync", "ETCDSYNC_PASSWORD": "syncpw"}


def one_line(run: object, *words: str) -> str:
    err = run.err  # type: ignore[attr-defined]
    lines = [line for line in err.splitlines() if line.strip()]
    assert run.code == 2, (run.code, err[-800:])  # type: ignore[attr-defined]
    assert len(lines) == 1, f"expected one line, got: {err[-1500:]!r}"
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    return lines[0]


def test_limited_user_can_diff_apply_and_run(auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path,
                                            daemons: Daemons) -> None:
    cluster, root = auth_etcd
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "app.yaml").write_text(configset("app", "/a/app/", {"x": "1", "y": "2"}))
    (mdir / "live.yaml").write_text(LIVE)
    args = ["-f", str(mdir), "--applyset", "auth"]
    diff = cli("diff", *args, endpoints=cluster.endpoints, env=SYNC)
    assert diff.code == 1, diff.err
    applied = cli("apply", *args, endpoints=cluster.endpoints, env=SYNC)
    assert applied.code == 0, applied.err
    assert root.values("/a/app/") == {"/a/app/x": b"1", "/a/app/y": b"2"}
    assert cli("diff", *args, endpoints=cluster.endpoints, env=SYNC).code == 0
    d = daemons.start(tmp_path, [mdir], endpoints=cluster.endpoints, reserved="/.etcdsync/", applyset="auth", env=SYNC)
    d.wait_ready()
    wait_for(lambda: root.get("/a/services/web/w1") is not None, 5, "leased registration as user sync")
    root("put", "/a/app/x", "drift")
    wait_for(lambda: root.get("/a/app/x") == b"1", 5, f"drift repaired as user sync\n{d.logs()[-1500:]}")
    assert d.stop() == 0
    assert root.get("/a/services/web/w1") is None, "the lease was revoked on SIGTERM"
    assert "syncpw" not in d.logs()


def test_write_outside_the_role_is_a_clear_error(auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path) -> None:
    cluster, root = auth_etcd
    path = tmp_path / "b.yaml"
    path.write_text(configset("b", "/b/", {"x": "1"}))
    before = root.revision()
    run = cli("apply", "-f", str(path), "--applyset", "b", endpoints=cluster.endpoints, env=SYNC)
    one_line(run, "permission denied", "sync")
    assert root.revision() == before


def test_wrong_password_and_missing_credentials(auth_etcd: tuple[EtcdCluster, Ctl], tmp_path: Path) -> None:
    cluster, _ = auth_etcd
    path = tmp_path / "a.yaml"
    path.write_text(configset("app", "/a/pw/", {"x": "1"}))
    canary = "pw-" + secrets.token_hex(8)
    for extra in ([], ["--debug"]):
        run = cli("diff", "-f", str(path), "--applyset", "pw", *extra, endpoints=cluster.endpoints, timeout=30,
                  env={"ETCDSYNC_USER": "sync", "ETCDSYNC_PASSWORD": canary})
        if not extra:
            one_line(run, "authentication failed")
            assert run.seconds < 6
        assert run.code == 2
        assert canary not in run.err + run.out
    run = cli("diff", "-f", str(path), "--applyset", "pw", "--user", "sync", "--password", canary,
              endpoints=cluster.endpoints)
    one_line(run, "authentication failed")
    assert canary not in run.err + run.out
    run = cli("diff", "-f", str(path), "--applyset", "pw", endpoints=cluster.endpoints)
    one_line(run, "--user")


def test_expired_simple_token_and_etcd_restart_do_not_hang_the_daemon(tmp_path: Path, daemons: Daemons) -> None:
    cluster, root = start_auth_etcd(tmp_path / "etcd", ["--auth-token", "simple", "--auth-token-ttl", "2"])
    try:
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "app.yaml").write_text(configset("app", "/a/tok/", {"x": "1"}))
        d = daemons.start(tmp_path, [mdir], "--timeout", "2", endpoints=cluster.endpoints, reserved="/.etcdsync/",
                          applyset="tok", env=SYNC)
        d.wait_ready()
        time.sleep(6)                                  # idle: the simple token expires after 2 s
        root("put", "/a/tok/x", "drift-after-expiry")
        wait_for(lambda: root.get("/a/tok/x") == b"1", 5, f"drift repaired after token expiry\n{d.logs()[-2000:]}")
        # a restart forgets every simple token; the watch must come back authenticated
        cluster.members[0].stop()
        cluster.members[0].start(wait=False)
        wait_for(lambda: root.revision() > 0, 20, "etcd back")
        root("put", "/a/tok/x", "drift-after-restart")
        wait_for(lambda: root.get("/a/tok/x") == b"1", 10, f"drift repaired after restart\n{d.logs()[-2000:]}")
        time.sleep(4)
        root("put", "/a/tok/x", "drift-after-restart-and-expiry")
        wait_for(lambda: root.get("/a/tok/x") == b"1", 5, f"drift repaired later on\n{d.logs()[-2000:]}")
        assert d.alive
        assert d.stop() == 0
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------------
# TLS with client certificates


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(base / "ca", "ca")
    server_cert, server_key = ca.issue("server", server=True, cn="localhost")
    client_cert, client_key = ca.issue("client", server=False, cn="etcdsync")
    other = make_ca(base / "other", "other")
    stranger_cert, stranger_key = other.issue("stranger", server=False)
    c = EtcdCluster(1, base_dir=str(base / "etcd"))
    m = c.members[0]
    url = f"https://127.0.0.1:{m.client_port}"
    m.extra_args += ["--listen-client-urls", url, "--advertise-client-urls", url,
                     "--cert-file", str(server_cert), "--key-file", str(server_key),
                     "--client-cert-auth", "--trusted-ca-file", str(ca.cert)]
    ctl = Ctl([url], tls=(str(ca.cert), str(client_cert), str(client_key)))
    try:
        m.start(wait=False)
        wait_for(lambda: ctl("endpoint", "health") is not None, 20, f"TLS etcd healthy\n{m.tail_log()}", step=0.2)
        yield {"url": url, "localhost": f"https://localhost:{m.client_port}", "ctl": ctl, "ca": str(ca.cert),
               "cert": str(client_cert), "key": str(client_key), "other_ca": str(other.cert),
               "stranger": (str(stranger_cert), str(stranger_key))}
    finally:
        c.stop()


def test_tls_with_client_certificates_diff_apply_run(tls: dict[str, object], tmp_path: Path, daemons: Daemons) -> None:
    ctl: Ctl = tls["ctl"]  # type: ignore[assignment]
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "app.yaml").write_text(configset("app", "/tls/app/", {"x": "1"}))
    certs = ["--cacert", str(tls["ca"]), "--cert", str(tls["cert"]), "--key", str(tls["key"])]
    for endpoint in (str(tls["url"]), str(tls["localhost"])):
        assert cli("diff", "-f", str(mdir), "--applyset", "tls", *certs, endpoints=[endpoint]).code in (0, 1)
    run = cli("apply", "-f", str(mdir), "--applyset", "tls", *certs, endpoints=[str(tls["url"])])
    assert run.code == 0, run.err
    assert ctl.get("/tls/app/x") == b"1"
    assert cli("diff", "-f", str(mdir), "--applyset", "tls", *certs, endpoints=[str(tls["localhost"])]).code == 0
    # the same through the environment, for the daemon
    env = {"ETCDSYNC_CACERT": str(tls["ca"]), "ETCDSYNC_CERT": str(tls["cert"]), "ETCDSYNC_KEY": str(tls["key"])}
    d = daemons.start(tmp_path, [mdir], endpoints=[str(tls["url"])], reserved="/.etcdsync/", applyset="tls", env=env)
    d.wait_ready()
    ctl("put", "/tls/app/x", "drift")
    wait_for(lambda: ctl.get("/tls/app/x") == b"1", 5, f"drift repaired over TLS\n{d.logs()[-1500:]}")
    assert d.stop() == 0


def tls_refusals(tls: dict[str, object], tmp_path: Path) -> list[tuple[str, object]]:
    path = tmp_path / "app.yaml"
    path.write_text(configset("app", "/tls/bad/", {"x": "1"}))
    base = ["apply", "-f", str(path), "--applyset", "tlsbad", "--timeout", "3"]
    stranger = tls["stranger"]
    cases = {
        "unknown CA": ["--cacert", str(tls["other_ca"]), "--cert", str(tls["cert"]), "--key", str(tls["key"])],
        "no client certificate": ["--cacert", str(tls["ca"])],
        "client certificate of another CA": ["--cacert", str(tls["ca"]), "--cert", stranger[0], "--key", stranger[1]],  # type: ignore[index]
    }
    out = [(name, cli(*base, *extra, endpoints=[str(tls["url"])], timeout=30)) for name, extra in cases.items()]
    out.append(("plain http to the TLS port",
                cli(*base, endpoints=[str(tls["url"]).replace("https://", "http://")], timeout=30)))
    return out


def test_tls_refusals_are_clear_errors_in_bounded_time(tls: dict[str, object], tmp_path: Path) -> None:
    ctl: Ctl = tls["ctl"]  # type: ignore[assignment]
    before = ctl.revision()
    for name, run in tls_refusals(tls, tmp_path):
        assert run.code == 2, (name, run.err)  # type: ignore[attr-defined]
        last = run.err.strip().splitlines()[-1]  # type: ignore[attr-defined]
        assert last.startswith("error: etcd "), (name, last)
        if name != "plain http to the TLS port":
            assert any(w in last.lower() for w in ("tls", "certificate", "ssl", "handshake")), (name, last)
        assert "Traceback" not in run.err and run.seconds < 8, (name, run.seconds)  # type: ignore[attr-defined]
    assert ctl.revision() == before


def test_tls_refusals_are_one_stderr_line(tls: dict[str, object], tmp_path: Path) -> None:
    for _name, run in tls_refusals(tls, tmp_path):
        one_line(run)


# ------------------------------------------------------------------------------------------------
# secrets never leak


class Canaries:
    """Random secret values and the forms in which a leak could show them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def new(self, name: str) -> str:
        value = f"canary-{name}-{secrets.token_hex(8)}"
        self.values[name] = value
        return value

    def check(self, text: str, where: str) -> None:
        for name, value in self.values.items():
            for form in (value, value.split("-")[-1], base64.b64encode(value.encode()).decode(),
                         json.dumps(value)[1:-1]):
                assert form not in text, f"secret {name} leaked in {where}: ...{text[max(0, text.find(form) - 200):text.find(form) + 100]}..."


SECRET_APP = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: app}}
spec:
  prefix: {ns}app/
  data:
    api/token: {{fromEnv: CANARY_TOKEN, secret: true}}
    db/password: {{fromFile: pw.txt, secret: true}}
    inline: {{value: "{inline}", secret: true}}
    json: {{value: {{user: u, pass: "{injson}"}}, secret: true}}
    warned: {{fromEnv: CANARY_TOKEN, secret: true, policy: warn}}
    plain: visible
{extra}"""


def test_secrets_never_appear_in_cli_output(env: Env) -> None:
    can = Canaries()
    token, pw = can.new("token"), can.new("file")
    mdir = env.tmp / "m"
    mdir.mkdir()
    (mdir / "pw.txt").write_text(pw)

    def write(extra: str = "") -> None:
        (mdir / "app.yaml").write_text(SECRET_APP.format(ns=env.ns, inline=can.values["inline"],
                                                         injson=can.values["injson"], extra=extra))

    can.new("inline"), can.new("injson")
    write()
    outputs: list[tuple[str, str]] = []

    def run(*args: str, token_value: str | None = None, expect: int | None = None) -> object:
        argv = list(args)
        if argv[0] in ("diff", "apply"):
            argv[1:1] = ["-f", str(mdir), "--applyset", "sec", "--reserved-prefix", env.reserved]
        r = cli(*argv, endpoints=env.endpoints, env={"CANARY_TOKEN": token_value or token}, cwd=env.tmp)
        outputs.append((" ".join(args), r.out + r.err))
        if expect is not None:
            assert r.code == expect, (args, r.code, r.out[-1500:], r.err[-1500:])
        return r

    run("diff", expect=1)
    run("diff", "-o", "json", expect=1)
    run("diff", "-v", "--debug", expect=1)
    run("apply", "--debug", expect=0)
    run("diff", "-v", "-o", "json", expect=0)
    # rotation: the new value is a canary too, and so is the old one
    rotated = can.new("rotated")
    (mdir / "pw.txt").write_text(can.new("file2"))
    run("diff", token_value=rotated, expect=1)
    run("apply", "-o", "json", "--debug", token_value=rotated, expect=0)
    token = rotated
    # other writers put values on secret keys: enforce shows an update, warn a drift, both hashed
    ctl = Ctl(env.endpoints)
    ctl("put", f"{env.ns}app/api/token", can.new("drift"))
    ctl("put", f"{env.ns}app/warned", can.new("drift2"))
    r = run("diff", "-v", expect=1)
    assert "sha256:" in r.out  # type: ignore[attr-defined]
    run("diff", "-o", "json", expect=1)
    run("apply", expect=0)
    # a guard refusal prints the plan, secret updates included
    write()
    (mdir / "app.yaml").write_text((mdir / "app.yaml").read_text().replace("    plain: visible\n", ""))
    (mdir / "pw.txt").write_text(can.new("file3"))
    r = run("apply", "--max-deletes", "0", expect=3)
    assert "refusing" in r.err and "refus" not in r.out  # type: ignore[attr-defined]
    run("apply", "--max-deletes", "0", "-o", "json", expect=3)
    write()
    # an ownership conflict on a secret key, text and JSON
    other = env.tmp / "other"
    other.mkdir()
    (other / "o.yaml").write_text(
        "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: o}\nspec:\n"
        f"  prefix: {env.ns}app/\n  data:\n    api/token: {{value: \"{can.new('other')}\", secret: true}}\n")
    for fmt in ("text", "json"):
        r = cli("apply", "-f", str(other), "--applyset", "other", "--reserved-prefix", env.reserved, "-o", fmt,
                "--debug", endpoints=env.endpoints)
        outputs.append((f"ownership conflict ({fmt})", r.out + r.err))
        assert r.code == 3, r.err
    # errors: a manifest error next to a secret, a connection error with --debug
    (other / "o.yaml").write_text(
        "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: o}\nspec:\n"
        f"  prefix: {env.ns}app/\n  data:\n    s: {{value: \"{can.new('bad')}\", secret: true, policy: bogus}}\n")
    r = cli("apply", "-f", str(other), "--applyset", "other", "--debug", endpoints=env.endpoints)
    outputs.append(("manifest error", r.out + r.err))
    assert r.code == 2
    r = cli("apply", "-f", str(mdir), "--applyset", "sec", "--debug", "--timeout", "1",
            endpoints=["http://127.0.0.1:1"], env={"CANARY_TOKEN": token})
    outputs.append(("connection error --debug", r.out + r.err))
    assert r.code == 2
    for where, text in outputs:
        can.check(text, where)
    # the secrets did reach etcd: the test would be vacuous otherwise
    assert ctl.get(f"{env.ns}app/api/token") == rotated.encode()


def test_removed_secret_key_is_not_shown_in_clear(env: Env) -> None:
    can = Canaries()
    value = can.new("removed")
    path = env.write("m/app.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: app}}
        spec:
          prefix: {{ns}}app/
          data:
            gone: {{value: "{value}", secret: true}}
            plain: visible
        """)
    common = ["-f", str(path), "--applyset", "sec", "--reserved-prefix", env.reserved]
    assert cli("apply", *common, endpoints=env.endpoints).code == 0
    path.write_text(path.read_text().replace(f'    gone: {{value: "{value}", secret: true}}\n', ""))
    texts = []
    for args in (["diff"], ["diff", "-o", "json"], ["apply", "--max-deletes", "0"], ["apply", "-o", "json"]):
        r = cli(args[0], *common, *args[1:], endpoints=env.endpoints)
        texts.append((" ".join(args), r.out + r.err))
    assert Ctl(env.endpoints).get(f"{env.ns}app/gone") is None
    for where, text in texts:
        can.check(text, where)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_daemon_logs_readyz_or_metrics(log_format: str, env: Env, daemons: Daemons) -> None:
    can = Canaries()
    token = can.new("token")
    mdir = env.tmp / "m"
    mdir.mkdir()
    (mdir / "pw.txt").write_text(can.new("file"))
    app = SECRET_APP.format(ns=env.ns, inline=can.new("inline"), injson=can.new("injson"), extra="")
    (mdir / "app.yaml").write_text(app)
    ctl = Ctl(env.endpoints)
    # another apply set owns a key that this tree will declare later, as a secret
    owner = env.tmp / "owner"
    owner.mkdir()
    (owner / "o.yaml").write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: o}\nspec:\n"
                                  f"  prefix: {env.ns}app/\n  data:\n    taken: {{value: \"{can.new('owner')}\", secret: true}}\n")
    assert cli("apply", "-f", str(owner), "--applyset", "owner", "--reserved-prefix", env.reserved,
               endpoints=env.endpoints).code == 0
    d = daemons.start(env.tmp, [mdir], "--log-format", log_format, "--debug", endpoints=env.endpoints,
                      reserved=env.reserved, applyset="sec", env={"CANARY_TOKEN": token})
    d.wait_ready()
    # drift on an enforced secret (repaired) and on a warned one (reported)
    ctl("put", f"{env.ns}app/api/token", can.new("drift"))
    wait_for(lambda: ctl.get(f"{env.ns}app/api/token") == token.encode(), 5, "secret drift repaired")
    ctl("put", f"{env.ns}app/warned", can.new("drift2"))
    ctl("del", f"{env.ns}app/inline")
    wait_for(lambda: ctl.get(f"{env.ns}app/inline") is not None, 5, "deleted secret restored")
    # a rotated file secret is applied
    rotated = can.new("file2")
    (mdir / "pw.txt").write_text(rotated)
    (mdir / "app.yaml").write_text(app + "    touched: yes\n")
    wait_for(lambda: ctl.get(f"{env.ns}app/db/password") == rotated.encode(), 5, f"rotation\n{d.logs()[-1500:]}")
    # an ownership conflict on a secret key: refused, reported
    (mdir / "app.yaml").write_text(app + f"    taken: {{value: \"{can.new('mine')}\", secret: true}}\n")
    wait_for(lambda: "owned by" in str(d.ready().get("reconcile")), 5, f"conflict reported\n{d.logs()[-1500:]}")
    texts = [("readyz", d.get("/readyz")[1]), ("metrics", d.get("/metrics")[1]), ("healthz", d.get("/healthz")[1])]
    assert d.stop(signal.SIGTERM) == 0
    logs = d.logs()
    if log_format == "json":
        for line in logs.splitlines():
            if line.strip():
                json.loads(line)
    assert "drift repaired" in logs and "owned by" in logs, logs[-2000:]
    for where, text in [*texts, (f"daemon log ({log_format})", logs)]:
        can.check(text, where)


# ------------------------------------------------------------------------------------------------
# hostile ownership records: a record etcdsync cannot read exactly is exit 2, nothing written

OTHER = ["p", "r", "e", "c", "i", "o", "u", "s"]


@pytest.mark.parametrize("key,value", [
    ("sets/t/inventory/evil", b'{"v":1,"prefixes":{"{ns}other/":"precious"}}'),
    ("sets/t/inventory/evil", b'{"v":true,"prefixes":{"{ns}other/":["p","r"]}}'),
    ("sets/t/inventory/evil", b'{"v":1,"prefixes":{"{ns}app/":["../other/p"]}}'),
    ("sets/t/inventory/evil", b'{"v":1,"prefixes":{"{ns}other/":["p"]},"owner":"t"}'),
    ("ownership", b"\x1b]0;pwned\x07"),
])
def test_a_bad_ownership_record_is_exit_2_and_deletes_nothing(env: Env, key: str, value: bytes) -> None:
    f = env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"x": "1"}))
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    for ch in OTHER:
        env.put(f"{env.ns}other/{ch}", "precious")
    # the manifest no longer declares anything in /other/ (and never did)
    env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"y": "2"}))
    env.put(env.reserved + key, value.replace(b"{ns}", env.ns.encode()))
    before, rev = env.dump(), env.revision()
    for cmd in ("diff", "apply"):
        r = env.cli(cmd, "-f", str(f), "--applyset", "t")
        assert r.code == 2, (cmd, r)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {env.reserved}{key}: "), r.err
        assert "\x1b" not in r.err and "\x07" not in r.err
    assert env.untouched_since(rev) and env.dump() == before, "nothing written or deleted"


# ------------------------------------------------------------------------------------------------
# a manifest cannot read outside its tree, nor etcdsync's own credentials

PW = {"ETCDSYNC_USER": "sync", "ETCDSYNC_PASSWORD": "pw-canary-0451"}


@pytest.mark.parametrize("source", ["/proc/self/environ", "/etc/passwd", "../../../../../../../../etc/passwd",
                                    "../outside/secret.txt", "link"])
def test_from_file_outside_the_tree_is_exit_2_and_prints_nothing_of_it(env: Env, source: str) -> None:
    (env.tmp / "outside").mkdir()
    (env.tmp / "outside" / "secret.txt").write_text("outside-canary")
    f = env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"a": "1"}) + f"    harmless: {{fromFile: {source}}}\n")
    (env.tmp / "m" / "link").symlink_to(env.tmp / "outside" / "secret.txt")
    rev = env.revision()
    for cmd in ("validate", "diff", "apply"):
        # the subprocess, so /proc/self/environ would be the CLI's own environment with the password
        r = env.run(cmd, "-f", str(env.tmp / "m"), *(("--applyset", "t") if cmd != "validate" else ()), env=PW)
        assert r.code == 2, (cmd, r)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {f}:8:"), r.err
        for leak in ("pw-canary", "root:", "outside-canary"):
            assert leak not in r.out + r.err, (cmd, leak)
    assert env.untouched_since(rev)


def test_file_root_flag_and_env_allow_a_directory_outside_the_tree(env: Env) -> None:
    certs = env.tmp / "certs"
    certs.mkdir()
    (certs / "tls.pem").write_text("CERT")
    f = env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"a": "1"}) + "    tls: {fromFile: ../certs/tls.pem}\n")
    m = str(env.tmp / "m")
    r = env.cli("diff", "-f", m, "--applyset", "t")
    assert r.code == 2 and "outside the manifest root" in r.err and f"{f}:8:" in r.err, r
    r = env.cli("diff", "-f", m, "--applyset", "t", "--file-root", str(certs))
    assert r.code == 1 and "+ CERT" in r.out, r
    r = env.cli("apply", "-f", m, "--applyset", "t", env={"ETCDSYNC_FILE_ROOTS": f"/nonexistent-x:{certs}"})
    assert r.code == 2 and r.err.strip() == "error: --file-root '/nonexistent-x': not a directory", r
    r = env.cli("apply", "-f", m, "--applyset", "t", env={"ETCDSYNC_FILE_ROOTS": f"{env.tmp / 'm'}:{certs}"})
    assert r.code == 0, r
    assert env.get(f"{env.ns}app/tls") == b"CERT"


def test_from_env_never_reads_credentials_and_env_allow_restricts(env: Env) -> None:
    f = env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"a": "1"}) + "    pw: {fromEnv: ETCDSYNC_PASSWORD}\n")
    rev = env.revision()
    r = env.run("diff", "-f", str(f), "--applyset", "t", env=PW)
    assert r.code == 2 and "etcdsync's own settings" in r.err and f"{f}:8:" in r.err, r
    assert "pw-canary" not in r.out + r.err
    f.write_text(configset("app", f"{env.ns}app/", {"a": "1"}) + "    home: {fromEnv: HOME}\n    tok: {fromEnv: APP_TOKEN}\n")
    extra = {"APP_TOKEN": "tok", "HOME": "/home/x"}
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--env-allow", "APP_*", env=extra)
    assert r.code == 2 and "HOME is not allowed by --env-allow (APP_*)" in r.err, r
    r = env.cli("apply", "-f", str(f), "--applyset", "t", env={**extra, "ETCDSYNC_ENV_ALLOW": "APP_* DB_*"})
    assert r.code == 2 and "HOME is not allowed by --env-allow (APP_* DB_*)" in r.err, r
    assert env.untouched_since(rev)
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--env-allow", "APP_*", "--env-allow", "HOME", env=extra)
    assert r.code == 0, r


def test_daemon_takes_the_same_file_root_and_env_allow(env: Env, daemons: Daemons) -> None:
    certs = env.tmp / "certs"
    certs.mkdir()
    (certs / "tls.pem").write_text("CERT")
    env.write("m/app.yaml", configset("app", f"{env.ns}app/", {"a": "1"})
              + "    tls: {fromFile: ../certs/tls.pem}\n    tok: {fromEnv: APP_TOKEN}\n")
    extra = {"APP_TOKEN": "tok"}
    bad = daemons.start(env.tmp, [env.tmp / "m"], endpoints=env.endpoints, reserved=env.reserved, env=extra, name="bad")
    assert bad.proc.wait(30) == 2
    assert "outside the manifest root" in bad.logs()
    denied = daemons.start(env.tmp, [env.tmp / "m"], "--file-root", str(certs), "--env-allow", "DB_*",
                           endpoints=env.endpoints, reserved=env.reserved, env=extra, name="denied")
    assert denied.proc.wait(30) == 2
    assert "APP_TOKEN is not allowed by --env-allow" in denied.logs()
    d = daemons.start(env.tmp, [env.tmp / "m"], "--file-root", str(certs), "--env-allow", "APP_*",
                      endpoints=env.endpoints, reserved=env.reserved, env=extra, name="good")
    d.wait_ready()
    wait_for(lambda: env.get(f"{env.ns}app/tls") == b"CERT" and env.get(f"{env.ns}app/tok") == b"tok", 10, "applied")
    assert d.stop() == 0


# ------------------------------------------------------------------------------------------------
# keys another client holds under a lease are a conflict, never taken silently

def test_leased_key_of_another_client_is_a_conflict_unless_take_ownership(env: Env) -> None:
    lease = env.etcdctl("lease", "grant", "300").split()[1]  # "lease 694d... granted with TTL(300s)"
    shown = f"{int(lease, 16):016x}"  # etcdsync prints 16 hex digits (07f5...), whatever etcdctl printed
    env.etcdctl("put", f"{env.ns}lz/leader", "node-b", f"--lease={lease}")
    f = env.write("m/app.yaml", configset("lz", f"{env.ns}lz/", {"leader": "node-a", "other": "1"}))
    rev = env.revision()
    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 3, r  # a conflict, like a key owned by another apply set
    assert f"x {env.ns}lz/leader  (held by lease {shown} of another client)" in r.out, r.out
    assert "1 held by another client's lease" in r.out
    doc = json.loads(env.cli("diff", "-f", str(f), "--applyset", "t", "-o", "json").out)
    (leader,) = [c for c in doc["changes"] if c["key"].endswith("/leader")]
    assert leader["action"] == "conflict" and leader["lease"] == shown
    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 3, r
    assert r.err.strip().splitlines()[-1] == (f"error: {env.ns}lz/leader: held by lease {shown} of another client; "
                                              "pass --take-ownership to take it (it is then written without the lease)")
    assert env.untouched_since(rev)
    # same value: still a conflict (adopting would leave it to expire under the other client's lease)
    env.etcdctl("put", f"{env.ns}lz/leader", "node-a", f"--lease={lease}")
    rev = env.revision()
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 3
    assert env.untouched_since(rev)
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--take-ownership")
    assert r.code == 0, r
    kv = json.loads(env.etcdctl("get", f"{env.ns}lz/leader", "-w", "json"))["kvs"][0]
    assert base64.b64decode(kv["value"]) == b"node-a" and not kv.get("lease"), "written without the lease"
    assert env.cli("diff", "-f", str(f), "--applyset", "t").code == 0


# ------------------------------------------------------------------------------------------------
# nothing printed can drive a terminal or display as something else

OSC = "\x1b]0;TITLE\x07"
RAW = set("\x1b\x07\x9b\u202e\u200b")


def test_escape_sequences_in_values_never_reach_the_terminal(env: Env) -> None:
    f = env.write("m/app.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: app}
        spec:
          prefix: {ns}app/
          data:
            title: "\\e]0;TITLE\\a"
            rlo: "abc\\u202Egnp.exe"
            multi: "line1\\n\\e[2Jline2\\n"
            drifted: plain
        """)
    env.put(f"{env.ns}app/drifted", f"x{OSC}\u200by")
    for extra in ((), ("--no-color",), ("-v",), ("-o", "json")):
        r = env.run("diff", "-f", str(f), "--applyset", "t", *extra)
        assert r.code == 1, r
        assert not RAW & set(r.out + r.err), (extra, r.out)
    r = env.run("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0 and not RAW & set(r.out + r.err), r
    assert "\\x1b]0;TITLE\\x07" in r.out and "abc\\u202egnp.exe" in r.out
    assert env.get(f"{env.ns}app/title") == OSC.encode(), "the value itself is stored exactly"


def test_log_lines_and_errors_escape_control_characters() -> None:
    import logging

    from etcdsync.daemon.logfmt import TextFormatter

    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "%s: drift repaired", (f"/k{OSC}\nFAKE line",), None)
    line = TextFormatter("%(message)s").format(rec)
    assert line == "/k\\x1b]0;TITLE\\x07\\nFAKE line: drift repaired"


# ------------------------------------------------------------------------------------------------
# export never prints a value the inventory marks secret

def test_export_writes_a_placeholder_for_inventory_secrets(env: Env) -> None:
    can = Canaries()
    pw, tok = can.new("pw"), can.new("tok")
    f = env.write("m/app.yaml", f"""\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {{name: app}}
        spec:
          prefix: {{ns}}exp/
          data:
            db/password: {{fromEnv: CANARY_PW, secret: true}}
            api-token: {{value: "{tok}", secret: true}}
            plain: visible
        """)
    assert env.cli("apply", "-f", str(f), "--applyset", "t", env={"CANARY_PW": pw}).code == 0
    env.put(f"{env.ns}exp/bidi", "a\u202eb")  # not ours, not secret: exported, escaped
    # --name: the applied document's, so that its keys' ownership records (document included) stay as they are
    r = env.run("export", "--prefix", f"{env.ns}exp/", "--name", "app", "--reserved-prefix", env.reserved)
    assert r.code == 0, r
    can.check(r.out + r.err, "export")
    assert "    db/password: {fromEnv: DB_PASSWORD, secret: true}" in r.out, r.out
    assert "    api-token: {fromEnv: API_TOKEN, secret: true}" in r.out
    assert "    plain: visible" in r.out and '    bidi: "a\\u202eb"' in r.out
    assert f"warning: {env.ns}exp/db/password: marked secret in the inventory (apply set 't'): exported as " \
           "{fromEnv: DB_PASSWORD, secret: true}, not its value; set DB_PASSWORD when applying" in r.err, r.err
    # the export loads back and, with the variables set, is in sync
    g = env.write("m2/exp.yaml", r.out)
    r = env.cli("diff", "-f", str(g), "--applyset", "t", env={"DB_PASSWORD": pw, "API_TOKEN": tok})
    assert r.code == 1 and "bidi" in r.out and "db/password" not in r.out, r.out  # only the adopt of bidi


def test_export_placeholder_names_are_unique_valid_and_never_etcdsyncs_own() -> None:
    from etcdsync.core.export import export_prefix

    items = [(f"/p/{k}", b"v", 0) for k in ("a-b", "a_b", "1x", "etcdsync/password", "ü")]
    text, warnings = export_prefix("/p/", items, secret={f"/p/{k}": "s" for k in ("a-b", "a_b", "1x", "etcdsync/password", "ü")})
    lines = [ln.strip() for ln in text.splitlines() if "fromEnv" in ln]
    names = [ln.split("fromEnv: ")[1].split(",")[0] for ln in lines]
    assert len(set(names)) == 5, names
    assert all(n[0].isalpha() and n.replace("_", "").isalnum() and n.isascii() for n in names), names
    assert not any(n.startswith(("ETCDSYNC_", "ETCDCTL_")) for n in names), names
    assert len(warnings) == 5 and b"v" not in text.encode().split(b"data:")[1].replace(b"fromEnv", b"").replace(b"secret", b"")


# ------------------------------------------------------------------------------------------------
# the README's least-privilege role, created exactly as documented


def readme_role_commands() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index("<!-- security-role"):]
    block = after[after.index("```sh\n") + len("```sh\n"):]
    return block[:block.index("```")]


PAYMENTS = """\
apiVersion: etcdsync/v1
kind: ApplySet
metadata: {name: payments}
---
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: payments}
spec:
  prefix: /config/payments/
  data:
    db/url: postgres://db/pay
    retry: 5
    token: {fromEnv: PAY_TOKEN, secret: true}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: payments}
spec:
  prefix: /services/
  instances:
    - {id: p1, host: 10.0.0.1, port: 3000}
"""


def test_readme_least_privilege_role(tmp_path: Path, daemons: Daemons) -> None:
    import os
    import subprocess

    from etcdsync.local.etcdbin import find_binary

    c = EtcdCluster(1, base_dir=str(tmp_path / "etcd"))
    c.start()
    try:
        root = Ctl(c.endpoints, user="root:rootpw")
        Ctl(c.endpoints)("user", "add", "root:rootpw", "--interactive=false")
        Ctl(c.endpoints)("auth", "enable")
        commands = readme_role_commands()
        assert "etcdctl role add etcdsync-payments" in commands
        # an administrator runs the README's commands on the auth-enabled cluster
        bindir = str(Path(find_binary("etcdctl")).parent)
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "ETCDCTL_API": "3",
                                "ETCDCTL_ENDPOINTS": ",".join(c.endpoints), "ETCDCTL_USER": "root:rootpw",
                                "ETCDSYNC_PASSWORD": "paypw"})
        assert p.returncode == 0, p.stderr
        user = {"ETCDSYNC_USER": "etcdsync-payments", "ETCDSYNC_PASSWORD": "paypw", "PAY_TOKEN": "t0k"}
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "payments.yaml").write_text(PAYMENTS)
        args = ["-f", str(mdir), "--applyset", "payments"]
        root("put", "/config/payments/retry", "5")  # adopting an existing key writes the ownership fence
        assert cli("diff", *args, endpoints=c.endpoints, env=user).code == 1
        r = cli("apply", *args, endpoints=c.endpoints, env=user)
        assert r.code == 0 and "1 adopted" in r.out, r.err
        assert root.values("/config/payments/") == {"/config/payments/db/url": b"postgres://db/pay",
                                                    "/config/payments/retry": b"5", "/config/payments/token": b"t0k"}
        assert root.get("/services/payments/p1") is not None
        assert cli("diff", *args, endpoints=c.endpoints, env=user).code == 0
        # the daemon, elected, repairs drift as that user
        d = daemons.start(tmp_path, [mdir], "--leader-elect", endpoints=c.endpoints, reserved="/.etcdsync/",
                          applyset="payments", env=user)
        d.wait_ready()
        root("put", "/config/payments/db/url", "drift")
        wait_for(lambda: root.get("/config/payments/db/url") == b"postgres://db/pay", 10,
                 f"drift repaired by the daemon\n{d.logs()[-1500:]}")
        assert d.stop() == 0
        assert "permission denied" not in d.logs().lower()
        # pruning works within the role
        (mdir / "payments.yaml").write_text(PAYMENTS.replace("    retry: 5\n", ""))
        r = cli("apply", *args, endpoints=c.endpoints, env=user)
        assert r.code == 0 and "1 deleted" in r.out, r.err
        # a manifest reaching outside the granted prefixes is refused by etcd: exit 2, nothing written
        (mdir / "other.yaml").write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: other}\n"
                                         "spec:\n  prefix: /config/other/\n  data: {x: 1}\n")
        before = root.revision()
        r = cli("apply", *args, endpoints=c.endpoints, env=user)
        one_line(r, "permission denied")
        assert root.revision() == before and root.values("/config/other/") == {}
        (mdir / "other.yaml").unlink()
        # taking another apply set's key needs write access to that set's records: refused too
        shared = tmp_path / "shared.yaml"
        shared.write_text("apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: s}\n"
                          "spec:\n  prefix: /config/payments/\n  data: {shared: from-other}\n")
        assert cli("apply", "-f", str(shared), "--applyset", "other", endpoints=c.endpoints,
                   env={"ETCDSYNC_USER": "root", "ETCDSYNC_PASSWORD": "rootpw"}).code == 0
        (mdir / "payments.yaml").write_text(PAYMENTS.replace("    retry: 5\n", "    shared: mine\n"))
        assert cli("apply", *args, endpoints=c.endpoints, env=user).code == 3
        before = root.revision()
        r = cli("apply", *args, "--take-ownership", endpoints=c.endpoints, env=user)
        one_line(r, "permission denied")
        assert root.revision() == before and root.get("/config/payments/shared") == b"from-other"
        # a plan of several transactions marks itself under /.etcdsync/applying/payments/: the role allows it
        many = "".join(f"    big/k{i:03d}: x\n" for i in range(200))
        (mdir / "payments.yaml").write_text(PAYMENTS.replace("    retry: 5\n", "    retry: 5\n" + many))
        r = cli("apply", *args, endpoints=c.endpoints, env=user)
        assert r.code == 0 and "in 2 transactions" in r.out, (r.out[-300:], r.err)
        assert len(root.values("/config/payments/big/")) == 200 and root.values("/.etcdsync/applying/") == {}
    finally:
        c.stop()
