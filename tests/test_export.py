"""Exports of a pairs folder (``ldm/export.py``, ``scripts/export_pairs.py``): MVTec/anomalib, MMSeg, HF.

The pairs folders are built here with PIL: category ``widget`` has 3 normal source images (32×32,
resized to the 16×16 pair size like generation does), ``crack`` pairs n = 0..11 (so n = 1 and 10
exist, the case anomalib's sorted pairing breaks on without zero padding) and ``stain`` n = 0..3;
pair n of defect d uses source ``(n + d) % 3``.  Category ``gadget`` has 3 ``dent`` pairs over its
own 2 sources.  Every image is checked against the pair it came from, found from the exported name
or from the pixels, never from the exporter's own index.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.io import load_image_uint8
from ldm.export import ExportOptions, export_pairs
from utils.errors import UserError

PAIR_HW = (16, 16)
LAYOUT = {"widget": {"crack": list(range(12)), "stain": list(range(4))}, "gadget": {"dent": [0, 1, 2]}}
N_SOURCES = {"widget": 3, "gadget": 2}


def _score(category: str, defect: str, n: int) -> float:
    return round(((n * 7 + len(defect) * 3 + len(category)) % 11) / 10.0, 3)


def _source_index(category: str, defect: str, n: int) -> int:
    return (n + sorted(LAYOUT[category]).index(defect)) % N_SOURCES[category]


def _save(a: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def build_pairs(root: Path, with_csv: bool = True) -> dict:
    """Write the pairs tree; returns ``{"normals": {cat: [paths]}, "pairs": {(cat, defect, n): (img, mask)}}``."""
    normals, pairs = {}, {}
    for ci, category in enumerate(sorted(LAYOUT)):
        rng = np.random.default_rng([7, ci])
        paths = []
        for s in range(N_SOURCES[category]):
            p = root.parent / "normals" / category / f"good_{s}.png"
            _save(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), p)
            paths.append(p)
        normals[category] = paths
        for di, defect in enumerate(sorted(LAYOUT[category])):
            folder = root / category / defect
            rows = []
            for n in LAYOUT[category][defect]:
                src = paths[_source_index(category, defect, n)]
                original = load_image_uint8(src, PAIR_HW)
                mask = np.zeros(PAIR_HW, np.uint8)
                y, x = n % 8, (3 * n + di) % 8
                mask[y:y + 5, x:x + 6] = 255
                image = original.copy()
                image[mask > 0] = (40 * di + 3 * n, 200 - 5 * n, 17 * ci)
                _save(image, folder / "image" / f"{n}.png")
                _save(mask, folder / "mask" / f"{n}.png")
                strip = np.concatenate([image, np.repeat(mask[..., None], 3, axis=2), original], axis=1)
                _save(strip, folder / "image-mask-ori" / f"{n}.png")
                pairs[(category, defect, n)] = (image, mask)
                rows.append({"n": n, "image": f"image/{n}.png", "mask": f"mask/{n}.png",
                             "normal_image": str(src.resolve()), "mask_origin": "real", "category": category,
                             "defect": defect, "seed": 100 + n, "score": _score(category, defect, n),
                             "saliency": 0.25, "background_error": 0.0, "mask_area": float((mask > 0).mean())})
            (folder / "synthesis.json").write_text(json.dumps({"method": "test", "seed": 5}))
            if with_csv:
                with open(folder / "pairs.csv", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
    return {"normals": normals, "pairs": pairs}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "gen" / "fast"
    return root, build_pairs(root)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _which_normal(a: np.ndarray, data: dict, category: str) -> int:
    """Index of the source normal image whose pair-size version equals ``a``."""
    hits = [i for i, p in enumerate(data["normals"][category]) if np.array_equal(load_image_uint8(p, PAIR_HW), a)]
    assert len(hits) == 1, "an exported normal image matches no source"
    return hits[0]


def _parse_name(name: str) -> tuple:
    category, defect, n = Path(name).stem.split("+")
    return category, defect, int(n)


def _seg_sides(out: Path, data: dict, img_dir: str, splits: tuple) -> dict:
    """``{split: {(category, source_index)}}`` from exported file names (pairs) and pixels (normals)."""
    sides = {}
    for split in splits:
        found = set()
        for p in sorted((out / split.format(img_dir=img_dir)).glob("*.png")):
            category, defect, n = _parse_name(p.name)
            if defect == "good":
                found.add((category, _which_normal(_read(p), data, category)))
            else:
                found.add((category, _source_index(category, defect, n)))
        sides[split] = found
    return sides


# ----------------------------------------------------------------------------- MVTec / anomalib

def test_mvtec_layout_pairs_like_anomalib(tree, tmp_path):
    root, data = tree
    out = tmp_path / "exports" / "mvtec"
    m = export_pairs(root, out, ExportOptions("mvtec", val_fraction=0.34, seed=3), log=lambda s: None)
    for category, defects in LAYOUT.items():
        cat = out / category
        for defect, ns in defects.items():
            images = sorted((cat / "test" / defect).iterdir())
            masks = sorted((cat / "ground_truth" / defect).iterdir())
            assert len(images) == len(masks) == len(ns)
            for img, msk in zip(images, masks):  # anomalib: sorted images and sorted masks pair up ...
                assert img.stem in msk.stem and msk.name == f"{img.stem}_mask.png"  # ... and names agree
                n = int(img.stem)
                assert len(img.stem) == 6
                ref_image, ref_mask = data["pairs"][(category, defect, n)]
                assert _mode(img) == "RGB" and np.array_equal(_read(img), ref_image)
                assert _mode(msk) == "L" and np.array_equal(_read(msk), ref_mask)
                assert set(np.unique(_read(msk))) <= {0, 255}
        train = [_which_normal(_read(p), data, category) for p in sorted((cat / "train" / "good").iterdir())]
        test = [_which_normal(_read(p), data, category) for p in sorted((cat / "test" / "good").glob("*.png"))]
        assert sorted(train + test) == list(range(N_SOURCES[category]))  # every source once, one side only
        assert len(test) == 1  # round(0.34 × 3) = 1 and round(0.34 × 2) = 1 held-out source
        assert m["splits"][category]["train/good"] == len(train)
    assert m["format"] == "mvtec" and m["counts"]["kept"] == 19 and m["counts"]["dropped"] == 0
    assert json.loads((out / "export_manifest.json").read_text()) == m


def test_single_defect_folder_and_normal_dir(tree, tmp_path):
    root, data = tree
    extra = tmp_path / "more_normals"
    rng = np.random.default_rng(99)
    _save(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8), extra / "extra.jpg")
    out = tmp_path / "mv1"
    m = export_pairs(root / "widget" / "stain", out, ExportOptions("mvtec", val_fraction=0.0, normal_dir=extra))
    assert sorted(p.name for p in out.iterdir()) == ["export_manifest.json", "index.csv", "widget"]
    assert sorted(p.name for p in (out / "widget" / "test").iterdir()) == ["stain"]
    good = sorted((out / "widget" / "train" / "good").iterdir())
    assert not (out / "widget" / "test" / "good").exists() or not any((out / "widget" / "test" / "good").iterdir())
    # stain uses all 3 widget sources, plus the extra image (resized to the pair size, saved as PNG)
    assert len(good) == 4 and all(_read(p).shape == (*PAIR_HW, 3) for p in good)
    assert m["counts"]["normal_images_from_normal_dir"] == 1


# ----------------------------------------------------------------------------- MMSegmentation

def test_mmseg_layout_values_normals_and_config(tree, tmp_path):
    root, data = tree
    out = tmp_path / "mmseg"
    m = export_pairs(root, out, ExportOptions("mmseg", val_fraction=0.34, seed=1))
    n_normal = n_pair = 0
    for split in ("train", "val"):
        imgs = sorted(p.name for p in (out / "img_dir" / split).iterdir())
        anns = sorted(p.name for p in (out / "ann_dir" / split).iterdir())
        assert imgs == anns and imgs
        for name in imgs:
            ann = _read(out / "ann_dir" / split / name)
            assert _mode(out / "ann_dir" / split / name) == "L" and set(np.unique(ann)) <= {0, 1}
            category, defect, n = _parse_name(name)
            if defect == "good":
                n_normal += 1
                assert not ann.any() and ann.shape == PAIR_HW
            else:
                n_pair += 1
                ref_image, ref_mask = data["pairs"][(category, defect, n)]
                assert np.array_equal(ann, (ref_mask > 0).astype(np.uint8))
                assert np.array_equal(_read(out / "img_dir" / split / name), ref_image)
    assert (n_pair, n_normal) == (19, 5)
    sides = _seg_sides(out, data, "img_dir", ("{img_dir}/train", "{img_dir}/val"))
    assert not sides["{img_dir}/train"] & sides["{img_dir}/val"]
    assert len(sides["{img_dir}/val"]) == 2  # one source per category held out
    assert m["splits"]["val"]["sources"] == 2

    cfg = {}
    exec(compile((out / "dataset_config.py").read_text(), "dataset_config.py", "exec"), cfg)
    assert cfg["dataset_type"] == "BaseSegDataset" and cfg["data_root"] == str(out.resolve())
    assert cfg["metainfo"]["classes"] == ("background", "anomaly") and len(cfg["metainfo"]["palette"]) == 2
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val")):
        ds = cfg[loader]["dataset"]
        assert ds["img_suffix"] == ds["seg_map_suffix"] == ".png" and ds["reduce_zero_label"] is False
        assert ds["data_prefix"] == {"img_path": f"img_dir/{split}", "seg_map_path": f"ann_dir/{split}"}
        assert (Path(ds["data_root"]) / ds["data_prefix"]["img_path"]).is_dir()


def test_split_is_reproducible_and_seeded(tree, tmp_path):
    root, data = tree

    def sides(seed, name):
        out = tmp_path / name
        export_pairs(root, out, ExportOptions("mmseg", val_fraction=0.34, seed=seed, include_normals=False))
        return {s: sorted(p.name for p in (out / "img_dir" / s).iterdir()) for s in ("train", "val")}

    a, b = sides(0, "a"), sides(0, "b")
    assert a == b
    others = [sides(s, f"s{s}") for s in (1, 2, 3, 4, 5)]
    assert any(o != a for o in others)  # the seed matters
    for o in [a] + others:  # every pair kept, sources never split
        assert len(o["train"]) + len(o["val"]) == 19
        tr = {(c, _source_index(c, d, n)) for c, d, n in map(_parse_name, o["train"])}
        va = {(c, _source_index(c, d, n)) for c, d, n in map(_parse_name, o["val"])}
        assert not tr & va


# ----------------------------------------------------------------------------- Hugging Face imagefolder

@pytest.fixture
def offline(monkeypatch):
    """Loading an imagefolder is local; make sure nothing tries the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _load_hf(out: Path, cache: Path):
    import datasets  # requirements-dev.txt

    return datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(cache))


def test_hf_imagefolder_loads_with_masks(tree, tmp_path, offline):
    root, data = tree
    out = tmp_path / "hf"
    export_pairs(root, out, ExportOptions("hf", val_fraction=0.34, seed=2))
    ds = _load_hf(out, tmp_path / "cache")
    assert set(ds) == {"train", "validation"}
    columns = {"image", "mask", "category", "defect", "seed", "normal_image", "score", "is_anomaly"}
    assert columns <= set(ds["train"].features) and columns <= set(ds["validation"].features)
    seen, sides = set(), {}
    for split in ("train", "validation"):
        sides[split] = set()
        for row in ds[split]:
            image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
            assert set(np.unique(mask)) <= {0, 1}
            category = row["category"]
            if row["defect"] == "good":
                assert not row["is_anomaly"] and not mask.any() and math.isnan(row["score"])
                k = _which_normal(image, data, category)
                assert Path(row["normal_image"]) == data["normals"][category][k]
            else:
                key = (category, row["defect"], row["n"])
                ref_image, ref_mask = data["pairs"][key]
                assert np.array_equal(image, ref_image) and np.array_equal(mask, (ref_mask > 0).astype(np.uint8))
                assert row["score"] == pytest.approx(_score(*key)) and row["seed"] == 100 + row["n"]
                k = _source_index(*key)
                assert row["normal_image"] == str(data["normals"][category][k].resolve())
                seen.add(key)
            sides[split].add((category, k))
    assert seen == set(data["pairs"])
    assert not sides["train"] & sides["validation"]


def test_hf_without_pairs_csv(tmp_path, offline):
    root = tmp_path / "old" / "pairs"
    data = build_pairs(root, with_csv=False)
    out = tmp_path / "hf_old"
    m = export_pairs(root / "widget", out, ExportOptions("hf", val_fraction=0.25, seed=0))
    ds = _load_hf(out, tmp_path / "cache")
    rows = list(ds["train"]) + list(ds["validation"])
    assert len(rows) == 16 and all(r["is_anomaly"] for r in rows)  # no sources known: no normal images
    assert all(math.isnan(r["score"]) and r["normal_image"] == "" and r["seed"] == 5 for r in rows)
    assert len(ds["validation"]) == 4  # each pair its own source: round(0.25 × 16)
    for r in rows:
        ref_image, ref_mask = data["pairs"][("widget", r["defect"], r["n"])]
        assert np.array_equal(np.asarray(r["image"]), ref_image)
        assert r["mask_area"] == pytest.approx((ref_mask > 0).mean())
    assert m["counts"]["normal_images"] == 0 and not m["folders"]["widget/crack"]["pairs_csv"]
    with pytest.raises(UserError, match="--min_score.*no pairs.csv"):
        export_pairs(root, tmp_path / "x", ExportOptions("hf", min_score=0.1))
    with pytest.raises(UserError, match="--keep_top"):
        export_pairs(root, tmp_path / "x", ExportOptions("mvtec", keep_top=2))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- filtering

def test_filtering_keeps_the_right_pairs(tree, tmp_path):
    root, data = tree
    all_keys = sorted(data["pairs"])

    def kept(name, **kw):
        out = tmp_path / name
        m = export_pairs(root, out, ExportOptions("mvtec", **kw))
        got = {(c, d, int(p.stem)) for c in LAYOUT for d in LAYOUT[c] for p in (out / c / "test" / d).glob("*.png")}
        return got, m

    got, m = kept("min", min_score=0.5)
    want = {k for k in all_keys if _score(*k) >= 0.5}
    assert got == want and 0 < len(want) < len(all_keys)
    assert m["counts"]["kept"] == len(want) and m["counts"]["dropped_min_score"] == len(all_keys) - len(want)

    got, m = kept("top", keep_top=2)
    want = set()
    for c in LAYOUT:
        for d in LAYOUT[c]:
            ks = sorted((k for k in all_keys if k[:2] == (c, d)), key=lambda k: (-_score(*k), k[2]))
            want |= set(ks[:2])
    assert got == want and len(want) == 6 and m["counts"]["dropped_keep_top"] == len(all_keys) - 6

    got, m = kept("both", min_score=0.5, keep_top=3)
    want = set()
    for c in LAYOUT:
        for d in LAYOUT[c]:
            ks = [k for k in all_keys if k[:2] == (c, d) and _score(*k) >= 0.5]
            ks = sorted(ks, key=lambda k: (-_score(*k), k[2]))
            want |= set(ks[:3])
    assert got == want
    assert m["filter"]["min_score"] == 0.5 and m["filter"]["keep_top"] == 3
    assert m["counts"]["kept"] + m["counts"]["dropped"] == len(all_keys)


# ----------------------------------------------------------------------------- safety

def test_non_empty_target_needs_overwrite(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        export_pairs(root, out, ExportOptions("mmseg"))
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["gen", "taken"]
    export_pairs(root, out, ExportOptions("mmseg"), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset_config.py").is_file()
    with pytest.raises(UserError, match="outside the pairs folder"):
        export_pairs(root, root / "widget" / "export", ExportOptions("mmseg"), overwrite=True)
    with pytest.raises(UserError, match="outside the pairs folder"):
        export_pairs(root, root.parent, ExportOptions("mmseg"), overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_pairs(root, empty, ExportOptions("hf"))  # an empty folder is fine
    assert (empty / "train" / "metadata.jsonl").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_export_leaves_nothing(tree, tmp_path, monkeypatch, existing):
    import ldm.export as ex

    root, _ = tree
    out = tmp_path / "exports" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "old.txt").write_text("previous export")
    real_save, calls = ex._save, []

    def flaky_save(image, path):
        calls.append(path)
        if len(calls) == 6:
            raise OSError(28, "No space left on device", str(path))
        real_save(image, path)

    monkeypatch.setattr(ex, "_save", flaky_save)
    with pytest.raises(OSError):
        export_pairs(root, out, ExportOptions("mmseg"), overwrite=True)
    assert len(calls) == 6
    left = sorted(p.name for p in (tmp_path / "exports").iterdir())
    if existing:
        assert left == ["out"] and sorted(p.name for p in out.iterdir()) == ["old.txt"]
    else:
        assert left == []


def test_incomplete_pairs_are_skipped(tree, tmp_path):
    root, _ = tree
    (root / "widget" / "stain" / "image-mask-ori" / "3.png").unlink()  # pair 3 was still being written
    m = export_pairs(root / "widget" / "stain", tmp_path / "o", ExportOptions("mvtec"))
    assert sorted(p.name for p in (tmp_path / "o" / "widget" / "test" / "stain").iterdir()) == \
        ["000000.png", "000001.png", "000002.png"]
    assert m["counts"]["incomplete_skipped"] == 1


def test_cli(tree, tmp_path, capsys):
    from ldm.export import main
    from utils.cli import run_cli

    root, _ = tree
    out = tmp_path / "cli"
    rc = run_cli("export_pairs.py", lambda: main(["--pairs", str(root), "--format", "mmseg", "--out", str(out),
                                                   "--keep_top", "2", "--seed", "4", "--categories", "widget"]))
    assert rc == 0 and "4 pairs kept" in capsys.readouterr().out
    assert json.loads((out / "export_manifest.json").read_text())["counts"]["kept"] == 4
    rc = run_cli("export_pairs.py", lambda: main(["--pairs", str(root), "--format", "mmseg", "--out", str(out)]))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("export_pairs.py: error:") and "--overwrite" in err and "\n" not in err
    rc = run_cli("export_pairs.py", lambda: main(["--pairs", str(tmp_path / "nope"), "--format", "hf",
                                                   "--out", str(tmp_path / "o2")]))
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = run_cli("export_pairs.py", lambda: main(["--pairs", str(root), "--format", "hf", "--out",
                                                   str(tmp_path / "o3"), "--val_fraction", "1.5"]))
    assert rc == 2 and "--val_fraction" in capsys.readouterr().err


def test_meta_json_fills_rows_missing_from_pairs_csv(tree, tmp_path):
    """An interrupted run has pairs whose record is only in meta/<n>.json; 63-bit seeds stay exact."""
    root, data = tree
    folder = root / "widget" / "stain"
    with open(folder / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["n"] != "2")
    big = 2 ** 63 - 25
    row2 = next(r for r in rows if r["n"] == "2")
    meta = {**row2, "n": 2, "seed": big, "score": 0.875, "background_error": None}
    (folder / "meta").mkdir()
    (folder / "meta" / "2.json").write_text(json.dumps(meta))
    out = tmp_path / "hf_meta"
    export_pairs(folder, out, ExportOptions("hf", val_fraction=0.0, include_normals=False))
    lines = [json.loads(s) for s in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    by_n = {r["n"]: r for r in lines}
    assert sorted(by_n) == [0, 1, 2, 3]
    assert by_n[2]["seed"] == big and by_n[2]["score"] == 0.875 and math.isnan(by_n[2]["background_error"])
    assert by_n[2]["normal_image"] == row2["normal_image"]
    assert by_n[1]["seed"] == 101 and by_n[1]["score"] == pytest.approx(_score("widget", "stain", 1))


def test_export_folder_has_the_usual_permissions(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "perm"
    export_pairs(root, out, ExportOptions("mmseg"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
