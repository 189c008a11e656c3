"""Downstream segmenters trained on synthetic pairs; ``build_segmenter`` / ``load_segmenter`` pick one by name.

Names: ``unet`` (compact CPU-friendly U-Net), ``segformer-tiny|b0|b1|b2`` (random init, or
``pretrained_dir`` = a local ``save_pretrained`` folder).  A checkpoint stores the name and the
kwargs needed to rebuild the network, so evaluation never needs the original weights folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from utils.errors import InputNotFound, UserError

ARCHS = ("unet", "segformer-tiny", "segformer-b0", "segformer-b1", "segformer-b2")


def build_segmenter(arch: str = "unet", num_classes: int = 2, **kwargs) -> torch.nn.Module:
    """Construct a segmenter; ``kwargs`` go to the class (e.g. ``base_channels``, ``pretrained_dir``)."""
    if arch == "unet":
        from ldm.segmentation.unet import CompactUNet

        return CompactUNet(num_classes=num_classes, **kwargs)
    if arch.startswith("segformer-"):
        from ldm.segmentation.segformer import SegFormerSegmenter

        return SegFormerSegmenter(variant=arch.split("-", 1)[1], num_classes=num_classes, **kwargs)
    raise UserError(f"unknown segmenter '{arch}'; known: {', '.join(ARCHS)}")


def segmenter_spec(model: torch.nn.Module, arch: str, num_classes: int = 2, **kwargs) -> dict:
    """Everything needed to rebuild ``model`` without external files (SegFormer keeps its config)."""
    kw = {k: v for k, v in kwargs.items() if k != "pretrained_dir"}
    if hasattr(model, "config_dict"):
        kw["config"] = model.config_dict()
    return {"arch": arch, "num_classes": num_classes, "kwargs": kw}


def load_segmenter(path, map_location="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a segmenter from a checkpoint written by ``ldm.segmentation.train``; returns (model, ckpt)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"segmenter checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a segmenter checkpoint (keys 'spec' and 'state_dict' expected)")
    spec = ckpt["spec"]
    model = build_segmenter(spec["arch"], spec.get("num_classes", 2), **spec.get("kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt
