"""The demo's generator configs restate the backbone they are trained on (CompVis configs are self-contained);
a backbone change made in one file and not the others would load the LDM non-strictly into another
architecture (missing keys are only printed). Every generator config must describe exactly the tiny LDM's
UNet and autoencoder, and the LDM the autoencoder's latent."""
from __future__ import annotations

import pytest

from ldm.demo.evidence import DEMO_CONFIGS, model_section


def _model(role: str) -> dict:
    return model_section(DEMO_CONFIGS[role])["params"]


def _without_ckpt(first_stage: dict) -> dict:
    params = {k: v for k, v in first_stage["params"].items() if k not in ("ckpt_path", "lossconfig")}
    return dict(first_stage, params=params)


def test_the_ldm_is_built_on_the_autoencoder_s_latent():
    ae, ldm = _model("autoencoder"), _model("ldm")
    assert ldm["first_stage_config"]["params"]["ddconfig"] == ae["ddconfig"]
    assert ldm["first_stage_config"]["params"]["embed_dim"] == ae["embed_dim"] == ldm["channels"]
    down = 2 ** (len(ae["ddconfig"]["ch_mult"]) - 1)
    assert ldm["image_size"] == ldm["unet_config"]["params"]["image_size"] == ae["ddconfig"]["resolution"] // down
    assert ldm["image_size"] == 32                     # f2: a 1-px crack at 64 px is half a latent cell


@pytest.mark.parametrize("role", ["fast", "stage", "grounding"])
def test_every_generator_config_restates_the_ldm_backbone(role):
    ldm, gen = _model("ldm"), _model(role)
    for key in ("image_size", "channels", "timesteps", "linear_start", "linear_end", "scale_by_std",
                "conditioning_key", "cond_stage_config"):
        assert gen[key] == ldm[key], key
    assert gen["unet_config"] == ldm["unet_config"]
    assert _without_ckpt(gen["first_stage_config"]) == _without_ckpt(ldm["first_stage_config"])
    if "farm_config" in gen:
        assert gen["farm_config"]["params"]["latent_size"] == gen["image_size"]
        assert gen["farm_config"]["params"]["in_channels"] == gen["channels"]
