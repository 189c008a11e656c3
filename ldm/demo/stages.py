"""Running the demo's stages: one console line each (progress bar, ETA), full logs on disk, the
wall time and peak memory of every stage, and skipping of stages a previous run finished.

A stage is a child process whose stdout and stderr go to ``<out>/logs/console/<stage>.log``. Its
progress comes from ``FAST_PROGRESS_FILE`` (``utils/progress.py``; ``main.py`` and the segmenter write
it) or from a function that counts finished outputs (generated pairs). When a stage succeeds, a
marker ``<out>/stages/<stage>.json`` records its settings fingerprint, wall time and peak RSS; a rerun
with the same settings whose outputs are still there skips it and reports the earlier numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from utils.atomic import write_text_atomic
from utils.errors import UserError
from utils.progress import ENV as PROGRESS_ENV
from utils.progress import bar, eta, fmt_seconds, read

Progress = Callable[[], Optional[tuple]]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    name: str
    seconds: float
    peak_rss_mb: Optional[float]
    skipped: bool = False
    unit: str = ""
    total: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "peak_rss_mb": self.peak_rss_mb,
                "skipped": self.skipped, "unit": self.unit, "total": self.total, **self.extra}


class StageRunner:
    """Runs stages in order and keeps their records (``records``)."""

    def __init__(self, out: Path, stream=None, interactive: Optional[bool] = None, width: int = 28,
                 poll: float = 0.5, line_every: float = 60.0):
        self.out = Path(out)
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.width, self.poll, self.line_every = width, poll, line_every
        self.records: list[StageRecord] = []
        self.logs = self.out / "logs" / "console"
        self.markers = self.out / "stages"

    # ---------------------------------------------------------------- markers
    def _marker(self, name: str) -> Path:
        return self.markers / f"{slug(name)}.json"

    def _read_marker(self, name: str) -> Optional[dict]:
        """Stage ``name``'s finished marker, or None (never finished, or unreadable)."""
        p = self._marker(name)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def finished(self, name: str, settings: dict) -> Optional[dict]:
        doc = self._read_marker(name)
        return doc if doc is not None and doc.get("fingerprint") == fingerprint(settings) else None

    def stale(self, name: str, settings: dict) -> bool:
        """A previous run finished stage ``name`` with other settings (its outputs are out of date); False
        when it never finished (interrupted work resumes) or finished with these settings."""
        doc = self._read_marker(name)
        return doc is not None and doc.get("fingerprint") != fingerprint(settings)

    def _mark(self, rec: StageRecord, settings: dict) -> None:
        self.markers.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self._marker(rec.name), json.dumps(
            dict(rec.as_dict(), fingerprint=fingerprint(settings), finished=time.strftime("%Y-%m-%d %H:%M:%S")),
            indent=1) + "\n")

    # ---------------------------------------------------------------- display
    def _write(self, text: str, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, label: str, done, total, unit: str, elapsed: float, final: bool = False,
              rss: Optional[float] = None, note: str = "") -> str:
        name = f"{label:<44}"
        if final:
            mem = f"peak {rss:,.0f} MB" if rss else "peak n/a"
            count = f"{total} {unit}" if total else ""
            return f"  {name} done  {fmt_seconds(elapsed):>7}  {mem:>14}  {count}{note}"
        if done is None or not total:
            return f"  {name} [{'.' * self.width}]  {fmt_seconds(elapsed)} elapsed"
        frac = done / total
        return (f"  {name} [{bar(frac, self.width)}] {done}/{total} {unit}  {fmt_seconds(elapsed)} elapsed, "
                f"ETA {fmt_seconds(eta(done, total, elapsed))}")

    # ---------------------------------------------------------------- running
    def skip(self, name: str, marker: dict, why: str = "done in an earlier run") -> StageRecord:
        rec = StageRecord(name, float(marker.get("seconds", 0.0)), marker.get("peak_rss_mb"), skipped=True,
                          unit=marker.get("unit", ""), total=marker.get("total"))
        self._write(f"  {name:<44} skipped ({why}: {fmt_seconds(rec.seconds)}, "
                    f"peak {rec.peak_rss_mb or 0:,.0f} MB)", True)
        self.records.append(rec)
        return rec

    def run(self, name: str, cmd: list[str], settings: dict, total: Optional[int] = None, unit: str = "steps",
            progress: Optional[Progress] = None, cwd=None, done: Optional[Callable[[], bool]] = None,
            extra: Optional[dict] = None) -> StageRecord:
        """Run ``cmd`` as stage ``name`` unless a finished marker with the same ``settings`` exists and
        ``done()`` (the outputs are still there) agrees."""
        marker = self.finished(name, settings)
        if marker is not None and (done is None or done()):
            return self.skip(name, marker)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.markers.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{slug(name)}.log"
        prog_path = self.markers / f"{slug(name)}.progress"
        if prog_path.exists():
            prog_path.unlink()
        env = dict(os.environ, **{PROGRESS_ENV: str(prog_path), "PYTHONUNBUFFERED": "1"})
        t0 = time.perf_counter()
        last_line = t0
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
            status, usage = None, None
            try:
                while status is None:
                    pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        status, usage = st, ru
                        break
                    time.sleep(self.poll)
                    now = time.perf_counter()
                    d_t = progress() if progress is not None else read(prog_path)
                    d, t = (d_t if d_t else (None, total))
                    t = t or total
                    if self.interactive or now - last_line >= self.line_every:
                        self._write(self._line(name, d, t, unit, now - t0), False)
                        last_line = now
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                self._write(f"  {name}: interrupted; run the demo again to resume", True)
                raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        rss = usage.ru_maxrss / 1024.0 if usage is not None else None      # Linux: KiB
        if proc.returncode != 0:
            self._write(f"  {name} FAILED (exit code {proc.returncode}) after {fmt_seconds(seconds)}", True)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            self.stream.write("    " + "\n    ".join(tail) + "\n")
            raise UserError(f"stage '{name}' failed (exit code {proc.returncode}); full log: {log_path}; "
                            "run the demo again to resume")
        rec = StageRecord(name, seconds, rss, unit=unit, total=total, extra=dict(extra or {}))
        self._write(self._line(name, total, total, unit, seconds, final=True, rss=rss), True)
        self._mark(rec, settings)
        if prog_path.exists():
            prog_path.unlink()
        self.records.append(rec)
        return rec

    def record_inline(self, name: str, seconds: float, settings: dict, unit: str = "", total=None) -> StageRecord:
        """A stage that ran in this process (no separate peak memory)."""
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        rec = StageRecord(name, seconds, rss, unit=unit, total=total)
        self._write(self._line(name, total, total, unit, seconds, final=True, rss=rss), True)
        self._mark(rec, settings)
        self.records.append(rec)
        return rec

    def table(self) -> str:
        lines = ["| stage | wall time | peak RSS (MB) | work | |", "|---|---|---|---|---|"]
        for r in self.records:
            work = f"{r.total} {r.unit}" if r.total else ""
            lines.append(f"| {r.name} | {fmt_seconds(r.seconds)} | "
                         f"{'n/a' if r.peak_rss_mb is None else f'{r.peak_rss_mb:,.0f}'} | {work} | "
                         f"{'skipped (time of the earlier run)' if r.skipped else ''} |")
        total = sum(r.seconds for r in self.records)
        peak = max((r.peak_rss_mb or 0 for r in self.records), default=0)
        lines.append(f"| **all stages** | **{fmt_seconds(total)}** | **{peak:,.0f}** (max) | | |")
        return "\n".join(lines)
