"""Per-sample random streams.

Sample n draws all of its noise from a generator seeded with its own seed, so its result does not
depend on which other samples share its batch, nor on whether a run was resumed part-way.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    # CPU generators draw float32/float64 natively; narrower types are drawn in float32 then cast so
    # half-precision runs see the same noise as float32 runs.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class BatchRNG:
    """One CPU ``torch.Generator`` per sample; ``randn`` stacks their draws along a new batch dim."""

    def __init__(self, seeds: Sequence[int]):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("BatchRNG needs at least one seed")
        self.seeds = seeds
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_sample, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = tuple(shape_per_sample)
        draws = [torch.randn(shape, generator=g, dtype=_draw_dtype(dtype)) for g in self.generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def select(self, index: Sequence[int]) -> "BatchRNG":
        """A view on a subset of samples (shares the generators, so their streams continue)."""
        sub = BatchRNG.__new__(BatchRNG)
        sub.seeds = [self.seeds[i] for i in index]
        sub.generators = [self.generators[i] for i in index]
        return sub


class SharedRNG:
    """Whole-batch draws from one generator (or torch's global RNG when ``generator`` is None).

    Convenience only: a sample's noise then depends on the batch it was drawn in.
    """

    def __init__(self, batch_size: int, generator: torch.Generator | None = None):
        self.batch_size = int(batch_size)
        self.generator = generator

    def __len__(self) -> int:
        return self.batch_size

    def randn(self, shape_per_sample, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (self.batch_size, *tuple(shape_per_sample))
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        x = torch.randn(shape, generator=self.generator, device=gen_device, dtype=_draw_dtype(dtype))
        return x.to(device=device, dtype=dtype)


def as_batch_rng(rng, batch_size: int):
    """Normalise ``rng`` (BatchRNG, list of seeds, torch.Generator or None) for a batch of ``batch_size``."""
    if isinstance(rng, (BatchRNG, SharedRNG)):
        if len(rng) != batch_size:
            raise ValueError(f"rng covers {len(rng)} samples but the batch has {batch_size}")
        return rng
    if isinstance(rng, (list, tuple)):
        return as_batch_rng(BatchRNG(rng), batch_size)
    if rng is None or isinstance(rng, torch.Generator):
        return SharedRNG(batch_size, rng)
    raise TypeError(f"rng must be a BatchRNG, a list of seeds, a torch.Generator or None, not {type(rng).__name__}")
