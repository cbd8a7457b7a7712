"""What the writing commands (`apply`, `rollback`, `run`) share with the history: --history-limit,
where the manifests came from, and recording the entry of a committed apply.

Apart from cli/history.py so that `diff` and `apply` do not build the history commands they never run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from ..core.history import DEFAULT_LIMIT
from ..errors import EtcdsyncError, Interrupted

if TYPE_CHECKING:
    from ..apply import Outcome
    from ..core.history import HistoryEntry
    from ..core.model import DesiredState
    from ..etcd.store import Store
    from .options import ManifestFlags

history_limit_option = click.option(
    "--history-limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
    help="History entries kept per apply set (the oldest are deleted when one is recorded).")


def load_with_source(manifests: ManifestFlags, reserved: str) -> tuple[DesiredState, dict[str, str]]:
    """The manifests, as `ManifestFlags.load` reads them, and their provenance for the history: the
    commit (with --git) or a digest of the files."""
    from ..history import files_source, git_source

    git = manifests.git_source()
    if git is None:
        desired = manifests.load(reserved)
        return desired, files_source(desired)
    snapshot = asyncio.run(git.pull())
    desired = snapshot.load(reserved_prefix=reserved, file_roots=manifests.file_roots, env_allow=manifests.env_allow)
    return desired, git_source(snapshot.sha, git.url, git.ref, git.path)


async def record_apply(store: Store, reserved: str, outcome: Outcome, *, applyset: str, source: dict[str, str],
                       limit: int, kind: str = "apply", failed: str = "") -> HistoryEntry | None:
    """Record the history entry of a committed apply (nothing when it wrote nothing); `failed`: the
    error that stopped it after the writes in `outcome`."""
    from ..history import cli_identity, outcome_entry, record

    entry = outcome_entry(outcome, applyset=applyset, kind=kind, who=cli_identity(), source=source, failed=failed)
    if entry is None:
        return None
    rev = await record(store, reserved, entry, limit=limit)
    if rev is None:
        click.echo(f"warning: history entry {entry.id} was not recorded", err=True)
        return None
    return entry


async def record_failed(store: Store, reserved: str, exc: EtcdsyncError, *, applyset: str, source: dict[str, str],
                        limit: int, kind: str = "apply") -> None:
    """An apply failed after committing some of its transactions (`exc.partial`): record those writes
    as a failed entry and say so on stderr (the error itself is printed by the caller). Recording
    may fail too (etcd gone): then a warning says the writes are not in the history."""
    from ..apply import Outcome
    from ..core.render import escape

    outcome = exc.partial
    if not isinstance(outcome, Outcome) or not outcome.done:
        if isinstance(exc, Interrupted):
            click.echo("note: nothing was written", err=True)
        return
    try:
        entry = await record_apply(store, reserved, outcome, applyset=applyset, source=source, limit=limit,
                                   kind=kind, failed=str(exc))
    except EtcdsyncError as again:
        click.echo(f"warning: {len(outcome.done)} changes were committed before the error, and their history "
                   f"entry could not be recorded ({escape(str(again)[:200])})", err=True)
        return
    where = f"history entry {entry.id}" if entry is not None else "no history entry"
    before = "it stopped" if isinstance(exc, Interrupted) else "the error"
    click.echo(f"note: {len(outcome.done)} changes were committed before {before} ({where}); "
               "the next apply completes the rest", err=True)
