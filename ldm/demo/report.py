"""The demo's report: ``<out>/report<suffix>.md`` and ``.json`` -- stage times and peak memory, the
comparison's metrics as mean ± std over segmenter seeds, whether the ranking is more than the noise of
training the pipeline (``ldm.demo.evidence``), how strongly the generated defects stand out next to the
real ones (``ldm.quality.contrast``), pictures, sampler speed, ablations and the generated masks' diversity.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import time
from pathlib import Path

from ldm.demo.evidence import (AGREEMENT_NOTE, contrast_markdown, machine, merge_segmenter_seeds, record_conditions,
                               share_cell, verdict_for)
from ldm.demo.stages import StageRunner
from ldm.demo.tiers import TIERS, family_dir, family_suffix
from ldm.quality.contrast import CONTRAST_CEILING, CONTRAST_FLOOR
from ldm.segmentation.evidence import POOLED, describe_paired, evidence_markdown
from utils.atomic import write_text_atomic
from utils.progress import fmt_seconds

REPORT_METRICS = (("iou_anomaly", "anomaly IoU"), ("acc_anomaly", "anomaly recall"), ("pixel_ap", "pixel AP"),
                  ("pixel_f1_max", "F1-max"), ("pixel_auroc", "pixel AUROC"), ("aupro_0.3", "AUPRO@0.3"))


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


def contrast_rows(opt, out: Path, data_out: Path | None = None) -> list[dict]:
    """Per generator and (texture, defect type): the mean contrast of its pairs under ``out`` and of the real
    defects of that type (the dataset under ``data_out``, default ``out``) at the pairs' size
    (``ldm.quality.contrast``), their ratio, and how much of the real defects' colour change the generated
    ones make (``shift_agreement``)."""
    from ldm.data.io import image_size
    from ldm.data.layouts import index_category
    from ldm.pairs import read_pairs_folder
    from ldm.quality.contrast import contrast_ratio, pairs_contrast, real_contrast, shift_agreement

    data = family_dir(Path(data_out or out) / "data", "texture-ad", opt.family)
    generated = family_dir(out, "generated", opt.family)
    rows = []
    for cat in opt.categories:
        index = None
        for defect in opt.defect_list:
            real = None
            for method in ("fast", "stage", "grounding"):
                folder = generated / method / cat / defect
                if not folder.is_dir():
                    continue
                found = read_pairs_folder(folder)
                if not found.pairs:
                    continue
                if real is None:
                    index = index or index_category("mvtec", data, cat)
                    real = real_contrast(index.samples(defect), image_size(found.pairs[0].image))
                gen = pairs_contrast(folder)
                rows.append({"method": method, "category": cat, "defect": defect, "generated": gen["contrast"],
                             "pairs": gen["n"], "real": real["contrast"], "real_defects": real["n"],
                             "ratio": contrast_ratio(gen, real), "shift": gen["shift"], "real_shift": real["shift"],
                             "agreement": shift_agreement(gen, real)})
    return rows


def contrast_section(rows: list[dict]) -> list[str]:
    lines = ["## Do the generated defects show?", "",
             "Defect contrast: |mean inside the mask − mean outside| over the colour channels, in 0-255 grey "
             "levels (`ldm/quality/contrast.py`), averaged over each generator's pairs and over all real defects "
             "of the type at the same size. A ratio under "
             f"{CONTRAST_FLOOR:.0%} means the generated defects are much fainter than real ones, over "
             f"{CONTRAST_CEILING:.0%} much stronger. " + AGREEMENT_NOTE, "",
             "| generator | texture / defect | generated | real | ratio | colour agreement |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio, agree = share_cell(r["ratio"], "faint"), share_cell(r.get("agreement"), "off-colour")
        gen = "n/a" if r["generated"] is None else f"{r['generated']:.1f}"
        real = "n/a" if r["real"] is None else f"{r['real']:.1f}"
        lines.append(f"| {r['method']} | {r['category']}/{r['defect']} | {gen} ({r['pairs']} pairs) | {real} "
                     f"({r['real_defects']}) | {ratio} | {agree} |")
    return lines + [""]


def noise_section(opt, out: Path, docs: list[dict], evidence) -> tuple[list[str], str]:
    """The report's section on noise, and the one-line verdict the console prints: this run's evidence
    (``--pipeline_seeds``), or this single run judged against the last evidence run on record."""
    lines = ["## Is this ranking more than noise?", ""]
    if evidence is not None:
        path, doc = evidence
        p = doc["paired"].get(POOLED)
        verdict = (f"Evidence over {len(doc['seeds'])} pipeline seeds: {describe_paired(p)} anomaly IoU points, "
                   + ("FAST ahead." if p["lo"] > 0 else "FAST behind." if p["hi"] < 0 else
                      "the interval includes zero: inside the noise.")) if p else "No paired evidence."
        lines += [f"{verdict} Every pipeline seed retrains the autoencoder, the LDM, every generator, the "
                  f"baselines' synthesis and the segmenter (`{rel(path, out)}`).", "",
                  evidence_markdown(doc, dict(REPORT_METRICS)), "",
                  contrast_markdown(doc.get("contrast", []), list(doc["seeds"]))]
        return lines, verdict
    if not docs:
        return [], ""
    verdict = verdict_for(merge_segmenter_seeds(docs), out, opt.family, record_conditions(opt))
    return lines + [verdict, ""], verdict


def write_report(opt, tier: str, runner: StageRunner, res: dict, wall: float, evidence=None) -> tuple:
    """Write ``report<suffix>.md`` and ``.json`` of this run (``evidence``: ``(path, document)`` of this run's
    evidence tier, if any); returns (the report's path, the metrics table, the noise verdict)."""
    out = Path(opt.out)
    suffix = family_suffix(opt.family)
    comparison = family_dir(out, "comparison", opt.family)
    docs = load_results(res["results"])
    table, summary = metrics_table(docs)
    n_seeds = len(docs)
    cmd = " ".join(["bash scripts/demo.sh", *map(shlex.quote, opt.argv)])  # what was typed, every flag
    threads = opt.threads or os.cpu_count()
    lines = [f"# FAST embedded demo — {tier} run" + (f", {opt.family} defect family" if suffix else ""), "",
             f"Command: `{cmd}` (scripts/run_demo.py). Machine: {machine()}, "
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
    noise, verdict = noise_section(opt, out, docs, evidence)
    lines += noise
    contrast = contrast_rows(opt, out)
    if contrast:
        lines += contrast_section(contrast)
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
           "metrics": summary, "masks": diversity, "budget": {k: getattr(opt, k) for k in TIERS["default"]},
           "verdict": verdict, "contrast": contrast}
    write_text_atomic(out / f"report{suffix}.json", json.dumps(doc, indent=1, default=str) + "\n")
    path = out / f"report{suffix}.md"
    write_text_atomic(path, "\n".join(lines))
    return path, table, verdict

