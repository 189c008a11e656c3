"""Grouped bar charts as PNG with PIL only (matplotlib is not installed in this environment).

Why: the synthesizer comparison needs one picture per metric (categories × synthesizers); drawing
rectangles and text with PIL keeps the dependency set unchanged and the output deterministic.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from utils.atomic import atomic_path

# Distinguishable colours (Okabe-Ito palette, colour-blind safe).
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
           (213, 94, 0), (240, 228, 66), (100, 100, 100)]


def font(size: int = 14) -> ImageFont.ImageFont:
    """PIL's bundled font at ``size`` (falls back to the bitmap default on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str, f) -> int:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=f)
    return x1 - x0


def bar_chart(groups: Sequence[str], series: Mapping[str, Sequence[float]], path: str | os.PathLike,
              title: str = "", ylabel: str = "", ymax: float | None = None, value_fmt: str = "{:.1f}",
              scale: float = 100.0) -> None:
    """Grouped bars: one group per entry of ``groups``, one coloured bar per series (legend on top).

    Values are multiplied by ``scale`` (metrics in [0, 1] are shown in %); NaN bars are drawn as an
    "n/a" label so a missing number is never mistaken for 0.
    """
    names = list(series)
    n_g, n_s = len(groups), max(1, len(names))
    bar_w, gap = 24, 26
    group_w = n_s * bar_w + gap
    left, right, top, bottom = 70, 20, 70, 90
    plot_h = 300
    f, fs, ft = font(13), font(11), font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = sum(16 + _text_w(probe, s, f) + 18 for s in names)
    width = max(420, left + right + n_g * group_w, left + _text_w(probe, title, ft) + right, left + legend_w + right)
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    vals = [v * scale for s in names for v in series[s] if v is not None and not math.isnan(v)]
    top_val = ymax if ymax is not None else (max(vals) * 1.1 if vals else 1.0)
    top_val = top_val if top_val > 0 else 1.0
    y0 = top + plot_h
    # axes and grid
    for k in range(6):
        yv = top_val * k / 5
        y = y0 - plot_h * k / 5
        d.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        lab = f"{yv:.0f}" if top_val >= 10 else f"{yv:.2f}"
        d.text((left - 8 - _text_w(d, lab, fs), y - 7), lab, fill="black", font=fs)
    d.line([(left, top), (left, y0), (width - right, y0)], fill="black")
    if title:
        d.text((left, 8), title, fill="black", font=ft)
    if ylabel:
        d.text((8, top - 22), ylabel, fill="black", font=fs)
    # legend
    lx = left
    for i, s in enumerate(names):
        c = PALETTE[i % len(PALETTE)]
        d.rectangle([lx, 36, lx + 12, 48], fill=c)
        d.text((lx + 16, 34), s, fill="black", font=f)
        lx += 16 + _text_w(d, s, f) + 18
    # bars
    for g, gname in enumerate(groups):
        gx = left + gap // 2 + g * group_w
        for i, s in enumerate(names):
            v = series[s][g]
            x = gx + i * bar_w
            c = PALETTE[i % len(PALETTE)]
            if v is None or math.isnan(v):
                d.text((x + 1, y0 - 14), "n/a", fill=(120, 120, 120), font=fs)
                continue
            h = plot_h * min(v * scale, top_val) / top_val
            d.rectangle([x, y0 - h, x + bar_w - 3, y0], fill=c)
            lab = value_fmt.format(v * scale)
            d.text((x + (bar_w - 3 - _text_w(d, lab, fs)) / 2, y0 - h - 13), lab, fill="black", font=fs)
        tw = _text_w(d, gname, f)
        d.text((gx + (n_s * bar_w - tw) / 2, y0 + 8), gname, fill="black", font=f)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def stack_vertical(paths_or_images: Sequence, path: str | os.PathLike, pad: int = 8) -> None:
    """Stack several PNGs (e.g. one chart per metric) into one image, left-aligned on white."""
    ims = [p if isinstance(p, Image.Image) else Image.open(p).convert("RGB") for p in paths_or_images]
    w = max(i.width for i in ims)
    h = sum(i.height for i in ims) + pad * (len(ims) - 1)
    out = Image.new("RGB", (w, h), "white")
    y = 0
    for i in ims:
        out.paste(i, (0, y))
        y += i.height + pad
    with atomic_path(path, suffix=".png") as tmp:
        out.save(tmp, format="PNG")
