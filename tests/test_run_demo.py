"""The demo end to end at its smoke tier (every artifact, every report section), stage skipping on a
rerun, and the stage runner's contract (logs, markers, failures). No timing asserts."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.demo.stages import StageRunner, fingerprint
from utils.errors import UserError
from utils.safe_load import safe_load

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Stage times and peak memory", "## Segmentation on real held-out anomalies (%)",
            "## Is this ranking more than noise?", "## Do the generated defects show?", "## Pictures",
            "## Sampler speed", "## Ablations", "## Generated masks", "## Where to look")
STAGES = ("build texture-ad", "train autoencoder", "train ldm", "train fast/brick+scratch",
          "generate AIAS-10 brick+scratch", "train stage/brick+scratch", "generate STAGE-10 brick+scratch",
          "train grounding/brick+scratch", "generate GroundingAnomaly-10 brick+scratch", "compare seed 0")
ABLATIONS = ("FAST, AIAS-10", "FAST, AIAS-10, FARM off", "FAST, AIAS-50", "FAST, DDPM-1000", "GroundingAnomaly",
             "GroundingAnomaly w/o GSM", "GroundingAnomaly w/o NDI", "GroundingAnomaly, generated masks",
             "GroundingAnomaly, one model per texture", "GroundingAnomaly, one model per texture, w/o SCM (binary map)")
MASK_STAGES = ("train masks/brick", "mask diversity brick+scratch")


def _run_demo(out: Path) -> str:
    cmd = [sys.executable, "scripts/run_demo.py", "--smoke", "--stage", "--ablations", "--ablation_samples", "2",
           "--defects", "scratch", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)  # ~4 min alone
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    first = _run_demo(out)
    return out, first


def test_smoke_demo_writes_every_artifact_and_report_section(demo):
    out, console = demo
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    doc = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in doc["stages"]]
    assert names[:len(STAGES)] == list(STAGES)
    for label in ABLATIONS:  # each variant generated and compared (two variants train their own model)
        assert f"generate {label} brick+scratch" in names and f"compare {label} seed 0" in names, label
        assert f"| {label} |" in report, label
    assert "train grounding-nogsm/brick+scratch" in names
    # w/o SCM: one model per texture with every defect type of --defects, with and without the semantic map
    assert "train grounding-texture/brick" in names and "train grounding-texture-binary/brick" in names
    for run, binary in (("grounding-texture", False), ("grounding-texture-binary", True)):
        scm = safe_load(out / f"logs/{run}/brick/checkpoints/scm-3.pt")
        assert ("mask_token" in scm) is binary, run
        assert {k.split(".")[-1] for k in scm if k.startswith("anomaly_tokens.")} == (set() if binary
                                                                                      else {"brick+scratch"})
    assert all(stage in names for stage in MASK_STAGES)
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 0 for s in doc["stages"])
    for synth in ("fast", "stage", "grounding", "draem", "cutpaste", "normal"):
        assert synth in doc["metrics"], synth
        assert f"| {synth} |" in report
    for rel in ("comparison/results.json", "comparison/results.md", "comparison/bars.png",
                "generated/fast/brick/scratch/contact_sheet.png", "generated/fast/brick/scratch/synthesis.json",
                "logs/autoencoder/checkpoints/last.ckpt", "logs/ldm/checkpoints/last.ckpt",
                "logs/ldm/timing.json", "logs/fast/brick+scratch/checkpoints/embeddings.pt",
                "logs/console/train_ldm.log", "stages/train_ldm.json",
                "generated/stage/brick/scratch/provenance.json", "logs/stage/brick+scratch/checkpoints/embeddings.pt",
                "generated/grounding/brick/scratch/synthesis.json",
                "logs/grounding-nogsm/brick+scratch/checkpoints/scm-3.pt",
                "ablations/generated/groundinganomaly_w_o_ndi/brick/scratch/synthesis.json"):
        assert (out / rel).is_file(), rel
    assert len(list((out / "generated/fast/brick/scratch/image").glob("*.png"))) == 4
    assert "generated/fast/brick/scratch/contact_sheet.png" in report
    assert "comparison/bars.png" in report
    assert "Command: `bash scripts/demo.sh --smoke --stage --ablations --ablation_samples 2 --defects scratch" in report
    # for the grounding ablations: one mask model for brick with a token per defect type of --defects (a list
    # handed to main.py, which once wrote it into the dataset as its repr), its diversity report, and
    # GroundingAnomaly pairs on masks sampled from it

    tokens = {k.split(".")[-1] for k in safe_load(out / "logs/masks/brick/checkpoints/mask_ti-3.pt")
              if k.startswith("tokens.")}
    assert tokens == {"brick+scratch"}
    pairs = out / "ablations/generated/groundinganomaly_generated_masks/brick/scratch"
    assert json.loads((pairs / "synthesis.json").read_text())["mask_source"] == "generated"
    assert len(list((pairs / "image-mask-ori").glob("*.png"))) == 2
    masks = sorted((pairs / "mask").glob("*.png"))
    assert len(masks) == 2
    for m in masks:
        values = np.unique(np.asarray(Image.open(m)))
        assert set(values.tolist()) <= {0, 255} and 255 in values, (m, values)
    assert all(json.loads(p.read_text())["mask_origin"].startswith("generated:brick+scratch:")
               for p in (pairs / "meta").glob("*.json"))
    diversity = json.loads((out / "ablations/masks/brick+scratch/diversity.json").read_text())
    assert diversity["n_generated"] == 4 and diversity["step"] == 3
    assert doc["masks"]["brick+scratch"]["nearest_real_iou"] == diversity["nearest_real_iou"]
    assert (out / "ablations/masks/brick+scratch/sheet.png").is_file()
    masks_section = report.split("## Generated masks")[1].split("\n## ")[0]
    assert "| brick+scratch | 4 / " in masks_section and "ablations/masks/brick+scratch/sheet.png" in masks_section
    # the console: one final line per stage (plus a progress line a minute when it is not a terminal)
    # and the summary; no framework noise (that is in the logs)
    for stage in STAGES:
        finals = [ln for ln in console.splitlines() if ln.strip().startswith(stage) and " done " in ln]
        assert len(finals) == 1 and "peak" in finals[0], (stage, console)
    for noise in ("Project config", "Warning", "LeafSpec", "litlogger", "Modules in eval mode"):
        assert noise not in console, noise
    assert "Project config" in (out / "logs/console/train_ldm.log").read_text()
    assert "Report:" in console and "| fast |" in console
    # a single run is judged against the evidence on record (or says that none is)
    assert "This single run: FAST − " in console and doc["verdict"] in report
    # defect contrast of every generator's pairs next to the real defects of the type
    rows = {r["method"]: r for r in doc["contrast"]}
    assert set(rows) == {"fast", "stage", "grounding"}
    assert all(r["pairs"] == 4 and r["real_defects"] > 0 and r["real"] > 0 for r in rows.values())
    assert rows["fast"]["ratio"] == round(rows["fast"]["generated"] / rows["fast"]["real"], 3)
    g, r = (np.asarray(rows["fast"][k]) for k in ("shift", "real_shift"))      # the signed colour shifts
    assert rows["fast"]["agreement"] == round(float(g @ r / (r @ r)), 3)
    assert "| colour agreement |" in report.split("## Do the generated defects show?")[1]


def test_rerun_skips_every_finished_stage(demo):
    out, _ = demo
    before = (out / "logs/ldm/checkpoints/last.ckpt").stat().st_mtime_ns
    console = _run_demo(out)
    for stage in STAGES + MASK_STAGES:
        lines = [ln for ln in console.splitlines() if ln.strip().startswith(stage)]
        assert len(lines) == 1 and "skipped" in lines[0], lines
    assert (out / "logs/ldm/checkpoints/last.ckpt").stat().st_mtime_ns == before
    assert all(s["skipped"] for s in json.loads((out / "report.json").read_text())["stages"])


def _runner(tmp_path):
    return StageRunner(tmp_path, stream=io.StringIO(), interactive=False, poll=0.05)


def test_stage_runner_logs_marks_and_skips_only_with_same_settings(tmp_path):
    r = _runner(tmp_path)
    code = "import sys; print('hello from the child'); print('noise', file=sys.stderr)"
    rec = r.run("say hello", [sys.executable, "-c", code], {"v": 1}, total=3, unit="things")
    assert not rec.skipped and rec.peak_rss_mb > 0
    log = (tmp_path / "logs/console/say_hello.log").read_text()
    assert "hello from the child" in log and "noise" in log
    assert "hello from the child" not in r.stream.getvalue()
    marker = json.loads((tmp_path / "stages/say_hello.json").read_text())
    assert marker["fingerprint"] == fingerprint({"v": 1})
    assert r.run("say hello", [sys.executable, "-c", "raise SystemExit(3)"], {"v": 1}).skipped
    assert not r.run("say hello", [sys.executable, "-c", "pass"], {"v": 2}).skipped     # settings changed
    assert not r.run("say hello", [sys.executable, "-c", "pass"], {"v": 2}, done=lambda: False).skipped


def test_a_changed_generation_default_regenerates_the_pairs_and_reevaluates_them(tmp_path, monkeypatch):
    """A release that changes how pairs are drawn (a pixel option's default) makes the demo's generate stage
    stale: its old pairs folder is removed before generate_with_mask.py runs again (which would refuse to mix
    records), an interrupted stage (no marker) keeps its pairs to resume, and the comparison's settings
    follow the pairs' synthesis records so new pairs are evaluated again."""
    import ldm.demo.pipeline as rd
    from ldm.demo.pipeline import Demo, generation_defaults, pairs_identity
    from ldm.demo.tiers import get_parser, resolve

    assert generation_defaults()["paste_colour"] == "raw" and "data_root" not in generation_defaults()
    opt = get_parser().parse_args(["--out", str(tmp_path)])
    ran = []

    class Recorder(StageRunner):
        def run(self, name, cmd, settings, **kw):
            ran.append(settings)
            self._mark(type("R", (), {"name": name, "as_dict": lambda self: {}})(), settings)
            return type("Record", (), {"as_dict": lambda self: {}})()

    demo = Demo(opt, resolve(opt), Recorder(tmp_path))
    out = demo.folder("generated") / "fast"
    pairs = out / "brick" / "crack"
    (pairs / "image").mkdir(parents=True)
    (pairs / "synthesis.json").write_text('{}')
    demo.generate(tmp_path / "pt", "brick", "crack", out, 4)          # no marker yet: resume, keep the pairs
    assert (pairs / "image").is_dir()
    demo.generate(tmp_path / "pt", "brick", "crack", out, 4)          # same settings: nothing removed
    assert (pairs / "image").is_dir()
    monkeypatch.setattr(rd, "generation_defaults", lambda: dict(generation_defaults(), paste_colour="match"))
    demo.generate(tmp_path / "pt", "brick", "crack", out, 4)          # another default: stale pairs go
    assert not pairs.exists() and ran[-1]["defaults"]["paste_colour"] == "match"
    pairs.mkdir(parents=True)
    (pairs / "synthesis.json").write_text('{}')
    before = pairs_identity(out)
    (pairs / "synthesis.json").write_text('{"paste_colour": "match"}')
    assert pairs_identity(out) != before
    demo.compare("compare", demo.folder("comparison"), ["brick"], "fast", 0, {"fast": out}, 4)
    assert ran[-1]["pairs"] == {"fast": pairs_identity(out)}


def test_a_changed_model_config_retrains_it_and_everything_that_reads_it(tmp_path, monkeypatch):
    """A release that changes a model (e.g. the backbone's latent size) must not resume the old checkpoint
    (main.py -r would load the old model's config, and the generators trained on it would no longer fit): a
    finished train stage whose config's ``model`` section changed is deleted and trained from its config, and
    every later stage that reads it (its checkpoint named in the arguments) sees other settings and runs again.
    An interrupted stage (no marker) still resumes."""
    import ldm.demo.pipeline as rd
    from ldm.demo.pipeline import Demo, config_digest
    from ldm.demo.tiers import get_parser, resolve

    opt = get_parser().parse_args(["--out", str(tmp_path)])
    ran = []

    class Recorder(StageRunner):
        def run(self, name, cmd, settings, **kw):
            ran.append((name, cmd, settings))
            self._mark(type("R", (), {"name": name, "as_dict": lambda self: {}})(), settings)
            return type("Record", (), {"as_dict": lambda self: {}})()

    def backbone(demo):
        ae = demo.train("autoencoder", "configs/tiny/autoencoder.yaml", 5, [])
        ae.parent.mkdir(parents=True, exist_ok=True)
        ae.write_bytes(b"a checkpoint")
        ldm = demo.train("ldm", "configs/tiny/ldm.yaml", 5, [f"model.params.first_stage_config.params.ckpt_path={ae}"])
        fast = demo.fast(ldm, "brick", "crack")
        demo.generate(fast, "brick", "crack", demo.folder("generated") / "fast", 4)
        return ae

    ae = backbone(Demo(opt, resolve(opt), Recorder(tmp_path)))
    first = {name: settings for name, _, settings in ran}
    assert first["train autoencoder"]["model"] == config_digest("configs/tiny/autoencoder.yaml")
    assert first["train autoencoder"]["reads"] == []
    assert len(first["train ldm"]["reads"]) == 1 and len(first["train fast/brick+crack"]["reads"]) == 1
    assert len(first["generate aias-10 brick+crack"]["reads"]) == 1

    ran.clear()                                                       # same release: the checkpoint resumes
    backbone(Demo(opt, resolve(opt), Recorder(tmp_path)))
    assert "-r" in ran[0][1] and ae.is_file() and {n: s for n, _, s in ran} == first

    real = rd.config_digest
    monkeypatch.setattr(rd, "config_digest", lambda c: real(c) + ("-f2" if "autoencoder" in c else ""))
    ran.clear()
    (ae.parent / "stale-marker").write_text("")
    Demo(opt, resolve(opt), Recorder(tmp_path)).train("autoencoder", "configs/tiny/autoencoder.yaml", 5, [])
    assert "--base" in ran[0][1] and "-r" not in ran[0][1]             # trained afresh from the new config ...
    assert not (ae.parent / "stale-marker").exists()                  # ... in a folder emptied of the old run
    ran.clear()
    backbone(Demo(opt, resolve(opt), Recorder(tmp_path)))
    again = {name: settings for name, _, settings in ran}
    for stage in ("train ldm", "train fast/brick+crack", "generate aias-10 brick+crack"):
        assert again[stage]["reads"] != first[stage]["reads"], stage     # everything downstream is stale too


def test_stage_runner_failure_names_the_log_and_writes_no_marker(tmp_path):
    r = _runner(tmp_path)
    with pytest.raises(UserError, match="stage 'boom' failed .exit code 3.; full log: .*boom.log"):
        r.run("boom", [sys.executable, "-c", "print('last words'); raise SystemExit(3)"], {})
    assert "last words" in r.stream.getvalue()
    assert not (tmp_path / "stages/boom.json").exists()


def test_stage_runner_reads_child_progress(tmp_path):
    r = StageRunner(tmp_path, stream=io.StringIO(), interactive=False, poll=0.05, line_every=0.0)
    code = ("import time, os; from utils.progress import report\n"
            "for i in range(1, 6):\n    report(i, 5, interval=0); time.sleep(0.15)\n")
    r.run("count", [sys.executable, "-c", code], {}, total=5, cwd=ROOT)
    text = r.stream.getvalue()
    assert "/5 steps" in text and "ETA" in text


def test_wild_family_trains_on_its_own_data_over_the_texture_ad_backbone(tmp_path):
    """--family wild: its own dataset, defect types, comparison and report; the autoencoder and LDM
    (and their data) stay texture-ad's, so one backbone serves both families."""
    from ldm.data.texture_ad import FAMILIES
    from ldm.demo.pipeline import Demo
    from ldm.demo.tiers import get_parser, resolve

    opt = get_parser().parse_args(["--family", "wild", "--out", str(tmp_path)])
    tier = resolve(opt)
    assert opt.defect_list == list(FAMILIES["wild"]) and set(opt.defect_list).isdisjoint(FAMILIES["texture-ad"])
    demo = Demo(opt, tier, StageRunner(tmp_path))
    assert demo.data == tmp_path / "data" / "texture-ad-wild"
    assert demo.backbone_data == tmp_path / "data" / "texture-ad"
    assert demo.suffix == "-wild"
    plain = get_parser().parse_args(["--out", str(tmp_path)])
    default = Demo(plain, resolve(plain), StageRunner(tmp_path))
    assert plain.defect_list == list(FAMILIES["texture-ad"])
    assert default.suffix == "" and default.data == default.backbone_data


def test_mask_budget_must_be_positive(tmp_path):
    from ldm.demo.tiers import get_parser, resolve

    for flag in ("--mask_steps", "--diversity_masks"):
        with pytest.raises(UserError, match=f"{flag} must be >= 1, got 0"):
            resolve(get_parser().parse_args(["--out", str(tmp_path), flag, "0"]))


@pytest.mark.parametrize("category,expected", [
    ("brick", ["brick"]), ("grass,gravel", ["grass", "gravel"]), ("all", ["brick", "grass", "gravel"])])
def test_category_list_or_all(tmp_path, category, expected):
    from ldm.demo.tiers import get_parser, resolve

    opt = get_parser().parse_args(["--out", str(tmp_path), "--category", category])
    resolve(opt)
    assert opt.categories == expected


def test_unknown_category_is_one_line_error(tmp_path):
    from ldm.demo.tiers import get_parser, resolve

    with pytest.raises(UserError, match="--category must be 'all' or some of brick, grass, gravel, got 'brick,wood'"):
        resolve(get_parser().parse_args(["--out", str(tmp_path), "--category", "brick,wood"]))


@pytest.mark.parametrize("args,ablations,grounding", [
    ([], None, False), (["--ablations"], "all", True), (["--ablations", "fast"], "fast", False),
    (["--ablations", "grounding"], "grounding", True), (["--full"], "all", True)])
def test_ablation_sets_and_what_they_imply(tmp_path, args, ablations, grounding):
    from ldm.demo.tiers import get_parser, resolve

    opt = get_parser().parse_args(["--out", str(tmp_path), *args])
    resolve(opt)
    assert opt.ablations == ablations and opt.grounding is grounding


def test_threads_reach_every_stage_through_the_environment(tmp_path, monkeypatch):
    """Generation and the mask reports have no --threads flag; with two-thread children next to a busy core the
    demo's stages ran several times slower, so --threads goes to every child through OMP_NUM_THREADS."""
    import os

    import ldm.demo.pipeline as rd

    class Stop(Exception):
        pass

    seen = {}

    def pipeline(opt, tier, runner):
        seen["omp"] = os.environ.get("OMP_NUM_THREADS")
        raise Stop

    monkeypatch.setenv("OMP_NUM_THREADS", "7")   # restored after the test
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.setattr(rd, "pipeline", pipeline)
    with pytest.raises(Stop):
        rd.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    assert seen["omp"] == "1"


def test_pipeline_seeds_retrain_everything_with_other_seeds_in_their_own_folder(tmp_path):
    """Pipeline seed 0 is the default demo's commands unchanged; seed s > 0 trains with main.py --seed 23+s,
    generates with --seed s, compares with its own segmenter seeds, writes under pipeline-seed-<s> and reads
    the one dataset."""
    from ldm.demo.evidence import segmenter_seeds
    from ldm.demo.pipeline import Demo
    from ldm.demo.tiers import get_parser, resolve

    opt = get_parser().parse_args(["--out", str(tmp_path), "--pipeline_seeds", "3"])
    tier = resolve(opt)
    assert opt.pipeline_seeds == 3 and segmenter_seeds(0, 1) == [0] and segmenter_seeds(2, 2) == [4, 5]
    seen = []

    class Recorder(StageRunner):
        def run(self, name, cmd, settings, **kw):
            seen.append((name, cmd, settings))
            return type("Record", (), {"as_dict": lambda self: {}})()

    for seed in (0, 2):
        demo = Demo(opt, tier, Recorder(tmp_path), seed)
        demo.train("ldm", "configs/tiny/ldm.yaml", 5, [])
        demo.generate(tmp_path / "pt", "brick", "crack", demo.folder("generated") / "fast", 4)
        demo.compare("compare", demo.folder("comparison"), ["brick"], "fast", segmenter_seeds(seed, 1)[0], {}, 4)
    (t0, g0, c0), (t2, g2, c2) = seen[:3], seen[3:]
    assert "--seed" not in t0[1] and "--seed" not in g0[1]
    assert t2[1][t2[1].index("--seed") + 1] == "25" and g2[1][g2[1].index("--seed") + 1] == "2"
    assert str(tmp_path / "pipeline-seed-2" / "logs") in t2[1] and str(tmp_path / "logs") in t0[1]
    assert c0[1][c0[1].index("--seed") + 1] == "0" and c2[1][c2[1].index("--seed") + 1] == "2"
    data = str(tmp_path / "data" / "texture-ad")
    assert data in g0[1] and data in g2[1]
    assert t0[2] != t2[2] and g0[2] != g2[2]          # other seeds never reuse a finished stage's marker


def test_evidence_tier_summarises_every_pipeline_seed_into_the_report(tmp_path, monkeypatch):
    """main with --pipeline_seeds 3 runs the pipeline per seed and writes evidence.json/.md and the report's
    paired interval; --record_evidence writes the family's record a later single run is judged against."""
    import ldm.demo.evidence as ev
    import ldm.demo.pipeline as rd

    monkeypatch.setattr(ev, "RECORD_DIR", tmp_path / "record")
    monkeypatch.setattr(rd, "write_report", _report_spy := _ReportSpy(rd.write_report))

    def pipeline(opt, tier, runner, seed=0):
        folder = ev.pipeline_out(tmp_path, seed) / "comparison"
        folder.mkdir(parents=True, exist_ok=True)
        fast, draem = 0.30 + 0.01 * seed, 0.20 + 0.02 * seed
        doc = {"synthesizers": ["fast", "draem", "cutpaste"],
               "results": {s: {"brick": {"iou_anomaly": v}, "mean": {"iou_anomaly": v}}
                           for s, v in (("fast", fast), ("draem", draem), ("cutpaste", 0.1))}}
        (folder / "results.json").write_text(json.dumps(doc))
        return {"results": {seed: folder / "results.json"}, "generation": [], "ablations": {}, "masks": {}}

    monkeypatch.setattr(rd, "pipeline", pipeline)
    data_roots = []

    def contrast_rows(opt, out, data_out=None):  # seed 1 draws faint cracks: the lowest seed decides
        data_roots.append(data_out or out)
        ratio = {tmp_path: 0.8, ev.pipeline_out(tmp_path, 1): 0.3}.get(out, 0.7)
        agreement = {tmp_path: 0.9, ev.pipeline_out(tmp_path, 1): 0.1}.get(out, 0.5)  # seed 1: off-colour too
        return [{"method": "fast", "category": "brick", "defect": "crack", "ratio": ratio, "agreement": agreement},
                {"method": "fast", "category": "brick", "defect": "stain", "ratio": 0.9},
                {"method": "stage", "category": "brick", "defect": "crack", "ratio": None}]

    monkeypatch.setattr(rd, "contrast_rows", contrast_rows)
    rd.main(["--smoke", "--pipeline_seeds", "3", "--record_evidence", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "evidence.json").read_text())
    assert data_roots == [tmp_path] * 3                            # every seed against the one dataset
    crack, stain = doc["contrast"]                                 # unknown ratios are left out
    assert crack["ratios"] == {"0": 0.8, "1": 0.3, "2": 0.7} and crack["lowest"] == 0.3
    assert crack["mean"] == pytest.approx(0.6) and not crack["shows"] and stain["shows"]
    assert crack["agreements"] == {"0": 0.9, "1": 0.1, "2": 0.5} and crack["agreement_lowest"] == 0.1
    assert crack["agreement_mean"] == pytest.approx(0.5) and not crack["same_colour"]
    assert "agreements" not in stain                               # no agreement measured: none claimed
    md = (tmp_path / "evidence.md").read_text()
    assert "| fast | brick/crack | 80% | 30% | 70% | 60% | 30% (faint) | 50% | 10% (off-colour) |" in md
    assert "| fast | brick/stain | 90% | 90% | 90% | 90% | 90% | n/a | n/a |" in md
    p = doc["paired"]["pooled"]
    assert doc["seeds"] == [0, 1, 2] and p["baseline"] == "draem"
    assert p["mean"] == pytest.approx(0.09) and p["lo"] > 0          # d = 0.10, 0.09, 0.08
    assert "FAST ahead" in (tmp_path / "evidence.md").read_text()
    assert json.loads((tmp_path / "record" / "texture-ad.json").read_text())["paired"] == doc["paired"]
    assert "FAST − draem: +9.0" in _report_spy.verdict
    # a later single run is judged against that record
    from ldm.demo.evidence import verdict_for

    single = json.loads((tmp_path / "comparison" / "results.json").read_text())
    text = verdict_for(single, tmp_path / "elsewhere", "texture-ad")
    assert "This single run: FAST − draem = +10.0" in text and "3 pipeline seeds" in text
    # ... but only by a run with the same budgets: the smoke record says nothing about a default-tier run
    elsewhere = tmp_path / "elsewhere"
    conditions = {key: doc[key] for key in ("budget", "generation", "models")}
    assert "3 pipeline seeds" in verdict_for(single, elsewhere, "texture-ad", conditions)
    other = dict(doc["budget"], ldm_steps=doc["budget"]["ldm_steps"] + 1)
    text = verdict_for(single, elsewhere, "texture-ad", dict(conditions, budget=other))
    assert "No evidence run with this run's budgets, generation defaults, models and textures is on record" in text \
        and "3 pipeline seeds" not in text
    # ... pairs drawn the same way: the record carries the generation defaults, and a record with others
    # (e.g. the other paste) is passed over
    from ldm.demo.evidence import demo_models, generation_defaults

    assert doc["generation"] == generation_defaults()
    other_paste = dict(generation_defaults(),
                       paste_colour="match" if doc["generation"]["paste_colour"] == "raw" else "raw")
    assert "3 pipeline seeds" not in verdict_for(single, elsewhere, "texture-ad",
                                                 dict(conditions, generation=other_paste))
    # ... and by the same models: a record trained with another config (e.g. another latent size) is passed over
    assert doc["models"] == demo_models() and set(doc["models"]) == {"autoencoder", "ldm", "fast", "stage", "grounding"}
    other_models = dict(doc["models"], autoencoder="0" * 16)
    assert "3 pipeline seeds" not in verdict_for(single, elsewhere, "texture-ad", dict(conditions, models=other_models))
    # a record older than one of the keys says nothing about this run either
    record = tmp_path / "record" / "texture-ad.json"
    for key in ("generation", "models"):
        record.write_text(json.dumps({k: v for k, v in doc.items() if k != key}))
        assert "3 pipeline seeds" not in verdict_for(single, elsewhere, "texture-ad", conditions), key
    with pytest.raises(UserError, match="--record_evidence needs --pipeline_seeds >= 2"):
        rd.main(["--smoke", "--record_evidence", "--out", str(tmp_path)])


class _ReportSpy:
    def __init__(self, real):
        self.real, self.verdict = real, None

    def __call__(self, *args, **kw):
        path, table, self.verdict = self.real(*args, **kw)
        return path, table, self.verdict
