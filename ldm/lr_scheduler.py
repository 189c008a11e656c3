"""Learning-rate multipliers for ``scheduler_config`` (CompVis names), used through ``LambdaLR``.

Each class is a callable ``schedule(step) -> multiplier of base lr``.
"""
from __future__ import annotations

import math


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from ``lr_start`` to ``lr_max``, then cosine decay to ``lr_min`` at ``max_decay_steps``."""

    def __init__(self, warm_up_steps: int, lr_min: float, lr_max: float, lr_start: float, max_decay_steps: int,
                 verbosity_interval: int = 0):
        if max_decay_steps <= warm_up_steps:
            raise ValueError("max_decay_steps must exceed warm_up_steps")
        self.warm_up_steps, self.max_decay_steps = warm_up_steps, max_decay_steps
        self.lr_min, self.lr_max, self.lr_start = lr_min, lr_max, lr_start
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int) -> float:
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"current step: {n}")
        if n < self.warm_up_steps:
            return (self.lr_max - self.lr_start) / self.warm_up_steps * n + self.lr_start
        t = min((n - self.warm_up_steps) / (self.max_decay_steps - self.warm_up_steps), 1.0)
        return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))

    __call__ = schedule


class LambdaLinearScheduler:
    """Piecewise: linear warm-up ``f_start → f_max`` over ``warm_up_steps``, then linear ``f_max → f_min``
    until the cycle length (``cycle_lengths``); lists allow several cycles, as in CompVis."""

    def __init__(self, warm_up_steps, f_min, f_max, f_start, cycle_lengths, verbosity_interval: int = 0):
        lists = [list(x) if isinstance(x, (list, tuple)) or hasattr(x, "__len__") else [x]
                 for x in (warm_up_steps, f_min, f_max, f_start, cycle_lengths)]
        if len({len(x) for x in lists}) != 1:
            raise ValueError("warm_up_steps, f_min, f_max, f_start and cycle_lengths need the same length")
        self.warm_up_steps, self.f_min, self.f_max, self.f_start, self.cycle_lengths = lists
        self.cum_cycles = [0]
        for c in self.cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + c)
        self.verbosity_interval = verbosity_interval

    def _cycle(self, n: int) -> int:
        for i, end in enumerate(self.cum_cycles[1:]):
            if n < end:
                return i
        return len(self.cycle_lengths) - 1

    def schedule(self, n: int) -> float:
        c = self._cycle(n)
        n = n - self.cum_cycles[c]
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"current step: {n}, recent lr-multiplier: {self.f_max[c]}, current cycle {c}")
        if n < self.warm_up_steps[c]:
            return (self.f_max[c] - self.f_start[c]) / self.warm_up_steps[c] * n + self.f_start[c]
        return self.f_min[c] + (self.f_max[c] - self.f_min[c]) * (self.cycle_lengths[c] - n) / self.cycle_lengths[c]

    __call__ = schedule
