"""The one exception type for bad user input.

A ``UserError`` is a mistake the user can fix (a missing file, a wrong flag, a YAML key that does not
exist); command-line entry points print it as one line naming the file, key or flag, and exit with 2.
Every other exception is a bug and keeps its traceback. ``UserError`` subclasses ``ValueError`` so
library callers that catch ``ValueError`` keep working; ``InputNotFound`` is also a
``FileNotFoundError``.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message is one line and names the file, key or flag."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # one line, whatever the caller formatted
        super().__init__(message)


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""
