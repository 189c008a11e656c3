"""First-stage models: ``AutoencoderKL``, a minimal ``VQModel`` / ``VQModelInterface``, and
``IdentityFirstStage`` (CompVis LDM names, arguments and state-dict keys).

Training is ported to Lightning 2 manual optimisation: Lightning 2 refuses several optimizers
under automatic optimisation, and the GAN loss needs alternating autoencoder / discriminator steps.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import fused_optimizer_kwargs, instantiate_from_config
from taming.modules.vqvae.quantize import VectorQuantizer2 as VectorQuantizer

DEFAULT_LEARNING_RATE = 4.5e-6


class _FirstStageMixin:
    """Input handling, checkpoint loading and colourisation shared by the first-stage models."""

    image_key: str

    def get_input(self, batch: Dict[str, Any], k: str) -> torch.Tensor:
        """Batch images B×H×W×C in [-1, 1] (CompVis convention) → float B×C×H×W."""
        if k not in batch:
            raise KeyError(f"batch has no key '{k}' (image_key); keys: {sorted(batch)}")
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = ()) -> None:
        """Non-strict load of ``path`` (a Lightning ``.ckpt`` or a bare state dict).

        Read without executing code from the file (``utils.safe_load``).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"first-stage checkpoint not found: {path}")
        from utils.safe_load import load_checkpoint_nonstrict

        load_checkpoint_nonstrict(self, path, ignore_keys, strip_prefix="first_stage_model.")

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project a segmentation-like C-channel input to 3 channels in [-1, 1] for logging."""
        if not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


class AutoencoderKL(_FirstStageMixin, pl.LightningModule):
    """KL-regularised autoencoder: image → DiagonalGaussian over ``embed_dim``-channel latents → image.

    ``self.loss`` is built from ``lossconfig``; if it has ``has_discriminator = True`` the model
    trains with two optimizers (autoencoder, discriminator), otherwise with one.

    ``defect_loss_weight`` w > 1 weights the per-pixel reconstruction term by ``1 + (w − 1)·m`` where the
    batch carries a defect mask m (``mask_key``; all-zero on normal images): a thin crack covers ~1 % of
    an image, so under a uniform loss the decoder learns to smooth it away and every latent generator's
    defects come out faint. w = 1 (the CompVis default) is the uniform loss.
    """

    def __init__(self, ddconfig, lossconfig, embed_dim: int, ckpt_path: Optional[str] = None,
                 ignore_keys: Sequence[str] = [], image_key: str = "image",
                 colorize_nlabels: Optional[int] = None, monitor: Optional[str] = None,
                 defect_loss_weight: float = 1.0, mask_key: str = "mask"):
        super().__init__()
        if not defect_loss_weight >= 1.0:
            raise ValueError(f"defect_loss_weight must be >= 1 (1 = uniform loss), got {defect_loss_weight!r}")
        self.image_key = image_key
        self.defect_loss_weight = float(defect_loss_weight)
        self.mask_key = mask_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (mean and log-variance)")
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        if colorize_nlabels is not None:
            if not isinstance(colorize_nlabels, int):
                raise ValueError(f"colorize_nlabels must be an int, got {colorize_nlabels!r}")
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor
        self.automatic_optimization = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    # ----- model -----
    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    # ----- training -----
    @property
    def _has_discriminator(self) -> bool:
        return bool(getattr(self.loss, "has_discriminator", False))

    def reconstruction_weights(self, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
        """B×1×H×W per-pixel weights ``1 + (w − 1)·mask`` of the reconstruction loss, or None (uniform)."""
        if self.defect_loss_weight == 1.0 or self.mask_key not in batch:
            return None
        m = batch[self.mask_key].float()
        if m.ndim == 3:
            m = m[:, None]
        return (1.0 + (self.defect_loss_weight - 1.0) * (m > 0.5).float()).to(self.device)

    def _loss_step(self) -> int:
        """Training batches seen: Lightning 2 counts every optimizer's step in ``global_step``."""
        n_opt = 2 if self._has_discriminator else 1
        return self.global_step // n_opt

    def training_step(self, batch, batch_idx):
        inputs = self.get_input(batch, self.image_key)
        opts = self.optimizers()
        if not isinstance(opts, (list, tuple)):
            opts = [opts]
        step = self._loss_step()

        opt_ae = opts[0]
        self.toggle_optimizer(opt_ae)
        reconstructions, posterior = self(inputs)
        aeloss, log_ae = self.loss(inputs, reconstructions, posterior, 0, step,
                                   last_layer=self.get_last_layer(), split="train",
                                   weights=self.reconstruction_weights(batch))
        opt_ae.zero_grad()
        self.manual_backward(aeloss)
        opt_ae.step()
        self.untoggle_optimizer(opt_ae)
        bs = inputs.shape[0]  # stated: Lightning cannot infer it from the dict batch and warns
        self.log("aeloss", aeloss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log_dict(log_ae, prog_bar=False, on_step=True, on_epoch=False, batch_size=bs)

        if self._has_discriminator:
            opt_disc = opts[1]
            self.toggle_optimizer(opt_disc)
            discloss, log_disc = self.loss(inputs, reconstructions.detach(), posterior, 1, step,
                                           last_layer=self.get_last_layer(), split="train")
            opt_disc.zero_grad()
            self.manual_backward(discloss)
            opt_disc.step()
            self.untoggle_optimizer(opt_disc)
            self.log("discloss", discloss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
            self.log_dict(log_disc, prog_bar=False, on_step=True, on_epoch=False, batch_size=bs)
        return aeloss.detach()

    def validation_step(self, batch, batch_idx):
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        step = self._loss_step()
        aeloss, log_ae = self.loss(inputs, reconstructions, posterior, 0, step,
                                   last_layer=self.get_last_layer(), split="val")
        bs = inputs.shape[0]
        self.log("val/rec_loss", log_ae["val/rec_loss"], batch_size=bs)
        self.log_dict(log_ae, batch_size=bs)
        if self._has_discriminator:
            _, log_disc = self.loss(inputs, reconstructions, posterior, 1, step,
                                    last_layer=self.get_last_layer(), split="val")
            self.log_dict(log_disc, batch_size=bs)
        return log_ae

    def configure_optimizers(self):
        """Adam(β=(0.5, 0.9)) on the autoencoder (+ one on the discriminator when there is one).

        ``self.learning_rate`` is set by the training script (base_lr × batch scaling).
        """
        lr = getattr(self, "learning_rate", None)
        lr = DEFAULT_LEARNING_RATE if lr is None else lr
        ae_params = (list(self.encoder.parameters()) + list(self.decoder.parameters())
                     + list(self.quant_conv.parameters()) + list(self.post_quant_conv.parameters()))
        opt_ae = torch.optim.Adam(ae_params, lr=lr, betas=(0.5, 0.9), **fused_optimizer_kwargs(ae_params))
        if not self._has_discriminator:
            return opt_ae
        disc_params = list(self.loss.discriminator.parameters())
        opt_disc = torch.optim.Adam(disc_params, lr=lr, betas=(0.5, 0.9), **fused_optimizer_kwargs(disc_params))
        return [opt_ae, opt_disc]

    # ----- logging -----
    @torch.no_grad()
    def log_images(self, batch, only_inputs: bool = False, N: int = 8, **kwargs) -> Dict[str, torch.Tensor]:
        """``inputs``, ``reconstructions`` and prior ``samples``, B×C×H×W clamped to [-1, 1]."""
        log: Dict[str, torch.Tensor] = {}
        x = self.get_input(batch, self.image_key)[:N].to(self.device)
        if not only_inputs:
            xrec, posterior = self(x)
            samples = self.decode(torch.randn_like(posterior.sample()))
            if x.shape[1] > 3:
                # Segmentation-like inputs: show them through a fixed random colour projection.
                xrec, samples = self.to_rgb(xrec), self.to_rgb(samples)
            log["samples"] = samples.clamp(-1.0, 1.0)
            log["reconstructions"] = xrec.clamp(-1.0, 1.0)
        log["inputs"] = (self.to_rgb(x) if x.shape[1] > 3 else x).clamp(-1.0, 1.0)
        return log


class VQModel(_FirstStageMixin, pl.LightningModule):
    """Minimal VQ autoencoder: encoder → ``quant_conv`` → ``quantize`` → ``post_quant_conv`` → decoder.

    Enough to load and run CompVis VQ first stages; VQ-GAN training is not ported.
    """

    def __init__(self, ddconfig, lossconfig, n_embed: int, embed_dim: int,
                 ckpt_path: Optional[str] = None, ignore_keys: Sequence[str] = [],
                 image_key: str = "image", colorize_nlabels: Optional[int] = None,
                 monitor: Optional[str] = None, batch_resize_range=None, scheduler_config=None,
                 lr_g_factor: float = 1.0, remap: Optional[str] = None, sane_index_shape: bool = False,
                 use_ema: bool = False):
        super().__init__()
        if use_ema:
            raise ValueError("VQModel: use_ema=True is not supported in this minimal port")
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, remap=remap,
                                        sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor
        self.batch_resize_range = batch_resize_range
        self.scheduler_config = scheduler_config
        self.lr_g_factor = lr_g_factor
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor):
        h = self.quant_conv(self.encoder(x))
        quant, emb_loss, info = self.quantize(h)
        return quant, emb_loss, info

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Codebook indices → image; ``shape`` is (B, H, W, embed_dim)."""
        return self.decode(self.quantize.get_codebook_entry(code_b, shape))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)
        if return_pred_indices:
            return dec, diff, ind
        return dec, diff

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def log_images(self, batch, only_inputs: bool = False, N: int = 8, **kwargs) -> Dict[str, torch.Tensor]:
        log: Dict[str, torch.Tensor] = {}
        x = self.get_input(batch, self.image_key)[:N].to(self.device)
        if not only_inputs:
            xrec, _ = self(x)
            if x.shape[1] > 3:
                xrec = self.to_rgb(xrec)
            log["reconstructions"] = xrec.clamp(-1.0, 1.0)
        log["inputs"] = (self.to_rgb(x) if x.shape[1] > 3 else x).clamp(-1.0, 1.0)
        return log


class VQModelInterface(VQModel):
    """VQ first stage as LDM uses it: diffusion runs on the *pre*-quantisation latent ``h``."""

    def __init__(self, embed_dim: int, *args, **kwargs):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        h = self.encode(input)
        quant, diff, (_, _, ind) = self.quantize(h)
        dec = self.decoder(self.post_quant_conv(quant))
        if return_pred_indices:
            return dec, diff, ind
        return dec, diff


class IdentityFirstStage(nn.Module):
    """No-op first stage (pixel-space diffusion): encode/decode/quantize return the input."""

    def __init__(self, *args, vq_interface: bool = False, **kwargs):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x, *args, **kwargs):
        return x

    def decode(self, x, *args, **kwargs):
        return x

    def quantize(self, x, *args, **kwargs):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x, *args, **kwargs):
        return x
