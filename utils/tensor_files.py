"""Weights as ``.safetensors``: a plain tensor format that cannot run code and loads without pickle.

Our artifacts are written both as ``.safetensors`` and as ``.pt`` (state dicts; what the official
scripts and older runs read). Loaders prefer ``.safetensors`` and fall back to ``.pt``, which also
covers the official pickled files (through ``utils.safe_load``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.atomic import atomic_path
from utils.errors import UserError


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Atomically write ``{name: tensor}`` (detached, contiguous CPU copies) to ``path``."""
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a ``.safetensors`` file; a damaged file is a one-line UserError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise UserError(f"cannot read {path}: not a valid safetensors file ({str(e).splitlines()[0][:160]})") from None


def preferred(path_pt: str | os.PathLike) -> Path:
    """``x.safetensors`` when it exists beside ``x.pt``, else ``x.pt``."""
    p = Path(path_pt)
    st = p.with_suffix(".safetensors")
    return st if st.is_file() else p
