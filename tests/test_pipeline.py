"""utils.pipeline: writes overlap the producer, a failing write stops it, nothing queued runs after."""
from __future__ import annotations

import errno
import threading
import time

import pytest

from utils.pipeline import Pipeline


def test_every_write_runs_and_prefetch_returns_its_value():
    done = []
    lock = threading.Lock()

    def write(n):
        time.sleep(0.001)
        with lock:
            done.append(n)

    with Pipeline(writers=3) as pipe:
        assert pipe.prefetch(lambda a, b: a + b, 2, 3).result() == 5
        for n in range(50):
            pipe.write(write, n)
    assert sorted(done) == list(range(50))


def test_a_failing_write_stops_the_producer_within_the_pending_bound():
    started = []
    gate = threading.Event()

    def write(n):
        started.append(n)
        if n == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        gate.wait(0.01)

    produced = 0
    with pytest.raises(OSError, match="No space left"):
        with Pipeline(writers=1, max_pending=4) as pipe:
            for n in range(1000):
                pipe.write(write, n)
                produced += 1
    # the producer learnt of the failure after at most max_pending more items, and the queued writes
    # behind the failure were dropped, not run
    assert produced <= 3 + 4 + 1
    assert max(started) <= produced


def test_an_error_in_the_producer_drops_the_queued_writes():
    ran = []
    with pytest.raises(RuntimeError, match="network"):
        with Pipeline(writers=1, max_pending=100) as pipe:
            for n in range(20):
                pipe.write(lambda n=n: (time.sleep(0.005), ran.append(n)))
            raise RuntimeError("network failed")
    assert len(ran) < 20
