"""SCM: the spatial conditioning module of GroundingAnomaly.

A **semantic map** paints, per pixel, a learned vector: the *product* token of the image's category
everywhere, and inside each anomaly region the token of that region's anomaly type (one token per
``category+defect`` name, so one product can carry several defect types, also in one image). A
convolutional encoder turns the map into a ``grid × grid`` feature map, which a linear layer (plus a
learned position embedding per cell) projects into the text-conditioning space: ``grid²``
conditioning tokens that the gated self-attention (GSM) attends to.

``binary_map: true`` (the paper's "w/o semantic map" ablation) paints one shared learned ``mask_token``
inside every anomaly region instead of the region's own token: the map then tells where, not which
defect type (the product token outside, the encoder unchanged; no per-name anomaly tokens exist).

Label maps: ``labels[b]`` is H×W int64 with 0 = product only and k ≥ 1 = the k-th name of
``anomalies[b]``. A map resized to ``map_size`` is resized per label (area average of the one-hot
planes), so thin regions fade instead of vanishing; at the native size every pixel holds exactly its
token.

Encoders: ``tiny`` (a few strided convs; CPU-sized configs) or ``convnext`` (``transformers``'
ConvNeXt, ConvNeXt-Tiny by default, built from a config with random initialisation, or from a local
``pretrained_path``; nothing is downloaded).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError

PRODUCT_SEPARATOR = "+"


def product_of(name: str) -> str:
    """``category`` of a ``category+defect`` name (the whole name when it has no ``+``)."""
    return str(name).split(PRODUCT_SEPARATOR, 1)[0]


class TinyConvEncoder(nn.Module):
    """Conv 3×3 stem, then per width a stride-2 conv with GroupNorm + SiLU; adaptive-average-pooled
    to ``grid × grid``."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), grid: int = 4):
        super().__init__()
        widths = [int(w) for w in widths]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for w in widths:
            layers += [nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, w, 3, stride=2, padding=1)]
            ch = w
        layers += [nn.GroupNorm(min(8, ch), ch), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(int(grid))
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net(x))


class ConvNeXtEncoder(nn.Module):
    """``transformers.ConvNextModel`` (ConvNeXt-Tiny: depths 3-3-9-3, widths 96-192-384-768 unless
    overridden), its last hidden state adaptive-average-pooled to ``grid × grid``."""

    def __init__(self, in_channels: int, grid: int = 8, pretrained_path: Optional[str] = None,
                 depths: Sequence[int] = (3, 3, 9, 3), hidden_sizes: Sequence[int] = (96, 192, 384, 768),
                 drop_path_rate: float = 0.0):
        super().__init__()
        try:
            from transformers import ConvNextConfig, ConvNextModel
        except ImportError as e:  # pragma: no cover - transformers is a project requirement
            raise UserError(f"the convnext SCM encoder needs the 'transformers' package ({e})") from None
        if pretrained_path:
            import os

            if not os.path.isdir(pretrained_path):
                raise UserError(f"scm encoder pretrained_path not found: {pretrained_path}")
            self.net = ConvNextModel.from_pretrained(pretrained_path, local_files_only=True)
            if int(self.net.config.num_channels) != int(in_channels):
                raise UserError(f"the ConvNeXt in {pretrained_path} takes {self.net.config.num_channels} input "
                                f"channels; set scm map_channels: {self.net.config.num_channels}")
        else:
            config = ConvNextConfig(num_channels=int(in_channels), depths=[int(d) for d in depths],
                                    hidden_sizes=[int(h) for h in hidden_sizes], drop_path_rate=drop_path_rate)
            self.net = ConvNextModel(config)
        self.pool = nn.AdaptiveAvgPool2d(int(grid))
        self.out_channels = int(self.net.config.hidden_sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net(pixel_values=x).last_hidden_state)


def build_map_encoder(kind: str, in_channels: int, grid: int, **kw) -> nn.Module:
    if kind == "tiny":
        return TinyConvEncoder(in_channels, grid=grid, **kw)
    if kind == "convnext":
        return ConvNeXtEncoder(in_channels, grid=grid, **kw)
    raise UserError(f"scm encoder must be 'tiny' or 'convnext', got {kind!r}")


class SpatialConditioning(nn.Module):
    """Semantic map → ``grid²`` conditioning tokens of width ``context_dim``.

    names: the ``category+defect`` names with an anomaly token; products are their categories.
    token_dim: width of the learned tokens (the text encoder's embedding width lets them start from
        word embeddings, see ``init_from_words``).
    map_channels: the tokens are linearly projected to this many channels before painting (None: no
        projection) -- painting commutes with a linear map, so this is a 1×1 conv on the map at a
        fraction of the memory of a ``token_dim``-channel map.
    map_size: side of the semantic map (None: the mask's own size).
    binary_map: one shared ``mask_token`` inside every anomaly region (ablation; see the module doc).
    """

    def __init__(self, names: Sequence[str], token_dim: int, context_dim: int, encoder: str = "tiny",
                 encoder_params: Optional[dict] = None, grid: int = 4, map_channels: Optional[int] = None,
                 map_size: Optional[int] = None, token_init_std: float = 0.02, binary_map: bool = False):
        super().__init__()
        names = [str(n) for n in names]
        if not names:
            raise UserError("SCM needs at least one 'category+defect' name (scm_names or the "
                            "personalization_config names)")
        if len(set(names)) != len(names):
            raise UserError(f"duplicate SCM names: {names}")
        for n in names:
            if "." in n or not n:
                raise UserError(f"SCM name {n!r} must be non-empty and contain no '.'")
        if not isinstance(binary_map, bool):
            raise UserError(f"scm_config binary_map must be true or false, got {binary_map!r}")
        self.names = names
        self.binary_map = binary_map
        self.products = sorted({product_of(n) for n in names})
        self.token_dim = int(token_dim)
        self.context_dim = int(context_dim)
        self.grid = int(grid)
        self.map_size = None if map_size is None else int(map_size)
        g = torch.Generator().manual_seed(0)
        self.product_tokens = nn.ParameterDict(
            {p: nn.Parameter(torch.randn(self.token_dim, generator=g) * token_init_std) for p in self.products})
        self.anomaly_tokens = nn.ParameterDict(
            {n: nn.Parameter(torch.randn(self.token_dim, generator=g) * token_init_std)
             for n in ([] if binary_map else names)})
        self.mask_token = nn.Parameter(torch.randn(self.token_dim, generator=g) * token_init_std) \
            if binary_map else None
        self.map_proj = nn.Linear(self.token_dim, int(map_channels)) if map_channels else None
        channels = int(map_channels) if map_channels else self.token_dim
        self.encoder = build_map_encoder(encoder, channels, self.grid, **dict(encoder_params or {}))
        self.norm = nn.LayerNorm(self.encoder.out_channels)
        self.proj = nn.Linear(self.encoder.out_channels, self.context_dim)
        self.pos_emb = nn.Parameter(torch.randn(self.grid * self.grid, self.context_dim, generator=g) * 0.02)

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid

    # ------------------------------------------------------------------ tokens
    @torch.no_grad()
    def init_from_words(self, lookup: Callable[[str], Optional[torch.Tensor]], anomaly_words: dict) -> list[str]:
        """Start tokens from word embeddings: a product from its category name, an anomaly token from
        ``anomaly_words[name]`` (e.g. the ``--init_word``), the shared ``mask_token`` from the word all names
        share. ``lookup(word)`` returns a token_dim vector or None (not one wordpiece); those tokens keep
        their random start. Returns what was initialised."""
        done = []
        if self.mask_token is not None:
            words = {anomaly_words[n] for n in self.names if anomaly_words.get(n)}
            vec = lookup(words.pop()) if len(words) == 1 else None
            if vec is not None and vec.numel() == self.token_dim:
                self.mask_token.copy_(vec.to(self.mask_token))
                done.append("mask_token")
        for p, param in self.product_tokens.items():
            vec = lookup(p.replace("_", " ")) if "_" not in p else None
            if vec is not None and vec.numel() == self.token_dim:
                param.copy_(vec.to(param))
                done.append(p)
        for n, param in self.anomaly_tokens.items():
            word = anomaly_words.get(n)
            vec = lookup(word) if word else None
            if vec is not None and vec.numel() == self.token_dim:
                param.copy_(vec.to(param))
                done.append(n)
        return done

    def palette(self, products: Sequence[str], anomalies: Sequence[Sequence[str]]) -> torch.Tensor:
        """B×(1+K)×token_dim: row 0 the product token, row k the k-th anomaly token (the shared
        ``mask_token`` with ``binary_map``; zeros as padding)."""
        if len(products) != len(anomalies):
            raise ValueError(f"{len(products)} products for {len(anomalies)} anomaly lists")
        k = max([len(a) for a in anomalies] + [0])
        zero = torch.zeros(self.token_dim, device=self.pos_emb.device, dtype=self.pos_emb.dtype)
        rows = []
        for p, names in zip(products, anomalies):
            if p not in self.product_tokens:
                raise UserError(f"SCM has no product token for '{p}'; it knows: {', '.join(self.products)}")
            vecs = [self.product_tokens[p]]
            for n in names:
                if n not in self.names:
                    raise UserError(f"SCM has no anomaly token for '{n}'; it knows: {', '.join(self.names)}")
                vecs.append(self.mask_token if self.binary_map else self.anomaly_tokens[n])
            vecs += [zero] * (1 + k - len(vecs))
            rows.append(torch.stack(vecs))
        if not rows:
            raise ValueError("an empty batch")
        return torch.stack(rows)

    # ------------------------------------------------------------------ maps
    def label_planes(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        """B×(1+k)×h×w one-hot planes of ``labels`` (B×H×W ints in [0, k]), resized to ``map_size``."""
        if labels.ndim == 4:
            labels = labels[:, 0]
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > k):
            raise ValueError(f"label values must lie in [0, {k}] (0 = product, k = k-th anomaly name), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        planes = F.one_hot(labels, 1 + k).permute(0, 3, 1, 2).to(self.pos_emb.dtype)
        size = self.map_size
        if size is not None and tuple(planes.shape[-2:]) != (size, size):
            planes = F.interpolate(planes, size=(size, size), mode="area" if planes.shape[-1] >= size else "nearest")
        return planes

    def semantic_map(self, labels: torch.Tensor, products: Sequence[str],
                     anomalies: Sequence[Sequence[str]]) -> torch.Tensor:
        """B×C×h×w: each pixel holds its token (after ``map_proj``, when configured)."""
        pal = self.palette(products, anomalies)
        if self.map_proj is not None:
            pal = self.map_proj(pal)
        planes = self.label_planes(labels.to(pal.device), pal.shape[1] - 1)
        return torch.einsum("bkhw,bkc->bchw", planes, pal)

    def forward(self, labels: torch.Tensor, products: Sequence[str],
                anomalies: Sequence[Sequence[str]]) -> torch.Tensor:
        """B×grid²×context_dim conditioning tokens."""
        feats = self.encoder(self.semantic_map(labels, products, anomalies))
        tokens = feats.flatten(2).transpose(1, 2)
        return self.proj(self.norm(tokens)) + self.pos_emb

    @staticmethod
    def labels_from_masks(masks: torch.Tensor, names: Sequence) -> tuple[torch.Tensor, list[str], list[list[str]]]:
        """(labels, products, anomaly lists) from masks (B×H×W or B×1×H×W) and per-sample names.

        ``names[b]`` is one ``category+defect`` name (mask > 0.5 → that anomaly) or a list of names
        (mask values k = 1..K → the k-th name; several defect types in one image).
        """
        if masks.ndim == 4:
            masks = masks[:, 0]
        if len(names) != masks.shape[0]:
            raise ValueError(f"{len(names)} names for {masks.shape[0]} masks")
        labels, products, anomalies = [], [], []
        for m, n in zip(masks, names):
            if isinstance(n, str):
                labels.append((m > 0.5).long())
                products.append(product_of(n))
                anomalies.append([n])
            else:
                n = [str(x) for x in n]
                if not n:
                    raise ValueError("an empty list of anomaly names")
                cats = {product_of(x) for x in n}
                if len(cats) != 1:
                    raise ValueError(f"one image holds one product, got names of {sorted(cats)}")
                labels.append(torch.round(m).long())
                products.append(cats.pop())
                anomalies.append(n)
        return torch.stack(labels), products, anomalies
