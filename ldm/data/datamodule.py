"""``DataModuleFromConfig``: the CompVis data section (``data.params.{train,validation,test}``) as a
LightningDataModule. Each split is a config node built with ``instantiate_from_config``.

A loader method exists only for the splits that are configured, so Lightning skips validation or
testing when their node is absent (as in CompVis LDM).

The training loader is resumable mid-epoch, exactly: its order is a pure function of ``(seed, epoch)``
(``EpochSampler``), every item is produced under ``random`` / ``numpy`` / ``torch`` generators seeded
by ``(seed, epoch, index)`` (random flips and caption templates; the global generators are left as they
were), and the loader's own generator draws the worker base seeds. So the batches never depend on how
often the global generators were used before, and ``state_dict`` (the epoch and the batches the
trainer has finished in it, saved by Lightning in the checkpoint) is all a resumed run needs to
continue with the very next batch.
"""
from __future__ import annotations

import os
import random
from functools import partial
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ldm.util import instantiate_from_config
from utils.errors import UserError

__all__ = ["DataModuleFromConfig", "EpochSampler", "ResumableDataLoader", "SeededItems", "WrappedDataset",
           "worker_init_fn"]


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed (base seed + id)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


class WrappedDataset(Dataset):
    """Wraps any object with ``__len__`` and ``__getitem__`` into a torch Dataset."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a permutation that is a pure function of ``(seed, epoch)`` (or
    ``range(n)`` without shuffling), optionally starting ``start`` items into the epoch.

    Lightning calls ``set_epoch``; a sampler that runs through a whole epoch also moves on by itself
    (for wrappers that do not forward ``set_epoch``, such as Lightning's DDP sampler wrapper).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        seed = int(np.random.SeedSequence([self.seed % 2 ** 63, int(epoch)]).generate_state(2, np.uint64)[0] >> 1)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.start = 0
        for index in self.order(epoch)[start:]:
            yield epoch, index
        self.epoch = epoch + 1


class SeededItems(Dataset):
    """``dataset[index]`` under ``random``, ``numpy`` and ``torch`` seeded by ``(seed, epoch, index)``;
    the global generators are restored afterwards. Keys are the ``(epoch, index)`` pairs of
    ``EpochSampler``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        s = np.random.SeedSequence([self.seed % 2 ** 63, int(epoch), int(index)]).generate_state(4)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(int(s[0]))
            np.random.seed(int(s[1]))
            torch.manual_seed((int(s[2]) << 32) | int(s[3]))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableDataLoader(DataLoader):
    """A DataLoader over ``SeededItems`` with an ``EpochSampler`` and Lightning's stateful-loader
    interface: ``state_dict`` records the epoch and how many batches the trainer finished in it
    (``progress()``), ``load_state_dict`` makes the next iterator start with the batch after them."""

    def __init__(self, *args, progress: Callable[[], tuple[int, int]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def _epoch_sampler(self) -> EpochSampler | None:
        return self.sampler if isinstance(self.sampler, EpochSampler) else None

    def state_dict(self) -> dict:
        sampler = self._epoch_sampler()
        if sampler is None or self.progress is None:
            return {}
        epoch, batches_done = self.progress()
        return {"seed": sampler.seed, "epoch": int(epoch), "batches_done": int(batches_done),
                "batch_size": int(self.batch_size), "num_batches": len(self)}

    def load_state_dict(self, state: dict) -> None:
        sampler = self._epoch_sampler()
        if not state or sampler is None:
            return
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= int(state["num_batches"]):  # saved at the end of an epoch: the next one starts
            epoch, done = epoch + 1, 0
        sampler.seed = int(state["seed"])
        sampler.set_epoch(epoch)
        sampler.start = min(done * int(state["batch_size"]), sampler.n)


def default_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else torch's initial seed."""
    env = os.environ.get("PL_GLOBAL_SEED")
    return int(env) if env is not None else int(torch.initial_seed())


class DataModuleFromConfig(pl.LightningDataModule):
    def __init__(self, batch_size: int, train: Optional[Mapping] = None, validation: Optional[Mapping] = None,
                 test: Optional[Mapping] = None, num_workers: Optional[int] = 0,
                 shuffle_val_dataloader: bool = False, wrap: bool = False, shuffle_test_loader: bool = False,
                 drop_last: bool = False, seed: Optional[int] = None):
        super().__init__()
        self.seed = seed
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"data.params.batch_size must be >= 1, got {batch_size}")
        self.num_workers = int(num_workers) if num_workers is not None else 0
        self.dataset_configs: dict[str, Mapping] = {}
        self.wrap = bool(wrap)
        self.drop_last = bool(drop_last)
        self.datasets: dict[str, Dataset] = {}
        if train is not None:
            self.dataset_configs["train"] = train
            self.train_dataloader = self._train_dataloader
        if validation is not None:
            self.dataset_configs["validation"] = validation
            self.val_dataloader = partial(self._val_dataloader, shuffle=shuffle_val_dataloader)
        if test is not None:
            self.dataset_configs["test"] = test
            self.test_dataloader = partial(self._test_dataloader, shuffle=shuffle_test_loader)

    def prepare_data(self) -> None:
        """Nothing to download: datasets are local folders."""

    def setup(self, stage: Optional[str] = None) -> None:
        for split, cfg in self.dataset_configs.items():
            if split in self.datasets:
                continue
            if not isinstance(cfg, Mapping) or "target" not in cfg:
                raise UserError(f"data.params.{split} needs a 'target' (and 'params') node")
            ds = instantiate_from_config(cfg)
            self.datasets[split] = WrappedDataset(ds) if self.wrap else ds

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.setup()
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        ds = self._dataset(split)
        iterable = isinstance(ds, IterableDataset)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                          shuffle=shuffle and not iterable, drop_last=drop_last,
                          worker_init_fn=worker_init_fn if self.num_workers > 0 else None,
                          persistent_workers=self.num_workers > 0)

    def _train_progress(self) -> tuple[int, int]:
        """(epoch, batches finished in it) of the attached trainer's fit loop."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        if isinstance(ds, IterableDataset):
            return self._loader("train", shuffle=True, drop_last=self.drop_last)
        seed = default_seed() if self.seed is None else int(self.seed)
        return ResumableDataLoader(SeededItems(ds, seed), batch_size=self.batch_size,
                                   sampler=EpochSampler(len(ds), seed, shuffle=True),
                                   num_workers=self.num_workers, drop_last=self.drop_last,
                                   worker_init_fn=worker_init_fn if self.num_workers > 0 else None,
                                   persistent_workers=self.num_workers > 0,
                                   generator=torch.Generator().manual_seed(seed % 2 ** 63),
                                   progress=self._train_progress)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle=shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle=shuffle)
