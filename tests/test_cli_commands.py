"""The command table of etcdsync.cli.main: commands are imported only when they run, yet `--help` and
shell completion still list every one of them, and a new command cannot be forgotten in the table.

Pure (no etcd): the commands are only listed, imported and asked for help; the start-up tests run
`python -m etcdsync` as a subprocess and look at which modules it imported.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from conftest import ROOT
from etcdsync.cli.main import COMMANDS, cli, load_command

# Every command of `etcdsync`. A command added to the CLI is added here too, on purpose.
EXPECTED = ["apply", "applysets", "completion", "config", "del", "dev", "diff", "explain", "export", "get", "history",
            "inventory", "ls", "put", "resume", "rollback", "run", "schema", "services", "suspend", "teardown",
            "validate"]


def test_the_list_of_commands_is_pinned() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == EXPECTED
    assert set(COMMANDS) <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_table_entry_imports_and_is_a_click_command_of_its_name(name: str) -> None:
    command = load_command(COMMANDS[name])
    assert isinstance(command, click.Command)
    assert command.name == name
    assert command.get_short_help_str().strip(), f"{name} has no short help"


def test_a_table_entry_that_is_not_a_command_is_refused() -> None:
    with pytest.raises(TypeError, match="not a click command"):
        load_command("main:version_text")
    with pytest.raises(AttributeError):
        load_command("apply:no_such_command")


def _imported_after(*args: str) -> tuple[str, set[str]]:
    code = ("import sys\nfrom etcdsync.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ETCDSYNC_ENDPOINTS", None)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60)
    return out.stdout, set(out.stderr.strip().splitlines()[-1].split())


def test_help_lists_every_command_with_its_short_help() -> None:
    out = CliRunner().invoke(cli, ["--help"], prog_name="etcdsync", terminal_width=100)
    assert out.exit_code == 0, out.output
    listed = out.output.split("Commands:\n", 1)[1]
    for name in EXPECTED:
        command = cli.get_command(click.Context(cli), name)
        assert command is not None
        short = command.get_short_help_str(limit=45).removesuffix("...")
        assert any(line.split(None, 1)[:1] == [name] and short[:30] in line for line in listed.splitlines()), name


def test_shell_completion_lists_commands_from_the_table() -> None:
    from click.shell_completion import ShellComplete

    names = [item.value for item in ShellComplete(cli, {}, "etcdsync", "_ETCDSYNC_COMPLETE").get_completions([], "")]
    assert names == EXPECTED
    subcommands = [item.value for item in
                   ShellComplete(cli, {}, "etcdsync", "_ETCDSYNC_COMPLETE").get_completions(["services"], "")]
    assert subcommands == ["ls", "register", "watch"]


def test_a_command_imports_only_its_own_module() -> None:
    stdout, modules = _imported_after("validate", "--help")
    assert "Check manifests offline" in stdout
    others = {f"etcdsync.cli.{m}" for m in ("keys", "run", "services", "applysets", "config", "history")}
    assert not modules & others, modules & others


@pytest.mark.parametrize("args", [("validate", "-f", "manifests"), ("schema",), ("completion", "bash"), ("--help",)])
def test_offline_commands_do_not_import_the_etcd_client(args: tuple[str, ...]) -> None:
    stdout, modules = _imported_after(*args)
    assert stdout, args
    assert not modules & {"grpc", "etcd3aio", "google.protobuf"}, args



@pytest.mark.parametrize("args", [("validate", "-f", "manifests"), ("--help",), ("completion", "bash")])
def test_valid_manifests_and_help_do_not_import_jsonschema(args: tuple[str, ...]) -> None:
    _, modules = _imported_after(*args)
    assert "jsonschema" not in modules, args
