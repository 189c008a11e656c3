#!/usr/bin/env python
"""The embedded demo: the whole FAST pipeline on a CPU, with no downloads.

1. build the texture-ad dataset from scikit-image's CC0 textures;
2. train a tiny autoencoder (stage 1), then a tiny text-conditioned LDM on normal images (stage 2) --
   together they stand in for the pretrained LDM text2img-large the real datasets use;
3. train FAST (embeddings + FARM + adaptor on the frozen stage-2 backbone), one run per defect type;
4. generate image-mask pairs with AIAS (10 network calls per image);
5. train the same segmenter on FAST, DRAEM, CutPaste and normal-only pairs and compare them on the
   held-out real side of the split; write a table, a bar chart and contact sheets;
6. write ``<out>/report.md`` (stage times and peak memory, metrics, pictures).

Tiers: default (<= 15 min on 2 CPU cores, one texture, one segmenter seed); ``--quick`` (a few
minutes); ``--smoke`` (seconds per stage: the pipeline's plumbing, for tests); ``--full`` (the default
budget on every texture x 3 segmenter seeds, mean +- std, STAGE and GroundingAnomaly rows, and the
ablations). ``--stage`` / ``--grounding`` add those synthesizers to any tier; ``--ablations`` runs, on
the same trained models, FAST with FARM on/off and AIAS-10 / AIAS-50 / DDPM-1000, and GroundingAnomaly
w/o GSM (trained once more), w/o NDI, on masks sampled from a mask-TI model (one trained per texture; a
diversity report per defect type), and as one model per texture with and without SCM's semantic map. ``--family wild`` synthesises and
evaluates the second defect family (other rendering code, never used for tuning) over the same
texture-ad backbone, into ``comparison-wild/`` and ``report-wild.md``.

The console shows one line per stage (progress bar and ETA on a terminal, a line a minute
otherwise); every stage's full output is in ``<out>/logs/console/<stage>.log``. Every stage is
skipped when a previous run finished it with the same settings, and training resumes where it
stopped, so running the demo again continues.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

from ldm.data.texture_ad import FAMILIES  # noqa: E402
from scripts.demo_stages import StageRunner, slug  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.progress import fmt_seconds  # noqa: E402

TEXTURES = ("brick", "grass", "gravel")
MASK_CONFIG = "configs/grounding/masks-texture-demo.yaml"
REPORT_METRICS = (("iou_anomaly", "anomaly IoU"), ("acc_anomaly", "anomaly recall"), ("pixel_ap", "pixel AP"),
                  ("pixel_f1_max", "F1-max"), ("pixel_auroc", "pixel AUROC"), ("aupro_0.3", "AUPRO@0.3"))

# budgets per tier: (ae, ldm, fast, n_samples, seg_steps, mask-TI steps, masks of its diversity report); the
# mask model trains at ~2.5 steps/s on one busy core: 500 steps take ~3.5 minutes per texture
DEFAULT_BUDGET = dict(ae_steps=250, ldm_steps=1000, fast_steps=200, n_samples=128, seg_steps=400, mask_steps=500,
                      diversity_masks=64)
TIERS = {
    "default": DEFAULT_BUDGET,
    "quick": dict(ae_steps=60, ldm_steps=150, fast_steps=60, n_samples=40, seg_steps=60, mask_steps=200,
                  diversity_masks=32),
    "smoke": dict(ae_steps=3, ldm_steps=3, fast_steps=3, n_samples=4, seg_steps=3, mask_steps=3, diversity_masks=4),
    "full": DEFAULT_BUDGET,  # on every texture with 3 segmenter seeds: it reuses a default run's stages
}


def family_suffix(family: str) -> str:
    """``""`` for texture-ad, ``-<family>`` otherwise: the suffix of a family's data, comparison and report."""
    return "" if family == "texture-ad" else f"-{family}"


def family_dir(out: Path, name: str, family: str) -> Path:
    """``<out>/<name><suffix>``: a family's own ``data/texture-ad``, ``generated``, ``comparison`` or
    ``ablations`` folder. One per family, because the comparison trains on every defect folder it finds."""
    return Path(out) / f"{name}{family_suffix(family)}"


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument("--category", default="brick", help="texture-ad category (brick, grass, gravel); --full: all")
    p.add_argument("--family", choices=list(FAMILIES), default="texture-ad",
                   help="defect family to synthesise and evaluate: texture-ad, or wild (other rendering code on "
                        "the same normal images, never used to tune anything); the backbone is always texture-ad's")
    p.add_argument("--defects", default=None,
                   help="defect types to synthesise (default: all of --family; the comparison needs all of them)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="small budgets everywhere (a few minutes)")
    tier.add_argument("--smoke", action="store_true", help="a few steps per stage: the plumbing only (tests)")
    tier.add_argument("--full", action="store_true",
                      help="every texture x --seeds segmenter seeds, mean +- std, FARM and sampler ablations")
    p.add_argument("--n_samples", type=int, default=None, help="pairs per defect type")
    p.add_argument("--ae_steps", type=int, default=None)
    p.add_argument("--ldm_steps", type=int, default=None)
    p.add_argument("--fast_steps", type=int, default=None)
    p.add_argument("--seg_steps", type=int, default=None, help="segmenter training steps per synthesizer")
    p.add_argument("--aias_steps", type=int, default=10, help="AIAS network calls (segments + 2 DDPM steps)")
    p.add_argument("--seeds", type=int, default=None, help="segmenter seeds (default 1; --full 3)")
    p.add_argument("--mask_steps", type=int, default=None,
                   help="grounding ablations: training steps of the mask-TI model (one per texture) whose masks "
                        "the 'GroundingAnomaly, generated masks' row uses")
    p.add_argument("--diversity_masks", type=int, default=None,
                   help="masks sampled per defect type for the mask model's diversity report")
    p.add_argument("--ablation_samples", type=int, default=24,
                   help="pairs per defect type of every ablation variant (DDPM-1000 costs 100x AIAS-10)")
    p.add_argument("--ablation_categories", default="brick", help="--full: textures of the ablations")
    p.add_argument("--stage", action="store_true",
                   help="also train STAGE per defect type (same backbone and budget), generate STAGE-10 pairs and "
                        "add a 'stage' row to the comparison (always on with --full)")
    p.add_argument("--grounding", action="store_true",
                   help="also train GroundingAnomaly per defect type (same backbone and budget), generate NDI+AIAS "
                        "pairs and add a 'grounding' row (always on with --full; --full adds its ablations)")
    p.add_argument("--ablations", nargs="?", const="all", default=None, choices=("all", "fast", "grounding"),
                   help="run the ablations of --full at this tier's budget: fast (FARM off, AIAS-50, DDPM-1000), "
                        "grounding (w/o SCM, GSM, NDI, generated masks; implies --grounding) or all (the default)")
    p.add_argument("--gpus", default=None, help="as main.py --gpus (default: CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per stage (0: one per core)")
    return p


def resolve(opt) -> str:
    tier = "full" if opt.full else "quick" if opt.quick else "smoke" if opt.smoke else "default"
    for k, v in TIERS[tier].items():
        if getattr(opt, k) is None:
            setattr(opt, k, v)
    if opt.seeds is None:
        opt.seeds = 3 if opt.full else 1
    for k in ("n_samples", "ae_steps", "ldm_steps", "fast_steps", "seg_steps", "aias_steps", "seeds", "mask_steps",
              "diversity_masks"):
        if getattr(opt, k) < 1:
            raise UserError(f"--{k} must be >= 1, got {getattr(opt, k)}")
    opt.categories = list(TEXTURES) if opt.full else [opt.category]
    opt.stage = bool(opt.stage or opt.full)
    if opt.full and opt.ablations is None:
        opt.ablations = "all"
    opt.grounding = bool(opt.grounding or opt.full or opt.ablations in ("all", "grounding"))
    if opt.category not in TEXTURES:
        raise UserError(f"--category must be one of {', '.join(TEXTURES)}, got '{opt.category}'")
    opt.defect_list = [d for d in (opt.defects or ",".join(FAMILIES[opt.family])).split(",") if d]
    if not opt.defect_list:
        raise UserError("--defects is empty")
    return tier


# ------------------------------------------------------------------------------------------ helpers
def last_step(ckpt: Path) -> int:
    from utils.safe_load import safe_load

    return int(safe_load(ckpt).get("global_step", 0))


def trained(ckpt: Path, steps: int) -> bool:
    try:
        return ckpt.is_file() and last_step(ckpt) >= steps
    except Exception:  # a half-written or foreign file: train (resume) again
        return False


def ablation_categories(opt) -> list[str]:
    return [c for c in opt.ablation_categories.split(",") if c]


def count_files(folder: Path, pattern: str = "*.png") -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def py() -> list[str]:
    return [sys.executable]


class Demo:
    def __init__(self, opt, tier: str, runner: StageRunner):
        self.opt, self.tier, self.runner = opt, tier, runner
        self.out = Path(opt.out)
        self.backbone_data = self.data_root("texture-ad")   # autoencoder and LDM: always texture-ad
        self.suffix = family_suffix(opt.family)
        self.data = self.data_root(opt.family)
        self.common = ["--gpus", opt.gpus] if opt.gpus else []  # --threads reaches children as OMP_NUM_THREADS

    def data_root(self, family: str) -> Path:
        return family_dir(self.out / "data", "texture-ad", family)

    def folder(self, name: str) -> Path:
        """This family's ``generated``, ``comparison`` or ``ablations`` folder (``family_dir``)."""
        return family_dir(self.out, name, self.opt.family)

    def compare_name(self, label: str) -> str:
        """Stage name of a comparison (``compare seed 0``, ``compare wild seed 0``, ...)."""
        return f"compare{self.suffix.replace('-', ' ')} {label}"

    # ---------------------------------------------------------------- stages
    def dataset(self, family: str = "texture-ad") -> None:
        plain = family == "texture-ad"
        settings = {"stage": "dataset"} if plain else {"stage": "dataset", "family": family}
        name = "build texture-ad" + ("" if plain else f" ({family})")
        root = self.data_root(family)
        marker = self.runner.finished(name, settings)
        if marker and (root / "brick").is_dir():
            self.runner.skip(name, marker)
            return
        from ldm.data.texture_ad import build_texture_ad

        t = time.perf_counter()
        build_texture_ad(root, defects=FAMILIES[family])
        self.runner.record_inline(name, time.perf_counter() - t, settings, unit="textures", total=len(TEXTURES))

    def train(self, name: str, config: str, steps: int, overrides: list[str], extra_args=()) -> Path:
        logdir = self.out / "logs" / name
        ckpt = logdir / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            cmd = py() + ["main.py", "-r", str(logdir), "-t", "--max_steps", str(steps), *self.common]
        else:
            cmd = py() + ["main.py", "--base", config, "-t", "-l", str(self.out / "logs"), "-lf", name,
                          "--max_steps", str(steps), *self.common, *extra_args, *overrides]
        settings = {"config": config, "steps": steps, "overrides": overrides, "extra": list(extra_args)}
        self.runner.run(f"train {name}", cmd, settings, total=steps, unit="steps", cwd=ROOT,
                        done=lambda: trained(ckpt, steps))
        return ckpt

    def fast(self, ldm: Path, category: str, defect: str, method: str = "fast", variant: str = "",
             overrides: tuple = ()) -> Path:
        """Train one generator (``fast``, ``stage`` or ``grounding``: same backbone, data and budget) per
        defect type; ``variant`` names an ablation trained with config ``overrides``."""
        from ldm.modules.encoders.tokenizer import load_bert_tokenizer
        from scripts.train_all import init_word_for

        run = f"{method}{'-' + variant if variant else ''}/{category}+{defect}"
        word = init_word_for(defect, load_bert_tokenizer("tiny"), "anomaly", "texture_ad", category)
        extra = ["--actual_resume", str(ldm), "--mvtec_path", str(self.data), "--category", category,
                 "--defect", defect, "--init_word", word or "anomaly"]
        self.train(run, f"configs/{method}/texture-demo.yaml", self.opt.fast_steps,
                   [f"data.params.train.params.root={self.data}", *overrides], extra)
        return self.out / "logs" / run / "checkpoints"

    def grounding_texture(self, ldm: Path, category: str, variant: str, overrides: tuple = ()) -> Path:
        """One GroundingAnomaly model of ``category`` holding every defect type of ``--defects`` (the paper's
        setting, where the semantic map tells the types apart), trained as long as the per-defect models
        together."""
        run = f"grounding-{variant}/{category}"
        self.train(run, "configs/grounding/texture-demo.yaml", self.opt.fast_steps * len(self.opt.defect_list),
                   [*self.texture_data(category), *overrides], ["--actual_resume", str(ldm), "--init_word", "anomaly"])
        return self.out / "logs" / run / "checkpoints"

    def texture_data(self, category: str) -> list[str]:
        """Config overrides for training on every defect type of ``--defects`` of ``category`` at once (main.py
        names one token per defect type)."""
        data = "data.params.train.params"
        return [f"{data}.root={self.data}", f"{data}.category={category}",
                f"{data}.defect=[{','.join(self.opt.defect_list)}]"]

    def mask_model(self, category: str) -> Path:
        """Train GroundingAnomaly's mask-TI model of ``category``: one model, a token set ``category+defect``
        per defect type of ``--defects`` (main.py names them from the dataset's defect list)."""
        run = f"masks{self.suffix}/{category}"
        self.train(run, MASK_CONFIG, self.opt.mask_steps, self.texture_data(category))
        return self.out / "logs" / run / "checkpoints"

    def mask_report(self, mask_run: Path, category: str, defect: str) -> Path:
        """Sample ``--diversity_masks`` masks of ``category+defect`` and compare them with the real generator-side
        masks (``diversity.json``, ``sheet.png``): varied masks, not copies, are what the mask model is for."""
        folder = self.folder("ablations") / "masks" / f"{category}+{defect}"
        n = self.opt.diversity_masks
        cmd = py() + ["scripts/mask_ti_report.py", "--pt_path", str(mask_run), "--name", f"{category}+{defect}",
                      "--mask_path", str(self.data / category / "ground_truth" / defect),
                      "--weight_idx", str(self.opt.mask_steps), "--n", str(n), "--size", "64", "--out", str(folder)]
        settings = {"pt": str(mask_run), "mask_steps": self.opt.mask_steps, "n": n}
        self.runner.run(f"mask diversity {category}+{defect}", cmd, settings, total=n, unit="masks", cwd=ROOT,
                        done=lambda: (folder / "diversity.json").is_file())
        return folder / "diversity.json"

    def generate(self, pt_path: Path, category: str, defect: str, outdir: Path, n: int, sampler: str = "aias",
                 steps: int = 10, farm_mode: str = "input", label: str = "", extra_args: tuple = ()) -> dict:
        folder = outdir / category / defect
        cmd = py() + ["generate_with_mask.py", "--data_root", str(self.data), "--sample_name", category,
                      "--anomaly_name", defect, "--pt_path", str(pt_path),
                      "--mask_path", str(self.data / category / "ground_truth" / defect), "--outdir", str(outdir),
                      "--sampler", sampler, "--steps", str(steps), "--farm_mode", farm_mode,
                      "--n_samples", str(n), "--batch_size", "50", *extra_args]
        settings = {"pt": str(pt_path), "sampler": sampler, "steps": steps, "farm": farm_mode, "n": n,
                    "fast_steps": self.opt.fast_steps, "extra": list(extra_args)}
        name = f"generate {label or sampler + '-' + str(steps)} {category}+{defect}"
        rec = self.runner.run(name, cmd, settings, total=n, unit="pairs", cwd=ROOT,
                              progress=lambda: (count_files(folder / "image-mask-ori"), n),
                              done=lambda: count_files(folder / "image-mask-ori") >= n,
                              extra={"sampler": sampler, "nfe": steps if sampler != "ddpm" else 1000,
                                     "farm_mode": farm_mode})
        return rec.as_dict()

    def compare(self, name: str, out: Path, categories: list[str], synths: str, seed: int,
                dirs: dict, n: int) -> Path:
        """Segmenter comparison; ``dirs``: method -> folder of its pre-generated pairs."""
        cmd = py() + ["scripts/compare_synthesizers.py", "--dataset_root", str(self.data), "--layout", "mvtec",
                      "--categories", ",".join(categories), "--synthesizers", synths, "--mask_source", "real",
                      "--size", "64", "--n_samples", str(n), "--steps", str(self.opt.seg_steps),
                      "--seed", str(seed), "--out", str(out), "--quiet"]
        for method, folder in dirs.items():
            cmd += [f"--{method}_dir", str(folder)]
        runs = len(categories) * len(synths.split(","))
        steps = self.opt.seg_steps
        prog_file = self.runner.markers / f"{slug(name)}.progress"

        def progress():
            from utils.progress import read

            finished = count_files(out / "runs", "*/*/result.json")
            cur = read(prog_file)
            cur_done = cur[0] if cur and cur[0] < steps and finished < runs else 0
            return min(runs * steps, finished * steps + cur_done), runs * steps

        settings = {"categories": categories, "synths": synths, "seed": seed, "n": n,
                    **{method: str(folder) for method, folder in dirs.items()},
                    "seg_steps": steps, "fast_steps": self.opt.fast_steps, "ldm_steps": self.opt.ldm_steps}
        self.runner.run(name, cmd, settings, total=runs * steps, unit="segmenter steps", cwd=ROOT,
                        progress=progress, done=lambda: (out / "results.json").is_file())
        return out / "results.json"


# ------------------------------------------------------------------------------------------ pipeline
# sampler and its label per synthesizer; every one trains per defect type on the same backbone
METHODS = {"fast": ("aias", "AIAS"), "stage": ("stage", "STAGE"), "grounding": ("aias", "GroundingAnomaly")}


def pipeline(opt, tier: str, runner: StageRunner) -> dict:
    demo = Demo(opt, tier, runner)
    demo.dataset()
    if opt.family != "texture-ad":
        demo.dataset(opt.family)
    root = [f"data.params.train.params.root={demo.backbone_data}"]
    ae = demo.train("autoencoder", "configs/tiny/autoencoder.yaml", opt.ae_steps, root)
    ldm = demo.train("ldm", "configs/tiny/ldm.yaml", opt.ldm_steps,
                     root + [f"model.params.first_stage_config.params.ckpt_path={ae}"])
    methods = ["fast"] + (["stage"] if opt.stage else []) + (["grounding"] if opt.grounding else [])
    dirs, runs, gens = {}, {}, []
    for method in methods:
        sampler, label = METHODS[method]
        dirs[method] = demo.folder("generated") / method
        for cat in opt.categories:
            for defect in opt.defect_list:
                runs[(method, cat, defect)] = demo.fast(ldm, cat, defect, method=method)
                gens.append(demo.generate(runs[(method, cat, defect)], cat, defect, dirs[method], opt.n_samples,
                                          sampler=sampler, steps=opt.aias_steps, label=f"{label}-{opt.aias_steps}"))
    synths = ",".join(methods + ["draem", "cutpaste", "normal"])
    results = {}
    comparison = demo.folder("comparison")
    for seed in range(opt.seeds):
        sub = comparison if opt.seeds == 1 else comparison / f"seed-{seed}"
        results[seed] = demo.compare(demo.compare_name(f"seed {seed}"), sub, opt.categories, synths, seed, dirs,
                                     opt.n_samples)
    ablations, masks = {}, {}
    if opt.ablations:
        grounding = opt.ablations in ("all", "grounding")
        mask_runs = {cat: demo.mask_model(cat) for cat in ablation_categories(opt)} if grounding else {}
        masks = {f"{cat}+{d}": demo.mask_report(run, cat, d) for cat, run in mask_runs.items() for d in opt.defect_list}
        ablations = run_ablations(opt, demo, ldm, runs, mask_runs)
    return {"results": results, "generation": gens, "ablations": ablations, "masks": masks}


class Ablation(NamedTuple):
    """One ablation row: how its generator is trained and how its pairs are sampled."""
    label: str
    method: str
    variant: str = ""            # "": the pipeline's own models; else trained once more under this name
    overrides: tuple = ()        # config overrides of that training
    sampler: str = "aias"
    steps: int = 10
    farm: str = "input"
    gen_args: tuple = ()         # str.format templates over the category's ``mask_model`` and ``mask_steps``
    per_texture: bool = False    # one model per texture holding every defect type (``Demo.grounding_texture``)


# w/o SCM needs the per-texture models: a model of one defect type paints one anomaly token, so its
# "binary map" is the same function of the same weights (measured: bit-identical pairs and metrics).
ABLATIONS = (
    Ablation("FAST, AIAS-10", "fast"),
    Ablation("FAST, AIAS-10, FARM off", "fast", farm="off"),
    Ablation("FAST, AIAS-50", "fast", steps=50),
    Ablation("FAST, DDPM-1000", "fast", sampler="ddpm", steps=1000),
    Ablation("GroundingAnomaly", "grounding"),
    Ablation("GroundingAnomaly w/o GSM", "grounding", "nogsm", ("model.params.gsm=false",)),
    Ablation("GroundingAnomaly w/o NDI", "grounding", gen_args=("--ndi", "off")),
    Ablation("GroundingAnomaly, generated masks", "grounding",
             gen_args=("--mask_source", "generated", "--mask_model", "{mask_model}", "--mask_weight_idx",
                       "{mask_steps}")),
    Ablation("GroundingAnomaly, one model per texture", "grounding", "texture", per_texture=True),
    Ablation("GroundingAnomaly, one model per texture, w/o SCM (binary map)", "grounding", "texture-binary",
             ("model.params.scm_config.binary_map=true",), per_texture=True),
)


def run_ablations(opt, demo: Demo, ldm: Path, runs: dict, mask_runs: dict) -> dict:
    """FAST: FARM on vs off at generation, AIAS-10 vs AIAS-50 vs DDPM-1000 on the same trained models;
    GroundingAnomaly: w/o GSM (trained once more), w/o NDI (generation), on masks sampled from the
    category's mask model (``mask_runs``: category -> its checkpoints folder) instead of the real ones, and
    one model per texture with and without SCM's semantic map. The same normal images,
    ``--ablation_samples`` pairs per defect type, every seed."""
    cats = ablation_categories(opt)
    out = {}
    for a in ABLATIONS:
        if opt.ablations not in ("all", a.method):
            continue
        folder = demo.folder("ablations") / "generated" / slug(a.label.lower())
        gen = []
        for cat in cats:
            args = tuple(g.format(mask_model=mask_runs.get(cat), mask_steps=opt.mask_steps) for g in a.gen_args)
            texture_model = demo.grounding_texture(ldm, cat, a.variant, a.overrides) if a.per_texture else None
            for defect in opt.defect_list:
                # the pipeline's own model unless the variant trains its own (``fast`` skips a finished run)
                pt = texture_model or (None if a.variant else runs.get((a.method, cat, defect))) or \
                    demo.fast(ldm, cat, defect, method=a.method, variant=a.variant, overrides=a.overrides)
                gen.append(demo.generate(pt, cat, defect, folder, opt.ablation_samples, sampler=a.sampler,
                                         steps=a.steps, farm_mode=a.farm, label=a.label, extra_args=args))
        seeds = {}
        for seed in range(opt.seeds):
            sub = demo.folder("ablations") / "comparison" / folder.name / f"seed-{seed}"
            seeds[seed] = demo.compare(demo.compare_name(f"{a.label} seed {seed}"), sub, cats, a.method, seed,
                                       {a.method: folder}, opt.ablation_samples)
        out[a.label] = {"results": seeds, "generation": gen, "method": a.method}
    return out


# ------------------------------------------------------------------------------------------ report
def load_results(paths: dict) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths.values() if Path(p).is_file()]


def mean_std(values: list) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_ms(m: float, s: float, n: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if n > 1 else f"{100 * m:.1f}"


def metrics_table(docs: list[dict], synth_names=None) -> tuple[str, dict]:
    """Mean over categories per seed, then mean ± std over seeds, per synthesizer."""
    if not docs:
        return "_no comparison results yet_", {}
    synths = synth_names or docs[0].get("synthesizers", [])
    summary = {}
    lines = ["| synthesizer | " + " | ".join(label for _, label in REPORT_METRICS) + " |",
             "|---|" + "---|" * len(REPORT_METRICS)]
    for s in synths:
        cells = []
        for key, _ in REPORT_METRICS:
            per_seed = [d["results"].get(s, {}).get("mean", {}).get(key) for d in docs if s in d.get("results", {})]
            m, sd = mean_std(per_seed)
            summary.setdefault(s, {})[key] = {"mean": m, "std": sd, "n": len(per_seed)}
            cells.append(fmt_ms(m, sd, len(per_seed)))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def latest(out: Path, pattern: str) -> Path | None:
    hits = sorted(out.glob(pattern))
    return hits[-1] if hits else None


# diversity.json key (ldm.models.diffusion.mask_ti.mask_diversity), column, format
DIVERSITY = (("pairwise_iou_generated", "pairwise IoU, generated", "{:.3f}"),
             ("pairwise_iou_real", "pairwise IoU, real", "{:.3f}"),
             ("nearest_real_iou", "nearest-real IoU", "{:.3f}"),
             ("copies", "near-copies", "{:.0%}"),
             ("unique", "distinct", "{:.0%}"),
             ("area_generated", "area, generated", "{:.1%}"),
             ("area_real", "area, real", "{:.1%}"))


def load_diversity(paths: dict) -> dict:
    """``diversity.json`` per mask type with its sheet's path: the report and report.json show the same."""
    return {name: dict(json.loads(Path(p).read_text()), sheet=str(Path(p).parent / "sheet.png"))
            for name, p in paths.items()}


def masks_section(opt, out: Path, diversity: dict) -> list[str]:
    """The 'Generated masks' section: how varied the mask models' masks are and how far from copies of
    the real ones, per defect type, with their sheets."""
    lines = ["## Generated masks", "",
             f"One mask-TI model per texture ({opt.mask_steps} steps, a token set per defect type), the masks of "
             f"the 'GroundingAnomaly, generated masks' ablation; {opt.diversity_masks} masks per defect type "
             "against the generator-side real masks at 64×64. Pairwise IoU: lower = more varied; near-copies: "
             "nearest-real IoU ≥ 0.95 (memorised masks).", "",
             "| mask type | generated / real | " + " | ".join(col for _, col, _ in DIVERSITY) + " |",
             "|---|---|" + "---|" * len(DIVERSITY)]
    for name, d in diversity.items():
        cells = [fmt.format(d[key]) if d.get(key) is not None else "n/a" for key, _, fmt in DIVERSITY]
        lines.append(f"| {name} | {d['n_generated']} / {d['n_real']} | " + " | ".join(cells) + " |")
    lines += ["", "Sheets (real masks in the first rows, generated ones below):", ""]
    lines += [f"- {name}: ![{name} masks]({rel(Path(d['sheet']), out)})" for name, d in diversity.items()]
    return lines + [""]


def write_report(opt, tier: str, runner: StageRunner, res: dict, wall: float) -> tuple:
    from utils.atomic import write_text_atomic

    out = Path(opt.out)
    suffix = family_suffix(opt.family)
    comparison = family_dir(out, "comparison", opt.family)
    docs = load_results(res["results"])
    table, summary = metrics_table(docs)
    n_seeds = len(docs)
    cmd = " ".join(["bash scripts/demo.sh", *map(shlex.quote, opt.argv)])  # what was typed, every flag
    threads = opt.threads or os.cpu_count()
    lines = [f"# FAST embedded demo — {tier} run" + (f", {opt.family} defect family" if suffix else ""), "",
             f"Command: `{cmd}` (scripts/run_demo.py). Machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"{threads} torch threads per stage, {'GPU ' + opt.gpus if opt.gpus else 'CPU only'}. "
             f"Finished {time.strftime('%Y-%m-%d %H:%M')}; this invocation took **{fmt_seconds(wall)}** "
             f"(skipped stages cost nothing now; their earlier times are in the table).", "",
             f"Budget: autoencoder {opt.ae_steps} steps, LDM {opt.ldm_steps} steps, FAST {opt.fast_steps} steps "
             f"per defect type, {opt.n_samples} AIAS-{opt.aias_steps} pairs per defect type, segmenter "
             f"{opt.seg_steps} steps × {n_seeds} seed(s); textures: {', '.join(opt.categories)}.", "",
             "## Stage times and peak memory", "", runner.table(), "",
             "## Segmentation on real held-out anomalies (%)", "",
             f"Segmenter trained on each synthesizer's pairs (+50 % normal images), tested on the held-out side "
             f"of the split + test/good; mean over {len(opt.categories)} texture(s)"
             + (f", then mean ± std over {n_seeds} segmenter seeds." if n_seeds > 1 else ", one seed."), "",
             table, ""]
    if summary.get("fast") and all(s in summary for s in ("draem", "cutpaste")):
        f_iou = summary["fast"]["iou_anomaly"]["mean"]
        others = {s: summary[s]["iou_anomaly"]["mean"] for s in ("draem", "cutpaste")}
        beats = all(f_iou > v for v in others.values())
        lines += [f"FAST {'beats' if beats else 'does not beat'} DRAEM and CutPaste on mean anomaly IoU "
                  f"({100 * f_iou:.1f} vs " + ", ".join(f"{s} {100 * v:.1f}" for s, v in others.items()) + ").", ""]
    chart = comparison / "bars.png" if n_seeds == 1 else comparison / "seed-0" / "bars.png"
    lines += ["## Pictures", ""]
    if chart.is_file():
        lines += [f"Bar chart (seed 0): ![bars]({rel(chart, out)})", ""]
    lines += ["Generated pairs (generated | mask | normal image), one contact sheet per defect type:", ""]
    for cat in opt.categories:
        for d in opt.defect_list:
            sheet = family_dir(out, "generated", opt.family) / "fast" / cat / d / "contact_sheet.png"
            if sheet.is_file():
                lines.append(f"- {cat}/{d}: ![{cat} {d}]({rel(sheet, out)})")
    lines.append("")
    grids = [("LDM samples (stage 2)", "logs/ldm/images/train/samples_*.png"),
             ("autoencoder reconstructions (stage 1)", "logs/autoencoder/images/train/reconstructions_*.png")]
    for cat in opt.categories:
        for d in opt.defect_list:
            grids.append((f"FAST training samples {cat}+{d}", f"logs/fast/{cat}+{d}/images/train/samples_*.png"))
    shown = [(label, latest(out, pat)) for label, pat in grids]
    shown = [(label, p) for label, p in shown if p is not None]
    lines += ["Training grids (latest):", ""] + ([f"- {label}: ![]({rel(p, out)})" for label, p in shown]
                                                 or ["- none yet (image logging starts at step 200)"]) + [""]
    sheets = sorted(comparison.rglob("sheets/*/*.png"))
    lines += [f"Segmenter contact sheets (test image | GT | probability | prediction): "
              f"{len(sheets)} under `{comparison.name}/**/sheets/`.", ""]
    lines += ["## Sampler speed", "", "| generation | pairs | wall time | s / pair |", "|---|---|---|---|"]
    for g in res["generation"] + [g for a in res["ablations"].values() for g in a["generation"]]:
        if g.get("total"):
            lines.append(f"| {g['name']} | {g['total']} | {fmt_seconds(g['seconds'])} | "
                         f"{g['seconds'] / g['total']:.3f} |")
    lines += ["", "(wall time of the whole stage: model loading included; skipped stages show the earlier run's "
                  "time)", ""]
    if res["ablations"]:
        lines += ["## Ablations", "",
                  f"Textures: {opt.ablation_categories}; {opt.ablation_samples} pairs per defect type for every "
                  f"variant; segmenter {opt.seg_steps} steps × {opt.seeds} seeds; mean ± std over seeds.", "",
                  "| variant | anomaly IoU | anomaly recall | pixel AP | AUPRO@0.3 | generation s / pair |",
                  "|---|---|---|---|---|---|"]
        for label, a in res["ablations"].items():
            adocs = load_results(a["results"])
            _, s = metrics_table(adocs, [a["method"]])
            f = s.get(a["method"], {})
            secs = sum(g["seconds"] for g in a["generation"]) / max(1, sum(g["total"] or 0 for g in a["generation"]))

            def c(k):
                return fmt_ms(f[k]["mean"], f[k]["std"], f[k]["n"]) if k in f else "n/a"

            lines.append(f"| {label} | {c('iou_anomaly')} | {c('acc_anomaly')} | {c('pixel_ap')} | "
                         f"{c('aupro_0.3')} | {secs:.3f} |")
        lines.append("")
    diversity = load_diversity(res["masks"])
    if diversity:
        lines += masks_section(opt, out, diversity)
    lines += ["## Where to look", "",
              f"- `{comparison.name}/results.md` (every metric, generation-quality table), `{comparison.name}/bars.png`",
              f"- `{family_dir(out, 'generated', opt.family).name}/fast/<texture>/<defect>/` (pairs, `contact_sheet.png`, "
              "`synthesis.json`)",
              "- `logs/<stage>/` (checkpoints, image grids, `timing.json`), `logs/console/*.log` (full output)",
              "- `stages/*.json` (per-stage time and peak memory, used to skip finished stages)", ""]
    doc = {"tier": tier, "wall_seconds": wall, "stages": [r.as_dict() for r in runner.records],
           "metrics": summary, "masks": diversity, "budget": {k: getattr(opt, k) for k in TIERS["default"]}}
    write_text_atomic(out / f"report{suffix}.json", json.dumps(doc, indent=1, default=str) + "\n")
    path = out / f"report{suffix}.md"
    write_text_atomic(path, "\n".join(lines))
    return path, table


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opt = get_parser().parse_args(argv)
    opt.argv = argv
    tier = resolve(opt)
    out = Path(opt.out)
    if not out.is_absolute():
        out = ROOT / out
    opt.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    if opt.threads:  # every child stage inherits it: torch's default thread count follows OMP_NUM_THREADS
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(opt.threads)
    runner = StageRunner(out)
    print(f"FAST demo ({tier}): {', '.join(opt.categories)} x {len(opt.defect_list)} defect types -> {out}\n"
          f"  full logs: {out / 'logs' / 'console'}/", flush=True)
    t0 = time.perf_counter()
    res = pipeline(opt, tier, runner)
    wall = time.perf_counter() - t0
    report, table = write_report(opt, tier, runner, res, wall)
    print(f"\nDemo finished in {fmt_seconds(wall)}.\n\n{runner.table()}\n\n{table}\n\n"
          f"Report: {report}\nComparison: {family_dir(out, 'comparison', opt.family)}\n"
          f"Pairs: {family_dir(out, 'generated', opt.family) / 'fast'}", flush=True)
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("run_demo.py", main))
