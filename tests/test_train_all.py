"""scripts/train_all.py --dry_run: one main.py command per (category, defect), fresh runs with the full
flag set, ``-r`` for runs whose ``checkpoints/last.ckpt`` exists, and nothing executed."""
import shlex
import sys
from pathlib import Path

import pytest

import ldm.train_all as train_all
from tests.fixtures_data import make_mvtec
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/fast/mvtec.yaml"
MAIN = str(ROOT / "main.py")


def _flag(cmd, name):
    assert cmd.count(name) == 1, (name, cmd)
    return cmd[cmd.index(name) + 1]


@pytest.fixture()
def dataset(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")  # bottle: broken_large, contamination; grid: bent
    logdir = tmp_path / "logs" / "fast"
    done = logdir / "bottle+contamination" / "checkpoints"
    done.mkdir(parents=True)
    (done / "last.ckpt").write_bytes(b"not read by the planner")
    (logdir / "grid+bent" / "checkpoints").mkdir(parents=True)  # a run folder without last.ckpt: fresh
    return root, logdir


def test_dry_run_plans_fresh_runs_and_resumes_finished_checkpoints(dataset, tmp_path, capsys, monkeypatch):
    root, logdir = dataset
    ckpt = tmp_path / "backbone.ckpt"
    monkeypatch.setattr(train_all.subprocess, "call", lambda *a, **k: pytest.fail(f"dry run executed {a}"))
    argv = ["--config", CONFIG, "--dataset", str(root), "--ckpt", str(ckpt), "--logdir", str(logdir),
            "--gpus", "0,", "--seed", "7", "--dry_run", "lightning.trainer.max_steps=50"]
    assert train_all.main(argv) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[train_all] (")]
    assert len(printed) == 3
    cmds = [shlex.split(ln.split(") ", 1)[1]) for ln in printed]
    assert [ln.split(")")[0] for ln in printed] == ["[train_all] (1/3", "[train_all] (2/3", "[train_all] (3/3"]
    # the printed commands are the planned ones
    opt, overrides = train_all.get_parser().parse_known_args(argv)
    assert cmds == train_all.plan(opt, overrides)

    by_run = {}
    for cmd in cmds:
        assert cmd[:2] == [sys.executable, MAIN]
        assert _flag(cmd, "--gpus") == "0," and _flag(cmd, "-s") == "7" and "-t" in cmd
        assert cmd[-1] == "lightning.trainer.max_steps=50"  # overrides are passed on, last
        run = Path(_flag(cmd, "-r")).name if "-r" in cmd else _flag(cmd, "-lf")
        by_run[run] = cmd
    assert sorted(by_run) == ["bottle+broken_large", "bottle+contamination", "grid+bent"]

    resumed = by_run["bottle+contamination"]
    assert _flag(resumed, "-r") == str(logdir / "bottle+contamination")
    for flag in ("--base", "--actual_resume", "-lf", "--init_word", "--mvtec_path"):
        assert flag not in resumed, flag  # the run's saved config decides; weights come from last.ckpt

    for run in ("bottle+broken_large", "grid+bent"):
        cmd = by_run[run]
        category, defect = run.split("+")
        assert "-r" not in cmd
        assert _flag(cmd, "--base") == CONFIG
        assert _flag(cmd, "-l") == str(logdir)
        assert _flag(cmd, "--mvtec_path") == str(root)
        assert _flag(cmd, "--category") == category and _flag(cmd, "--defect") == defect
        assert _flag(cmd, "--actual_resume") == str(ckpt)
        assert _flag(cmd, "--init_word")  # some one-word initialiser
        assert "data.params.train.params.layout=mvtec" in cmd
    assert not list(logdir.glob("*/configs"))  # nothing ran


def test_filters_and_errors(dataset, capsys):
    root, logdir = dataset
    opt, overrides = train_all.get_parser().parse_known_args(
        ["--config", CONFIG, "--dataset", str(root), "--logdir", str(logdir), "--categories", "bottle",
         "--defects", "contamination", "--dry_run"])
    (cmd,) = train_all.plan(opt, overrides)
    assert _flag(cmd, "-r") == str(logdir / "bottle+contamination") and _flag(cmd, "--gpus") == "none"
    opt.defects = "no_such_defect"
    with pytest.raises(UserError, match="nothing to train"):
        train_all.plan(opt, overrides)
    with pytest.raises(UserError, match="unrecognized arguments"):
        train_all.main(["--config", CONFIG, "--dataset", str(root), "--dry_run", "--bogus"])
    with pytest.raises(UserError, match="config not found"):
        train_all.main(["--config", str(root / "missing.yaml"), "--dataset", str(root), "--dry_run"])
