"""Errors the user can fix: the command line prints them as one line (exit code 2)."""
from ..data import DataError
from ..train.config import ConfigError


class UserError(Exception):
    """An error of the command line the user can fix (a bad flag, a missing file)."""


# What `clustr-fast` prints as one line: its own errors and the library's errors of bad input.
ONE_LINE_ERRORS = (UserError, ConfigError, DataError)
