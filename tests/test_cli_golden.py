"""Golden files of the CLI's own output: what a user sees from `etcdsync ...`, byte for byte, with its
exit code — not only the renderer (test_render.py), but every line the commands print around it, on
stdout and stderr, in text and `-o json`.

Each test runs commands through the public entry only (`etcdsync.cli.main` in this process via
`env.cli`, or `python -m etcdsync` as a subprocess via `env.run`) against a fresh namespace of the
session's real etcd, with manifests written to tmp_path, and compares a transcript with
tests/golden/cli/<name>.txt (`pytest --update-golden` rewrites them). A transcript holds, per command:

    $ etcdsync ARGS...          (the arguments the test passed; see below)
    exit N
    --- stdout
    ...
    --- stderr
    ...

diff, apply and the operator commands always run with the test's own reserved prefix; the transcript
does not show that flag. Only what is genuinely variable from run to run is replaced, each by a
placeholder (`normalise` below); everything else is byte-exact:

    the test's key namespace /t<hex>/   -> {namespace}  (as long, so that tables stay aligned)
    its tmp_path                        -> {tmp}
    inventory chunk ids (random)        -> {chunk1........}, ... (as long)
    the etcd endpoint                   -> {endpoint}   (an unused port: {closed})
    revisions written in this test      -> {rev1}, {rev2}, ... numbered in order of first appearance,
                                           so that equal revisions stay equal in the golden file
    revisions of a read (the header     -> {read-rev}   (other clients move it, so it is not pinned)
      revision of get/ls/inventory/applysets, and the one an apply that wrote nothing reports)
    lease ids granted by the test       -> {lease1}, ...
"""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, Result
from history import Declared

TOKEN = "s3cr3t-GOLDEN-token"          # a secret: must never appear in any transcript
TOKEN_ENV = {"PAY_API_TOKEN": TOKEN}

SHOP = """\
apiVersion: etcdsync/v1
kind: ApplySet
metadata: {name: shop}
---
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: payments
spec:
  prefix: {ns}config/payments/
  data:
    db/url: postgres://db:5432/pay
    retry/max: 5
    region: no
    version: 1.10
    features: {beta: true, limit: 3}
    banner: {value: hello, policy: create-only}
    mode: {value: fast, policy: warn}
    api/token: {fromEnv: PAY_API_TOKEN, secret: true}
    tls/cert: {fromFile: cert.pem}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: payments}
spec:
  prefix: {ns}services/
  instances:
    - {id: payments-1, host: 10.0.0.11, port: 3000, metadata: {zone: a}}
    - {id: payments-2, host: 10.0.0.12, port: 3000}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: gateway}
spec:
  prefix: {ns}services/
  ttl: 10s
  instances:
    - {id: gw-1, host: 10.0.0.21, port: 8080}
"""
CERT = "-----BEGIN CERTIFICATE-----\nMIIBgolden\n-----END CERTIFICATE-----\n"


def shop_keys(ns: str, **changes: str | None) -> dict[str, Any]:
    """What SHOP declares (static keys), with `changes` applied (None: the key is no longer declared)."""
    keys: dict[str, Any] = {
        f"{ns}config/payments/db/url": "postgres://db:5432/pay",
        f"{ns}config/payments/retry/max": "5",
        f"{ns}config/payments/region": "no",
        f"{ns}config/payments/version": "1.10",
        f"{ns}config/payments/features": '{"beta":true,"limit":3}',
        f"{ns}config/payments/banner": Declared(b"hello", "create-only"),
        f"{ns}config/payments/mode": Declared(b"fast", "warn"),
        f"{ns}config/payments/api/token": TOKEN,
        f"{ns}config/payments/tls/cert": CERT,
        f"{ns}services/payments/payments-1": '{"host":"10.0.0.11","port":3000,"metadata":{"zone":"a"}}',
        f"{ns}services/payments/payments-2": '{"host":"10.0.0.12","port":3000}',
    }
    for rel, value in changes.items():
        key = f"{ns}config/payments/{rel.replace('__', '/')}"
        if value is None:
            keys.pop(key)
        else:
            keys[key] = value
    return keys


NS = "{namespace}"   # as long as Env's "/t<8 hex>/"

# commands that take --reserved-prefix (env.cli adds it to diff and apply itself)
RESERVED_OPS = {"get", "ls", "put", "del", "inventory", "applysets", "teardown"}


class Transcript:
    """Runs commands, checks each exit code, and collects the normalised output for one golden file."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.parts: list[str] = []
        self.revs: dict[str, str] = {}
        self.leases: dict[str, str] = {}
        self.chunks: dict[str, str] = {}
        self.closed: str | None = None       # host:port of an endpoint nothing listens on

    def lease(self, lease_id: int) -> None:
        self.leases[f"{lease_id:016x}"] = f"{{lease{len(self.leases) + 1}}}"

    def _num(self, n: str) -> str:
        if n not in self.revs:
            self.revs[n] = f"{{rev{len(self.revs) + 1}}}"
        return self.revs[n]

    def _rev(self, m: re.Match[str]) -> str:
        return m.group("pre") + self._num(m.group("n"))

    def _chunk(self, m: re.Match[str]) -> str:
        if m.group() not in self.chunks:
            self.chunks[m.group()] = f"{{chunk{len(self.chunks) + 1}".ljust(15, ".") + "}"
        return self.chunks[m.group()]

    def normalise(self, text: str) -> str:
        env = self.env
        for path in {str(env.tmp.resolve()), str(env.tmp)}:
            text = text.replace(path, "{tmp}")
        text = text.replace(env.ns, NS)
        if self.closed:
            text = text.replace(self.closed, "{closed}")
        for ep in env.endpoints:
            text = text.replace(ep, "{endpoint}")
            text = text.replace(ep.removeprefix("http://"), "{endpoint}")
        text = re.sub(r"(?<=/inventory/)[0-9a-f]{16}\b", self._chunk, text)
        text = re.sub(r"(?<=/history/)([A-Za-z0-9._-]+/)[0-9]{16}\b", r"\1{history-id...}", text)  # a revision
        for raw, placeholder in self.leases.items():
            text = re.sub(rf"\b{raw}\b", placeholder, text)
        # the header revision of a read: ls's and applysets' last line, the top level of the JSON of
        # the operator commands, and the revision an apply that wrote nothing reports (its read's)
        text = re.sub(r"(?<=owned by an apply set \(revision )\d+", "{read-rev}", text)
        text = re.sub(r"(?<=^\(revision )\d+(?=; INVENTORY REV)", "{read-rev}", text, flags=re.M)
        text = re.sub(r'(?<=^  "revision": )\d+', "{read-rev}", text, flags=re.M)
        text = re.sub(r'(?<="revision": )\d+(?=,\n +"transactions": 0,)', "{read-rev}", text)
        # every other revision was written by this test's commands: numbered by value, in order
        text = re.sub(r'(?P<pre>"(?:revision|modRevision|createRevision|inventoryRevision)": |\brevision )(?P<n>\d+)',
                      self._rev, text)
        # applysets' INVENTORY REV column (padded, so that the table stays aligned)
        text = re.sub(r"(?<=^\$ etcdsync applysets)(?:\n(?!\$).*)*", self._table_revs, text, flags=re.M)
        return text

    def _table_revs(self, m: re.Match[str]) -> str:
        def cell(c: re.Match[str]) -> str:
            width = len(c.group("n")) + len(c.group("pad"))
            return c.group("pre") + self._num(c.group("n")).ljust(width)
        return re.sub(r"(?P<pre>^\S+ +\d+ +)(?P<n>\d+)(?P<pad> +)", cell, m.group(), flags=re.M)

    def run(self, *args: str, code: int, env: dict[str, str] | None = None, subprocess: bool = False) -> Result:
        argv = list(args)
        if argv[0] in RESERVED_OPS:
            argv += ["--reserved-prefix", self.env.reserved]
        r = (self.env.run if subprocess else self.env.cli)(*argv, env=env)
        assert TOKEN not in r.out + r.err, "a secret was printed"
        shown = shlex.join(args)
        self.parts.append(f"$ etcdsync {shown}\nexit {r.code}\n--- stdout\n{r.out}--- stderr\n{r.err}")
        assert r.code == code, (args, r)
        return r

    def text(self) -> str:
        return self.normalise("\n".join(self.parts))


@pytest.fixture
def t(env: Env) -> Transcript:
    return Transcript(env)


def write_shop(env: Env, text: str = SHOP) -> Path:
    env.write("m/cert.pem", CERT)
    return env.write("m/shop.yaml", text)


# -- diff ---------------------------------------------------------------------------------------------

def test_diff_of_a_fresh_tree(env: Env, history: Any, t: Transcript, golden: Any) -> None:
    m = str(write_shop(env).parent)
    t.run("diff", "-f", m, code=1, env=TOKEN_ENV)
    t.run("diff", "-f", m, "-o", "json", code=1, env=TOKEN_ENV)
    golden("cli/diff-fresh.txt", t.text())


def test_diff_and_apply_of_changes(env: Env, history: Any, t: Transcript, golden: Any) -> None:
    ns = env.ns
    m = str(write_shop(env).parent)
    history.declare(shop_keys(ns))
    t.run("apply", "-f", m, code=0, env=TOKEN_ENV)
    t.run("apply", "-f", m, code=0, env=TOKEN_ENV)                 # in sync
    t.run("diff", "-f", m, code=0, env=TOKEN_ENV)
    # drift, a warn-held drift, a key someone else wrote before it was declared, a removed key, a
    # changed value, a changed secret, a stranger under the prefix (never touched)
    env.put(f"{ns}config/payments/retry/max", "7")
    env.put(f"{ns}config/payments/mode", "slow")
    env.put(f"{ns}config/payments/legacy", "kept")
    env.put(f"{ns}config/payments/stranger", "not ours")
    write_shop(env, SHOP.replace("    region: no\n", "    legacy: kept\n")
               .replace("limit: 3", "limit: 4"))
    token = {"PAY_API_TOKEN": TOKEN + "-rotated"}
    t.run("diff", "-f", m, code=1, env=token)
    t.run("diff", "-f", m, "-v", code=1, env=token)
    t.run("diff", "-f", m, "-o", "json", code=1, env=token)
    history.declare(shop_keys(ns, region=None, legacy="kept", features='{"beta":true,"limit":4}',
                              api__token=TOKEN + "-rotated"))
    t.run("apply", "-f", m, "-o", "json", code=0, env=token)
    t.run("apply", "-f", m, "-o", "json", code=0, env=token)          # in sync, as JSON
    golden("cli/apply.txt", t.text())


ADOPT = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: adopt-{side}}
spec:
  prefix: {ns}{side}/
  data:
    same: one
    differs: two
    held: {value: three, policy: warn}
    seeded: {value: four, policy: create-only}
    fresh: five
"""


def test_apply_adopting_unowned_keys_says_the_same_in_text_and_json(env: Env, history: Any, t: Transcript,
                                                                     golden: Any) -> None:
    """Keys that exist unowned: one with the declared value (adopted), one with another value (updated,
    and so owned), one held by policy warn and one by create-only (adopted, value kept). The text
    summaries and the JSON `summary`, `applied.summary` and `applied.results` must count them alike."""
    ns = env.ns
    declared: dict[str, Any] = {}
    for side in ("text", "json"):
        for rel, value in (("same", "one"), ("differs", "2"), ("held", "3"), ("seeded", "4")):
            env.put(f"{ns}{side}/{rel}", value)
        declared.update({f"{ns}{side}/same": "one", f"{ns}{side}/differs": "two",
                         f"{ns}{side}/held": Declared(b"three", "warn"),
                         f"{ns}{side}/seeded": Declared(b"four", "create-only"), f"{ns}{side}/fresh": "five"})
    history.declare(declared)
    text = str(env.write("text/app.yaml", ADOPT.replace("{side}", "text")))
    js = str(env.write("json/app.yaml", ADOPT.replace("{side}", "json")))
    t.run("diff", "-f", text, "--applyset", "text", code=1)
    t.run("apply", "-f", text, "--applyset", "text", code=0)
    t.run("apply", "-f", js, "--applyset", "json", "-o", "json", code=0)
    golden("cli/apply-adopts.txt", t.text())


# -- refusals: ownership, leases, the deletion guard --------------------------------------------------

APP = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  prefix: {ns}config/app/
  data:
    url: https://one
    retry: 5
"""


def test_apply_refuses_a_key_of_another_apply_set(env: Env, history: Any, t: Transcript, golden: Any) -> None:
    ns = env.ns
    one = env.write("one/app.yaml", APP)
    history.declare({f"{ns}config/app/url": "https://one", f"{ns}config/app/retry": "5"})
    t.run("apply", "-f", str(one), "--applyset", "one", code=0)
    two = env.write("two/app.yaml", APP.replace("retry: 5", "retry: 6").replace("https://one", "https://two"))
    rev = env.revision()
    t.run("diff", "-f", str(two), "--applyset", "two", code=3)
    t.run("apply", "-f", str(two), "--applyset", "two", code=3)
    t.run("apply", "-f", str(two), "--applyset", "two", "-o", "json", code=3)
    assert env.untouched_since(rev), "a refused apply writes nothing"
    golden("cli/apply-owned-by-another-set.txt", t.text())


def test_apply_refuses_a_key_held_by_another_clients_lease(env: Env, history: Any, t: Transcript,
                                                             golden: Any) -> None:
    ns = env.ns
    lease = env.gw.lease_grant(300)
    t.lease(lease)
    env._outside(env.gw.put(f"{ns}config/app/leader", "node-7", lease=lease))
    f = env.write("m/app.yaml", APP + "    leader: node-1\n")
    rev = env.revision()
    t.run("diff", "-f", str(f), "--applyset", "app", code=3)
    t.run("apply", "-f", str(f), "--applyset", "app", code=3)
    t.run("apply", "-f", str(f), "--applyset", "app", "-o", "json", code=3)
    assert env.untouched_since(rev), "a refused apply writes nothing"
    golden("cli/apply-leased-key.txt", t.text())


def test_deletion_guard_refusals(env: Env, history: Any, t: Transcript, golden: Any) -> None:
    ns = env.ns
    f = env.write("m/app.yaml", APP + "    a: 1\n    b: 2\n")
    history.declare({f"{ns}config/app/{k}": v for k, v in
                     {"url": "https://one", "retry": "5", "a": "1", "b": "2"}.items()})
    t.run("apply", "-f", str(f), code=0)                       # no apply set named: 'default', said on stderr
    rev = env.revision()
    env.write("m/app.yaml", APP.replace("    url: https://one\n", ""))
    t.run("apply", "-f", str(f), "--max-deletes", "2", code=3)
    t.run("apply", "-f", str(f), "--max-deletes", "2", "-o", "json", code=3)
    env.write("m/app.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\n"
                            "spec: {prefix: {ns}config/app/}\n")
    t.run("diff", "-f", str(f), code=3)
    t.run("apply", "-f", str(f), code=3)
    t.run("apply", "-f", str(f), "-o", "json", code=3)
    assert env.untouched_since(rev), "a refused apply writes nothing"
    golden("cli/apply-deletion-guard.txt", t.text())


# -- validate and bad input ---------------------------------------------------------------------------

def test_validate(env: Env, t: Transcript, golden: Any) -> None:
    m = str(write_shop(env).parent)
    t.run("validate", "-f", m, code=0, env=TOKEN_ENV)
    t.run("validate", "-f", m, "-o", "json", code=0, env=TOKEN_ENV)
    t.run("validate", "-f", m, code=2)                          # PAY_API_TOKEN unset
    golden("cli/validate.txt", t.text())


BAD = {
    "yaml-syntax": "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n  prefix: /a/\n"
                   "  data:\n    x: 1\n\ty: 2\n",
    "unknown-field": APP.replace("  prefix:", "  prefx:"),
    "missing-fromfile": APP + "    cert: {fromFile: missing.pem}\n",
    "no-documents": "# being rewritten\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_are_exit_2_for_every_command(env: Env, history: Any, t: Transcript, golden: Any,
                                                    case: str) -> None:
    f = env.write("m/app.yaml", BAD[case])
    rev = env.revision()
    t.run("validate", "-f", str(f), code=2)
    t.run("validate", "-f", str(f), "-o", "json", code=2)
    t.run("diff", "-f", str(f), "--applyset", "app", code=2)
    t.run("apply", "-f", str(f), "--applyset", "app", code=2)
    t.run("apply", "-f", str(f), "--applyset", "app", "-o", "json", code=2)
    assert env.untouched_since(rev)
    golden(f"cli/bad-manifest-{case}.txt", t.text())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_usage_and_connection_errors(env: Env, t: Transcript, golden: Any) -> None:
    """Through the real `python -m etcdsync`: what a shell sees, exit codes included."""
    f = str(env.write("m/app.yaml", APP))
    t.run("diff", "-f", f, "--frobnicate", code=2, subprocess=True)
    t.run("diff", "-f", f, "-o", "yaml", code=2, subprocess=True)
    t.run("diff", "-f", f, "--max-deletes", "-1", code=2, subprocess=True)
    t.run("apply", "-f", f, "--applyset", "Bad Name", code=2, subprocess=True)
    t.run("diff", "-f", f, "--reserved-prefix", "etcdsync", code=2, subprocess=True)
    t.run("nosuchcommand", code=2, subprocess=True)
    t.run("services", code=2, subprocess=True)                 # a group without its command: one line too
    t.run("history", "--applyset", code=2, subprocess=True)    # an option without its value: the command's --help
    t.run("diff", code=2, subprocess=True)                     # no -f, and no ./manifests in the cwd
    t.run("diff", "-f", str(env.tmp / "nowhere"), code=2, subprocess=True)
    port = closed_port()
    t.closed = f"127.0.0.1:{port}"
    t.run("diff", "-f", f, "--endpoints", f"http://127.0.0.1:{port}", "--timeout", "1", code=2, subprocess=True)
    t.run("ls", "/", "--endpoints", f"http://127.0.0.1:{port}", "--timeout", "1", code=2, subprocess=True)
    # -o json: stdout is a JSON document also on an error (stderr keeps its one line); a command line
    # that does not parse has no output format yet: stderr only
    t.run("diff", "-f", f, "-o", "json", "--endpoints", f"http://127.0.0.1:{port}", "--timeout", "1", code=2,
          subprocess=True)
    t.run("ls", "/", "-o", "json", "--endpoints", f"http://127.0.0.1:{port}", "--timeout", "1", code=2,
          subprocess=True)
    t.run("inventory", "--applyset", "Bad Name", "-o", "json", code=2, subprocess=True)
    t.run("diff", "-f", f, "-o", "json", "--frobnicate", code=2, subprocess=True)
    t.run("services", "watch", "payments", "-o", "json", "--endpoints", "ftp://x", code=2, subprocess=True)  # a stream
    golden("cli/usage-and-connection-errors.txt", t.text())


# -- operator commands --------------------------------------------------------------------------------

def test_operator_commands(env: Env, history: Any, t: Transcript, golden: Any) -> None:
    ns = env.ns
    m = str(write_shop(env).parent)
    history.declare(shop_keys(ns))
    t.run("apply", "-f", m, code=0, env=TOKEN_ENV)
    other = env.write("o/app.yaml", APP.replace("    retry: 5\n", "    retry: {value: 5, prune: false}\n"))
    history.declare({**shop_keys(ns), f"{ns}config/app/url": "https://one", f"{ns}config/app/retry": "5"})
    t.run("apply", "-f", str(other), "--applyset", "app", code=0)
    env.put(f"{ns}config/payments/stranger", "not ours")
    env.put(f"{ns}services/payments/broken", "{not json")
    p = f"{ns}config/payments/"
    t.run("get", f"{p}db/url", code=0)
    t.run("get", f"{p}tls/cert", code=0)                        # a single value keeps its newlines
    t.run("get", f"{p}api/token", code=0)                       # secret: a hash, never the value
    t.run("get", f"{p}nope", code=2)
    t.run("get", f"{p}nope", "-o", "json", code=2)
    t.run("get", p, "--prefix", code=0)
    t.run("get", f"{p}api/token", "-o", "json", code=0)
    t.run("get", p, "--prefix", "-o", "json", code=0)
    t.run("ls", ns, code=0)                                     # the reserved prefix included
    t.run("ls", p, "-o", "json", code=0)
    t.run("ls", f"{ns}nothing/", code=0)
    t.run("inventory", code=0)
    t.run("inventory", "--applyset", "app", "-o", "json", code=0)
    t.run("inventory", "--applyset", "nosuch", code=0)
    t.run("applysets", code=0)
    t.run("applysets", "-o", "json", code=0)
    t.run("services", "ls", "--prefix", f"{ns}services/", code=0)
    t.run("services", "ls", "--prefix", f"{ns}services/", "-o", "json", code=0)
    t.run("services", "ls", "payments", "--prefix", f"{ns}services/", code=0)
    t.run("services", "ls", "payments", "--prefix", f"{ns}services/", "-o", "json", code=0)
    t.run("services", "ls", "gateway", "--prefix", f"{ns}services/", code=0)
    t.run("services", "ls", "--prefix", f"{ns}nothing/", code=0)
    golden("cli/operator-commands.txt", t.text())
