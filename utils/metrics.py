"""Segmentation and localisation metrics for anomaly segmenters, exact and stream-friendly.

Why a local implementation: the FAST tables report the *anomaly-class* IoU and recall accumulated
over a whole test set (mmseg's per-class ``IoU`` / ``Acc``), while the AnomalyDiffusion line reports
pixel AUROC / AP / F1-max / AUPRO.  One accumulator computes all of them from the same stream of
probability maps, with every convention for degenerate inputs written down below.

Conventions (all metrics):

* ``prob_map`` is the per-pixel anomaly probability in [0, 1] (e.g. softmax channel 1); larger
  means more anomalous.  ``gt_mask`` is binary, 1 = anomalous pixel.
* A pixel is *predicted anomalous* when ``prob > threshold`` (default 0.5) -- the same strict
  comparison as torchmetrics' Binary* metrics and equivalent to argmax for a 2-class softmax.
* Undefined quantities are ``NaN`` and never silently 0 or 1: a ratio with a zero denominator
  (e.g. IoU with an empty union, recall with no anomalous pixels) and a ranking metric whose
  ground truth has a single class (all-normal or all-anomalous) are NaN.  torchmetrics returns 0
  for an empty union; we do not, because 0 would read as "total failure" for a perfect result.
* Ranking metrics (AUROC, AP, F1-max, AUPRO) are exact: every distinct score is a threshold
  (ties form one threshold).  ``num_bins`` switches to a constant-memory histogram approximation.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import ndimage

METRIC_KEYS = (
    "iou_anomaly", "acc_anomaly", "miou_2class", "pixel_acc", "pixel_auroc", "pixel_ap",
    "pixel_f1_max", "aupro_0.3", "image_auroc",
)
"""Stable result keys of :meth:`SegmentationMetrics.compute` (the headline numbers)."""

METRIC_LABELS = {
    "iou_anomaly": "anomaly IoU (FAST 'mIoU')",
    "acc_anomaly": "anomaly Acc = recall (FAST 'Acc')",
    "miou_2class": "2-class mean IoU (bg+anomaly)",
    "pixel_acc": "overall pixel accuracy (aAcc)",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max (PR curve)",
    "aupro_0.3": "AUPRO (FPR <= 0.3)",
    "image_auroc": "image AUROC (max of map)",
}
"""Human-readable labels, so tables never call the 2-class mIoU "mIoU"."""

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_numpy(x) -> np.ndarray:
    """Accept torch tensors or arrays without importing torch at module import time."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


# ----------------------------------------------------------------------------- exact curves

def _descending_cumsums(scores: np.ndarray, *weights: np.ndarray):
    """Sort by score (descending) and return, at each distinct score t, the weight sums of ``score >= t``.

    Returns ``(thresholds, [cum_w0, cum_w1, ...])``; thresholds strictly decreasing.  Ties are merged
    so that a tie never contributes a partial step (this is what makes the curves exact).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ends = np.flatnonzero(np.diff(s) != 0)
    ends = np.append(ends, s.size - 1) if s.size else ends
    sums = [np.cumsum(np.asarray(w, dtype=np.float64).ravel()[order])[ends] for w in weights]
    return s[ends], sums


def binary_auroc(scores, labels) -> float:
    """ROC AUC of ``scores`` against binary ``labels``; ties count 1/2 (= Mann-Whitney U / (P·N)).

    Exact trapezoidal area over all distinct thresholds, starting at (0, 0); equals
    ``sklearn.metrics.roc_auc_score`` and torchmetrics ``BinaryAUROC(thresholds=None)``.
    NaN if ``labels`` holds a single class.
    """
    scores, labels = _as_numpy(scores).ravel(), _as_numpy(labels).ravel() > 0.5
    pos = labels.astype(np.float64)
    return _auroc_from(scores, pos, 1.0 - pos)


def _auroc_from(scores, pos_w, neg_w) -> float:
    total_p, total_n = float(np.sum(pos_w)), float(np.sum(neg_w))
    if total_p <= 0 or total_n <= 0:
        return math.nan
    _, (tp, fp) = _descending_cumsums(scores, pos_w, neg_w)
    tpr = np.concatenate([[0.0], tp / total_p])
    fpr = np.concatenate([[0.0], fp / total_n])
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(scores, labels):
    """Exact PR curve: ``(precision, recall, thresholds)`` at each distinct score, thresholds descending.

    Predicted positive means ``score >= threshold``.  NaN-free only if there is at least one positive.
    """
    scores, labels = _as_numpy(scores).ravel(), _as_numpy(labels).ravel() > 0.5
    pos = labels.astype(np.float64)
    thr, (tp, fp) = _descending_cumsums(scores, pos, 1.0 - pos)
    total_p = float(pos.sum())
    recall = tp / total_p if total_p > 0 else np.full_like(tp, math.nan)
    precision = tp / np.maximum(tp + fp, 1e-300)
    return precision, recall, thr


def _ap_from(tp, fp, total_p) -> float:
    if total_p <= 0:
        return math.nan
    precision = tp / np.maximum(tp + fp, 1e-300)
    recall = tp / total_p
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def average_precision(scores, labels) -> float:
    """Step-wise average precision ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's definition).

    No interpolation; equals ``average_precision_score`` and torchmetrics ``BinaryAveragePrecision``.
    NaN if there is no positive.
    """
    scores, labels = _as_numpy(scores).ravel(), _as_numpy(labels).ravel() > 0.5
    pos = labels.astype(np.float64)
    _, (tp, fp) = _descending_cumsums(scores, pos, 1.0 - pos)
    return _ap_from(tp, fp, float(pos.sum()))


def _f1_from(thr, tp, fp, total_p):
    if total_p <= 0:
        return math.nan, math.nan
    f1 = 2.0 * tp / (tp + fp + total_p)           # = 2PR/(P+R) at every threshold
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def f1_max(scores, labels) -> tuple[float, float]:
    """Maximum F1 over the exact PR curve and the threshold (``score >= thr``) that attains it.

    This is F1-max as in anomalib ``F1Max`` / the max over sklearn's PR curve -- *not*
    ``BinaryF1Score`` (F1 at a fixed 0.5 threshold).  ``(NaN, NaN)`` if there is no positive.
    """
    scores, labels = _as_numpy(scores).ravel(), _as_numpy(labels).ravel() > 0.5
    pos = labels.astype(np.float64)
    thr, (tp, fp) = _descending_cumsums(scores, pos, 1.0 - pos)
    return _f1_from(thr, tp, fp, float(pos.sum()))


# ----------------------------------------------------------------------------- AUPRO

def component_sizes(gt_mask) -> tuple[np.ndarray, int]:
    """Per-pixel size |C| of the GT component each anomalous pixel belongs to (0 on normal pixels).

    Components are 8-connected (``scipy.ndimage.label`` with a 3×3 structure, as in the MVTec
    AD / AnomalyDiffusion ``au_pro_util``).  Returns ``(sizes HxW int64, number of components)``.
    Summing ``1/|C|`` over predicted pixels gives the sum over components of their overlap ratio,
    which is why PRO can be streamed without keeping the masks (and exactly: sizes are integers).
    """
    gt = _as_numpy(gt_mask) > 0.5
    labels, n = ndimage.label(gt, structure=_EIGHT_CONNECTED)
    if not n:
        return np.zeros(gt.shape, dtype=np.int64), 0
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    return counts[labels], int(n)


def _inverse_sizes(sizes: np.ndarray) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64)
    out = np.zeros_like(sizes)
    np.divide(1.0, sizes, out=out, where=sizes > 0)
    return out


def _integrate_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under (fpr, pro) for fpr in [0, limit], linearly interpolated at the limit."""
    keep = int(np.searchsorted(fpr, limit, side="right"))          # points with fpr <= limit
    x, y = fpr[:keep], pro[:keep]
    if keep < fpr.size and (x.size == 0 or x[-1] < limit):
        x0, y0 = (x[-1], y[-1]) if x.size else (0.0, 0.0)
        x1, y1 = fpr[keep], pro[keep]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.append(x, limit), np.append(y, y_lim)
    return float(np.trapezoid(y, x))


def _aupro_from(scores, pro_w, neg_w, n_components, limit) -> float:
    total_n = float(np.sum(neg_w))
    if n_components <= 0 or total_n <= 0:
        return math.nan
    _, (cw, fp) = _descending_cumsums(scores, pro_w, neg_w)
    fpr = np.concatenate([[0.0], fp / total_n])
    pro = np.concatenate([[0.0], cw / n_components])
    return _integrate_to(fpr, pro, limit) / limit


def aupro(score_maps, gt_masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    For each threshold t (every distinct score; predicted = score >= t): PRO(t) is the mean over all
    GT connected components (8-connected, per image, pooled over the set) of
    |pred ∩ C| / |C|, and FPR(t) = FP / #normal pixels.  The curve starts at (0, 0), is integrated
    with the trapezoid rule up to FPR = ``fpr_limit`` (interpolating linearly at the limit) and is
    divided by ``fpr_limit`` so a perfect map scores 1.  Same definition as anomalib
    ``AUPRO(fpr_limit=0.3)`` and MVTec's ``au_pro_util`` (which samples fewer thresholds).
    NaN if there is no anomalous component or no normal pixel.
    """
    maps = _as_numpy(score_maps)
    gts = _as_numpy(gt_masks)
    if maps.ndim == 2:
        maps, gts = maps[None], gts[None]
    if maps.shape != gts.shape:
        raise ValueError(f"aupro: score_maps shape {maps.shape} != gt_masks shape {gts.shape}")
    pro_w = np.empty(maps.shape, dtype=np.float64)
    n_comp = 0
    for i in range(maps.shape[0]):
        sizes, n = component_sizes(gts[i])
        pro_w[i] = _inverse_sizes(sizes)
        n_comp += n
    neg_w = (gts <= 0.5).astype(np.float64)
    return _aupro_from(maps.ravel(), pro_w.ravel(), neg_w.ravel(), n_comp, fpr_limit)


# ----------------------------------------------------------------------------- accumulator

class SegmentationMetrics:
    """Accumulate probability maps over a test set and compute every reported metric at once.

    ``update(prob_map, gt_mask, image_label=None)`` takes ``HxW`` or ``BxHxW`` maps (torch or
    numpy).  ``image_label`` defaults to "GT mask has an anomalous pixel".  The image score is the
    max of the probability map after an optional ``image_pool``×``image_pool`` mean filter
    (AnomalyDiffusion uses 21; default 1 = plain max).

    ``compute()`` returns (NaN = undefined, see module docstring):

    * ``iou_anomaly``  TP/(TP+FP+FN) of the anomaly class, counts summed over the whole set
      (mmseg per-class IoU; FAST's "mIoU").  NaN when the union is empty (all-normal set and no
      false positives).
    * ``acc_anomaly``  TP/(TP+FN), the anomaly-class accuracy = recall (mmseg per-class Acc;
      FAST's "Acc").  NaN when the set has no anomalous pixel.
    * ``miou_2class``  mean of background IoU TN/(TN+FN+FP) and ``iou_anomaly``.  NaN if either is
      undefined (stricter than mmseg/torchmetrics, which average only the classes present).
    * ``pixel_acc``    (TP+TN)/all pixels (mmseg aAcc).
    * ``pixel_auroc``  exact ROC AUC over pooled pixels; NaN if all pixels share one label.
    * ``pixel_ap``     step-wise average precision over pooled pixels; NaN without anomalous pixels.
    * ``pixel_f1_max`` max F1 over the exact PR curve (threshold in ``pixel_f1_max_threshold``);
      NaN without anomalous pixels.
    * ``aupro_0.3``    see :func:`aupro`; NaN without anomalous components or without normal pixels.
    * ``image_auroc``  ROC AUC of image scores vs image labels; NaN if all images share one label.

    Extra keys: ``threshold``, ``n_images``, ``n_anomalous_images``, ``n_pixels``,
    ``anomalous_pixel_fraction``, ``pixel_f1_max_threshold``.

    Memory: exact mode keeps 8 bytes per pixel (float32 score, int32 GT-component size); set
    ``num_bins`` (e.g. 1000) for a constant-memory histogram approximation of the ranking metrics
    (thresholds at bin edges of [0, 1]; the confusion-matrix metrics stay exact).
    """

    def __init__(self, threshold: float = 0.5, fpr_limit: float = 0.3, image_pool: int = 1,
                 num_bins: int | None = None):
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.threshold = float(threshold)
        self.fpr_limit = float(fpr_limit)
        self.image_pool = int(image_pool)
        self.num_bins = None if num_bins is None else int(num_bins)
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0
        self.n_components = 0
        self._scores: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self.image_scores: list[float] = []
        self.image_labels: list[int] = []
        if self.num_bins:
            self._h_pos = np.zeros(self.num_bins, np.float64)
            self._h_neg = np.zeros(self.num_bins, np.float64)
            self._h_pro = np.zeros(self.num_bins, np.float64)

    def update(self, prob_map, gt_mask, image_label=None) -> None:
        """Add one map (HxW) or a batch (BxHxW) with its binary GT and optional image labels."""
        probs = _as_numpy(prob_map).astype(np.float32, copy=False)
        gts = _as_numpy(gt_mask) > 0.5
        if probs.ndim == 2:
            probs, gts = probs[None], gts[None]
        if probs.ndim != 3 or probs.shape != gts.shape:
            raise ValueError(f"update: prob_map {probs.shape} and gt_mask {gts.shape} must be equal HxW or BxHxW")
        if image_label is None:
            labels = gts.reshape(gts.shape[0], -1).any(axis=1).astype(int)
        else:
            labels = np.atleast_1d(_as_numpy(image_label)).astype(int).ravel()
            if labels.size != probs.shape[0]:
                raise ValueError(f"update: {labels.size} image labels for {probs.shape[0]} maps")
        for p, g, lab in zip(probs, gts, labels):
            pred = p > self.threshold
            self.tp += int(np.count_nonzero(pred & g))
            self.fp += int(np.count_nonzero(pred & ~g))
            self.fn += int(np.count_nonzero(~pred & g))
            self.tn += int(np.count_nonzero(~pred & ~g))
            sizes, n = component_sizes(g)
            self.n_components += n
            if self.num_bins:
                idx = np.clip((p.ravel() * self.num_bins).astype(np.int64), 0, self.num_bins - 1)
                gf = g.ravel()
                self._h_pos += np.bincount(idx[gf], minlength=self.num_bins)
                self._h_neg += np.bincount(idx[~gf], minlength=self.num_bins)
                self._h_pro += np.bincount(idx, weights=_inverse_sizes(sizes.ravel()), minlength=self.num_bins)
            else:
                self._scores.append(p.ravel().copy())
                self._sizes.append(sizes.ravel().astype(np.int32))     # > 0 exactly on GT pixels
            pooled = p
            if self.image_pool > 1:
                pooled = ndimage.uniform_filter(p.astype(np.float64), size=self.image_pool, mode="constant")
            self.image_scores.append(float(pooled.max()))
            self.image_labels.append(int(lab))

    def compute(self) -> dict:
        """Return the metric dict (see class docstring); NaN marks undefined values."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        total = tp + fp + fn + tn
        iou_fg = _ratio(tp, tp + fp + fn)
        iou_bg = _ratio(tn, tn + fn + fp)
        out = {
            "iou_anomaly": iou_fg,
            "acc_anomaly": _ratio(tp, tp + fn),
            "miou_2class": (iou_fg + iou_bg) / 2.0,            # NaN propagates on purpose
            "pixel_acc": _ratio(tp + tn, total),
        }
        if self.num_bins:
            scores = np.arange(self.num_bins, dtype=np.float64)
            pos, neg, pro = self._h_pos, self._h_neg, self._h_pro
        elif self._scores:
            scores = np.concatenate(self._scores)
            sizes = np.concatenate(self._sizes)
            pos = (sizes > 0).astype(np.float64)
            neg = 1.0 - pos
            pro = _inverse_sizes(sizes)
        else:
            scores = pos = neg = pro = np.zeros(0)
        total_p = float(np.sum(pos))
        out["pixel_auroc"] = _auroc_from(scores, pos, neg)
        if scores.size:
            thr, (ctp, cfp) = _descending_cumsums(scores, pos, neg)
            out["pixel_ap"] = _ap_from(ctp, cfp, total_p)
            f1, f1_thr = _f1_from(thr, ctp, cfp, total_p)
            if self.num_bins and not math.isnan(f1_thr):
                f1_thr = f1_thr / self.num_bins                  # bin index -> lower bin edge
        else:
            out["pixel_ap"], f1, f1_thr = math.nan, math.nan, math.nan
        out["pixel_f1_max"] = f1
        out[f"aupro_{self.fpr_limit:g}"] = _aupro_from(scores, pro, neg, self.n_components, self.fpr_limit)
        out["image_auroc"] = binary_auroc(np.asarray(self.image_scores), np.asarray(self.image_labels)) \
            if self.image_scores else math.nan
        out.update({
            "pixel_f1_max_threshold": f1_thr,
            "threshold": self.threshold,
            "n_images": len(self.image_scores),
            "n_anomalous_images": int(np.sum(self.image_labels)) if self.image_labels else 0,
            "n_pixels": int(total),
            "anomalous_pixel_fraction": _ratio(tp + fn, total),
        })
        return out


# ----------------------------------------------------------------------------- reporting helpers

def mean_over(results: Iterable[dict], keys: Iterable[str] = METRIC_KEYS) -> dict:
    """Unweighted mean per key over categories, skipping NaN entries; NaN if every entry is NaN.

    Also returns ``n_<key>`` = how many categories contributed, so a skipped NaN is visible.
    """
    results = list(results)
    out: dict = {}
    for k in keys:
        vals = [float(r[k]) for r in results if k in r and r[k] is not None and not math.isnan(float(r[k]))]
        out[k] = float(np.mean(vals)) if vals else math.nan
        out[f"n_{k}"] = len(vals)
    return out


def jsonable(obj):
    """Replace NaN/inf by ``None`` recursively so ``json.dumps`` writes strict JSON (null = undefined)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
