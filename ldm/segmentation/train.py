"""Fixed-schedule segmenter training on synthetic pairs (no model selection on the test set).

Why a fixed step budget: comparing synthesizers is only fair when every segmenter gets the same
number of optimisation steps on the same normal/synthetic mix.  AnomalyDiffusion instead picked the
epoch with the best *test* metrics; we never look at the test set here.  If a validation split is
requested it is carved out of the synthetic pairs (``data.split_validation``) and the checkpoint
with the best validation anomaly IoU is kept in addition to the final one.

Schedule (AnomalyDiffusion's localisation recipe scaled to steps): Adam, lr 1e-4 by default,
MultiStepLR ×0.2 at 80 % and 90 % of the steps; focal loss (γ = 2) on the softmax, or CE + soft Dice.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from utils.atomic import torch_save_atomic
from utils.errors import UserError
from utils.progress import report as report_progress

LOSSES = ("focal", "ce_dice")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "focal"
    focal_gamma: float = 2.0
    milestones: tuple = (0.8, 0.9)
    gamma: float = 0.2
    seed: int = 0
    val_every: int = 0                 # 0 = validate only at the end (if a val set is given)
    num_workers: int = 0
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    log_every: int = 50

    def __post_init__(self):
        """Impossible settings are refused here, in one line naming the flag (``UserError``, a ValueError),
        before any output folder exists -- not by torch halfway through a run."""
        from ldm.trainer.devices import check_device

        if self.loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for flag, value, low in (("--steps", self.steps, 1), ("--batch_size", self.batch_size, 1),
                                 ("--val_every", self.val_every, 0), ("--num_workers", self.num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a number > 0, got {self.lr!r}")
        check_device(self.device, "--device")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of ``-(1-p_t)^γ log p_t`` on the 2-class softmax (DRAEM/AnomalyDiffusion)."""
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1.0 - logp.exp()).pow(gamma) * logp).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Cross-entropy + soft Dice of the anomaly class over the batch (Dice counters class imbalance)."""
    ce = F.cross_entropy(logits, target)
    p = F.softmax(logits, dim=1)[:, 1]
    t = target.float()
    dice = 1.0 - (2.0 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    return ce + dice


def batch_to_tensors(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Collated ``{"image": B×H×W×3, "mask": B×H×W}`` → NCHW float image, B×H×W long target."""
    image = torch.as_tensor(batch["image"]).to(device, torch.float32).permute(0, 3, 1, 2).contiguous()
    mask = (torch.as_tensor(batch["mask"]).to(device) > 0.5).long()
    return image, mask


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def train_segmenter(model: torch.nn.Module, train_set: Dataset, config: TrainConfig,
                    val_set: Optional[Dataset] = None, checkpoint: Optional[str | Path] = None,
                    spec: Optional[dict] = None, extra: Optional[dict] = None, progress: bool = True) -> dict:
    """Train ``model`` for ``config.steps`` steps; returns ``{"history", "val", "seconds", "checkpoint"}``.

    ``train_set`` is typically a :class:`ldm.segmentation.data.MixedTrainSet` (each index a fresh,
    seeded sample; the loader cycles if it is shorter than the budget).  Without ``val_set`` the
    model ends with its final weights, saved to ``checkpoint``.  With ``val_set`` the model is left
    with the weights of best synthetic-validation anomaly IoU (saved to ``checkpoint``; the last
    weights go to ``<name>.last.ckpt``).  Checkpoints are written atomically.
    """
    from ldm.segmentation.evaluate import evaluate_segmenter

    _seed_everything(config.seed)
    device = torch.device(config.device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    milestones = sorted({max(1, int(round(m * config.steps))) for m in config.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=config.gamma)
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers,
                        generator=gen)
    if len(loader) == 0:
        raise ValueError("training set is empty")

    def cpu_state() -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def save(path: Path, state: dict, step: int, val: Optional[dict]):
        torch_save_atomic({"spec": spec or {}, "state_dict": state, "train_config": asdict(config), "step": step,
                           "val": val, **(extra or {})}, path)

    history, best, best_val, val_log = [], -math.inf, None, []
    best_state, best_step = None, None
    ckpt = Path(checkpoint) if checkpoint else None
    t0 = time.perf_counter()
    step, it = 0, iter(loader)
    bar = tqdm(total=config.steps, desc="train segmenter", disable=not progress, leave=False)
    running = 0.0
    while step < config.steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        image, target = batch_to_tensors(batch, device)
        logits = model(image)
        loss = focal_loss(logits, target, config.focal_gamma) if config.loss == "focal" else ce_dice_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running += loss.item()
        bar.update(1)
        report_progress(step, config.steps)
        if step % config.log_every == 0 or step == config.steps:
            n = config.log_every if step % config.log_every == 0 else step % config.log_every
            history.append({"step": step, "loss": running / n, "lr": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{running / n:.4f}")
            running = 0.0
        validate_now = val_set is not None and len(val_set) > 0 and (
            step == config.steps or (config.val_every and step % config.val_every == 0))
        if validate_now:
            val = evaluate_segmenter(model, val_set, device=device, batch_size=config.batch_size, progress=False)
            model.train()
            val_log.append({"step": step, **{k: val[k] for k in ("iou_anomaly", "acc_anomaly", "pixel_ap")}})
            score = val["iou_anomaly"] if not math.isnan(val["iou_anomaly"]) else -1.0
            if score > best:
                best, best_val, best_state, best_step = score, val, cpu_state(), step
    bar.close()
    model.eval()
    if best_state is None:
        if ckpt is not None:
            save(ckpt, cpu_state(), step, None)
    else:
        if ckpt is not None:
            save(ckpt.with_suffix(".last.ckpt"), cpu_state(), step, val_log[-1])
            save(ckpt, best_state, best_step, best_val)
        model.load_state_dict(best_state)
    return {"history": history, "val": val_log, "best_val": best_val, "selected_step": best_step or step,
            "seconds": time.perf_counter() - t0, "checkpoint": str(ckpt) if ckpt else None}


def fit_and_evaluate(pairs, normal_paths, eval_set, config: TrainConfig, arch: str = "unet", size=256,
                     val_fraction: float = 0.0, normal_ratio: float = 0.5, checkpoint=None, arch_kwargs=None,
                     n_examples: int = 0, progress: bool = True) -> dict:
    """Train one segmenter on ``pairs`` (+ normals 50/50) and score it on ``eval_set``.

    Returns ``{"metrics", "train", "n_pairs", "n_val", "examples"}``; ``examples`` (for contact
    sheets) are predictions on ``n_examples`` fixed test items chosen without looking at scores.
    """
    from ldm.segmentation import build_segmenter, segmenter_spec
    from ldm.segmentation.data import MixedTrainSet, PairsDataset, split_validation
    from ldm.segmentation.evaluate import collect_examples, evaluate_segmenter, pick_examples

    train_pairs, val_pairs = split_validation(pairs, val_fraction, config.seed)
    torch.manual_seed(config.seed)                                  # same init for every synthesizer
    arch_kwargs = dict(arch_kwargs or {})
    model = build_segmenter(arch, 2, **arch_kwargs)
    spec = segmenter_spec(model, arch, 2, **arch_kwargs)
    train_set = MixedTrainSet(train_pairs, normal_paths, size=size, length=config.steps * config.batch_size,
                              normal_ratio=normal_ratio, seed=config.seed)
    val_set = PairsDataset(val_pairs, size) if val_pairs else None
    info = train_segmenter(model, train_set, config, val_set=val_set, checkpoint=checkpoint, spec=spec,
                           progress=progress)
    metrics = evaluate_segmenter(model, eval_set, device=config.device, batch_size=config.batch_size,
                                 progress=progress)
    examples = collect_examples(model, eval_set, pick_examples(eval_set, n_examples), config.device) if n_examples else []
    return {"metrics": metrics, "train": info, "n_pairs": len(train_pairs), "n_val": len(val_pairs),
            "examples": examples}
