"""Export a pairs folder to layouts other tools read: MVTec/anomalib, MMSegmentation 1.x, HF imagefolder.

Input: what ``generate_with_mask.py`` and ``scripts/synthesize_baseline.py`` write,
``<root>/<category>/<defect>/{image,mask,image-mask-ori}/<n>.png`` plus ``synthesis.json`` and,
for newer folders, ``pairs.csv`` (``n,image,mask,normal_image,mask_origin,category,defect,seed,
score,saliency,background_error,mask_area``).  The source may be the root, one category folder or
one category/defect folder.  ``pairs.csv`` is optional: without it every pair is its own source and
has no score.

Rules shared by every format:

* **Split by source normal image.**  Sources (the ``normal_image`` of ``pairs.csv``, else the pair
  itself, plus every ``--normal_dir`` image) are shuffled per category with a generator seeded by
  ``(seed, category)`` and a fraction goes to the held-out side; every pair and every normal image
  of a source lands on that source's side, so no normal image is on both sides.
* **Filtering** (``min_score``, ``keep_top`` per category/defect) uses ``pairs.csv``'s ``score``
  (higher = more visible defect) and is refused when a folder has none.  The split is decided
  before filtering, so filtering never moves a source to the other side.
* **Atomic**: the export is built in a temporary sibling folder and renamed into place; on any
  error it is removed and an existing target is left as it was.
* Normal images are re-encoded as PNG at their category's pair size with the same bicubic resize
  generation applies (``ldm.data.io.load_image_uint8``), so they match the strips' original panels.
* Every export has ``export_manifest.json`` (source, format, filter, counts, split sizes) and
  ``index.csv`` (one row per written sample: where it came from).

Formats:

* ``mvtec`` -- ``<out>/<category>/train/good/`` (train-side normal images),
  ``test/good/`` (held-out normal images), ``test/<defect>/000000.png`` and
  ``ground_truth/<defect>/000000_mask.png`` (every kept pair, named by its zero-padded ``n``;
  masks L-mode 0/255).  Zero padding matters: anomalib pairs sorted images with sorted masks and
  checks that the mask name contains the image stem, which ``1.png``/``10_mask.png`` would break.
* ``mmseg`` -- ``img_dir/{train,val}/`` and ``ann_dir/{train,val}/`` with equal file names, masks
  L-mode {0, 1} (255 is MMSeg's ignore index), normal images with all-zero masks, and
  ``dataset_config.py`` (``BaseSegDataset`` with classes ``('background', 'anomaly')``).
* ``hf`` -- ``train/`` and ``validation/`` each with ``images/``, ``masks/`` (L-mode {0, 1}
  class ids) and ``metadata.jsonl``; ``mask_file_name`` makes ``datasets``' imagefolder load the
  mask as a second Image column ``mask``.  Missing numbers are written as NaN (so a column keeps
  one type in every split) and an unknown seed as -1.
"""
from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ldm.data.io import image_size, list_image_files, load_image_uint8, load_mask, natural_key, read_pil
from ldm.pairs import INDEX, SCORE_COLUMNS, SETTINGS_FILE, find_pairs_folders, parse_int, read_index, read_pairs_folder
from utils.cli import ArgumentParser, run_cli
from utils.errors import InputNotFound, UserError

FORMATS = ("mvtec", "mmseg", "hf")
EXPORT_MANIFEST = "export_manifest.json"   # source, format, filter, counts, split sizes of one export
EXPORT_INDEX = "index.csv"                 # one row per written sample: where it came from
CLASSES = ("background", "anomaly")
PALETTE = ((0, 0, 0), (255, 0, 0))


# ----------------------------------------------------------------------------- reading pairs folders
# (the folders and their complete pairs come from ldm.pairs, the one reader of the layout)

@dataclass
class Pair:
    category: str
    defect: str
    n: int
    image: Path
    mask: Path
    normal_image: str = ""  # absolute path of the source normal image, "" when unknown
    mask_origin: str = ""
    seed: int = -1
    values: dict = field(default_factory=dict)  # SCORE_COLUMNS -> float (NaN when unknown)

    @property
    def score(self) -> float:
        return self.values.get("score", math.nan)

    @property
    def source(self) -> str:
        """The split unit: the normal image the pair was made from, else the pair itself."""
        return self.normal_image or f"pair:{self.category}/{self.defect}/{self.n}"


@dataclass
class ExportFolder:
    """A pairs folder as the export sees it: its complete pairs with their source and scores."""

    path: Path
    category: str
    defect: str
    pairs: list
    has_csv: bool
    incomplete: int = 0  # pairs on disk without their strip (an interrupted run)

    @property
    def key(self) -> str:
        return f"{self.category}/{self.defect}"

    def has_scores(self) -> bool:
        return any(not math.isnan(p.score) for p in self.pairs)


def _float(value) -> float:
    try:
        v = float(str(value).strip())
    except ValueError:
        return math.nan
    return v


def _meta_row(folder: Path, n: int) -> Optional[dict]:
    """``meta/<n>.json`` (written with each pair; pairs.csv is rebuilt from these at the end of a run,
    so an interrupted run has pairs whose only record is here), as a pairs.csv-like row."""
    path = folder / "meta" / f"{n}.json"
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(d, dict):
        return None
    return {k: "" if v is None else v for k, v in d.items()}


def _synthesis_seed(folder: Path) -> int:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return -1
    try:
        return parse_int(json.loads(path.read_text()).get("seed", -1), default=-1)
    except (ValueError, AttributeError, OSError):
        return -1


def read_pair_folder(path: Path, category: str, defect: str) -> ExportFolder:
    """Complete pairs of one folder (``ldm.pairs.read_pairs_folder``) with their ``pairs.csv`` row, else
    their ``meta/<n>.json``: source normal image, mask origin, seed and scores."""
    path = Path(path)
    folder = read_pairs_folder(path, category, defect)
    csv_rows = {r["n"]: r for r in read_index(path)} if (path / INDEX).is_file() else None
    default_seed = _synthesis_seed(path)
    pairs, has_meta = [], False
    for f in folder.pairs:
        p = Pair(category, defect, f.n, f.image, f.mask, seed=default_seed,
                 values={k: math.nan for k in SCORE_COLUMNS})
        row = csv_rows.get(f.n) if csv_rows else None
        if row is None:
            row = _meta_row(path, f.n)
            has_meta = has_meta or row is not None
        if row:
            normal = (row.get("normal_image") or "").strip()
            if normal and not Path(normal).expanduser().is_absolute():
                normal = str((path / normal).resolve())  # a relative path is read from the folder
            p.normal_image = str(Path(normal).expanduser()) if normal else ""
            p.mask_origin = (row.get("mask_origin") or "").strip()
            seed = row.get("seed")
            p.seed = default_seed if seed is None else parse_int(seed, default=default_seed)
            p.values = {k: _float(row.get(k, "")) for k in SCORE_COLUMNS}
        pairs.append(p)
    return ExportFolder(path, category, defect, pairs, has_csv=csv_rows is not None or has_meta,
                        incomplete=folder.incomplete)


# ----------------------------------------------------------------------------- filtering and splitting

def filter_pairs(folder: ExportFolder, min_score: Optional[float], keep_top: Optional[int]) -> tuple:
    """``(kept, dropped_min_score, dropped_keep_top)`` for one category/defect folder."""
    if min_score is None and keep_top is None:
        return list(folder.pairs), 0, 0
    flag = "--min_score" if min_score is not None else "--keep_top"
    if not folder.has_scores():
        why = "no pairs.csv" if not folder.has_csv else "no values in the score column of pairs.csv"
        raise UserError(f"{flag} needs quality scores, but {folder.path} has {why}")
    missing = sum(math.isnan(p.score) for p in folder.pairs)
    if missing:
        raise UserError(f"{flag}: {missing} pairs of {folder.path} have no score in {INDEX}")
    kept = list(folder.pairs)
    dropped_min = dropped_top = 0
    if min_score is not None:
        before = len(kept)
        kept = [p for p in kept if p.score >= min_score]
        dropped_min = before - len(kept)
    if keep_top is not None and len(kept) > keep_top:
        best = sorted(kept, key=lambda p: (-p.score, p.n))[:keep_top]
        dropped_top = len(kept) - len(best)
        kept = sorted(best, key=lambda p: p.n)
    return kept, dropped_min, dropped_top


def _category_rng(seed: int, category: str) -> np.random.Generator:
    h = hashlib.sha256(f"{int(seed)}/{category}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def split_sources(sources_by_category: dict, val_fraction: float, seed: int) -> dict:
    """``{source: "train" | "val"}``: per category, a seeded shuffle of its sources.

    A category with one source keeps it for training; otherwise the held-out side gets
    ``round(val_fraction × n)`` sources, at least one and never all.  A source met again in a later
    category keeps its first side.
    """
    side = {}
    for category in sorted(sources_by_category):
        srcs = sorted(s for s in set(sources_by_category[category]) if s not in side)
        order = _category_rng(seed, category).permutation(len(srcs))
        n_val = 0
        if val_fraction > 0 and len(srcs) >= 2:
            n_val = min(len(srcs) - 1, max(1, int(round(val_fraction * len(srcs)))))
        for rank, i in enumerate(order):
            side[srcs[i]] = "val" if rank < n_val else "train"
    return side


def _normal_dir_images(normal_dir: Path, category: str, single: bool) -> list:
    """Extra normal images for ``category``: ``<dir>/<category>/train/good``, ``<dir>/<category>``,
    or ``<dir>`` itself when the export has one category."""
    for d in (normal_dir / category / "train" / "good", normal_dir / category):
        if d.is_dir():
            return list_image_files(d)
    if single:
        return list_image_files(normal_dir)
    return []


# ----------------------------------------------------------------------------- writing

def _save(image, path: Path) -> None:
    """PNG writer of the export (one place, so a test can make it fail mid-export)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _write_image(src: Path, dst: Path) -> tuple:
    """Copy an RGB PNG as is; anything else is converted to an RGB PNG.  Returns (H, W)."""
    im = read_pil(src)
    if im.format == "PNG" and im.mode == "RGB":
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return im.height, im.width
    _save(im.convert("RGB"), dst)
    return im.height, im.width


def _write_mask(src: Path, dst: Path, fg_value: int, hw: tuple) -> float:
    """Binary mask (``ldm.data.io`` rule) written L-mode {0, fg_value}; returns the foreground fraction."""
    m = load_mask(src) > 0.5
    if m.shape != tuple(hw):
        raise UserError(f"mask {src} is {m.shape[1]}×{m.shape[0]} but its image is {hw[1]}×{hw[0]}")
    _save(Image.fromarray(m.astype(np.uint8) * np.uint8(fg_value), mode="L"), dst)
    return float(m.mean())


def _write_normal(src: Path, dst: Path, hw: Optional[tuple]) -> tuple:
    a = load_image_uint8(src, hw)
    _save(Image.fromarray(a, mode="RGB"), dst)
    return a.shape[:2]


def _check_target(out: Path, source: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(f"--out {out} must be outside the pairs folder {source} (and not contain it)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export over ``out``; an old ``out`` is removed only after the rename."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "x")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "x", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class ExportOptions:
    fmt: str
    val_fraction: float = 0.2
    seed: int = 0
    min_score: Optional[float] = None
    keep_top: Optional[int] = None
    normal_dir: Optional[Path] = None
    include_normals: bool = True  # mmseg/hf: normal images with all-zero masks
    categories: Optional[Sequence[str]] = None
    defects: Optional[Sequence[str]] = None


def _validate(opt: ExportOptions) -> None:
    if opt.fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {opt.fmt!r}")
    if not (0.0 <= opt.val_fraction < 1.0) or math.isnan(opt.val_fraction):
        raise UserError(f"--val_fraction must be in [0, 1), got {opt.val_fraction}")
    if opt.keep_top is not None and opt.keep_top < 1:
        raise UserError(f"--keep_top must be at least 1, got {opt.keep_top}")
    if opt.min_score is not None and math.isnan(opt.min_score):
        raise UserError("--min_score must be a number")
    if opt.normal_dir is not None and not Path(opt.normal_dir).is_dir():
        raise InputNotFound(f"--normal_dir not found: {opt.normal_dir}")


def export_pairs(source, out, opt: ExportOptions, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Export ``source`` to ``out`` in ``opt.fmt``; returns the manifest (also written to ``out``)."""
    _validate(opt)
    source, out = Path(source), Path(out)
    found = [(path.resolve(), category, defect) for path, category, defect in find_pairs_folders(source)]
    if not found:
        raise UserError(f"no pairs folders (<category>/<defect>/{{image,mask}}/) found under {source.resolve()}")
    if opt.categories:
        found = [f for f in found if f[1] in set(opt.categories)]
    if opt.defects:
        found = [f for f in found if f[2] in set(opt.defects)]
    if not found:
        raise UserError(f"no pairs folders of --categories {opt.categories} / --defects {opt.defects} in {source}")
    _check_target(out, source, overwrite)

    folders = [read_pair_folder(*f) for f in found]
    keys = [f.key for f in folders]
    if len(set(keys)) != len(keys):
        raise UserError(f"{source}: category/defect names repeat ({', '.join(sorted(keys))})")
    categories = sorted({f.category for f in folders}, key=natural_key)

    # sources and normal images per category (before filtering, so filtering never moves a source)
    sources, normals, missing_normals = {c: [] for c in categories}, {c: {} for c in categories}, []
    for f in folders:
        for p in f.pairs:
            sources[f.category].append(p.source)
            if p.normal_image and p.normal_image not in normals[f.category]:
                if Path(p.normal_image).is_file():
                    normals[f.category][p.normal_image] = Path(p.normal_image)
                elif p.normal_image not in missing_normals:
                    missing_normals.append(p.normal_image)
    extra = 0
    if opt.normal_dir is not None:
        for c in categories:
            for img in _normal_dir_images(Path(opt.normal_dir), c, single=len(categories) == 1):
                key = str(img.resolve())
                if key not in normals[c]:
                    normals[c][key] = img
                    sources[c].append(key)
                    extra += 1
        if extra == 0:
            raise UserError(f"--normal_dir {opt.normal_dir}: no images for categories {', '.join(categories)}")
    side = split_sources(sources, opt.val_fraction, opt.seed)

    kept, per_folder = [], {}
    dropped_min = dropped_top = 0
    for f in folders:
        k, dm, dt = filter_pairs(f, opt.min_score, opt.keep_top)
        kept += k
        dropped_min += dm
        dropped_top += dt
        per_folder[f.key] = {"path": str(f.path), "pairs": len(f.pairs), "kept": len(k), "dropped": dm + dt,
                             "incomplete_skipped": f.incomplete, "pairs_csv": f.has_csv,
                             "scores": f.has_scores()}
    if not kept:
        raise UserError(f"nothing to export from {source}: no complete pairs left after filtering")
    for p in missing_normals[:3]:
        log(f"[export] note: normal image named in {INDEX} not found, not exported: {p}")
    if len(missing_normals) > 3:
        log(f"[export] note: {len(missing_normals) - 3} more missing normal images")

    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; the export gets the usual mode
        writer = {"mvtec": _export_mvtec, "mmseg": _export_mmseg, "hf": _export_hf}[opt.fmt]
        rows, splits = writer(tmp, kept, normals, side, opt, out)
        _write_index(tmp / EXPORT_INDEX, rows)
        n_normals = sum(len(v) for v in normals.values()) if opt.fmt == "mvtec" or opt.include_normals else 0
        manifest = {
            "source": str(source.resolve()),
            "out": str(out.resolve()),
            "format": opt.fmt,
            "filter": {"min_score": opt.min_score, "keep_top": opt.keep_top,
                       "score": "pairs.csv score, higher = more visible"},
            "split": {"by": "source normal image", "val_fraction": opt.val_fraction, "seed": opt.seed},
            "counts": {"pairs": sum(len(f.pairs) for f in folders), "kept": len(kept),
                       "dropped": dropped_min + dropped_top, "dropped_min_score": dropped_min,
                       "dropped_keep_top": dropped_top, "incomplete_skipped": sum(f.incomplete for f in folders),
                       "normal_images": n_normals,
                       "normal_images_from_normal_dir": extra, "normal_images_missing": len(missing_normals)},
            "splits": splits,
            "folders": per_folder,
        }
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _move_into_place(tmp, out)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            # a full disk: name --out (the temporary folder the write failed in is gone)
            raise OSError(e.errno, os.strerror(e.errno), str(out)) from e
        raise
    return manifest


def _width(pairs) -> int:
    return max(6, len(str(max((p.n for p in pairs), default=0))))


def _sample_name(category: str, defect: str, idx: int, width: int) -> str:
    return f"{category}+{defect}+{idx:0{width}d}.png"


def _pair_row(split: str, path: str, mask_path: str, p: Pair) -> dict:
    return {"split": split, "file": path, "mask": mask_path, "category": p.category, "defect": p.defect,
            "n": p.n, "source_image": str(p.image), "normal_image": p.normal_image,
            "score": "" if math.isnan(p.score) else repr(p.score)}


def _normal_row(split: str, path: str, mask_path: str, category: str, src: Path) -> dict:
    return {"split": split, "file": path, "mask": mask_path, "category": category, "defect": "good",
            "n": "", "source_image": str(src), "normal_image": str(src), "score": ""}


def _write_index(path: Path, rows: list) -> None:
    cols = ["split", "file", "mask", "category", "defect", "n", "source_image", "normal_image", "score"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _pair_sizes(kept) -> dict:
    """The pair image size of each category (the size normal images are resized to)."""
    sizes = {}
    for p in kept:
        if p.category not in sizes:
            sizes[p.category] = image_size(p.image)
    return sizes


def _export_mvtec(tmp: Path, kept, normals, side, opt, out) -> tuple:
    rows, splits = [], {}
    sizes = _pair_sizes(kept)
    for cat in sorted(normals, key=natural_key):
        counts = {"train/good": 0, "test/good": 0}
        cat_normals = sorted(normals[cat].items(), key=lambda kv: kv[0])
        for sub in ("train", "val"):
            group = [(k, v) for k, v in cat_normals if side.get(k) == sub]
            folder = "train/good" if sub == "train" else "test/good"
            for i, (_, src) in enumerate(group):
                rel = f"{cat}/{folder}/{i:06d}.png"
                _write_normal(src, tmp / rel, sizes.get(cat))
                rows.append(_normal_row(folder.split("/")[0], rel, "", cat, src))
            counts[folder] = len(group)
        pairs = [p for p in kept if p.category == cat]
        for defect in sorted({p.defect for p in pairs}, key=natural_key):
            dp = sorted((p for p in pairs if p.defect == defect), key=lambda p: p.n)
            w = _width(dp)
            for p in dp:
                rel = f"{cat}/test/{defect}/{p.n:0{w}d}.png"
                mrel = f"{cat}/ground_truth/{defect}/{p.n:0{w}d}_mask.png"
                hw = _write_image(p.image, tmp / rel)
                _write_mask(p.mask, tmp / mrel, 255, hw)
                rows.append(_pair_row("test", rel, mrel, p))
            counts[f"test/{defect}"] = len(dp)
        splits[cat] = counts
    return rows, splits


def _seg_samples(kept, normals, side, opt) -> list:
    """``(split, name, pair_or_None, normal_src_or_None, category)`` for mmseg/hf, in a stable order."""
    samples = []
    by_folder = {}
    for p in kept:
        by_folder.setdefault((p.category, p.defect), []).append(p)
    for (cat, defect) in sorted(by_folder, key=lambda k: (natural_key(k[0]), natural_key(k[1]))):
        dp = sorted(by_folder[(cat, defect)], key=lambda p: p.n)
        w = _width(dp)
        for p in dp:
            samples.append((side[p.source], _sample_name(cat, defect, p.n, w), p, None, cat))
    if opt.include_normals:
        for cat in sorted(normals, key=natural_key):
            for i, (key, src) in enumerate(sorted(normals[cat].items(), key=lambda kv: kv[0])):
                samples.append((side[key], _sample_name(cat, "good", i, 6), None, src, cat))
    names = [s[1] for s in samples]
    if len(set(names)) != len(names):
        raise UserError("category/defect names give clashing export file names (a '+' in a name?); "
                        "export those categories separately")
    return samples


def _split_counts(samples, split_names) -> dict:
    out = {}
    for key, name in split_names.items():
        sel = [s for s in samples if s[0] == key]
        out[name] = {"pairs": sum(s[2] is not None for s in sel), "normal_images": sum(s[3] is not None for s in sel),
                     "sources": len({s[2].source if s[2] is not None else str(s[3]) for s in sel})}
    return out


def _write_sample(tmp: Path, img_rel: str, mask_rel: str, sample, sizes, fg_value: int) -> float:
    _, _, p, src, cat = sample
    if p is not None:
        hw = _write_image(p.image, tmp / img_rel)
        return _write_mask(p.mask, tmp / mask_rel, fg_value, hw)
    hw = _write_normal(src, tmp / img_rel, sizes.get(cat))
    _save(Image.fromarray(np.zeros(hw, np.uint8), mode="L"), tmp / mask_rel)
    return 0.0


def _export_mmseg(tmp: Path, kept, normals, side, opt, out) -> tuple:
    samples = _seg_samples(kept, normals, side, opt)
    sizes = _pair_sizes(kept)
    rows = []
    for s in samples:
        img_rel, ann_rel = f"img_dir/{s[0]}/{s[1]}", f"ann_dir/{s[0]}/{s[1]}"
        _write_sample(tmp, img_rel, ann_rel, s, sizes, 1)
        rows.append(_pair_row(s[0], img_rel, ann_rel, s[2]) if s[2] is not None
                    else _normal_row(s[0], img_rel, ann_rel, s[4], s[3]))
    for d in ("img_dir/train", "img_dir/val", "ann_dir/train", "ann_dir/val"):
        (tmp / d).mkdir(parents=True, exist_ok=True)  # an empty val side still gives a valid tree
    (tmp / "dataset_config.py").write_text(mmseg_config(out.resolve()))
    return rows, _split_counts(samples, {"train": "train", "val": "val"})


def mmseg_config(data_root: Path) -> str:
    """An MMSegmentation 1.x dataset config for an mmseg export (plain dicts; ``_base_`` it)."""
    return f'''# MMSegmentation 1.x dataset settings for this export (written by scripts/export_pairs.py).
# Use it as a _base_ of a model config, or copy the dicts.  Annotations are L-mode PNGs with
# 0 = background and 1 = anomaly (255 would be ignored); normal images have all-zero masks.
dataset_type = 'BaseSegDataset'
data_root = {str(data_root)!r}
metainfo = dict(classes={CLASSES!r}, palette={[list(c) for c in PALETTE]!r})
img_suffix = '.png'
seg_map_suffix = '.png'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False,
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False,
                 data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
'''


HF_SPLITS = {"train": "train", "val": "validation"}


def _export_hf(tmp: Path, kept, normals, side, opt, out) -> tuple:
    samples = _seg_samples(kept, normals, side, opt)
    sizes = _pair_sizes(kept)
    rows = []
    lines = {k: [] for k in HF_SPLITS.values()}
    for s in samples:
        split = HF_SPLITS[s[0]]
        img_rel, mask_rel = f"images/{s[1]}", f"masks/{s[1]}"
        area = _write_sample(tmp / split, img_rel, mask_rel, s, sizes, 1)
        p = s[2]
        if p is not None:
            values = dict(p.values)
            if math.isnan(values.get("mask_area", math.nan)):
                values["mask_area"] = area
            meta = {"file_name": img_rel, "mask_file_name": mask_rel, "category": p.category, "defect": p.defect,
                    "is_anomaly": True, "n": p.n, "seed": p.seed, "normal_image": p.normal_image,
                    "mask_origin": p.mask_origin}
            rows.append(_pair_row(split, f"{split}/{img_rel}", f"{split}/{mask_rel}", p))
        else:
            values = {k: math.nan for k in SCORE_COLUMNS}
            values["mask_area"] = 0.0
            meta = {"file_name": img_rel, "mask_file_name": mask_rel, "category": s[4], "defect": "good",
                    "is_anomaly": False, "n": -1, "seed": -1, "normal_image": str(s[3]), "mask_origin": ""}
            rows.append(_normal_row(split, f"{split}/{img_rel}", f"{split}/{mask_rel}", s[4], s[3]))
        # NaN stays NaN: json writes it as NaN, which pyarrow's reader (datasets) reads as a double
        meta.update({k: float(values[k]) for k in SCORE_COLUMNS})
        lines[split].append(json.dumps(meta, sort_keys=False))
    for split, ls in lines.items():
        if ls:
            (tmp / split / "metadata.jsonl").write_text("\n".join(ls) + "\n")
    return rows, _split_counts(samples, HF_SPLITS)


# ----------------------------------------------------------------------------- export_pairs.py

CLI_HELP = """Export generated image–mask pairs to the MVTec/anomalib, MMSegmentation 1.x or HF imagefolder layout.

    python scripts/export_pairs.py --pairs generated/fast --format mvtec --out exports/mvtec
    python scripts/export_pairs.py --pairs generated/fast/hazelnut/crack --format mmseg --out exports/mmseg \
        --val_fraction 0.2 --seed 0 --min_score 0.05 --keep_top 300
    python scripts/export_pairs.py --pairs generated/fast --format hf --out exports/hf

``--pairs`` is a pairs root (``<category>/<defect>/{image,mask,image-mask-ori}/``), one category folder
or one category/defect folder.  The train/validation split is by source normal image (from
``pairs.csv``; without it each pair is its own source), seeded; ``--min_score``/``--keep_top`` use
``pairs.csv``'s ``score`` column.  The export is built in a temporary sibling folder and renamed into
place, and a non-empty ``--out`` is refused without ``--overwrite``.  See ``ldm/export.py``.
"""


def _names(text):
    return [s for s in text.split(",") if s] if text else None


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="pairs folder: root, <category> or <category>/<defect>")
    p.add_argument("--format", required=True, choices=FORMATS, help="output layout")
    p.add_argument("--out", required=True, help="output folder (refused when non-empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out (only once the export is complete)")
    p.add_argument("--val_fraction", type=float, default=0.2,
                   help="fraction of source normal images (per category) held out: val (mmseg), validation (hf), "
                        "test/good (mvtec); 0 = none (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--min_score", type=float, default=None, help="keep pairs whose pairs.csv score is >= this")
    p.add_argument("--keep_top", type=int, default=None, help="keep the N best-scoring pairs per category/defect")
    p.add_argument("--normal_dir", default=None,
                   help="more normal images: <dir>/<category>/train/good/, <dir>/<category>/, "
                        "or <dir>/ itself for one category")
    p.add_argument("--no_normals", action="store_true",
                   help="mmseg/hf: leave normal images (all-zero masks) out; mvtec always has train/good")
    p.add_argument("--categories", default=None, help="comma-separated categories to export (default: all)")
    p.add_argument("--defects", default=None, help="comma-separated defect types to export (default: all)")
    return p


def main(argv=None) -> int:
    """``export_pairs.py``: parse the flags, :func:`export_pairs`, print the counts and the splits."""
    a = get_parser().parse_args(argv)
    opt = ExportOptions(fmt=a.format, val_fraction=a.val_fraction, seed=a.seed, min_score=a.min_score,
                        keep_top=a.keep_top, normal_dir=Path(a.normal_dir) if a.normal_dir else None,
                        include_normals=not a.no_normals, categories=_names(a.categories), defects=_names(a.defects))
    manifest = export_pairs(a.pairs, a.out, opt, overwrite=a.overwrite)
    c = manifest["counts"]
    print(f"[export] {a.format}: {c['kept']} pairs kept, {c['dropped']} dropped, "
          f"{c['normal_images']} normal images -> {a.out}")
    print(f"[export] splits: {json.dumps(manifest['splits'], sort_keys=True)}")
    return 0


def cli(argv=None) -> int:
    """``scripts/export_pairs.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("export_pairs.py", lambda: main(argv))
