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
SECTIONS = ("## Stage times and peak memory", "## Segmentation on real held-out anomalies (%)", "## Pictures",
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
