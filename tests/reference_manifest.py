"""The released CompVis text2img-large checkpoint as facts vendored in tests/data (no ../shared needed).

``tests/data/make_reference_data.py`` regenerates the files from the reference folder.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
KEYS = DATA / "ldm-txt2img-large-keys.tsv.gz"
FACTS = DATA / "ldm-txt2img-large-schedule.json"
GROUPS = ("unet", "first_stage", "cond_stage", "schedule", "extra")


@lru_cache(maxsize=None)
def _rows() -> tuple[tuple[str, tuple[int, ...], str, str], ...]:
    lines = gzip.decompress(KEYS.read_bytes()).decode().splitlines()
    assert lines[0] == "key\tshape\tdtype\tgroup", lines[0]
    rows = []
    for line in lines[1:]:
        key, shape, dtype, group = line.split("\t")
        dims = () if shape in ("", "-") else tuple(int(s) for s in shape.split("x"))
        rows.append((key, dims, dtype, group))
    return tuple(rows)


def checkpoint_keys(group: str | None = None, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """key → shape of the checkpoint's state dict, optionally one group only, with ``prefix`` stripped
    (every key of the selection must start with it)."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    out = {}
    for key, dims, _dtype, g in _rows():
        if group is not None and g != group:
            continue
        if not key.startswith(prefix):
            raise AssertionError(f"{key} does not start with {prefix!r}")
        out[key[len(prefix):]] = dims
    return out


def checkpoint_groups() -> dict[str, str]:
    return {key: g for key, _dims, _dtype, g in _rows()}


def checkpoint_dtypes() -> dict[str, str]:
    return {key: dtype for key, _dims, dtype, _g in _rows()}


@lru_cache(maxsize=None)
def facts() -> dict:
    """Parameter counts, key counts and the schedule statistics of the released model."""
    return json.loads(FACTS.read_text())
