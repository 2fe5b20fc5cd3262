"""Errors the user can fix: the CLI prints them as one line (exit code 2)."""


class UserError(Exception):
    """An error the user can fix (bad argument, missing data file)."""
