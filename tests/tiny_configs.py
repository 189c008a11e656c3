"""Tiny model configs for tests: real modules, seconds per training step on a CPU."""
from __future__ import annotations

import copy

from omegaconf import OmegaConf

UNET = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                   "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 4,
                   "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 64,
                   "use_checkpoint": False, "legacy": False}}
AUTOENCODER = {"target": "ldm.models.autoencoder.AutoencoderKL",
               "params": {"embed_dim": 4, "monitor": None,
                          "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3,
                                       "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
                                       "attn_resolutions": [], "dropout": 0.0},
                          "lossconfig": {"target": "torch.nn.Identity"}}}
BERT = {"target": "ldm.modules.encoders.modules.BERTEmbedder",
        "params": {"n_embed": 64, "n_layer": 1, "vocab_size": 422, "tokenizer_path": "tiny"}}
LDM_PARAMS = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "first_stage_key": "image",
              "cond_stage_key": "caption", "image_size": 8, "channels": 4, "cond_stage_trainable": True,
              "conditioning_key": "crossattn", "scale_factor": 1.0, "use_ema": False, "monitor": None,
              "unet_config": UNET, "first_stage_config": AUTOENCODER, "cond_stage_config": BERT}


def ldm_config(**overrides) -> dict:
    params = copy.deepcopy(LDM_PARAMS)
    params.update(overrides)
    return {"base_learning_rate": 1e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}


def fast_config(names=("tex+scratch",), adaptor="replace", **overrides) -> dict:
    cfg = ldm_config(**overrides)
    cfg["target"] = "ldm.models.diffusion.fast.FAST"
    cfg["base_learning_rate"] = 2e-3
    cfg["params"].update({
        "adaptor": adaptor, "adaptor_widths": [16, 16],
        "farm_config": {"target": "ldm.models.recon_net.FARM",
                        "params": {"in_channels": 4, "out_channels": 4, "base_width": 8, "latent_size": 8,
                                   "t_emb_dim": 16, "bg_hidden": 16}},
        "personalization_config": {"target": "ldm.modules.embedding_manager.EmbeddingManager",
                                   "params": {"placeholder_strings": ["*"], "initializer_words": ["anomaly"],
                                              "num_vectors_per_token": 2, "names": list(names)}},
    })
    return cfg


def stage_config(names=("tex+scratch",), **overrides) -> dict:
    cfg = ldm_config(**overrides)
    cfg["target"] = "ldm.models.diffusion.stage.STAGE"
    cfg["base_learning_rate"] = 2e-3
    cfg["params"].update({
        "adaptor_widths": [8, 16, 8],
        "personalization_config": {"target": "ldm.modules.embedding_manager.EmbeddingManager",
                                   "params": {"placeholder_strings": ["*"], "initializer_words": ["anomaly"],
                                              "num_vectors_per_token": 2, "names": list(names)}},
    })
    return cfg


def grounding_config(names=("tex+scratch", "tex+crack"), lora_rank=2, **overrides) -> dict:
    cfg = ldm_config(**overrides)
    cfg["target"] = "ldm.models.diffusion.grounding.GroundingAnomaly"
    cfg["params"].update({
        "scm_config": {"encoder": "tiny", "encoder_params": {"widths": [8, 16]}, "grid": 2, "map_channels": 8},
        "lora_rank": lora_rank, "mnt_ratio": 0.5, "ndi_t_start": 500,
        "personalization_config": {"target": "ldm.modules.embedding_manager.EmbeddingManager",
                                   "params": {"placeholder_strings": ["*"], "initializer_words": ["anomaly"],
                                              "num_vectors_per_token": 2, "names": list(names)}},
    })
    return cfg


def as_omegaconf(cfg: dict):
    return OmegaConf.create(cfg)
