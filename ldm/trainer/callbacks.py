"""Lightning 2 callbacks for ``main.py``: run set-up, PNG image grids, per-step artifact export, and
the random-generator state a resumed run needs to continue exactly."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from utils.atomic import write_text_atomic
from utils.images import save_grid


class SetupCallback(pl.Callback):
    """Creates the log/checkpoint/config directories and snapshots the merged configs."""

    def __init__(self, resume: bool, now: str, logdir: str, ckptdir: str, cfgdir: str, config, lightning_config):
        super().__init__()
        self.resume, self.now = resume, now
        self.logdir, self.ckptdir, self.cfgdir = logdir, ckptdir, cfgdir
        self.config, self.lightning_config = config, lightning_config

    def setup(self, trainer, pl_module, stage=None):
        if trainer.global_rank != 0:
            return
        for d in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(d, exist_ok=True)
        print("Project config")
        print(OmegaConf.to_yaml(self.config))
        write_text_atomic(Path(self.cfgdir) / f"{self.now}-project.yaml", OmegaConf.to_yaml(self.config))
        write_text_atomic(Path(self.cfgdir) / f"{self.now}-lightning.yaml",
                          OmegaConf.to_yaml(OmegaConf.create({"lightning": self.lightning_config})))

    def on_exception(self, trainer, pl_module, exception):
        """Ctrl-C saves ``last.ckpt`` so the run can be resumed with ``-r``."""
        if isinstance(exception, KeyboardInterrupt) and trainer.global_rank == 0 and trainer.global_step > 0:
            path = os.path.join(self.ckptdir, "last.ckpt")
            print(f"Interrupted: saving {path}")
            trainer.save_checkpoint(path)


class ImageLogger(pl.Callback):
    """Writes ``<logdir>/images/<split>/<key>_gs-XXXXXX_e-XXXXXX_b-XXXXXX.png`` from ``log_images``."""

    def __init__(self, batch_frequency: int = 500, max_images: int = 8, clamp: bool = True,
                 increase_log_steps: bool = True, rescale: bool = True, disabled: bool = False,
                 log_on_batch_idx: bool = False, log_first_step: bool = False, log_images_kwargs=None,
                 save_dir: str | None = None):
        super().__init__()
        self.save_dir = save_dir
        if batch_frequency <= 0:
            raise ValueError("ImageLogger batch_frequency must be > 0")
        self.batch_freq = batch_frequency
        self.max_images = max_images
        self.clamp = clamp  # `rescale` is accepted for CompVis configs; grids always map [-1, 1] to [0, 255]
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.log_steps = [2 ** n for n in range(int(torch.log2(torch.tensor(float(batch_frequency)))) + 1)]
        if not increase_log_steps:
            self.log_steps = [batch_frequency]

    def check_frequency(self, check_idx: int) -> bool:
        if check_idx == 0:
            return self.log_first_step
        if check_idx % self.batch_freq == 0:
            return True
        if check_idx in self.log_steps:
            self.log_steps.remove(check_idx)
            return True
        return False

    @rank_zero_only
    def save_images(self, save_dir: str, split: str, images: dict, global_step: int, current_epoch: int,
                    batch_idx: int) -> list[str]:
        root = Path(save_dir) / "images" / split
        written = []
        for k, v in images.items():
            if not torch.is_tensor(v) or v.ndim != 4:
                continue
            name = f"{k}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            save_grid(v[: self.max_images], root / name, nrow=min(self.max_images, v.shape[0]))
            written.append(str(root / name))
        return written

    def log_img(self, trainer, pl_module, batch, batch_idx: int, split: str = "train"):
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if self.disabled or not hasattr(pl_module, "log_images") or not callable(pl_module.log_images):
            return
        if not self.check_frequency(check_idx) or self.max_images <= 0:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                images = pl_module.log_images(batch, N=self.max_images, split=split, **self.log_images_kwargs)
        finally:
            if was_training:
                pl_module.train()
        for k in list(images):
            if torch.is_tensor(images[k]):
                img = images[k][: self.max_images].detach().float().cpu()
                images[k] = img.clamp(-1.0, 1.0) if self.clamp else img
        self.save_images(self.save_dir or trainer.default_root_dir, split, images, pl_module.global_step,
                         pl_module.current_epoch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.global_step > 0 or self.log_first_step:
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if pl_module.global_step > 0 and batch_idx == 0:
            self.log_img(trainer, pl_module, batch, batch_idx, split="val")


class ArtifactExporter(pl.Callback):
    """Every ``every_n_train_steps`` optimizer steps (and at the end) calls
    ``pl_module.export_artifacts(dirpath, step)``, which writes plain-tensor files such as
    ``embeddings_gs-{step}.pt``. ``step`` counts completed optimizer steps (see README)."""

    def __init__(self, dirpath: str, every_n_train_steps: int):
        super().__init__()
        self.dirpath = dirpath
        self.every = int(every_n_train_steps)
        self._last_exported = -1

    def _export(self, trainer, pl_module):
        step = int(trainer.global_step)
        if step <= 0 or step == self._last_exported or trainer.global_rank != 0:
            return
        if hasattr(pl_module, "export_artifacts"):
            pl_module.export_artifacts(self.dirpath, step)
            self._last_exported = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every > 0 and trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._export(trainer, pl_module)



def capture_rng_state() -> dict:
    """The global ``torch`` (CPU and CUDA), ``numpy`` and ``random`` states as tensors and ints (a
    checkpoint that loads with ``weights_only=True``)."""
    version, py_words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": int(version), "words": torch.tensor(py_words, dtype=torch.int64),
                        "gauss": None if gauss is None else float(gauss)},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            print(f"warning: the checkpoint has {len(states)} CUDA generator states for "
                  f"{torch.cuda.device_count()} devices; CUDA random numbers will differ from an uninterrupted run")


class RNGStateCallback(pl.Callback):
    """Makes ``-r`` resume the random stream where the checkpoint left it.

    The checkpoint records the global generators at the moment it is written (after the step it
    belongs to); a resumed run restores them right before its first training batch, so the timesteps
    and noise of every later step equal an uninterrupted run's. Validation runs inside a saved/restored
    state, so it never shifts the training stream (nor does the sanity check before training).
    Place it first in the callback list: other ``on_train_batch_start`` hooks then see the restored state.
    Under DDP the state of rank 0 is what Lightning saves; other ranks then differ after a resume.
    """

    def __init__(self):
        super().__init__()
        self._pending: dict | None = None
        self._outside_validation: dict | None = None

    def state_dict(self) -> dict:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = dict(state_dict) if state_dict else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def on_validation_start(self, trainer, pl_module):
        self._outside_validation = capture_rng_state()

    def on_validation_end(self, trainer, pl_module):
        if self._outside_validation is not None:
            restore_rng_state(self._outside_validation)
            self._outside_validation = None


class TrainingProgress(pl.Callback):
    """Step progress for people and for parent processes, and the run's training speed.

    - ``utils.progress.report`` after every step (a parent such as ``scripts/run_demo.py`` reads it
      through ``FAST_PROGRESS_FILE``);
    - ``lines=True`` (main.py sets it when stderr is not a terminal, where Lightning's bar would be a
      wall of carriage returns in a log file): a plain line every ``every`` percent of the run;
    - at the end, ``<logdir>/timing.json``: steps, seconds and steps/s of this process's training,
      the rate measured after ``warmup`` steps (the first steps pay for lazy set-up and caches).
    """

    def __init__(self, logdir: str, lines: bool = False, every: int = 10, warmup: int = 5):
        super().__init__()
        self.logdir, self.lines, self.every, self.warmup = logdir, bool(lines), int(every), int(warmup)
        self._t0 = self._tw = None
        self._start = self._wstep = 0
        self._next_pct = 0

    def on_train_start(self, trainer, pl_module):
        import time

        self._t0 = time.perf_counter()
        self._tw = None
        self._start = int(trainer.global_step)
        self._next_pct = self.every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        from utils.progress import eta, fmt_seconds, report

        step, total = int(trainer.global_step), int(trainer.max_steps or 0)
        now = time.perf_counter()
        if self._tw is None and step - self._start >= self.warmup:
            self._tw, self._wstep = now, step
        if trainer.global_rank != 0 or total <= 0:
            return
        report(step, total)
        pct = 100.0 * step / total
        if self.lines and pct >= self._next_pct:
            done = step - self._start
            elapsed = now - self._t0
            print(f"step {step}/{total} ({pct:.0f} %), {done / max(elapsed, 1e-9):.2f} steps/s, "
                  f"ETA {fmt_seconds(eta(done, total - self._start, elapsed))}", flush=True)
            while self._next_pct <= pct:
                self._next_pct += self.every

    def on_train_end(self, trainer, pl_module):
        import json
        import time

        if trainer.global_rank != 0 or self._t0 is None:
            return
        now = time.perf_counter()
        end = int(trainer.global_step)
        timed = end - self._wstep if self._tw is not None else 0
        doc = {"start_step": self._start, "end_step": end, "seconds": now - self._t0,
               "steps_per_s": (end - self._start) / max(now - self._t0, 1e-9),
               "steps_per_s_after_warmup": timed / (now - self._tw) if timed > 0 and now > self._tw else None,
               "warmup_steps": self.warmup}
        os.makedirs(self.logdir, exist_ok=True)
        write_text_atomic(Path(self.logdir) / "timing.json", json.dumps(doc, indent=1) + "\n")
