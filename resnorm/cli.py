"""How every entry point ends: any error as one line on stderr, a non-zero exit, no traceback, and
the run made for the process (by `mlflow run`, or by a sweep for its worker) ended with the reason.

Errors the project knows (``ResnormError``, click's) print their own message; anything else prints
its type and message, keeps the full traceback in the run (``error/traceback.txt``) and prints it
too when ``RESNORM_DEBUG=1``. SIGTERM is handled as Ctrl-C is: the run ends KILLED, resumable.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import click

from resnorm.errors import ConfigError, ResnormError, RunBusy, one_line
from resnorm.signals import interrupts, stop_with_parent


def main(command: click.Command) -> NoReturn:
    """An entry point's ``main``: under ``mlflow run`` (which sets ``MLFLOW_RUN_ID``) it ends with the
    ``mlflow run`` process that launched it (``docker stop`` and Kubernetes SIGTERM only that one,
    the container's first process); prints best effort (``best_effort_output``); runs the command as
    ``run_command`` does, then leaves at once."""
    if os.environ.get("MLFLOW_RUN_ID"):
        stop_with_parent(os.getppid())
    best_effort_output()
    leave(_run(command, None))


def best_effort_output() -> None:
    """Make this process's printing best effort: once its standard output or error cannot be
    written (``| head -1`` closed the pipe, the terminal went away), what is printed there goes
    nowhere instead of raising in whatever was printing - a training's epoch line, its summary. The
    job's outcome comes from its work, not from whether anyone read about it. Entry points call
    it through ``main``; a sweep's worker once it has the sweep's streams."""
    sys.stdout = best_effort(sys.stdout)
    sys.stderr = best_effort(sys.stderr)


def best_effort(stream):
    """``stream`` (a text stream) whose writes and flushes never raise (``_BestEffort``)."""
    return stream if stream is None or isinstance(stream, _BestEffort) else _BestEffort(stream)


class _BestEffort:
    """A text stream's stand-in that never raises on a write or a flush: the first that fails points
    the stream's descriptor at ``os.devnull`` (as Python's documentation advises for SIGPIPE, so that
    no later write by anyone, the interpreter's own flush included, fails again) and drops what failed.
    Everything else (``fileno``, ``isatty``, ``encoding``, ...) is the stream's own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # EPIPE, EIO (a terminal gone), a closed stream
            self._silence()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._silence()

    def _silence(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stream has no descriptor left to point
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            self._stream.flush()  # what the buffer still holds goes to os.devnull now

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def leave(code: int) -> NoReturn:
    """Exit once the job is done and answered for: the exit handlers run (logging, temporary
    folders, MLflow's, Ray's) and the output is flushed, but the interpreter's teardown of torch,
    torch._dynamo, MLflow and matplotlib is skipped, as multiprocessing's workers skip it (a one-epoch
    ``train`` process: 12.7 s with it, 10.6 s without; `benchmarks/startup.py` times "process exit")."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def run_command(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command; print errors as ``error: ...`` and exit 2 (usage), 1 (run) or 130 (interrupted)."""
    code = _run(command, args)
    if code:
        sys.exit(code)


def _run(command: click.Command, args: list[str] | None) -> int:
    return guard(lambda: command.main(args=args, standalone_mode=False), os.environ.get("MLFLOW_RUN_ID"), command.name)


def guard(job: Callable[[], object], run_id: str | None = None, entry: str | None = None) -> int:
    """Call ``job``; return its exit code: 0, or that of the error it raised, printed as one line,
    with ``run_id`` (the run made for this job, if any) ended FAILED or KILLED with the reason.
    ``entry``: the job's entry point when ``run_id`` comes from ``MLFLOW_RUN_ID``, which a process may
    inherit: the run is then ended only if it was made for this entry point and no job has taken it
    (``resnorm.jobruns.made_for``); a notebook's run or a sweep's parent is left as it is."""
    with interrupts():
        try:
            job()
            return 0
        except click.exceptions.Exit as e:  # --help
            return e.exit_code
        except click.exceptions.Abort as e:  # click's word for a KeyboardInterrupt (Ctrl-C, or SIGTERM below)
            return _fail(str(e.__cause__ or "") or "interrupted", 130, run_id, entry, interrupted=True)
        except click.ClickException as e:  # bad option value, unknown option
            return _fail(e.format_message(), e.exit_code, run_id, entry)
        except RunBusy as e:  # the run is alive elsewhere: refuse without touching it
            return _fail(str(e), 2, run_id if run_id != e.run_id else None, entry)
        except ConfigError as e:  # a value click could not check alone (e.g. groups against the norm)
            return _fail(str(e), 2, run_id, entry, e)
        except ResnormError as e:
            return _fail(str(e), 1, run_id, entry, e)
        except KeyboardInterrupt as e:
            return _fail(str(e) or "interrupted", 130, run_id, entry, interrupted=True)
        except Exception as e:  # noqa: BLE001 - the boundary: whatever it is, one line and a FAILED run
            return _fail(f"{type(e).__name__}: {e} (RESNORM_DEBUG=1 prints the traceback)", 1, run_id, entry, e)


def _fail(
    message: str,
    code: int,
    run_id: str | None,
    entry: str | None,
    error: BaseException | None = None,
    interrupted: bool = False,
) -> int:
    line = one_line(message)
    if os.environ.get("RESNORM_DEBUG") == "1" and error is not None:
        traceback.print_exception(error, file=sys.stderr)
    click.echo(f"error: {line}", err=True)
    if run_id:  # say why in the run made for this job, unless the job ended it itself
        # Imported here: MLflow takes seconds to load, and --help or a bad option needs none of it.
        from resnorm.jobruns import fail_pending_run

        with contextlib.suppress(Exception):  # the store itself may be what failed
            fail_pending_run(run_id, line, error, interrupted, entry)
    if "mlflow" in sys.modules:  # a run the job left open (its own ending cut short) ends as it failed;
        import mlflow  # MLflow's exit handler, and a worker's next child, would end it FINISHED

        from resnorm.tracking import FAILED, KILLED

        with contextlib.suppress(Exception):
            while mlflow.active_run() is not None:
                mlflow.end_run(KILLED if interrupted else FAILED)
    return code
