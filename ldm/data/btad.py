"""BTAD (beanTech) layout: ``<root>/{01,02,03}/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko``.

Images are a mix of ``.bmp`` and ``.png`` and masks are ``<stem>.png`` for 01/02 but ``<stem>.bmp``
for 03, so both extensions are accepted everywhere (a ``_mask`` suffix is tolerated too). The only
defect type is ``ko``. Product names are strings; an integer from YAML (``3``) means ``"03"``.
"""
from __future__ import annotations

from pathlib import Path

from ldm.data.layouts import CategoryIndex
from ldm.data.mvtec import index_tree, list_tree_categories

__all__ = ["list_categories", "index_category", "normalize_category"]

_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def normalize_category(category) -> str:
    """``3`` → ``"03"``; strings unchanged."""
    if isinstance(category, int) and not isinstance(category, bool):
        return f"{category:02d}"
    return str(category)


def list_categories(root: Path) -> list[str]:
    return list_tree_categories(root, ("train/ok", "test/ko", "test/ok"))


def index_category(root: Path, category) -> CategoryIndex:
    return index_tree(root, normalize_category(category), layout="btad",
                      train_good=("train/ok",), test_good=("test/ok",), normal=("ok",),
                      mask_suffix=("", "_mask"), image_extensions=_EXTS, mask_extensions=_EXTS)
