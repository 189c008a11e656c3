"""Every metric in utils/metrics.py against a slow, obviously-correct reference on small inputs."""
import math
from collections import deque

import numpy as np
import pytest
import torch

from utils.metrics import (METRIC_KEYS, SegmentationMetrics, aupro, average_precision, binary_auroc,
                           f1_max, jsonable, mean_over)


# ----------------------------------------------------------------------------- brute-force references

def brute_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (len(pos) * len(neg))


def brute_pr_points(s, y):
    """(precision, recall) for every distinct threshold, predicted = score >= t, t descending."""
    pts = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & (y == 1)))
        fp = int(np.sum(pred & (y == 0)))
        pts.append((tp / (tp + fp), tp / int(np.sum(y == 1))))
    return pts


def brute_ap(s, y):
    if np.sum(y == 1) == 0:
        return math.nan
    ap, prev_r = 0.0, 0.0
    for p, r in brute_pr_points(s, y):
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def brute_f1max(s, y):
    if np.sum(y == 1) == 0:
        return math.nan
    return max((2 * p * r / (p + r) if p + r > 0 else 0.0) for p, r in brute_pr_points(s, y))


def brute_components(mask):
    """8-connected components by BFS; list of pixel sets."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                comp, q = [], deque([(i, j)])
                seen[i, j] = True
                while q:
                    a, b = q.popleft()
                    comp.append((a, b))
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            u, v = a + da, b + db
                            if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                                seen[u, v] = True
                                q.append((u, v))
                comps.append(comp)
    return comps


def brute_aupro(maps, gts, limit=0.3):
    comps = [(i, c) for i in range(len(gts)) for c in brute_components(gts[i] > 0.5)]
    normal = gts <= 0.5
    if not comps or normal.sum() == 0:
        return math.nan
    pts = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fpr = float(np.sum(pred & normal)) / float(normal.sum())
        pro = float(np.mean([sum(pred[i][a, b] for a, b in c) / len(c) for i, c in comps]))
        pts.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def brute_counts(maps, gts, thr):
    tp = fp = fn = tn = 0
    for p, g in zip(maps.ravel(), gts.ravel()):
        pred, gt = p > thr, g > 0.5
        tp += pred and gt
        fp += pred and not gt
        fn += (not pred) and gt
        tn += (not pred) and (not gt)
    return tp, fp, fn, tn


def random_case(rng, n=3, h=9, w=10, quantise=None):
    maps = rng.random((n, h, w)).astype(np.float32)
    gts = np.zeros((n, h, w), np.float32)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            gts[i, y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = 1
            maps[i] += gts[i] * rng.random() * 0.7
    maps = np.clip(maps, 0, 1)
    if quantise:
        maps = np.round(maps * quantise) / quantise      # many ties
    return maps, gts


def close(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# ----------------------------------------------------------------------------- functional metrics

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantise", [None, 4])
def test_ranking_metrics_match_brute_force(seed, quantise):
    rng = np.random.default_rng(seed)
    maps, gts = random_case(rng, quantise=quantise)
    s, y = maps.ravel(), (gts.ravel() > 0.5).astype(int)
    assert close(binary_auroc(s, y), brute_auroc(s, y))
    assert close(average_precision(s, y), brute_ap(s, y))
    assert close(f1_max(s, y)[0], brute_f1max(s, y))
    assert close(aupro(maps, gts, 0.3), brute_aupro(maps, gts, 0.3))
    assert close(aupro(maps, gts, 1.0), brute_aupro(maps, gts, 1.0))


def test_against_torchmetrics():
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryPrecisionRecallCurve

    rng = np.random.default_rng(11)
    maps, gts = random_case(rng, n=4, h=16, w=16)
    s, y = torch.from_numpy(maps.ravel()), torch.from_numpy(gts.ravel()).long()
    assert abs(binary_auroc(s, y) - BinaryAUROC()(s, y).item()) < 1e-6
    assert abs(average_precision(s, y) - BinaryAveragePrecision()(s, y).item()) < 1e-6
    p, r, _ = BinaryPrecisionRecallCurve()(s, y)
    f1 = (2 * p * r / (p + r).clamp_min(1e-12)).max().item()
    assert abs(f1_max(s, y)[0] - f1) < 1e-6


def test_aupro_known_values():
    gt = np.zeros((1, 8, 8))
    gt[0, 1:3, 1:3] = 1
    gt[0, 5:8, 5:8] = 1
    assert aupro(gt.astype(float), gt) == pytest.approx(1.0)          # perfect map
    assert aupro(1.0 - gt, gt) == pytest.approx(0.0)                  # inverted map
    # one component found perfectly, the other scored below every normal pixel -> PRO = 0.5 on [0, 0.3]
    m = gt.copy() * 0.9 + 0.1
    m[0, 5:8, 5:8] = 0.0
    assert aupro(m, gt) == pytest.approx(0.5)


def test_components_are_8_connected():
    gt = np.zeros((1, 4, 4))
    gt[0, 0, 0] = gt[0, 1, 1] = 1                                      # diagonal neighbours: one region
    m = np.zeros((1, 4, 4))
    m[0, 0, 0] = 1.0
    # with one region of 2 pixels, finding one pixel gives PRO 0.5 at FPR 0
    assert aupro(m, gt) == pytest.approx(brute_aupro(m, gt))


# ----------------------------------------------------------------------------- accumulator

@pytest.mark.parametrize("seed", range(4))
def test_accumulator_matches_brute_force_streamed(seed):
    rng = np.random.default_rng(100 + seed)
    maps, gts = random_case(rng, n=4, quantise=8 if seed % 2 else None)
    gts[0] = 0                                                         # at least one normal image
    m = SegmentationMetrics(threshold=0.5)
    m.update(torch.from_numpy(maps[:1]), torch.from_numpy(gts[:1]))   # torch batch
    m.update(maps[1], gts[1])                                          # numpy single map
    m.update(maps[2:], gts[2:])
    r = m.compute()
    assert set(METRIC_KEYS) <= set(r)
    tp, fp, fn, tn = brute_counts(maps, gts, 0.5)
    iou_fg = tp / (tp + fp + fn) if tp + fp + fn else math.nan
    iou_bg = tn / (tn + fp + fn)
    assert close(r["iou_anomaly"], iou_fg)
    assert close(r["acc_anomaly"], tp / (tp + fn) if tp + fn else math.nan)
    assert close(r["miou_2class"], (iou_fg + iou_bg) / 2)
    assert close(r["pixel_acc"], (tp + tn) / maps.size)
    s, y = maps.ravel(), (gts.ravel() > 0.5).astype(int)
    assert close(r["pixel_auroc"], brute_auroc(s, y))
    assert close(r["pixel_ap"], brute_ap(s, y))
    assert close(r["pixel_f1_max"], brute_f1max(s, y))
    assert close(r["aupro_0.3"], brute_aupro(maps, gts))
    img_s = maps.reshape(4, -1).max(1)
    img_y = gts.reshape(4, -1).max(1).astype(int)
    assert close(r["image_auroc"], brute_auroc(img_s, img_y))
    assert r["n_images"] == 4 and r["n_pixels"] == maps.size


def test_threshold_is_strict():
    m = SegmentationMetrics(threshold=0.5)
    m.update(np.full((2, 2), 0.5), np.ones((2, 2)))
    assert m.compute()["acc_anomaly"] == 0.0


def test_all_normal_and_empty_union_are_nan():
    m = SegmentationMetrics()
    m.update(np.full((2, 5, 5), 0.1), np.zeros((2, 5, 5)))             # no anomaly, no false positive
    r = m.compute()
    for k in ("iou_anomaly", "acc_anomaly", "miou_2class", "pixel_auroc", "pixel_ap", "pixel_f1_max",
              "aupro_0.3", "image_auroc"):
        assert math.isnan(r[k]), k
    assert r["pixel_acc"] == 1.0
    # with a false positive the union is no longer empty: IoU is a genuine 0, recall still undefined
    m.update(np.pad(np.ones((1, 1)), 2)[None], np.zeros((1, 5, 5)))
    r = m.compute()
    assert r["iou_anomaly"] == 0.0 and math.isnan(r["acc_anomaly"])


def test_all_anomalous_pixels():
    m = SegmentationMetrics()
    m.update(np.random.default_rng(0).random((4, 4)), np.ones((4, 4)))
    r = m.compute()
    assert math.isnan(r["pixel_auroc"]) and math.isnan(r["aupro_0.3"])
    assert r["pixel_ap"] == pytest.approx(1.0) and r["pixel_f1_max"] == pytest.approx(1.0)


def test_binned_mode_is_close_to_exact():
    rng = np.random.default_rng(5)
    gts = np.zeros((6, 32, 32), np.float32)
    for i in range(1, 6):
        y, x = rng.integers(0, 24, size=2)
        gts[i, y:y + 8, x:x + 6] = 1
    maps = (0.35 * gts + 0.65 * rng.random(gts.shape)).astype(np.float32)
    exact, binned = SegmentationMetrics(), SegmentationMetrics(num_bins=2000)
    for m in (exact, binned):
        m.update(maps, gts)
    a, b = exact.compute(), binned.compute()
    for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro_0.3"):
        assert abs(a[k] - b[k]) < 0.01, k
    for k in ("iou_anomaly", "acc_anomaly", "image_auroc"):
        assert a[k] == b[k]


def test_mean_and_json_helpers():
    res = [{"iou_anomaly": 0.5}, {"iou_anomaly": math.nan}, {"iou_anomaly": 0.7}]
    mean = mean_over(res, ["iou_anomaly"])
    assert mean["iou_anomaly"] == pytest.approx(0.6) and mean["n_iou_anomaly"] == 2
    assert jsonable({"a": [math.nan, np.float32(1.5)]}) == {"a": [None, 1.5]}


def test_shape_mismatch_is_one_line_error():
    with pytest.raises(ValueError, match="prob_map"):
        SegmentationMetrics().update(np.zeros((3, 3)), np.zeros((4, 4)))
