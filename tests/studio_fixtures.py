"""The studio tests' shared world: a dataset and two tiny trained runs side by side (``tests.run_fixture``)."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import yaml

from tests.run_fixture import make_dataset, make_run

SIZE = 32  # the fixture run's image size (latent 8×8: one latent cell is 4×4 px)


def make_world(work: Path) -> tuple[Path, Path, Path]:
    """``(work, data, checkpoints)``: ``work/run`` (brick+scratch) and ``work/run-crack`` (brick+crack)."""
    data = make_dataset(work / "texture-ad", defects=("scratch", "crack"))
    ckdir = make_run(work, data, names=("brick+scratch", "brick+crack"))
    crack = work / "run-crack"
    shutil.copytree(work / "run", crack)
    cfg_path = crack / "configs" / "now-project.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"]["params"]["train"]["params"]["defect"] = "crack"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return work, data, ckdir


def normal_path(data: Path) -> Path:
    return sorted((data / "brick" / "train" / "good").iterdir())[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
