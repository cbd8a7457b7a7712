"""Packaging: the console script, the Dockerfile's entrypoint and command, fast start-up."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from conftest import ROOT, Env
from history import Recorder


def test_console_script_and_dockerfile_agree() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["etcdsync"] == "etcdsync.cli.main:main"
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^FROM python:3\.1\d-slim', docker, re.M)
    assert 'ENTRYPOINT ["etcdsync"]' in docker
    assert re.search(r'^USER 10001$', docker, re.M)
    assert "HEALTHCHECK" in docker and "/healthz" in docker
    cmd = re.search(r'^CMD (\[.*\])$', docker, re.M)
    assert cmd is not None
    import json

    args = json.loads(cmd.group(1))
    assert args[:3] == ["run", "-f", "/manifests"]
    # every flag of the image's command exists in the package's `run` command
    out = subprocess.run([sys.executable, "-m", "etcdsync", "run", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for flag in (a for a in args if a.startswith("--")):
        assert flag in out.stdout, flag


def test_help_does_not_import_grpc() -> None:
    code = "import sys; from etcdsync.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print('grpc' in sys.modules, 'jsonschema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "False False"


# Modules a plain `diff` has no use for: each is imported by the one path that needs it (a
# multi-transaction apply's marker, an updated JSON value's field diff, a command that records who
# wrote, the history commands), never at the top of a module a diff imports.
NOT_FOR_DIFF = ("etcdsync.viewcore", "etcdsync.core.fielddiff", "getpass", "etcdsync.cli.history", "etcdsync.daemon",
                "etcdsync.sources", "etcdsync.views", "jsonschema")


def test_a_plain_diff_imports_only_what_it_uses(env: Env, history: Recorder) -> None:
    f = env.write("m/floor.yaml", "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: floor}\n"
                                  "spec: {prefix: {ns}floor/, data: {key: value}}\n")
    assert env.cli("apply", "-f", str(f), "--applyset", "floor").code == 0
    code = ("import sys\nfrom etcdsync.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    print('exit', exc.code)\n"
            f"print(sorted(m for m in {NOT_FOR_DIFF!r} if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, "diff", "-f", str(f), "--applyset", "floor", "--reserved-prefix",
                          env.reserved, "--endpoints", ",".join(env.endpoints), "--no-color"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert "0 to create, 0 to update, 0 to delete, 1 unchanged" in out.stdout, out
    assert lines[-2:] == ["exit 0", "[]"], out
