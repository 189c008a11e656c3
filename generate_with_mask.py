#!/usr/bin/env python
"""Write synthetic image–mask pairs with a trained FAST model (the official command line, extended).

    python generate_with_mask.py --data_root data/texture-ad --sample_name brick --anomaly_name scratch \
        --pt_path logs/fast/brick+scratch/checkpoints --weight_idx 600 --init_word scratch \
        --mask_path data/texture-ad/brick/ground_truth/scratch/ --outdir outputs/generated

Output: ``<outdir>/<sample_name>/<anomaly_name>/{image,mask,image-mask-ori}/<n>.png`` plus
``contact_sheet.png``. Pair n depends only on (seed, sample, anomaly, n): the same for any batch size,
after an interruption, and on every process of a multi-process run (indices are split by rank).
Re-running skips finished pairs; each PNG is written atomically. Pixels outside the mask are the
normal image's, exactly.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SAMPLERS = ("aias", "ddpm", "ddim", "plms")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True,
                   help="folder of normal images, or a dataset root (then <root>/<sample_name>/train/good)")
    p.add_argument("--sample_name", required=True, help="category (output folder level 1)")
    p.add_argument("--anomaly_name", required=True, help="defect type (output folder level 2)")
    p.add_argument("--pt_path", required=True, help="folder with embeddings_gs-N.pt, FARM-N.pt, fine-N.pt")
    p.add_argument("--weight_idx", type=int, default=None,
                   help="N of the artifacts to use (default: the latest); a wrong N lists the available ones")
    p.add_argument("--mask_path", default=None,
                   help="masks of the defect type: <root>/<category>/ground_truth/<defect>/ (generator side "
                        "of the split is used) or any folder of masks")
    p.add_argument("--init_word", default=None, help="init word of the embeddings (only builds the manager)")
    p.add_argument("--config", default=None, help="FAST config (default: the run's saved *-project.yaml)")
    p.add_argument("--ckpt", default=None,
                   help="backbone checkpoint (default: the one the run was trained from, model.params.ckpt_path)")
    p.add_argument("--outdir", default=".", help="output root")
    p.add_argument("--sampler", choices=SAMPLERS, default="aias")
    p.add_argument("--steps", type=int, default=50,
                   help="network calls (aias: segments + refinement steps; ddim/plms: steps; ddpm: ignored)")
    p.add_argument("--kernel", choices=("exact", "paper"), default="exact", help="AIAS segment kernel")
    p.add_argument("--refine_steps", type=int, default=2, help="AIAS plain DDPM steps at the end")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0 = posterior sampling, like AIAS)")
    p.add_argument("--farm_mode", choices=("input", "state", "off"), default="input",
                   help="FARM re-injection: input (official: changes the UNet input at t_s), state (paper: "
                        "replaces the masked state at t_e), off")
    p.add_argument("--writeback", choices=("window", "every", "off"), default="window",
                   help="background write-back: window = only for 250 < t_e < 750 (official), every step, off")
    p.add_argument("--t_start", type=int, default=None,
                   help="start from the noised normal latent at this 0-based step (SDEdit/NDI) instead of noise")
    p.add_argument("--mask_source", choices=("real", "augmented", "perlin"), default="real")
    p.add_argument("--layout", default="mvtec", help="dataset layout of --data_root / --mask_path")
    p.add_argument("--prompt", default="Anomaly *", help="caption; '*' is replaced by the learned embeddings")
    p.add_argument("--n_samples", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--adaptive_mask", action="store_true", help="accepted for compatibility; ignored (as officially)")
    p.add_argument("--no_progress", action="store_true")
    return p


def _fail(msg: str) -> None:
    from utils.errors import UserError

    raise UserError(msg)


def find_config(opt) -> Path:
    if opt.config:
        if not os.path.isfile(opt.config):
            _fail(f"--config not found: {opt.config}")
        return Path(opt.config)
    found = sorted(glob.glob(str(Path(opt.pt_path).parent / "configs" / "*-project.yaml")))
    if not found:
        _fail(f"no --config given and no saved config in {Path(opt.pt_path).parent / 'configs'}")
    return Path(found[-1])


def normal_images(opt) -> list[Path]:
    from ldm.data.generation import normal_images_for
    from ldm.data.io import list_image_files

    root = Path(opt.data_root)
    if not root.is_dir():
        _fail(f"--data_root not found: {root}")
    files = list_image_files(root)
    if files:
        return files
    if (root / opt.sample_name).is_dir():
        return normal_images_for(opt.layout, root, opt.sample_name)
    _fail(f"--data_root {root} holds no images and no category folder '{opt.sample_name}'")


def mask_source(opt, size, seed):
    from ldm.data.layouts import resolve_mvtec_path
    from ldm.data.masks import AugmentedMasks, RealMasks
    from ldm.synthesizers.common import make_mask_source

    if opt.mask_source == "perlin":
        return make_mask_source("perlin", size, seed)
    if opt.mask_path is None:
        _fail(f"--mask_source {opt.mask_source} needs --mask_path")
    try:
        root, cat, defect = resolve_mvtec_path(opt.mask_path, category=opt.sample_name, defect=opt.anomaly_name)[:3]
    except (ValueError, FileNotFoundError):
        root = None
    if root is not None and cat is not None and defect is not None:
        return make_mask_source(opt.mask_source, size, seed, opt.layout, root, cat, defect)
    cls = RealMasks if opt.mask_source == "real" else AugmentedMasks
    return cls(paths=opt.mask_path, size=size, seed=seed)  # a plain folder of masks: all of them


def build_model(opt, config_path: Path, device):
    import torch
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.load(config_path)
    params = config.model.params
    ckpt = opt.ckpt or params.get("ckpt_path")
    if not ckpt:
        _fail("no backbone checkpoint: pass --ckpt (the LDM checkpoint FAST was trained on)")
    if not os.path.isfile(ckpt):
        _fail(f"backbone checkpoint not found: {ckpt}")
    params.ckpt_path = ckpt
    pc = params.get("personalization_config")
    if pc is not None:
        pc.params = pc.get("params") or {}
        pc.params.names = [f"{opt.sample_name}+{opt.anomaly_name}"]
        if opt.init_word:
            pc.params.initializer_words = [opt.init_word]
    if "FAST" not in config.model.target:
        _fail(f"{config_path} does not configure a FAST model (target {config.model.target})")
    model = instantiate_from_config(config.model)
    return model.to(device).eval(), config


def resolve_step(opt) -> int:
    from ldm.models.diffusion.fast import available_artifact_steps

    steps = available_artifact_steps(opt.pt_path)
    if not steps:
        _fail(f"no FARM-<N>.pt artifacts in --pt_path {opt.pt_path}")
    if opt.weight_idx is None:
        return steps[-1]
    if opt.weight_idx not in steps:
        _fail(f"--weight_idx {opt.weight_idx} not found in {opt.pt_path}; available: {steps}")
    return opt.weight_idx


def build_sampler(opt, schedule):
    from ldm.models.diffusion.samplers import build_sampler as make

    if opt.sampler == "aias":
        return make("aias", schedule, steps=opt.steps, refine_steps=opt.refine_steps, kernel=opt.kernel,
                    t_start=opt.t_start)
    if opt.sampler == "ddim":
        return make("ddim", schedule, steps=opt.steps, eta=opt.eta)
    if opt.sampler == "plms":
        return make("plms", schedule, steps=opt.steps)
    return make("ddpm", schedule, t_start=opt.t_start)


def pair_seed(seed: int, n: int) -> int:
    return (int(seed) * 1_000_003 + int(n) * 7919 + 17) % (2 ** 63 - 1)


def main(argv=None) -> dict:
    opt = get_parser().parse_args(argv)
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ldm.data.generation import GenerationInputs
    from ldm.models.diffusion.samplers.rng import BatchRNG
    from ldm.synthesizers.common import PairWriter, check_manifest, derive_seed
    from utils.images import make_grid, save_png

    if opt.n_samples < 1 or opt.batch_size < 1:
        _fail("--n_samples and --batch_size must be >= 1")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if opt.device:
        device = torch.device(opt.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")

    config_path = find_config(opt)
    step = resolve_step(opt)
    model, config = build_model(opt, config_path, device)
    model.load_artifacts(opt.pt_path, step)
    model.to(device).eval()

    size = int(config.data.params.train.params.get("size", 256)) if "data" in config else 256
    seed = derive_seed(opt.seed, opt.sample_name, opt.anomaly_name)
    inputs = GenerationInputs(normal_images(opt), mask_source(opt, size, seed), size=size, seed=seed,
                              length=opt.n_samples)
    writer = PairWriter(opt.outdir, opt.sample_name, opt.anomaly_name)
    settings = {"method": "fast", "pt_path": str(Path(opt.pt_path).resolve()), "weight_idx": step,
                "sampler": opt.sampler, "steps": opt.steps, "kernel": opt.kernel, "farm_mode": opt.farm_mode,
                "writeback": opt.writeback, "t_start": opt.t_start, "mask_source": opt.mask_source,
                "prompt": opt.prompt, "seed": opt.seed, "size": size}
    if rank == 0:
        check_manifest(writer.root, settings)
    sampler = build_sampler(opt, model.schedule)
    guidance_kw = {"farm_mode": opt.farm_mode, "writeback": opt.writeback}
    name = f"{opt.sample_name}+{opt.anomaly_name}"
    todo = [n for n in range(rank, opt.n_samples, world) if not writer.done(n)]
    print(f"[generate] {name}: step {step}, {opt.sampler} ({sampler.nfe} network calls per image), "
          f"{len(todo)} of {len(range(rank, opt.n_samples, world))} pairs to write on {device} "
          f"(rank {rank}/{world})")
    bar = tqdm(total=len(todo), desc=f"generate {name}", disable=opt.no_progress)
    for start in range(0, len(todo), opt.batch_size):
        chunk = todo[start:start + opt.batch_size]
        items = [inputs[n] for n in chunk]
        images = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2)
        masks = torch.from_numpy(np.stack([it["mask"] for it in items]))[:, None]
        rng = BatchRNG([pair_seed(opt.seed, n) for n in chunk])
        with torch.inference_mode():
            out = model.generate(images, masks, [opt.prompt] * len(chunk), [name] * len(chunk), sampler, rng,
                                 guidance_kw=guidance_kw, t_start=opt.t_start)
        out = out.permute(0, 2, 3, 1).float().cpu().numpy()
        for n, item, img in zip(chunk, items, out):
            writer.write(n, img, item["mask"], item["image"])
        bar.update(len(chunk))
    bar.close()
    sheet = None
    if rank == 0:
        sheet = write_contact_sheet(writer, opt.n_samples, make_grid, save_png)
    print(f"[generate] done: {writer.root}" + (f" (contact sheet {sheet})" if sheet else ""))
    return {"out": str(writer.root), "written": len(todo), "step": step, "nfe": sampler.nfe}


def write_contact_sheet(writer, n_samples: int, make_grid, save_png, count: int = 16):
    """Up to ``count`` image|mask|original strips in one PNG, for a look at the results."""
    import numpy as np
    import torch
    from PIL import Image

    strips = []
    for n in range(n_samples):
        p = writer.paths(n)["image-mask-ori"]
        if p.is_file():
            strips.append(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        if len(strips) == count:
            break
    if not strips:
        return None
    batch = torch.from_numpy(np.stack(strips)).permute(0, 3, 1, 2)
    path = writer.root / "contact_sheet.png"
    save_png(make_grid(batch, nrow=2), path)
    return path


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("generate_with_mask.py", lambda: main() and 0))
