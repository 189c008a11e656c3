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
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from ldm.data.io import save_png_atomic, to_uint8
from utils.atomic import write_text_atomic
from utils.errors import UserError

SUBDIRS = ("image", "mask", "image-mask-ori")
MANIFEST = "synthesis.json"
PROVENANCE = "provenance.json"
INDEX = "pairs.csv"
INDEX_COLUMNS = ("n", "image", "mask", "normal_image", "mask_origin", "category", "defect", "seed", "score",
                 "saliency", "background_error", "mask_area")


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
    """Rows of ``<folder>/pairs.csv`` (numbers parsed; empty cells are None)."""
    path = Path(folder) / INDEX
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out = {}
            for k, v in row.items():
                if v == "":
                    out[k] = None
                elif k in ("n", "seed"):
                    out[k] = int(v)
                elif k in ("score", "saliency", "background_error", "mask_area"):
                    out[k] = float(v)
                else:
                    out[k] = v
            rows.append(out)
    return rows


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
    path = Path(folder) / MANIFEST
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
