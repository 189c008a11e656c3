"""One-line errors for command-line entry points.

Bad user input (a missing file, an unknown key, a wrong value) raises FileNotFoundError, KeyError or
ValueError somewhere below; a user should see one line naming the culprit, not a traceback.
``FAST_DEBUG=1`` shows the full traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

USER_ERRORS = (FileNotFoundError, NotADirectoryError, KeyError, ValueError)


def run_cli(prog: str, fn: Callable[[], int | None]) -> int:
    try:
        rc = fn()
        return 0 if rc is None or not isinstance(rc, int) else rc
    except USER_ERRORS as e:
        if os.environ.get("FAST_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
