"""Errors a user can fix. Each carries a one-line message naming the problem; entry points print
it as `error: ...` instead of a traceback."""


class LoraReproError(Exception):
    """Base class: a problem with the user's input, reported in one line."""


class ConfigError(LoraReproError):
    """A config value is invalid or inconsistent (caught before any model or data is loaded)."""


class FolderInUse(ConfigError):
    """A run folder is held by a live job (its .lock)."""


class DataError(LoraReproError):
    """A data file is missing, empty or malformed (message names the file and line)."""


class TrainingDiverged(LoraReproError):
    """The loss became NaN or infinite (message names the step)."""


def one_line(exc: BaseException) -> str:
    """A single-line description of an exception, for records and terminal output."""
    text = " ".join(str(exc).split())
    if isinstance(exc, LoraReproError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RecordNotWritten(LoraReproError):
    """record.json could not be written (e.g. a full disk): the run's outcome is not on disk."""
