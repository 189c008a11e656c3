"""The studio's work, without any web code: trained runs, normal images, masks, one batch, keep, export.

Generation is the library's own batch step (``ldm.generation.generate_batch``, what
``generate_pairs`` runs for every batch) plus ``load_run`` and ``PairWriter``, so a
pair made here is the pair ``generate_with_mask.py`` would make from the same image, mask and seed.
The page's generation controls are the ``studio`` fields of the options class
(``ldm.generation.GenerationOptions``; ``studio_controls``).

Bad input raises ``utils.errors.UserError`` with a one-line message the page shows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ldm.data.mask_source import MASK_SOURCES as LIBRARY_MASK_SOURCES
from ldm.data.mask_source import mask_source
from ldm.generation import GenerationOptions, TrainSettings
from utils.errors import InputNotFound, UserError
from utils.options import field_default, fields_with

MASK_SOURCES = (*LIBRARY_MASK_SOURCES, "pairs")  # pairs: the masks of pairs already generated for the defect
EDITOR_PX = 512          # the editor shows the image at an integer scale of at least this many pixels
UPLOADS = ".studio-uploads"  # hidden: pairs-folder readers (ldm.export) skip dot-folders


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class RunInfo(TrainSettings):
    """A trained run folder the studio can generate with (size/layout from ``TrainSettings``)."""

    key: str               # "<category>+<defect>" (unique among the runs found)
    run_dir: Path
    pt_path: Path          # <run>/checkpoints
    category: str
    defect: str
    steps: list
    train: dict            # data.params.train.params of the saved config


def run_dir_of(path) -> Path:
    """``--run`` may name the run folder or its ``checkpoints/``."""
    p = Path(path)
    return p.parent if p.name == "checkpoints" else p


def check_startup(run, out=None, data_root=None, generated=None, mask_model=None, device=None,
                  threads=None) -> None:
    """``scripts/studio.py``'s flags, before the page starts: ``UserError`` naming the flag of a folder that
    does not exist, an ``--out`` that cannot be a folder, a device this machine lacks. (A ``--run`` folder
    that exists but holds no trained model is not refused: the page says so and offers the runs beside it.)"""
    from ldm.trainer.devices import check_device

    p = Path(run)
    if not p.exists():
        raise InputNotFound(f"--run not found: {run}")
    if not p.is_dir():
        raise UserError(f"--run {run} is a file; give a trained run folder (or its checkpoints/)")
    for flag, value in (("--data_root", data_root), ("--generated", generated), ("--mask_model", mask_model)):
        if value is not None and not Path(value).is_dir():
            raise InputNotFound(f"{flag} not found: {value}")
    if out is not None:
        q = Path(out)
        while not q.exists() and q != q.parent:  # the nearest existing folder must be a folder
            q = q.parent
        if q.exists() and not q.is_dir():
            raise UserError(f"--out {out}: {q} exists and is not a folder")
    if threads is not None and threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    check_device(device, "--device")


def inspect_run(run_dir: Path) -> RunInfo:
    """A run folder → ``RunInfo``; ``UserError`` saying why it is not a usable trained run."""
    from omegaconf import OmegaConf

    from utils.run_folder import find_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputNotFound(f"no model found: run folder {run_dir} does not exist")
    pt_path = run_dir / "checkpoints"
    if not pt_path.is_dir():
        raise UserError(f"no model found: {run_dir} has no checkpoints/ folder (is it a trained run?)")
    try:
        config_path = find_run_config(pt_path)
    except UserError:
        raise UserError(f"no model found: {run_dir} has no saved config (configs/*-project.yaml)") from None
    config = OmegaConf.load(config_path)
    target = str(OmegaConf.select(config, "model.target") or "")
    try:
        module, cls = target.rsplit(".", 1)
        model_class = getattr(importlib.import_module(module), cls)
    except (ValueError, ImportError, AttributeError):
        raise UserError(f"no model found: {config_path} names no importable model ({target!r})") from None
    if not hasattr(model_class, "artifact_steps"):
        raise UserError(f"no model found: {run_dir} is not a generator run (model {target})")
    steps = model_class.artifact_steps(pt_path)
    if not steps:
        raise UserError(f"no model found: {pt_path} holds no exported artifacts yet (training not finished?)")
    train = OmegaConf.select(config, "data.params.train.params")
    train = OmegaConf.to_container(train, resolve=True) if train is not None else {}
    category, defect = train.get("category"), train.get("defect")
    if not isinstance(category, str) or not isinstance(defect, str):
        if "+" not in run_dir.name:
            raise UserError(f"no model found: {run_dir}: its config names no category/defect and the folder "
                            "is not named <category>+<defect>")
        category, defect = run_dir.name.split("+", 1)
    return RunInfo(f"{category}+{defect}", run_dir, pt_path, category, defect, list(steps), train)


def find_runs(run) -> tuple[list, list]:
    """The run ``--run`` names plus every other trained run beside it: ``(runs, problems)``.

    ``problems`` are one-line messages (the named run unusable, ...) for the page; the named run,
    when usable, comes first."""
    named = run_dir_of(run)
    runs, problems = [], []
    try:
        runs.append(inspect_run(named))
    except UserError as e:
        problems.append(str(e))
    parent = named.parent
    if parent.is_dir():
        for d in sorted(parent.iterdir()):
            if d.is_dir() and d.resolve() != named.resolve() and (d / "checkpoints").is_dir():
                try:
                    info = inspect_run(d)
                except UserError:
                    continue  # a sibling that is not a finished run is simply not offered
                if all(info.key != r.key for r in runs):
                    runs.append(info)
    if not runs:
        problems.append(f"no model found: no trained run in {named} or beside it; train one "
                        "(README: the three-stage recipe) and start the studio with --run <its folder>")
    return runs, problems


# ---------------------------------------------------------------------------------------------- images
def editor_scale(size: int) -> int:
    """The integer factor the editor shows a ``size`` image at (nearest neighbour: one image pixel is
    exactly a k×k block of the editor, so a painted block maps back to one pixel)."""
    return max(1, math.ceil(EDITOR_PX / int(size)))


def display_scale(size: int) -> int:
    """The integer factor result strips are shown at (each panel at least 256 px wide)."""
    return max(1, math.ceil(256 / int(size)))


def upscale(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


def prepare_upload(image: np.ndarray, size: int) -> tuple[np.ndarray, Optional[str]]:
    """An uploaded picture → RGB uint8 ``size``×``size`` and a note when it was resized.

    Square pictures of another size are resized bicubic (as the dataset loader resizes dataset
    images); pictures of another shape are refused: stretching them would distort the part."""
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.size == 0:
        raise UserError(f"the uploaded file is not an RGB image (array shape {a.shape})")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    h, w = a.shape[:2]
    if h != w:
        raise UserError(f"the uploaded image is {w}×{h} px; this run generates {size}×{size} images: "
                        "crop it to a square first")
    if h == size:
        return a, None
    im = Image.fromarray(a).resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8), f"uploaded image resized {w}×{h} → {size}×{size} px"


def mask_from_layers(layers, size: int, k: int) -> np.ndarray:
    """The editor's paint layers (RGBA at the editor's size) → a ``size``×``size`` {0, 1} mask.

    A pixel is painted where the paint is opaque (alpha ≥ 128) on at least half of its k×k block."""
    total = None
    for layer in layers or []:
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] < 4:
            alpha = (a.reshape(a.shape[0], a.shape[1], -1).max(axis=2) > 0) if a.ndim >= 2 else None
        else:
            alpha = a[..., 3] >= 128
        if alpha is None:
            continue
        if alpha.shape != (size * k, size * k):
            raise UserError(f"the painted mask is {alpha.shape[1]}×{alpha.shape[0]} px but the image is "
                            f"{size * k}×{size * k} in the editor (another image size): load the image again "
                            "and repaint")
        total = alpha if total is None else (total | alpha)
    if total is None:
        return np.zeros((size, size), np.float32)
    blocks = total.reshape(size, k, size, k).mean(axis=(1, 3))
    return (blocks >= 0.5).astype(np.float32)


def mask_layer(mask: np.ndarray, k: int, color=(255, 40, 40)) -> np.ndarray:
    """A {0, 1} mask → an RGBA paint layer at the editor's scale (opaque paint where 1)."""
    m = upscale(np.asarray(mask) > 0.5, k)
    layer = np.zeros(m.shape + (4,), np.uint8)
    layer[m] = (*color, 255)
    return layer


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """The generated image with the mask tinted and its outline drawn (uint8)."""
    from scipy import ndimage

    m = np.asarray(mask) > 0.5
    out = image.astype(np.float32).copy()
    out[m] = (1 - alpha) * out[m] + alpha * np.array(color, np.float32)
    edge = m & ~ndimage.binary_erosion(m)
    out[edge] = color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ controls
@dataclass(frozen=True)
class Control:
    """One generation control of the page: an option (``field``) of the options class that its metadata
    ``studio`` exposes, as ``True`` or as a mapping of: ``label``, ``default`` (the studio's own),
    ``choices``, ``toggle`` (the option's values when ticked / not: a checkbox), ``minimum`` (a hint to
    the widget; the library checks the value), ``range`` ((lo, hi): a slider, checked here), ``name``
    (its keyword in ``Studio.generate`` and element id ``studio-<name>``), ``what`` (its name in
    messages), ``order`` (its place on the page and in the page's API)."""

    field: str
    name: str
    label: str
    default: Any
    choices: Optional[tuple] = None
    toggle: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    what: str = ""

    @property
    def kind(self) -> str:
        """The widget: ``checkbox``, ``dropdown``, ``slider``, ``integer``, ``number`` or ``text``."""
        if self.toggle is not None or isinstance(self.default, bool):
            return "checkbox"
        if self.choices is not None:
            return "dropdown"
        if isinstance(self.default, int):
            return "slider" if self.maximum is not None else "integer"
        return "number" if isinstance(self.default, float) else "text"

    def value(self, v):
        """The option's value for the control's value ``v``; ``UserError`` for one the option cannot take."""
        if self.toggle is not None:
            return self.toggle[0] if v else self.toggle[1]
        kind = self.kind
        if kind == "checkbox":
            return bool(v)
        if kind == "dropdown":
            if v not in self.choices:
                raise UserError(f"{self.what} must be one of {', '.join(map(str, self.choices))}, got {v!r}")
            return v
        if kind in ("slider", "integer"):
            v = _int(v, self.what)
            if self.maximum is not None and not self.minimum <= v <= self.maximum:
                raise UserError(f"{self.what} must be {self.minimum}..{self.maximum}, got {v}")
            return v
        if kind == "number":
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise UserError(f"{self.what} must be a number, got {v!r}") from None
            if not math.isfinite(f):
                raise UserError(f"{self.what} must be a number, got {v!r}")
            return f
        return str(v)


def studio_controls(cls=GenerationOptions) -> list[Control]:
    """The page's generation controls: one per ``studio`` field of the options class ``cls``, in their
    ``order`` (fields without one last, in field order)."""
    controls = []
    for i, f in enumerate(fields_with(cls, "studio")):
        how = f.metadata["studio"] if isinstance(f.metadata["studio"], dict) else {}
        lo, hi = how.get("range", (how.get("minimum"), None))
        name = how.get("name", f.name)
        default = how.get("default", field_default(f))
        if how.get("toggle") is not None:
            default = default == how["toggle"][0]
        choices = how.get("choices", f.metadata.get("choices"))
        controls.append((how.get("order", math.inf), i, Control(
            f.name, name, how.get("label", f.name), default, tuple(choices) if choices is not None else None,
            tuple(how["toggle"]) if how.get("toggle") is not None else None, lo, hi, how.get("what", name))))
    return [c for _, _, c in sorted(controls, key=lambda t: t[:2])]


# ------------------------------------------------------------------------------------------ one batch
@dataclass
class Pair:
    image: np.ndarray      # uint8 H×W×3, the generated image (the pixels its PNG holds)
    mask: np.ndarray       # float32 H×W {0, 1}
    original: np.ndarray   # uint8 H×W×3, the normal image
    seed: int              # its noise seed (ldm.pairs.pair_seed)
    index: int             # its index in the batch
    scores: dict


@dataclass
class Batch:
    run_key: str
    pairs: list
    seconds: float
    nfe: int
    device: str
    settings: dict         # each control's option (sampler, steps, ...) and weight_idx (keep: synthesis.json + meta)
    normal_image: str      # path of the normal image (dataset file or the saved upload)
    mask_origin: str
    notes: list = field(default_factory=list)


class Studio:
    """State shared by every browser session: the runs found, loaded models (cached), the pairs folder.

    ``generated``: the pairs root whose masks the ``pairs`` mask source draws before ``out``'s
    (``scripts/studio.py`` defaults it to the demo's ``generated/fast``). ``options_class``: the
    generation options (its ``studio`` fields are the page's controls)."""

    def __init__(self, run, out, device: Optional[str] = None, data_root: Optional[str] = None,
                 generated: Optional[str] = None, mask_model: Optional[str] = None, max_models: int = 2,
                 log=print, options_class=GenerationOptions):
        self.runs, self.problems = find_runs(run)
        self.options_class = options_class
        self.controls = studio_controls(options_class)
        self.out = Path(out)
        self.data_root = data_root
        self.generated = generated
        self.mask_model = mask_model
        self.device = device
        self.log = log
        self.max_models = max(1, int(max_models))
        self._models: dict = {}
        self._lock = threading.Lock()  # one generation at a time per model (and the model cache)

    # -------------------------------------------------------------------------------------- runs
    def run_keys(self) -> list:
        return [r.key for r in self.runs]

    def info(self, key: Optional[str]) -> RunInfo:
        for r in self.runs:
            if r.key == key:
                return r
        if not self.runs:
            raise UserError(self.problems[-1] if self.problems else "no model found")
        raise UserError(f"no model found for defect type {key!r}; found: {', '.join(self.run_keys())}")

    def torch_device(self):
        import torch

        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def options(self, info: RunInfo, **settings):
        """The options of one batch: each control's value from ``settings`` (by control name; its default
        when absent), checked; the batch is ``n_samples`` pairs through the network at once."""
        from ldm.generation import validate

        unknown = sorted(set(settings) - {c.name for c in self.controls})
        if unknown:
            raise TypeError(f"unknown studio setting(s) {', '.join(unknown)}; the controls are "
                            f"{', '.join(c.name for c in self.controls)}")
        values = {c.field: c.value(settings.get(c.name, c.default)) for c in self.controls}
        opt = self.options_class(pt_path=str(info.pt_path), sample_name=info.category, anomaly_name=info.defect,
                                 data_root=str(self.dataset_root(info)), outdir=str(self.out), device=self.device,
                                 progress=False, **values)
        opt = dataclasses.replace(opt, batch_size=opt.n_samples)
        validate(opt)
        if opt.sampler == "aias" and opt.steps <= opt.refine_steps:
            raise UserError(f"AIAS needs more than {opt.refine_steps} steps (its {opt.refine_steps} refinement "
                            f"steps come last), got {opt.steps}")
        return opt

    def load(self, info: RunInfo):
        """The run's model (``ldm.generation.load_run``), loaded once and cached."""
        from ldm.generation import load_run

        key = (str(info.pt_path.resolve()), info.steps[-1])
        if key in self._models:
            self._models[key] = self._models.pop(key)  # most recently used last
        else:
            while len(self._models) >= self.max_models:  # each run is a whole model: bound the memory
                self._models.pop(next(iter(self._models)))
            opt = self.options_class(pt_path=str(info.pt_path), sample_name=info.category,
                                     anomaly_name=info.defect, data_root=str(self.dataset_root(info)),
                                     device=self.device, progress=False)
            t0 = time.perf_counter()
            self._models[key] = load_run(opt, self.torch_device())
            self.log(f"[studio] loaded {info.key} (step {info.steps[-1]}) on {self.torch_device()} "
                     f"in {time.perf_counter() - t0:.1f} s")
        return self._models[key]

    # ---------------------------------------------------------------------------------- inputs
    def dataset_root(self, info: RunInfo) -> Path:
        return Path(self.data_root or info.train.get("root") or ".")

    def normal_images(self, info: RunInfo) -> list:
        from ldm.generation import normal_images

        return normal_images(self.dataset_root(info), info.category, info.layout)

    def normal_image(self, info: RunInfo, path) -> np.ndarray:
        """A dataset normal image as the generator sees it: uint8 at the run's size (bicubic)."""
        from ldm.data.io import load_image_uint8

        return load_image_uint8(path, info.size)

    def save_upload(self, image: np.ndarray) -> Path:
        """Keep an uploaded normal image (already at the run's size) so its pairs can name their source."""
        from ldm.data.io import save_png_atomic

        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
        path = self.out / UPLOADS / f"{digest}.png"
        if not path.is_file():
            save_png_atomic(image, path)
        return path

    def draw_mask(self, info: RunInfo, kind: str, index: int) -> tuple[np.ndarray, str]:
        """Mask ``index`` of a mask source at the run's size: ``real``/``augmented`` (generator side of the
        run's split), ``perlin``, ``generated`` (sampled from a mask model, ``--mask_model``) or ``pairs``
        (masks of pairs already generated for this defect); the library's ``ldm.data.mask_source``."""
        from ldm.pairs import derive_seed

        index = _int(index, "mask number")
        if index < 0:
            raise UserError(f"mask number must be >= 0, got {index}")
        seed = derive_seed(0, info.category, info.defect)
        parts = dict(layout=info.layout, split=info.anomaly_split, category=info.category, defect=info.defect)
        if kind == "generated":
            if not self.mask_model:
                raise UserError("mask source 'generated' needs a mask model: start the studio with --mask_model "
                                "<mask run>/checkpoints")
            source = mask_source("generated", info.size, seed, mask_model=str(self.mask_model), name=info.key,
                                 **parts)
        elif kind == "pairs":
            source = mask_source("real", info.size, seed, mask_path=self.generated_masks(info), **parts)
        elif kind in ("real", "augmented"):
            path = self.dataset_root(info) / info.category / "ground_truth" / info.defect
            source = mask_source(kind, info.size, seed, mask_path=path, **parts)
        elif kind == "perlin":
            source = mask_source("perlin", info.size, seed, **parts)
        else:
            raise UserError(f"mask source must be one of {', '.join(MASK_SOURCES)}, got {kind!r}")
        try:
            mask, origin = source.draw_with_info(index)
        except RuntimeError as e:  # the source's filter rejected every candidate
            raise UserError(str(e)) from None
        return mask, origin

    def generated_masks(self, info: RunInfo) -> Path:
        """``mask/`` of a pairs folder for this defect: in ``generated`` (a pairs root), else in the studio's
        own pairs folder."""
        roots = [Path(self.generated)] if self.generated else []
        roots += [self.out]
        for root in roots:
            folder = root / info.category / info.defect / "mask"
            if folder.is_dir() and any(folder.iterdir()):
                return folder
        where = ", ".join(str(r / info.category / info.defect / "mask") for r in roots)
        raise UserError(f"no generated masks for {info.key}: none in {where} (generate or keep pairs first)")

    # ---------------------------------------------------------------------------------- generate
    def check_mask(self, info: RunInfo, mask: np.ndarray, latent: int) -> None:
        """Refuse an empty mask and one smaller than one latent cell (it cannot carry a defect)."""
        area = int((np.asarray(mask) > 0.5).sum())
        if area == 0:
            raise UserError("the mask is empty: paint the defect region with the brush (or draw a mask from a "
                            "mask source) before generating")
        f = max(1, info.size // max(1, latent))
        if area < f * f:
            raise UserError(f"the mask is too small for the latent grid: it covers {area} px but one latent cell "
                            f"is {f}×{f} = {f * f} px ({info.size} px image, {latent}×{latent} latent); paint a "
                            "larger region")

    def generate(self, key: str, image: np.ndarray, mask: np.ndarray, normal_image: str, mask_origin: str,
                 **settings) -> Batch:
        """A batch of pairs from one normal image (uint8 at the run's size) and one mask ({0, 1} at that
        size); ``settings``: the controls' values by name (``sampler``, ``steps``, ``seed``, ``farm``, ``n``
        pairs, ...; ``studio_controls``)."""

        from ldm.generation import generate_batch
        from ldm.pairs import pair_scores
        from utils.images import float_to_uint8, uint8_to_float

        info = self.info(key)
        opt = self.options(info, **settings)
        n = opt.n_samples
        image = np.asarray(image)
        mask = (np.asarray(mask) > 0.5).astype(np.float32)
        if image.shape != (info.size, info.size, 3) or mask.shape != (info.size, info.size):
            raise UserError(f"the image is {image.shape[1]}×{image.shape[0]} px but {info.key} generates "
                            f"{info.size}×{info.size} images: load an image for this defect type again")
        with self._lock:
            run = self.load(info)
            model = run.model
            latent = int(model.image_size)
            self.check_mask(info, mask, latent)
            t0 = time.perf_counter()
            out, done = generate_batch(run, opt, [uint8_to_float(image)] * n, [mask] * n, range(n))
            thin, seeds = min(done["thin_masks"], 1), done["seeds"]
            seconds = time.perf_counter() - t0
        pairs = []
        for i, (img, s) in enumerate(zip(out, seeds)):
            u8 = float_to_uint8(img)
            pairs.append(Pair(u8, mask, image, s, i, pair_scores(u8, mask, image)))
        notes = []
        if thin:
            notes.append(f"parts of the mask are thinner than one latent cell ({latent}×{latent} latent): they "
                         "are generated as continuous lines of cells, and only the mask's pixels change")
        used = {**{c.field: getattr(opt, c.field) for c in self.controls}, "weight_idx": run.step}
        return Batch(info.key, pairs, seconds, int(done["nfe"]), str(self.torch_device()), used,
                     str(normal_image), str(mask_origin), notes)

    # -------------------------------------------------------------------------------------- keep
    def keep(self, batch: Batch, indices) -> tuple[Path, list]:
        """Write the chosen pairs of ``batch`` into ``<out>/<category>/<defect>/`` (the standard layout:
        ``ldm.pairs.PairWriter``, ``pairs.csv``, ``synthesis.json``, ``provenance.json``, contact sheet)."""
        from ldm.generation import pixel_settings, provenance, write_contact_sheet
        from ldm.pairs import PairWriter, check_manifest, write_provenance
        from utils.images import uint8_to_float

        if batch is None:
            raise UserError("nothing to keep: generate a batch first")
        chosen = sorted({int(i) for i in indices or []})
        if not chosen:
            raise UserError("nothing to keep: tick the pairs you want first")
        for i in chosen:
            if not 0 <= i < len(batch.pairs):
                raise UserError(f"pair {i} is not in the last batch (it has {len(batch.pairs)})")
        info = self.info(batch.run_key)
        with self._lock:
            run = self.load(info)
        s = batch.settings
        # the record holds the batch's pixel options (the seed and the mask are recorded per pair, below)
        pixel = {f.name for f in fields_with(self.options_class, "pixel")} - {"seed"}
        opt = self.options_class(pt_path=str(info.pt_path), sample_name=info.category, anomaly_name=info.defect,
                                 data_root=str(self.dataset_root(info)), outdir=str(self.out),
                                 weight_idx=s["weight_idx"], mask_source="studio",
                                 **{c.field: s[c.field] for c in self.controls if c.field in pixel})
        split = run.anomaly_split
        settings = pixel_settings(run, opt, split, info.layout, info.size)
        # the studio varies the seed and the mask pair by pair: both are recorded per pair (meta/, pairs.csv)
        settings.update(seed="per pair (meta/<n>.json)", mask_source="studio (per pair, meta/<n>.json)",
                        mask_path=None)
        writer = PairWriter(self.out, info.category, info.defect)
        # numbers are taken and pairs.csv rewritten under one lock on the pairs folder, held by every keep of
        # every session and of every studio process sharing --out: simultaneous keeps get distinct numbers
        # and pairs.csv lists each kept pair once
        with keep_lock(self.out):
            check_manifest(writer.root, settings)
            write_provenance(writer.root, provenance(run, opt, split, None))
            n = next_index(writer)
            written = []
            for i in chosen:
                p = batch.pairs[i]
                writer.write(n, uint8_to_float(p.image), p.mask, uint8_to_float(p.original),
                             meta={"normal_image": batch.normal_image, "mask_origin": batch.mask_origin,
                                   "seed": p.seed, "studio_seed": s["seed"], "studio_index": p.index})
                written.append(n)
                n += 1
            writer.write_index()
            write_contact_sheet(writer, n)
        return writer.root, written

    def export(self, fmt: str, out: Optional[str] = None) -> tuple[Path, dict]:
        """Export everything kept (``ldm.export.export_pairs``) to ``out`` (default ``<pairs>-<fmt>``).
        An earlier export there is replaced; any other non-empty folder is refused."""
        from ldm.export import EXPORT_MANIFEST, FORMATS, ExportOptions, export_pairs

        if fmt not in FORMATS:
            raise UserError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if not self.out.is_dir():
            raise UserError(f"nothing to export: no pairs kept yet in {self.out}")
        target = Path(out) if out else self.out.parent / f"{self.out.name}-{fmt}"
        with keep_lock(self.out):  # a snapshot between keeps (and one export at a time)
            overwrite = (target / EXPORT_MANIFEST).is_file()
            manifest = export_pairs(self.out, target, ExportOptions(fmt=fmt), overwrite=overwrite, log=self.log)
        return target, manifest


_KEEP_LOCKS: dict = {}
_KEEP_LOCKS_GUARD = threading.Lock()
KEEP_LOCK = ".studio-keep.lock"  # hidden: pairs-folder readers (ldm.export) skip dot-names


@contextmanager
def keep_lock(out):
    """Exclusive use of the pairs folder ``out`` while pairs are numbered and written: a lock per folder
    shared by every thread of this process, plus ``flock`` on ``<out>/.studio-keep.lock`` for other
    processes (another studio on the same ``--out``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = str(out.resolve())
    with _KEEP_LOCKS_GUARD:
        lock = _KEEP_LOCKS.setdefault(key, threading.Lock())
    with lock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one studio process per --out
            yield
            return
        with open(out / KEEP_LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def next_index(writer) -> int:
    """The first pair number after every pair (complete or not) already in the folder."""
    used = [-1]
    for d in [writer.meta_dir, *writer.dirs.values()]:
        if d.is_dir():
            used += [int(p.stem) for p in d.iterdir() if p.stem.isdigit()]
    return max(used) + 1


def _int(v, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, got {v!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise UserError(f"{what} must be a whole number, got {v!r}")
    return int(f)
