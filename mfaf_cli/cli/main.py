"""Root ``mfaf`` command group: logging, error-to-exit-code mapping, lazy subcommands.

Exit codes (documented in README): 0 success, 1 data/runtime error, 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from typing import Any

import click

from mfaf_cli import __version__
from mfaf_cli.errors import MfafError

log = logging.getLogger("mfaf")

#: subcommand name -> "module:attribute"; imported only when the command runs or --help is
#: asked of it, so ``mfaf --help`` stays instant and never imports torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("mfaf_cli.cli.predict", "Predict a land-use map from co-registered modalities."),
    "coregister": ("mfaf_cli.cli.coregister", "Warp all inputs onto one grid and write them."),
    "vectorize": ("mfaf_cli.cli.vectorize", "Polygonise a label raster to GPKG/GeoJSON/..."),
    "info": ("mfaf_cli.cli.info", "Describe rasters (CRS, size, bands, overlap) or models."),
    "models": ("mfaf_cli.cli.models", "List the model registry and shipped weights."),
    "export": ("mfaf_cli.cli.export", "Export a model to ONNX with its metadata."),
    "train": ("mfaf_cli.cli.train", "Train a fusion network on a dataset."),
    "evaluate": ("mfaf_cli.cli.evaluate", "Score a model on a dataset, or a map against truth."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _ = COMMANDS[cmd_name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                return None  # command not implemented in this build
            raise
        cmd: click.Command = mod.command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the static table, so listing commands imports nothing.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


EPILOG = """\b
Examples:
  mfaf predict --optical S2.tif --optical-bands B12,B8,B4 --sar S1.tif --sar-bands VV \\
      -o water.tif --vector water.gpkg
  mfaf evaluate water.tif --truth label.tif --json
  mfaf info S2.tif S1.tif
\b
Exit codes: 0 success, 1 data/runtime error, 2 usage error, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Errors are one 'Error: ...' line on stderr; -v or --debug
(before the command) also print the traceback.
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mfaf")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """mfaf: multimodal (optical+SAR, HSI+LiDAR) land-use mapping.

    Co-registers inputs window by window, runs a trained fusion network over overlapping
    tiles, blends them seamlessly and writes a georeferenced, colour-coded GeoTIFF.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or verbose > 0
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="mfaf: %(levelname)s: %(message)s", stream=sys.stderr)
    from mfaf_cli.io.gdal_messages import route_libtiff_messages

    route_libtiff_messages()  # a full disk: mfaf's one line, not libtiff's lines above it


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM into an exception so context managers remove temporary outputs.
    raise SystemExit(143)


def _wants_debug(args: list[str]) -> bool:
    """--debug or -v/--verbose before the subcommand (the group's own options)."""
    for a in args:
        if not a.startswith("-"):
            return False  # the subcommand: later -v belong to it
        if a in ("--debug", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}):
            return True
    return False


def _one_line(text: str) -> str:
    """Messages may embed GDAL/OS text with newlines; a log line must stay one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_line(e: click.ClickException) -> str:
    """Click usage errors as one ``Error:`` line with the help hint at its end."""
    msg = _one_line(e.format_message())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        msg += f" (see '{ctx.command_path} --help')"
    return f"Error: {msg}"


def _os_error_line(e: OSError) -> str:
    """An OS error no library layer translated: a full disk (checkpoints, vectors...) is said
    plainly; anything else is still an mfaf bug to report."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" {e.filename}" if e.filename else ""
        return f"could not write{where}: no space left on device; free some space"
    return f"internal error: {_one_line(f'{type(e).__name__}: {e}')} (rerun with --debug)"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the group and maps errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _wants_debug(args)
    from mfaf_cli.malloc import limit_malloc_growth

    limit_malloc_growth()  # process-wide: the CLI owns the process, a library call does not
    try:
        signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not in main thread (e.g. embedded)
        pass
    try:
        # Without standalone mode click *returns* the code of ctx.exit(n) / Exit(n) instead
        # of raising it; commands return None, so an int here is an exit code.
        rv = cli.main(args=argv, prog_name="mfaf", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            sys.exit(rv)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(_usage_line(e), err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("mfaf: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("mfaf: interrupted", err=True)
        sys.exit(130)
    except MfafError as e:
        if debug:
            raise
        click.echo(f"Error: {_one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except BrokenPipeError:  # stdout closed early (e.g. `| head`): stop quietly
        _silence_stdout()
        sys.exit(1)
    except OSError as e:
        if debug:
            raise
        click.echo(f"Error: {_os_error_line(e)}", err=True)
        sys.exit(1)
    except Exception as e:  # an mfaf bug, not a user mistake: say so, keep it short
        if debug:
            raise
        text = _one_line(f"{type(e).__name__}: {e}")
        click.echo(f"Error: internal error: {text} (rerun with --debug)", err=True)
        sys.exit(1)
    sys.exit(0)
