"""Compare anomaly synthesizers by the segmenter they produce: same segmenter, same budget, same test set.

For every category and synthesizer: write (or reuse) image–mask pairs, train the same segmenter for
the same fixed number of steps on those pairs mixed 50/50 with the category's normal images, and
score it on real held-out anomalies (evaluation side of the per-defect split) + test/good.  Writes
``results.json``, ``results.md``, ``bars.png`` and contact sheets (``sheets/<category>/...``).

Synthesizers: pre-generated pairs of trained generators -- ``fast`` (``--fast_dir``), ``stage``
(``--stage_dir``), ``grounding`` (``--grounding_dir``), or any name given as ``--generated NAME=DIR``
(layout of generate_with_mask.py; skipped with a message if absent; refused if their generator
trained on test images, see ``ldm/segmentation/leakage.py``) -- and ``draem``, ``cutpaste``,
``normal`` (baselines generated here).
With ``--layout texture_ad`` and a missing ``--dataset_root`` the embedded dataset is built first.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ldm.data.layouts import index_category, list_categories
from ldm.segmentation.data import EVAL_SET_DESCRIPTION, EvaluationSet, scan_pairs
from ldm.segmentation.leakage import check_leakage
from ldm.segmentation.recipe import SegmenterOptions, training_setup
from ldm.segmentation.train import fit_and_evaluate
from ldm.synthesizers import METHODS
from ldm.synthesizers.common import synthesize_baseline
from ldm.synthesizers.cutpaste import VARIANTS
from ldm.quality.folders import folder_quality
from ldm.quality.pixels import split_strip
from utils.atomic import write_text_atomic
from utils.cli import run_cli
from utils.contact_sheet import prediction_sheet, save_rows
from utils.errors import InputNotFound, UserError
from utils.metrics import METRIC_KEYS, METRIC_LABELS, jsonable, mean_over
from utils.options import option, options_from_args, options_parser
from utils.plots import bar_chart, stack_vertical

GENERATED = ("fast", "stage", "grounding")  # trained generators whose pairs come pre-generated
KNOWN = GENERATED + METHODS
QUALITY_KEYS = ("bg_mae", "bg_psnr", "inside_diff", "ring_diff", "saliency", "diversity_image",
                "diversity_residual", "mask_area")
CHART_KEYS = ("iou_anomaly", "acc_anomaly", "pixel_ap")


@dataclass(kw_only=True)
class CompareOptions(SegmenterOptions):
    """One comparison: the dataset, the synthesizers and their pairs, and (inherited) the segmenter recipe
    every synthesizer's segmenter is trained with. ``size`` None: 128 px on texture-ad, else 256."""

    dataset_root: str = option("data/texture-ad", help="dataset root (default data/texture-ad)")
    layout: str = option("texture_ad", help="mvtec, btad, visa, folder or texture_ad (default)")
    categories: Optional[str] = option(None, help="comma-separated (default: all)")
    synthesizers: str = option("fast,draem,cutpaste,normal", help=f"comma-separated from {', '.join(KNOWN)}")
    fast_dir: Optional[str] = option(None, help="pre-generated FAST pairs: <fast_dir>/<category>/<defect>/image/...")
    stage_dir: Optional[str] = option(None, help="pre-generated STAGE pairs (same layout)")
    grounding_dir: Optional[str] = option(None, help="pre-generated GroundingAnomaly pairs (same layout)")
    generated: Optional[list] = option(
        None, action="append", metavar="NAME=DIR",
        help="more pre-generated synthesizers (e.g. an ablation: fast_farm_off=DIR); repeatable")
    n_samples: int = option(500, help="baseline pairs per defect type (default 500)", parse=int)
    mask_source: str = option("native", choices=("native", "perlin", "real", "augmented"),
                              help="native: DRAEM Perlin masks, CutPaste its own boxes; otherwise the same source "
                                   "for both")
    texture_dir: Optional[str] = option(None, help="DRAEM anomaly sources (default: scikit-image CC0 photos)")
    cutpaste_variant: str = option("patch_scar", choices=VARIANTS,
                                   help="CutPaste variant: patch, scar, patch_scar or mask (default patch_scar)")
    examples: int = option(4, help="test images per contact sheet (default 4)", parse=int)
    out: str = option(help="output folder: results.json, results.md, bars.png, sheets/, runs/, pairs/")
    quiet: bool = option(False, help="no progress bars")
    allow_leak: bool = option(False, help="evaluate pre-generated pairs even if their generator trained on test "
                                          "images (marked in the table)")
    size: Optional[int] = option(None, help="train/test resolution (default 128 with --layout texture_ad, else 256)",
                                 parse=int)


def log(msg: str) -> None:
    print(msg, flush=True)


def fmt(v, scale: float = 100.0, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v * scale:.{digits}f}"


def is_texture_ad(layout: str) -> bool:
    return layout.replace("-", "_").lower() == "texture_ad"


def ensure_dataset(a) -> None:
    """Build texture-AD at ``--dataset_root`` when asked for that layout and it is missing."""
    root = Path(a.dataset_root)
    if root.is_dir() and any(root.iterdir()):
        return
    if not is_texture_ad(a.layout):
        raise InputNotFound(f"--dataset_root not found or empty: {root}")
    from ldm.data.texture_ad import build_texture_ad

    log(f"building the embedded texture-AD dataset at {root} ...")
    build_texture_ad(root, verbose=True)


def baseline_pairs(method: str, a, index, pairs_root: Path) -> tuple[list, str]:
    """Generate (resumably) ``--n_samples`` pairs per defect type of ``index``; returns (records, mask note)."""
    kwargs, kind = {}, a.mask_source
    if method == "draem":
        kind = "perlin" if a.mask_source == "native" else a.mask_source
        if a.texture_dir:
            kwargs["texture_dir"] = a.texture_dir
    elif method == "cutpaste":
        kwargs["variant"] = a.cutpaste_variant if a.mask_source == "native" else "mask"
        kind = "perlin" if a.mask_source == "native" else a.mask_source
    else:
        kind = "perlin"                                               # unused by the normal-only baseline
    note = ""
    for defect in (index.defects or ["perlin"]):
        stats = synthesize_baseline(method, pairs_root, index.train_good, index.category, defect, a.n_samples,
                                    kind, a.size, a.seed, a.layout, a.dataset_root, a.split,
                                    progress=not a.quiet, **kwargs)
        note = stats["mask_source"]
    return scan_pairs(pairs_root, index.category), note


def fingerprint(records, a, synth: str, category: str) -> str:
    keys = ("arch", "segformer_dir", "base_channels", "size", "steps", "batch_size", "lr", "loss", "normal_ratio",
            "val_fraction", "val_every", "split", "seed", "examples")
    doc = {"synth": synth, "category": category, "train": {k: getattr(a, k) for k in keys},
           "pairs": [str(r.image) for r in records], "content": pairs_content(records)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def pairs_content(records) -> str:
    """A hash of every pair's image and mask bytes: pairs drawn again under the same names (another
    generation default, a regenerated folder) are trained on again instead of reusing the old run."""
    digest = hashlib.sha256()
    for r in records:
        for path in (r.image, r.mask):
            digest.update(Path(path).read_bytes() if path is not None else b"-")
    return digest.hexdigest()


def pairs_preview(records, path: Path, n: int = 4) -> None:
    """Contact sheet of a few training pairs (generated | mask | original) as written by the synthesizer."""
    from ldm.data.io import load_image_uint8

    rows, labels = [], []
    step = max(1, len(records) // n)
    for r in records[::step][:n]:
        if r.strip is not None:
            g, m, o = split_strip(load_image_uint8(r.strip))
            rows.append([g, m, o])
        else:
            from ldm.data.io import load_mask
            rows.append([load_image_uint8(r.image), load_mask(r.mask)])
        labels.append(f"{r.defect}/{r.image.stem}")
    if rows:
        save_rows(rows, path, headers=("generated", "mask", "original"), row_labels=labels)


def check_defect_types(records, index, src: Path) -> None:
    """Refuse pre-generated pairs of defect types the evaluated category does not have: pairs of another
    dataset or defect family in the same folder would silently change what the segmenter learns (the
    demo's wild family once doubled FAST's texture-ad training set this way)."""
    foreign = sorted({r.defect for r in records} - set(index.defects))
    if foreign:
        raise UserError(f"{src}: pairs of defect types {', '.join(foreign)} that {index.root} does not have "
                        f"(its defect types: {', '.join(index.defects) or 'none'}); give a folder holding only "
                        "this dataset's pairs")


def generated_dirs(a) -> dict:
    """NAME -> folder of pre-generated pairs, from --fast_dir/--stage_dir/--grounding_dir/--generated."""
    dirs = {n: getattr(a, f"{n}_dir") for n in GENERATED if getattr(a, f"{n}_dir", None)}
    flags = {n: f"--{n}_dir" for n in dirs}
    for spec in a.generated or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--generated {spec!r}: expected NAME=DIR")
        dirs[name], flags[name] = path, f"--generated {name}="
    for name, path in dirs.items():  # a missing category inside is skipped; a missing folder is a typo
        if not Path(path).is_dir():
            raise InputNotFound(f"{flags[name]}{'' if flags[name].endswith('=') else ' '}{path}: folder not found")
    return dirs


def run(a: CompareOptions) -> int:
    """Train and score one segmenter per (category, synthesizer); write results.json/.md, bars.png, sheets/."""
    if a.size is None:
        a = dataclasses.replace(a, size=128 if is_texture_ad(a.layout) else 256)
    if a.n_samples < 1:
        raise UserError(f"--n_samples must be >= 1, got {a.n_samples}")
    synths = [s.strip() for s in a.synthesizers.split(",") if s.strip()]
    pregenerated = generated_dirs(a)
    bad = [s for s in synths if s not in KNOWN and s not in pregenerated]
    if bad or not synths:
        raise UserError(f"--synthesizers: unknown {', '.join(bad) or '(none given)'}; known: {', '.join(KNOWN)}")
    if a.texture_dir and not Path(a.texture_dir).expanduser().is_dir():
        raise InputNotFound(f"--texture_dir not found: {a.texture_dir}")
    cfg, arch_kwargs = training_setup(a)  # every flag checked before the dataset is built or --out written
    ensure_dataset(a)
    available = list_categories(a.layout, a.dataset_root)
    cats = [c.strip() for c in a.categories.split(",")] if a.categories else available
    for c in cats:
        if c not in available:
            raise UserError(f"--categories: unknown category '{c}' under {a.dataset_root}; "
                             f"available: {', '.join(available)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {s: {} for s in synths}
    quality: dict = {s: {} for s in synths}
    skipped: dict = {}
    notes: dict = {}
    timings: dict = {}
    test_sets: dict = {}
    leaks: dict = {}
    t_all = time.perf_counter()
    for cat in cats:
        index = index_category(a.layout, a.dataset_root, cat)
        eval_set = EvaluationSet(index, a.size, a.split)
        test_sets[cat] = {"description": eval_set.description, "n_images": len(eval_set),
                          "n_anomalous": sum(eval_set.labels)}
        for synth in synths:
            t0 = time.perf_counter()
            if synth in GENERATED or synth in pregenerated:
                flag = f"--{synth}_dir" if synth in GENERATED else f"--generated {synth}=DIR"
                src = Path(pregenerated[synth]) / cat if synth in pregenerated else None
                if src is None or not src.is_dir():
                    why = (f"no {flag} given" if src is None else f"{src} not found") + \
                          f" (generate {synth} pairs with generate_with_mask.py and pass {flag})"
                    log(f"[{cat}] {synth}: skipped: {why}")
                    skipped.setdefault(synth, {})[cat] = why
                    continue
                leak = check_leakage(src, eval_set.items, cat, allow=a.allow_leak, what=synth)
                if leak:
                    log(f"[{cat}] {synth}: {leak}")
                    leaks.setdefault(synth, {})[cat] = leak
                records, notes[synth] = scan_pairs(src, cat), "pre-generated (generate_with_mask.py)"
                check_defect_types(records, index, src)
                pairs_root = Path(pregenerated[synth])
                if not records:
                    why = f"no pairs under {src}"
                    log(f"[{cat}] {synth}: skipped: {why}")
                    skipped.setdefault(synth, {})[cat] = why
                    continue
            else:
                # one folder per settings family, so changing --mask_source/--size never resumes stale pairs
                pairs_root = out / "pairs" / f"{synth}_{a.mask_source}_{a.size}px"
                records, notes[synth] = baseline_pairs(synth, a, index, pairs_root)
            t_gen = time.perf_counter() - t0
            sheet_dir = out / "sheets" / cat
            run_dir = out / "runs" / synth / cat
            fp = fingerprint(records, a, synth, cat)
            cached = run_dir / "result.json"
            prev = json.loads(cached.read_text()) if cached.is_file() else None
            if prev and prev.get("fingerprint") == fp:
                log(f"[{cat}] {synth}: reusing finished run {cached}")
                metrics, t_train = prev["metrics"], prev["train_seconds"]
                metrics = {k: (math.nan if v is None else v) for k, v in metrics.items()}
            else:
                log(f"[{cat}] {synth}: training {a.arch} on {len(records)} pairs + {len(index.train_good)} "
                    f"normals for {a.steps} steps")
                res = fit_and_evaluate(records, index.train_good, eval_set, cfg, a.arch, a.size, a.val_fraction,
                                       a.normal_ratio, run_dir / "segmenter.ckpt", arch_kwargs,
                                       n_examples=a.examples, progress=not a.quiet)
                metrics, t_train = res["metrics"], res["train"]["seconds"]
                if res["examples"]:
                    prediction_sheet(res["examples"], sheet_dir / f"{synth}.png",
                                     title=f"{cat} / segmenter trained on {synth} pairs; test: {eval_set.description}")
                pairs_preview(records, sheet_dir / f"pairs_{synth}.png")
                write_text_atomic(cached, json.dumps(jsonable({
                    "fingerprint": fp, "metrics": metrics, "train_seconds": t_train,
                    "synthetic_validation": res["train"]["val"], "n_train_pairs": res["n_pairs"]}), indent=1) + "\n")
            results[synth][cat] = metrics
            defects = sorted({r.defect for r in records})
            q = [folder_quality(Path(pairs_root) / cat / d) for d in defects
                 if (Path(pairs_root) / cat / d / "image-mask-ori").is_dir()]
            quality[synth][cat] = mean_over(q, QUALITY_KEYS) if q else {}
            timings.setdefault(synth, {})[cat] = {"generate_s": t_gen, "train_s": t_train}
            log(f"[{cat}] {synth}: anomaly IoU {fmt(metrics['iou_anomaly'])} | anomaly Acc "
                f"{fmt(metrics['acc_anomaly'])} | pixel AP {fmt(metrics['pixel_ap'])} | AUPRO "
                f"{fmt(metrics['aupro_0.3'])}   [test set: {eval_set.description}]")
    for s in synths:
        if results[s]:
            results[s]["mean"] = {k: v for k, v in mean_over(results[s].values()).items()}
    done = [s for s in synths if results[s]]
    doc = {
        "test_set": EVAL_SET_DESCRIPTION if a.split != "all" else
        "real anomalies NOT held out (split 'all') + test/good",
        "test_sets": test_sets,
        "protocol": {"segmenter": a.arch, "steps": a.steps, "batch_size": a.batch_size, "size": a.size,
                     "lr": a.lr, "loss": a.loss, "normal_ratio": a.normal_ratio, "seed": a.seed,
                     "pairs_per_defect": a.n_samples, "mask_source": a.mask_source, "split": a.split,
                     "model_selection": "none (fixed schedule)" if a.val_fraction <= 0 else
                     "weights of best anomaly IoU on a synthetic validation split (never the test set)",
                     "dataset_root": str(a.dataset_root), "layout": a.layout, "categories": cats},
        "metric_labels": METRIC_LABELS,
        "synthesizers": done, "mask_sources": notes, "results": results, "quality": quality,
        "skipped": skipped, "timings": timings, "total_seconds": time.perf_counter() - t_all,
        "leaks": leaks,
    }
    write_text_atomic(out / "results.json", json.dumps(jsonable(doc), indent=1) + "\n")
    write_text_atomic(out / "results.md", markdown(doc, cats))
    if done:
        charts = []
        for k in CHART_KEYS:
            path = out / f".bars_{k}.png"
            bar_chart(cats + ["mean"], {s: [results[s].get(c, {}).get(k, math.nan) for c in cats + ["mean"]]
                                        for s in done}, path, title=f"{METRIC_LABELS[k]}, % (test: real held-out anomalies + test/good)",
                      ymax=100.0)
            charts.append(path)
        stack_vertical(charts, out / "bars.png")
        for c in charts:
            c.unlink()
    log(f"test set for every number above: {doc['test_set']}")
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bars.png'} and {out / 'sheets'}/ "
        f"in {doc['total_seconds']:.0f} s")
    return 0


def markdown(doc: dict, cats: list[str]) -> str:
    synths, res, pr = doc["synthesizers"], doc["results"], doc["protocol"]
    lines = ["# Synthesizer comparison", "",
             f"**Test set (every number): {doc['test_set']}.** Never used for training or model selection.", "",
             f"Segmenter `{pr['segmenter']}`, {pr['steps']} steps × batch {pr['batch_size']} at {pr['size']} px, "
             f"lr {pr['lr']}, {pr['loss']} loss, {int(pr['normal_ratio'] * 100)} % normal samples, seed {pr['seed']}; "
             f"{pr['pairs_per_defect']} pairs per defect type; split `{pr['split']}`; model selection: "
             f"{pr['model_selection']}.", "",
             "Mask sources: " + ", ".join(f"{s}: {doc['mask_sources'].get(s, '?')}" for s in synths) + ".", ""]
    for s, per in doc.get("leaks", {}).items():
        for c, note in per.items():
            lines += [f"**{s} / {c}: {note}** — its numbers are not test numbers.", ""]
    if not synths:
        return "\n".join(lines + ["No synthesizer produced results."]) + "\n"
    lines += ["## Anomaly IoU / anomaly Acc (%), FAST's \"mIoU / Acc\"", "",
              "| category | " + " | ".join(synths) + " |", "|---|" + "---|" * len(synths)]
    for c in cats + ["mean"]:
        cells = [f"{fmt(res[s].get(c, {}).get('iou_anomaly'))} / {fmt(res[s].get(c, {}).get('acc_anomaly'))}"
                 if c in res[s] else "skipped" for s in synths]
        name = f"**{c}**" if c == "mean" else c
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## All metrics, mean over categories (%)", "",
              "| metric | " + " | ".join(synths) + " |", "|---|" + "---|" * len(synths)]
    for k in METRIC_KEYS:
        lines.append(f"| {METRIC_LABELS[k]} | " + " | ".join(fmt(res[s]["mean"].get(k)) for s in synths) + " |")
    lines += ["", "NaN/undefined values are shown as n/a (see `utils/metrics.py` for the conventions); "
                  "category means skip them.", "",
              "## Generation quality (no segmenter; mean over categories and defect folders)", "",
              "| synthesizer | bg MAE | bg PSNR (dB) | inside diff | ring diff | saliency | diversity (image) | "
              "diversity (residual) |", "|---|---|---|---|---|---|---|---|"]
    for s in synths:
        q = mean_over(doc["quality"][s].values(), QUALITY_KEYS)
        lines.append(f"| {s} | {fmt(q['bg_mae'], 1, 4)} | {fmt(q['bg_psnr'], 1, 1)} | {fmt(q['inside_diff'], 1, 3)} | "
                     f"{fmt(q['ring_diff'], 1, 3)} | {fmt(q['saliency'], 1, 3)} | {fmt(q['diversity_image'], 1, 3)} | "
                     f"{fmt(q['diversity_residual'], 1, 3)} |")
    if doc["skipped"]:
        lines += ["", "## Skipped", ""]
        for s, per in doc["skipped"].items():
            for c, why in per.items():
                lines.append(f"- {s} / {c}: {why}")
    lines += ["", "Pictures: `bars.png`; `sheets/<category>/<synthesizer>.png` (test image | GT | probability | "
                  "prediction) and `sheets/<category>/pairs_<synthesizer>.png` (training pairs).", ""]
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    return options_parser(CompareOptions, __doc__)


def main(argv=None) -> int:
    """``compare_synthesizers.py``: parse the flags and :func:`run` the comparison."""
    return run(options_from_args(CompareOptions, get_parser().parse_args(argv)))


def cli(argv=None) -> int:
    """``scripts/compare_synthesizers.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("compare_synthesizers.py", lambda: main(argv))
