"""The studio (scripts/studio.py): its library core, and the page driven in a real browser.

The browser test starts ``scripts/studio.py`` on a tiny trained run (``tests.run_fixture``), opens the
page in Debian's Chromium through Playwright, paints a stroke with the mouse, generates, and checks the
pair the page returns against the stroke and the normal image. Chromium comes from apt and is installed
by ``scripts/setup_env.sh``; in CI (``CI`` set) a missing browser fails the test instead of skipping it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.io import load_image_uint8
from ldm.pairs import read_index
from ldm.studio.core import (Studio, display_scale, editor_scale, find_runs, mask_from_layers, mask_layer,
                             prepare_upload)
from tests.run_fixture import gen_args
from tests.studio_fixtures import SIZE, free_port, make_world, normal_path
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset and two trained runs side by side: ``run`` (brick+scratch) and ``run-crack`` (brick+crack)."""
    return make_world(tmp_path_factory.mktemp("studio"))


# ------------------------------------------------------------------------------------------ core
def test_runs_beside_the_named_one_are_offered_and_missing_models_are_reported(world, tmp_path):
    work, data, ckdir = world
    runs, problems = find_runs(work / "run")
    assert [r.key for r in runs] == ["brick+scratch", "brick+crack"] and problems == []
    assert runs[0].pt_path == ckdir and runs[0].size == SIZE
    runs, problems = find_runs(ckdir)  # the checkpoints folder names the same run
    assert runs[0].key == "brick+scratch"
    runs, problems = find_runs(tmp_path / "nothing-here")
    assert runs == [] and problems and all(p.startswith("no model found") for p in problems)
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)  # a run that exported nothing yet
    runs, problems = find_runs(tmp_path / "half")
    assert runs == [] and "no saved config" in problems[0]
    studio = Studio(tmp_path / "nothing-here", tmp_path / "pairs")
    with pytest.raises(UserError, match="no model found"):
        studio.info("brick+scratch")


def test_loaded_models_are_cached_and_bounded(world, tmp_path):
    work, _, _ = world
    studio = Studio(work / "run", tmp_path / "pairs", device="cpu", max_models=1)
    scratch = studio.load(studio.info("brick+scratch"))
    assert studio.load(studio.info("brick+scratch")) is scratch and scratch.name == "brick+scratch"
    assert studio.load(studio.info("brick+crack")).name == "brick+crack" and len(studio._models) == 1
    assert studio.load(studio.info("brick+scratch")) is not scratch  # evicted, loaded again


def test_painted_layers_become_the_mask_block_by_block():
    k = editor_scale(SIZE)
    assert k == 16 and display_scale(SIZE) == 8
    layer = np.zeros((SIZE * k, SIZE * k, 4), np.uint8)
    layer[5 * k:7 * k, 3 * k:10 * k, 3] = 255           # rows 5-6, cols 3-9 fully painted
    layer[9 * k:9 * k + k // 2 - 1, 3 * k:10 * k, 3] = 255  # row 9 painted on less than half of each block
    layer[12 * k:12 * k + k // 2 + 1, 3 * k:10 * k, 3] = 200  # row 12 on more than half
    mask = mask_from_layers([layer], SIZE, k)
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[5:7, 3:10] = 1
    expected[12, 3:10] = 1
    np.testing.assert_array_equal(mask, expected)
    # the studio's own layer (a drawn mask) reads back as the same mask
    np.testing.assert_array_equal(mask_from_layers([mask_layer(expected, k)], SIZE, k), expected)
    assert mask_from_layers([], SIZE, k).sum() == 0
    with pytest.raises(UserError, match="another image size"):
        mask_from_layers([np.zeros((100, 100, 4), np.uint8)], SIZE, k)


def test_uploads_square_are_resized_other_shapes_refused():
    square = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    out, note = prepare_upload(square, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8 and "64×64 → 32×32" in note
    same, note = prepare_upload(square[:SIZE, :SIZE], SIZE)
    assert note is None and np.array_equal(same, square[:SIZE, :SIZE])
    with pytest.raises(UserError, match="40×30 px.*crop it to a square"):
        prepare_upload(np.zeros((30, 40, 3), np.uint8), SIZE)


def test_empty_and_too_small_masks_are_refused_with_a_message(world, tmp_path):
    work, data, _ = world
    studio = Studio(work / "run", tmp_path / "pairs", device="cpu")
    image = load_image_uint8(normal_path(data), SIZE)
    mask = np.zeros((SIZE, SIZE), np.float32)
    with pytest.raises(UserError, match="the mask is empty"):
        studio.generate("brick+scratch", image, mask, "x", "painted", steps=4, n=1)
    mask[10:13, 10:15] = 1  # 15 px < one 4×4 latent cell
    with pytest.raises(UserError, match="too small for the latent grid.*15 px.*4×4 = 16 px"):
        studio.generate("brick+scratch", image, mask, "x", "painted", steps=4, n=1)
    with pytest.raises(UserError, match="generates 32×32"):
        studio.generate("brick+scratch", np.zeros((64, 64, 3), np.uint8), np.ones((64, 64)), "x", "painted",
                        steps=4, n=1)
    with pytest.raises(UserError, match="AIAS needs more than 2 steps"):
        studio.generate("brick+scratch", image, np.ones((SIZE, SIZE)), "x", "painted", steps=2, n=1)
    with pytest.raises(UserError, match="batch size must be 1..16"):
        studio.generate("brick+scratch", image, np.ones((SIZE, SIZE)), "x", "painted", steps=4, n=17)


def test_a_studio_pair_is_the_pair_generate_with_mask_writes(world, tmp_path):
    """Same image, mask and seed: the studio's pair 0 equals generate_with_mask.py's pair 0, pixel for pixel
    (both go through ldm.generation: load_run, make_sampler, model.generate, pair_seed)."""
    import generate_with_mask as gen

    work, data, ckdir = world
    gen.main(gen_args(data, ckdir, tmp_path / "gen", "--n_samples", "1", "--batch_size", "1", "--seed", "3"))
    folder = tmp_path / "gen" / "brick" / "scratch"
    meta = json.loads((folder / "meta" / "0.json").read_text())
    image = load_image_uint8(meta["normal_image"], SIZE)
    mask = (np.asarray(Image.open(folder / "mask" / "0.png")) > 127).astype(np.float32)
    studio = Studio(work / "run", tmp_path / "pairs", device="cpu")
    batch = studio.generate("brick+scratch", image, mask, meta["normal_image"], "painted", sampler="aias",
                            steps=4, seed=3, farm=True, n=1)
    expected = np.asarray(Image.open(folder / "image" / "0.png").convert("RGB"))
    np.testing.assert_array_equal(batch.pairs[0].image, expected)
    assert batch.pairs[0].seed == meta["seed"]
    # FARM off is another pair, still pasted exactly outside the mask
    off = studio.generate("brick+scratch", image, mask, meta["normal_image"], "painted", steps=4, seed=3,
                          farm=False, n=1).pairs[0]
    assert not np.array_equal(off.image, expected)
    np.testing.assert_array_equal(off.image[mask == 0], image[mask == 0])


def test_keep_writes_the_standard_layout_and_refuses_mixed_settings(world, tmp_path):
    work, data, _ = world
    studio = Studio(work / "run", tmp_path / "pairs", device="cpu")
    image = load_image_uint8(normal_path(data), SIZE)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[8:16, 6:26] = 1
    batch = studio.generate("brick+scratch", image, mask, str(normal_path(data)), "painted", steps=4, seed=1, n=3)
    assert len(batch.pairs) == 3 and batch.seconds > 0 and batch.nfe == 4
    with pytest.raises(UserError, match="tick the pairs"):
        studio.keep(batch, [])
    root, written = studio.keep(batch, [2, 0])
    assert written == [0, 1] and root == tmp_path / "pairs" / "brick" / "scratch"
    rows = read_index(root)
    assert [r["n"] for r in rows] == [0, 1] and [r["seed"] for r in rows] == [batch.pairs[0].seed,
                                                                              batch.pairs[2].seed]
    assert all(r["mask_origin"] == "painted" and r["normal_image"] == str(normal_path(data)) for r in rows)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "image" / "1.png").convert("RGB")),
                                  batch.pairs[2].image)
    for name in ("synthesis.json", "provenance.json", "contact_sheet.png", "image-mask-ori/1.png"):
        assert (root / name).is_file(), name
    # another seed and mask: same folder; another sampler: refused, naming the setting
    batch2 = studio.generate("brick+scratch", image, 1 - mask, "x", "painted", steps=4, seed=9, n=1)
    assert studio.keep(batch2, [0])[1] == [2]
    batch3 = studio.generate("brick+scratch", image, mask, "x", "painted", sampler="ddim", steps=4, n=1)
    with pytest.raises(UserError, match="sampler"):
        studio.keep(batch3, [0])
    target, manifest = studio.export("mvtec")
    assert manifest["counts"]["kept"] == 3 and (target / "brick" / "ground_truth" / "scratch").is_dir()
    assert studio.export("mvtec")[1]["counts"]["kept"] == 3  # re-export replaces its own earlier export


def test_mask_sources_draw_masks_at_the_run_size(world, tmp_path):
    work, data, _ = world
    studio = Studio(work / "run", tmp_path / "pairs", device="cpu")
    info = studio.info("brick+scratch")
    real_files = {str(p) for p in (data / "brick" / "ground_truth" / "scratch").iterdir()}
    for kind in ("real", "augmented", "perlin"):
        mask, origin = studio.draw_mask(info, kind, 3)
        assert mask.shape == (SIZE, SIZE) and mask.any(), kind
        if kind == "real":
            assert origin in real_files
    with pytest.raises(UserError, match="no generated masks"):
        studio.draw_mask(info, "pairs", 0)
    with pytest.raises(UserError, match="mask model"):  # 'generated' samples a mask model (--mask_model)
        studio.draw_mask(info, "generated", 0)
    image = load_image_uint8(normal_path(data), SIZE)
    batch = studio.generate("brick+scratch", image, studio.draw_mask(info, "real", 0)[0], "x", "real", steps=4, n=1)
    studio.keep(batch, [0])
    mask, origin = studio.draw_mask(info, "pairs", 0)
    np.testing.assert_array_equal(mask, batch.pairs[0].mask)
    assert origin.endswith("mask/0.png")


def test_page_handlers_show_errors_instead_of_raising():
    import gradio as gr

    from ldm.studio.page import guarded

    @guarded(3, 1)
    def user_mistake():
        raise UserError("the mask is empty: paint")

    @guarded(1, 0)
    def bug():
        raise KeyError("oops")

    out = user_mistake()
    assert "the mask is empty" in out[1] and 'data-kind="error"' in out[1]
    assert isinstance(out[0], dict) and out[0] == gr.update()
    assert "internal error (KeyError" in bug()


# --------------------------------------------------------------------------------------- browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions"]


def chromium_path() -> str:
    path = os.environ.get("FAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
        why = "python playwright is not installed (bash scripts/setup_env.sh)"
    else:
        why = "no chromium on PATH (apt-get install chromium; scripts/setup_env.sh does it)"
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    return path


@pytest.fixture()
def server(world, tmp_path):
    work, data, _ = world
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "scripts/studio.py", "--run", str(work / "run"), "--port", str(port),
                             "--out", str(tmp_path / "pairs"), "--device", "cpu", "--threads", "1"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"studio.py exited with {proc.returncode}:\n{log.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("studio.py did not start serving within 120 s")
            time.sleep(0.3)
    yield url, tmp_path / "pairs", work, data, log
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def image_rect(shot: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the normal image inside a screenshot of the editor canvas: the rows
    and columns that are mostly not the editor's white backdrop."""
    ink = shot[..., :3].astype(int).sum(axis=2) < 600
    rows = np.nonzero(ink.mean(axis=1) > 0.3)[0]
    cols = np.nonzero(ink.mean(axis=0) > 0.3)[0]
    if not len(rows) or not len(cols):
        raise IndexError("no image in the canvas")
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def wait_idle(page, selector: str, timeout: float = 15) -> None:
    """Until the component's gradio status tracker is hidden (no event pending on it). Best effort:
    under load gradio sometimes leaves the tracker of an already-finished event visible, so after
    ``timeout`` the test goes on -- the next steps check what the page shows themselves (the editor
    must show the image, the stroke must be on the canvas)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tracker = json.dumps(f"{selector} [data-testid=status-tracker]")
    try:
        page.wait_for_function(f"(() => {{ const t = document.querySelector({tracker});"
                               " return !t || t.classList.contains('hide'); })()", timeout=timeout * 1000)
    except PlaywrightTimeout:
        time.sleep(1.0)


def wait_image_rect(canvas, timeout: float = 60) -> tuple[int, int, int, int]:
    """``image_rect`` once the editor has drawn the normal image (it renders on animation frames)."""
    deadline = time.time() + timeout
    while True:
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))
        try:
            return image_rect(shot)
        except IndexError:
            if time.time() > deadline:
                Image.fromarray(shot).save(Path(tempfile.gettempdir()) / "studio-canvas.png")
                raise AssertionError("the editor never showed the normal image (canvas saved as "
                                     f"{Path(tempfile.gettempdir()) / 'studio-canvas.png'})") from None
            time.sleep(0.3)


def coverage(red: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each image pixel's on-screen block that the brush painted."""
    h, w = red.shape
    iy = np.minimum((np.arange(h) * size) // h, size - 1)
    ix = np.minimum((np.arange(w) * size) // w, size - 1)
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    np.add.at(total, (iy[:, None], ix[None, :]), red)
    np.add.at(count, (iy[:, None], ix[None, :]), 1)
    return total / count


def status_text(page) -> str:
    return page.locator("#studio-status").inner_text()


def wait_status(page, text: str, timeout: float = 60) -> str:
    page.wait_for_function(f"(document.querySelector('#studio-status') || {{innerText: ''}})"
                           f".innerText.includes({json.dumps(text)})", timeout=timeout * 1000)
    return status_text(page)


def test_browser_paint_a_stroke_generate_and_keep(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, pairs, work, data, log = server
    normal = load_image_uint8(normal_path(data), SIZE)
    external = []
    with sync_playwright() as pw:
        # playwright gives every launch a fresh temporary profile (--user-data-dir)
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})

            def local_only(route):
                u = route.request.url
                if u.startswith(url) or u.startswith(("data:", "blob:")):
                    return route.continue_()
                external.append(u)
                return route.abort()

            page.route("**/*", local_only)
            page.goto(url)
            wait_status(page, "normal image 000.png (32×32 px)")
            canvas = page.locator("#studio-editor canvas").first
            time.sleep(0.5)  # the background texture is drawn on the next animation frame

            # 1. generate with nothing painted: a message on the page, not a stack trace
            page.click("#studio-generate")
            msg = wait_status(page, "the mask is empty")
            assert page.locator("#studio-status [data-kind=error]").count() == 1 and "Traceback" not in msg

            # 2. paint a horizontal stroke with the mouse along the boundary between image rows 15 and 16,
            #    from the centre of column 8 to the centre of column 23
            box = canvas.bounding_box()
            top, left, h, w = wait_image_rect(canvas)
            assert abs(h - w) <= 2 and h > 100, (h, w)
            s = w / SIZE
            y = box["y"] + top + 16 * s
            x0, x1 = box["x"] + left + 8.5 * s, box["x"] + left + 23.5 * s
            page.mouse.move(x0, y)
            page.mouse.down()
            for i in range(1, 7):
                page.mouse.move(x0 + (x1 - x0) * i / 6, y)
            page.mouse.up()
            time.sleep(0.5)
            after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
            shown = after[top:top + h, left:left + w]
            red = (shown[..., 0] > 200) & (shown[..., 1] < 90) & (shown[..., 2] < 90)
            cover = coverage(red, SIZE)

            # 4. generate 2 pairs
            page.fill("#studio-steps input", "4")
            page.fill("#studio-n input[type=number]", "2")
            page.locator("#studio-n input[type=number]").press("Enter")
            page.click("#studio-generate")
            msg = wait_status(page, "pairs in")
            assert msg.startswith("2 pairs in") and "aias, 4 network calls each, cpu" in msg
            srcs = [page.locator("#studio-results img").nth(i).get_attribute("src") for i in range(2)]
            strips = [np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
                      for src in srcs]
            scores = page.locator("#studio-scores").inner_text()

            # 5. keep pair 1
            page.locator("#studio-keep-pick label", has_text="pair 1").click()
            page.click("#studio-keep")
            wait_status(page, "kept 1 pair(s) as 0")

            # 6. a mask drawn from a mask source (real mask 0) goes through the editor and back unchanged
            page.click("#studio-draw")
            wait_status(page, "mask 0 from real")
            wait_idle(page, "#studio-editor")
            time.sleep(0.5)  # the editor draws the new layer on its next animation frames
            page.click("#studio-generate")
            wait_status(page, "pairs in")
            drawn = np.asarray(Image.open(io.BytesIO(page.request.get(
                page.locator("#studio-results img").first.get_attribute("src")).body())).convert("RGB"))

            # 7. an image of another shape: refused with a message on the page (last: after a refused
            #    upload gradio 6's image editor can stay "processing" for a while, which is not ours to test)
            odd = tmp_path / "odd.png"
            Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(odd)
            page.set_input_files("#studio-upload input[type=file]", str(odd))
            wait_status(page, "crop it to a square")
        finally:
            browser.close()

    # the painted stroke: two rows of 15 pixels under the path are fully painted on screen
    assert cover[15:17, 9:23].min() > 0.9 and cover[:, :6].max() == 0 and cover[20:].max() == 0
    f = display_scale(SIZE)
    kept = {}
    for i, strip in enumerate(strips):
        assert strip.shape == (SIZE * f, 3 * SIZE * f, 3)
        panels = strip[::f, ::f]  # nearest-neighbour upscaled panels back to 32×32
        image, mask = panels[:, :SIZE], panels[:, SIZE:2 * SIZE, 0] > 127
        # the pair's mask is the stroke: every pixel the brush covered for sure is in, none it missed
        assert mask[cover >= 0.75].all() and not mask[cover <= 0.25].any()
        assert mask[15:17, 9:23].all() and mask.sum() >= 30
        # outside the mask the pixels are the normal image's exactly; inside, the model changed them
        np.testing.assert_array_equal(image[~mask], normal[~mask])
        assert (image[mask] != normal[mask]).any()
        kept[i] = (image, mask)
    assert "score (saliency)" in scores and scores.count("| 0 |") + scores.count("| 1 |") >= 0
    assert not np.array_equal(kept[0][0], kept[1][0])  # two seeds, two pairs
    # the kept pair in the standard layout: the same pixels the page showed
    root = pairs / "brick" / "scratch"
    image, mask = kept[1]
    np.testing.assert_array_equal(np.asarray(Image.open(root / "image" / "0.png").convert("RGB")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "mask" / "0.png")) > 127, mask)
    rows = read_index(root)
    assert len(rows) == 1 and rows[0]["mask_origin"] == "painted"
    assert rows[0]["normal_image"] == str(normal_path(data)) and rows[0]["background_error"] == 0
    studio = Studio(work / "run", pairs)  # the same mask source, outside the server
    real0 = studio.draw_mask(studio.info("brick+scratch"), "real", 0)[0] > 0.5
    np.testing.assert_array_equal(drawn[::f, ::f][:, SIZE:2 * SIZE, 0] > 127, real0)
    assert external == [], f"the page tried to reach the internet: {external[:5]}"
    log.seek(0)
    server_log = log.read()  # (gradio logs a ClientDisconnect when the browser closes mid-upload: not ours)
    assert str(ROOT / "ldm") not in server_log and "internal error" not in server_log
