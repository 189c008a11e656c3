"""A tiny trained-run folder (saved config + backbone checkpoint + FAST artifacts) for generation tests.

The model is untrained (random but non-degenerate weights): generation tests check what is written
and refused, not image quality.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from ldm.data.texture_ad import build_texture_ad
from ldm.util import instantiate_from_config
from tests.tiny_configs import fast_config


def make_dataset(root: Path, defects=("scratch",), per_defect: int = 6) -> Path:
    build_texture_ad(root, size=32, train_good=4, test_good=2, per_defect=per_defect, textures=["brick"],
                     defects=list(defects))
    return root


def make_run(work: Path, data: Path, names=("brick+scratch",), defect: str = "scratch", split: str = "third",
             steps=(5,), name_template: str | None = None, config=fast_config) -> Path:
    """``work/run/{configs,checkpoints}`` and ``work/backbone.ckpt``; returns the checkpoints folder.
    ``config``: the tiny model config builder (FAST by default; ``stage_config`` for STAGE)."""
    torch.manual_seed(0)
    cfg = config(names=list(names))
    model = instantiate_from_config(cfg)
    with torch.no_grad():  # a "pretrained" backbone: no zero-initialised output layers
        for p in model.model.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    own = tuple(f"{attr}." for _, attr in type(model).ARTIFACT_MODULES) + ("embedding_",)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(own)}
    torch.save({"state_dict": backbone}, work / "backbone.ckpt")
    ckdir = work / "run" / "checkpoints"
    for step in steps:
        model.export_artifacts(ckdir, step)
    cfg["params"]["ckpt_path"] = str(work / "backbone.ckpt")
    train = {"root": str(data), "layout": "mvtec", "category": "brick", "defect": defect, "size": 32,
             "anomaly_split": split}
    if name_template is not None:
        train["name_template"] = name_template
    full = {"model": cfg, "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                                   "params": {"batch_size": 2, "train": {"target": "ldm.data.anomaly.AnomalyDataset",
                                                                         "params": train}}}}
    (work / "run" / "configs").mkdir(parents=True, exist_ok=True)
    (work / "run" / "configs" / "now-project.yaml").write_text(yaml.safe_dump(full))
    return ckdir


def gen_args(data: Path, ckdir: Path, out: Path, *extra, anomaly: str = "scratch") -> list[str]:
    return ["--data_root", str(data), "--sample_name", "brick", "--anomaly_name", anomaly, "--pt_path", str(ckdir),
            "--mask_path", str(data / "brick" / "ground_truth" / anomaly), "--outdir", str(out),
            "--steps", "4", "--n_samples", "5", "--no_progress", "--device", "cpu", *extra]


def backbone_ckpt_from_config(config_path: str, path: Path) -> Path:
    """A random "stage-2 LDM" checkpoint with exactly the backbone of a shipped synthesizer config, for
    ``main.py --actual_resume`` in tests."""
    from omegaconf import OmegaConf

    full = OmegaConf.to_container(OmegaConf.load(config_path).model.params)
    backbone_keys = ("linear_start", "linear_end", "timesteps", "first_stage_key", "cond_stage_key", "image_size",
                     "channels", "cond_stage_trainable", "conditioning_key", "use_ema", "monitor", "unet_config",
                     "first_stage_config", "cond_stage_config")
    params = {k: v for k, v in full.items() if k in backbone_keys}
    torch.manual_seed(0)
    ldm = instantiate_from_config({"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params})
    torch.save({"state_dict": ldm.state_dict()}, path)
    return path


def record_timesteps(model, monkeypatch) -> list:
    """The timestep of every ``apply_model`` call of ``model`` from now on (first element: where sampling
    started)."""
    calls = []
    real = model.apply_model

    def spy(x, t, *a, **k):
        calls.append(int(t[0]))
        return real(x, t, *a, **k)

    monkeypatch.setattr(model, "apply_model", spy)
    return calls


def train_fast_run(work: Path, data: Path, *flags: str, steps: int = 2, config=fast_config):
    """A real ``main.py`` training run of the tiny FAST (or ``config``) model for ``steps`` steps on top of a
    random tiny LDM backbone, on brick/scratch of ``data``; returns ``(trainer, model, checkpoints folder)``."""
    import main as main_mod
    from tests.tiny_configs import ldm_config

    torch.manual_seed(0)
    torch.save({"state_dict": instantiate_from_config(ldm_config()).state_dict()}, work / "ldm.ckpt")
    model = config(names=[])
    model["params"]["personalization_config"]["params"].pop("names")
    train = {"target": "ldm.data.anomaly.AnomalyDataset",
             "params": {"root": "unused", "category": "x", "defect": "y", "size": 32, "repeats": 4}}
    cfg = {"model": model, "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                                    "params": {"batch_size": 2, "num_workers": 0, "train": train}},
           "lightning": {"modelcheckpoint": {"params": {"every_n_train_steps": steps}},
                         "callbacks": {"image_logger": {"params": {"batch_frequency": 1000, "max_images": 1}}},
                         "trainer": {"max_steps": steps, "num_sanity_val_steps": 0, "enable_model_summary": False}}}
    (work / "fast.yaml").write_text(yaml.safe_dump(cfg))
    trainer, fast = main_mod.run(["--base", str(work / "fast.yaml"), "-t", "-l", str(work / "logs"), "-lf", "fast",
                                  "--gpus", "none", "--actual_resume", str(work / "ldm.ckpt"),
                                  "--mvtec_path", str(data / "brick" / "ground_truth" / "scratch") + "/",
                                  "--init_word", "scratch", *flags])
    return trainer, fast, work / "logs" / "fast" / "checkpoints"
