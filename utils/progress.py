"""Progress that a parent process can read: ``FAST_PROGRESS_FILE`` and a plain-text bar.

A long child (``main.py``, a segmenter run) calls ``report(done, total)``; when the environment
variable ``FAST_PROGRESS_FILE`` names a file, the latest ``done total`` is written there (atomically,
at most every ``interval`` seconds, and always for the last step). ``scripts/run_demo.py`` reads it to
draw one progress line per stage, whatever the child prints to its log.
"""
from __future__ import annotations

import os
import time

ENV = "FAST_PROGRESS_FILE"

_last: dict = {"t": 0.0}


def report(done: int, total: int, interval: float = 0.5, path: str | None = None) -> bool:
    """Write ``done total`` to the progress file; returns whether it wrote."""
    path = path or os.environ.get(ENV)
    if not path or total <= 0:
        return False
    now = time.monotonic()
    if done < total and now - _last["t"] < interval:
        return False
    _last["t"] = now
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{int(done)} {int(total)}\n")
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def read(path) -> tuple[int, int] | None:
    """``(done, total)`` from a progress file, or None while there is none (or it is being replaced)."""
    try:
        with open(path) as f:
            parts = f.read().split()
        return int(parts[0]), int(parts[1])
    except (OSError, ValueError, IndexError):
        return None


def fmt_seconds(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(1.0, max(0.0, fraction))
    full = int(fraction * width)
    return "#" * full + "-" * (width - full)


def eta(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the average rate so far (None before any progress)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed * (total - done) / done
