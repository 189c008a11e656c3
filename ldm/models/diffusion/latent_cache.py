"""Cache of the frozen first stage's posterior, per distinct input image (``cache_latents: true``).

LDM and FAST training draw ``z ~ q(z | x)`` from the frozen autoencoder at every step
(``get_first_stage_encoding(encode_first_stage(x), sample=True)``). The encoder is frozen and in eval
mode, so ``q(z | x)`` -- its mean and log-variance -- is a fixed function of the image ``x``. This cache
stores those parameters once per distinct image and still draws a fresh ``z = mean + std·ε`` at every
step, so training sees the same *distribution* of latents as without the cache, and draws its noise
from the same generator with the same shape (the random stream, and therefore timesteps and noise of
later steps, is unchanged).

What is exact and what is not:

- Keys are the image's bytes (dtype, shape and values), so anything that changes a pixel -- a random
  h-flip, a crop, a colour jitter -- is a different entry; nothing is flipped or transformed in latent
  space (the autoencoder is not flip-equivariant). With random augmentations that rarely repeat the
  cache only fills up; ``max_entries`` bounds it (then it stops adding and says so once).
- Entries are encoded one image at a time, so an entry does not depend on which other images shared
  its batch: a run resumed from a checkpoint rebuilds bit-identical entries. Compared with encoding a
  whole batch at once (the uncached path), mean and log-variance may differ in the last float bits
  (convolution kernels differ by batch size); the distribution is the same.
- The first stage must be frozen (``LatentDiffusion`` always freezes it).
"""
from __future__ import annotations

import hashlib

import torch

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


class PosteriorCache:
    """``posterior(x, encode)`` = ``encode(x)`` for a batch, from per-image cached parameters."""

    def __init__(self, max_entries: int = 50_000):
        self.max_entries = int(max_entries)
        self._store: dict[bytes, torch.Tensor] = {}
        self._kind: str | None = None         # "gaussian" (posterior parameters) or "tensor" (a latent)
        self.hits = 0
        self.misses = 0
        self.full_warned = False

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        a = image.detach().to("cpu").contiguous()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
        return h.digest()

    def _encode_one(self, image: torch.Tensor, encode) -> torch.Tensor:
        out = encode(image[None].contiguous())   # one layout, whatever the batch's strides
        if isinstance(out, DiagonalGaussianDistribution):
            kind, value = "gaussian", out.parameters
        elif torch.is_tensor(out):
            kind, value = "tensor", out
        else:
            raise TypeError(f"cache_latents: the first stage returned {type(out).__name__}; "
                            "only a DiagonalGaussianDistribution or a latent tensor can be cached")
        if self._kind is None:
            self._kind = kind
        elif self._kind != kind:
            raise TypeError("cache_latents: the first stage changed its output type between calls")
        return value[0].detach().to("cpu")

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, encode):
        """The first-stage output for batch ``x`` (``B×C×H×W``), built from cached entries."""
        keys = [self.key(img) for img in x]
        fresh: dict[bytes, torch.Tensor] = {}
        for i, k in enumerate(keys):
            if k in self._store or k in fresh:
                self.hits += 1
                continue
            self.misses += 1
            fresh[k] = self._encode_one(x[i], encode)
        if fresh:
            room = self.max_entries - len(self._store)
            if room < len(fresh) and not self.full_warned:
                print(f"note: cache_latents holds {len(self._store)} entries (max_entries={self.max_entries}); "
                      "new images are encoded every time (are the training images randomly augmented?)")
                self.full_warned = True
            for k, v in list(fresh.items())[:max(0, room)]:
                self._store[k] = v
        value = torch.stack([self._store.get(k, fresh.get(k)) for k in keys]).to(device=x.device)
        if self._kind == "gaussian":
            return DiagonalGaussianDistribution(value)
        return value

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"entries": len(self._store), "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / total if total else 0.0}
