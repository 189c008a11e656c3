"""Inception-v3 ImageNet classifier in pure torch, for the Inception Score; weights only from local files.

Why here: the IS of the AnomalyDiffusion line is computed with torchvision's ImageNet Inception-v3,
torchvision is not installed, and nothing may be downloaded. :class:`InceptionV3` has exactly the
``state_dict()`` keys and shapes of torchvision's ``inception_v3(aux_logits=True, init_weights=False)``
(580 entries, 27,161,264 parameters), so the torchvision file ``inception_v3_google-0cc3c7bd.pth``
(``Inception_V3_Weights.IMAGENET1K_V1``) loads as is with :func:`load_inception`.

Input convention: images in **[-1, 1]** (the project's convention), any size; they are resized to
299×299 bilinearly inside. Those Google-ported weights expect [-1, 1] pixels at the first conv:
torchvision's ``transform_input=True`` (its default with these weights) maps ImageNet-normalised
input ``(x01 - mean) / std`` back to ``(x01 - 0.5) / 0.5``. Feeding [-1, 1] straight in is therefore
the same computation; :func:`torchvision_transform_input` reproduces torchvision's step for checks.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import UserError

INPUT_SIZE = 299
NUM_CLASSES = 1000
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm(eps=1e-3) → ReLU; the TF port's unit, hence eps 1e-3."""

    def __init__(self, cin: int, cout: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool3_same(x: torch.Tensor) -> torch.Tensor:
    # torchvision's 3×3/1 average pool (count_include_pad=True, the PyTorch default)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches → 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_pool3_same(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """35→17 reduction: strided 3×3, strided double 3×3 and max-pool branches."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1)."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_pool3_same(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """17→8 reduction: strided 3×3, 7×7-then-strided-3×3 and max-pool branches."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)


class InceptionE(nn.Module):
    """8×8 block whose 3×3 branches split into parallel 1×3 and 3×1 convolutions (2048 channels out)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        d = self.branch_pool(_pool3_same(x))
        return torch.cat([a, b, c, d], 1)


class InceptionAux(nn.Module):
    """Auxiliary training head on Mixed_6e; kept only so torchvision files load (never used for IS)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv1(self.conv0(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(x, 1))


class InceptionV3(nn.Module):
    """torchvision-compatible Inception-v3; ``forward`` maps [-1, 1] images (any size) to class logits.

    The auxiliary head is never evaluated: only the main logits matter for the Inception Score, and
    the model is meant to be used frozen in eval mode (see :func:`load_inception`).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d pooled features (N×2048) of [-1, 1] images."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N×3×H×W images, got shape {tuple(x.shape)}")
        if self.resize_input and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            # antialias only matters when shrinking (then it matches PIL); for 256→299 it equals plain bilinear
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(self, name)(x)
        return torch.flatten(self.dropout(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def torchvision_transform_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``transform_input=True`` step: ImageNet-normalised RGB → the [-1, 1] range the
    Google weights were trained on. Use it only for inputs normalised with ImageNet mean/std."""
    mean = torch.tensor(_IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


# ------------------------------------------------------------------------------------ local weights

def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    from utils.safe_load import read_weights_file

    return read_weights_file(path, "Inception-v3 weights",
                             "pass a local copy of torchvision's inception_v3_google-0cc3c7bd.pth")


def check_inception_state_dict(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
                               path: str) -> None:
    """Raise a one-line ``UserError`` naming ``path`` on missing/unexpected keys or wrong shapes.

    ``num_batches_tracked`` may be absent: files saved before PyTorch 0.4.1 lack it and it does not
    affect eval-mode outputs.
    """
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. '{unexpected[0]}')")
        raise UserError(f"Inception-v3 weights file {path} is not a torchvision inception_v3 state dict: "
                        + ", ".join(parts))
    for k, t in state.items():
        want = tuple(expected[k].shape)
        if tuple(t.shape) != want:
            raise UserError(f"Inception-v3 weights file {path}: '{k}' has shape {tuple(t.shape)}, expected {want}")


def load_inception(path: str, device: Optional[torch.device | str] = None) -> InceptionV3:
    """Frozen eval-mode :class:`InceptionV3` with the weights of the local file ``path``.

    The model is built on the meta device (no random init: every tensor comes from the file), the
    file is checked key by key, then loaded strictly.
    """
    path = os.fspath(path)
    state = _read_state_dict(path)
    with torch.device("meta"):
        model = InceptionV3()
    expected = model.state_dict()
    check_inception_state_dict(state, expected, path)
    full = {}
    for k, t in expected.items():
        src = state.get(k)
        full[k] = torch.zeros((), dtype=torch.long) if src is None else src
    model = model.to_empty(device="cpu")
    model.load_state_dict(full, strict=True)
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model


def inception_state_dict_shapes() -> Dict[str, tuple]:
    """key → shape of the expected state dict, without allocating weights (for docs and checks)."""
    with torch.device("meta"):
        model = InceptionV3()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


__all__: List[str] = ["InceptionV3", "load_inception", "check_inception_state_dict", "torchvision_transform_input",
                      "inception_state_dict_shapes", "INPUT_SIZE", "NUM_CLASSES"]
