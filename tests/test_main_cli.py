"""main.py end to end on CPU: train a tiny LDM, resume it, then train FAST on top of it."""
import os
from pathlib import Path

import pytest
import torch
import yaml

import main as main_mod
from ldm.data.texture_ad import build_texture_ad
from tests.tiny_configs import fast_config, ldm_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texture_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "texture-ad"
    build_texture_ad(out, size=32, train_good=6, test_good=2, per_defect=6, textures=["brick"],
                     defects=["scratch"])
    return out


def _write_config(path: Path, model: dict, train: dict, every_n: int = 2, max_steps: int = 4) -> Path:
    cfg = {"model": model,
           "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                    "params": {"batch_size": 2, "num_workers": 0, "train": train}},
           "lightning": {"modelcheckpoint": {"params": {"every_n_train_steps": every_n}},
                         "callbacks": {"image_logger": {"params": {"batch_frequency": 2, "max_images": 2,
                                                                   "increase_log_steps": False,
                                                                   "log_images_kwargs": {"ddim_steps": 3}}}},
                         "trainer": {"max_steps": max_steps, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                                     "enable_model_summary": False}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _normal_images(root):
    return {"target": "ldm.data.anomaly.NormalImagesDataset",
            "params": {"root": str(root), "size": 32, "include_anomalies": True, "repeats": 2}}


@pytest.fixture(scope="module")
def ldm_run(texture_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    cfg = _write_config(work / "ldm.yaml", ldm_config(), _normal_images(texture_root))
    logs = work / "logs"
    trainer, model = main_mod.run(["--base", str(cfg), "-t", "-l", str(logs), "-lf", "ldm", "--gpus", "none"])
    return work, logs / "ldm", trainer, model


def test_training_writes_checkpoint_config_and_png_grid(ldm_run):
    _, logdir, trainer, _ = ldm_run
    assert trainer.global_step == 4
    assert (logdir / "checkpoints" / "last.ckpt").is_file()
    assert list((logdir / "configs").glob("*-project.yaml")) and list((logdir / "configs").glob("*-lightning.yaml"))
    pngs = list((logdir / "images" / "train").glob("samples_gs-*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    ckpt = torch.load(logdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["optimizer_states"] and len(ckpt["state_dict"]) > 100


def test_resume_restores_weights_optimizer_and_step(ldm_run):
    _, logdir, _, _ = ldm_run
    saved = torch.load(logdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trainer, model = main_mod.run(["-r", str(logdir), "-t", "--max_steps", "4", "--gpus", "none"])
    assert trainer.global_step == 4
    for k, v in model.state_dict().items():
        if k in saved["state_dict"]:
            assert torch.equal(v.cpu(), saved["state_dict"][k]), k
    trainer, model = main_mod.run(["-r", str(logdir), "-t", "--max_steps", "6", "--gpus", "none"])
    assert trainer.global_step == 6
    state = trainer.optimizers[0].state
    assert state and all(int(s["step"]) == 6 for s in state.values())
    # the resumed run keeps the run's lightning section: same checkpoint period, last.ckpt updated in place
    ckpts = sorted(p.name for p in (logdir / "checkpoints").glob("*.ckpt"))
    assert [c.split("-step=")[-1] for c in ckpts] == ["000000002.ckpt", "000000004.ckpt", "000000006.ckpt",
                                                      "last.ckpt"], ckpts
    assert torch.load(logdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6


def test_the_last_step_is_saved_when_max_steps_is_off_the_checkpoint_period(texture_root, tmp_path):
    """every_n_train_steps=2, max_steps=3, mid-epoch, manual optimization (the autoencoder): step 3 must
    reach last.ckpt -- it used to stay at step 2 (the demo's 250-step autoencoder kept its 200-step
    weights and the LDM silently trained on them) -- and resuming from it continues at 3."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/tiny/autoencoder.yaml").model)
    model["params"]["ddconfig"]["resolution"] = 32
    cfg = _write_config(tmp_path / "ae.yaml", model, _normal_images(texture_root), every_n=2, max_steps=3)
    trainer, ae = main_mod.run(["--base", str(cfg), "-t", "-l", str(tmp_path / "logs"), "-lf", "ae", "--gpus", "none"])
    assert trainer.global_step == 3 and trainer.num_training_batches > 3  # the end is mid-epoch
    ckdir = tmp_path / "logs" / "ae" / "checkpoints"
    last = torch.load(ckdir / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in ae.state_dict().items())
    assert sorted(p.name.split("-step=")[-1] for p in ckdir.glob("epoch=*.ckpt")) == ["000000002.ckpt",
                                                                                       "000000003.ckpt"]
    trainer, _ = main_mod.run(["-r", str(tmp_path / "logs" / "ae"), "-t", "--max_steps", "4", "--gpus", "none"])
    assert trainer.global_step == 4
    assert torch.load(ckdir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 4


def test_log_folder_never_doubles_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = main_mod.get_parser().parse_args(["-lf", "logs/mvtec_fast/", "-b", "x.yaml"])
    logdir, ckpt, base = main_mod.resolve_logdir(opt, "now")
    assert logdir == os.path.join("logs", "mvtec_fast") and ckpt is None and base == ["x.yaml"]


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="config file not found: .*missing.yaml"):
        main_mod.run(["--base", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="unrecognized arguments"):
        main_mod.run(["--base", str(tmp_path / "x.yaml"), "--bogus"])
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        main_mod.run(["-r", str(tmp_path)])


def test_fast_on_top_of_the_ldm_exports_official_artifacts(ldm_run, texture_root, capsys):
    work, ldm_dir, _, _ = ldm_run
    train = {"target": "ldm.data.anomaly.AnomalyDataset",
             "params": {"root": "unused", "category": "x", "defect": "y", "size": 32, "repeats": 4}}
    model = fast_config(names=[])
    model["params"]["personalization_config"]["params"].pop("names")
    cfg = _write_config(work / "fast.yaml", model, train, every_n=2, max_steps=4)
    mvtec_path = texture_root / "brick" / "ground_truth" / "scratch"
    backbone = torch.load(ldm_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    trainer, fast = main_mod.run(["--base", str(cfg), "-t", "-l", str(work / "logs"), "-lf", "fast",
                                  "--actual_resume", str(ldm_dir / "checkpoints" / "last.ckpt"),
                                  "--mvtec_path", str(mvtec_path) + "/", "--init_word", "scratch"])
    out = capsys.readouterr().out
    assert "Restored from" in out and "missing" in out
    assert list(fast.embedding_manager.string_to_param_dict.keys()) == ["brick+scratch"]
    ckdir = work / "logs" / "fast" / "checkpoints"
    for name in ("embeddings_gs-2.pt", "embeddings_gs-4.pt", "FARM-2.pt", "FARM-4.pt", "fine-4.pt",
                 "embeddings.pt", "last.ckpt"):
        assert (ckdir / name).is_file(), name
    # the frozen backbone is the --actual_resume checkpoint's, unchanged by FAST training
    keys = [k for k in backbone if k.startswith("model.diffusion_model.")]
    assert keys
    for k in keys:
        assert torch.equal(fast.state_dict()[k].cpu(), backbone[k]), k


def test_a_list_of_defect_types_stays_a_list_and_names_one_token_each():
    """``data.params.train.params.defect=[crack,scratch]`` (one mask model for several defect types) was
    written into the dataset as the string "['crack', 'scratch']"."""
    from argparse import Namespace

    from omegaconf import OmegaConf

    config = OmegaConf.create({
        "model": {"params": {"personalization_config": {"target": "x", "params": {}}}},
        "data": {"params": {"train": {"target": "ldm.data.generated_masks.DefectMasksDataset",
                                      "params": {"root": "data", "category": "brick",
                                                 "defect": ["crack", "scratch"]}}}}})
    opt = Namespace(category=None, defect=None, mvtec_path=None, init_word=None, placeholder_string=None,
                    embedding_manager_ckpt=None)
    category, defect = main_mod.inject_dataset(config, opt)
    assert list(config.data.params.train.params.defect) == ["crack", "scratch"]
    main_mod.configure_personalization(config, opt, category, defect)
    assert list(config.model.params.personalization_config.params.names) == ["brick+crack", "brick+scratch"]
    single = OmegaConf.create({"model": {"params": {"personalization_config": {"params": {}}}},
                               "data": {"params": {"train": {"target": "ldm.data.anomaly.AnomalyDataset",
                                                             "params": {"category": "brick"}}}}})
    category, defect = main_mod.inject_dataset(single, Namespace(**{**vars(opt), "defect": "hole"}))
    assert single.data.params.train.params.defect == "hole"
    main_mod.configure_personalization(single, opt, category, defect)
    assert list(single.model.params.personalization_config.params.names) == ["brick+hole"]
