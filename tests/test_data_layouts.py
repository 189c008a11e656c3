"""Layouts, file ordering, mask/image reading rules, splits and the --mvtec_path forms."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.io import load_image, load_mask, natural_key, save_png_atomic
from ldm.data.layouts import (AnomalySample, detect_layout, get_layout, index_category,
                              list_categories, resolve_mvtec_path, split_anomalies)
from tests.fixtures_data import make_btad, make_mvtec, make_visa, rect_mask, rng_for, write_image, write_mask


# ---------------------------------------------------------------- io

def test_natural_key_orders_numbers_numerically_and_never_crashes():
    names = ["10.png", "9.png", "b10.png", "b2.png", "a.png", "007.png", "7.png", "x1y", ".png", "", "Z.png"]
    out = sorted(names, key=natural_key)
    assert out.index("7.png") < out.index("9.png") < out.index("10.png")
    assert out.index("b2.png") < out.index("b10.png")
    assert abs(out.index("007.png") - out.index("7.png")) == 1 and out.index("007.png") < out.index("9.png")
    assert sorted(["000.png", "002.png", "001.png"], key=natural_key) == ["000.png", "001.png", "002.png"]


def test_load_image_rgb_range_and_size(tmp_path):
    p = write_image(tmp_path / "g.png", rng_for(1), (20, 30), gray=True)
    a = load_image(p, 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert np.allclose(a[..., 0], a[..., 1])  # greyscale read as RGB
    assert load_image(p, None).shape == (20, 30, 3)


@pytest.mark.parametrize("values", [(0, 255), (0, 1), (0, 3)])
def test_load_mask_intensity_and_class_id_rules(tmp_path, values):
    m = np.full((20, 20), values[0], np.uint8)
    m[4:14, 4:14] = values[1]
    p = write_mask(tmp_path / "m.png", m)
    out = load_mask(p, None)
    assert out.dtype == np.float32 and set(np.unique(out)) == {0.0, 1.0}
    assert out.sum() == 100
    small = load_mask(p, 10)
    assert small.shape == (10, 10) and set(np.unique(small)) <= {0.0, 1.0} and small.sum() == 25


def test_load_mask_ignores_jpeg_like_noise_in_255_masks(tmp_path):
    m = rng_for(3).integers(0, 12, size=(16, 16)).astype(np.uint8)  # noise in background
    m[4:8, 4:8] = 250
    out = load_mask(write_mask(tmp_path / "m.png", m), None)
    assert out.sum() == 16


def test_load_mask_rgb_and_palette(tmp_path):
    m = np.zeros((12, 12, 3), np.uint8)
    m[2:6, 2:6] = 255
    assert load_mask(write_mask(tmp_path / "rgb.png", m), None).sum() == 16
    pal = Image.fromarray((m[..., 0] > 0).astype(np.uint8) * 2).convert("P")
    pal.putpalette([0, 0, 0] * 256)  # index 2 is painted black: the raw index must count
    pal.save(tmp_path / "p.png")
    assert load_mask(tmp_path / "p.png", None).sum() == 16


def test_save_png_atomic_writes_whole_files_only(tmp_path):
    p = save_png_atomic(np.zeros((4, 4), bool), tmp_path / "sub" / "x.png")
    assert np.asarray(Image.open(p)).shape == (4, 4)
    assert [f.name for f in p.parent.iterdir()] == ["x.png"]
    with pytest.raises(ValueError, match="x2.png"):
        save_png_atomic(np.zeros((4, 4), np.int64), tmp_path / "x2.png")
    assert not (tmp_path / "x2.png").exists() and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------- MVTec / folder

def test_mvtec_index_and_relative_names(tmp_path):
    root = make_mvtec(tmp_path / "deep" / "ground_truth_like" / "MVTEC")
    assert list_categories("mvtec", root) == ["bottle", "grid"]
    idx = index_category("mvtec", root, "bottle")
    assert idx.category == "bottle" and idx.layout == "mvtec"
    assert len(idx.train_good) == 5 and len(idx.test_good) == 2
    assert sorted(idx.anomalies) == ["broken_large", "contamination"]
    s = idx.anomalies["broken_large"][3]
    assert s.name == "bottle+broken_large" and s.mask.name == "003_mask.png" and s.image.name == "003.png"
    grid = index_category("mvtec", root, "grid")
    assert load_image(grid.train_good[0], 8).shape == (8, 8, 3)


def test_mvtec_non_numeric_names_sorted_naturally(tmp_path):
    names = ["img10", "img9", "scan_b", "scan_a", "2"]
    root = make_mvtec(tmp_path / "ds", {"cable": {"train": 2, "defects": {"cut": 5}, "names": names}})
    got = [s.image.stem for s in index_category("mvtec", root, "cable").anomalies["cut"]]
    assert got == ["2", "img9", "img10", "scan_a", "scan_b"]


def test_mvtec_ignores_stray_files(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    (root / "bottle" / "train" / "good" / ".DS_Store").write_bytes(b"x")
    (root / "bottle" / "train" / "good" / "notes.txt").write_text("hi")
    assert len(index_category("mvtec", root, "bottle").train_good) == 5


def test_folder_layout_with_custom_names(tmp_path):
    cat = tmp_path / "widgets"
    for i in range(3):
        write_image(cat / "normal" / f"{i}.jpg", rng_for(i))
    for i in range(4):
        r = rng_for(9, i)
        write_image(cat / "defects" / "dent" / f"{i}.png", r)
        write_mask(cat / "masks" / "dent" / f"{i}_gt.png", rect_mask(r))
    params = dict(train_good="normal", test_good=[], test="defects", ground_truth="masks", mask_suffix="_gt")
    idx = index_category("folder", cat, ".", **params)
    assert idx.category == "widgets" and len(idx.train_good) == 3 and len(idx.anomalies["dent"]) == 4
    assert list_categories("folder", tmp_path, **params) == ["widgets"]
    assert index_category("folder", tmp_path, "widgets", **params).anomalies["dent"][0].name == "widgets+dent"


# ---------------------------------------------------------------- BTAD

def test_btad_bmp_and_png(tmp_path):
    root = make_btad(tmp_path / "BTech_Dataset_transformed")
    assert list_categories("btad", root) == ["01", "02", "03"]
    i3 = index_category("btad", root, 3)  # YAML integer
    assert i3.category == "03" and list(i3.anomalies) == ["ko"]
    assert all(s.mask.suffix == ".bmp" for s in i3.anomalies["ko"])
    assert len(i3.train_good) == 4 and len(i3.test_good) == 2
    i2 = index_category("btad", root, "02")
    assert {p.suffix for p in i2.train_good} == {".png", ".bmp"} and len(i2.anomalies["ko"]) == 6
    m = load_mask(i3.anomalies["ko"][0].mask, None)
    assert m.shape == (18, 24) and m.sum() > 0


# ---------------------------------------------------------------- VisA

def test_visa_csv_and_class_id_masks(tmp_path):
    root = make_visa(tmp_path / "VisA")
    assert list_categories("visa", root) == ["candle", "pcb1"]
    idx = index_category("visa", root, "pcb1")
    assert len(idx.train_good) == 4 and len(idx.test_good) == 2 and list(idx.anomalies) == ["bad"]
    masks = [load_mask(s.mask, None) for s in idx.anomalies["bad"]]
    assert all(m.sum() > 0 and set(np.unique(m)) == {0.0, 1.0} for m in masks)
    assert idx.anomalies["bad"][0].name == "pcb1+bad"


def test_visa_missing_columns(tmp_path):
    root = make_visa(tmp_path / "VisA", columns=("object", "split", "label", "image"))
    with pytest.raises(ValueError, match=r"1cls\.csv.*mask"):
        index_category("visa", root, "candle")


def test_visa_unknown_category_and_missing_csv(tmp_path):
    root = make_visa(tmp_path / "VisA")
    with pytest.raises(FileNotFoundError, match="unknown category 'fryum'.*candle"):
        index_category("visa", root, "fryum")
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        index_category("visa", root, "candle")


def test_visa_missing_mask_file(tmp_path):
    root = make_visa(tmp_path / "VisA")
    (root / "candle/Data/Masks/Anomaly/002.png").unlink()
    with pytest.raises(FileNotFoundError, match="002.png"):
        index_category("visa", root, "candle")


# ---------------------------------------------------------------- splits

def _samples(n):
    return [AnomalySample(Path(f"{i:03d}.png"), Path(f"{i:03d}_mask.png"), "c", "d") for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 3, 7, 20, 21])
def test_third_split_sizes_and_disjoint(n):
    gen, ev = split_anomalies(list(reversed(_samples(n))), "third")
    assert len(gen) == n // 3 and len(ev) == n - n // 3
    assert not {s.image for s in gen} & {s.image for s in ev}
    assert [s.image.name for s in gen + ev] == [f"{i:03d}.png" for i in range(n)]


def test_other_split_modes():
    gen, ev = split_anomalies(_samples(20), "all")
    assert len(gen) == len(ev) == 20
    gen, ev = split_anomalies(_samples(20), "anomalydiffusion")
    assert len(gen) == 7 and len(ev) == 14 and gen[-1] == ev[0]  # upstream's shared image k
    with pytest.raises(ValueError, match="anomaly_split"):
        split_anomalies(_samples(3), "half")


# ---------------------------------------------------------------- --mvtec_path

def test_resolve_mvtec_path_forms(tmp_path):
    root = make_mvtec(tmp_path / "data" / "MVTEC_AD")
    assert resolve_mvtec_path(root, "bottle", "contamination") == (root, "bottle", "contamination")
    assert resolve_mvtec_path(str(root / "bottle" / "ground_truth" / "broken_large") + "/") == \
        (root, "bottle", "broken_large")
    assert resolve_mvtec_path(root / "bottle" / "test" / "broken_large") == (root, "bottle", "broken_large")
    assert resolve_mvtec_path(root / "grid", defect="bent") == (root, "grid", "bent")
    with pytest.raises(ValueError, match="'grid'"):
        resolve_mvtec_path(root / "bottle" / "ground_truth" / "broken_large", category="grid")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_mvtec_path(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="unknown category 'carpet'"):
        resolve_mvtec_path(root, "carpet")


def test_detect_layout_and_btad_path(tmp_path):
    mv, bt, vi = make_mvtec(tmp_path / "m"), make_btad(tmp_path / "b"), make_visa(tmp_path / "v")
    assert (detect_layout(mv), detect_layout(bt), detect_layout(vi), detect_layout(tmp_path)) == \
        ("mvtec", "btad", "visa", None)
    assert resolve_mvtec_path(bt / "03" / "ground_truth" / "ko", category=3) == (bt, "03", "ko")
    assert resolve_mvtec_path(vi, "candle", "bad") == (vi, "candle", "bad")


# ---------------------------------------------------------------- bad input

def test_missing_root_category_defect(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        index_category("mvtec", tmp_path / "missing", "bottle")
    with pytest.raises(FileNotFoundError, match="unknown category 'carpet'.*bottle, grid"):
        index_category("mvtec", root, "carpet")
    with pytest.raises(FileNotFoundError, match="unknown defect 'hole'.*broken_large"):
        index_category("mvtec", root, "bottle").samples("hole")
    with pytest.raises(ValueError, match="unknown dataset layout 'kitti'"):
        get_layout("kitti")


def test_image_without_mask_and_mask_without_image(tmp_path):
    root = make_mvtec(tmp_path / "a")
    (root / "grid" / "ground_truth" / "bent" / "002_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image without mask: .*bent/002\.png"):
        index_category("mvtec", root, "grid")
    root = make_mvtec(tmp_path / "b")
    (root / "grid" / "test" / "bent" / "004.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask without image: .*004_mask\.png"):
        index_category("mvtec", root, "grid")
    root = make_mvtec(tmp_path / "c")
    (root / "grid" / "ground_truth" / "bent").rename(root / "grid" / "ground_truth" / "bend")
    with pytest.raises(FileNotFoundError, match="missing mask folder"):
        index_category("mvtec", root, "grid")


def test_empty_train_split(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    for p in (root / "grid" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"empty split: .*grid/train/good"):
        index_category("mvtec", root, "grid")


def test_visa_row_without_mask(tmp_path):
    root = make_visa(tmp_path / "VisA")
    path = root / "split_csv" / "1cls.csv"
    rows = list(csv.reader(open(path)))
    for r in rows:
        if r[2] == "anomaly":
            r[4] = ""
            break
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(FileNotFoundError, match=r"image without mask: .*Anomaly/000\.JPG"):
        index_category("visa", root, "candle")
