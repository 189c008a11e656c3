"""Inception Score and IC-LPIPS of generated anomaly images, from local weight files only.

    python scripts/generation_quality.py \\
        --pairs outputs/demo/generated/fast/brick/crack outputs/demo/generated/grounding/brick/crack \\
        --real data/texture-ad/brick/test/crack \\
        --inception_weights weights/inception_v3_google-0cc3c7bd.pth \\
        --vgg_weights weights/vgg16-397923af.pth --lin_weights weights/lpips_v0.1_vgg.pth \\
        --out results.json

``--pairs`` is one category/defect folder of generated PNGs (its ``image/`` subfolder, or the folder
itself when it holds the PNGs); several may be given.  ``--real`` holds the real defect images of the
same defect type (the IC-LPIPS cluster centres): give it once for all ``--pairs`` or once per
``--pairs``, in order.  IS needs ``--inception_weights`` (torchvision's ImageNet Inception-v3 state
dict); IC-LPIPS needs ``--vgg_weights`` (torchvision VGG16 state dict) and ``--real``; the LPIPS
linear heads (``--lin_weights``, the lpips package's ``weights/v0.1/vgg.pth``) are optional, but
without them the heads are uniform and the numbers are not comparable to published IC-LPIPS.
Nothing is downloaded.  See ``ldm/quality/generative.py`` for the definitions and NaN rules.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ldm.quality.generative import ic_lpips_details, inception_score, list_pngs, load_images_uint8
from utils.atomic import write_text_atomic
from utils.cli import ArgumentParser, run_cli
from utils.errors import InputNotFound, UserError
from utils.images import uint8_to_float
from utils.metrics import jsonable


NEEDS = ("IS needs --inception_weights (a local copy of torchvision's inception_v3_google-0cc3c7bd.pth); "
         "IC-LPIPS needs --vgg_weights (a local torchvision VGG16 state dict, e.g. vgg16-397923af.pth), "
         "optionally --lin_weights (lpips' weights/v0.1/vgg.pth), and --real; nothing is downloaded")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", action="extend", required=True,
                   help="category/defect folder(s) of generated PNGs (with an image/ subfolder or the PNGs themselves)")
    p.add_argument("--real", nargs="+", action="extend", default=None,
                   help="folder(s) of real defect PNGs (IC-LPIPS centres): one for all --pairs, or one per --pairs")
    p.add_argument("--inception_weights", default=None, help="local torchvision Inception-v3 state dict (enables IS)")
    p.add_argument("--vgg_weights", default=None, help="local torchvision VGG16 state dict (enables IC-LPIPS)")
    p.add_argument("--lin_weights", default=None,
                   help="local LPIPS v0.1 linear heads (vgg.pth); without them the heads are uniform (unlearned)")
    p.add_argument("--out", default=None, help="JSON file for the results (written atomically)")
    p.add_argument("--splits", type=int, default=1, help="IS chunks; mean and std over them (default 1)")
    p.add_argument("--lpips_size", type=int, default=256,
                   help="side every image is resized to for LPIPS (default 256, as DFMGAN and Ojha et al.)")
    p.add_argument("--max_per_cluster", type=int, default=None,
                   help="keep only the first N members of each IC-LPIPS cluster (DFMGAN: 200; default: all)")
    p.add_argument("--singletons", default="skip", choices=("skip", "zero"),
                   help="IC-LPIPS clusters with < 2 members: skipped (default) or counted as 0 over all k (DFMGAN)")
    p.add_argument("--batch_size", type=int, default=16, help="images (IS) or image pairs (LPIPS) per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return p


# ----------------------------------------------------------------------------- progress

class _Bar:
    """One self-overwriting progress line on a terminal (silent otherwise) + ``FAST_PROGRESS_FILE``."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        from utils.progress import bar, eta, fmt_seconds, report

        report(done, total)
        now = time.monotonic()
        if done == 0:
            self.t0 = now
        if not self.tty or total <= 0 or (done < total and now - self.last < 0.2):
            return
        self.last = now
        left = fmt_seconds(eta(done, total, now - self.t0))
        print(f"\r[{self.label}] {stage:<6} {bar(done / total)} {done}/{total} {left} left", end="",
              file=sys.stderr, flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)
            self.shown = False


# ----------------------------------------------------------------------------- inputs

def _image_folder(pairs: str) -> Path:
    p = Path(pairs)
    if not p.is_dir():
        raise InputNotFound(f"--pairs folder not found: {p}")
    return p / "image" if (p / "image").is_dir() else p


def _label(pairs: str) -> str:
    """``<method>/<category>/<defect>`` from the folder path (the ``image/`` folder itself is skipped)."""
    p = Path(pairs).resolve()
    p = p.parent if p.name == "image" else p
    return "/".join(p.parts[-3:])


def _check_file(path: str | None, flag: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise InputNotFound(f"{flag} file not found: {path} (nothing is downloaded)")


def _validate(a: argparse.Namespace) -> list[str | None]:
    if not a.inception_weights and not a.vgg_weights:
        raise UserError(f"no metric to compute: {NEEDS}")
    for flag, v in (("--splits", a.splits), ("--lpips_size", a.lpips_size), ("--batch_size", a.batch_size)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if a.max_per_cluster is not None and a.max_per_cluster < 1:
        raise UserError(f"--max_per_cluster must be >= 1, got {a.max_per_cluster}")
    if a.lin_weights and not a.vgg_weights:
        raise UserError("--lin_weights needs --vgg_weights (the LPIPS backbone)")
    if a.vgg_weights and not a.real:
        raise UserError("IC-LPIPS (--vgg_weights) needs --real <folder of real defect PNGs>, the cluster centres")
    reals = a.real or []
    if len(reals) not in (0, 1, len(a.pairs)):
        raise UserError(f"--real was given {len(reals)} times for {len(a.pairs)} --pairs: "
                        "give it once or once per --pairs")
    _check_file(a.inception_weights, "--inception_weights")
    _check_file(a.vgg_weights, "--vgg_weights")
    _check_file(a.lin_weights, "--lin_weights")
    return [reals[0] if len(reals) == 1 else reals[i] for i in range(len(a.pairs))] if reals else [None] * len(a.pairs)


def _load_lpips(a: argparse.Namespace, device: torch.device):
    from taming.modules.losses.lpips import LPIPS  # its weight files fail with one-line errors naming them

    return LPIPS(use_dropout=False, vgg_weights=a.vgg_weights, lin_weights=a.lin_weights).to(device)


# ----------------------------------------------------------------------------- metrics

@torch.no_grad()
def _is_for(images: torch.Tensor, model, a, device, bar: _Bar) -> tuple[float, float]:
    probs = []
    n = images.shape[0]
    if n < a.splits:
        raise UserError(f"--splits {a.splits} exceeds the {n} generated images of {bar.label}")
    bar("IS", 0, n)
    for s in range(0, n, a.batch_size):
        x = uint8_to_float(images[s:s + a.batch_size].to(device))
        probs.append(torch.softmax(model(x).double(), dim=1).cpu())
        bar("IS", min(n, s + a.batch_size), n)
    return inception_score(torch.cat(probs) if probs else torch.zeros(0, 1000, dtype=torch.float64), a.splits)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def _table(rows: list[dict]) -> str:
    head = ("pairs", "n_gen", "n_real", "IS mean", "IS std", "IC-LPIPS")
    body = [(r["label"], str(r["n_generated"]), "-" if r["n_real"] is None else str(r["n_real"]),
             _fmt(r.get("is_mean")), _fmt(r.get("is_std")), _fmt(r.get("ic_lpips"))) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), *(line(b) for b in body)])


def main(argv=None) -> int:
    """``generation_quality.py``: check every flag and folder before loading a network, then IS and/or IC-LPIPS
    per ``--pairs`` folder; print the table, write ``--out``."""
    a = get_parser().parse_args(argv)
    reals = _validate(a)
    folders = [_image_folder(p) for p in a.pairs]
    gen_files = [list_pngs(f) for f in folders]  # fail on an empty folder before loading any network
    for r in {r for r in reals if r is not None}:
        list_pngs(r)
    device = torch.device(a.device) if a.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    inception = lpips = None
    if a.inception_weights:
        from ldm.modules.inception import load_inception

        inception = load_inception(a.inception_weights, device=device)
    if a.vgg_weights:
        lpips = _load_lpips(a, device)
        if not a.lin_weights:
            print("[generation_quality] warning: no --lin_weights: LPIPS heads are uniform (unlearned), "
                  "IC-LPIPS is not comparable to published values", file=sys.stderr)

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lpips(uint8_to_float(x.to(device)), uint8_to_float(y.to(device)))

    rows = []
    for pairs, folder, files, real in zip(a.pairs, folders, gen_files, reals):
        bar = _Bar(_label(pairs))
        row = {"pairs": str(pairs), "label": bar.label, "images": str(folder), "n_generated": len(files),
               "real": None if real is None else str(real), "n_real": None}
        if inception is not None:
            row["is_mean"], row["is_std"] = _is_for(load_images_uint8(files), inception, a, device, bar)
        if lpips is not None:
            gen = load_images_uint8(files, a.lpips_size)
            centres = load_images_uint8(list_pngs(real), a.lpips_size)
            row["n_real"] = int(centres.shape[0])
            d = ic_lpips_details(gen, centres, distance, singletons=a.singletons, max_per_cluster=a.max_per_cluster,
                                 batch_size=a.batch_size, progress=bar)
            row.update(ic_lpips=d["ic_lpips"], ic_lpips_all_clusters=d["ic_lpips_all_clusters"],
                       cluster_sizes=d["cluster_sizes"], cluster_scores=d["cluster_scores"])
        bar.close()
        rows.append(row)

    print(_table(rows))
    if a.out:
        doc = {"metrics": {"is": inception is not None, "ic_lpips": lpips is not None},
               "settings": {"inception_weights": a.inception_weights, "vgg_weights": a.vgg_weights,
                            "lin_weights": a.lin_weights,
                            "lpips_heads": None if lpips is None else ("learned" if a.lin_weights else "uniform"),
                            "splits": a.splits, "lpips_size": a.lpips_size, "singletons": a.singletons,
                            "max_per_cluster": a.max_per_cluster, "device": str(device)},
               "results": rows}
        write_text_atomic(a.out, json.dumps(jsonable(doc), indent=1) + "\n")
        print(f"[generation_quality] wrote {a.out}")
    return 0



def cli(argv=None) -> int:
    """``scripts/generation_quality.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("generation_quality.py", lambda: main(argv))
