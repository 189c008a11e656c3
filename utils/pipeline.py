"""Overlap a producer (the network) with its consumers (reading inputs, writing PNGs).

``Pipeline.prefetch(fn, *args)`` runs ``fn`` on one loader thread and returns its future;
``Pipeline.write(fn, *args)`` queues ``fn`` on the writer threads. At most ``max_pending`` writes wait
at any time (the producer blocks on the oldest), so memory stays bounded and a failing write (a full
disk) stops the producer within a few pairs: its exception is raised in the producer's thread, the
queued writes that have not started are dropped, and the ones running finish (each file is written
atomically, so nothing half-written is left). Leaving the ``with`` block waits for every write.
"""
from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor


class Pipeline:
    def __init__(self, writers: int = 1, max_pending: int | None = None):
        self.writers = max(1, int(writers))
        self.max_pending = max_pending or 4 * self.writers
        self._pending: collections.deque[Future] = collections.deque()

    def __enter__(self) -> "Pipeline":
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="fast-load")
        self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="fast-write")
        return self

    def prefetch(self, fn, *args) -> Future:
        return self._loader.submit(fn, *args)

    def write(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()
        while self._pending and self._pending[0].done():  # surface a failure early
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        while self._pending:
            self._pending.popleft().result()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            cancel = exc_type is not None or bool(self._pending)
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._loader.shutdown(wait=True, cancel_futures=True)
