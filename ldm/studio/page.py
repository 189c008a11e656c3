"""The studio's web page (gradio): every handler calls ``ldm.studio.core.Studio`` and shows bad input as a
message on the page (``UserError`` → one line in the status box); a bug is logged with its traceback on
the server and reported on the page in one line, and the server keeps serving.

Nothing is fetched from the internet: gradio's frontend is served from the installed wheel, the theme
uses the browser's own fonts, analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` is set before
gradio is imported).
"""
from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path

import numpy as np

from ldm.studio.core import MASK_SOURCES, Studio, editor_scale, mask_from_layers, mask_layer, overlay
from ldm.studio.core import display_scale, prepare_upload, upscale
from utils.cli import user_message

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")

STATUS_ID = "studio-status"
CONCURRENCY = 4  # requests of one kind served at once (the model's own: 1)
CONTROLS_PER_ROW = 3
CSS = f"""
#{STATUS_ID} {{ min-height: 2.4em; }}
#{STATUS_ID} .studio-error {{ color: #b91c1c; font-weight: 600; }}
#{STATUS_ID} .studio-ok {{ color: #166534; }}
#studio-results .thumbnail-item {{ aspect-ratio: 3 / 1 !important; }}
#studio-results .grid-wrap {{ height: auto !important; max-height: none !important; }}
"""


def _html(kind: str, text: str) -> str:
    import html

    return f'<div class="studio-{kind}" data-kind="{kind}">{html.escape(text)}</div>'


def ok(text: str) -> str:
    return _html("ok", text)


def error(text: str) -> str:
    return _html("error", text)


def guarded(n_outputs: int, status_index: int):
    """Wrap a handler: a user error (or any bug) leaves every output unchanged except the status box."""
    import gradio as gr

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - the page must answer every click
                msg = user_message(e)
                if msg is None:
                    traceback.print_exc()
                    msg = f"internal error ({type(e).__name__}: {e}); the traceback is in the server log"
                out = [gr.update() for _ in range(n_outputs)]
                out[status_index] = error(msg)
                return tuple(out) if n_outputs > 1 else out[0]
        return inner
    return wrap


def build_page(studio: Studio, title: str = "FAST studio"):
    import gradio as gr

    keys = studio.run_keys()
    first = keys[0] if keys else None
    k0 = editor_scale(studio.info(first).size) if first else 1
    editor_px = (studio.info(first).size * k0) if first else 512
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])

    def image_choices(key):
        info = studio.info(key)
        files = studio.normal_images(info)
        root = studio.dataset_root(info)
        return [(_rel(p, root), str(p)) for p in files]

    def editor_value(image_u8, k, mask=None):
        return {"background": upscale(image_u8, k), "layers": [mask_layer(mask, k)] if mask is not None else [],
                "composite": None}

    with gr.Blocks(title=title) as page:
        current = gr.State(None)  # {"key", "image" (uint8), "normal_image", "drawn", "drawn_origin"}
        batch_state = gr.State(None)
        gr.Markdown(f"# {title}\nPaint where the defect goes on a normal image, pick the defect type, generate "
                    f"image–mask pairs with the trained model, and keep the good ones in `{studio.out}`.")
        status = gr.HTML(error("; ".join(studio.problems)) if studio.problems else
                         ok(f"{len(keys)} trained run(s) found; device {studio.torch_device()}"), elem_id=STATUS_ID)
        with gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    run = gr.Dropdown(keys, value=first, label="defect type (trained run)", elem_id="studio-run")
                    normal = gr.Dropdown([], label="normal image from the dataset", elem_id="studio-normal")
                upload = gr.Image(label="…or upload a normal image", sources=["upload"], type="numpy",
                                  image_mode="RGB", height=120, elem_id="studio-upload")
                editor = gr.ImageEditor(label="paint the defect mask", type="numpy", image_mode="RGBA", sources=[],
                                        transforms=[], layers=False, format="png",
                                        brush=gr.Brush(colors=["#ff2828"], color_mode="fixed",
                                                       default_size=brush_radius(editor_px, k0)),
                                        canvas_size=(editor_px, editor_px), elem_id="studio-editor")
                with gr.Row():
                    source = gr.Dropdown(list(MASK_SOURCES), value="real", label="mask source", scale=2)
                    mask_no = gr.Number(0, precision=0, label="mask number", minimum=0, scale=1)
                    draw = gr.Button("draw a mask", elem_id="studio-draw", scale=1)
                    clear = gr.Button("clear mask", elem_id="studio-clear", scale=1)
            with gr.Column(scale=5):
                controls = []  # the options' studio controls, CONTROLS_PER_ROW to a row
                for i in range(0, len(studio.controls), CONTROLS_PER_ROW):
                    with gr.Row():
                        controls += [control_widget(c) for c in studio.controls[i:i + CONTROLS_PER_ROW]]
                generate = gr.Button("generate", variant="primary", elem_id="studio-generate")
                gallery = gr.Gallery(label="image | mask | overlay", columns=1, format="png", object_fit="contain",
                                     height="auto", preview=False, elem_id="studio-results", interactive=False)
                scores = gr.Markdown(elem_id="studio-scores")
                keep_pick = gr.CheckboxGroup([], label="keep these pairs", elem_id="studio-keep-pick")
                with gr.Row():
                    keep = gr.Button("keep selected", elem_id="studio-keep")
                    fmt = gr.Dropdown(["mvtec", "mmseg", "hf"], value="mvtec", label="export format")
                    export = gr.Button("export kept pairs", elem_id="studio-export")

        # ------------------------------------------------------------------------------- handlers
        @guarded(4, 3)
        def on_run(key):
            files = image_choices(key)
            if not files:
                raise_user(f"no normal images for {key} in {studio.dataset_root(studio.info(key))}")
            return gr.update(choices=files, value=files[0][1]), gr.update(), gr.update(), ok(f"defect type {key}")

        @guarded(3, 2)
        def on_normal(key, path):
            if not path:
                return gr.update(), gr.update(), gr.update()
            info = studio.info(key)
            image = studio.normal_image(info, path)
            k = editor_scale(info.size)
            cur = {"key": key, "image": image, "normal_image": str(path), "drawn": None, "drawn_origin": None}
            return editor_value(image, k), cur, ok(f"normal image {Path(path).name} ({info.size}×{info.size} px)")

        @guarded(3, 2)
        def on_upload(key, picture):
            if picture is None:
                return gr.update(), gr.update(), gr.update()
            info = studio.info(key)
            image, note = prepare_upload(picture, info.size)
            path = studio.save_upload(image)
            cur = {"key": key, "image": image, "normal_image": str(path), "drawn": None, "drawn_origin": None}
            return (editor_value(image, editor_scale(info.size)), cur,
                    ok(f"uploaded image ready ({note})" if note else "uploaded image ready"))

        @guarded(3, 2)
        def on_draw(key, cur, kind, index):
            info = studio.info(key)
            cur = _require_image(cur, key)
            mask, origin = studio.draw_mask(info, kind, index)
            cur = dict(cur, drawn=mask, drawn_origin=origin)
            return (editor_value(cur["image"], editor_scale(info.size), mask), cur,
                    ok(f"mask {int(index)} from {kind}: {origin} — edit it with the brush or generate"))

        @guarded(3, 2)
        def on_clear(key, cur):
            info = studio.info(key)
            cur = _require_image(cur, key)
            return editor_value(cur["image"], editor_scale(info.size)), dict(cur, drawn=None), ok("mask cleared")

        @guarded(5, 4)
        def on_generate(key, cur, value, *settings):
            info = studio.info(key)
            cur = _require_image(cur, key)
            layers = (value or {}).get("layers") or []
            mask = mask_from_layers(layers, info.size, editor_scale(info.size))
            origin = "painted"
            if cur.get("drawn") is not None:
                origin = cur["drawn_origin"] if np.array_equal(mask, cur["drawn"]) else \
                    f"painted over {cur['drawn_origin']}"
            batch = studio.generate(key, cur["image"], mask, cur["normal_image"], origin,
                                    **{c.name: v for c, v in zip(studio.controls, settings)})
            f = display_scale(info.size)
            items = [(upscale(np.concatenate([p.image, _mask_rgb(p.mask), overlay(p.image, p.mask)], axis=1), f),
                      f"pair {p.index}: score {p.scores['score']:.3f}") for p in batch.pairs]
            table = _score_table(batch)
            choices = [(f"pair {p.index} (score {p.scores['score']:.3f})", p.index) for p in batch.pairs]
            msg = (f"{len(batch.pairs)} pairs in {batch.seconds:.2f} s ({batch.settings['sampler']}, {batch.nfe} "
                   f"network calls each, {batch.device})" + "".join(f"; note: {x}" for x in batch.notes))
            return items, table, gr.update(choices=choices, value=[]), batch, ok(msg)

        @guarded(1, 0)
        def on_keep(batch, picked):
            root, written = studio.keep(batch, picked)
            return ok(f"kept {len(written)} pair(s) as {', '.join(map(str, written))} in {root}")

        @guarded(1, 0)
        def on_export(fmt_):
            target, manifest = studio.export(fmt_)
            return ok(f"exported {manifest['counts']['kept']} pair(s) as {fmt_} to {target}")

        run.change(on_run, [run], [normal, editor, current, status])
        normal.change(on_normal, [run, normal], [editor, current, status])
        upload.upload(on_upload, [run, upload], [editor, current, status])
        # the queue (see launch): generating and drawing masks use the model, one request at a time for all
        # sessions (a waiting request shows its queue position); one export at a time; keeps and the light
        # handlers run side by side (Studio.keep numbers pairs under a lock on the pairs folder)
        draw.click(on_draw, [run, current, source, mask_no], [editor, current, status], concurrency_id="model",
                   concurrency_limit=1)
        clear.click(on_clear, [run, current], [editor, current, status])
        generate.click(on_generate, [run, current, editor, *controls],
                       [gallery, scores, keep_pick, batch_state, status], concurrency_id="model", concurrency_limit=1)
        keep.click(on_keep, [batch_state, keep_pick], [status])
        export.click(on_export, [fmt], [status], concurrency_limit=1)
        if first:
            page.load(on_run, [run], [normal, editor, current, status])
    page.studio_theme, page.studio_css = theme, CSS
    return page


def control_widget(c):
    """The gradio widget of a studio control (``ldm.studio.core.Control``), element id ``studio-<name>``."""
    import gradio as gr

    kw = dict(label=c.label, elem_id=f"studio-{c.name}")
    if c.kind == "checkbox":
        return gr.Checkbox(c.default, **kw)
    if c.kind == "dropdown":
        return gr.Dropdown(list(c.choices), value=c.default, **kw)
    if c.kind == "slider":
        return gr.Slider(c.minimum, c.maximum, value=c.default, step=1, **kw)
    if c.kind in ("integer", "number"):
        return gr.Number(c.default, precision=0 if c.kind == "integer" else None, minimum=c.minimum, **kw)
    return gr.Textbox(c.default, **kw)


def brush_radius(editor_px: int, k: int) -> int:
    """The brush's default radius in editor pixels: 2 image pixels, at least 1.5 % of the editor."""
    return int(max(2 * k, round(0.015 * editor_px)))


def raise_user(msg: str):
    from utils.errors import UserError

    raise UserError(msg)


def _require_image(cur, key):
    if not cur or cur.get("image") is None:
        raise_user("no normal image yet: choose one from the dataset or upload one")
    return cur  # a picture loaded for another defect type is fine when its size matches (generate checks)


def _mask_rgb(mask) -> np.ndarray:
    m = (np.asarray(mask) > 0.5).astype(np.uint8) * 255
    return np.repeat(m[..., None], 3, axis=2)


def _score_table(batch) -> str:
    rows = ["| pair | score (saliency) | background error | mask area |", "|---|---|---|---|"]
    for p in batch.pairs:
        s = p.scores
        rows.append(f"| {p.index} | {_num(s['score'])} | {_num(s['background_error'])} | {s['mask_area']:.2%} |")
    rows.append(f"\n{batch.run_key}, {batch.settings['sampler']} {batch.settings['steps']} steps, FARM "
                f"{'on' if batch.settings['farm_mode'] != 'off' else 'off'}, seed {batch.settings['seed']}: "
                f"**{batch.seconds:.2f} s** for {len(batch.pairs)} pairs on {batch.device}")
    return "\n".join(rows)


def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.4f}"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return Path(p).name


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; returns (app, local_url) when ``block`` is False."""
    page = build_page(studio)
    page.queue(default_concurrency_limit=CONCURRENCY)  # per event; generate/draw/export set their own (1)
    app, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                              inbrowser=False, show_error=False, quiet=False, theme=page.studio_theme,
                              css=page.studio_css, footer_links=[],
                              ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False)
    return page, url
