"""Tiny generated dataset trees for the data tests (no licensed data is ever committed or read).

Each builder writes a few small images with rectangle masks, mimicking one layout's quirks:
MVTec (0/255 ``_mask.png``, a greyscale category, optional non-numeric names), BTAD (``01|02|03``,
``.bmp`` and ``.png`` images, ``.bmp`` masks for 03) and VisA (``split_csv/1cls.csv``, class-id masks).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

H, W = 24, 32  # non-square on purpose


def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def write_image(path: Path, rng: np.random.Generator, hw=(H, W), gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = hw if gray else (*hw, 3)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)
    return path


def rect_mask(rng: np.random.Generator, hw=(H, W), value: int = 255) -> np.ndarray:
    h, w = hw
    m = np.zeros(hw, dtype=np.uint8)
    y, x = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
    m[y:y + h // 3, x:x + w // 3] = value
    return m


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def make_mvtec(root: Path, categories: Optional[dict] = None, gray: Iterable[str] = ("grid",),
               hw=(H, W)) -> Path:
    """``categories``: name → {"train": n, "test_good": n, "defects": {defect: n}, "names": [...]}."""
    categories = categories or {
        "bottle": {"train": 5, "test_good": 2, "defects": {"broken_large": 7, "contamination": 3}},
        "grid": {"train": 4, "test_good": 2, "defects": {"bent": 6}},
    }
    gray = set(gray)
    for ci, (cat, spec) in enumerate(sorted(categories.items())):
        g = cat in gray
        names = spec.get("names")
        for i in range(spec.get("train", 4)):
            write_image(root / cat / "train" / "good" / f"{i:03d}.png", rng_for(ci, 0, i), hw, g)
        for i in range(spec.get("test_good", 2)):
            write_image(root / cat / "test" / "good" / f"{i:03d}.png", rng_for(ci, 1, i), hw, g)
        for di, (defect, n) in enumerate(sorted(spec.get("defects", {}).items())):
            stems = names if names else [f"{i:03d}" for i in range(n)]
            for i, stem in enumerate(stems):
                r = rng_for(ci, 2, di, i)
                write_image(root / cat / "test" / defect / f"{stem}.png", r, hw, g)
                write_mask(root / cat / "ground_truth" / defect / f"{stem}_mask.png", rect_mask(r, hw))
    return root


def make_btad(root: Path) -> Path:
    """01: .bmp images + .png masks; 02: mixed .png/.bmp images + .png masks; 03: .bmp + .bmp masks,
    800×600-like aspect (non-square)."""
    spec = {"01": (".bmp", ".png", (20, 20)), "02": (".png", ".png", (16, 16)), "03": (".bmp", ".bmp", (18, 24))}
    for pi, (prod, (iext, mext, hw)) in enumerate(sorted(spec.items())):
        for i in range(4):
            ext = iext if prod != "02" else (".png" if i % 2 else ".bmp")
            write_image(root / prod / "train" / "ok" / f"{i:04d}{ext}", rng_for(pi, 0, i), hw)
        for i in range(2):
            write_image(root / prod / "test" / "ok" / f"{i:04d}{iext}", rng_for(pi, 1, i), hw)
        for i in range(6):
            ext = iext if prod != "02" else (".png" if i % 2 else ".bmp")
            r = rng_for(pi, 2, i)
            write_image(root / prod / "test" / "ko" / f"{i:04d}{ext}", r, hw)
            write_mask(root / prod / "ground_truth" / "ko" / f"{i:04d}{mext}", rect_mask(r, hw))
    return root


def make_visa(root: Path, objects=("candle", "pcb1"), n_train: int = 4, n_test_good: int = 2,
              n_bad: int = 6, columns=("object", "split", "label", "image", "mask")) -> Path:
    """Raw VisA: ``.JPG`` images, masks holding class ids 1..3 (not 255), ``split_csv/1cls.csv``."""
    rows = []
    for oi, obj in enumerate(objects):
        base = root / obj / "Data"
        k = 0
        for split, n in (("train", n_train), ("test", n_test_good)):
            for _ in range(n):
                rel = f"{obj}/Data/Images/Normal/{k:04d}.JPG"
                write_image(root / rel, rng_for(oi, 0, k))
                rows.append({"object": obj, "split": split, "label": "normal", "image": rel, "mask": ""})
                k += 1
        for i in range(n_bad):
            r = rng_for(oi, 1, i)
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, r)
            write_mask(root / mrel, rect_mask(r, value=1 + i % 3))
            rows.append({"object": obj, "split": "test", "label": "anomaly", "image": rel, "mask": mrel})
        assert base.is_dir()
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return root


def make_mvtec_tree(root, categories=("widget",), defects=("bump", "dent"), n_train=4, n_good=2, n_defect=3, size=32):
    """A tiny MVTec-layout tree with smooth random images and rectangular defects."""
    rng = np.random.default_rng(0)
    for cat in categories:
        def img():
            base = rng.integers(60, 200, size=3)
            noise = rng.integers(-20, 21, size=(size, size, 3))
            return np.clip(base + noise, 0, 255).astype(np.uint8)

        for sub, n in (("train/good", n_train), ("test/good", n_good)):
            (root / cat / sub).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(img()).save(root / cat / sub / f"{i:03d}.png")
        for d in defects:
            (root / cat / "test" / d).mkdir(parents=True)
            (root / cat / "ground_truth" / d).mkdir(parents=True)
            for i in range(n_defect):
                a = img()
                m = np.zeros((size, size), np.uint8)
                y, x = rng.integers(2, size // 2, size=2)
                m[y:y + size // 4, x:x + size // 4] = 255
                a[m > 0] = (250, 20, 20)
                Image.fromarray(a).save(root / cat / "test" / d / f"{i:03d}.png")
                Image.fromarray(m).save(root / cat / "ground_truth" / d / f"{i:03d}_mask.png")
    return root
