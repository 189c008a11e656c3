"""MVTec-AD layout, and the MVTec-style tree reader that BTAD and the generic folder layout reuse.

``<root>/<category>/train/good/*``, ``test/good/*``, ``test/<defect>/*`` and
``ground_truth/<defect>/<stem>_mask.png`` (a mask named ``<stem>.png`` is accepted too, which is how
VisA trees converted by ``prepare_data.py`` name them). Any image extension is read; other files
(``.DS_Store``, notes) are ignored. Every anomalous image must have exactly one mask and every mask
an image, otherwise a one-line error names the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ldm.data.io import IMAGE_EXTENSIONS, list_image_files, natural_key
from ldm.data.layouts import AnomalySample, CategoryIndex, check_category
from utils.errors import InputNotFound, UserError

__all__ = ["list_categories", "index_category", "index_tree", "list_tree_categories"]


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def list_tree_categories(root: Path, markers: Sequence[str]) -> list[str]:
    """Sub-folders of ``root`` holding any of ``markers`` (relative folder paths)."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFound(f"dataset root not found: {root}")
    return [p.name for p in _subdirs(root) if any((p / m).is_dir() for m in markers)]


def _find_mask(image: Path, gt: Path, by_stem: dict[str, list[Path]], suffixes: Sequence[str]) -> Path:
    for suffix in suffixes:
        found = by_stem.get(image.stem + suffix, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"ambiguous masks for {image}: {', '.join(str(f) for f in found)}")
    expect = gt / f"{image.stem}{suffixes[0] if suffixes else ''}.png"
    raise InputNotFound(f"image without mask: {image} (expected e.g. {expect})")


def index_tree(root: Path, category: str, *, layout: str,
               train_good: Sequence[str] = ("train/good",),
               test_good: Sequence[str] = ("test/good",),
               test: str = "test",
               ground_truth: str = "ground_truth",
               normal: Sequence[str] = ("good",),
               mask_suffix: Sequence[str] = ("_mask", ""),
               image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
               mask_extensions: Sequence[str] = IMAGE_EXTENSIONS,
               require_train: bool = True,
               category_dir: Path | None = None) -> CategoryIndex:
    """Index one category of an MVTec-style tree; all names are folder names under ``root``."""
    root = Path(root)
    catdir = Path(category_dir) if category_dir is not None else root / category
    if not catdir.is_dir():
        markers = list(train_good) + [test]
        check_category(layout, root, category, list_tree_categories(root, markers))
    if isinstance(mask_suffix, str):
        mask_suffix = (mask_suffix,)
    if isinstance(normal, str):
        normal = (normal,)
    if isinstance(train_good, str):
        train_good = (train_good,)
    if isinstance(test_good, str):
        test_good = (test_good,)

    train_files: list[Path] = []
    present = [catdir / d for d in train_good if (catdir / d).is_dir()]
    if require_train and not present:
        raise InputNotFound(f"missing normal training folder: {catdir / train_good[0]}")
    for d in present:
        train_files += list_image_files(d, image_extensions)
    if require_train and not train_files:
        raise UserError(f"empty split: no images in {', '.join(str(d) for d in present)}")

    good_files: list[Path] = []
    for d in test_good:
        if (catdir / d).is_dir():
            good_files += list_image_files(catdir / d, image_extensions)

    anomalies: dict[str, list[AnomalySample]] = {}
    test_dir, gt_dir = catdir / test, catdir / ground_truth
    defect_dirs = [d for d in _subdirs(test_dir) if d.name not in normal] if test_dir.is_dir() else []
    for ddir in defect_dirs:
        defect = ddir.name
        images = list_image_files(ddir, image_extensions)
        if not images:
            raise UserError(f"empty split: no images in anomaly folder {ddir}")
        gt = gt_dir / defect
        if not gt.is_dir():
            raise InputNotFound(f"missing mask folder {gt} for the images in {ddir}")
        by_stem: dict[str, list[Path]] = {}
        for m in list_image_files(gt, mask_extensions):
            by_stem.setdefault(m.stem, []).append(m)
        used: set[Path] = set()
        samples = []
        for img in images:
            m = _find_mask(img, gt, by_stem, mask_suffix)
            if m in used:
                raise UserError(f"mask {m} matches more than one image in {ddir}")
            used.add(m)
            samples.append(AnomalySample(image=img, mask=m, category=category, defect=defect))
        orphans = [m for ms in by_stem.values() for m in ms if m not in used]
        if orphans:
            orphans.sort(key=lambda m: natural_key(m.name))
            raise InputNotFound(f"mask without image: {orphans[0]} (no matching file in {ddir})"
                                    + (f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""))
        anomalies[defect] = samples
    if gt_dir.is_dir():
        for g in _subdirs(gt_dir):
            if g.name not in anomalies and g.name not in normal and list_image_files(g, mask_extensions):
                raise InputNotFound(f"mask folder without images: {g} (missing {test_dir / g.name})")
    return CategoryIndex(root=root, layout=layout, category=category, train_good=train_files,
                         test_good=good_files, anomalies=anomalies)


def list_categories(root: Path) -> list[str]:
    """Category folders: those with ``train/good`` or ``test`` inside."""
    return list_tree_categories(root, ("train/good", "test"))


def index_category(root: Path, category: str) -> CategoryIndex:
    """MVTec-AD: ``train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.*``."""
    return index_tree(root, category, layout="mvtec")
