"""Kill generation mid-batch with SIGKILL, rerun: the folder ends byte-identical to an uninterrupted
run -- same files, same bytes, no partial or extra files.

The killed process is ``generate_with_mask.py`` with one patch: when it is about to write the strip
of pair ``STOP`` (image, mask and meta of that pair already on disk, the rest of its batch not yet
written), it writes a marker and stalls until the test SIGKILLs it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.run_fixture import gen_args, make_dataset, make_run

ROOT = Path(__file__).resolve().parents[1]
STOP = 3

DRIVER = r"""
import os, sys, time
sys.path.insert(0, os.getcwd())
import ldm.pairs
import generate_with_mask

STOP, MARK = os.environ["KILL_TEST_STOP"], os.environ["KILL_TEST_MARK"]
_save = ldm.pairs.save_png_atomic


def save(image, path):
    if str(path).endswith(f"image-mask-ori/{STOP}.png"):
        with open(MARK, "w") as f:
            f.write("stalled")
        while True:
            time.sleep(1)
    return _save(image, path)


ldm.pairs.save_png_atomic = save
from utils.cli import run_cli
sys.exit(run_cli("generate_with_mask.py", lambda: generate_with_mask.main(sys.argv[1:]) and 0))
"""


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("kill")
    data = make_dataset(work / "texture-ad")
    return work, data, make_run(work, data)


def test_sigkill_mid_batch_then_rerun_equals_uninterrupted(run, tmp_path):
    work, data, ckdir = run
    extra = ("--n_samples", "6", "--batch_size", "2")
    env = dict(os.environ, KILL_TEST_STOP=str(STOP), KILL_TEST_MARK=str(tmp_path / "mark"), PYTHONPATH=str(ROOT))
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", DRIVER, *gen_args(data, ckdir, killed, *extra)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not (tmp_path / "mark").exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() < deadline, "generation never reached the kill point"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    folder = killed / "brick" / "scratch"
    assert (folder / "image" / f"{STOP}.png").is_file() and not (folder / "image-mask-ori" / f"{STOP}.png").exists()

    import generate_with_mask as gen

    stats = gen.main(gen_args(data, ckdir, killed, *extra))
    assert stats["written"] == 6 - STOP                     # pair STOP (incomplete) and the rest
    gen.main(gen_args(data, ckdir, tmp_path / "straight", *extra))
    a, b = _tree(folder), _tree(tmp_path / "straight" / "brick" / "scratch")
    assert sorted(a) == sorted(b)                          # no partial, temporary or extra files
    for name in a:
        assert a[name] == b[name], name                    # byte-identical
