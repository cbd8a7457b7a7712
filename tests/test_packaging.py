"""Packaging: the console script, the Dockerfile's entrypoint and command, fast start-up."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from conftest import ROOT


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
