"""``--gpus`` as users of the LDM family write it, mapped to Lightning 2 ``accelerator``/``devices``.

PL 1.5 read ``--gpus 0`` as "zero GPUs" and ``--gpus 0,`` as "GPU 0"; the FAST README writes the
former and means the latter. Here every form names device *indices*:

==============================  ==============================
``--gpus``                      meaning
==============================  ==============================
absent, ``""``, ``none``, ``cpu``  CPU
``0`` or ``0,``                 GPU 0
``0,1`` / ``0,1,``              GPUs 0 and 1 (DDP)
``-1``                          every visible GPU (DDP if more than one)
==============================  ==============================

When no GPU is visible, a GPU request falls back to the CPU with a warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from utils.errors import UserError


@dataclass(frozen=True)
class DeviceChoice:
    accelerator: str
    devices: list[int] | int
    strategy: str = "auto"

    @property
    def num_devices(self) -> int:
        return len(self.devices) if isinstance(self.devices, list) else int(self.devices)


def parse_gpus(value: str | int | None, cuda_count: int | None = None) -> DeviceChoice:
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value is None:
        return DeviceChoice("cpu", 1)
    text = str(value).strip().lower()
    if text in ("", "none", "cpu"):
        return DeviceChoice("cpu", 1)
    if text in ("-1", "-1,", "all"):
        if cuda_count == 0:
            warnings.warn("--gpus -1: no GPU is visible, training on the CPU")
            return DeviceChoice("cpu", 1)
        ids = list(range(cuda_count))
    else:
        parts = [p for p in text.split(",") if p.strip() != ""]
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"--gpus '{value}': expected device indices like '0', '0,' or '0,1', or -1 for all") from None
        if not ids or any(i < 0 for i in ids):
            raise UserError(f"--gpus '{value}': device indices must be >= 0 (use -1 for all GPUs)")
        if len(set(ids)) != len(ids):
            raise UserError(f"--gpus '{value}': a device is listed twice")
    if cuda_count == 0:
        warnings.warn(f"--gpus {value}: no GPU is visible, training on the CPU")
        return DeviceChoice("cpu", 1)
    missing = [i for i in ids if i >= cuda_count]
    if missing:
        raise UserError(f"--gpus '{value}': device(s) {missing} do not exist ({cuda_count} GPU(s) visible)")
    return DeviceChoice("gpu", ids, "ddp" if len(ids) > 1 else "auto")
