"""FAST studio: place defects by hand on a normal image and get image–mask pairs (``scripts/studio.py``).

``core`` does the work (runs, images, masks, one batch through the library generation path, keep,
export) without web code; ``page`` is the gradio page on top of it.
"""
from ldm.studio.core import Batch, Pair, RunInfo, Studio, find_runs, inspect_run

__all__ = ["Batch", "Pair", "RunInfo", "Studio", "find_runs", "inspect_run"]
