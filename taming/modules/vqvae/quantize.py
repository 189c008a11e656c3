"""Vector quantiser with a straight-through gradient (taming ``VectorQuantizer2`` interface).

LDM's ``autoencoder.py`` imports this class by name; checkpoints store the codebook as
``quantize.embedding.weight`` (and ``quantize.used`` when a remap file is given).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn


class VectorQuantizer2(nn.Module):
    """Nearest-codebook quantisation of B×C×H×W features (C = ``e_dim``).

    Returns ``(z_q, loss, (perplexity, min_encodings, min_encoding_indices))``. ``min_encodings``
    (the N×n_e one-hot) is None, as in taming's VectorQuantizer2: it would cost N·n_e floats and
    nothing downstream uses it. ``legacy=True`` keeps taming's original (swapped) placement of
    ``beta`` between the commitment and codebook terms, which released models were trained with.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float, remap: Optional[str] = None,
                 unknown_index: Union[str, int] = "random", sane_index_shape: bool = False,
                 legacy: bool = True):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy

        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.n_e, 1.0 / self.n_e)

        self.remap = remap
        if remap is not None:
            # A local .npy of the codebook indices actually used; trusted user file.
            self.register_buffer("used", torch.as_tensor(np.load(remap)).long())
            self.re_embed = int(self.used.shape[0])
            self.unknown_index = unknown_index
            if unknown_index == "extra":
                self.unknown_index = self.re_embed
                self.re_embed = self.re_embed + 1
            elif unknown_index != "random" and not isinstance(unknown_index, int):
                raise ValueError(f"unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}")
            print(f"Remapping {self.n_e} indices to {self.re_embed} indices. "
                  f"Using {self.unknown_index} for unknown indices.")
        else:
            self.re_embed = n_e
            self.unknown_index = unknown_index

        self.sane_index_shape = sane_index_shape

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Full-codebook indices → positions in ``used``; unseen codes get ``unknown_index``."""
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, :]).long()
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape, device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)
        used = self.used.to(inds)
        if self.re_embed > used.shape[0]:  # the "extra" token maps back to code 0
            inds = inds.clone()
            inds[inds >= used.shape[0]] = 0
        back = torch.gather(used[None, :].expand(inds.shape[0], -1), 1, inds)
        return back.reshape(ishape)

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("VectorQuantizer2 has no Gumbel interface (temp/rescale_logits/return_logits)")
        z = z.permute(0, 2, 3, 1).contiguous()  # B×H×W×C
        z_flat = z.reshape(-1, self.e_dim)
        codebook = self.embedding.weight

        # ||z - e||² = ||z||² + ||e||² - 2 z·e, without materialising N×n_e×C differences.
        dist = (z_flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)[None, :]
                - 2.0 * z_flat @ codebook.t())
        min_encoding_indices = torch.argmin(dist, dim=1)
        z_q = self.embedding(min_encoding_indices).view(z.shape)

        commit = torch.mean((z_q.detach() - z).pow(2))
        codebook_term = torch.mean((z_q - z.detach()).pow(2))
        if self.legacy:
            loss = commit + self.beta * codebook_term
        else:
            loss = self.beta * commit + codebook_term

        # Straight-through: forward value z_q, gradient of the identity w.r.t. z.
        z_q = z + (z_q - z).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()

        with torch.no_grad():
            counts = torch.bincount(min_encoding_indices, minlength=self.n_e).to(z.dtype)
            probs = counts / counts.sum()
            perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))

        if self.remap is not None:
            min_encoding_indices = self.remap_to_used(min_encoding_indices.reshape(z.shape[0], -1))
            min_encoding_indices = min_encoding_indices.reshape(-1)
        if self.sane_index_shape:
            min_encoding_indices = min_encoding_indices.reshape(z.shape[0], z.shape[1], z.shape[2])

        return z_q, loss, (perplexity, None, min_encoding_indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """Indices → codebook vectors; ``shape`` = (B, H, W, C) gives a B×C×H×W result."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices.reshape(-1))
        if shape is not None:
            z_q = z_q.view(*shape).permute(0, 3, 1, 2).contiguous()
        return z_q
