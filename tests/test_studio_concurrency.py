"""The studio under concurrent use: several sessions generate and keep pairs at the same time.

1. The page (``ldm.studio.page.launch``, the server ``scripts/studio.py`` starts) on 127.0.0.1, and 4
   ``gradio_client`` clients, each its own browser session, with its own normal image, painted mask and
   seed. They click "generate" at the same moment, then "keep" at the same moment. Every request
   completes (generation waits in the queue, one at a time; keeps run side by side); each session gets
   exactly the pairs its own image, mask and seed give (checked pixel for pixel against the library
   called directly afterwards), and the pairs folder ends with every kept pair once: pairs.csv without
   lost or duplicated rows, unique numbers, every row's files present, each number holding the pixels of
   the session that was told it.
2. Simultaneous keeps from two studios in this process and one in another process on the same ``--out``
   (as two people running ``scripts/studio.py`` with the same folder), each pair write slowed down so
   that unsynchronised keeps would take the same numbers: the same guarantees.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.io import load_image_uint8
from ldm.pairs import read_index
from ldm.studio.core import Batch, Pair, Studio, display_scale, editor_scale, mask_layer, upscale
from tests.studio_fixtures import SIZE, free_port, make_world

ROOT = Path(__file__).resolve().parents[1]
KEY = "brick+scratch"
CLIENTS = 4
PER_BATCH = 2
TIMEOUT = 120  # seconds for every request of the test together


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("studio-concurrency"))


def _png(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _session_mask(i: int) -> np.ndarray:
    """Client i paints its own band: rows 3+7i .. 3+7i+4, columns 4+i .. 28 (distinct for every client)."""
    m = np.zeros((SIZE, SIZE), np.float32)
    m[3 + 7 * i:3 + 7 * i + 4, 4 + i:28] = 1
    return m


def _rows_consistent(root: Path) -> list:
    rows = read_index(root)
    ns = [r["n"] for r in rows]
    assert len(ns) == len(set(ns)), f"duplicated rows in pairs.csv: {ns}"
    on_disk = sorted(int(p.stem) for p in (root / "image-mask-ori").glob("*.png"))
    assert sorted(ns) == on_disk, f"pairs.csv lists {sorted(ns)} but the folder holds {on_disk}"
    for r in rows:
        for rel in (r["image"], r["mask"], f"image-mask-ori/{r['n']}.png", f"meta/{r['n']}.json"):
            assert (root / rel).is_file(), f"row {r['n']}: {rel} missing"
    return rows


# ------------------------------------------------------------------------------------------ the page
def test_four_sessions_generate_and_keep_at_the_same_time(world, tmp_path):
    from gradio_client import Client, handle_file

    from ldm.studio.page import launch

    work, data, _ = world
    out = tmp_path / "pairs"
    studio = Studio(work / "run", out, device="cpu")
    info = studio.info(KEY)
    normals = [str(p) for p in studio.normal_images(info)][:CLIENTS]
    assert len(normals) == CLIENTS
    page, url = launch(studio, host="127.0.0.1", port=free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    k, f = editor_scale(SIZE), display_scale(SIZE)
    results: dict = {}
    errors: list = []
    ready = threading.Barrier(CLIENTS, timeout=TIMEOUT)
    deadline = time.time() + TIMEOUT

    def session(i: int) -> None:
        try:
            c = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / f"dl{i}"))
            c.predict(KEY, api_name="/on_run")
            c.predict(KEY, normals[i], api_name="/on_normal")  # this session's normal image (its state)
            image = load_image_uint8(normals[i], SIZE)
            editor = {"background": handle_file(_png(upscale(image, k), tmp_path / f"bg{i}.png")),
                      "layers": [handle_file(_png(mask_layer(_session_mask(i), k), tmp_path / f"layer{i}.png"))],
                      "composite": None, "id": None}
            ready.wait()  # everyone clicks "generate" now
            job = c.submit(KEY, editor, "aias", 4, 100 + i, True, PER_BATCH, api_name="/on_generate")
            gallery, _, _, status = job.result(timeout=max(1, deadline - time.time()))
            ready.wait()  # everyone clicks "keep" now
            kept = c.submit(list(range(PER_BATCH)), api_name="/on_keep").result(timeout=max(1, deadline - time.time()))
            strips = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery]
            results[i] = {"status": status, "strips": strips, "kept": kept}
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))
            ready.abort()

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1, deadline - time.time()))
        assert not any(t.is_alive() for t in threads), f"requests still running after {TIMEOUT} s"
    finally:
        page.close()
    assert not errors, errors

    root = out / "brick" / "scratch"
    told = {}
    for i in range(CLIENTS):
        r = results[i]
        assert f"{PER_BATCH} pairs in" in r["status"] and 'data-kind="ok"' in r["status"], r["status"]
        m = re.search(r"kept (\d+) pair\(s\) as ([\d, ]+) in (.+)</div>", r["kept"])
        assert m and int(m.group(1)) == PER_BATCH and Path(m.group(3)) == root, r["kept"]
        told[i] = [int(x) for x in m.group(2).split(",")]
        # this session's pairs: its mask, its image outside the mask, its seed (the library, called directly)
        image = load_image_uint8(normals[i], SIZE)
        expected = studio.generate(KEY, image, _session_mask(i), normals[i], "painted", steps=4, seed=100 + i,
                                   n=PER_BATCH)
        assert len(r["strips"]) == PER_BATCH
        for strip, pair in zip(r["strips"], expected.pairs):
            panels = strip[::f, ::f]
            np.testing.assert_array_equal(panels[:, SIZE:2 * SIZE, 0] > 127, _session_mask(i) > 0.5)
            np.testing.assert_array_equal(panels[:, :SIZE], pair.image)
        results[i]["expected"] = expected
    numbers = sorted(n for ns in told.values() for n in ns)
    assert numbers == list(range(CLIENTS * PER_BATCH)), told  # distinct numbers, none skipped

    rows = _rows_consistent(root)
    assert sorted(r["n"] for r in rows) == numbers
    for i, ns in told.items():
        for j, n in enumerate(ns):
            meta = json.loads((root / "meta" / f"{n}.json").read_text())
            assert meta["studio_seed"] == 100 + i and meta["studio_index"] == j and meta["normal_image"] == normals[i]
            np.testing.assert_array_equal(np.asarray(Image.open(root / "image" / f"{n}.png").convert("RGB")),
                                          results[i]["expected"].pairs[j].image)
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no temporary files


# --------------------------------------------------------------------- keeps from two processes at once
KEEPER = r"""
import os, sys, time
sys.path.insert(0, os.getcwd())
import numpy as np
import ldm.pairs
from tests.test_studio_concurrency import keeper_batch, slow_writes
from ldm.studio.core import Studio

run, out, who, go = sys.argv[1:5]
studio = Studio(run, out, device="cpu")
batch = keeper_batch(studio, int(who))
slow_writes()
open(go + ".ready-" + who, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
print("KEPT", studio.keep(batch, range(len(batch.pairs)))[1], flush=True)
"""

PAIRS_PER_KEEP = 3


def keeper_batch(studio: Studio, who: int) -> Batch:
    """A batch of keeper ``who``'s own pixels (random: each pair is recognisable by its image)."""
    info = studio.info(KEY)
    run = studio.load(info)
    rng = np.random.default_rng(who)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[8:16, 8:24] = 1
    pairs = [Pair(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), mask,
                  rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), 1000 * who + j, j, {})
             for j in range(PAIRS_PER_KEEP)]
    settings = {"sampler": "aias", "steps": 4, "farm_mode": "input", "seed": who, "weight_idx": run.step,
                "n": PAIRS_PER_KEEP}
    return Batch(KEY, pairs, 0.0, 4, "cpu", settings, f"normal-{who}.png", "painted")


def slow_writes(seconds: float = 0.05) -> None:
    """Each pair write takes a while, so keeps that were not serialised would interleave and reuse numbers."""
    import ldm.pairs

    real = ldm.pairs.PairWriter.write

    def write(self, *a, **kw):
        time.sleep(seconds)
        return real(self, *a, **kw)

    ldm.pairs.PairWriter.write = write


def test_simultaneous_keeps_from_two_studios_and_another_process(world, tmp_path, monkeypatch):
    work, _, _ = world
    out = tmp_path / "pairs"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", KEEPER, str(work / "run"), str(out), "9", str(go)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studios = [Studio(work / "run", out, device="cpu"), Studio(work / "run", out, device="cpu")]
        keepers = {who: (studios[who % 2], keeper_batch(studios[who % 2], who)) for who in range(4)}
        import ldm.pairs

        monkeypatch.setattr(ldm.pairs.PairWriter, "write", ldm.pairs.PairWriter.write)  # undone after the test
        slow_writes()
        deadline = time.time() + TIMEOUT
        while not Path(str(go) + ".ready-9").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the other studio process never got ready"
            time.sleep(0.05)
        told, errors = {}, []

        def keep(who):
            studio, batch = keepers[who]
            while not go.exists():
                time.sleep(0.001)
            try:
                told[who] = studio.keep(batch, range(PAIRS_PER_KEEP))[1]
            except BaseException as e:  # noqa: BLE001
                errors.append((who, repr(e)))

        threads = [threading.Thread(target=keep, args=(w,), daemon=True) for w in keepers]
        for t in threads:
            t.start()
        go.touch()  # everyone keeps now
        for t in threads:
            t.join(timeout=max(1, deadline - time.time()))
        stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert not errors and not any(t.is_alive() for t in threads), errors
    told[9] = json.loads(re.search(r"KEPT (\[.*\])", stdout).group(1))
    numbers = sorted(n for ns in told.values() for n in ns)
    assert numbers == list(range(5 * PAIRS_PER_KEEP)), told
    root = out / "brick" / "scratch"
    rows = _rows_consistent(root)
    assert sorted(r["n"] for r in rows) == numbers
    for who, ns in told.items():
        expected = keeper_batch(studios[0], who)
        for j, n in enumerate(ns):
            np.testing.assert_array_equal(np.asarray(Image.open(root / "image" / f"{n}.png").convert("RGB")),
                                          expected.pairs[j].image, err_msg=f"keeper {who}, pair {j} at {n}")
            assert json.loads((root / "meta" / f"{n}.json").read_text())["normal_image"] == f"normal-{who}.png"
