"""Errors a user can cause and fix, and the one way the project warns. Entry points print an error
as one line, without a traceback (``resnorm.cli``)."""

import sys


def one_line(error: BaseException | str, limit: int = 4000) -> str:
    """An error's message on one line (for stderr and the run's ``resnorm.error`` tag)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr: something went wrong that costs time or speed, not the run."""
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)


class ResnormError(Exception):
    """Base of every user-facing error; the message names the value at fault and what is allowed."""


class ConfigError(ResnormError, ValueError):
    """A parameter is out of range or unknown."""


class DataError(ResnormError, ValueError):
    """The data source cannot be used (missing, empty, unreadable, inconsistent)."""


class TrainingDiverged(ResnormError, RuntimeError):
    """The loss became NaN or infinite."""


class ModelError(ResnormError, ValueError):
    """A model cannot be found or used (unknown URI, run or alias; no saved weights; wrong input)."""


class TrackingUnavailable(ResnormError, ConnectionError):
    """The tracking server does not answer (at the start, or when a run must be finished)."""


class RunBusy(ConfigError):
    """The run is being trained by another live process: refused, and that run is left untouched."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class Interrupted(KeyboardInterrupt):
    """SIGTERM (what Slurm, systemd and Kubernetes send), handled as Ctrl-C is: the run stops where
    it is, ends KILLED and resumes from its snapshot."""
