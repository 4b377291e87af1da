"""Errors a user sees: one base, :class:`RetailRecError`, and a subclass for each kind.

This is the ground floor: it imports nothing of ours, and every layer raises these. A
``RetailRecError`` carries a message of one line that says what went wrong and what to do; the
command line prints that line and exits 1, the API turns the serving ones into 4xx answers.
Anything else that escapes is a bug: ``retailrec --debug`` shows its traceback.
"""

from __future__ import annotations

from pathlib import Path


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (a user sees one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RetailRecError(Exception):
    """A failure the user can act on; its message is one line."""


class UsageError(RetailRecError):
    """An option or argument has a value the product does not accept (a scale, a model name,
    an interval)."""


class DataFileError(RetailRecError):
    """A data file is missing or cannot be read."""

    @classmethod
    def unreadable(cls, path: Path | str, exc: BaseException) -> DataFileError:
        """``path: cannot be read: <the first line of exc>``."""
        return cls(f"{path}: cannot be read: {error_line(exc)}")


class DownloadError(RetailRecError):
    """The download cannot happen; the message says what to do instead."""


class StoreError(RetailRecError):
    """The feature store is missing, newer than this code, or cannot be opened."""


class NoDataError(RetailRecError):
    """The feature store holds no events (or none before the asked time) to work from."""


class LogTooShortError(RetailRecError):
    """The log is too short, or has too few returning visitors, for any split."""


class RegistryError(RetailRecError):
    """A registry operation cannot proceed."""


class NoChampionError(RegistryError):
    """No version holds the champion alias yet."""


class BundleError(RetailRecError):
    """A model bundle does not load, or does not answer."""


class UnknownEntityError(RetailRecError):
    """An item or category that the served catalogue does not know."""


class BacktestError(RetailRecError):
    """What the backtest cannot do."""


class RetrainRunningError(RetailRecError):
    """A retraining run is already going."""


class SparkJobError(RetailRecError):
    """A Spark job failed (out of memory, a lost executor): the cause, and what to change."""
