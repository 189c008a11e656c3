"""The quality numbers of one pairs folder: the means of ``ldm.quality.pixels``' numbers over its pairs.

The folder is read by ``ldm.pairs.read_pairs_folder`` (complete pairs only); each pair's numbers come
from its ``image-mask-ori`` strip (generated | mask | original), so a folder without strips has none.
At most ``max_samples`` pairs, evenly spaced in n order, are measured.
"""
from __future__ import annotations

import math

import numpy as np

from ldm.data.io import load_image_uint8
from ldm.pairs import read_pairs_folder
from ldm.quality.pixels import (anomaly_saliency, area_downsample, background_preservation, mean_pairwise_rms,
                                split_strip)


def folder_quality(anomaly_dir, margin: int = 2, ring: int = 8, max_samples: int = 50,
                   diversity_size: int = 64) -> dict:
    """All quality numbers for one ``<category>/<defect>`` folder (means over its strips)."""
    strips = [p.strip for p in read_pairs_folder(anomaly_dir).pairs if p.strip is not None]
    if not strips:
        raise ValueError(f"no image-mask-ori strips in {anomaly_dir}")
    pick = sorted(set(np.linspace(0, len(strips) - 1, min(max_samples, len(strips))).round().astype(int)))
    rows, small_g, small_r = [], [], []
    for i in pick:
        g, m, o = split_strip(load_image_uint8(strips[i]))
        rows.append({**background_preservation(g, o, m, margin), **anomaly_saliency(g, o, m, ring),
                     "mask_area": float(m.mean())})
        sg, so = area_downsample(g, diversity_size), area_downsample(o, diversity_size)
        small_g.append(sg)
        small_r.append(sg - so)

    def mean(key):
        vals = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(vals)) if vals else math.nan

    out = {k: mean(k) for k in ("bg_mae", "bg_psnr", "inside_diff", "ring_diff", "saliency", "mask_area")}
    out.update(diversity_image=mean_pairwise_rms(small_g), diversity_residual=mean_pairwise_rms(small_r),
               n_samples=len(rows), n_total=len(strips))
    return out
