"""The demo's evidence tier: the whole pipeline once per *pipeline seed*, then FAST against the baselines
with paired intervals over those seeds (``ldm.segmentation.evidence``).

Pipeline seed 0 is the default demo itself (its folders, its seeds); pipeline seed s > 0 retrains every
learned part with other seeds in ``<out>/pipeline-seed-<s>/`` on the same dataset: the autoencoder, the
LDM and every generator (``main.py --seed 23 + s``), generation (``--seed s``), the baselines and the
segmenter (the comparison's ``--seed``). The result is ``<out>/evidence<suffix>.json`` and ``.md``;
``--record_evidence`` also writes it to ``docs/evidence/<family>.json``, the record a default demo on
any machine compares its single run with.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Mapping, Optional

from ldm.demo.tiers import family_suffix
from ldm.quality.contrast import CONTRAST_CEILING, CONTRAST_FLOOR
from ldm.segmentation.evidence import evidence_markdown, single_run_verdict, summarise
from utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
RECORD_DIR = ROOT / "docs" / "evidence"
TRAIN_SEED = 23          # main.py's default --seed: pipeline seed s trains with TRAIN_SEED + s


def pipeline_out(out: Path, seed: int) -> Path:
    """Where pipeline seed ``seed`` writes: ``out`` itself for seed 0 (the default demo), else
    ``out/pipeline-seed-<seed>``."""
    return Path(out) if seed == 0 else Path(out) / f"pipeline-seed-{seed}"


def train_seed_args(seed: int) -> list[str]:
    """``main.py`` arguments of pipeline seed ``seed`` (none for seed 0: the default demo's commands)."""
    return [] if seed == 0 else ["--seed", str(TRAIN_SEED + seed)]


def segmenter_seeds(pipeline_seed: int, per_pipeline: int) -> list[int]:
    """The comparison seeds (segmenter initialisation, baseline synthesis) of one pipeline seed; seed 0's are
    0 … per_pipeline − 1, as in the default demo, and no two pipeline seeds share one."""
    return [pipeline_seed * per_pipeline + j for j in range(per_pipeline)]


def merge_segmenter_seeds(docs: list[dict]) -> dict:
    """One comparison document per pipeline seed: each value is the mean over that seed's segmenter seeds."""
    if len(docs) == 1:
        return docs[0]
    merged = {k: v for k, v in docs[0].items() if k != "results"}
    merged["results"] = {}
    for synth in docs[0].get("results", {}):
        scopes = docs[0]["results"][synth]
        merged["results"][synth] = {}
        for scope, metrics in scopes.items():
            if not isinstance(metrics, Mapping):
                continue
            out = {}
            for key in metrics:
                vals = [d["results"][synth][scope][key] for d in docs
                        if isinstance(d.get("results", {}).get(synth, {}).get(scope, {}).get(key), (int, float))]
                if vals:
                    out[key] = statistics.fmean(vals)
            merged["results"][synth][scope] = out
    return merged


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's name: the first ``model name`` of ``cpuinfo`` (Linux), else ``platform.processor()``,
    else 'unknown CPU' (a figure should say where it ran; ``platform.processor()`` is empty on most Linux)."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Where a figure ran, e.g. '2 CPU cores (x86_64, AMD EPYC)'."""
    return f"{os.cpu_count()} CPU cores ({platform.machine()}, {cpu_model(cpuinfo)})"


BUDGET_KEYS = ("ae_steps", "ldm_steps", "fast_steps", "n_samples", "seg_steps", "aias_steps")


def run_budget(opt) -> dict:
    """The step and pair budgets of a run: an evidence record speaks only for runs with the same budget."""
    return {k: getattr(opt, k) for k in BUDGET_KEYS}


AGREEMENT_NOTE = ("Colour agreement: the generated defects' mean signed colour shift (inside − outside, per channel) "
                  "projected on the real defects', as a share of it (100 %: the real defects' change of colour; near "
                  "0: a change in another colour, such as a grey patch where real defects darken; negative: the "
                  "opposite).")


def generation_defaults() -> dict:
    """The defaults of every pixel-changing generation option (``ldm.generation.GenerationOptions``), as JSON
    reads them back: part of a generate stage's settings, so a release that changes how pairs are drawn
    regenerates them, and of an evidence record, which speaks only for pairs drawn the same way."""
    from dataclasses import MISSING

    from ldm.generation import GenerationOptions
    from utils.options import field_default, fields_with

    defaults = {f.name: field_default(f) for f in fields_with(GenerationOptions, "pixel")}
    return json.loads(json.dumps({name: value for name, value in defaults.items() if value is not MISSING}))


# the configs the demo trains with, by role: the backbone (autoencoder, LDM) and one per generator method
DEMO_CONFIGS = {"autoencoder": "configs/tiny/autoencoder.yaml", "ldm": "configs/tiny/ldm.yaml",
                "fast": "configs/fast/texture-demo.yaml", "stage": "configs/stage/texture-demo.yaml",
                "grounding": "configs/grounding/texture-demo.yaml"}


def model_section(config: str) -> dict:
    """The resolved ``model`` section of a YAML config (path relative to the repository) as plain containers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / config).model, resolve=True)


def config_digest(config: str) -> str:
    """A fingerprint of ``model_section(config)``: what a checkpoint trained with it is, whatever the data,
    steps or logging. Part of a demo train stage's settings, so a release that changes a model retrains it
    instead of resuming the old one."""
    from ldm.demo.stages import fingerprint

    return fingerprint(model_section(config))


def demo_models() -> dict:
    """``config_digest`` of every config in ``DEMO_CONFIGS``, by role."""
    return {role: config_digest(config) for role, config in DEMO_CONFIGS.items()}


def record_conditions(opt) -> dict:
    """What an evidence record speaks for, as stored in it: the run's ``budget``, its pairs' ``generation``
    defaults and the ``models`` it trained (``demo_models``). A single run is judged only against a record
    with the same conditions."""
    return {"budget": run_budget(opt), "generation": generation_defaults(), "models": demo_models()}


def share_cell(value: Optional[float], below: str, above: str = "too strong") -> str:
    """A share as a table cell: ``n/a`` when unknown, ``" (<below>)"`` appended under ``CONTRAST_FLOOR`` and
    ``" (<above>)"`` over ``CONTRAST_CEILING``."""
    if value is None:
        return "n/a"
    note = below if value < CONTRAST_FLOOR else above if value > CONTRAST_CEILING else ""
    return f"{value:.0%}" + (f" ({note})" if note else "")


def _over_seeds(values: Mapping[int, float]) -> tuple[float, float]:
    """The mean and the lowest of one measure over pipeline seeds."""
    return round(statistics.fmean(values.values()), 3), min(values.values())


def summarise_contrast(per_seed: Mapping[int, list[dict]]) -> list[dict]:
    """Per generator and (texture, defect type): its contrast ratio (generated / real, ``report.contrast_rows``)
    and its colour agreement (``ldm.quality.contrast.shift_agreement``) in every pipeline seed, their means and
    lowest values. A type counts as showing only if even its lowest seed reaches ``CONTRAST_FLOOR`` (one
    retrained pipeline that draws invisible cracks is a bug a user can hit), and as the real defects' colour
    only if its lowest agreement does."""
    by_key: dict[tuple, dict] = {}
    for seed, rows in sorted(per_seed.items()):
        for r in rows:
            if r.get("ratio") is None:
                continue
            entry = by_key.setdefault((r["method"], r["category"], r["defect"]), {"ratios": {}, "agreements": {}})
            entry["ratios"][seed] = r["ratio"]
            if r.get("agreement") is not None:
                entry["agreements"][seed] = r["agreement"]
    out = []
    for (method, category, defect), entry in by_key.items():
        mean, lowest = _over_seeds(entry["ratios"])
        row = {"method": method, "category": category, "defect": defect, "ratios": entry["ratios"],
               "mean": mean, "lowest": lowest, "shows": lowest >= CONTRAST_FLOOR}
        if entry["agreements"]:
            mean, lowest = _over_seeds(entry["agreements"])
            row.update(agreements=entry["agreements"], agreement_mean=mean, agreement_lowest=lowest,
                       same_colour=lowest >= CONTRAST_FLOOR)
        out.append(row)
    return out


def contrast_markdown(rows: list[dict], seeds: list[int]) -> str:
    """``summarise_contrast`` as a table: the ratio per pipeline seed, the mean and the lowest, and the colour
    agreement's mean and lowest."""
    if not rows:
        return ""
    lines = ["## Do the generated defects show, in every pipeline seed?", "",
             "Generated defect contrast as a share of the real defects' (|mean inside − mean outside|, 0-255 grey "
             f"levels, `ldm/quality/contrast.py`); a type shows when its lowest seed reaches {CONTRAST_FLOOR:.0%}; "
             f"over {CONTRAST_CEILING:.0%} it is much stronger than the real defects. "
             + AGREEMENT_NOTE,
             "", "| generator | texture / defect | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | lowest | colour agreement, mean | lowest |", "|---|---|" + "---|" * (len(seeds) + 4)]
    for r in rows:
        cells = [f"{r['ratios'][s]:.0%}" if s in r["ratios"] else "n/a" for s in seeds]
        agree = [f"{r['agreement_mean']:.0%}" if "agreement_mean" in r else "n/a",
                 share_cell(r.get("agreement_lowest"), "off-colour")]
        lines.append(f"| {r['method']} | {r['category']}/{r['defect']} | " + " | ".join(cells)
                     + f" | {share_cell(r['mean'], below='')} | {share_cell(r['lowest'], 'faint')} | "
                     + " | ".join(agree) + " |")
    return "\n".join(lines) + "\n"


def write_evidence(opt, tier: str, per_seed: Mapping[int, dict], metric_labels: Mapping[str, str],
                   record: bool = False, contrast: Optional[Mapping[int, list[dict]]] = None) -> tuple[Path, dict]:
    """Summarise ``per_seed`` (pipeline seed → merged comparison document) and ``contrast`` (pipeline seed →
    ``report.contrast_rows``) into ``<out>/evidence<suffix>.json`` and ``.md`` (and the family's record under
    ``docs/evidence/`` when ``record``)."""
    doc = summarise(per_seed, metrics=[k for k in metric_labels])
    doc["contrast"] = summarise_contrast(contrast or {})
    doc.update(family=opt.family, tier=tier, machine=machine(), finished=time.strftime("%Y-%m-%d %H:%M"),
               command="bash scripts/demo.sh " + " ".join(opt.argv),
               **record_conditions(opt))
    suffix = family_suffix(opt.family)
    out = Path(opt.out)
    text = json.dumps(doc, indent=1, default=str) + "\n"
    path = out / f"evidence{suffix}.json"
    write_text_atomic(path, text)
    head = [f"# Evidence over {len(doc['seeds'])} pipeline seeds — {opt.family}", "",
            f"Machine: {doc['machine']}. Command: `{doc['command']}`. Finished {doc['finished']}.", "",
            "Every pipeline seed retrains the autoencoder, the LDM, every generator, the baselines' synthesis and "
            "the segmenter with its own seeds, on the same dataset and split.", "", ""]
    write_text_atomic(out / f"evidence{suffix}.md", "\n".join(head) + evidence_markdown(doc, metric_labels)
                      + "\n" + contrast_markdown(doc["contrast"], list(doc["seeds"])))
    if record:
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        write_text_atomic(RECORD_DIR / f"{opt.family}.json", text)
    return path, doc


def last_evidence(out: Path, family: str, conditions: Optional[Mapping] = None) -> Optional[tuple[dict, str]]:
    """The evidence a single run is judged against: this output folder's own evidence run if it has one, else
    the family's record in ``docs/evidence/``; with a short description of where it ran. A record whose
    ``conditions`` (``record_conditions``: budgets, generation defaults, models) differ from the given ones is
    passed over, and so is a record older than one of their keys: its spread says nothing about this run."""
    wanted = json.loads(json.dumps(dict(conditions or {})))  # as a record reads them back (tuples -> lists)
    for path in (Path(out) / f"evidence{family_suffix(family)}.json", RECORD_DIR / f"{family}.json"):
        if path.is_file():
            doc = json.loads(path.read_text())
            if any(doc.get(key) != value for key, value in wanted.items()):
                continue
            where = f"{len(doc.get('seeds', []))} pipeline seeds on {doc.get('machine', 'an unknown machine')}, " \
                    f"{doc.get('finished', 'undated')}"
            return doc, where
    return None


def verdict_for(results_doc: dict, out: Path, family: str, conditions: Optional[Mapping] = None) -> str:
    """The single-run verdict (``single_run_verdict``) of ``results_doc`` against ``last_evidence`` with the
    same ``conditions``."""
    found = last_evidence(out, family, conditions)
    return single_run_verdict(results_doc, found[0] if found else None, found[1] if found else "")
