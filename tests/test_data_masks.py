"""Mask sources: Perlin masks, augmentation, filtering, reproducibility, generation inputs."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from ldm.data.generation_inputs import GenerationInputs, normal_images_for
from ldm.data.layouts import index_category, split_anomalies
from ldm.data.masks import (AugmentedMasks, PerlinMasks, RealMasks, augment_mask, mask_ok,
                            perlin_mask, perlin_noise)
from tests.fixtures_data import make_mvtec


def _binary(m):
    return m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}


def test_perlin_noise_is_zero_on_lattice_and_bounded():
    n = perlin_noise((32, 48), (4, 6), np.random.default_rng(0))
    assert n.shape == (32, 48)
    assert np.allclose(n[::8, ::8], 0.0, atol=1e-6)  # gradient noise vanishes at lattice points
    assert np.abs(n).max() <= 1.0 + 1e-5


def test_perlin_mask_binary_deterministic_any_shape():
    a = perlin_mask((40, 56), np.random.default_rng(5))
    b = perlin_mask((40, 56), np.random.default_rng(5))
    assert a.shape == (40, 56) and _binary(a) and np.array_equal(a, b)


def test_mask_ok_rules():
    m = np.zeros((30, 30), np.float32)
    assert not mask_ok(m)
    m[10:12, 10:12] = 1
    assert mask_ok(m) and not mask_ok(m, min_area_frac=0.01)
    m2 = np.zeros((30, 30), np.float32)
    m2[0:5, 0:20] = 1  # 2/3 of the top row
    assert mask_ok(m2) and not mask_ok(m2, max_border_frac=1 / 3)
    assert not mask_ok(np.ones((30, 30)), max_area_frac=0.5)


def test_augment_mask_keeps_binary_and_non_empty():
    base = np.zeros((48, 48), np.float32)
    base[18:30, 14:34] = 1
    rng = np.random.default_rng(0)
    for _ in range(40):
        out = augment_mask(base, rng)
        assert out.shape == base.shape and _binary(out) and out.sum() > 0
        assert 0.5 < out.sum() / base.sum() < 1.6


def test_augment_mask_non_square_keeps_shape():
    base = np.zeros((20, 36), np.float32)
    base[6:12, 10:20] = 1
    out = augment_mask(base, np.random.default_rng(1))
    assert out.shape == (20, 36) and _binary(out)


@pytest.fixture
def ds(tmp_path):
    return make_mvtec(tmp_path / "ds")


def test_real_masks_use_generator_side_only(ds):
    src = RealMasks(root=ds, category="bottle", defect="broken_large", size=16, seed=3)
    gen, ev = split_anomalies(index_category("mvtec", ds, "bottle").samples("broken_large"), "third")
    assert set(src.paths) == {s.mask for s in gen} and len(src) == 2
    m = src.draw(0)
    assert m.shape == (16, 16) and _binary(m) and m.sum() > 0


def test_draw_is_pure_function_of_seed_and_index(ds):
    folder = ds / "bottle" / "ground_truth" / "broken_large"
    for cls, kw in ((RealMasks, {"paths": folder}), (AugmentedMasks, {"paths": folder}), (PerlinMasks, {})):
        a, b = cls(size=24, seed=7, **kw), cls(size=24, seed=7, **kw)
        forward = [a.draw(i) for i in range(6)]
        backward = [b.draw(i) for i in reversed(range(6))][::-1]
        assert all(np.array_equal(x, y) for x, y in zip(forward, backward)), cls.__name__
        assert all(_binary(x) and x.sum() > 0 for x in forward)
    p1, p2 = PerlinMasks(size=24, seed=1), PerlinMasks(size=24, seed=2)
    assert any(not np.array_equal(p1.draw(i), p2.draw(i)) for i in range(4))


def test_augmented_masks_pass_filter(ds):
    src = AugmentedMasks(paths=ds / "bottle" / "ground_truth" / "broken_large", size=32, seed=0,
                         max_border_frac=1 / 3)
    for i in range(15):
        assert mask_ok(src.draw(i), src.min_area_frac, 1 / 3)


def test_impossible_filter_is_a_clear_error():
    src = PerlinMasks(size=16, seed=0, min_area_frac=0.9, max_area_frac=0.95, max_tries=5)
    with pytest.raises(RuntimeError, match="PerlinMasks: no mask passed the filter in 5 tries"):
        src.draw(0)


def test_real_masks_all_empty_and_missing(tmp_path, ds):
    folder = ds / "bottle" / "ground_truth" / "broken_large"
    for p in folder.iterdir():
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(p)
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(ValueError, match="no usable mask"):
        RealMasks(paths=folder, size=16)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        RealMasks(paths=tmp_path / "nothing_here")


def test_generation_inputs_pure_and_shaped(ds):
    normals = normal_images_for("mvtec", ds, "bottle")
    assert [p.name for p in normals] == [f"{i:03d}.png" for i in range(5)]
    src = {"target": "ldm.data.masks.PerlinMasks", "params": {"size": 12}}
    g1 = GenerationInputs(normals, src, size=20, seed=4, length=8)
    g2 = GenerationInputs(str(ds / "bottle" / "train" / "good"), src, size=20, seed=4, length=8)
    for n in (7, 0, 3):
        a, b = g1[n], g2[n]
        assert a["image"].shape == (20, 20, 3) and a["image"].dtype == np.float32
        assert a["mask"].shape == (20, 20) and _binary(a["mask"])
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
        assert a["normal_path"] == b["normal_path"]
    assert len(g1) == 8
    with pytest.raises(IndexError):
        g1[8]
    with pytest.raises(ValueError, match="empty split"):
        GenerationInputs([], src)
