"""Any folder dataset in an MVTec-like layout, with the folder names set from YAML.

Defaults equal MVTec: ``<root>/<category>/train/good``, ``test/good``, ``test/<defect>`` and
``ground_truth/<defect>/<stem>_mask.*`` (or ``<stem>.*``). Every name is a parameter, e.g. for a tree
with ``normal/``, ``defects/<type>/`` and ``masks/<type>/``::

    layout: folder
    layout_params: {train_good: normal, test_good: [], test: defects, ground_truth: masks,
                    mask_suffix: ["_gt", ""]}

``category: "."`` indexes ``root`` itself as one category (its name is the root folder's name).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from ldm.data.io import IMAGE_EXTENSIONS
from ldm.data.layouts import CategoryIndex
from ldm.data.mvtec import index_tree, list_tree_categories

__all__ = ["list_categories", "index_category"]

StrOrList = Union[str, Sequence[str]]


def _as_tuple(v: StrOrList) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def list_categories(root: Path, train_good: StrOrList = "train/good", test: str = "test", **_: object
                    ) -> list[str]:
    """Category folders under ``root``; ``["."]`` when ``root`` itself is the only category."""
    markers = _as_tuple(train_good) + (test,)
    if any((Path(root) / m).is_dir() for m in markers):
        return ["."]
    return list_tree_categories(root, markers)


def index_category(root: Path, category: str, train_good: StrOrList = "train/good",
                   test_good: StrOrList = "test/good", test: str = "test",
                   ground_truth: str = "ground_truth", normal: StrOrList = ("good",),
                   mask_suffix: StrOrList = ("_mask", ""),
                   image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
                   mask_extensions: Sequence[str] = IMAGE_EXTENSIONS,
                   require_train: bool = True) -> CategoryIndex:
    root = Path(root)
    catdir = root if category in (".", "") else root / category
    name = root.resolve().name if category in (".", "") else category
    return index_tree(root, name, layout="folder", train_good=_as_tuple(train_good),
                      test_good=_as_tuple(test_good), test=test, ground_truth=ground_truth,
                      normal=_as_tuple(normal), mask_suffix=_as_tuple(mask_suffix),
                      image_extensions=tuple(e.lower() for e in image_extensions),
                      mask_extensions=tuple(e.lower() for e in mask_extensions),
                      require_train=require_train, category_dir=catdir)
