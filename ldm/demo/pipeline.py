"""The demo's pipeline: every stage in order, each a child process run by ``ldm.demo.stages.StageRunner``.

Dataset → autoencoder → LDM (the backbone, always texture-ad) → one generator per (method, texture, defect
type) → its pairs → the segmenter comparison per seed → (``--ablations``) the ablation variants and the
mask models' diversity reports; then ``ldm.demo.report`` writes ``report.md``. With ``--pipeline_seeds N``
all of it runs N times with other seeds (``ldm.demo.evidence``) and the evidence is summarised.
``main`` is ``scripts/run_demo.py``.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from ldm.data.texture_ad import FAMILIES
from ldm.demo.evidence import (DEMO_CONFIGS, config_digest, generation_defaults, merge_segmenter_seeds,
                               pipeline_out, segmenter_seeds, train_seed_args, write_evidence)
from ldm.demo.report import REPORT_METRICS, contrast_rows, load_results, write_report
from ldm.demo.stages import StageRunner, fingerprint, slug
from ldm.demo.tiers import TEXTURES, ablation_categories, family_dir, family_suffix, get_parser, resolve
from utils.cli import run_cli
from utils.progress import fmt_seconds

ROOT = Path(__file__).resolve().parents[2]
MASK_CONFIG = "configs/grounding/masks-texture-demo.yaml"


def last_step(ckpt: Path) -> int:
    from utils.safe_load import safe_load

    return int(safe_load(ckpt).get("global_step", 0))


def trained(ckpt: Path, steps: int) -> bool:
    try:
        return ckpt.is_file() and last_step(ckpt) >= steps
    except Exception:  # a half-written or foreign file: train (resume) again
        return False


def count_files(folder: Path, pattern: str = "*.png") -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def py() -> list[str]:
    return [sys.executable]


def pairs_identity(folder: Path) -> str:
    """A fingerprint of every synthesis record (``synthesis.json``) under a pairs folder: part of a
    comparison's settings, so pairs drawn again are evaluated again."""
    import hashlib

    digest = hashlib.sha256()
    for record in sorted(Path(folder).rglob("synthesis.json")):
        digest.update(str(record.relative_to(folder)).encode() + b"\0" + record.read_bytes())
    return digest.hexdigest()[:16]


class Demo:
    """The stages of one pipeline seed (``ldm.demo.evidence``): seed 0 writes into ``--out``, seed s > 0 into
    ``--out/pipeline-seed-<s>``; all read the dataset under ``--out/data``."""

    def __init__(self, opt, tier: str, runner: StageRunner, seed: int = 0):
        self.opt, self.tier, self.runner, self.seed = opt, tier, runner, seed
        self.root = Path(opt.out)
        self.out = pipeline_out(self.root, seed)
        self.backbone_data = self.data_root("texture-ad")   # autoencoder and LDM: always texture-ad
        self.suffix = family_suffix(opt.family)
        self.data = self.data_root(opt.family)
        self.common = ["--gpus", opt.gpus] if opt.gpus else []  # --threads reaches children as OMP_NUM_THREADS
        self.lineage: dict[str, str] = {}  # "<logdir>/" of each run trained so far -> its settings' fingerprint

    def data_root(self, family: str) -> Path:
        return family_dir(self.root / "data", "texture-ad", family)

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
        """Train (or resume) run ``name`` of ``config``. Its settings hold the config's ``model`` section
        (``config_digest``) and the lineage of every earlier run it reads (a checkpoint named in its arguments):
        a run finished with other settings -- a release that changed a model, or an upstream model trained
        again -- is deleted and trained afresh, never resumed."""
        logdir = self.out / "logs" / name
        ckpt = logdir / "checkpoints" / "last.ckpt"
        extra_args = [*extra_args, *train_seed_args(self.seed)]
        settings = {"config": config, "steps": steps, "overrides": overrides, "extra": list(extra_args),
                    "model": config_digest(config), "reads": self.reads([*overrides, *extra_args])}
        if self.runner.stale(f"train {name}", settings) and logdir.is_dir():
            shutil.rmtree(logdir)
        if ckpt.is_file():
            cmd = py() + ["main.py", "-r", str(logdir), "-t", "--max_steps", str(steps), *self.common,
                          *train_seed_args(self.seed)]
        else:
            cmd = py() + ["main.py", "--base", config, "-t", "-l", str(self.out / "logs"), "-lf", name,
                          "--max_steps", str(steps), *self.common, *extra_args, *overrides]
        self.runner.run(f"train {name}", cmd, settings, total=steps, unit="steps", cwd=ROOT,
                        done=lambda: trained(ckpt, steps))
        self.lineage[f"{logdir}{os.sep}"] = fingerprint(settings)
        return ckpt

    def reads(self, args) -> list[str]:
        """The lineage fingerprints of the runs trained earlier in this pipeline whose folder ``args`` name."""
        return [fp for logdir, fp in self.lineage.items() if any(logdir in f"{a}{os.sep}" for a in args)]

    def fast(self, ldm: Path, category: str, defect: str, method: str = "fast", variant: str = "",
             overrides: tuple = ()) -> Path:
        """Train one generator (``fast``, ``stage`` or ``grounding``: same backbone, data and budget) per
        defect type; ``variant`` names an ablation trained with config ``overrides``."""
        from ldm.modules.encoders.tokenizer import load_bert_tokenizer
        from ldm.train_all import init_word_for

        run = f"{method}{'-' + variant if variant else ''}/{category}+{defect}"
        word = init_word_for(defect, load_bert_tokenizer("tiny"), "anomaly", "texture_ad", category)
        extra = ["--actual_resume", str(ldm), "--mvtec_path", str(self.data), "--category", category,
                 "--defect", defect, "--init_word", word or "anomaly"]
        self.train(run, DEMO_CONFIGS[method], self.opt.fast_steps,
                   [f"data.params.train.params.root={self.data}", *overrides], extra)
        return self.out / "logs" / run / "checkpoints"

    def grounding_texture(self, ldm: Path, category: str, variant: str, overrides: tuple = ()) -> Path:
        """One GroundingAnomaly model of ``category`` holding every defect type of ``--defects`` (the paper's
        setting, where the semantic map tells the types apart), trained as long as the per-defect models
        together."""
        run = f"grounding-{variant}/{category}"
        self.train(run, DEMO_CONFIGS["grounding"], self.opt.fast_steps * len(self.opt.defect_list),
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
        settings = {"pt": str(mask_run), "mask_steps": self.opt.mask_steps, "n": n,
                    "reads": self.reads([str(mask_run)])}
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
                      "--n_samples", str(n), "--batch_size", "50", *extra_args,
                      *(["--seed", str(self.seed)] if self.seed else [])]
        settings = {"pt": str(pt_path), "sampler": sampler, "steps": steps, "farm": farm_mode, "n": n,
                    "fast_steps": self.opt.fast_steps, "extra": list(extra_args),
                    **({"seed": self.seed} if self.seed else {}), "defaults": generation_defaults(),
                    "reads": self.reads([str(pt_path), *extra_args])}
        name = f"generate {label or sampler + '-' + str(steps)} {category}+{defect}"
        if self.runner.stale(name, settings) and folder.is_dir():
            shutil.rmtree(folder)  # pairs of other settings: generate_with_mask.py would refuse to mix them
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
                    "seg_steps": steps, "fast_steps": self.opt.fast_steps, "ldm_steps": self.opt.ldm_steps,
                    "pairs": {method: pairs_identity(folder) for method, folder in dirs.items()}}
        self.runner.run(name, cmd, settings, total=runs * steps, unit="segmenter steps", cwd=ROOT,
                        progress=progress, done=lambda: (out / "results.json").is_file())
        return out / "results.json"


# ------------------------------------------------------------------------------------------ pipeline
# sampler and its label per synthesizer; every one trains per defect type on the same backbone
METHODS = {"fast": ("aias", "AIAS"), "stage": ("stage", "STAGE"), "grounding": ("aias", "GroundingAnomaly")}


def pipeline(opt, tier: str, runner: StageRunner, seed: int = 0) -> dict:
    """Every stage of pipeline seed ``seed``; the ablations and mask models run with seed 0 only."""
    demo = Demo(opt, tier, runner, seed)
    if seed == 0:
        demo.dataset()
        if opt.family != "texture-ad":
            demo.dataset(opt.family)
    root = [f"data.params.train.params.root={demo.backbone_data}"]
    ae = demo.train("autoencoder", DEMO_CONFIGS["autoencoder"], opt.ae_steps, root)
    ldm = demo.train("ldm", DEMO_CONFIGS["ldm"], opt.ldm_steps,
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
    for seg_seed in segmenter_seeds(seed, opt.seeds):
        sub = comparison if opt.seeds == 1 else comparison / f"seed-{seg_seed}"
        results[seg_seed] = demo.compare(demo.compare_name(f"seed {seg_seed}"), sub, opt.categories, synths,
                                         seg_seed, dirs, opt.n_samples)
    ablations, masks = {}, {}
    if opt.ablations and seed == 0:
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


def main(argv=None) -> int:
    """Resolve the tier, run the pipeline (``--threads`` reaches every stage as ``OMP_NUM_THREADS``), write the
    report and print where everything is."""
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
    print(f"FAST demo ({tier}): {', '.join(opt.categories)} x {len(opt.defect_list)} defect types"
          + (f" x {opt.pipeline_seeds} pipeline seeds" if opt.pipeline_seeds > 1 else "") + f" -> {out}\n"
          f"  full logs: {out / 'logs' / 'console'}/", flush=True)
    t0 = time.perf_counter()
    res = pipeline(opt, tier, runner)
    evidence = None
    if opt.pipeline_seeds > 1:
        per_seed = {0: merge_segmenter_seeds(load_results(res["results"]))}
        contrast = {0: contrast_rows(opt, out)}
        for seed in range(1, opt.pipeline_seeds):
            print(f"\npipeline seed {seed} of {opt.pipeline_seeds - 1} -> {pipeline_out(out, seed)}", flush=True)
            seed_res = pipeline(opt, tier, StageRunner(pipeline_out(out, seed)), seed)
            per_seed[seed] = merge_segmenter_seeds(load_results(seed_res["results"]))
            contrast[seed] = contrast_rows(opt, pipeline_out(out, seed), data_out=out)  # one dataset for all seeds
        evidence = write_evidence(opt, tier, per_seed, dict(REPORT_METRICS), record=opt.record_evidence,
                                  contrast=contrast)
    wall = time.perf_counter() - t0
    report, table, verdict = write_report(opt, tier, runner, res, wall, evidence)
    print(f"\nDemo finished in {fmt_seconds(wall)}.\n\n{runner.table()}\n\n{table}\n\n{verdict}\n\n"
          f"Report: {report}\nComparison: {family_dir(out, 'comparison', opt.family)}\n"
          f"Pairs: {family_dir(out, 'generated', opt.family) / 'fast'}"
          + (f"\nEvidence: {evidence[0]}" if evidence else ""), flush=True)
    return 0



def cli(argv=None) -> int:
    """``scripts/run_demo.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("run_demo.py", lambda: main(argv))
