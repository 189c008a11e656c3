"""``DataModuleFromConfig``: the CompVis data section (``data.params.{train,validation,test}``) as a
LightningDataModule. Each split is a config node built with ``instantiate_from_config``.

A loader method exists only for the splits that are configured, so Lightning skips validation or
testing when their node is absent (as in CompVis LDM). Worker seeds derive from the loader's base
seed (set by ``seed_everything``), which makes random flips and template choices reproducible.
"""
from __future__ import annotations

import random
from functools import partial
from typing import Any, Mapping, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ldm.util import instantiate_from_config
from utils.errors import UserError

__all__ = ["DataModuleFromConfig", "WrappedDataset", "worker_init_fn"]


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


class DataModuleFromConfig(pl.LightningDataModule):
    def __init__(self, batch_size: int, train: Optional[Mapping] = None, validation: Optional[Mapping] = None,
                 test: Optional[Mapping] = None, num_workers: Optional[int] = 0,
                 shuffle_val_dataloader: bool = False, wrap: bool = False, shuffle_test_loader: bool = False,
                 drop_last: bool = False):
        super().__init__()
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

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=self.drop_last)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle=shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle=shuffle)
