"""The pairs folder: one on-disk contract for every synthesizer (FAST, STAGE, DRAEM, CutPaste, …).

Layout of ``<out>/<category>/<defect>/``::

    image/<n>.png            generated RGB image
    mask/<n>.png             L-mode mask, 0 / 255
    image-mask-ori/<n>.png   strip: generated | mask | original (written last: marks pair n complete)
    meta/<n>.json            where pair n came from (normal image, mask origin, seed) and its scores
    synthesis.json           every setting that changes a pixel; a rerun with another value is refused
    provenance.json          what the generator was trained on (used to refuse leaky evaluations)
    pairs.csv                one row per complete pair (rebuilt from meta/ at the end of each run)

Why resumable and batch-size independent: pair n depends only on ``(seed, category, defect, n)``.
Every file is written atomically (``utils.atomic``), so a killed run never leaves a truncated file
under a final name, and the strip, written last, is the completion mark. A write that fails (a full
disk) removes the files of its pair written so far.

Reading: ``find_pairs_folders`` / ``read_pairs_folder`` / ``read_pairs`` are the one reader of this
layout (the export, the segmenter's training data and the quality numbers use them): pair n is
``image/<n>.*`` with ``mask/<n>.*``; in a folder with strips a pair without its strip is incomplete
(skipped and counted), and an image without its mask is an error. ``read_index`` reads ``pairs.csv``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ldm.data.io import list_image_files, natural_key, save_png_atomic, to_uint8
from utils.atomic import write_text_atomic
from utils.errors import InputNotFound, UserError

SUBDIRS = ("image", "mask", "image-mask-ori")
SETTINGS_FILE = "synthesis.json"   # every setting that changes a pixel (check_manifest)
PROVENANCE = "provenance.json"
INDEX = "pairs.csv"
SCORE_COLUMNS = ("score", "saliency", "background_error", "mask_area")
INDEX_COLUMNS = ("n", "image", "mask", "normal_image", "mask_origin", "category", "defect", "seed") + SCORE_COLUMNS


# ----------------------------------------------------------------------------------------------- seeds
def derive_seed(seed: int, *names: str) -> int:
    """A stable 31-bit seed for ``(seed, *names)`` (e.g. category, defect), so folders differ."""
    h = hashlib.sha256("/".join([str(int(seed)), *map(str, names)]).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def pair_seed(seed: int, category: str, defect: str, n: int) -> int:
    """The noise seed of pair n: distinct per (category, defect), so two defect folders never start
    pair n from the same noise, and independent of batch size, rank and resumption."""
    h = hashlib.sha256(f"pair/{int(seed)}/{category}/{defect}/{int(n)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def synth_rng(seed: int, n: int) -> np.random.Generator:
    """The synthesizer's own numpy generator for pair n (distinct from inputs and mask sources)."""
    return np.random.default_rng([int(seed), 1000, int(n)])


# ---------------------------------------------------------------------------------------------- writer
def check_name(name: str, what: str) -> str:
    """Sample/anomaly names become folder names: refuse separators and empties with a one-line error."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"invalid {what} name {name!r} (must be a plain folder name)")
    return name


def pair_scores(image: np.ndarray, mask: np.ndarray, original: np.ndarray) -> dict:
    """Per-pair quality: ``saliency`` (defect inside the mask vs a ring around it), ``background_error``
    (mean abs error outside the mask, 0 with the exact paste) and ``mask_area`` (fraction); ``score``
    = saliency, higher = a more visible defect."""
    from ldm.quality.pixels import anomaly_saliency, background_preservation

    sal = anomaly_saliency(image, original, mask)
    bg = background_preservation(image, original, mask, margin=0)
    area = float((np.asarray(mask) > 0.5).mean())
    return {"score": sal["saliency"], "saliency": sal["saliency"], "background_error": bg["bg_mae"],
            "mask_area": area}


class PairWriter:
    """Writes pair n of one (category, defect) folder; ``done(n)`` tells a resumed run what to skip."""

    def __init__(self, out, sample_name: str, anomaly_name: str, allow_empty: bool = False):
        self.allow_empty = bool(allow_empty)  # only the normal-only baseline writes empty masks
        self.category = check_name(sample_name, "sample")
        self.defect = check_name(anomaly_name, "anomaly")
        self.root = Path(out) / self.category / self.defect
        self.dirs = {k: self.root / k for k in SUBDIRS}
        self.meta_dir = self.root / "meta"

    def paths(self, n: int) -> dict:
        return {k: d / f"{int(n)}.png" for k, d in self.dirs.items()}

    def meta_path(self, n: int) -> Path:
        return self.meta_dir / f"{int(n)}.json"

    def done(self, n: int) -> bool:
        return all(p.is_file() for p in self.paths(n).values())

    def write(self, n: int, image: np.ndarray, mask: np.ndarray, original: np.ndarray,
              meta: dict | None = None) -> dict:
        """``image``/``original`` H×W×3 float in [-1, 1]; ``mask`` H×W {0, 1}. Returns the pair's record
        (``meta`` plus scores). The strip is written last."""
        # the exact pixels the PNGs hold: scores then describe the files and do not depend on float
        # noise from the batch a pair was generated in
        image = to_uint8(np.clip(np.asarray(image, np.float32), -1.0, 1.0))
        original = to_uint8(np.clip(np.asarray(original, np.float32), -1.0, 1.0))
        m = np.asarray(mask) > 0.5
        if image.shape != original.shape or image.ndim != 3 or m.shape != image.shape[:2]:
            raise ValueError(f"pair {n} for {self.root}: image {image.shape}, mask {m.shape} and original "
                             f"{original.shape} must agree (H×W×3, H×W)")
        if not m.any() and not self.allow_empty:
            raise ValueError(f"pair {n} for {self.root}: empty mask (a pair must carry a defect)")
        p = self.paths(n)
        record = {"n": int(n), "image": f"image/{int(n)}.png", "mask": f"mask/{int(n)}.png",
                  "category": self.category, "defect": self.defect, **(meta or {})}
        record.update(pair_scores(image, m, original))
        mask_u8 = m.astype(np.uint8) * 255
        strip = np.concatenate([image, np.repeat(mask_u8[..., None], 3, axis=2), original], axis=1)
        files = [(p["image"], image), (p["mask"], mask_u8),
                 (self.meta_path(n), json.dumps(_plain(record), sort_keys=True) + "\n"), (p["image-mask-ori"], strip)]
        written = []
        try:
            for path, content in files:
                if isinstance(content, str):
                    write_text_atomic(path, content)
                else:
                    save_png_atomic(content, path)
                written.append(path)
        except BaseException:
            # a failed write (a full disk) leaves no part of pair n behind: the folder holds whole pairs only
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return record

    def records(self, n_samples: int | None = None) -> list[dict]:
        """Records of the complete pairs (all of them, or those below ``n_samples``), in order."""
        out = []
        if not self.meta_dir.is_dir():
            return out
        ns = sorted(int(p.stem) for p in self.meta_dir.glob("*.json") if p.stem.isdigit())
        for n in ns:
            if (n_samples is None or n < n_samples) and self.done(n):
                out.append(json.loads(self.meta_path(n).read_text()))
        return out

    def write_index(self, n_samples: int | None = None) -> Path:
        """``pairs.csv``: one row per complete pair, from ``meta/`` (so resumed pairs are included)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.records(n_samples):
            w.writerow({k: _csv_value(r.get(k)) for k in INDEX_COLUMNS})
        path = self.root / INDEX
        write_text_atomic(path, buf.getvalue())
        return path


def read_index(folder) -> list[dict]:
    """Rows of ``<folder>/pairs.csv``: ``n`` and ``seed`` ints, ``SCORE_COLUMNS`` floats, other cells text;
    empty cells, and numbers that do not parse, are None. A missing ``n`` column, a row whose ``n`` is
    not an integer, or a file that cannot be read is a ``UserError`` naming the file (and line)."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise InputNotFound(f"{path} not found")
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "n" not in reader.fieldnames:
                raise UserError(f"{path}: no 'n' column (expected n,image,mask,normal_image,...)")
            for line, row in enumerate(reader, start=2):
                out = {k: _index_cell(k, v) for k, v in row.items()}
                if out["n"] is None:
                    raise UserError(f"{path}, line {line}: n={row.get('n')!r} is not an integer")
                rows.append(out)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return rows


def _index_cell(column: str, text):
    """One ``pairs.csv`` cell typed (see ``read_index``)."""
    if text is None or str(text).strip() == "":
        return None
    if column in ("n", "seed"):
        return parse_int(text)
    if column in SCORE_COLUMNS:
        try:
            return float(str(text).strip())
        except ValueError:
            return None
    return text


def parse_int(text, default=None):
    """An integer cell: exact for 63-bit per-pair seeds (which a float would round), ``12.0`` read as
    12; ``default`` when it does not parse."""
    t = str(text).strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return int(float(t))
    except (ValueError, OverflowError):
        return default


def _csv_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, float)):
            v = None if math.isnan(float(v)) else float(v)
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


# -------------------------------------------------------------------------------------------- manifest
def check_manifest(folder, settings: dict) -> None:
    """Resuming is only valid with the same settings: record them on first use, refuse a mismatch
    naming the settings that differ (a rerun with, say, another checkpoint would otherwise mix two
    generators' pairs in one folder without a word)."""
    path = Path(folder) / SETTINGS_FILE
    new = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: unreadable synthesis manifest; delete the folder to regenerate") from None
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
            raise UserError(f"{path.parent} was written with other settings ({', '.join(diff)} differ: {detail}); "
                            "use another --outdir or delete that folder")
        return
    write_text_atomic(path, json.dumps(new, sort_keys=True, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class PairFiles:
    """The files of complete pair ``n`` of a ``<category>/<defect>`` folder."""

    category: str
    defect: str
    n: int
    image: Path
    mask: Path
    strip: Optional[Path] = None  # image-mask-ori/<n>.png; None in a folder without strips


@dataclass
class PairsFolder:
    """One ``<category>/<defect>`` folder as read: its complete pairs in n order, and how many pairs on
    disk are incomplete (no strip yet: a run in progress or interrupted)."""

    path: Path
    category: str
    defect: str
    pairs: list
    incomplete: int = 0

    @property
    def key(self) -> str:
        return f"{self.category}/{self.defect}"


def is_pairs_folder(d: Path) -> bool:
    """A ``<category>/<defect>`` folder: one with ``image/``."""
    return (Path(d) / SUBDIRS[0]).is_dir()


def _subfolders(d: Path) -> list:
    """Visible subfolders in natural order (dot-folders, e.g. the studio's uploads, are not pairs)."""
    return sorted((c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")),
                  key=lambda c: natural_key(c.name))


def find_pairs_folders(source, category: Optional[str] = None) -> list:
    """``[(path, category, defect)]`` under ``source`` -- one ``<category>/<defect>`` folder, a category
    folder or a pairs root -- in natural order; empty when there is none. ``category`` keeps that
    category only (a category folder of another name is refused). Paths are under ``source`` as given;
    names come from the resolved path."""
    source = Path(source)
    if not source.is_dir():
        raise InputNotFound(f"pairs folder not found: {source}")
    here = source.resolve()
    if is_pairs_folder(source):
        return [(source, here.parent.name, here.name)]
    children = _subfolders(source)
    if any(is_pairs_folder(d) for d in children):
        if category is not None and here.name != category:
            raise UserError(f"pairs folder {source} is category '{here.name}', not '{category}'")
        return [(d, here.name, d.name) for d in children if is_pairs_folder(d)]
    return [(d, c.name, d.name) for c in children if category is None or c.name == category
            for d in _subfolders(c) if is_pairs_folder(d)]


def read_pairs_folder(path, category: Optional[str] = None, defect: Optional[str] = None) -> PairsFolder:
    """The complete pairs of one ``<category>/<defect>`` folder (names default to the resolved path's).

    Pair n is ``image/<n>.*`` with ``mask/<n>.*`` (any image suffix; files whose stem is not a number
    are not pairs). In a folder with strips (``image-mask-ori/``, which ``PairWriter`` writes last) a
    pair without its strip is incomplete and counted, not read; an image without its mask, and a folder
    without ``mask/``, are errors naming what is missing."""
    path = Path(path)
    here = path.resolve()
    category = here.parent.name if category is None else category
    defect = here.name if defect is None else defect
    mask_dir, strip_dir = path / SUBDIRS[1], path / SUBDIRS[2]
    if not mask_dir.is_dir():
        raise InputNotFound(f"pairs folder without mask/: {mask_dir}")
    masks = {p.stem: p for p in list_image_files(mask_dir)}
    strips = {p.stem: p for p in list_image_files(strip_dir)} if strip_dir.is_dir() else None
    pairs, incomplete = [], 0
    for image in list_image_files(path / SUBDIRS[0]):
        stem = image.stem
        if not stem.isdigit():
            continue
        if strips is not None and stem not in strips:
            incomplete += 1
            continue
        if stem not in masks:
            raise InputNotFound(f"generated image without mask: {image} (expected {mask_dir / stem}.png)")
        pairs.append(PairFiles(category, defect, int(stem), image, masks[stem],
                               strips[stem] if strips is not None else None))
    return PairsFolder(path, category, defect, pairs, incomplete)


def read_pairs(source, category: Optional[str] = None) -> list:
    """``read_pairs_folder`` of every folder ``find_pairs_folders(source, category)`` finds."""
    return [read_pairs_folder(*found) for found in find_pairs_folders(source, category)]


# -------------------------------------------------------------------------------------------- provenance
def write_provenance(folder, provenance: dict) -> Path:
    path = Path(folder) / PROVENANCE
    write_text_atomic(path, json.dumps(provenance, sort_keys=True, indent=1, default=str) + "\n")
    return path


def read_provenance(folder) -> dict | None:
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path}: unreadable provenance file") from None


def file_fingerprint(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file; for files over 64 MiB, of its size, first and last 4 MiB (a checkpoint's
    identity without reading gigabytes)."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if size <= 16 * chunk:
            h.update(f.read())
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(f.read(chunk))
        f.seek(-chunk, 2)
        h.update(f.read(chunk))
    return "partial:" + h.hexdigest()
