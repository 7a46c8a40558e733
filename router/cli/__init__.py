"""The `router` command line. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import codecs
import importlib
import io
import logging
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

_PYDANTIC_PREFIX = "Value error, "


class _RootGroup(TyperGroup):
    """``router``'s command group. Typer checks choice options (an Enum, a Literal) with pydantic, whose message
    starts "Value error, "; every subcommand's bad value passes through here, so it is cut once for all. So does a
    Ctrl+C, which Typer ends with exit status 130 and not a word: it says the command was interrupted and what
    that left behind, so whoever pressed it knows whether an output file is complete."""

    def invoke(self, ctx: Any) -> Any:
        words = list(ctx.args)  # what follows the subcommand's name (the group invoking it clears them)
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            exc.message = exc.message.removeprefix(_PYDANTIC_PREFIX)
            raise
        except KeyboardInterrupt:
            typer.echo(f"\n{self._command_path(ctx, words)}: interrupted; the files it had finished writing are "
                       "kept, one it was still writing may be incomplete", err=True)
            raise typer.Exit(130) from None  # 128 + SIGINT, as a shell reports a command Ctrl+C stopped

    def _command_path(self, ctx: Any, words: list[str]) -> str:
        """``router data measure-local`` for ``router data measure-local sentiment``: the names of the commands
        run, the groups' included."""
        names = [ctx.command_path]
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        if command is not None:
            names.append(ctx.invoked_subcommand)
        for word in words:
            if not isinstance(command, TyperGroup) or (command := command.get_command(ctx, word)) is None:
                break
            names.append(word)
        return " ".join(names)


app = typer.Typer(
    cls=_RootGroup,
    name="router",
    help="Send every AI text request to the smallest model that answers it well, and see the energy it took.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain click help: rich's boxed tables leave the help column a few words wide at 80 columns
)

# (module, attribute, command name): sub-apps are typer.Typer instances; single commands are functions.
_GROUPS = [
    ("router.cli.demo", "demo", None),
    ("router.cli.ledger", "ledger_app", "ledger"),
    ("router.cli.ledger_budgets", "ledger_app", None),  # registers itself as `router ledger budgets`
    ("router.cli.ledger_prompts", "prompts_app", None),  # registers itself as `router ledger prompts`
    ("router.cli.train", "train_app", "train"),
    ("router.cli.energy", "energy_app", "energy"),
    ("router.cli.calibrate", "calibrate", None),
    ("router.cli.simulate", "simulate", None),
    ("router.cli.data", "data_app", "data"),
    ("router.cli.serve", "serve", None),
    ("router.cli.batch", "batch_app", "batch"),
]


LOG_FORMAT = "%(asctime)s %(name)s %(message)s"
"""The format of router's log lines on stderr (``router serve`` gives its worker processes the same)."""


def _print_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        typer.echo(f"router {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens, step by step."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print router's version and exit."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)


for _module, _attr, _name in _GROUPS:
    try:
        _obj = getattr(importlib.import_module(_module), _attr)
    except ModuleNotFoundError as _exc:  # a command group not built yet
        if _exc.name != _module:
            raise
        continue
    if isinstance(_obj, typer.Typer):
        if _name is not None:
            app.add_typer(_obj, name=_name)
    else:
        app.command(name=_name)(_obj)


def _tolerant_output() -> None:
    """Let stdout and stderr write any text when their encoding is not UTF-8 (a terminal under a Latin-1 locale, a
    Windows console's code page, output redirected to a file there): router's own lines hold ``≈``, ``→`` and
    ``…``, and records, names and prompts any script, which such an encoding cannot write, so each command failed
    with a UnicodeEncodeError traceback. A character the encoding lacks is written as ``?`` instead."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.errors != "strict":
            continue  # a stream a caller put there (a test runner's), or an error handler the user chose
        try:
            utf = codecs.lookup(stream.encoding).name.startswith("utf")
        except LookupError:
            utf = False
        if not utf:
            stream.reconfigure(errors="replace")


def _file_error(exc: OSError) -> str:
    """An OSError as the path it names and what went wrong, without Python's ``[Errno N]``; one that names no path
    (a connection refused) as it is, with no advice about paths."""
    where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    what = exc.strerror or str(exc)
    if not where:
        return what
    return (f"{where}: {what}; fix: check that path (a file where a folder is needed or a folder where a file is, "
            "its permissions, the free space)")


def main() -> None:
    """The ``router`` command. A RouterError that ends a command (a configuration fault, a ledger that cannot be
    opened) is one line naming the problem and its fix, exit status 2, as ``router ledger`` prints them; so is an
    OSError (an output file in a folder that is a file, a folder named where a file is written), which every
    command that writes a file would otherwise end with as a traceback. The traceback is for ``router -v``."""
    from rich.console import Console
    from rich.markup import escape

    from ..errors import RouterError

    _tolerant_output()
    try:
        app()
    except BrokenPipeError:
        # The reader of stdout went away (`router ledger export -o - | head`): it took what it wanted, which is no
        # failure to report; stdout goes to /dev/null so the interpreter's last flush does not raise again, and the
        # status is 1, as rich's tables end on a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except (RouterError, OSError) as exc:
        logging.getLogger("router.cli").info("the command failed", exc_info=True)
        message = _file_error(exc) if isinstance(exc, OSError) else str(exc)
        Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
