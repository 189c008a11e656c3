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

When no GPU is visible, a GPU request falls back to the CPU with a warning here; ``main.py`` refuses
such a request before it gets here (``ldm.config_check.check_gpus``). ``check_device`` does the same
for the ``--device`` flags of the other commands.
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


def check_device(value, flag: str = "--device"):
    """A torch device name the user gave (``cpu``, ``cuda``, ``cuda:1``, ``mps``) → ``torch.device``.

    ``UserError`` naming ``flag`` for a name torch does not know (``gpu``) and for a device this
    machine does not have (``cuda`` where torch sees no GPU, ``cuda:3`` with two), instead of torch's
    RuntimeError/AssertionError at the first tensor moved there. ``None`` stays None (the caller's default)."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(str(value).strip())
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} {value!r}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{flag} {value}: this machine has no CUDA GPU (torch sees none); use {flag} cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"{flag} {value}: no such GPU ({count} visible: cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"{flag} {value}: this machine has no MPS device; use {flag} cpu")
    return device
