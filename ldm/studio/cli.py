"""A local web page to place defects by hand: paint a mask on a normal image, pick a defect type, get pairs.

    python scripts/studio.py --run outputs/demo/logs/fast/brick+scratch          # then open http://127.0.0.1:7860

Every trained run beside ``--run`` is offered as a defect type. Kept pairs go to ``--out`` in the
standard pairs layout (``<out>/<category>/<defect>/``, as ``generate_with_mask.py`` writes) and can be
exported (MVTec/anomalib, MMSegmentation, Hugging Face) from the page. Generation goes through the
library path (``ldm.generation``); on a GPU machine the model runs on the GPU unless ``--device`` says
otherwise. Nothing is fetched from the internet.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.errors import UserError

OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run folder, logs/fast/<category>+<defect> (or its "
                                                "checkpoints/); the runs beside it are offered too")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--out", default=None, help="pairs folder for kept pairs (default: <run>/../../../studio/pairs, "
                                               "e.g. outputs/demo/studio/pairs)")
    p.add_argument("--data_root", default=None, help="dataset root (default: the one the run was trained on)")
    p.add_argument("--generated", default=None, help="pairs root whose masks the 'pairs' mask source draws "
                                                     "(default: the demo's generated/fast, then --out)")
    p.add_argument("--mask_model", default=None, help="a mask model run's checkpoints/ folder for the 'generated' "
                                                      "mask source (as generate_with_mask.py --mask_model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    return p


def main(argv=None) -> int:
    """``studio.py``: check the flags and the run before anything is loaded, then serve the page until stopped.
    Offline and without analytics: gradio and the Hugging Face libraries read these variables on import."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    opt = get_parser().parse_args(argv)
    if not 0 < opt.port < 65536:
        raise UserError(f"--port must be 1..65535, got {opt.port}")
    from ldm.studio.core import Studio, check_startup, run_dir_of

    run = run_dir_of(opt.run)
    demo = run.resolve().parent.parent.parent  # the demo's layout: <demo>/logs/<method>/<run>
    out = Path(opt.out) if opt.out else demo / "studio" / "pairs"
    check_startup(opt.run, out, opt.data_root, opt.generated, opt.mask_model, opt.device, opt.threads)
    generated = opt.generated or demo / "generated" / "fast"
    if opt.threads:
        import torch

        torch.set_num_threads(opt.threads)
    from ldm.studio.page import launch

    studio = Studio(opt.run, out, device=opt.device, data_root=opt.data_root, generated=generated,
                    mask_model=opt.mask_model)
    for problem in studio.problems:
        print(f"studio.py: note: {problem}", file=sys.stderr)
    print(f"[studio] runs: {', '.join(studio.run_keys()) or 'none'}; kept pairs go to {out}", flush=True)
    try:
        launch(studio, host=opt.host, port=opt.port, block=True)
    except OSError as e:  # gradio: "Cannot find empty port ..." (the port is taken)
        raise UserError(f"cannot serve on {opt.host}:{opt.port}: {e}") from None
    return 0


def cli(argv=None) -> int:
    """``scripts/studio.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("studio.py", lambda: main(argv))
