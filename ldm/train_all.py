"""Train one FAST model per (category, defect type) of a dataset: a loop of ``main.py`` runs.

    python scripts/train_all.py --config configs/fast/mvtec.yaml --dataset /data/mvtec_ad \
        --ckpt models/ldm/text2img-large/model.ckpt --gpus 0, [--categories bottle,cable] [key=value ...]

Each run logs to ``<logdir>/<category>+<defect>``; a run whose folder already has ``checkpoints/last.ckpt``
is resumed (``-r``), so the loop itself can be interrupted and restarted. The init word comes from
``configs/init_words.yaml`` (the official MVTec/BTAD script's word per defect type); for defects not in
it, the defect name when it is a single wordpiece of the model's tokenizer, otherwise the config's.
Extra ``key=value`` arguments are passed on as config overrides.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.errors import InputNotFound, UserError

ROOT = Path(__file__).resolve().parents[1]


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="FAST YAML (configs/fast/*.yaml)")
    p.add_argument("--dataset", required=True, help="dataset root")
    p.add_argument("--ckpt", default=None, help="backbone checkpoint for --actual_resume")
    p.add_argument("--layout", default=None, help="dataset layout (default: the config's)")
    p.add_argument("--categories", default=None, help="comma-separated (default: all)")
    p.add_argument("--defects", default=None, help="comma-separated defect types (default: all of each category)")
    p.add_argument("--logdir", default="logs/fast", help="parent of the per-run log folders")
    p.add_argument("--gpus", default=None)
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--dry_run", action="store_true", help="print the main.py commands only")
    return p


def _tokenizer_path(config) -> str | None:
    params = config.model.params.get("cond_stage_config", {}).get("params", {})
    return params.get("tokenizer_path")


INIT_WORDS = ROOT / "configs" / "init_words.yaml"
LAYOUT_TABLES = {"mvtec": "mvtec", "mvtec_ad": "mvtec", "btad": "btad"}


def known_init_word(layout: str, category: str, defect: str, table=INIT_WORDS) -> str | None:
    """The official script's init word for (category, defect) of a known dataset, else None."""
    import yaml

    section = LAYOUT_TABLES.get(str(layout).lower())
    if section is None:
        return None
    words = yaml.safe_load(Path(table).read_text()).get(section, {})
    return (words.get(str(category)) or {}).get(str(defect))


def init_word_for(defect: str, tokenizer, fallback: str | None, layout: str = "folder",
                  category: str | None = None) -> str | None:
    """The official word for known datasets; else the defect name if it is one wordpiece (e.g.
    ``crack``); else the config's init word."""
    word = known_init_word(layout, category, defect) if category is not None else None
    if word is not None:
        return word
    if tokenizer is None:
        return fallback
    ids = tokenizer(defect.replace("_", " "), add_special_tokens=False)["input_ids"]
    return defect if len(ids) == 1 and "_" not in defect else fallback


def plan(opt, overrides: list[str]) -> list[list[str]]:
    from omegaconf import OmegaConf

    from ldm.config_check import check_config, check_gpus, check_seed, load_config_file, merge_configs
    from ldm.data.layouts import index_category, list_categories

    if not os.path.isfile(opt.config):
        raise UserError(f"config not found: {opt.config}")
    # main.py's own checks, once for every run: YAML, targets, numbers (with the overrides), --gpus
    check_config(merge_configs([opt.config], overrides), files=[opt.config], paths=False)
    check_seed(opt.seed)
    # a dry run may plan for another machine: there only the syntax of --gpus and --ckpt is checked
    check_gpus(opt.gpus, cuda_count=None if not opt.dry_run else 1 << 16)
    if opt.ckpt and not opt.dry_run and not os.path.isfile(opt.ckpt):
        raise InputNotFound(f"--ckpt not found: {opt.ckpt}")
    if Path(opt.logdir).exists() and not Path(opt.logdir).is_dir():
        raise UserError(f"--logdir {opt.logdir} exists and is not a folder")
    config = load_config_file(opt.config)  # the overrides go to every main.py run as they are
    train = OmegaConf.select(config, "data.params.train.params")
    if train is None:
        raise UserError(f"{opt.config}: no data.params.train.params section (the split train_all.py trains on)")
    layout = opt.layout or train.get("layout", "mvtec")
    categories = opt.categories.split(",") if opt.categories else list_categories(layout, opt.dataset)
    if opt.categories is not None and not all(c.strip() for c in categories):
        raise UserError(f"--categories {opt.categories!r}: an empty category name")
    wanted = set(opt.defects.split(",")) if opt.defects else None
    tokenizer = None
    try:
        from ldm.modules.encoders.tokenizer import load_bert_tokenizer

        tokenizer = load_bert_tokenizer(_tokenizer_path(config))
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"[train_all] note: no tokenizer to check init words ({e}); using the config's init word")
    pc = config.model.params.get("personalization_config")
    fallback = None
    if pc is not None and pc.get("params", {}).get("initializer_words"):
        fallback = pc.params.initializer_words[0]
    commands = []
    for cat in categories:
        index = index_category(layout, opt.dataset, cat)
        for defect in index.defects:
            if wanted is not None and defect not in wanted:
                continue
            run_dir = Path(opt.logdir) / f"{cat}+{defect}"
            cmd = [sys.executable, str(ROOT / "main.py"), "--gpus", str(opt.gpus or "none"), "-s", str(opt.seed)]
            if (run_dir / "checkpoints" / "last.ckpt").is_file():
                cmd += ["-r", str(run_dir), "-t"]
            else:
                cmd += ["--base", opt.config, "-t", "-l", str(opt.logdir), "-lf", f"{cat}+{defect}",
                        "--mvtec_path", str(opt.dataset), "--category", cat, "--defect", defect,
                        f"data.params.train.params.layout={layout}"]
                if opt.ckpt:
                    cmd += ["--actual_resume", opt.ckpt]
                word = init_word_for(defect, tokenizer, fallback, layout, cat)
                if word:
                    cmd += ["--init_word", word]
            commands.append(cmd + list(overrides))
    if not commands:
        raise UserError(f"nothing to train in {opt.dataset} (categories {categories}, "
                         f"defects {sorted(wanted) if wanted else 'all'})")
    return commands


def main(argv=None) -> int:
    opt, overrides = get_parser().parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise UserError(f"unrecognized arguments {bad} (overrides are key=value)")
    commands = plan(opt, overrides)
    for i, cmd in enumerate(commands, 1):
        print(f"[train_all] ({i}/{len(commands)}) {' '.join(cmd)}", flush=True)
        if opt.dry_run:
            continue
        rc = subprocess.call(cmd, cwd=os.getcwd())
        if rc != 0:
            print(f"[train_all] run {i} failed with exit code {rc}; stopping (re-run to resume)")
            return rc
    return 0



def cli(argv=None) -> int:
    """``scripts/train_all.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("train_all.py", lambda: main(argv))
