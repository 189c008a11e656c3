"""Run a segmenter over a dataset and score it with :class:`utils.metrics.SegmentationMetrics`.

Why separate from training: the same code scores the synthetic validation split (during training)
and the real held-out test side (after training), so both use identical pre/post-processing:
softmax anomaly probability at the input resolution, predicted anomalous where ``prob > 0.5``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from utils.metrics import SegmentationMetrics


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``B×3×H×W`` images in [-1, 1] → ``B×H×W`` anomaly probabilities (softmax channel 1)."""
    logits = model(images)
    if logits.shape[-2:] != images.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _device_of(model: torch.nn.Module, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate_segmenter(model: torch.nn.Module, dataset: Dataset, device=None, batch_size: int = 8,
                       threshold: float = 0.5, num_bins: int | None = None, progress: bool = True,
                       desc: str = "evaluate") -> dict:
    """Metrics dict (keys of ``utils.metrics.METRIC_KEYS`` + counts) over every item of ``dataset``.

    Items need ``image`` (H×W×3, [-1, 1]) and ``mask`` (H×W); ``label`` (image-level) is used when
    present.  ``num_bins`` switches the ranking metrics to constant memory for large test sets.
    """
    device = _device_of(model, device)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(threshold=threshold, num_bins=num_bins)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        image = torch.as_tensor(batch["image"]).to(device, torch.float32).permute(0, 3, 1, 2)
        probs = predict_probs(model, image).cpu().numpy()
        labels = batch.get("label")
        metrics.update(probs, torch.as_tensor(batch["mask"]).numpy(),
                       None if labels is None else torch.as_tensor(labels).numpy())
    model.train(was_training)
    return metrics.compute()


def pick_examples(dataset: Dataset, n: int = 6) -> list[int]:
    """Deterministic showcase indices: evenly spread anomalous items, plus one normal item if any."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i].get("label", 1)) for i in range(len(dataset))]
    anomalous = [i for i, lab in enumerate(labels) if lab]
    normal = [i for i, lab in enumerate(labels) if not lab]
    k = max(0, n - (1 if normal else 0))
    chosen = [anomalous[int(j)] for j in np.linspace(0, len(anomalous) - 1, min(k, len(anomalous))).round()] \
        if anomalous and k else []
    chosen = list(dict.fromkeys(chosen))
    if normal and len(chosen) < n:
        chosen.append(normal[0])
    return chosen


@torch.no_grad()
def collect_examples(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int], device=None) -> list[dict]:
    """``[{"image", "mask", "prob", "name"}]`` (numpy) for contact sheets of image | mask | prediction."""
    device = _device_of(model, device)
    was_training = model.training
    model.eval()
    out = []
    for i in indices:
        item = dataset[i]
        image = torch.as_tensor(np.ascontiguousarray(item["image"]))[None].to(device, torch.float32).permute(0, 3, 1, 2)
        prob = predict_probs(model, image)[0].cpu().numpy()
        out.append({"image": np.asarray(item["image"]), "mask": np.asarray(item["mask"]), "prob": prob,
                    "name": str(item.get("name", i))})
    model.train(was_training)
    return out
