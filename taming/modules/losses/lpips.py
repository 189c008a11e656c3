"""LPIPS perceptual distance on a pure-torch VGG16 feature stack; weights only from local files.

Nothing is downloaded. The VGG16 backbone comes from ``vgg_weights``, a local torchvision-style
state dict (``features.{0,2,5,...,28}.{weight,bias}``; ``classifier.*`` is ignored). The five
per-layer linear heads come from ``lin_weights`` (keys ``lin0..lin4.model.1.weight``, shapes
1×C×1×1, the LPIPS v0.1 ``vgg.pth`` layout). Without ``lin_weights`` every head weighs each channel
1/C, an unlearned but non-negative average, so the distance stays a (pseudo-)metric ≥ 0.

Parameter names (``scaling_layer``, ``net.slice1.0.weight``, ``lin0.model.1.weight``) match taming's
LPIPS so loss weights stored in first-stage checkpoints line up.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn

from utils.errors import UserError

# VGG16 "D" configuration: conv widths, "M" = 2×2 max-pool; indices follow torchvision's `features`.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# Slice boundaries end right after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_SLICE_ENDS = [4, 9, 16, 23, 30]
_LPIPS_CHANNELS = [64, 128, 256, 512, 512]


def vgg16_features() -> nn.Sequential:
    """VGG16 conv/ReLU/pool stack with torchvision's ``features`` indices (0..30)."""
    layers: List[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return nn.Sequential(*layers)


def _load_local_state_dict(path: str, what: str) -> Dict[str, torch.Tensor]:
    from utils.safe_load import read_weights_file

    return read_weights_file(path, f"LPIPS {what}")


class ScalingLayer(nn.Module):
    """Maps [-1, 1] inputs to the ImageNet-normalised range the VGG backbone expects."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """1×1 conv (no bias) weighting the channels of one feature-difference map."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False):
        super().__init__()
        layers: List[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, chn_out, kernel_size=1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class vgg16(nn.Module):
    """The five VGG16 slices whose outputs LPIPS compares (taming class name kept for key names)."""

    def __init__(self, requires_grad: bool = False):
        super().__init__()
        features = vgg16_features()
        start = 0
        for k, end in enumerate(_SLICE_ENDS, start=1):
            sl = nn.Sequential()
            for idx in range(start, end):
                sl.add_module(str(idx), features[idx])
            setattr(self, f"slice{k}", sl)
            start = end
        self.N_slices = 5
        if not requires_grad:
            for p in self.parameters():
                p.requires_grad_(False)

    def load_features(self, state: Dict[str, torch.Tensor], path: str) -> None:
        """Copy torchvision ``features.N.*`` (or bare ``N.*``) tensors into the slices."""
        own = {}
        for k in range(1, 6):
            for name, t in getattr(self, f"slice{k}").state_dict().items():
                own[name] = (k, name, t)
        for name, (k, sub, t) in own.items():
            src = state.get(f"features.{name}", state.get(name))
            if src is None:
                raise UserError(f"VGG16 weights file {path} has no key 'features.{name}'")
            if tuple(src.shape) != tuple(t.shape):
                raise UserError(f"VGG16 weights file {path}: 'features.{name}' has shape "
                                 f"{tuple(src.shape)}, expected {tuple(t.shape)}")
        with torch.no_grad():
            for name, (k, sub, t) in own.items():
                src = state.get(f"features.{name}", state.get(name))
                getattr(self, f"slice{k}").get_parameter(sub).copy_(src)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        h = x
        for k in range(1, 6):
            h = getattr(self, f"slice{k}")(h)
            outs.append(h)
        return outs


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise feature vectors along the channel axis."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


def spatial_average(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    return x.mean(dim=[2, 3], keepdim=keepdim)


class LPIPS(nn.Module):
    """Learned perceptual distance; inputs B×3×H×W in [-1, 1], output B×1×1×1.

    The module is frozen and always stays in eval mode (``train()`` is a no-op) so a parent
    LightningModule switching to train mode cannot turn on the heads' dropout.
    """

    def __init__(self, use_dropout: bool = True, vgg_weights: Optional[str] = None,
                 lin_weights: Optional[str] = None):
        super().__init__()
        if vgg_weights is None:
            raise UserError("LPIPS needs user-supplied VGG16 weights (vgg_weights=<local .pth with "
                             "torchvision 'features.*' keys>); nothing is downloaded")
        self.scaling_layer = ScalingLayer()
        self.chns = list(_LPIPS_CHANNELS)
        # Built without initialisation (meta → empty): every VGG tensor is overwritten from the file.
        with torch.device("meta"):
            net = vgg16(requires_grad=False)
        self.net = net.to_empty(device=torch.get_default_device())
        for i, c in enumerate(self.chns):
            setattr(self, f"lin{i}", NetLinLayer(c, use_dropout=use_dropout))
        self.net.load_features(_load_local_state_dict(vgg_weights, "VGG16 weights"), vgg_weights)
        self._init_lins(lin_weights)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def _init_lins(self, lin_weights: Optional[str]) -> None:
        lins = [getattr(self, f"lin{i}") for i in range(len(self.chns))]
        if lin_weights is None:
            with torch.no_grad():
                for lin, c in zip(lins, self.chns):
                    lin.model[-1].weight.fill_(1.0 / c)
            return
        state = _load_local_state_dict(lin_weights, "linear-layer weights")
        for i, (lin, c) in enumerate(zip(lins, self.chns)):
            key = f"lin{i}.model.1.weight"
            w = state.get(key)
            if w is None:
                raise UserError(f"LPIPS linear-layer weights file {lin_weights} has no key '{key}'")
            if tuple(w.shape) != (1, c, 1, 1):
                raise UserError(f"LPIPS linear-layer weights file {lin_weights}: '{key}' has shape "
                                 f"{tuple(w.shape)}, expected (1, {c}, 1, 1)")
            with torch.no_grad():
                lin.model[-1].weight.copy_(w)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats0 = self.net(self.scaling_layer(input))
        feats1 = self.net(self.scaling_layer(target))
        val = None
        for i, (f0, f1) in enumerate(zip(feats0, feats1)):
            diff = (normalize_tensor(f0) - normalize_tensor(f1)).pow(2)
            term = spatial_average(getattr(self, f"lin{i}").model(diff), keepdim=True)
            val = term if val is None else val + term
        return val
