"""The one mask-source factory: a ``--mask_source`` name and its inputs → a ``MaskSource``.

Generation (``ldm.generation``), the baselines (``ldm.synthesizers``), the studio and the mask report
all build their masks here, so a mask name means the same masks everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from utils.errors import InputNotFound, UserError

MASK_SOURCES = ("real", "augmented", "perlin", "generated")


def mask_source(kind: str, size, seed: int, *, layout: str = "mvtec", split: str = "third",
                category: Optional[str] = None, defect: Optional[str] = None, mask_path=None, data_root=None,
                mask_model=None, mask_weight_idx: Optional[int] = None, mask_steps: int = 50,
                name: Optional[str] = None, kinds: tuple = MASK_SOURCES):
    """The masks of ``kind`` (one of ``kinds``, the caller's allowed names) at ``size``, drawn with ``seed``:

    - ``perlin``: DRAEM Perlin masks;
    - ``real`` / ``augmented``: real masks (augmented: flipped, rotated, scaled, shifted) of one defect,
      from the *generator side* of ``split`` -- found through ``mask_path`` when it is a dataset defect
      folder (``<root>/<category>/ground_truth/<defect>/``), or through the dataset root ``data_root``
      with ``category`` and ``defect``; a ``mask_path`` that is a plain folder of masks gives all of them;
    - ``generated``: masks sampled from the mask model run ``mask_model`` (its ``mask_ti-<N>.pt``,
      ``mask_weight_idx`` = N, default the latest, in ``mask_steps`` steps) for the token ``name``
      (default ``<category>+<defect>``).
    """
    from ldm.data.masks import AugmentedMasks, PerlinMasks, RealMasks

    if kind not in kinds:
        raise UserError(f"--mask_source must be one of {', '.join(kinds)}, got {kind!r}")
    if kind == "perlin":
        return PerlinMasks(size=size, seed=seed)
    if kind == "generated":
        from ldm.data.generated_masks import GeneratedMasks

        if not mask_model:
            raise UserError("--mask_source generated needs --mask_model (a mask run's checkpoints/ folder)")
        if not Path(mask_model).is_dir():
            raise InputNotFound(f"--mask_model not found: {mask_model}")
        return GeneratedMasks.from_run(mask_model, name or f"{category}+{defect}", size=size or 256, seed=seed,
                                       weight_idx=mask_weight_idx, steps=mask_steps)
    cls = RealMasks if kind == "real" else AugmentedMasks
    if data_root is not None and mask_path is None:
        if category is None or defect is None:
            raise UserError(f"--mask_source {kind} needs --data_root, --category and --defect")
        return cls(size=size, seed=seed, root=data_root, category=category, defect=defect, layout=layout,
                   anomaly_split=split)
    if mask_path is None:
        raise UserError(f"--mask_source {kind} needs --mask_path")
    root, cat, dfct = _dataset_defect(mask_path, category, defect)
    if root is not None:
        return cls(size=size, seed=seed, root=root, category=cat, defect=dfct, layout=layout, anomaly_split=split)
    if not Path(mask_path).is_dir():
        raise InputNotFound(f"--mask_path not found: {mask_path}")
    return cls(paths=mask_path, size=size, seed=seed)


def _dataset_defect(mask_path, category: Optional[str], defect: Optional[str]) -> tuple:
    """``(root, category, defect)`` when ``mask_path`` names one defect of a dataset, else three Nones."""
    from ldm.data.layouts import resolve_mvtec_path

    try:
        root, cat, dfct = resolve_mvtec_path(mask_path, category=category, defect=defect)[:3]
    except (ValueError, FileNotFoundError):
        return None, None, None
    if root is None or cat is None or dfct is None:
        return None, None, None
    return root, cat, dfct
