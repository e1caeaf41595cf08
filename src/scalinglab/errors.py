"""One error hierarchy: every mistake in the user's input is a `ScalinglabError`.

The message of each is one line that names the file (or flag), the field and what is
allowed; the command line prints it without a traceback and exits with code 2. The classes
also derive from the builtin the caller would expect (`ValueError` for bad values, `OSError`
for files, `RuntimeError` for a missing service), so `except ValueError` keeps working.
"""

from __future__ import annotations


class ScalinglabError(Exception):
    """Base of every user-facing error; the CLI catches this one class."""


class ConfigError(ScalinglabError, ValueError):
    """A trial or sweep config that does not validate: `file:line: field: message`."""


class DataError(ScalinglabError, ValueError):
    """Bad data config or input; names the field, e.g. `data.path: ...`."""


class FitInputError(ScalinglabError, ValueError):
    """A results table a law cannot be fitted to (missing columns, too few points, ...)."""


class TrialError(ScalinglabError, ValueError):
    """A trial that cannot run as configured (bad budget, directory of another trial, ...)."""


class RunDirError(ScalinglabError, OSError):
    """A run directory that cannot be read or written."""


class DiskFullError(RunDirError):
    """A write failed for lack of space (or quota): the trial keeps its last complete
    checkpoint and resumes from it once space is freed."""


class SweepError(ScalinglabError, RuntimeError):
    """A sweep that cannot run (unwritable directory, every trial invalid, ...)."""


class ExecutorUnavailable(ScalinglabError, RuntimeError):
    """The executor asked for is not installed or not reachable."""


__all__ = [
    "ConfigError",
    "DataError",
    "DiskFullError",
    "ExecutorUnavailable",
    "FitInputError",
    "RunDirError",
    "ScalinglabError",
    "SweepError",
    "TrialError",
]
