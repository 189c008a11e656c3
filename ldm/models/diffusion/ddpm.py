"""DDPM and LatentDiffusion LightningModules with CompVis module names, buffers and checkpoint keys.

What differs from CompVis LDM (deliberately):
- PyTorch 2 / Lightning 2: no hard-coded devices, no ``dataloader_idx`` hooks, no TestTube.
- The noise schedule lives in :class:`~ldm.models.diffusion.schedule.NoiseSchedule` (float64);
  the module only registers its 12 buffers (persistent, CompVis names) for checkpoint compatibility.
- Sampling goes through the schedule-only samplers in ``ldm.models.diffusion.samplers``.
- Checkpoints are never emptied: Lightning's ``-r`` restores weights, optimizer state and step.
- Text conditioning may carry per-sample names (``category+defect``) for per-name embeddings.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ldm.models.diffusion.adaptor import FineTune  # noqa: F401  (official pickles name this path)
from ldm.models.diffusion.latent_cache import PosteriorCache
from ldm.models.diffusion.schedule import SCHEDULE_BUFFER_NAMES, NoiseSchedule
from ldm.modules.ema import LitEma
from ldm.util import count_params, default, fused_optimizer_kwargs, instantiate_from_config
from utils.errors import UserError


def disabled_train(self, mode: bool = True):
    """Replacement for ``nn.Module.train`` on frozen sub-models: they stay in eval mode."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.train = disabled_train.__get__(module)
    for p in module.parameters():
        p.requires_grad = False
    return module


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` (→ ``model.diffusion_model.*`` keys) and routes conditioning."""

    def __init__(self, diff_model_config, conditioning_key: str | None):
        super().__init__()
        self.diffusion_model = instantiate_from_config(diff_model_config)
        if conditioning_key not in (None, "concat", "crossattn", "hybrid", "adm"):
            raise ValueError(f"unknown conditioning_key '{conditioning_key}' (concat, crossattn, hybrid, adm)")
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat: list | None = None, c_crossattn: list | None = None):
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key == "concat":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t)
        if key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))
        if key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=torch.cat(c_crossattn, 1))
        return self.diffusion_model(x, t, y=c_crossattn[0])  # adm


class DDPM(pl.LightningModule):
    """Pixel-space DDPM with the CompVis constructor and state-dict layout."""

    def __init__(self, unet_config, timesteps: int = 1000, beta_schedule: str = "linear", loss_type: str = "l2",
                 ckpt_path: str | None = None, ignore_keys: Iterable[str] = (), load_only_unet: bool = False,
                 monitor: str | None = "val/loss", use_ema: bool = True, first_stage_key: str = "image",
                 image_size: int = 256, channels: int = 3, log_every_t: int = 100, clip_denoised: bool | None = None,
                 linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3, given_betas=None,
                 original_elbo_weight: float = 0.0, v_posterior: float = 0.0, l_simple_weight: float = 1.0,
                 conditioning_key: str | None = None, parameterization: str = "eps", scheduler_config=None,
                 use_positional_encodings: bool = False, learn_logvar: bool = False, logvar_init: float = 0.0,
                 ema_decay: float = 0.9999, save_frozen_weights: bool = True, noise_offset: float = 0.0):
        super().__init__()
        if parameterization not in ("eps", "x0"):
            raise ValueError(f"parameterization must be 'eps' or 'x0', got '{parameterization}'")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got '{loss_type}'")
        # CompVis keys we accept but cannot honour: refuse rather than silently ignore them
        if clip_denoised:
            raise UserError("clip_denoised: true is not supported (samplers here never clip x0 in latent space; "
                            "drop the key or set it to false)")
        if use_positional_encodings:
            raise UserError("use_positional_encodings: true is not supported (drop the key or set it to false)")
        if not noise_offset >= 0:
            raise UserError(f"noise_offset must be >= 0 (0: the plain Gaussian noise of LDM), got {noise_offset}")
        self.noise_offset = float(noise_offset)
        self.parameterization = parameterization
        self.cond_stage_model = None
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.use_scheduler = scheduler_config is not None
        if self.use_scheduler:
            self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.loss_type = loss_type
        self.save_frozen_weights = save_frozen_weights
        if monitor is not None:
            self.monitor = monitor
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), float(logvar_init))
        if learn_logvar:
            self.logvar = nn.Parameter(logvar, requires_grad=True)
        else:
            self.register_buffer("logvar", logvar, persistent=False)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)

    # ------------------------------------------------------------------ schedule
    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=1e-4,
                          linear_end=2e-2, cosine_s=8e-3):
        self.schedule = NoiseSchedule.from_config(beta_schedule, timesteps, linear_start, linear_end, cosine_s,
                                                  given_betas=given_betas, v_posterior=self.v_posterior)
        self.num_timesteps = self.schedule.num_timesteps
        self.linear_start, self.linear_end = linear_start, linear_end
        buffers = self.schedule.buffers()
        for name in SCHEDULE_BUFFER_NAMES:
            self.register_buffer(name, buffers[name].to(torch.float32))
        self.register_buffer("lvlb_weights", self.schedule.lvlb_weights(self.parameterization).to(torch.float32),
                             persistent=False)

    # ------------------------------------------------------------------ checkpoints
    def init_from_ckpt(self, path: str, ignore_keys: Iterable[str] = (), only_model: bool = False):
        """Non-strict load of a CompVis-style checkpoint; prints what was missing / unexpected."""
        from utils.safe_load import load_checkpoint_nonstrict

        target = self.model if only_model else self
        sd, missing, unexpected = load_checkpoint_nonstrict(target, path, ignore_keys)
        self._frozen_weights_source = str(path)
        manager = getattr(self, "embedding_manager", None)
        if manager is not None and not any(k.startswith("embedding_manager.") for k in sd):
            manager.reinitialize_from(self.cond_stage_model)
            print("Initialised the anomaly embeddings from the loaded text encoder")
        return missing, unexpected

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep checkpoints complete by default; optionally drop frozen weights that came from a
        pretrained checkpoint (they are restored from that file again on resume)."""
        source = getattr(self, "_frozen_weights_source", None)
        if self.save_frozen_weights or source is None:
            return
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        sd = checkpoint["state_dict"]
        for k in list(sd):
            if k in frozen and k not in trainable:
                del sd[k]
        checkpoint["frozen_weights_source"] = source

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "frozen_weights_source" in checkpoint:
            self.strict_loading = False

    # ------------------------------------------------------------------ EMA
    @contextmanager
    def ema_scope(self, context: str | None = None):
        if self.use_ema:
            with self.model_ema.average_parameters(self.model):
                if context is not None:
                    print(f"{context}: switched to EMA weights")
                yield
            if context is not None:
                print(f"{context}: restored training weights")
        else:
            yield

    def optimizer_step(self, *args, **kwargs):
        """The optimizer step, then the EMA update -- here rather than in ``on_train_batch_end``
        (CompVis), which Lightning runs *after* the callbacks', so a checkpoint saved at step k would
        hold the EMA of k-1 updates and a resumed run would stay one update behind."""
        out = super().optimizer_step(*args, **kwargs)
        if self.use_ema:
            self.model_ema(self.model)
        return out

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start, t):
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def predict_start_from_noise(self, x_t, t, noise):
        return (extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def predict_noise_from_start(self, x_t, t, x0):
        return ((extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
                / extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    def q_posterior(self, x_start, x_t, t):
        mean = (extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        var = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_var = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    # ------------------------------------------------------------------ training
    def get_loss(self, pred, target, mean: bool = True):
        if self.loss_type == "l1":
            loss = (target - pred).abs()
            return loss.mean() if mean else loss
        return F.mse_loss(target, pred) if mean else F.mse_loss(target, pred, reduction="none")

    def apply_model(self, x_noisy, t, cond=None):
        return self.model(x_noisy, t)

    def training_target(self, x_start, noise):
        return noise if self.parameterization == "eps" else x_start

    def training_noise(self, x_start):
        """The noise a training step adds: ε + o·η with ε ~ N(0, I) per element and η ~ N(0, I) per (sample,
        channel), constant over space (offset noise, o = ``noise_offset``; 0: LDM's plain ε). A model trained on
        ε alone barely learns to change an image's mean colour: the mean of ε over the image is ~0 at every
        step, so sampling from pure noise drifts every region toward the data's average colour. η makes that
        mean part of the noise the model must predict."""
        noise = torch.randn_like(x_start)
        if self.noise_offset > 0:
            noise = noise + self.noise_offset * torch.randn(*x_start.shape[:2], *([1] * (x_start.ndim - 2)),
                                                            device=x_start.device, dtype=x_start.dtype)
        return noise

    def p_losses(self, x_start, t, noise=None, cond=None):
        noise = default(noise, lambda: self.training_noise(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_out = self.apply_model(x_noisy, t, cond)
        return self.loss_from_prediction(model_out, self.training_target(x_start, noise), t)

    def loss_from_prediction(self, model_out, target, t, weight_map=None):
        """CompVis loss: ``l_simple_weight·mean(L/exp(logvar_t) + logvar_t) + elbo_weight·mean(λ_t L)``."""
        prefix = "train" if self.training else "val"
        per_elem = self.get_loss(model_out, target, mean=False)
        if weight_map is not None:
            per_elem = per_elem * weight_map
        loss_simple = per_elem.mean(dim=list(range(1, per_elem.ndim)))
        logvar_t = self.logvar[t]
        loss = (loss_simple / torch.exp(logvar_t) + logvar_t).mean()
        loss_dict = {f"{prefix}/loss_simple": loss_simple.mean()}
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss
            loss_dict["logvar"] = self.logvar.data.mean()
        loss = self.l_simple_weight * loss
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def sample_timesteps(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (n,), device=self.device).long()

    def get_input(self, batch, k):
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def forward(self, x, *args, **kwargs):
        return self.p_losses(x, self.sample_timesteps(x.shape[0]), *args, **kwargs)

    def shared_step(self, batch):
        x = self.get_input(batch, self.first_stage_key)
        return self(x)

    def training_step(self, batch, batch_idx):
        loss, loss_dict = self.shared_step(batch)
        bs = _batch_size(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=False, batch_size=bs)
        self.log("global_step", float(self.global_step), prog_bar=False, logger=True, on_step=True,
                 on_epoch=False, batch_size=bs)
        if self.use_scheduler:
            self.log("lr_abs", self.optimizers().param_groups[0]["lr"], prog_bar=True, logger=True,
                     on_step=True, on_epoch=False, batch_size=bs)
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        bs = _batch_size(batch)
        _, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=False, logger=True, on_step=False, on_epoch=True, batch_size=bs)
        if self.use_ema:
            with self.ema_scope():
                _, loss_dict_ema = self.shared_step(batch)
            self.log_dict({k + "_ema": v for k, v in loss_dict_ema.items()}, prog_bar=False, logger=True,
                          on_step=False, on_epoch=True, batch_size=bs)

    def hot_modules(self) -> list[tuple[str, nn.Module]]:
        """The networks called at every sampling step (what ``--compile`` compiles)."""
        return [("model.diffusion_model", self.model.diffusion_model)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def optimizer_groups(self, params: list, lr: float) -> list[dict]:
        """AdamW parameter groups (one here; ``LatentDiffusion`` may give the UNet its own rate)."""
        return [{"params": params, "lr": lr}]

    def configure_optimizers(self):
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise RuntimeError("learning_rate is not set: main.py sets model.learning_rate from base_learning_rate")
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: everything is frozen (check unfreeze_model / configs)")
        opt = torch.optim.AdamW(self.optimizer_groups(params, lr), lr=lr, **fused_optimizer_kwargs(params))
        if not self.use_scheduler:
            return opt
        scheduler = instantiate_from_config(self.scheduler_config)
        sched = {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=scheduler.schedule),
                 "interval": "step", "frequency": 1}
        return [opt], [sched]

    # ------------------------------------------------------------------ sampling
    def eps_from_output(self, model_out, x_t, t):
        if self.parameterization == "eps":
            return model_out
        return self.predict_noise_from_start(x_t, t, model_out)

    def denoiser(self, cond=None):
        """The callable samplers use: ``(x_t, t) -> ε̂`` with this model's conditioning bound."""
        def eps_fn(x, t):
            return self.eps_from_output(self.apply_model(x, t, cond), x, t)
        return eps_fn

    @torch.no_grad()
    def sample(self, batch_size: int = 16, cond=None, sampler: str = "ddim", steps: int = 50, rng=None, **kw):
        from ldm.models.diffusion.sampler_registry import build_sampler

        s = build_sampler(sampler, self.schedule, steps=steps, **kw)
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return s.sample(self.denoiser(cond), shape, rng=rng, device=self.device)

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, sample: bool = True, ddim_steps: int = 50, **kwargs):
        log = {}
        x = self.get_input(batch, self.first_stage_key)[:N]
        log["inputs"] = x
        if sample:
            with self.ema_scope():
                log["samples"] = self.sample(batch_size=x.shape[0], steps=ddim_steps)
        return log


class LatentDiffusion(DDPM):
    """DDPM in the latent space of a frozen first stage, with cross-attention text conditioning and
    optional textual-inversion embeddings (``personalization_config``)."""

    def __init__(self, first_stage_config, cond_stage_config, num_timesteps_cond: int | None = None,
                 cond_stage_key: str = "image", cond_stage_trainable: bool = False, concat_mode: bool = True,
                 cond_stage_forward: str | None = None, conditioning_key: str | None = None,
                 scale_factor: float = 1.0, scale_by_std: bool = False, personalization_config=None,
                 embedding_reg_weight: float = 0.0, unfreeze_model: bool | None = None, name_key: str = "name",
                 cache_latents: bool = False, cache_latents_max: int = 50_000,
                 backbone_learning_rate: float | None = None, *args, **kwargs):
        self.num_timesteps_cond = default(num_timesteps_cond, 1)
        if self.num_timesteps_cond > 1:
            raise NotImplementedError("num_timesteps_cond > 1 (shortened conditioning schedule) is not supported")
        self.scale_by_std = scale_by_std
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == "__is_unconditional__":
            conditioning_key = None
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", [])
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.name_key = name_key
        if not scale_by_std:
            self.scale_factor = scale_factor
        else:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        # per-image posterior of the frozen first stage (see latent_cache.py: exact in distribution)
        self.latent_cache = PosteriorCache(cache_latents_max) if cache_latents else None
        self.cond_stage_forward = cond_stage_forward
        self.embedding_reg_weight = embedding_reg_weight
        self.embedding_manager = None
        if personalization_config is not None:
            self.embedding_manager = instantiate_from_config(personalization_config,
                                                             embedder=self.cond_stage_model)
        # Textual inversion freezes the backbone unless told otherwise; plain LDM trains the UNet.
        self.unfreeze_model = default(unfreeze_model, personalization_config is None)
        # textual inversion + a fine-tuned small backbone: the UNet needs a far smaller rate than the
        # embeddings (absolute, not scaled by batch size); None = the model's one rate
        self.backbone_learning_rate = backbone_learning_rate
        if personalization_config is not None or not self.unfreeze_model:
            # with textual inversion the learned embeddings are the text side's only update (a trained
            # text encoder would have to travel with every run's artifacts); unfreeze_model opens the UNet
            if self.cond_stage_model is not None:
                freeze(self.cond_stage_model)
            self.cond_stage_trainable = False
        if not self.unfreeze_model:
            freeze(self.model)
            if self.use_ema:
                self.model_ema = LitEma(self.model)  # tracks nothing: the UNet is frozen
        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)
            self.restarted_from_ckpt = True

    # ------------------------------------------------------------------ stages
    def instantiate_first_stage(self, config):
        self.first_stage_model = freeze(instantiate_from_config(config))

    def instantiate_cond_stage(self, config):
        if config == "__is_first_stage__":
            print("Using first stage also as cond stage.")
            self.cond_stage_model = self.first_stage_model
        elif config == "__is_unconditional__":
            print(f"Training {self.__class__.__name__} as an unconditional model.")
            self.cond_stage_model = None
        else:
            model = instantiate_from_config(config)
            self.cond_stage_model = model if self.cond_stage_trainable else freeze(model)

    def get_first_stage_encoding(self, encoder_posterior, sample: bool = True):
        if not torch.is_tensor(encoder_posterior) and hasattr(encoder_posterior, "sample"):
            z = encoder_posterior.sample() if sample else encoder_posterior.mode()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise TypeError(f"encoder output of type {type(encoder_posterior).__name__} is not supported")
        return self.scale_factor * z

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def first_stage_posterior(self, x):
        """``encode_first_stage(x)``, from the per-image cache when ``cache_latents`` is on."""
        if self.latent_cache is None:
            return self.encode_first_stage(x)
        return self.latent_cache.posterior(x, self.encode_first_stage)

    @torch.no_grad()
    def encode_to_latent(self, x, sample: bool = False):
        """Images (B×C×H×W in [-1,1]) → scaled latents; the posterior mode by default (deterministic)."""
        return self.get_first_stage_encoding(self.encode_first_stage(x), sample=sample)

    def decode_first_stage(self, z, predict_cids: bool = False, force_not_quantize: bool = False):
        z = z / self.scale_factor
        with torch.no_grad():
            return self.first_stage_model.decode(z)

    def on_train_batch_start(self, batch, batch_idx):
        """``scale_by_std``: set the latent scale from the first batch, as in CompVis LDM."""
        if (self.scale_by_std and self.current_epoch == 0 and self.global_step == 0 and batch_idx == 0
                and not self.restarted_from_ckpt):
            x = super().get_input(batch, self.first_stage_key).to(self.device)
            z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
            del self.scale_factor
            self.register_buffer("scale_factor", 1.0 / z.flatten().std())
            print(f"setting self.scale_factor to {self.scale_factor}")

    # ------------------------------------------------------------------ conditioning
    def get_learned_conditioning(self, c):
        """Encode raw conditioning. ``c`` is a list of strings, or ``{"caption": [...], "name": [...]}``
        when per-name embeddings are used."""
        names = None
        if isinstance(c, dict):
            names = c.get("name")
            c = c["caption"]
        if self.cond_stage_forward is not None:
            return getattr(self.cond_stage_model, self.cond_stage_forward)(c)
        model = self.cond_stage_model
        if self.embedding_manager is not None:
            return model.encode(c, embedding_manager=self.embedding_manager, names=names)
        if hasattr(model, "encode") and callable(model.encode):
            out = model.encode(c)
            if not torch.is_tensor(out) and callable(getattr(out, "mode", None)):
                out = out.mode()  # a posterior (first stage used as cond stage)
            return out
        return model(c)

    def get_raw_conditioning(self, batch, bs: int | None = None):
        xc = batch[self.cond_stage_key]
        if isinstance(xc, torch.Tensor):
            xc = xc[:bs] if bs is not None else xc
            return xc
        xc = list(xc)[:bs] if bs is not None else list(xc)
        if self.embedding_manager is not None and self.name_key in batch:
            names = list(batch[self.name_key])[:len(xc)]
            return {"caption": xc, "name": names}
        return xc

    def get_input(self, batch, k, return_first_stage_outputs: bool = False, force_c_encode: bool = False,
                  cond_key: str | None = None, return_original_cond: bool = False, bs: int | None = None):
        x = super().get_input(batch, k)
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.first_stage_posterior(x)).detach()
        c = None
        xc = None
        if self.model.conditioning_key is not None:
            if cond_key is not None and cond_key != self.cond_stage_key:
                raise ValueError(f"cond_key '{cond_key}' differs from cond_stage_key '{self.cond_stage_key}'")
            xc = self.get_raw_conditioning(batch, bs=x.shape[0])
            if self.needs_conditioning_grad() and not force_c_encode:
                c = xc  # encoded inside forward so gradients reach the trainable parts
            else:
                with torch.set_grad_enabled(self.needs_conditioning_grad()):
                    c = self.get_learned_conditioning(xc)
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_original_cond:
            out.append(xc)
        return out

    def needs_conditioning_grad(self) -> bool:
        return self.cond_stage_trainable or self.embedding_manager is not None

    # ------------------------------------------------------------------ training
    def shared_step(self, batch, **kwargs):
        z, c = self.get_input(batch, self.first_stage_key)
        return self(z, c)

    def forward(self, x, c, *args, **kwargs):
        """Sample timesteps, encode trainable conditioning, and compute the loss; extra keyword
        arguments (a subclass's own inputs, e.g. FAST's latent mask) go to ``p_losses``."""
        t = self.sample_timesteps(x.shape[0])
        if self.model.conditioning_key is not None and self.needs_conditioning_grad() and not torch.is_tensor(c):
            c = self.get_learned_conditioning(c)
        return self.p_losses(x, c, t, **kwargs)

    def apply_model(self, x_noisy, t, cond, return_ids: bool = False):
        if cond is None or isinstance(cond, dict):
            cond = cond or {}
        else:
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    def p_losses(self, x_start, cond, t, noise=None):
        noise = default(noise, lambda: self.training_noise(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        loss, loss_dict = self.loss_from_prediction(model_output, self.training_target(x_start, noise), t)
        return self.add_embedding_regulariser(loss, loss_dict)

    def add_embedding_regulariser(self, loss, loss_dict):
        if self.embedding_reg_weight > 0 and self.embedding_manager is not None:
            reg = self.embedding_manager.embedding_to_coarse_loss().mean()
            prefix = "train" if self.training else "val"
            loss_dict[f"{prefix}/loss_embedding_reg"] = reg
            loss = loss + self.embedding_reg_weight * reg
            loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def export_artifacts(self, dirpath, step: int) -> list:
        """Plain-tensor files beside the Lightning checkpoints: ``embeddings_gs-{step}.pt`` and
        ``embeddings.pt`` (latest), in the AnomalyDiffusion/FAST format."""
        from pathlib import Path

        from utils.atomic import atomic_path

        written = []
        if self.embedding_manager is not None:
            d = Path(dirpath)
            for name in (f"embeddings_gs-{step}.pt", "embeddings.pt"):
                with atomic_path(d / name) as tmp:
                    self.embedding_manager.save(tmp)
                written.append(d / name)
                written.append(self.embedding_manager.save_safetensors(d / name.replace(".pt", ".safetensors")))
        return written

    def optimizer_groups(self, params: list, lr: float) -> list[dict]:
        if self.backbone_learning_rate is None or not self.unfreeze_model:
            return super().optimizer_groups(params, lr)
        unet = {id(p) for p in self.model.parameters()}
        groups = [{"params": [p for p in params if id(p) not in unet], "lr": lr},
                  {"params": [p for p in params if id(p) in unet], "lr": float(self.backbone_learning_rate)}]
        return [g for g in groups if g["params"]]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        if self.unfreeze_model:
            params += list(self.model.parameters())
            if self.cond_stage_trainable and self.cond_stage_model is not None:
                params += list(self.cond_stage_model.parameters())
        if self.embedding_manager is not None:
            params += list(self.embedding_manager.embedding_parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    # ------------------------------------------------------------------ sampling / logging
    @torch.no_grad()
    def sample(self, batch_size: int = 16, cond=None, sampler: str = "ddim", steps: int = 50, rng=None,
               latent_shape=None, **kw):
        from ldm.models.diffusion.sampler_registry import build_sampler

        s = build_sampler(sampler, self.schedule, steps=steps, **kw)
        shape = latent_shape or (batch_size, self.channels, self.image_size, self.image_size)
        if cond is not None and not torch.is_tensor(cond):
            cond = self.get_learned_conditioning(cond)
        return s.sample(self.denoiser(cond), shape, rng=rng, device=self.device)

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, sample: bool = True, ddim_steps: int = 50, **kwargs):
        log = {}
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=N)
        log["inputs"] = x
        log["reconstruction"] = xrec
        if sample:
            with self.ema_scope():
                samples = self.sample(batch_size=z.shape[0], cond=c, steps=ddim_steps,
                                      latent_shape=tuple(z.shape))
            log["samples"] = self.decode_first_stage(samples)
        return log


def _batch_size(batch) -> int:
    for v in batch.values() if isinstance(batch, dict) else []:
        if torch.is_tensor(v):
            return int(v.shape[0])
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1
