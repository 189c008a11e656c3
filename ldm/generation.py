"""One generation path: a trained run's folder → image–mask pairs on disk.

``generate_with_mask.py``, the demo (through it), the benchmark (``build_model``) and the page all go
through here, so the checks below hold for every entry point:

- the run's saved config decides the layout, image size, mask split and embedding name
  (``name_template``), with explicit overrides; masks come from the split the run was trained with;
- the embeddings file must hold the requested name (no silent fresh embedding);
- pair n's noise depends on (seed, category, defect, n) only: batch size, rank and resumption free;
- every setting that changes a pixel is in ``synthesis.json``; a rerun with another value is refused;
- ``provenance.json`` lists the exact real anomalies the generator trained on, so an evaluation can
  refuse test images the generator saw;
- masks are resized by one rule (``utils.mask_resize``): thin defects stay continuous and latent
  masks never vanish; how many masks needed the thin-structure rule is counted and reported.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ldm.data.mask_source import MASK_SOURCES, mask_source
from ldm.models.diffusion.sampler_registry import ONE_BRANCH_SAMPLERS, SAMPLERS
from ldm.models.diffusion.samplers.guidance import PASTE_COLOURS, PASTE_DEFAULT
from utils.acceleration import compile_option, precision_option
from utils.errors import InputNotFound, UserError
from utils.options import fields_with, option
from utils.run_folder import find_run_config

DEFAULT_NAME_TEMPLATE = "{category}+{defect}"


# ---------------------------------------------------------------------------------------------- options
def parse_batch_size(value: str):
    """``--batch_size``: a number >= 1 or ``auto``."""
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {value!r}")


NOT_RECORDED = object()  # a ``record`` value that leaves the option out of the synthesis record


@dataclass
class RecordContext:
    """What the synthesis record of a pixel option may depend on besides the options themselves."""

    run: "TrainedRun"
    split: str          # the mask split used (``--mask_split`` or the run's)
    layout: str         # the dataset layout used (``--layout`` or the run's)
    size: int           # the model's image size
    sampler: Any        # the sampler built for these options (None: not built yet)


def _resolved(path) -> Optional[str]:
    return None if path is None else str(Path(path).resolve())


def _fingerprint(path) -> str:
    from ldm.pairs import file_fingerprint

    return file_fingerprint(path)


@dataclass
class GenerationOptions:
    """Everything ``generate_pairs`` needs, one field per option (``utils.options.option``): the
    ``generate_with_mask.py`` flags (``cli``), the settings of the synthesis record and rerun check
    (``pixel``; ``record(opt, at: RecordContext)`` is the recorded value when it is not the option's own)
    and the studio's controls (``studio``: label, default, choices, order, ...; ``ldm.studio.core``)."""

    data_root: str = option(help="folder of normal images, or a dataset root (then <root>/<sample_name>/train/good)",
                            pixel=True, record=lambda opt, at: _resolved(opt.data_root))
    sample_name: str = option(help="category (output folder level 1)")
    anomaly_name: str = option(help="defect type (output folder level 2)")
    pt_path: str = option(help="the run's checkpoints/ folder (embeddings_gs-N, FARM-N, fine-N)",
                          pixel=True, record=lambda opt, at: _resolved(at.run.pt_path))
    weight_idx: Optional[int] = option(None, parse=int, pixel=True, record=lambda opt, at: at.run.step,
                                       help="N of the artifacts to use (default: the latest); a wrong N lists the "
                                            "available ones")
    mask_path: Optional[str] = option(None, pixel=True, record=lambda opt, at: _resolved(opt.mask_path),
                                      help="masks of the defect type: <root>/<category>/ground_truth/<defect>/ (the "
                                           "generator side of the run's split is used) or any folder of masks (all "
                                           "of them)")
    mask_split: Optional[str] = option(None, choices=("third", "all", "anomalydiffusion"), pixel=True,
                                       record=lambda opt, at: at.split,
                                       help="split whose generator side gives the masks (default: the one the run "
                                            "was trained with)")
    init_word: Optional[str] = option(None, pixel=True, help="init word of the embeddings (only builds the manager)")
    config: Optional[str] = option(None, pixel=True, record=lambda opt, at: _resolved(at.run.config_path),
                                   help="model config (default: the run's saved *-project.yaml)")
    ckpt: Optional[str] = option(None, pixel=True, record=lambda opt, at: _resolved(at.run.ckpt),
                                 help="backbone checkpoint (default: the one the run was trained from, "
                                      "model.params.ckpt_path)")
    outdir: str = option(".", help="output root")
    sampler: str = option("aias", choices=SAMPLERS, pixel=True, help="the sampling loop",
                          studio=dict(order=1, label="sampler", choices=ONE_BRANCH_SAMPLERS))
    steps: int = option(50, parse=int, pixel=True,
                        help="network calls (aias: segments + refinement steps; ddim/plms: steps; ddpm: ignored)",
                        studio=dict(order=2, label="steps (network calls)", default=10, minimum=1))
    kernel: str = option("exact", choices=("exact", "paper"), pixel=True, help="AIAS segment kernel")
    refine_steps: int = option(2, parse=int, pixel=True, help="AIAS plain DDPM steps at the end")
    eta: float = option(1.0, parse=float, pixel=True, help="DDIM eta (1.0 = posterior sampling, like AIAS)")
    farm_mode: str = option("input", choices=("input", "state", "off"), pixel=True,
                            help="FARM re-injection: input (official: changes the UNet input at t_s), state (paper: "
                                 "replaces the masked state at t_e), off",
                            studio=dict(order=4, name="farm", label="FARM (foreground-aware reconstruction)",
                                        toggle=("input", "off")))
    writeback: str = option("window", choices=("window", "every", "off"), pixel=True,
                            help="background write-back: window = only for 250 < t_e < 750 (official), every step, "
                                 "off")
    t_start: Optional[int] = option(None, parse=int, pixel=True,
                                    record=lambda opt, at: getattr(at.sampler, "t_start", opt.t_start),  # NDI default
                                    help="start from the normal latent noised to this 0-based step (SDEdit/NDI); "
                                         "every sampler then makes its first network call at t_start")
    mask_source: str = option("real", choices=MASK_SOURCES, pixel=True,
                              help="generated: masks sampled from a mask model (--mask_model, GroundingAnomaly's "
                                   "mask TI)")
    # the mask model's step and sampling steps are recorded inside mask_model's identity
    mask_model: Optional[str] = option(None, pixel=True, record=lambda opt, at: _mask_model_identity(opt),
                                       help="mask run's checkpoints/ folder (--mask_source generated)")
    mask_weight_idx: Optional[int] = option(None, parse=int, help="N of mask_ti-N.pt (default: the latest)")
    mask_steps: int = option(50, parse=int, help="sampling steps of the mask model")
    ndi: bool = option(True, pixel=True, record=lambda opt, at: opt.ndi if has_ndi(at.run.model) else None,
                       help="GroundingAnomaly's NDI: on = start from the normal image noised to the model's t_start, "
                            "off = from pure noise (the w/o-NDI ablation; not with --t_start)")
    layout: Optional[str] = option(None, pixel=True, record=lambda opt, at: at.layout,
                                   help="dataset layout of --data_root / --mask_path (default: the run's)")
    prompt: str = option("Anomaly *", pixel=True, help="caption; '*' is replaced by the learned embeddings")
    guidance_scale: float = option(1.0, parse=float, pixel=True,
                                   record=lambda opt, at: opt.guidance_scale if opt.guidance_scale != 1.0
                                   else NOT_RECORDED,
                                   help="classifier-free guidance scale s: ε_neg + s·(ε_prompt − ε_neg); 1 = the "
                                        "prompt alone (one network call per step, the default)")
    paste_colour: str = option(PASTE_DEFAULT, choices=PASTE_COLOURS, pixel=True,
                               record=lambda opt, at: opt.paste_colour
                               if opt.paste_colour != PASTE_DEFAULT and pastes(at) else NOT_RECORDED,
                               help="how a pasting model's decoded region joins the normal image: raw = as "
                                    "decoded (the official FAST composite), match = remove the decoded image's "
                                    "mean colour offset (measured outside the mask) first")
    negative_prompt: str = option("", pixel=True,
                                  record=lambda opt, at: opt.negative_prompt if opt.guidance_scale != 1.0
                                  else NOT_RECORDED,
                                  help="the caption guidance pushes away from (--guidance_scale ≠ 1); '' = "
                                       "unconditional")
    foreground: str = option("auto", choices=("auto", "on", "off"), pixel=True,
                             record=lambda opt, at: use_foreground(opt, at.layout),
                             help="keep masks on the object (moved or redrawn otherwise); auto: object categories "
                                  "only")
    fg_dir: Optional[str] = option(None, pixel=True, record=lambda opt, at: _resolved(opt.fg_dir),
                                   help="a foreground mask per normal image (same file name); default Otsu")
    fg_min_share: float = option(0.9, parse=float, pixel=True,
                                 record=lambda opt, at: opt.fg_min_share if use_foreground(opt, at.layout) else None,
                                 help="share of a mask that must lie on the object")
    native: bool = option(False, pixel=True,
                          help="keep normal images at their own size (any, non-square): generate in a window around "
                               "the mask at the model's size and paste it back; pixels outside the mask stay "
                               "bit-identical")
    native_margin: float = option(0.5, parse=float, pixel=True,
                                  record=lambda opt, at: opt.native_margin if opt.native else None,
                                  help="window = mask box × (1 + margin), at least the model size")
    pairs_csv: Optional[str] = option(None, pixel=True,
                                      record=lambda opt, at: _fingerprint(opt.pairs_csv) if opt.pairs_csv else None,
                                      help="CSV with columns normal_image, mask[, defect]: which mask goes on which "
                                           "image")
    n_samples: int = option(500, parse=int, help="pairs to write (pair indices 0 .. n_samples-1)",
                            studio=dict(order=5, name="n", label="pairs per batch", what="batch size", default=4,
                                        range=(1, 16)))
    batch_size: Any = option("auto", parse=parse_batch_size,
                             help="pairs per network batch, or auto (default): 8 on the CPU; on a GPU the largest "
                                  "power of two up to 64 that fits in memory (pairs do not depend on it)")
    seed: int = option(0, parse=int, pixel=True, help="seed of the noise and of the image/mask pairing",
                       studio=dict(order=3, label="seed", minimum=0))
    device: Optional[str] = option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    # bf16 changes pixels beyond float rounding (tests/test_acceleration.py); fp32 folders keep the record
    # they had before the option existed
    precision: str = precision_option(pixel=True,
                                      record=lambda opt, at: opt.precision if opt.precision != "fp32" else NOT_RECORDED)
    compile: bool = compile_option()
    progress: bool = option(True, flag="--no_progress", help="no progress bar")
    rank: int = option(0, cli=False, help="this process's rank (torchrun's RANK): writes pairs rank, rank + world, …")
    world_size: int = option(1, cli=False, help="number of processes (torchrun's WORLD_SIZE)")
    extra: dict = option(cli=False, pixel=True, default_factory=dict, record=lambda opt, at: dict(opt.extra),
                         help="model-specific sampler options (e.g. STAGE windows)")


class TrainSettings:
    """What a run was trained on, read from its saved ``data.params.train.params`` (``self.train``),
    with the loaders' defaults."""

    train: dict

    @property
    def layout(self) -> str:
        return str(self.train.get("layout", "mvtec"))

    @property
    def size(self) -> int:
        return int(self.train.get("size", 256))

    @property
    def anomaly_split(self) -> str:
        return str(self.train.get("anomaly_split", "third"))


@dataclass
class TrainedRun(TrainSettings):
    """A generator ready to sample: the model with its artifacts loaded, and what it was trained on."""

    model: Any
    config: Any
    config_path: Path
    pt_path: Path
    step: int
    ckpt: Path
    name: str
    train: dict


# ------------------------------------------------------------------------------------------ model build
def build_model(config, ckpt=None, names: Optional[list] = None, init_word: Optional[str] = None,
                device="cpu", quiet: bool = True):
    """The model of a config (path, OmegaConf or dict), in eval mode on ``device``.

    ``ckpt``: the backbone checkpoint (None: random weights and no nested checkpoint loads — what the
    benchmark times). ``names``: the per-name embeddings to create (``category+defect``).
    """
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    if isinstance(config, (str, os.PathLike)):
        config = OmegaConf.load(config)
    if not OmegaConf.is_config(config):
        config = OmegaConf.create(config)
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    if "model" in config:
        config = config.model
    params = config.get("params") or OmegaConf.create()
    if ckpt is None:
        _drop_keys(params, "ckpt_path")
    else:
        params.ckpt_path = str(ckpt)
    pc = params.get("personalization_config")
    if pc is not None:
        pc.params = pc.get("params") or {}
        if names is not None:
            pc.params.names = list(names)
        if init_word:
            pc.params.initializer_words = [init_word]
    config.params = params
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        model = instantiate_from_config(config)
    return model.to(device).eval()


def _drop_keys(node, key: str) -> None:
    """Remove ``key`` at any depth, so no sub-model tries to load weights from disk."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, (dict, DictConfig)):
        if key in node:
            del node[key]
        for v in node.values():
            _drop_keys(v, key)
    elif isinstance(node, (list, ListConfig)):
        for v in node:
            _drop_keys(v, key)


def embedding_name(train: dict, category: str, defect: str) -> str:
    """The embedding key the run trained for (its ``name_template``, e.g. BTAD's fixed ``damaged``)."""
    template = str(train.get("name_template", DEFAULT_NAME_TEMPLATE))
    try:
        return template.format(category=category, defect=defect)
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"name_template '{template}' of the run's config is not valid ({e})") from None


def check_embedding_name(path: Path, name: str, placeholders=("*",)) -> None:
    """Refuse to sample a name the embeddings file does not hold (it would silently be a fresh,
    untrained embedding). Files keyed by placeholder (official, one model per defect) pass."""
    from ldm.modules.embedding_manager import EmbeddingManager

    if not path.is_file():
        raise InputNotFound(f"embeddings file not found: {path}")
    _, params = EmbeddingManager.read_file(path)
    names = sorted(params)
    if set(names) <= set(placeholders):
        return
    if name not in names:
        raise UserError(f"{path} holds no embedding '{name}' (from --sample_name/--anomaly_name and the run's "
                        f"name_template); it holds: {', '.join(names)}")


def resolve_step(pt_path, weight_idx: Optional[int], model_class=None) -> int:
    """``--weight_idx`` checked against the artifacts on disk (default: the latest)."""
    if model_class is None:
        from ldm.models.diffusion.fast import FAST as model_class
    steps = model_class.artifact_steps(pt_path)
    if not steps:
        first = model_class.ARTIFACT_MODULES[0][0]
        raise InputNotFound(f"no {first}-<N>.pt artifacts in --pt_path {pt_path}")
    if weight_idx is None:
        return steps[-1]
    if weight_idx not in steps:
        raise UserError(f"--weight_idx {weight_idx} not found in {pt_path}; available: {steps}")
    return int(weight_idx)


def load_run(opt: GenerationOptions, device) -> TrainedRun:
    """Model + artifacts of a run folder (``--pt_path`` = ``<run>/checkpoints``)."""
    from omegaconf import OmegaConf

    pt_path = Path(opt.pt_path)
    if not pt_path.is_dir():
        raise InputNotFound(f"--pt_path not found: {pt_path}")
    config_path = find_run_config(pt_path, opt.config)
    config = OmegaConf.load(config_path)
    if "model" not in config:
        raise UserError(f"{config_path} has no 'model' section")
    train = {}
    if "data" in config and config.data.get("params", {}).get("train") is not None:
        train = OmegaConf.to_container(config.data.params.train.get("params") or {}, resolve=True)
    name = embedding_name(train, opt.sample_name, opt.anomaly_name)
    model_class = _target_class(config.model.target)
    if not hasattr(model_class, "load_artifacts"):
        raise UserError(f"{config_path} does not configure a generator with artifacts "
                        f"(target {config.model.target})")
    step = resolve_step(pt_path, opt.weight_idx, model_class)
    pc = config.model.params.get("personalization_config")
    if pc is not None:
        placeholders = (pc.get("params") or {}).get("placeholder_strings", ["*"])
        check_embedding_name(pt_path / f"embeddings_gs-{step}.pt", name, tuple(placeholders))
    ckpt = opt.ckpt or config.model.params.get("ckpt_path")
    if not ckpt:
        raise UserError("no backbone checkpoint: pass --ckpt (the LDM checkpoint the run was trained on)")
    if not os.path.isfile(ckpt):
        raise InputNotFound(f"backbone checkpoint not found: {ckpt}")
    # a run trained on several names (GroundingAnomaly: every defect type of a product) keeps them all
    saved = list((pc.get("params") or {}).get("names") or []) if pc is not None else []
    names = saved if name in saved else [name]
    model = build_model(config, ckpt, names=names, init_word=opt.init_word, device=device)
    model.load_artifacts(pt_path, step)
    model.to(device).eval()
    return TrainedRun(model, config, Path(config_path), pt_path, step, Path(ckpt), name, train)


def _target_class(target: str):
    import importlib

    module, cls = str(target).rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


# ---------------------------------------------------------------------------------------------- inputs
def normal_images(data_root, category: str, layout: str) -> list[Path]:
    """A folder of normal images, or a dataset root (then that category's normal training images)."""
    from ldm.data.generation_inputs import normal_images_for
    from ldm.data.io import list_image_files

    root = Path(data_root)
    if not root.is_dir():
        raise InputNotFound(f"--data_root not found: {root}")
    files = list_image_files(root)
    if files:
        return files
    if (root / category).is_dir():
        return normal_images_for(layout, root, category)
    raise InputNotFound(f"--data_root {root} holds no images and no category folder '{category}'")


def use_foreground(opt: GenerationOptions, layout: str) -> bool:
    """Whether masks must stay on the object: ``auto`` = object categories (MVTec objects, VisA, BTAD)."""
    from ldm.data.placement import is_object_category

    if opt.foreground not in ("auto", "on", "off"):
        raise UserError(f"--foreground must be auto, on or off, got {opt.foreground!r}")
    if opt.pairs_csv:
        return False  # the user chose every placement
    return opt.foreground == "on" or (opt.foreground == "auto" and is_object_category(layout, opt.sample_name))


def generation_inputs(opt: GenerationOptions, size: int, seed: int, layout: str, split: str,
                      name: Optional[str] = None):
    """(inputs, mask source or None): explicit pairs, or seeded random pairing with optional placement."""
    from ldm.data.generation_inputs import ExplicitPairs, GenerationInputs
    from ldm.data.placement import ForegroundPlacement

    if opt.pairs_csv:
        inputs = ExplicitPairs(opt.pairs_csv, size=size, defect=opt.anomaly_name, native=opt.native)
        if opt.n_samples > len(inputs):
            raise UserError(f"--n_samples {opt.n_samples} exceeds the {len(inputs)} rows of --pairs_csv")
        return inputs, None
    # native: real masks at their file's resolution (resized to each normal image), not the model's
    mask_size = None if opt.native and opt.mask_source in ("real", "augmented") else size
    masks = mask_source(opt.mask_source, mask_size, seed, layout=layout, split=split, category=opt.sample_name,
                        defect=opt.anomaly_name, mask_path=opt.mask_path, mask_model=opt.mask_model,
                        mask_weight_idx=opt.mask_weight_idx, mask_steps=opt.mask_steps, name=name)
    placement = ForegroundPlacement(opt.fg_min_share, opt.fg_dir) if use_foreground(opt, layout) else None
    inputs = GenerationInputs(normal_images(opt.data_root, opt.sample_name, layout), masks, size=size, seed=seed,
                              length=opt.n_samples, placement=placement, native=opt.native)
    return inputs, masks


def to_model_size(item: dict, size: int, margin: float) -> tuple[dict, tuple | None]:
    """For native items: crop a window around the mask and resize it to the model size; returns the
    model-size item and the window (None when the item already has the model size)."""
    import numpy as np
    from PIL import Image

    from ldm.data.io import resize_mask, to_uint8
    from utils.images import uint8_to_float
    from ldm.data.placement import window_around

    if item["image"].shape[:2] == (size, size):
        return item, None
    top, left, h, w = window_around(item["mask"], size, margin)
    crop = to_uint8(item["image"][top:top + h, left:left + w])
    img = uint8_to_float(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
    mask = resize_mask(item["mask"][top:top + h, left:left + w], (size, size))
    if not mask.any():  # a mask thinner than a model pixel after the resize: keep its strongest pixel
        small = np.asarray(Image.fromarray(item["mask"][top:top + h, left:left + w].astype(np.float32))
                           .resize((size, size), Image.BOX))
        mask = (small == small.max()).astype(np.float32)
    return dict(item, image=img, mask=mask), (top, left, h, w)


def paste_window(full, generated, mask, window):
    """Put the generated window back into the full image, inside the full-size mask only: every pixel
    outside the mask stays the normal image's, bit for bit."""
    import numpy as np
    from PIL import Image

    from ldm.data.io import to_uint8
    from utils.images import uint8_to_float

    top, left, h, w = window
    up = uint8_to_float(np.asarray(Image.fromarray(to_uint8(generated)).resize((w, h), Image.BICUBIC)))
    out = np.array(full, dtype=np.float32, copy=True)
    region = out[top:top + h, left:left + w]
    m = np.asarray(mask[top:top + h, left:left + w]) > 0.5
    region[m] = up[m]
    return out


# ------------------------------------------------------------------------------------------ provenance
def training_anomalies(run: TrainedRun) -> tuple[Optional[list[dict]], Optional[str]]:
    """The exact (image, mask) files the run trained on, from its saved data config; (None, why)
    when they cannot be listed (e.g. the dataset moved)."""
    from ldm.data.anomaly import AnomalyDataset

    if not run.train:
        return None, "the run's config has no data.params.train section"
    params = dict(run.train)
    params.update(set="train", repeats=1, flip_p=0.0, cache_images=False)
    try:
        with _quiet_warnings():
            ds = AnomalyDataset(**{k: v for k, v in params.items() if k in _anomaly_dataset_keys()})
    except (UserError, OSError, TypeError) as e:
        return None, f"cannot list the run's training anomalies: {e}"
    seen, out = set(), []
    for s in ds.samples:
        key = (str(s.image), str(s.mask))
        if key not in seen:
            seen.add(key)
            out.append({"image": str(Path(s.image).resolve()), "mask": str(Path(s.mask).resolve()),
                        "category": s.category, "defect": s.defect})
    return out, None


def _anomaly_dataset_keys() -> set:
    import inspect

    from ldm.data.anomaly import AnomalyDataset

    return set(inspect.signature(AnomalyDataset.__init__).parameters) - {"self"}


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def provenance(run: TrainedRun, opt: GenerationOptions, split: str, masks) -> dict:
    anomalies, why = training_anomalies(run)
    mask_files = sorted({str(Path(p).resolve()) for p in getattr(masks, "paths", [])})
    return {"generator": type(run.model).__name__, "run": str(run.pt_path.parent.resolve()),
            "config": str(run.config_path.resolve()), "checkpoint_step": run.step,
            "backbone": str(run.ckpt.resolve()), "embedding_name": run.name,
            "category": opt.sample_name, "defect": opt.anomaly_name,
            "anomaly_split": run.anomaly_split, "mask_split": split, "mask_source": opt.mask_source,
            "mask_files": mask_files, "training_anomalies": anomalies, "training_anomalies_unknown": why}


# -------------------------------------------------------------------------------------------- settings
def pixel_settings(run: TrainedRun, opt: GenerationOptions, split: str, layout: str, size: int,
                   sampler=None) -> dict:
    """Every setting that changes a pixel of pair n (not n_samples, batch size, rank or device): the
    generator's identity (model class, config and checkpoint fingerprints, artifacts, embedding name, size)
    and each ``pixel`` option of ``opt``'s class under its field name (its ``record`` when it has one)."""
    at = RecordContext(run, split, layout, size, sampler)
    settings = {"method": type(run.model).__name__.lower(), "config_sha256": _fingerprint(run.config_path),
                "ckpt_fingerprint": _fingerprint(run.ckpt),
                "artifacts": {p.name: _fingerprint(p) for p in sorted(run.pt_path.glob(f"*-{run.step}.pt"))},
                "embedding_name": run.name, "size": size}
    for f in fields_with(opt, "pixel"):
        record = f.metadata.get("record")
        value = record(opt, at) if record is not None else getattr(opt, f.name)
        if value is not NOT_RECORDED:
            settings[f.name] = value
    return settings


def _mask_model_identity(opt: GenerationOptions):
    """The mask run's folder, step and weights fingerprint (``--mask_source generated`` only)."""
    if opt.mask_source != "generated" or not opt.mask_model:
        return None
    from ldm.models.diffusion.artifacts import available_steps

    steps = available_steps(opt.mask_model, "mask_ti")
    step = opt.mask_weight_idx if opt.mask_weight_idx is not None else (steps[-1] if steps else None)
    weights = Path(opt.mask_model) / f"mask_ti-{step}.pt"
    return {"path": str(Path(opt.mask_model).resolve()), "step": step, "steps": opt.mask_steps,
            "weights": _fingerprint(weights) if weights.is_file() else None}


def pastes(at) -> bool:
    """Whether the run's model pastes its decoded region into the normal image with ``at``'s sampler
    (``MaskedLatentDiffusion.pastes``; STAGE's official output does not)."""
    decide = getattr(at.run.model, "pastes", None)
    return bool(decide(at.sampler, {})) if callable(decide) else False


def has_ndi(model) -> bool:
    """Whether the model starts sampling from the noised normal image by default (GroundingAnomaly's NDI,
    ``ndi_t_start``), so that ``ndi=False`` means something to its ``make_sampler``."""
    return hasattr(model, "ndi_t_start")


def make_sampler(run: TrainedRun, opt: GenerationOptions):
    """The sampler for ``opt`` (the model's own ``make_sampler`` when it has one, e.g. STAGE)."""
    kw = dict(opt.extra)
    if not opt.ndi:
        if not has_ndi(run.model):
            raise UserError(f"--ndi off: {type(run.model).__name__} has no NDI (it starts from pure noise "
                            "unless --t_start is given)")
        kw["ndi"] = False
    if opt.sampler == "aias":
        kw.update(refine_steps=opt.refine_steps, kernel=opt.kernel, t_start=opt.t_start)
        return _make(run, "aias", opt.steps, kw)
    if opt.sampler == "ddim":
        return _make(run, "ddim", opt.steps, dict(kw, eta=opt.eta, t_start=opt.t_start))
    if opt.sampler == "plms":
        return _make(run, "plms", opt.steps, dict(kw, t_start=opt.t_start))
    if opt.sampler == "ddpm":
        return _make(run, "ddpm", None, dict(kw, t_start=opt.t_start))
    return _make(run, opt.sampler, opt.steps, dict(kw, t_start=opt.t_start) if opt.t_start is not None else kw)


def _make(run: TrainedRun, name: str, steps, kw: dict):
    if hasattr(run.model, "make_sampler"):
        return run.model.make_sampler(name, steps, **kw)
    from ldm.models.diffusion.sampler_registry import build_sampler

    return build_sampler(name, run.model.schedule, steps=steps, **kw)


# ------------------------------------------------------------------------------------------ generation
def pick_device(opt: GenerationOptions):
    import torch

    if opt.device:
        from ldm.trainer.devices import check_device

        return check_device(opt.device)  # "gpu", or cuda on a machine without one: one line naming --device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def validate(opt: GenerationOptions) -> None:
    if opt.n_samples < 1:
        raise UserError(f"--n_samples must be >= 1, got {opt.n_samples}")
    if opt.batch_size != "auto" and (not isinstance(opt.batch_size, int) or opt.batch_size < 1):
        raise UserError(f"--batch_size must be a number >= 1 or auto, got {opt.batch_size!r}")
    acceleration(opt)  # checks --precision
    if opt.steps is not None and opt.steps < 1:
        raise UserError(f"--steps must be >= 1, got {opt.steps}")
    if opt.seed < 0:
        raise UserError(f"--seed must be >= 0, got {opt.seed}")
    if not 0.0 <= opt.eta <= 1.0:  # also refuses nan
        raise UserError(f"--eta must lie in [0, 1], got {opt.eta}")
    if not opt.guidance_scale >= 0:  # also refuses nan
        raise UserError(f"--guidance_scale must be >= 0, got {opt.guidance_scale}")
    if opt.mask_steps < 1:
        raise UserError(f"--mask_steps must be >= 1, got {opt.mask_steps}")
    if opt.fg_dir is not None and not Path(opt.fg_dir).is_dir():
        raise InputNotFound(f"--fg_dir not found: {opt.fg_dir}")
    if not opt.ndi and opt.t_start is not None:
        raise UserError(f"--ndi off starts from pure noise: it cannot be combined with --t_start {opt.t_start}")
    if not 0.0 < opt.fg_min_share <= 1.0:
        raise UserError(f"--fg_min_share must lie in (0, 1], got {opt.fg_min_share}")
    if opt.native_margin < 0:
        raise UserError(f"--native_margin must be >= 0, got {opt.native_margin}")
    if opt.pairs_csv and opt.mask_source != "real":
        raise UserError("--pairs_csv chooses every mask itself: it cannot be combined with --mask_source")
    out = Path(opt.outdir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--outdir {out} exists and is not a folder")


def acceleration(opt: GenerationOptions):
    """The precision and compilation of ``opt`` (``utils.acceleration``)."""
    from utils.acceleration import Acceleration

    return Acceleration(opt.precision, bool(opt.compile))


AUTO_BATCH_CPU = 8      # the CPU's batch: larger batches are no faster per pair on a few cores
AUTO_BATCH_MAX = 64     # on a GPU: the paper-scale UNet reaches its throughput plateau around here
AUTO_BATCH_MEMORY_SHARE = 0.6


def resolve_batch_size(opt: GenerationOptions, run: TrainedRun, item: dict, device) -> int:
    """``--batch_size`` as a number. ``auto``: 8 on the CPU; on a GPU, the largest power of two up to 64
    whose activations fit in 60 % of the free memory, from the peak memory of one eager batch of 2
    (an over-estimate per pair, since it includes the fixed workspace)."""
    import dataclasses

    import torch

    if opt.batch_size != "auto":
        return int(opt.batch_size)
    if torch.device(device).type != "cuda":
        return AUTO_BATCH_CPU
    probe = dataclasses.replace(opt, compile=False)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    generate_batch(run, probe, [item["image"]] * 2, [item["mask"]] * 2, [0, 1])
    per_pair = max((torch.cuda.max_memory_allocated(device) - base) / 2, 1)
    free = torch.cuda.mem_get_info(device)[0]
    fits = int(AUTO_BATCH_MEMORY_SHARE * free / per_pair)
    size = 1
    while size * 2 <= min(fits, AUTO_BATCH_MAX):
        size *= 2
    return size


def generate_batch(run: TrainedRun, opt: GenerationOptions, images, masks, indices, sampler=None) -> tuple:
    """One batch through the model, writing nothing: ``images`` B×H×W×3 float [-1, 1] and ``masks``
    B×H×W {0, 1} at the run's size; pair i's noise is seeded by ``pair_seed(seed, category, defect,
    indices[i])``. Returns ``(generated B×H×W×3 float [-1, 1], {"thin_masks", "nfe", "seeds"})``.
    ``generate_pairs`` and the studio both call this, so a studio pair is the pair the CLI writes."""
    import numpy as np
    import torch

    from ldm.models.diffusion.latent_mask import thin_latent_masks
    from ldm.models.diffusion.samplers.rng import BatchRNG
    from ldm.pairs import pair_seed

    model = run.model
    sampler = make_sampler(run, opt) if sampler is None else sampler
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images), dtype=np.float32)).permute(0, 3, 1, 2)
    pix = torch.from_numpy(np.ascontiguousarray(np.stack(masks), dtype=np.float32))[:, None]
    latent = int(model.image_size)
    threshold = getattr(model, "mask_threshold", 0.5)
    thin_each = [thin_latent_masks(pix[i:i + 1], (latent, latent), threshold) for i in range(len(pix))]
    seeds = [pair_seed(opt.seed, opt.sample_name, opt.anomaly_name, n) for n in indices]
    accel = acceleration(opt)
    accel.prepare(model, model.device)
    with torch.inference_mode(), accel.autocast(model.device):
        out = model.generate(x, pix, [opt.prompt] * len(seeds), [run.name] * len(seeds), sampler, BatchRNG(seeds),
                             guidance_kw={"farm_mode": opt.farm_mode, "writeback": opt.writeback},
                             t_start=opt.t_start, guidance_scale=opt.guidance_scale,
                             negative_captions=[opt.negative_prompt] * len(seeds), paste_colour=opt.paste_colour)
    return out.permute(0, 2, 3, 1).float().cpu().numpy(), {"thin_masks": sum(thin_each), "nfe": sampler.nfe,
                                                            "thin_masks_each": thin_each, "seeds": seeds}


def write_pairs(run: TrainedRun, opt: GenerationOptions, inputs, todo: list, writer, batch_size: int, sampler,
                device, size: int, progress=None) -> tuple[int, dict]:
    """Generate and write pairs ``todo`` (indices into ``inputs``) in batches of ``batch_size``; returns
    ``(masks with thin parts, {placement: count})``. The next batch's inputs are read, and finished pairs
    written, on other threads while the network works on this batch (``utils.pipeline``); with
    ``--compile`` the last batch is padded to the compiled shape (the padding is thrown away: pair n
    depends on its own seed only)."""
    from ldm.pairs import pair_seed
    from utils.acceleration import device_type
    from utils.pipeline import Pipeline

    accel = acceleration(opt)
    thin, placements = 0, {}

    def load(chunk):
        items = [inputs[n] for n in chunk]
        return items, [to_model_size(it, size, opt.native_margin) for it in items]

    def write(n, item, window, img):
        if window is not None:
            img = paste_window(item["image"], img, item["mask"], window)
        writer.write(n, img, item["mask"], item["image"],
                     meta={"normal_image": item["normal_path"], "mask_origin": item["mask_origin"],
                           "seed": pair_seed(opt.seed, opt.sample_name, opt.anomaly_name, n),
                           "placement": item["placement"], "window": list(window) if window else None})

    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    with Pipeline(writers=4 if device_type(device) == "cuda" else 1) as pipe:
        upcoming = pipe.prefetch(load, chunks[0]) if chunks else None
        for i, chunk in enumerate(chunks):
            items, scaled = upcoming.result()
            if i + 1 < len(chunks):
                upcoming = pipe.prefetch(load, chunks[i + 1])
            images, masks, indices = [it["image"] for it, _ in scaled], [it["mask"] for it, _ in scaled], list(chunk)
            pad = batch_size - len(chunk) if accel.compile else 0
            out, info = generate_batch(run, opt, images + images[-1:] * pad, masks + masks[-1:] * pad,
                                       indices + indices[-1:] * pad, sampler)
            thin += sum(info["thin_masks_each"][:len(chunk)])
            for n, item, (_, window), img in zip(chunk, items, scaled, out):
                placements[item["placement"]] = placements.get(item["placement"], 0) + 1
                pipe.write(write, n, item, window, img)
            if progress is not None:
                progress(len(chunk))
    return thin, placements


def generate_pairs(opt: GenerationOptions, run: Optional[TrainedRun] = None, log=print) -> dict:
    """Write pairs ``rank, rank + world, …`` below ``n_samples`` to ``<outdir>/<sample>/<anomaly>/``.

    Returns ``{"out", "written", "skipped", "step", "nfe", "seconds", "thin_masks", "sampler"}``.
    """
    from tqdm.auto import tqdm

    from ldm.pairs import PairWriter, check_manifest, derive_seed, write_provenance
    from utils.acceleration import describe as describe_acceleration

    validate(opt)
    device = pick_device(opt)
    t0 = time.perf_counter()
    if run is None:
        run = load_run(opt, device)
    split = opt.mask_split or run.anomaly_split
    layout = opt.layout or run.layout
    size = run.size
    seed = derive_seed(opt.seed, opt.sample_name, opt.anomaly_name)
    inputs, masks = generation_inputs(opt, size, seed, layout, split, run.name)
    writer = PairWriter(opt.outdir, opt.sample_name, opt.anomaly_name)
    sampler = make_sampler(run, opt)
    if opt.rank == 0:
        check_manifest(writer.root, pixel_settings(run, opt, split, layout, size, sampler))
        prov = provenance(run, opt, split, masks)
        prov["first_stage_round_trip"] = check_first_stage(run, inputs, size, opt, log)
        prov["first_stage_defect_contrast"] = check_defect_contrast(run, opt, layout, split, size, log)
        write_provenance(writer.root, prov)
    mine = range(opt.rank, opt.n_samples, opt.world_size)
    todo = [n for n in mine if not writer.done(n)]
    latent = int(run.model.image_size)
    accel = acceleration(opt)
    batch_size = resolve_batch_size(opt, run, to_model_size(inputs[todo[0]], size, opt.native_margin)[0],
                                    device) if todo else 1
    log(f"[generate] {run.name}: step {run.step}, {opt.sampler} ({sampler.nfe} network calls per image), "
        f"{len(todo)} of {len(mine)} pairs to write on {device} (rank {opt.rank}/{opt.world_size}), batch "
        f"{batch_size}, {describe_acceleration(accel, device)}")
    prov_extra = {"batch_size": batch_size, "precision": opt.precision, "compile": bool(opt.compile)}
    bar = tqdm(total=len(todo), desc=f"generate {run.name}", disable=not opt.progress, file=sys.stderr)
    thin, placements = write_pairs(run, opt, inputs, todo, writer, batch_size, sampler, device, size,
                                         progress=bar.update)
    bar.close()
    if thin:
        log(f"[generate] {thin} of {len(todo)} masks have parts thinner than one latent cell ({latent}×{latent} "
            f"latent): kept as continuous lines of cells (utils.mask_resize)")
    if set(placements) - {"off", "explicit"}:
        log("[generate] masks on the foreground: " + ", ".join(f"{k} {v}" for k, v in sorted(placements.items())))
    sheet = None
    if opt.rank == 0:
        writer.write_index(opt.n_samples)
        sheet = write_contact_sheet(writer, opt.n_samples)
    log(f"[generate] done: {writer.root}" + (f" (contact sheet {sheet})" if sheet else ""))
    return {"out": str(writer.root), "written": len(todo), "skipped": len(mine) - len(todo), "step": run.step,
            "nfe": sampler.nfe, "seconds": time.perf_counter() - t0, "thin_masks": thin,
            "sampler": opt.sampler, "placements": placements, **prov_extra}


def check_first_stage(run: TrainedRun, inputs, size: int, opt: GenerationOptions, log=print,
                      count: int = 16) -> dict:
    """``decode(encode(x))`` on up to ``count`` distinct normal images (``ldm.first_stage_check``); warns
    when the autoencoder would put its own error into every defect."""
    from ldm.first_stage_check import round_trip, verdict

    seen, images = set(), []
    for n in range(min(opt.n_samples, len(inputs))):
        item = inputs[n]
        if item["normal_path"] in seen:
            continue
        seen.add(item["normal_path"])
        images.append(to_model_size(item, size, opt.native_margin)[0]["image"])
        if len(images) == count:
            break
    stats = round_trip(run.model, images)  # no_grad inside
    warning = verdict(stats)
    if warning:
        log(f"[generate] warning: {warning}")
    return stats


def real_defects(opt: GenerationOptions, layout: str, split: str, size, count: int = 16) -> tuple[list, list]:
    """Up to ``count`` generator-side real defect images ([-1, 1]) and masks of this category+defect, found
    through ``--mask_path`` or ``--data_root``; ``([], [])`` when neither is a dataset holding them."""
    from ldm.data.io import load_image_uint8, load_mask
    from ldm.data.layouts import index_category, resolve_mvtec_path, split_anomalies
    from utils.images import uint8_to_float

    for path in (opt.mask_path, opt.data_root):
        if path is None:
            continue
        try:
            root, cat, defect = resolve_mvtec_path(path, category=opt.sample_name, defect=opt.anomaly_name)[:3]
            samples = split_anomalies(index_category(layout, root, cat).samples(defect), split)[0][:count]
        except (OSError, ValueError, KeyError):  # UserError is a ValueError
            continue  # not a dataset folder this layout can index: a plain folder of masks
        if samples:
            return ([uint8_to_float(load_image_uint8(s.image, size)) for s in samples],
                    [load_mask(s.mask, size) for s in samples])
    return [], []


def check_defect_contrast(run: TrainedRun, opt: GenerationOptions, layout: str, split: str, size, log=print) -> dict:
    """What the first stage keeps of the real defects' contrast (``ldm.first_stage_check.defect_contrast``);
    warns when generated defects would come out fainter than the real ones whatever the generator does."""
    from ldm.first_stage_check import defect_contrast, defect_verdict

    stats = defect_contrast(run.model, *real_defects(opt, layout, split, size))
    warning = defect_verdict(stats)
    if warning:
        log(f"[generate] warning: {warning}")
    return stats


def write_contact_sheet(writer, n_samples: int, count: int = 16):
    """Up to ``count`` image|mask|original strips in one PNG, for a look at the results."""
    import numpy as np
    import torch
    from PIL import Image

    from utils.images import make_grid, save_png, uint8_to_float

    strips = []
    for n in range(n_samples):
        p = writer.paths(n)["image-mask-ori"]
        if p.is_file():
            strips.append(uint8_to_float(np.asarray(Image.open(p).convert("RGB"))))
        if len(strips) == count:
            break
    if not strips:
        return None
    batch = torch.from_numpy(np.stack(strips)).permute(0, 3, 1, 2)
    path = writer.root / "contact_sheet.png"
    save_png(make_grid(batch, nrow=2), path)
    return path
