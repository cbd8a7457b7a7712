"""What every command shares for its output: exit codes, the text/JSON context, terminal-safe text,
tables, and the asyncio runner."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import unicodedata
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import click

T = TypeVar("T")

EXIT_OK, EXIT_DIFF, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2, 3
DIFF_LIMIT = 500  # keys shown in a text diff without -v


class Ctx:
    """Output settings for one invocation."""

    def __init__(self, *, no_color: bool, output: str, debug: bool, verbose: bool = False) -> None:
        self.output = output
        self.debug = debug
        self.verbose = verbose
        self.color = (not no_color and "NO_COLOR" not in os.environ and output == "text"
                      and sys.stdout.isatty())

    def style(self, text: str, **kw: Any) -> str:
        if not self.color:
            return text
        kw = {k: v for k, v in kw.items() if v is not None}
        return click.style(text, **kw)

    def out(self, text: str = "") -> None:
        click.echo(text, color=self.color)

    def note(self, text: str) -> None:
        click.echo(text, err=True)


# -- -o json ----------------------------------------------------------------------------------------------
#
# One rule for every command with `-o json`: stdout carries JSON only. A command that answers once
# prints one document, indented by two spaces, when it ends; a stream (`services watch`) prints one
# compact line per event. On an error, after the command line was parsed, the document (or the
# stream's last line) carries "error" (the message of stderr's one line) and "exitCode"; a document
# the command had built by then (a refused plan) keeps its fields. Non-ASCII characters are \u
# escapes, so no JSON output can drive a terminal. Stderr keeps its one `error:` line.

_DOC = "etcdsync.json-document"


def json_document(doc: Any) -> str:
    return json.dumps(doc, indent=2)


def json_line(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def emit_json(doc: Any) -> None:
    """Hand over the command's one JSON document: printed when the command ends, with "error" and
    "exitCode" added when it ends in an error."""
    click.get_current_context().meta[_DOC] = doc


def error_of(exc: BaseException) -> tuple[str, int]:
    """The message and exit code an exception ends a command with (as the entry point reports it)."""
    from ..errors import EtcdsyncError

    if isinstance(exc, EtcdsyncError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message(), EXIT_ERROR
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return "interrupted", 130
    return f"internal error: {type(exc).__name__}: {exc}", EXIT_ERROR


def print_json_outcome(stream: bool, exc: BaseException | None = None) -> None:
    """Print the document handed over (if any); on an error, with "error" and "exitCode" (a document
    of its own when none was handed over)."""
    ctx = click.get_current_context()
    doc = ctx.meta.pop(_DOC, None)
    if exc is not None:
        message, code = error_of(exc)
        doc = {**doc, "error": message, "exitCode": code} if isinstance(doc, dict) else \
            {"error": message, "exitCode": code}
    if doc is not None:
        click.echo(json_line(doc) if stream else json_document(doc))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, without handing it the result: on Python 3.11 it builds the repr of the return
    value (twice) when it finishes, which took seconds for a 100,000-key plan."""
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


# -- showing values safely ---------------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= o <= 0xDCFF:            # a byte that is not UTF-8 (decoded with surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _unsafe(ch: str, newlines: bool) -> bool:
    if newlines and ch in "\n\t":
        return False
    return unicodedata.category(ch) in _UNSAFE


def safe_text(data: bytes | str, *, newlines: bool = False) -> str:
    """Text that cannot drive a terminal: shown as is when it holds no control, format (bidi,
    zero-width), separator or undecodable character; otherwise C-quoted ("a\\x1bb") like git quotes
    paths. With `newlines`, newline and tab are kept (a single value on its own)."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    if (text.isprintable() or not any(_unsafe(ch, newlines) for ch in text)) and not text.startswith('"'):
        return text
    return '"' + "".join(_escape_char(ch) if _unsafe(ch, newlines) or ch in '\\"' else ch for ch in text) + '"'


def json_value(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(value).decode("ascii")}


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip()
                     for r in rows)
