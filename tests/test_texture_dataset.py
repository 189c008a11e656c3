"""texture-AD builder: determinism, idempotence, disjoint train/test regions, exact masks, layout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ldm.data.texture_ad as tad
from ldm.data.anomaly import AnomalyDataset
from ldm.data.layouts import index_category, list_categories

SMALL = dict(size=32, train_good=3, test_good=2, per_defect=2)
REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_twice_and_mvtec_layout(tmp_path):
    a = tad.build_texture_ad(tmp_path / "a", **SMALL)
    tad.build_texture_ad(tmp_path / "b", **SMALL)
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert ta == tb and a["written"]
    assert "LICENSE.txt" in ta and "CC0" in ta["LICENSE.txt"].decode()
    root = tmp_path / "a"
    assert list_categories("mvtec", root) == ["brick", "grass", "gravel"]
    idx = index_category("texture-ad", root, "gravel")
    assert len(idx.train_good) == 3 and len(idx.test_good) == 2
    assert sorted(idx.anomalies) == sorted(tad.DEFECTS) and len(tad.DEFECTS) >= 3
    for s in idx.anomalies["crack"]:
        m = np.asarray(Image.open(s.mask))
        assert set(np.unique(m)) == {0, 255}
        assert np.asarray(Image.open(s.image)).shape == (32, 32, 3)
    d = AnomalyDataset(root, "brick", "stain", size=16, anomaly_split="all")
    assert len(d) == 2 and d[0]["mask"].sum() > 0
    assert [p.name for p in idx.train_good] == ["000.png", "001.png", "002.png"]


def test_idempotent_and_guarded(tmp_path):
    out = tmp_path / "tex"
    tad.build_texture_ad(out, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = tad.build_texture_ad(out, **SMALL)
    assert not again["written"] and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(ValueError, match="--force"):
        tad.build_texture_ad(out, **{**SMALL, "seed": 1})
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        tad.build_texture_ad(other, **SMALL)
    assert (other / "mine.txt").read_text() == "keep"
    # a damaged tree built with the same arguments is repaired
    victim = out / "brick" / "train" / "good" / "000.png"
    victim.write_bytes(b"broken")
    assert tad.build_texture_ad(out, **SMALL)["written"]
    tad.build_texture_ad(tmp_path / "ref", **SMALL)
    assert _tree(out) == _tree(tmp_path / "ref")
    forced = tad.build_texture_ad(out, force=True, **{**SMALL, "seed": 1})
    assert forced["written"] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_train_and_test_regions_never_share_a_pixel(tmp_path, monkeypatch):
    def labelled(name):  # rows of the train region are 40, rows of the test region 200
        g = np.full((512, 512), 40, np.uint8)
        g[int(round(512 * tad.TRAIN_FRACTION)):] = 200
        return g

    monkeypatch.setattr(tad, "load_texture", labelled)
    out = tmp_path / "lab"
    tad.build_texture_ad(out, size=96, train_good=6, test_good=6, per_defect=3, textures=("grass",))
    gain = np.asarray(tad.TEXTURES["grass"][1])
    train_px = np.clip(40 * gain + 0.5, 0, 255).astype(np.uint8)
    test_px = np.clip(200 * gain + 0.5, 0, 255).astype(np.uint8)
    for p in (out / "grass" / "train" / "good").iterdir():
        assert (np.asarray(Image.open(p)) == train_px).all()
    for p in (out / "grass" / "test" / "good").iterdir():
        assert (np.asarray(Image.open(p)) == test_px).all()
    for defect in tad.DEFECTS:
        for p in (out / "grass" / "test" / defect).iterdir():
            img = np.asarray(Image.open(p))
            mask = np.asarray(Image.open(out / "grass" / "ground_truth" / defect / f"{p.stem}_mask.png")) > 0
            assert (img[~mask] == test_px).all()  # outside the mask: untouched test-region pixels


@pytest.mark.parametrize("name", tad.DEFECTS)
def test_renderers_change_only_inside_their_mask(name):
    base = np.random.default_rng(0).integers(60, 200, size=(48, 64, 3), dtype=np.uint8)
    for k in range(5):
        img, mask = tad.render_defect(name, base, np.random.default_rng(k))
        assert img.shape == base.shape and img.dtype == np.uint8 and mask.dtype == bool and mask.any()
        changed = (img != base).any(axis=2)
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5  # the defect is visible where the mask says


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--size 300"):
        tad.build_texture_ad(tmp_path / "x", size=300, train_good=1, test_good=1, per_defect=1)
    with pytest.raises(ValueError, match="unknown texture 'marble'"):
        tad.build_texture_ad(tmp_path / "x", textures=("marble",))
    assert not (tmp_path / "x").exists()


def test_script_help_and_run(tmp_path):
    script = REPO / "scripts" / "build_texture_dataset.py"
    h = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "CC0" in h.stdout and "--per-defect" in h.stdout
    r = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "s"), "--size", "24",
                        "--train-good", "1", "--test-good", "1", "--per-defect", "1", "--textures", "brick"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "wrote" in r.stdout
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "s"), "--seed", "3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--force" in bad.stderr and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("defect", ["fissure", "blotch", "pitting", "abrasion"])
def test_wild_family_changes_pixels_only_inside_its_exact_mask(defect):
    """The second defect family (other rendering code): visible, and never outside the mask."""
    import numpy as np

    from ldm.data.texture_ad import render_defect

    rng = np.random.default_rng(7)
    base = rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
    for i in range(5):
        out, mask = render_defect(defect, base, np.random.default_rng([i]))
        assert out.shape == base.shape and out.dtype == np.uint8 and mask.dtype == bool and mask.any()
        assert np.array_equal(out[~mask], base[~mask])
        assert np.abs(out[mask].astype(int) - base[mask].astype(int)).mean() > 5  # a visible change
        again, mask2 = render_defect(defect, base, np.random.default_rng([i]))
        assert np.array_equal(again, out) and np.array_equal(mask2, mask)   # deterministic


def test_build_script_family_flag(tmp_path):
    from ldm.data.texture_ad import cli as main

    assert main(["--out", str(tmp_path / "w"), "--family", "wild", "--textures", "brick", "--size", "32",
                 "--train-good", "1", "--test-good", "1", "--per-defect", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "w" / "brick" / "ground_truth").iterdir()) == \
        ["abrasion", "blotch", "fissure", "pitting"]
