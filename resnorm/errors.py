"""Errors a user can cause and fix. Entry points print them as one line, without a traceback."""


def one_line(error: BaseException | str, limit: int = 4000) -> str:
    """An error's message on one line (for stderr and the run's ``resnorm.error`` tag)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


class ResnormError(Exception):
    """Base of every user-facing error; the message names the value at fault and what is allowed."""


class ConfigError(ResnormError, ValueError):
    """A parameter is out of range or unknown."""


class DataError(ResnormError, ValueError):
    """The data source cannot be used (missing, empty, unreadable, inconsistent)."""


class TrainingDiverged(ResnormError, RuntimeError):
    """The loss became NaN or infinite."""


class ModelError(ResnormError, ValueError):
    """A model cannot be found or used (unknown URI, run or alias; no checkpoint; wrong input)."""


class TrackingUnavailable(ResnormError, ConnectionError):
    """The tracking server does not answer (at the start, or when a run must be finished)."""
