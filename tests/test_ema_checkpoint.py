"""A checkpoint saved at step k holds the EMA after k updates (resume then continues it exactly)."""
import torch
import yaml

import main as main_mod
from ldm.data.texture_ad import build_texture_ad
from tests.tiny_configs import ldm_config


def test_checkpoint_at_step_k_holds_k_ema_updates(tmp_path):
    data = tmp_path / "data"
    build_texture_ad(data, size=32, train_good=4, test_good=1, per_defect=3, textures=["brick"],
                     defects=["scratch"])
    model = ldm_config(use_ema=True)
    cfg = {"model": model,
           "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                    "params": {"batch_size": 2, "num_workers": 0,
                               "train": {"target": "ldm.data.anomaly.NormalImagesDataset",
                                         "params": {"root": str(data), "size": 32}}}},
           "lightning": {"modelcheckpoint": {"params": {"every_n_train_steps": 2}},
                         "callbacks": {"image_logger": {"params": {"batch_frequency": 1000}}},
                         "trainer": {"max_steps": 4, "num_sanity_val_steps": 0, "enable_model_summary": False}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trainer, m = main_mod.run(["--base", str(path), "-t", "-l", str(tmp_path / "logs"), "-lf", "ema", "--gpus", "none"])
    ckdir = tmp_path / "logs" / "ema" / "checkpoints"
    periodic = sorted(p for p in ckdir.glob("*.ckpt") if p.name != "last.ckpt")
    assert periodic, list(ckdir.iterdir())
    at2 = torch.load(periodic[0], map_location="cpu", weights_only=False)
    assert at2["global_step"] == 2 and int(at2["state_dict"]["model_ema.num_updates"]) == 2
    last = torch.load(ckdir / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4 and int(last["state_dict"]["model_ema.num_updates"]) == 4
    # and the EMA weights saved are the ones the model holds at that step
    for k, v in m.model_ema.state_dict().items():
        assert torch.equal(v.cpu(), last["state_dict"][f"model_ema.{k}"]), k
