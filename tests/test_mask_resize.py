"""The one mask-resizing rule (utils.mask_resize): thin defects stay continuous, wide ones keep their
area, nothing vanishes, and every place that resizes a mask (loading, generation inputs, the
evaluation's ground truth, the latent mask) gives the same result."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ldm.data.io import load_mask, resize_mask
from ldm.models.diffusion.latent_mask import latent_mask, thin_latent_masks
from utils.mask_resize import resize_binary_masks

EIGHT = np.ones((3, 3), bool)


def components(m) -> int:
    a = m.numpy() if isinstance(m, torch.Tensor) else m
    return ndimage.label(np.squeeze(a) > 0.5, structure=EIGHT)[1]


def line(size, width, angle_deg, offset=0.0, length=None):
    """A straight line ``width`` px wide through the centre (shifted by ``offset`` px), H×W {0,1}."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = size / 2 + offset
    t = np.deg2rad(angle_deg)
    across = np.abs((xx - c) * np.sin(t) - (yy - c) * np.cos(t))
    along = np.hypot(xx - c, yy - c)
    return ((across < width / 2) & (along < (length or 0.4 * size))).astype(np.float32)


def bilinear_then_half(m: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(m)[None, None]
    return (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) >= 0.5).float()


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("angle", [0, 17, 45, 80, 120])
@pytest.mark.parametrize("offset", [0.0, 1.3, 2.6])
def test_thin_lines_stay_one_continuous_chain(width, angle, offset):
    m = line(256, width, angle, offset)
    assert components(m) == 1
    for size in (64, 16):
        out = resize_binary_masks(torch.from_numpy(m)[None, None], (size, size))
        assert components(out) == 1, f"{width}px line at {angle}° broke at {size}px"
    # the same for the two-step path the pipeline takes: pixels at 64, then the 16×16 latent
    at64 = resize_mask(m, 64)
    assert components(latent_mask(torch.from_numpy(at64)[None], (16, 16))) == 1


def test_the_former_bilinear_rule_broke_the_same_lines():
    """Guards the test above: bilinear + >= 0.5 (the former rule) does break these lines."""
    broken = [components(bilinear_then_half(line(256, w, a, o), 64)) != 1
              for w in (1, 2, 3) for a in (0, 17, 80) for o in (0.0, 1.3)]
    assert sum(broken) >= len(broken) // 2


def test_grid_aligned_regions_keep_their_exact_area():
    m = torch.zeros(1, 1, 256, 256)
    m[..., 32:96, 64:200] = 1                     # whole 4×4 cells at 64 px, whole 16×16 cells at 16 px
    out = resize_binary_masks(m, (64, 64))
    expect = torch.zeros(1, 1, 64, 64)
    expect[..., 8:24, 16:50] = 1
    assert torch.equal(out, expect)
    assert int(resize_binary_masks(m, (16, 16)).sum()) == int(((m[..., ::16, ::16]) > 0).sum())


@pytest.mark.parametrize("radius", [12.0, 20.5, 40.0])
def test_wide_regions_follow_the_area_rule_within_one_cell(radius):
    yy, xx = np.mgrid[:256, :256]
    m = torch.from_numpy((np.hypot(yy - 127.3, xx - 131.6) < radius).astype(np.float32))[None, None]
    for size in (64, 32):
        area_rule = F.adaptive_avg_pool2d(m, (size, size)) >= 0.5
        out = resize_binary_masks(m, (size, size)).bool()
        assert bool((out | ~area_rule).all()), "a cell the region covers by half or more was dropped"
        ring = F.max_pool2d(area_rule.float(), 3, stride=1, padding=1).bool()
        assert bool((ring | ~out).all()), "a wide region grew by more than one cell"
        true_cells = float(m.sum()) / (256 / size) ** 2
        assert abs(float(out.sum()) - true_cells) <= 0.15 * true_cells + 4


def test_nothing_non_empty_ever_vanishes_and_empty_stays_empty():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = torch.zeros(1, 1, 256, 256)
        h, w = (int(v) for v in rng.integers(1, 6, 2))
        r, c = (int(v) for v in rng.integers(0, 250, 2))
        m[..., r:r + h, c:c + w] = 1
        for size in (64, 16):
            out = resize_binary_masks(m, (size, size))
            assert out.sum() >= 1
            k = 256 // size
            assert out[..., r // k:(r + h - 1) // k + 1, c // k:(c + w - 1) // k + 1].sum() >= 1, "kept elsewhere"
    assert resize_binary_masks(torch.zeros(2, 1, 64, 64), (16, 16)).sum() == 0


def test_enlarging_is_nearest_for_whole_factors():
    m = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    out = resize_binary_masks(m, (64, 64))
    assert torch.equal(out, m.repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_one_rule_for_pixel_masks_and_latent_masks(tmp_path):
    """load_mask (training data, generation inputs, the evaluation's ground truth) and latent_mask
    resize the same mask to the same cells."""
    m = np.maximum(line(256, 2, 17), line(256, 9, 100, 20.0))
    Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "crack.png")
    loaded = load_mask(tmp_path / "crack.png", 64)
    in_memory = resize_mask(m, 64)
    latent = latent_mask(torch.from_numpy(m)[None], (64, 64))
    assert np.array_equal(loaded, in_memory) and np.array_equal(loaded, latent[0, 0].numpy())
    assert components(loaded) == 1


def test_thin_count_names_the_masks_the_area_rule_alone_would_break():
    masks = torch.zeros(3, 256, 256)
    masks[0] = torch.from_numpy(line(256, 2, 17))          # thin: needs the thin rule
    masks[1, 64:192, 64:192] = 1                             # wide, grid-aligned: the area rule suffices
    assert thin_latent_masks(masks, (16, 16)) == 1
    assert thin_latent_masks(masks[1:], (16, 16)) == 0


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="B×1×H×W"):
        resize_binary_masks(torch.zeros(64, 64), (16, 16))


def test_latent_mask_report_counts_broken_masks_under_each_rule(tmp_path):
    from ldm.quality.latent_masks import report

    folder = tmp_path / "brick" / "ground_truth" / "crack"
    folder.mkdir(parents=True)
    for i, angle in enumerate((17, 80)):
        Image.fromarray((line(256, 2, angle) * 255).astype(np.uint8)).save(folder / f"{i:03d}_mask.png")
    (row,) = report(tmp_path, 64, 16)
    assert row["masks"] == 2 and row["broken_official"] >= 1
    assert row["broken_now"] == 0 and row["empty_now"] == 0
