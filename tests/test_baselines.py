"""Baseline synthesizers: valid binary masks that match their images, the exact pairs layout, resumability."""
import math

import numpy as np
import pytest
from PIL import Image

from ldm.data.layouts import index_category, split_anomalies
from ldm.data.mask_source import mask_source
from ldm.pairs import PairWriter
from ldm.synthesizers.common import MASK_SOURCES, synthesize_baseline
from ldm.synthesizers.draem import AUGMENTERS, augment_texture, draem_blend, skimage_source_paths
from tests.fixtures_data import make_mvtec_tree
from ldm.quality.folders import folder_quality
from ldm.quality.pixels import anomaly_saliency, background_preservation, mean_pairwise_rms, split_strip

SIZE = 32




@pytest.fixture
def tree(tmp_path):
    return make_mvtec_tree(tmp_path / "data")


def _check_folder(folder, n, expect_empty=False):
    for i in range(n):
        img = Image.open(folder / "image" / f"{i}.png")
        mask = Image.open(folder / "mask" / f"{i}.png")
        strip = Image.open(folder / "image-mask-ori" / f"{i}.png")
        assert img.mode == "RGB" and mask.mode == "L" and strip.mode == "RGB"
        assert img.size == mask.size == (SIZE, SIZE) and strip.size == (3 * SIZE, SIZE)
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        assert (not m.any()) if expect_empty else m.any()
        g, sm, o = split_strip(np.asarray(strip))
        assert np.array_equal(g, np.asarray(img)) and np.array_equal(sm, m > 127)
        changed = np.any(np.asarray(img) != o, axis=-1)
        assert not np.any(changed & (m == 0)), f"{folder}/{i}: pixels changed outside the mask"


@pytest.mark.parametrize("method,kwargs,empty", [
    ("draem", {}, False),
    ("cutpaste", {"variant": "patch"}, False),
    ("cutpaste", {"variant": "scar"}, False),
    ("cutpaste", {"variant": "mask"}, False),
    ("cutpaste", {"variant": "patch_scar"}, False),
    ("normal", {}, True),
])
def test_baselines_write_valid_pairs(tree, tmp_path, method, kwargs, empty):
    idx = index_category("mvtec", tree, "widget")
    out = tmp_path / "pairs"
    stats = synthesize_baseline(method, out, idx.train_good, "widget", "bump", 3, "perlin", SIZE, seed=1,
                                progress=False, **kwargs)
    assert stats["written"] == 3
    _check_folder(out / "widget" / "bump", 3, expect_empty=empty)


def test_resume_is_byte_identical(tree, tmp_path):
    idx = index_category("mvtec", tree, "widget")
    out = tmp_path / "pairs"
    synthesize_baseline("draem", out, idx.train_good, "widget", "bump", 4, "perlin", SIZE, progress=False)
    folder = out / "widget" / "bump"
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.png")}
    (folder / "image-mask-ori" / "2.png").unlink()                  # an interrupted pair
    stats = synthesize_baseline("draem", out, idx.train_good, "widget", "bump", 4, "perlin", SIZE, progress=False)
    assert stats == {**stats, "written": 1, "skipped": 3}
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.png")}
    assert before == after
    assert not list(folder.rglob(".*"))                              # no temp files left behind


def test_resume_refuses_other_settings(tree, tmp_path):
    idx = index_category("mvtec", tree, "widget")
    synthesize_baseline("cutpaste", tmp_path, idx.train_good, "widget", "bump", 1, "perlin", SIZE, progress=False)
    with pytest.raises(ValueError, match="other settings .*synth_kwargs"):
        synthesize_baseline("cutpaste", tmp_path, idx.train_good, "widget", "bump", 1, "perlin", SIZE,
                            progress=False, variant="scar")


def test_methods_share_inputs(tree, tmp_path):
    """Same seed/category/defect → same normal image and same mask for every mask-driven method."""
    idx = index_category("mvtec", tree, "widget")
    for m, kw in (("draem", {}), ("cutpaste", {"variant": "mask"})):
        synthesize_baseline(m, tmp_path / m, idx.train_good, "widget", "bump", 2, "perlin", SIZE, progress=False, **kw)
    for i in range(2):
        a = split_strip(np.asarray(Image.open(tmp_path / "draem/widget/bump/image-mask-ori" / f"{i}.png")))
        b = split_strip(np.asarray(Image.open(tmp_path / "cutpaste/widget/bump/image-mask-ori" / f"{i}.png")))
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_real_masks_come_from_generator_side_only(tree):
    idx = index_category("mvtec", tree, "widget")
    gen, _ = split_anomalies(idx.samples("dent"), "third")
    src = mask_source("real", SIZE, 0, layout="mvtec", split="third", data_root=tree, category="widget",
                      defect="dent", kinds=MASK_SOURCES)
    assert [str(p) for p in src.paths] == [str(s.mask) for s in gen]
    with pytest.raises(ValueError, match="--mask_source must be one of perlin, real, augmented, got 'generated'"):
        mask_source("generated", SIZE, 0, kinds=MASK_SOURCES)  # no mask model for the baselines


def test_real_mask_source_pairs(tree, tmp_path):
    idx = index_category("mvtec", tree, "widget")
    synthesize_baseline("draem", tmp_path, idx.train_good, "widget", "dent", 2, "augmented", SIZE, layout="mvtec",
                        data_root=tree, progress=False)
    _check_folder(tmp_path / "widget" / "dent", 2)


def test_draem_parts():
    assert len(skimage_source_paths()) >= 5
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    for name, fn in AUGMENTERS.items():
        out = fn(tex.copy(), np.random.default_rng(1))
        assert out.shape == tex.shape and out.dtype == np.uint8, name
    assert augment_texture(tex, rng).shape == tex.shape
    img, a, m = np.full((4, 4, 3), 0.2), np.full((4, 4, 3), -0.6), np.zeros((4, 4))
    m[1:3, 1:3] = 1
    out = draem_blend(img, a, m, b=0.25)
    assert np.allclose(out[0, 0], 0.2) and np.allclose(out[1, 1], 0.75 * -0.6 + 0.25 * 0.2)


def test_writer_rejects_mismatch_and_bad_names(tmp_path):
    w = PairWriter(tmp_path, "cat", "def")
    with pytest.raises(ValueError, match="must agree"):
        w.write(0, np.zeros((8, 8, 3)), np.zeros((4, 4)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="invalid sample"):
        PairWriter(tmp_path, "../x", "def")


def test_quality_numbers():
    o = np.zeros((16, 16, 3), np.uint8)
    g = o.copy()
    m = np.zeros((16, 16), bool)
    m[4:8, 4:8] = True
    g[m] = 255
    bp = background_preservation(g, o, m, margin=0)
    assert bp["bg_mae"] == 0 and bp["bg_psnr"] == 100.0
    s = anomaly_saliency(g, o, m, ring=2)
    assert s["inside_diff"] == pytest.approx(1.0) and s["ring_diff"] == 0 and s["saliency"] == pytest.approx(1.0)
    assert math.isnan(anomaly_saliency(g, o, np.zeros_like(m))["saliency"])
    rng = np.random.default_rng(0)
    xs = [rng.random((3, 5)) for _ in range(4)]
    brute = np.mean([np.sqrt(np.mean((xs[i] - xs[j]) ** 2)) for i in range(4) for j in range(i + 1, 4)])
    assert mean_pairwise_rms(xs) == pytest.approx(brute)
    assert math.isnan(mean_pairwise_rms(xs[:1]))


def test_folder_quality_normal_only(tree, tmp_path):
    idx = index_category("mvtec", tree, "widget")
    synthesize_baseline("normal", tmp_path, idx.train_good, "widget", "bump", 3, "perlin", SIZE, progress=False)
    q = folder_quality(tmp_path / "widget" / "bump")
    assert q["bg_mae"] == 0 and math.isnan(q["saliency"]) and q["diversity_residual"] == 0 and q["n_samples"] == 3


def test_cli(tree, tmp_path, capsys):
    from ldm.synthesizers.common import cli as main

    assert main(["--method", "cutpaste", "--data_root", str(tree), "--category", "widget", "--n_samples", "2",
                 "--size", str(SIZE), "--out", str(tmp_path / "o"), "--quality"]) == 0
    assert (tmp_path / "o" / "widget" / "perlin" / "mask" / "1.png").is_file()
    capsys.readouterr()
    assert main(["--method", "draem", "--data_root", str(tree), "--category", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthesize_baseline.py: error:") and "nope" in err and "\n" not in err
    assert main(["--method", "draem", "--data_root", str(tree), "--category", "widget", "--mask_source", "real",
                 "--out", str(tmp_path)]) == 2
    assert "--defect" in capsys.readouterr().err
