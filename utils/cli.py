"""Command-line entry points: user errors become one line and exit code 2; bugs keep their traceback.

``UserError`` (``utils.errors``) is what the library raises for input the user can fix. Out-of-space
and permission errors while writing outputs are also the user's to fix, and are reported the same
way. Anything else is a programming error and propagates with its traceback. ``FAST_DEBUG=1`` shows
the traceback of user errors too.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

from utils.errors import UserError

# OS errors a user fixes (disk full, read-only or forbidden output folder), reported in one line
_USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                   errno.EISDIR, errno.EEXIST}


def user_message(e: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``e`` is a bug."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno in _USER_OS_ERRNOS:
        where = f": {e.filename}" if e.filename else ""
        return f"{os.strerror(e.errno).lower()}{where}"
    return None


def run_cli(prog: str, fn: Callable[[], int | None]) -> int:
    try:
        rc = fn()
        return 0 if rc is None or not isinstance(rc, int) else rc
    except (UserError, OSError) as e:
        msg = user_message(e)
        if msg is None or os.environ.get("FAST_DEBUG"):
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error contract: a bad flag is a ``UserError`` (one line naming the
    flag, exit code 2 through ``run_cli``) instead of argparse's usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")
