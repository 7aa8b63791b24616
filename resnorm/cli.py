"""How every entry point ends: user errors as one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import sys

import click

from resnorm.errors import ConfigError, ResnormError, one_line


def run_command(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command; print user errors as ``error: ...`` and exit 2 (usage) or 1 (run)."""
    try:
        command.main(args=args, standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad option value, unknown option
        _fail(e.format_message(), e.exit_code)
    except ConfigError as e:  # a value click could not check alone (e.g. groups against the norm)
        _fail(str(e), 2)
    except ResnormError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    line = one_line(message)
    click.echo(f"error: {line}", err=True)
    if os.environ.get("MLFLOW_RUN_ID"):  # started by `mlflow run`: say why in its run
        from resnorm.tracking import fail_pending_run

        fail_pending_run(line)
    sys.exit(code)
