"""The shared index contract every dataset layout fills, the layout registry, splits and paths.

A layout module (``ldm.data.mvtec``, ``btad``, ``visa``, ``folder`` or any importable module named
by its dotted path) provides ``list_categories(root, **params) -> list[str]`` and
``index_category(root, category, **params) -> CategoryIndex``. Everything downstream works on a
``CategoryIndex`` only, so a new on-disk layout needs nothing but such a module.

Names are always taken relative to the dataset root (``category`` is a folder name under the root,
``defect`` a folder name under ``test``), never from absolute path positions as the official FAST
loader does (``parts[7]``/``parts[9]``).

Splits (``split_anomalies``), per defect type, on the naturally sorted list, k = n // 3:

* ``third`` -- generator training ``[:k]``, evaluation ``[k:]``: disjoint, nothing shared.
  AnomalyDiffusion trains on indices ``0..k`` *inclusive* and tests on ``[k:]``, so its image k is
  in both; that variant is available as ``anomalydiffusion`` for exact reproduction only.
* ``all`` -- the official FAST code: the generator trains on every anomaly. The evaluation side is
  then the same list (it is *not* held out); numbers measured on it are not test numbers.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

from ldm.data.io import natural_key
from utils.errors import InputNotFound, UserError

__all__ = [
    "AnomalySample",
    "CategoryIndex",
    "LAYOUTS",
    "SPLIT_MODES",
    "get_layout",
    "list_categories",
    "index_category",
    "split_anomalies",
    "resolve_mvtec_path",
    "detect_layout",
    "check_category",
    "normalize_category",
]


@dataclass(frozen=True)
class AnomalySample:
    """One real anomalous image and its pixel mask."""

    image: Path
    mask: Path
    category: str
    defect: str

    @property
    def name(self) -> str:
        return f"{self.category}+{self.defect}"


@dataclass
class CategoryIndex:
    """All files of one category: normal train/test images and anomalies grouped by defect type."""

    root: Path
    layout: str
    category: str
    train_good: list[Path] = field(default_factory=list)
    test_good: list[Path] = field(default_factory=list)
    anomalies: dict[str, list[AnomalySample]] = field(default_factory=dict)

    @property
    def defects(self) -> list[str]:
        return list(self.anomalies)

    def samples(self, defect: str) -> list[AnomalySample]:
        """Anomalies of one defect type; unknown types give a one-line error listing the known ones."""
        if defect not in self.anomalies:
            known = ", ".join(self.anomalies) or "none"
            raise InputNotFound(
                f"unknown defect '{defect}' for category '{self.category}' under {self.root} "
                f"({self.layout} layout); known: {known}")
        return self.anomalies[defect]


# name -> module; any other value of ``layout`` is treated as a dotted module path.
LAYOUTS = {
    "mvtec": "ldm.data.mvtec",
    "mvtec_ad": "ldm.data.mvtec",
    "texture-ad": "ldm.data.mvtec",
    "texture_ad": "ldm.data.mvtec",
    "btad": "ldm.data.btad",
    "visa": "ldm.data.visa",
    "folder": "ldm.data.folder",
}

SPLIT_MODES = ("third", "all", "anomalydiffusion")


def get_layout(layout: str) -> ModuleType:
    """The module implementing ``layout`` (a registered name or a dotted module path)."""
    name = LAYOUTS.get(str(layout).lower(), layout)
    if "." not in str(name):
        raise UserError(f"unknown dataset layout '{layout}'; known: {', '.join(sorted(LAYOUTS))} "
                         "or a dotted module path")
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserError(f"dataset layout '{layout}': cannot import module '{name}': {e}") from None
    for fn in ("list_categories", "index_category"):
        if not callable(getattr(mod, fn, None)):
            raise UserError(f"dataset layout module '{name}' has no function '{fn}'")
    return mod


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputNotFound(f"dataset root not found: {root}")
    return root


def list_categories(layout: str, root, **params: Any) -> list[str]:
    """Category names present under ``root`` for ``layout``, sorted naturally."""
    return get_layout(layout).list_categories(_check_root(root), **params)


def check_category(layout: str, root: Path, category: str, available: Sequence[str]) -> None:
    """One-line error for an unknown category, listing what exists."""
    if category not in available:
        raise InputNotFound(
            f"unknown category '{category}' under {root} ({layout} layout); "
            f"available: {', '.join(available) or 'none'}")


def normalize_category(layout: str, category: Any) -> str:
    """The layout's spelling of a category from YAML (BTAD: ``3`` → ``"03"``); rejects empties."""
    norm = getattr(get_layout(layout), "normalize_category", None)
    if norm is not None:
        category = norm(category)
    if not category or not isinstance(category, str):
        raise UserError(f"category must be a non-empty string, got {category!r}")
    return category


def index_category(layout: str, root, category: str, **params: Any) -> CategoryIndex:
    """Index one category. ``params`` go to the layout (e.g. the folder layout's directory names)."""
    category = normalize_category(layout, category)
    return get_layout(layout).index_category(_check_root(root), category, **params)


def split_anomalies(samples: Sequence[AnomalySample], mode: str = "third"
                    ) -> tuple[list[AnomalySample], list[AnomalySample]]:
    """(generator_train, evaluation) for one defect type; see the module docstring."""
    ordered = sorted(samples, key=lambda s: natural_key(s.image.name))
    n = len(ordered)
    k = n // 3
    if mode == "third":
        return ordered[:k], ordered[k:]
    if mode == "all":
        return list(ordered), list(ordered)
    if mode == "anomalydiffusion":
        return ordered[:k + 1], ordered[k:]
    raise UserError(f"anomaly_split must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")


# ----------------------------------------------------------------------------------------------
# --mvtec_path
# ----------------------------------------------------------------------------------------------

def detect_layout(root) -> Optional[str]:
    """Best guess of a dataset root's layout: ``visa`` (split_csv/1cls.csv), ``btad`` (``01/train/ok``)
    or ``mvtec`` (``<category>/train/good`` or ``<category>/test``); None when nothing matches."""
    root = Path(root)
    if (root / "split_csv" / "1cls.csv").is_file():
        return "visa"
    if not root.is_dir():
        return None
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any((p / "train" / "ok").is_dir() or (p / "test" / "ko").is_dir() for p in subs):
        return "btad"
    if any((p / "train" / "good").is_dir() or (p / "test").is_dir() for p in subs):
        return "mvtec"
    return None


def _spellings(v: Any) -> set[str]:
    """A YAML integer category (BTAD ``3``) may be written ``3`` or ``03`` on disk."""
    if isinstance(v, int) and not isinstance(v, bool):
        return {str(v), f"{v:02d}"}
    return {str(v)}


def _agree(flag: str, given: Optional[str], found: str, path: Path) -> str:
    if given is not None and found not in _spellings(given):
        raise UserError(f"--mvtec_path {path} names {flag} '{found}' but the config/flag says '{given}'")
    return found


def resolve_mvtec_path(path, category: Optional[str] = None, defect: Optional[str] = None
                       ) -> tuple[Path, Optional[str], Optional[str]]:
    """Turn FAST's ``--mvtec_path`` into ``(root, category, defect)``.

    Accepted forms (trailing slashes fine):

    * the dataset root -- category/defect come from the arguments (config or flags);
    * ``<root>/<category>`` -- a category folder (it has ``train`` or ``test`` inside);
    * ``<root>/<category>/ground_truth/<defect>/`` -- the official FAST form; also
      ``.../test/<defect>/`` and ``.../ground_truth`` without the defect.

    Names found in the path must agree with the arguments when both are given. Only folder names
    relative to the detected root are used, never absolute positions.
    """
    if path is None:
        raise UserError("--mvtec_path is required")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputNotFound(f"--mvtec_path not found: {p}")
    p = Path(os.path.abspath(p))  # no symlink resolution: names stay the user's names
    parts = p.parts
    for marker in ("ground_truth", "test"):
        if marker in parts[1:]:
            i = len(parts) - 1 - parts[::-1].index(marker)
            catdir = Path(*parts[:i])
            looks_like_category = (catdir / "test").is_dir() and (
                (catdir / "train").is_dir() or (catdir / "ground_truth").is_dir())
            if i >= 2 and len(parts) - i <= 2 and looks_like_category:
                root = Path(*parts[:i - 1])
                cat = _agree("category", category, parts[i - 1], p)
                dfc = defect
                if len(parts) - i == 2:
                    dfc = _agree("defect", defect, parts[i + 1], p)
                return root, cat, dfc
    if (p / "train").is_dir() or ((p / "test").is_dir() and (p / "ground_truth").is_dir()):
        return p.parent, _agree("category", category, p.name, p), defect
    if category is not None and not any((p / c).is_dir() for c in _spellings(category)):
        found = [c.name for c in sorted(p.iterdir(), key=lambda c: natural_key(c.name))
                 if c.is_dir() and not c.name.startswith(".")]
        raise InputNotFound(f"unknown category '{category}': {p / category} not found "
                                f"(have: {', '.join(found[:30]) or 'nothing'})")
    return p, category, defect
