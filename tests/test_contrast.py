"""Defect contrast (ldm.quality.contrast) against closed forms: one measure for real and generated defects."""
from __future__ import annotations

import numpy as np
import torch

from ldm.quality.contrast import image_contrast, image_shift, mask_contrast, mean_contrast, shift_agreement


def test_contrast_is_the_channel_mean_gap_between_inside_and_outside():
    img = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[2:4, 2:6] = 1
    img[2:4, 2:6] = (40, 100, 160)          # channel gaps 60, 0, 60 -> mean 40
    assert image_contrast(img, mask) == 40.0
    img[0, 0] = (200, 200, 200)             # one outside pixel: outside means rise by 100/56 in every channel
    assert abs(image_contrast(img, mask) - (60 + 100 / 56 + 100 / 56 + 60 - 100 / 56) / 3) < 1e-4


def test_masks_without_contrast_are_skipped_and_means_count_the_rest():
    img = np.zeros((4, 4, 3), np.uint8)
    assert image_contrast(img, np.zeros((4, 4))) is None and image_contrast(img, np.ones((4, 4))) is None
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0] = 255
    m = np.zeros((4, 4))
    m[0, 0] = 1
    out = mean_contrast([(a, m), (img, np.ones((4, 4))), (img, m)])
    assert out == {"n": 2, "contrast": 127.5, "shift": [127.5] * 3}   # shifts 255 and 0 in every channel
    assert mean_contrast([]) == {"n": 0, "contrast": None, "shift": None}


def test_shift_keeps_sign_and_hue_and_agreement_is_the_projection_on_the_real_shift():
    brick = np.full((8, 8, 3), (112, 80, 64), np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[3:5, 1:7] = 1
    crack, grey = brick.copy(), brick.copy()
    crack[3:5, 1:7] = (72, 50, 40)                  # darker in every channel: shift (-40, -30, -24)
    grey[3:5, 1:7] = (104, 96, 72)                  # toward grey: (-8, +16, +8), contrast 10.7
    assert image_shift(crack, mask).tolist() == [-40.0, -30.0, -24.0]
    assert image_shift(brick, np.zeros((8, 8))) is None
    real, gen = mean_contrast([(crack, mask)]), mean_contrast([(grey, mask)])
    r, g = np.array([-40.0, -30.0, -24.0]), np.array([-8.0, 16.0, 8.0])
    assert shift_agreement(gen, real) == round(float(g @ r / (r @ r)), 3) < 0     # a grey patch is not a crack
    assert shift_agreement(real, real) == 1.0
    half = mean_contrast([(((brick.astype(int) + crack) // 2).astype(np.uint8), mask)])
    assert shift_agreement(half, real) == 0.5        # half the change, same colour
    assert shift_agreement({"shift": None}, real) is None
    assert shift_agreement(gen, {"shift": [0.0, 0.0, 0.0]}) is None


def test_batched_form_matches_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    inside = torch.rand(3, 16, 16, generator=g) > 0.7
    batched = mask_contrast(x, inside)
    for i in range(3):
        one = image_contrast(x[i].permute(1, 2, 0).numpy(), inside[i].numpy().astype(np.float32))
        assert abs(float(batched[i]) - one) < 1e-5


def test_folder_contrast_reads_pairs_and_real_defects_at_the_working_size(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from ldm.pairs import PairWriter
    from ldm.quality.contrast import contrast_ratio, pairs_contrast, real_contrast
    from utils.images import uint8_to_float

    normal = np.full((16, 16, 3), 120, np.uint8)
    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 2:14] = 1
    writer = PairWriter(tmp_path / "pairs", "brick", "crack")
    for n, level in enumerate((100, 80)):        # contrasts 20 and 40 against 120 -> mean 30
        img = normal.copy()
        img[4:8, 2:14] = level
        writer.write(n, uint8_to_float(img), mask, uint8_to_float(normal), {})
    gen = pairs_contrast(tmp_path / "pairs" / "brick" / "crack")
    assert gen == {"n": 2, "contrast": 30.0, "shift": [-30.0, -30.0, -30.0]}
    big = np.full((32, 32, 3), 120, np.uint8)
    big[8:16, 4:28] = 60                          # contrast 60 at 32 px; the bicubic resize to 16 px softens edges
    Image.fromarray(big).save(tmp_path / "real.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:16, 4:28] = 255
    Image.fromarray(m).save(tmp_path / "real_mask.png")
    real = real_contrast([SimpleNamespace(image=tmp_path / "real.png", mask=tmp_path / "real_mask.png")], 16)
    assert real["n"] == 1 and 55.0 < real["contrast"] <= 60.0
    assert contrast_ratio(gen, real) == round(30.0 / real["contrast"], 3)
    assert contrast_ratio({"contrast": None}, real) is None


def test_contrast_cells_flag_faint_and_too_strong_defects():
    """A generated defect type is judged against the real ones from both sides: under CONTRAST_FLOOR it is
    faint, over CONTRAST_CEILING (the f2 backbone's brick stains, 155-185 % of real) it is another, stronger
    defect; both are named in the report's and the evidence's tables."""
    from ldm.demo.evidence import contrast_markdown, share_cell, summarise_contrast

    assert share_cell(0.3, "faint") == "30% (faint)" and share_cell(0.9, "faint") == "90%"
    assert share_cell(1.85, "faint") == "185% (too strong)" and share_cell(None, "faint") == "n/a"
    rows = summarise_contrast({s: [{"method": "fast", "category": "brick", "defect": "stain", "ratio": r,
                                    "agreement": a}] for s, (r, a) in enumerate([(1.85, 1.76), (1.6, 1.54)])})
    assert "| fast | brick/stain | 185% | 160% | 172% (too strong) | 160% (too strong) | 165% | " \
           "154% (too strong) |" in contrast_markdown(rows, [0, 1])
