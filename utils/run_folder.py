"""A training run's folder: ``<run>/checkpoints`` (artifacts) beside ``<run>/configs`` (the merged config
``main.py`` saved as ``<timestamp>-project.yaml``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from utils.errors import InputNotFound


def find_run_config(pt_path, config: Optional[str] = None) -> Path:
    """The config a run saved (``<run>/configs/*-project.yaml``, newest), or ``config`` when given."""
    if config:
        if not os.path.isfile(config):
            raise InputNotFound(f"--config not found: {config}")
        return Path(config)
    cfg_dir = Path(pt_path).parent / "configs"
    found = sorted(cfg_dir.glob("*-project.yaml"))
    if not found:
        raise InputNotFound(f"no --config given and no saved config in {cfg_dir}")
    return found[-1]
