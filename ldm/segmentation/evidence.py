"""Evidence over whole-pipeline seeds: is FAST's lead larger than the noise of training it?

A *pipeline seed* retrains everything that learns -- the autoencoder, the LDM, every synthesizer (FAST,
STAGE, GroundingAnomaly, and the seeded baselines) and the segmenter -- so the spread between pipeline
seeds is what another machine's rounding can move a result by. For each pipeline seed s there is one
comparison (``results.json`` of ``ldm.segmentation.compare``: synthesizer → texture → metric).

Per synthesizer, texture and metric the table gives the mean ± sample standard deviation over seeds.
The headline is the *paired* difference, seed by seed, between FAST and the best baseline (the
baseline with the highest mean over seeds in that scope):

    d_s = FAST_s − best_s,    d̄ = mean_s d_s,    95 % interval = d̄ ± t(0.975, n−1) · sd(d) / √n

Pairing removes what a seed does to every synthesizer alike (a good or bad backbone, an easy test
split). "Pooled" first averages the textures within each seed (the textures of one seed share a
backbone, so they are not independent), then applies the same interval over seeds.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

from scipy.stats import t as student_t

from utils.errors import UserError

FAST = "fast"
BASELINES = ("draem", "cutpaste")          # the methods FAST must beat; stage/grounding are reported beside them
POOLED = "pooled"
HEADLINE_METRIC = "iou_anomaly"


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with their sample std and a two-sided ``level`` Student-t interval."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict:
        return asdict(self)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """``mean ± t((1+level)/2, n−1) · std / √n``; one value gives an unbounded interval (no spread known)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        raise UserError("no values to summarise")
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return Interval(mean, math.nan, -math.inf, math.inf, 1, level)
    sd = statistics.stdev(vals)
    half = float(student_t.ppf((1 + level) / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))
    return Interval(mean, sd, mean - half, mean + half, len(vals), level)


def textures_of(doc: Mapping) -> list[str]:
    """The textures (categories) a comparison document holds results for: every key of its first
    synthesizer's results but the ``mean`` over them."""
    results = doc.get("results", {})
    first = next(iter(results.values()), {})
    return [c for c in first if c != "mean"]


def _value(doc: Mapping, synth: str, scope: str, metric: str) -> Optional[float]:
    v = doc.get("results", {}).get(synth, {}).get(scope, {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _per_seed(runs: Mapping[int, Mapping], synth: str, scope: str, metric: str, textures: Sequence[str]) -> dict:
    """seed → value of ``synth`` in ``scope`` (a texture, or POOLED: the mean over ``textures``)."""
    out = {}
    for seed, doc in runs.items():
        if scope == POOLED:
            vals = [_value(doc, synth, tex, metric) for tex in textures]
            if vals and all(v is not None for v in vals):
                out[seed] = statistics.fmean(vals)
        else:
            v = _value(doc, synth, scope, metric)
            if v is not None:
                out[seed] = v
    return out


def summarise(runs: Mapping[int, Mapping], metrics: Sequence[str] = (HEADLINE_METRIC,), level: float = 0.95) -> dict:
    """The evidence document of ``runs`` (pipeline seed → comparison ``results.json``).

    ``{"seeds", "textures", "synthesizers", "table": {synth: {scope: {metric: Interval dict}}},
    "paired": {scope: {"baseline", "metric", ...Interval dict}}}``, scopes = the textures and POOLED.
    """
    if not runs:
        raise UserError("no pipeline-seed comparisons to summarise")
    docs = list(runs.values())
    synths = [s for s in docs[0].get("synthesizers", []) if all(s in d.get("results", {}) for d in docs)]
    textures = [c for c in textures_of(docs[0]) if all(c in textures_of(d) for d in docs)]
    if FAST not in synths or not any(b in synths for b in BASELINES):
        raise UserError(f"the comparisons must hold '{FAST}' and one of {', '.join(BASELINES)}; they hold "
                        f"{', '.join(synths) or 'nothing'}")
    scopes = [*textures, POOLED]
    table: dict = {}
    for s in synths:
        for scope in scopes:
            for m in metrics:
                vals = _per_seed(runs, s, scope, m, textures)
                if vals:
                    table.setdefault(s, {}).setdefault(scope, {})[m] = t_interval(list(vals.values()), level).as_dict()
    paired = {}
    for scope in scopes:
        fast = _per_seed(runs, FAST, scope, HEADLINE_METRIC, textures)
        candidates = {b: _per_seed(runs, b, scope, HEADLINE_METRIC, textures) for b in BASELINES if b in synths}
        candidates = {b: v for b, v in candidates.items() if v}
        if not fast or not candidates:
            continue
        best = max(candidates, key=lambda b: statistics.fmean(candidates[b].values()))
        seeds = sorted(set(fast) & set(candidates[best]))
        diffs = [fast[s] - candidates[best][s] for s in seeds]
        if diffs:
            paired[scope] = {"baseline": best, "metric": HEADLINE_METRIC, "seeds": seeds,
                             **t_interval(diffs, level).as_dict()}
    return {"seeds": sorted(runs), "textures": textures, "synthesizers": synths, "metrics": list(metrics),
            "level": level, "table": table, "paired": paired}


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else ("∞" if math.isinf(x) else f"{100 * x:+.1f}")


def describe_paired(p: Mapping) -> str:
    """``FAST − draem: +3.2 [−1.0, +7.4] (3 seeds)``, anomaly IoU points."""
    return (f"FAST − {p['baseline']}: {_pct(p['mean'])} [{_pct(p['lo'])}, {_pct(p['hi'])}] "
            f"({p['n']} seed{'s' if p['n'] != 1 else ''})")


def evidence_markdown(doc: Mapping, metric_labels: Mapping[str, str]) -> str:
    """Mean ± std per synthesizer and scope, then the paired intervals, as Markdown."""
    scopes = [*doc["textures"], POOLED]
    lines = []
    for m in doc["metrics"]:
        lines += [f"**{metric_labels.get(m, m)}** (%), mean ± std over {len(doc['seeds'])} pipeline seeds:", "",
                  "| synthesizer | " + " | ".join(scopes) + " |", "|---|" + "---|" * len(scopes)]
        for s in doc["synthesizers"]:
            cells = []
            for scope in scopes:
                iv = doc["table"].get(s, {}).get(scope, {}).get(m)
                cells.append("n/a" if iv is None else f"{100 * iv['mean']:.1f} ± {100 * iv['std']:.1f}"
                             if iv["n"] > 1 else f"{100 * iv['mean']:.1f}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    level = int(round(100 * doc.get("level", 0.95)))
    lines += [f"Paired difference FAST − best baseline, {metric_labels.get(HEADLINE_METRIC, HEADLINE_METRIC)} "
              f"points, {level} % interval over pipeline seeds:", "",
              "| scope | best baseline | FAST − baseline | interval | seeds | verdict |", "|---|---|---|---|---|---|"]
    for scope in scopes:
        p = doc["paired"].get(scope)
        if p is None:
            continue
        verdict = ("FAST ahead" if p["lo"] > 0 else "FAST behind" if p["hi"] < 0 else "inside the noise")
        lines.append(f"| {scope} | {p['baseline']} | {_pct(p['mean'])} | [{_pct(p['lo'])}, {_pct(p['hi'])}] | "
                     f"{p['n']} | {verdict} |")
    return "\n".join(lines) + "\n"


def evidence_scope(textures: Sequence[str], evidence: Optional[Mapping]) -> Optional[str]:
    """The scope of ``evidence["paired"]`` that speaks for a run over ``textures``: the pooled one when the
    evidence covered exactly those textures, the texture's own when the run has one texture the evidence
    covered among others (a brick-only demo against a three-texture record), else None."""
    paired = (evidence or {}).get("paired", {})
    covered = list((evidence or {}).get("textures") or textures)
    if POOLED in paired and sorted(covered) == sorted(textures):
        return POOLED
    if len(textures) == 1 and textures[0] in paired:
        return textures[0]
    return None


def single_run_verdict(results: Mapping, evidence: Optional[Mapping], source: str = "") -> str:
    """One sentence for a single-run table: its FAST − best-baseline gap (pooled over its textures) next
    to the spread the last evidence run measured, and whether the ranking is inside that noise."""
    synths = results.get("synthesizers", [])
    textures = textures_of(results)
    runs = {0: results}
    fast = _per_seed(runs, FAST, POOLED, HEADLINE_METRIC, textures).get(0)
    base = {b: _per_seed(runs, b, POOLED, HEADLINE_METRIC, textures).get(0) for b in BASELINES if b in synths}
    base = {b: v for b, v in base.items() if v is not None}
    if fast is None or not base:
        return "This run has no FAST-versus-baseline result to judge."
    best = max(base, key=base.get)
    gap = fast - base[best]
    head = f"This single run: FAST − {best} = {_pct(gap)} anomaly IoU points."
    scope = evidence_scope(textures, evidence)
    if scope is None:
        return head + (" No evidence run with this run's budgets, generation defaults, models and textures "
                       "is on record, so its spread is unknown: a single run cannot tell a lead from noise (run the "
                       "demo with `--pipeline_seeds 3`, or `--full`).")
    p = evidence["paired"][scope]
    sd = p["std"]
    where = f" ({source})" if source else ""
    on = "" if scope == POOLED else f" on {scope}"
    spread = (f" The last evidence run{where} measured{on} {describe_paired(p)}, a seed-to-seed spread of "
              f"{100 * sd:.1f} points.") if not math.isnan(sd) else ""
    if math.isnan(sd) or not (p["lo"] > 0 or p["hi"] < 0):
        return head + spread + " The evidence interval includes zero, so this ranking is inside the noise: do not " \
                               "read it as a result."
    if abs(gap) <= 2 * sd:
        return head + spread + " This run's gap is within twice that spread: its ranking is inside the noise."
    if (gap > 0) != (p["mean"] > 0):
        return head + spread + " This run disagrees with the evidence run beyond its spread: check this machine's run."
    return head + spread + " The gap exceeds twice that spread and agrees with the evidence interval, which excludes zero."
