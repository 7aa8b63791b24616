"""How every entry point ends: any error as one line on stderr, a non-zero exit, no traceback, and
the run that `mlflow run` made for the process ended with the reason.

Errors the project knows (``ResnormError``, click's) print their own message; anything else prints
its type and message, keeps the full traceback in the run (``error/traceback.txt``) and prints it
too when ``RESNORM_DEBUG=1``. SIGTERM is handled as Ctrl-C is: the run ends KILLED, resumable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Iterator

import click

from resnorm.errors import ConfigError, Interrupted, ResnormError, RunBusy, one_line
from resnorm.tracking import KILLED, fail_pending_run


def run_command(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command; print errors as ``error: ...`` and exit 2 (usage), 1 (run) or 130 (interrupted)."""
    with _sigterm_interrupts():
        try:
            command.main(args=args, standalone_mode=False)
        except click.exceptions.Exit as e:  # --help
            sys.exit(e.exit_code)
        except click.exceptions.Abort as e:  # click's word for a KeyboardInterrupt (Ctrl-C, or SIGTERM below)
            _fail(str(e.__cause__ or "") or "interrupted", 130, status=KILLED)
        except click.ClickException as e:  # bad option value, unknown option
            _fail(e.format_message(), e.exit_code)
        except RunBusy as e:  # the run is alive elsewhere: refuse without touching it
            _fail(str(e), 2, leave=e.run_id)
        except ConfigError as e:  # a value click could not check alone (e.g. groups against the norm)
            _fail(str(e), 2, e)
        except ResnormError as e:
            _fail(str(e), 1, e)
        except KeyboardInterrupt as e:
            _fail(str(e) or "interrupted", 130, status=KILLED)
        except Exception as e:  # noqa: BLE001 - the boundary: whatever it is, one line and a FAILED run
            _fail(f"{type(e).__name__}: {e} (RESNORM_DEBUG=1 prints the traceback)", 1, e)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def interrupt(signum, frame):
        raise Interrupted("stopped by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int, error: BaseException | None = None, status: str = "FAILED",
          leave: str | None = None) -> None:
    line = one_line(message)
    if os.environ.get("RESNORM_DEBUG") == "1" and error is not None:
        traceback.print_exception(error, file=sys.stderr)
    click.echo(f"error: {line}", err=True)
    if os.environ.get("MLFLOW_RUN_ID") not in (None, "", leave):  # started by `mlflow run`: say why in its run
        with contextlib.suppress(Exception):  # the store itself may be what failed
            fail_pending_run(line, error, status)
    sys.exit(code)
