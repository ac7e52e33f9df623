"""What every ``slas`` command shares: the app class, the ``--set`` option and the one error path.

Errors: a command lets any :class:`slas.errors.SlasError` rise; the group that runs it prints
``error: <line>`` (one line per problem) and exits with the error's ``exit_code``. A command catches a
builtin only where a library raises one for bad input, and hands it to :func:`fail` too. Any other
exception is a bug or an environment failure: the user sees ``error: <type>: <first line> (traceback in
<file>)`` and exit 1, the traceback goes to ``$SLAS_HOME/logs/last-error.txt``; ``slas --debug`` shows it
instead. Click's own usage errors (exit 2) and Ctrl-C pass through untouched.

Warnings: while a command runs, slas's own warnings print as ``warning: <message>``, without the
``file.py:820: RuntimeWarning:`` prefix and source line Python adds, which mean nothing to a user.
"""

from __future__ import annotations

import importlib
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

import slas
from slas.errors import SlasError, one_line
from slas.paths import slas_home

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="override a config key (repeatable): --set rl.preset=dancegrpo"),
]

_SLAS_DIR = Path(slas.__file__).resolve().parent


def error_lines(error: BaseException | str) -> list[str]:
    """What ``error:`` lines say: every line of a slas error (a preflight lists one problem per line),
    the first line of anything else."""
    if isinstance(error, str):
        return [error]
    if isinstance(error, SlasError):
        return [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return [one_line(error)]


def fail(error: BaseException | str) -> NoReturn:
    """Print ``error: <line>`` per problem to stderr and exit with the error's ``exit_code`` (2: bad input)."""
    for line in error_lines(error):
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(getattr(error, "exit_code", SlasError.exit_code))


class _FlagsTakeNoValue:
    """Help that shows no value placeholder for flags.

    Typer's rich help panel prints every option's type label (``<bool>``), flags included, although a flag
    takes no value (its plain formatter already skips them). An empty metavar is the label it prints instead.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.get_params(ctx):
            if isinstance(param, TyperOption) and param.is_flag and not param.count:
                param.metavar = ""
        super().format_help(ctx, formatter)


class Command(_FlagsTakeNoValue, TyperCommand):
    """A ``slas`` command."""


DEBUG_KEY = "slas.debug"  # in ``ctx.meta`` (shared by every context of one invocation): ``slas --debug``
LAST_ERROR = "last-error.txt"


def _click_exits() -> tuple[type[BaseException], ...]:
    """What click raises to end a command on purpose (usage errors, ``typer.Exit``, Ctrl-C's abort): click's
    own classes, or those of the copy of click newer typer versions vendor (``typer._click``)."""
    kinds: list[type[BaseException]] = [typer.Exit]
    for module in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        kinds += [getattr(found, name) for name in ("TyperException", "ClickException", "Exit", "Abort")
                  if isinstance(getattr(found, name, None), type)]
    return tuple(dict.fromkeys(kinds))


_CLICK_EXITS = _click_exits()


def save_traceback(exc: BaseException) -> Path:
    """Write ``exc``'s full traceback to ``$SLAS_HOME/logs/last-error.txt`` (replacing the last one)."""
    path = slas_home() / "logs" / LAST_ERROR
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), encoding="utf-8")
    return path


def fail_unexpected(exc: Exception) -> NoReturn:
    """An error no slas code raised on purpose: one line saying where its traceback is, exit 1."""
    try:
        where = f"traceback in {save_traceback(exc)}"
    except OSError as err:
        where = f"traceback not saved: {one_line(err)}; rerun with slas --debug"
    typer.echo(f"error: {one_line(exc, with_type=True)} ({where})", err=True)
    raise typer.Exit(1)


class Group(_FlagsTakeNoValue, TyperGroup):
    """A ``slas`` command group; the innermost one turns an error from any command into :func:`fail` (a
    :class:`SlasError`) or :func:`fail_unexpected` (anything else, unless ``--debug``)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SlasError as exc:
            fail(exc)
        except _CLICK_EXITS:
            raise
        except Exception as exc:
            if ctx.meta.get(DEBUG_KEY):
                raise
            fail_unexpected(exc)


class SlasTyper(typer.Typer):
    """A ``typer.Typer`` whose groups and commands follow the rules above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def _from_slas(category: type[Warning], filename: str) -> bool:
    """Whether a warning is slas's own: raised from (or attributed by ``stacklevel`` to) slas code."""
    if category.__module__.split(".")[0] == "slas":
        return True
    try:
        return Path(filename).resolve().is_relative_to(_SLAS_DIR)
    except (OSError, ValueError):
        return False


def one_line_warnings(ctx: typer.Context) -> None:
    """Show slas's warnings as ``warning: <message>`` until the command ends (others as Python shows them)."""
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if not _from_slas(category, filename):
            previous(message, category, filename, lineno, file, line)
            return
        lines = str(message).strip().splitlines()
        text = " ".join(line.strip() for line in lines) or category.__name__
        typer.echo(f"warning: {text}", file=file, err=file is None)

    warnings.showwarning = show
    ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))
