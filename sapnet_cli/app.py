"""The Typer application: registers one command module per stage and maps errors to exit codes.

Command modules live in :mod:`sapnet_cli.commands`; each exposes a plain function whose Typer-annotated
parameters are the options. This module only wires them up, configures logging and turns
:class:`stages.common.errors.SapnetError` into a one-line message and its exit code (no traceback).
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import typer

from sapnet_cli.commands import (
    bench_synthetic,
    evaluate,
    export_pseudo,
    points,
    propose,
    review,
    select,
    train_seg,
)
from sapnet_cli.options import SapnetCommand
from stages import __version__
from stages.common.errors import SapnetError
from stages.common.io import output_error

try:  # typer >= 0.20 vendors its own click; older versions use the click package
    from typer._click.exceptions import ClickException as _VendoredClickException
except ImportError:  # pragma: no cover - depends on the typer version
    from click.exceptions import ClickException as _VendoredClickException

_CLICK_ERRORS: tuple[type[Exception], ...] = (_VendoredClickException,)
try:
    import click as _click

    _CLICK_ERRORS += (_click.exceptions.ClickException,)
except ImportError:  # pragma: no cover
    pass

app = typer.Typer(
    name="sapnet",
    help=(
        "Point-prompted instance segmentation (SAPNet, CVPR 2024) as a pipeline of stages:\n\n"
        "points -> propose -> select -> export-pseudo -> train-seg.\n\n"
        "Each stage reads and writes files; run `sapnet COMMAND --help` for its options."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: "[x, y]" must not be read as rich markup and swallowed.
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sapnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


app.command("points", cls=SapnetCommand)(points.points)
app.command("propose", cls=SapnetCommand)(propose.propose)
app.command("select", cls=SapnetCommand)(select.select)
app.command("export-pseudo", cls=SapnetCommand)(export_pseudo.export_pseudo)
app.command("evaluate", cls=SapnetCommand)(evaluate.evaluate)
app.command("train-seg", cls=SapnetCommand)(train_seg.train_seg)
app.command("bench-synthetic", cls=SapnetCommand)(bench_synthetic.bench_synthetic)
app.command("review", cls=SapnetCommand)(review.review)
app.command("merge-corrections", cls=SapnetCommand)(review.merge_corrections)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sapnet` console script; exits with the error's code on a SapnetError."""
    try:
        app(args=argv, standalone_mode=False)
    except SapnetError as err:
        typer.secho(f"sapnet: error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code)
    except typer.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns any EOFError into Abort: not a Ctrl-C
            _unexpected(exc.__cause__)
        typer.secho("sapnet: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.secho("sapnet: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _CLICK_ERRORS as exc:  # usage errors (bad option values) in standalone_mode=False
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS or err.filename is None:
            _unexpected(err)
        # A write that did not go through the atomic writer (a library's own file): still name the file.
        out = output_error(err.filename, err, "file")
        typer.secho(f"sapnet: error: {out}", err=True, fg=typer.colors.RED)
        sys.exit(out.exit_code)
    except Exception as err:
        _unexpected(err)
    sys.exit(0)


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _unexpected(err: BaseException) -> None:
    """Exit 1 for an unexpected error: one line without SAPNET_DEBUG, the traceback with it."""
    if os.environ.get("SAPNET_DEBUG"):
        raise err
    logging.getLogger("sapnet").error(
        "unexpected error: %s: %s (rerun with SAPNET_DEBUG=1 for the traceback)",
        type(err).__name__,
        err,
    )
    sys.exit(1)
