"""VisA layout, read through the official ``<root>/split_csv/1cls.csv``.

The CSV has the columns ``object,split,label,image,mask`` with paths relative to the root
(``candle/Data/Images/Anomaly/000.JPG``). ``label`` is ``normal`` or ``anomaly``; the mask column is
empty for normal rows. The 1cls split has no per-type defect folders, so all anomalies of an object
form one defect type named ``bad`` (the name ``prepare_data.py`` also uses). Raw VisA masks store
class ids 1..K, not 255; ``ldm.data.io.load_mask`` binarises them with ``!= 0``.

A VisA tree already converted to the MVTec layout (``visa_pytorch``) reads with ``layout: mvtec``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ldm.data.io import natural_key
from ldm.data.layouts import AnomalySample, CategoryIndex, check_category
from utils.errors import InputNotFound, UserError

__all__ = ["list_categories", "index_category", "read_split_csv", "DEFECT", "REQUIRED_COLUMNS"]

DEFECT = "bad"
REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_CSV = "split_csv/1cls.csv"


def read_split_csv(root: Path, split_csv: str = DEFAULT_CSV) -> list[tuple[int, dict]]:
    """(line number, row) pairs of the split CSV, after checking its columns."""
    path = Path(root) / split_csv
    if not path.is_file():
        raise InputNotFound(f"VisA split file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UserError(f"VisA split file {path} lacks column(s) {', '.join(missing)} "
                                 f"(header: {','.join(header) or 'empty'})")
            reader.fieldnames = header
            rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                    for row in reader]
    except UnicodeDecodeError as e:
        raise UserError(f"VisA split file {path} is not UTF-8 text: {e}") from None
    return rows


def list_categories(root: Path, split_csv: str = DEFAULT_CSV) -> list[str]:
    return sorted({r["object"] for _, r in read_split_csv(root, split_csv) if r["object"]}, key=natural_key)


def index_category(root: Path, category: str, split_csv: str = DEFAULT_CSV) -> CategoryIndex:
    root = Path(root)
    rows = read_split_csv(root, split_csv)
    objects = sorted({r["object"] for _, r in rows if r["object"]}, key=natural_key)
    check_category("visa", root, category, objects)
    csv_path = root / split_csv
    train_good: list[Path] = []
    test_good: list[Path] = []
    bad: list[AnomalySample] = []
    for line, r in rows:
        if r["object"] != category:
            continue
        where = f"{csv_path}:{line}"
        if not r["image"]:
            raise UserError(f"{where}: empty image path")
        image = root / r["image"]
        if not image.is_file():
            raise InputNotFound(f"image file not found: {image} (listed in {where})")
        label, split = r["label"].lower(), r["split"].lower()
        if label == "normal":
            if split == "train":
                train_good.append(image)
            elif split == "test":
                test_good.append(image)
            else:
                raise UserError(f"{where}: split must be train or test, got '{r['split']}'")
        elif label == "anomaly":
            if not r["mask"]:
                raise InputNotFound(f"image without mask: {image} (empty mask column in {where})")
            mask = root / r["mask"]
            if not mask.is_file():
                raise InputNotFound(f"mask file not found: {mask} (for image {image}, {where})")
            bad.append(AnomalySample(image=image, mask=mask, category=category, defect=DEFECT))
        else:
            raise UserError(f"{where}: label must be normal or anomaly, got '{r['label']}'")
    if not train_good:
        raise UserError(f"empty split: no train/normal rows for '{category}' in {csv_path}")
    key = lambda p: natural_key(str(p.relative_to(root)))  # noqa: E731
    train_good.sort(key=key)
    test_good.sort(key=key)
    bad.sort(key=lambda s: key(s.image))
    return CategoryIndex(root=root, layout="visa", category=category, train_good=train_good,
                         test_good=test_good, anomalies={DEFECT: bad} if bad else {})
