"""Evidence over pipeline seeds (ldm.segmentation.evidence): intervals against closed forms, pairing,
the pooled scope, and the single-run verdict."""
from __future__ import annotations

import math
import platform

import pytest

from ldm.segmentation.evidence import (POOLED, evidence_markdown, single_run_verdict, summarise,
                                       t_interval)
from utils.errors import UserError


def results(values: dict) -> dict:
    """A comparison results.json: values[synth] = {texture: anomaly IoU}."""
    res = {}
    for s, per_tex in values.items():
        res[s] = {t: {"iou_anomaly": v} for t, v in per_tex.items()}
        res[s]["mean"] = {"iou_anomaly": sum(per_tex.values()) / len(per_tex)}
    return {"synthesizers": list(values), "results": res}   # as ldm.segmentation.compare writes it


def test_t_interval_matches_the_closed_form():
    iv = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3)
    assert iv.mean == 2.0 and iv.std == 1.0 and iv.n == 3
    assert iv.hi - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert iv.lo == pytest.approx(2.0 - 4.302653 / math.sqrt(3), rel=1e-6)
    nine = t_interval([0.1 * k for k in range(9)], level=0.9)
    sd = math.sqrt(sum((0.1 * k - 0.4) ** 2 for k in range(9)) / 8)
    assert nine.hi - nine.mean == pytest.approx(1.859548 * sd / 3, rel=1e-6)   # t(0.95, 8)
    one = t_interval([0.4])
    assert one.n == 1 and math.isinf(one.hi) and not one.excludes_zero
    with pytest.raises(UserError):
        t_interval([])


def test_pairing_removes_what_a_seed_does_to_every_synthesizer():
    # seed effects of +-20 points shared by all; FAST always 2 points above DRAEM: the paired interval is tight
    runs = {s: results({"fast": {"brick": 0.30 + e + 0.02, "grass": 0.50 + e + 0.02},
                        "draem": {"brick": 0.30 + e, "grass": 0.50 + e},
                        "cutpaste": {"brick": 0.10 + e, "grass": 0.10 + e}})
            for s, e in enumerate((-0.2, 0.0, 0.2))}
    doc = summarise(runs)
    for scope in ("brick", "grass", POOLED):
        p = doc["paired"][scope]
        assert p["baseline"] == "draem" and p["n"] == 3
        assert p["mean"] == pytest.approx(0.02) and p["std"] == pytest.approx(0.0, abs=1e-12)
    fast = doc["table"]["fast"]["brick"]["iou_anomaly"]
    assert fast["std"] == pytest.approx(0.2) and fast["lo"] < 0.0   # unpaired, the seed spread swamps the gap
    md = evidence_markdown(doc, {"iou_anomaly": "anomaly IoU"})
    assert "| pooled | draem | +2.0 |" in md and "FAST ahead" in md


def test_the_best_baseline_is_chosen_per_scope_and_pooled_averages_textures_first():
    runs = {s: results({"fast": {"brick": 0.40 + d, "grass": 0.20 + d},
                        "draem": {"brick": 0.45, "grass": 0.10},
                        "cutpaste": {"brick": 0.30, "grass": 0.25}})
            for s, d in enumerate((0.0, 0.01, -0.01))}
    doc = summarise(runs)
    assert doc["paired"]["brick"]["baseline"] == "draem"
    assert doc["paired"]["grass"]["baseline"] == "cutpaste"
    # pooled: each seed's textures are averaged first: draem 0.275 vs cutpaste 0.275 + 0.001
    runs = {s: results({"fast": {"brick": 0.40 + d, "grass": 0.20 + d},
                        "draem": {"brick": 0.45, "grass": 0.10},
                        "cutpaste": {"brick": 0.30, "grass": 0.252}})
            for s, d in enumerate((0.0, 0.01, -0.01))}
    pooled = summarise(runs)["paired"][POOLED]
    assert pooled["baseline"] == "cutpaste"
    assert pooled["mean"] == pytest.approx(0.30 - 0.276)


def test_missing_fast_or_baselines_is_refused_by_name():
    with pytest.raises(UserError, match="fast"):
        summarise({0: results({"draem": {"brick": 0.1, "grass": 0.1}})})
    with pytest.raises(UserError):
        summarise({})


def test_single_run_verdict_says_when_the_ranking_is_inside_the_noise():
    run = results({"fast": {"brick": 0.12, "grass": 0.12}, "draem": {"brick": 0.10, "grass": 0.10},
                   "cutpaste": {"brick": 0.14, "grass": 0.14}})
    assert "cannot tell a lead from noise" in single_run_verdict(run, None)
    noisy = summarise({s: results({"fast": {"brick": v, "grass": v}, "draem": {"brick": 0.2, "grass": 0.2},
                                   "cutpaste": {"brick": 0.1, "grass": 0.1}})
                       for s, v in enumerate((0.1, 0.3, 0.25))})
    text = single_run_verdict(run, noisy, "3 seeds, 2 cores")
    assert "FAST − cutpaste = -2.0" in text and "inside the noise" in text and "3 seeds, 2 cores" in text
    clear = summarise({s: results({"fast": {"brick": 0.40 + d, "grass": 0.40 + d},
                                   "draem": {"brick": 0.20, "grass": 0.20}, "cutpaste": {"brick": 0.1, "grass": 0.1}})
                       for s, d in enumerate((0.0, 0.01, 0.02))})
    ahead = results({"fast": {"brick": 0.45, "grass": 0.45}, "draem": {"brick": 0.2, "grass": 0.2},
                     "cutpaste": {"brick": 0.1, "grass": 0.1}})
    assert "exceeds twice that spread" in single_run_verdict(ahead, clear)
    assert "inside the noise" not in single_run_verdict(ahead, clear)
    behind = results({"fast": {"brick": 0.0, "grass": 0.0}, "draem": {"brick": 0.2, "grass": 0.2},
                      "cutpaste": {"brick": 0.1, "grass": 0.1}})
    assert "disagrees" in single_run_verdict(behind, clear)


def test_single_run_is_judged_against_the_evidence_of_its_own_textures():
    """A brick-only demo against a brick + grass record reads the record's brick interval, not the pooled one;
    a texture the record never ran has no evidence."""
    record = summarise({s: results({"fast": {"brick": 0.10 + d, "grass": 0.60 + 3 * d},
                                    "draem": {"brick": 0.10, "grass": 0.20}, "cutpaste": {"brick": 0.05, "grass": 0.1}})
                        for s, d in enumerate((0.0, 0.01, 0.02))})
    assert record["paired"]["brick"]["hi"] < record["paired"]["pooled"]["lo"]     # the two scopes disagree
    brick_run = results({"fast": {"brick": 0.11}, "draem": {"brick": 0.10}, "cutpaste": {"brick": 0.05}})
    text = single_run_verdict(brick_run, record)
    assert "measured on brick FAST − draem: +1.0" in text and "interval includes zero" in text
    both = results({"fast": {"brick": 0.11, "grass": 0.63}, "draem": {"brick": 0.10, "grass": 0.20},
                    "cutpaste": {"brick": 0.05, "grass": 0.1}})
    assert "measured FAST − draem: +22.0" in single_run_verdict(both, record)
    gravel = results({"fast": {"gravel": 0.3}, "draem": {"gravel": 0.1}, "cutpaste": {"gravel": 0.1}})
    assert "No evidence run with this run's budgets, generation defaults, models and textures" \
        in single_run_verdict(gravel, record)


def test_the_machine_line_names_the_processor(tmp_path):
    """An evidence record says where it ran: the CPU's model name from /proc/cpuinfo (platform.processor()
    is empty on most Linux, which left earlier records with 'unknown CPU')."""
    from ldm.demo.evidence import cpu_model, machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(str(info)) == "AMD EPYC 7B13"
    assert machine(str(info)).endswith(", AMD EPYC 7B13)")
    assert cpu_model(str(tmp_path / "missing")) == (platform.processor() or "unknown CPU")


@pytest.mark.parametrize("family", ["texture-ad", "wild"])
def test_the_shipped_record_speaks_for_a_default_demo(tmp_path, family):
    """The README promises that a plain ``bash scripts/demo.sh`` (and ``--family wild``) prints its gap beside
    the recorded evidence. That holds only while ``docs/evidence/<family>.json`` was made with the default
    budgets, generation defaults and models: a config or default changed without re-recording fails here,
    not silently in a user's report ("no evidence on record")."""
    from ldm.demo.evidence import RECORD_DIR, last_evidence, record_conditions
    from ldm.demo.tiers import TEXTURES, get_parser, resolve

    opt = get_parser().parse_args(["--family", family])
    resolve(opt)
    found = last_evidence(tmp_path, family, record_conditions(opt))  # tmp_path: no evidence of its own
    assert found is not None, f"{RECORD_DIR / (family + '.json')} is not a record of the default demo"
    doc, where = found
    assert sorted(doc["textures"]) == sorted(TEXTURES) and len(doc["seeds"]) >= 3
    assert "brick" in doc["paired"] and f"{len(doc['seeds'])} pipeline seeds" in where
