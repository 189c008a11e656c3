"""Generation-quality metrics of the AnomalyDiffusion line: Inception Score and IC-LPIPS.

Why local: both need pretrained networks that cannot be downloaded here, so the arithmetic is kept
apart from the networks. :func:`inception_score` works on class probabilities and
:func:`ic_lpips` on any pairwise ``distance`` callable, so both are testable against closed forms;
``ldm/quality/generative_folders.py`` (``scripts/generation_quality.py``) plugs in the Inception-v3 classifier
(``ldm/modules/inception.py``) and LPIPS (``taming/modules/losses/lpips.py``) from local weights.

Protocol (per category/defect type):

* **IS** = ``exp(E_x KL(p(y|x) || p(y)))`` over the generated images, ``p(y)`` the mean prediction.
  With ``splits > 1`` the images are cut into contiguous chunks ``[i*N//s, (i+1)*N//s)`` (the
  original Salimans et al. code's rule), IS is computed per chunk and ``(mean, std)`` returned, std
  with ``ddof=0`` as ``np.std`` in that code.  ``0·log 0 = 0``.
* **IC-LPIPS** (Ojha et al. 2021, used by DFMGAN and AnomalyDiffusion): the k real defect images
  are cluster centres; every generated image joins the centre at the smallest distance (ties: the
  first centre); each cluster's score is the mean distance over its unordered pairs of *generated*
  members (the centre itself is not a member); the result is the mean over clusters.

NaN conventions (undefined is NaN, never a silent 0):

* IS of zero images is ``(nan, nan)``; ``splits`` larger than the number of images is an error.
* IC-LPIPS is NaN when there are no generated images, and, with ``singletons="skip"`` (default),
  when no cluster has two or more members.  ``singletons="zero"`` reproduces DFMGAN's ``clpips``:
  clusters with fewer than two members count as 0 and the mean is over all k centres (DFMGAN's
  second number, ``clpips_rz``, drops zero-score clusters, which is "skip" up to clusters of
  identical images).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from utils.errors import UserError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance(a, b)`` for two equally long batches → one distance per pair (shape B or B×1×1×1)."""


# ----------------------------------------------------------------------------- Inception Score

def inception_score(probs: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """``(mean, std)`` of IS over ``splits`` contiguous chunks of ``probs`` (N×C rows of class probabilities)."""
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be N×C class probabilities, got shape {tuple(p.shape)}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    n = p.shape[0]
    if n == 0:
        return math.nan, math.nan
    if splits > n:
        raise ValueError(f"splits={splits} exceeds the number of images ({n}): every chunk needs an image")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    if not torch.allclose(p.sum(1), torch.ones(n, dtype=p.dtype), atol=1e-3):
        raise ValueError("every row of probs must sum to 1 (pass softmax outputs, not logits)")
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal.expand_as(part))).sum(1)
        scores.append(math.exp(kl.mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- IC-LPIPS

def _pair_distances(distance: Distance, a, b, ia: Sequence[int], ib: Sequence[int], batch_size: int,
                    on_batch: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Distances of the pairs ``(a[ia[j]], b[ib[j]])``, evaluated ``batch_size`` pairs at a time."""
    out = []
    for s in range(0, len(ia), batch_size):
        xa = torch.stack([a[i] for i in ia[s:s + batch_size]])
        xb = torch.stack([b[i] for i in ib[s:s + batch_size]])
        d = torch.as_tensor(distance(xa, xb)).detach().reshape(-1).to("cpu", torch.float64)
        if d.numel() != xa.shape[0]:
            raise ValueError(f"distance returned {d.numel()} values for {xa.shape[0]} pairs; "
                             "it must return one per pair")
        out.append(d)
        if on_batch is not None:
            on_batch(xa.shape[0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)`` with stage ``"assign"`` (N·k pairs) then ``"pairs"`` (within clusters)."""


def _counter(progress: Optional[Progress], stage: str, total: int) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    done = [0]
    progress(stage, 0, total)

    def step(n: int) -> None:
        done[0] += n
        progress(stage, done[0], total)

    return step


def assign_clusters(generated, centres, distance: Distance, batch_size: int = 32,
                    progress: Optional[Progress] = None) -> list[int]:
    """Index of the nearest centre for each generated image (ties go to the first centre)."""
    n, k = len(generated), len(centres)
    if k == 0:
        raise ValueError("IC-LPIPS needs at least one real image as cluster centre")
    ia = [i for i in range(n) for _ in range(k)]
    ib = [j for _ in range(n) for j in range(k)]
    d = _pair_distances(distance, generated, centres, ia, ib, batch_size, _counter(progress, "assign", n * k))
    if n == 0:
        return []
    return [int(v) for v in d.reshape(n, k).argmin(1)]  # argmin returns the first minimum


def ic_lpips_details(generated, centres, distance: Distance, *, singletons: str = "skip",
                     max_per_cluster: Optional[int] = None, batch_size: int = 32,
                     progress: Optional[Progress] = None) -> dict:
    """IC-LPIPS with its parts: ``{"ic_lpips", "ic_lpips_all_clusters", "cluster_sizes", "cluster_scores"}``.

    ``generated`` and ``centres`` are N×… / k×… tensors (or sequences of equally shaped tensors) in
    whatever form ``distance`` takes.  ``max_per_cluster`` keeps only the first members of each
    cluster (DFMGAN keeps 200).  ``cluster_scores`` holds NaN for clusters with < 2 members;
    ``ic_lpips`` follows ``singletons`` and ``ic_lpips_all_clusters`` is DFMGAN's all-k average.
    """
    if singletons not in ("skip", "zero"):
        raise ValueError(f"singletons must be 'skip' or 'zero', got {singletons!r}")
    if max_per_cluster is not None and max_per_cluster < 1:
        raise ValueError(f"max_per_cluster must be >= 1, got {max_per_cluster}")
    k = len(centres)
    owner = assign_clusters(generated, centres, distance, batch_size, progress)
    members: list[list[int]] = [[] for _ in range(k)]
    for i, c in enumerate(owner):
        if max_per_cluster is None or len(members[c]) < max_per_cluster:
            members[c].append(i)
    step = _counter(progress, "pairs", ic_lpips_pair_count([len(m) for m in members]))
    scores = []
    for m in members:
        if len(m) < 2:
            scores.append(math.nan)
            continue
        ia = [m[i] for i in range(len(m)) for j in range(i + 1, len(m))]
        ib = [m[j] for i in range(len(m)) for j in range(i + 1, len(m))]
        scores.append(float(_pair_distances(distance, generated, generated, ia, ib, batch_size, step).mean()))
    defined = [s for s in scores if not math.isnan(s)]
    skip = float(np.mean(defined)) if defined else math.nan
    all_k = math.nan if len(owner) == 0 else float(sum(defined) / k)
    return {"ic_lpips": skip if singletons == "skip" else all_k, "ic_lpips_all_clusters": all_k,
            "cluster_sizes": [len(m) for m in members], "cluster_scores": scores}


def ic_lpips(generated, centres, distance: Distance, *, singletons: str = "skip",
             max_per_cluster: Optional[int] = None, batch_size: int = 32) -> float:
    """Intra-cluster diversity of ``generated`` around the real ``centres`` (see the module docstring)."""
    return ic_lpips_details(generated, centres, distance, singletons=singletons,
                            max_per_cluster=max_per_cluster, batch_size=batch_size)["ic_lpips"]


def ic_lpips_pair_count(cluster_sizes: Sequence[int]) -> int:
    """Distance evaluations of the within-cluster stage (for progress totals)."""
    return sum(s * (s - 1) // 2 for s in cluster_sizes)


# ----------------------------------------------------------------------------- image folders

def list_pngs(folder: Union[str, os.PathLike]) -> list[Path]:
    """The ``.png`` files of ``folder`` (not recursive) in natural order; one-line error if none."""
    from ldm.data.io import list_image_files

    files = list_image_files(Path(folder), extensions=(".png",))
    if not files:
        raise UserError(f"no .png images in {folder}")
    return files


def load_images_uint8(paths: Sequence[Union[str, os.PathLike]], size: Optional[int] = None) -> torch.Tensor:
    """N×3×H×W uint8 RGB (uint8 keeps a thousand 256² images at 200 MB instead of 800 MB).

    ``size`` resizes every image to size×size (bicubic, ``ldm.data.io``'s rule); without it all
    images must share one size.
    """
    from ldm.data.io import load_image_uint8

    arrays, first = [], None
    for p in paths:
        a = load_image_uint8(p, size)
        if first is None:
            first = (p, a.shape[:2])
        elif a.shape[:2] != first[1]:
            raise UserError(f"images differ in size: {first[0]} is {first[1][0]}x{first[1][1]}, {p} is "
                            f"{a.shape[0]}x{a.shape[1]}; pass a size to resize them")
        arrays.append(a)
    if not arrays:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_png_folder(folder: Union[str, os.PathLike], size: Optional[int] = None) -> torch.Tensor:
    """All PNGs of ``folder`` as an N×3×H×W float tensor in [-1, 1] (``utils.images.uint8_to_float``)."""
    from utils.images import uint8_to_float

    return uint8_to_float(load_images_uint8(list_pngs(folder), size))
