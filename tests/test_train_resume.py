"""Kill-and-resume with real processes: ``main.py`` is SIGKILLed after a checkpoint, resumed with
``-r <logdir> -t --max_steps N``, and must end bit-identical to an uninterrupted run of N steps:
trainable tensors, optimizer state, global step, random-generator state and the FAST artifacts
``embeddings_gs-N.pt``, ``FARM-N.pt``, ``fine-N.pt`` of every exported step.

The killed run is ``main.main`` with one extra callback that, once checkpoint k is on disk, writes a
marker and stalls at the start of the next batch; the test SIGKILLs it there, so the kill point is
exact and the run never reaches N on its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ldm.data.texture_ad import build_texture_ad
from ldm.util import instantiate_from_config
from tests.tiny_configs import fast_config, ldm_config

ROOT = Path(__file__).resolve().parents[1]
N_STEPS, EVERY = 8, 2
TRAINABLE = ("FARM.", "fine.", "embedding_manager.")

STALL_DRIVER = r"""
import os, sys, time
sys.path.insert(0, os.getcwd())
import pytorch_lightning as pl
import main

STOP_AT, MARK = int(os.environ["RESUME_TEST_STOP_AT"]), os.environ["RESUME_TEST_MARK"]


class Stall(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == STOP_AT:  # checkpoint STOP_AT is on disk: wait for the SIGKILL
            with open(MARK, "w") as f:
                f.write(str(trainer.global_step))
            while True:
                time.sleep(1)


_init = pl.Trainer.__init__


def _with_stall(self, *args, callbacks=None, **kwargs):
    _init(self, *args, callbacks=list(callbacks or []) + [Stall()], **kwargs)


pl.Trainer.__init__ = _with_stall
sys.exit(main.main(sys.argv[1:]))
"""


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    env.pop("PL_GLOBAL_SEED", None)
    return env


def _run_main(args, log: Path):
    with open(log, "w") as out:
        rc = subprocess.call([sys.executable, "main.py", *args], cwd=ROOT, env=_env(), stdout=out,
                             stderr=subprocess.STDOUT, timeout=300)
    assert rc == 0, log.read_text()[-3000:]


def _run_and_kill_after(args, stop_at: int, work: Path) -> None:
    mark = work / f"stalled-{stop_at}"
    log = work / f"killed-{stop_at}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", STALL_DRIVER, *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT,
                                env=_env(RESUME_TEST_STOP_AT=str(stop_at), RESUME_TEST_MARK=str(mark)))
        try:
            deadline = time.monotonic() + 300
            while not mark.exists():
                assert proc.poll() is None, f"exited with {proc.returncode} before step {stop_at}:\n" + \
                    log.read_text()[-3000:]
                assert time.monotonic() < deadline, "timed out waiting for the stall marker"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    data = work / "texture-ad"
    # 9 scratches -> 3 on the generator side; x2 repeats = 6 items = 3 batches of 2 per epoch
    build_texture_ad(data, size=32, train_good=2, test_good=1, per_defect=9, textures=["brick"],
                     defects=["scratch"])
    torch.manual_seed(0)
    backbone = instantiate_from_config(ldm_config())
    torch.save({"state_dict": backbone.state_dict()}, work / "backbone.ckpt")
    configs = {}
    for frozen in (True, False):
        model = fast_config(names=[], save_frozen_weights=frozen)
        model["params"]["personalization_config"]["params"].pop("names")
        train = {"target": "ldm.data.anomaly.AnomalyDataset",
                 "params": {"root": "unused", "category": "x", "defect": "y", "size": 32, "repeats": 2,
                            "flip_p": 0.5, "caption_template": ["Anomaly {}", "a photo of {} damage"]}}
        cfg = {"model": model,
               "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                        "params": {"batch_size": 2, "num_workers": 0, "train": train}},
               "lightning": {"modelcheckpoint": {"params": {"every_n_train_steps": EVERY}},
                             "callbacks": {"image_logger": {"params": {"batch_frequency": 1000, "disabled": True}}},
                             "trainer": {"max_steps": N_STEPS, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                                         "enable_model_summary": False, "enable_progress_bar": False}}}
        path = work / f"fast-frozen-{frozen}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs[frozen] = path
    return work, data, configs


def _fresh_args(setup, frozen: bool, folder: str):
    work, data, configs = setup
    return ["--base", str(configs[frozen]), "-t", "--no-test", "-l", str(work / "logs"), "-lf", folder,
            "--actual_resume", str(work / "backbone.ckpt"), "--gpus", "none", "-s", "23",
            "--mvtec_path", str(data / "brick" / "ground_truth" / "scratch") + "/", "--init_word", "scratch"]


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run of N_STEPS steps (save_frozen_weights: true)."""
    work = setup[0]
    _run_main(_fresh_args(setup, True, "reference"), work / "reference.log")
    return work / "logs" / "reference"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_tree(a, b, where: str):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(set(a) ^ set(b))[:10])
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _compare_with_reference(run_dir: Path, ref_dir: Path, frozen: bool):
    got, ref = _load(run_dir / "checkpoints" / "last.ckpt"), _load(ref_dir / "checkpoints" / "last.ckpt")
    assert got["global_step"] == ref["global_step"] == N_STEPS
    assert got["epoch"] == ref["epoch"]
    sd, ref_sd = got["state_dict"], ref["state_dict"]
    trainable = sorted(k for k in ref_sd if k.startswith(TRAINABLE))
    assert trainable and {k.split(".")[0] for k in trainable} == {"FARM", "fine", "embedding_manager"}
    for k in trainable:
        assert torch.equal(sd[k], ref_sd[k]), k
    if frozen:
        assert set(sd) == set(ref_sd)
        for k in ref_sd:
            assert torch.equal(sd[k], ref_sd[k]), k
    else:  # the frozen backbone is not in the checkpoint; it came back from --actual_resume
        assert got["frozen_weights_source"].endswith("backbone.ckpt")
        assert not any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model."))
                       for k in sd)
        assert set(trainable) <= set(sd)
    _assert_same_tree(got["optimizer_states"], ref["optimizer_states"], "optimizer_states")
    steps = {int(s["step"]) for s in got["optimizer_states"][0]["state"].values()}
    assert steps == {N_STEPS}
    _assert_same_tree(got["lr_schedulers"], ref["lr_schedulers"], "lr_schedulers")
    _assert_same_tree(got["callbacks"]["RNGStateCallback"], ref["callbacks"]["RNGStateCallback"], "rng")
    # the FAST artifacts of every exported step, written partly before the kill and partly after
    ck, ref_ck = run_dir / "checkpoints", ref_dir / "checkpoints"
    for step in range(EVERY, N_STEPS + 1, EVERY):
        for name in (f"embeddings_gs-{step}.pt", f"FARM-{step}.pt", f"fine-{step}.pt"):
            _assert_same_tree(torch.load(ck / name, weights_only=True), torch.load(ref_ck / name, weights_only=True),
                              name)
    _assert_same_tree(torch.load(ck / "embeddings.pt", weights_only=True),
                      torch.load(ref_ck / "embeddings.pt", weights_only=True), "embeddings.pt")


@pytest.mark.parametrize("frozen,stop_at", [(True, 2), (False, 6)], ids=["frozen-saved-mid-epoch",
                                                                          "frozen-dropped-epoch-end"])
def test_sigkill_and_resume_equals_uninterrupted_run(setup, reference, frozen, stop_at):
    """Step 2 is inside the first epoch (3 batches each); step 6 is the end of the second epoch."""
    work = setup[0]
    folder = f"killed-{frozen}"
    run_dir = work / "logs" / folder
    _run_and_kill_after(_fresh_args(setup, frozen, folder), stop_at, work)
    last = _load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == stop_at  # really interrupted, nothing past step k
    assert not (run_dir / "checkpoints" / f"FARM-{stop_at + EVERY}.pt").exists()
    _run_main(["-r", str(run_dir), "-t", "--no-test", "--max_steps", str(N_STEPS), "--gpus", "none"],
              work / f"resumed-{frozen}.log")
    _compare_with_reference(run_dir, reference, frozen)
