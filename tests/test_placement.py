"""Defects stay on the object, native-resolution generation pastes back bit-identically, and a pairs
CSV decides which mask goes on which image."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import generate_with_mask as gen
from ldm.data.placement import ForegroundPlacement, foreground_mask, is_object_category, share_on, window_around
from ldm.pairs import read_index
from tests.run_fixture import gen_args, make_dataset, make_run
from utils.errors import UserError


def _object_image(h=32, w=32, r=9):
    """A bright disc (the object) on a dark, slightly noisy table."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r
    rng = np.random.default_rng(0)
    img = np.where(disc[..., None], 200, 30) + rng.integers(-10, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), disc


def test_otsu_foreground_finds_the_object():
    img, disc = _object_image()
    fg = foreground_mask(img)
    assert (fg == disc).mean() > 0.98


def test_a_mask_on_the_background_is_moved_onto_the_object():
    img, disc = _object_image()
    mask = np.zeros((32, 32), np.float32)
    mask[1:4, 1:5] = 1                                   # a corner of the table
    assert share_on(mask, disc) == 0
    placed, status = ForegroundPlacement(0.9).place(mask, img, "x.png", np.random.default_rng(1))
    assert status == "moved" and placed.sum() == mask.sum() and share_on(placed, disc) >= 0.9
    kept, status = ForegroundPlacement(0.9).place(placed, img, "x.png", np.random.default_rng(1))
    assert status == "kept" and np.array_equal(kept, placed)
    big = np.ones((32, 32), np.float32)                  # cannot fit on the object: the caller redraws
    assert ForegroundPlacement(0.9).place(big, img, "x.png", np.random.default_rng(1))[1] == "rejected"


def test_textures_skip_the_rule_and_objects_use_it():
    assert is_object_category("mvtec", "bottle") and is_object_category("visa", "candle")
    assert not is_object_category("mvtec", "carpet") and not is_object_category("texture_ad", "brick")


def test_window_is_square_around_the_mask_and_inside_the_image():
    m = np.zeros((48, 80), np.float32)
    m[40:46, 70:78] = 1
    top, left, h, w = window_around(m, 32)
    assert (h, w) == (32, 32) and 0 <= top <= 48 - 32 and 0 <= left <= 80 - 32
    assert m[top:top + h, left:left + w].sum() == m.sum()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("place")
    data = make_dataset(work / "texture-ad")
    return work, data, make_run(work, data)


def test_generation_keeps_every_mask_on_the_object(world, tmp_path):
    work, data, ckdir = world
    normals = tmp_path / "normals"
    normals.mkdir()
    for i in range(3):
        Image.fromarray(_object_image()[0]).save(normals / f"{i}.png")
    out = gen.main(gen_args(data, ckdir, tmp_path / "out", "--data_root", str(normals), "--foreground", "on",
                            "--n_samples", "4"))
    assert sum(out["placements"].values()) == 4
    disc = _object_image()[1]
    root = tmp_path / "out" / "brick" / "scratch"
    for r in read_index(root):
        m = np.asarray(Image.open(root / r["mask"])) > 0
        assert share_on(m, disc) >= 0.9, r
    metas = [json.loads(p.read_text()) for p in sorted((root / "meta").glob("*.json"))]
    assert {m["placement"] for m in metas} <= {"kept", "moved", "redrawn (kept)", "redrawn (moved)"}
    # the rule is part of the settings: turning it off into the same folder is refused
    with pytest.raises(UserError, match="foreground"):
        gen.main(gen_args(data, ckdir, tmp_path / "out", "--data_root", str(normals), "--foreground", "off",
                          "--n_samples", "4"))


def test_native_resolution_pastes_back_bit_identically(world, tmp_path):
    work, data, ckdir = world
    normals = tmp_path / "wide"
    normals.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):  # non-square, larger than the model's 32 px
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(normals / f"{i}.png")
    gen.main(gen_args(data, ckdir, tmp_path / "out", "--data_root", str(normals), "--native", "--n_samples", "3"))
    root = tmp_path / "out" / "brick" / "scratch"
    for r in read_index(root):
        img = np.asarray(Image.open(root / r["image"]))
        mask = np.asarray(Image.open(root / r["mask"])) > 0
        normal = np.asarray(Image.open(r["normal_image"]).convert("RGB"))
        assert img.shape == (48, 80, 3) and mask.shape == (48, 80) and mask.any()
        assert np.array_equal(img[~mask], normal[~mask])                 # outside the mask: the file's pixels
        assert not np.array_equal(img[mask], normal[mask])               # inside: generated
        meta = json.loads((root / "meta" / f"{r['n']}.json").read_text())
        top, left, h, w = meta["window"]
        assert h == w >= 32 and mask[top:top + h, left:left + w].sum() == mask.sum()


def test_pairs_csv_decides_image_and_mask(world, tmp_path):
    work, data, ckdir = world
    normals = sorted((data / "brick" / "train" / "good").glob("*.png"))
    masks = sorted((data / "brick" / "ground_truth" / "scratch").glob("*.png"))
    rows = [(normals[2], masks[4], "scratch"), (normals[0], masks[1], ""), (normals[1], masks[0], "crack")]
    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["normal_image", "mask", "defect"])
        w.writerows([(str(a), str(b), d) for a, b, d in rows])
    out = gen.main(gen_args(data, ckdir, tmp_path / "out", "--pairs_csv", str(table), "--n_samples", "2"))
    assert out["written"] == 2                                   # the crack row is another defect type
    root = tmp_path / "out" / "brick" / "scratch"
    got = read_index(root)
    for r, (normal, mask, _) in zip(got, rows[:2]):
        assert r["normal_image"] == str(normal) and r["mask_origin"] == str(mask)
        want = np.asarray(Image.open(mask).convert("L").resize((32, 32))) > 127
        assert (np.asarray(Image.open(root / r["mask"])) > 0).mean() == pytest.approx(want.mean(), abs=0.05)
    with pytest.raises(UserError, match="exceeds the 2 rows"):
        gen.main(gen_args(data, ckdir, tmp_path / "o2", "--pairs_csv", str(table), "--n_samples", "5"))
