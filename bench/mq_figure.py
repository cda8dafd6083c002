"""The memory-quality figure, drawn with PIL (no matplotlib): filmstrips of one timeline under every policy,
metric bars, and two curves (new scene shown after a hard cut; detail match over a recalled scene)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "rolling": (120, 120, 120), "flush": (230, 140, 30), "echo": (30, 90, 200),
    "echo-no-hier": (150, 70, 190), "echo-no-recall": (20, 160, 150), "echo-no-decay": (90, 170, 60),
}
THUMB, GAP, LABEL_W = 64, 10, 130
BG, INK, GRID = (255, 255, 255), (20, 20, 20), (215, 215, 215)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _thumb(frame: torch.Tensor) -> Image.Image:
    arr = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr).resize((THUMB, THUMB), Image.NEAREST)


def _filmstrips(result: dict, strips: dict, timeline: Any, fps: int) -> Image.Image:
    """One row per policy; three thumbnails per scene (early, middle, late), scenes separated by a gap."""
    policies = result["policies"]
    chunks, ranges = strips["_chunks"], strips["_ranges"]
    n_scenes = len(chunks)
    width = LABEL_W + n_scenes * (3 * THUMB + GAP)
    head = 44
    img = Image.new("RGB", (width, head + len(policies) * (THUMB + 6) + 8), BG)
    d = ImageDraw.Draw(img)
    small, tiny = _font(12), _font(10)
    modes = ["start", "smooth", "hard cut", "hard cut", f"recall of {timeline.recall_source + 1}"]
    for i, (first, end) in enumerate(chunks):
        x0 = LABEL_W + i * (3 * THUMB + GAP)
        a, b = ranges[first][0], ranges[end - 1][1]
        d.text((x0, 4), f"scene {i + 1}: {modes[i] if i < len(modes) else ''}", fill=INK, font=small)
        d.text((x0, 20), f"{a / fps:.1f}-{b / fps:.1f} s", fill=(90, 90, 90), font=tiny)
    for r, name in enumerate(policies):
        y = head + r * (THUMB + 6)
        d.rectangle((4, y + THUMB // 2 - 8, 16, y + THUMB // 2 + 4), fill=COLOURS.get(name, INK))
        d.text((22, y + THUMB // 2 - 9), name, fill=INK, font=small)
        frames = strips[name]
        for i, (first, end) in enumerate(chunks):
            a, b = ranges[first][0], min(ranges[end - 1][1], frames.shape[0])
            for j, frac in enumerate((0.08, 0.5, 0.92)):
                t = min(b - 1, a + int(frac * (b - a)))
                img.paste(_thumb(frames[t]), (LABEL_W + i * (3 * THUMB + GAP) + j * THUMB, y))
    return img


def _bars(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, values: Sequence[float],
          names: Sequence[str], lines: Sequence[tuple[float, str, tuple[int, int, int]]] = (),
          upper: float | None = None, fmt: str = "{:.2f}") -> None:
    x0, y0, x1, y1 = box
    d.text((x0, y0), title, fill=INK, font=_font(12))
    top, bottom, left = y0 + (32 if lines else 22), y1 - 8, x0 + 6
    finite = [v for v in values if v is not None and math.isfinite(v)]
    hi = upper if upper is not None else max(finite + [1e-9]) * 1.15
    d.line((left, bottom, x1, bottom), fill=INK)
    w = (x1 - left) / max(1, len(values))
    for i, (v, name) in enumerate(zip(values, names)):
        if v is None or not math.isfinite(v):
            continue
        h = (bottom - top) * max(0.0, min(v, hi)) / hi
        bx = left + i * w + 4
        d.rectangle((bx, bottom - h, bx + w - 8, bottom), fill=COLOURS.get(name, INK))
        d.text((bx, bottom - h - 13), fmt.format(v), fill=INK, font=_font(10))
    for k, (value, label, colour) in enumerate(lines):
        yy = bottom - (bottom - top) * min(value, hi) / hi
        for xx in range(int(left), int(x1), 8):
            d.line((xx, yy, min(xx + 4, x1), yy), fill=colour)
        d.text((x0 + 6 + 120 * k, y0 + 16), f"--- {label} {value:.2f}", fill=colour, font=_font(10))


def _curves(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, curves: dict[str, list[float]],
            fps: int, xlabel: str) -> None:
    x0, y0, x1, y1 = box
    d.text((x0, y0), f"{title} (x: {xlabel})", fill=INK, font=_font(12))
    top, bottom, left, right = y0 + 22, y1 - 18, x0 + 28, x1 - 4
    for v in (0.0, 0.5, 1.0):
        yy = bottom - (bottom - top) * v
        d.line((left, yy, right, yy), fill=GRID)
        d.text((x0, yy - 6), f"{v:.1f}", fill=INK, font=_font(10))
    n = max((len(c) for c in curves.values()), default=1)
    for s in range(0, int(n / fps) + 1):
        xx = left + (right - left) * s * fps / max(1, n - 1)
        d.text((xx - 3, bottom + 3), str(s), fill=INK, font=_font(10))
    for name, c in curves.items():
        if len(c) < 2:
            continue
        pts = [(left + (right - left) * i / (n - 1), bottom - (bottom - top) * float(v)) for i, v in enumerate(c)]
        d.line(pts, fill=COLOURS.get(name, INK), width=2)


def _mean_curve(curves: list[list[float]], smooth: int = 4) -> list[float]:
    if not curves:
        return []
    n = min(len(c) for c in curves)
    m = np.mean([c[:n] for c in curves], axis=0)
    k = np.ones(smooth) / smooth  # a few frames of smoothing: the 0/1 per-frame calls are noisy
    return np.convolve(np.pad(m, (smooth // 2, smooth - 1 - smooth // 2), mode="edge"), k, mode="valid").tolist()


def draw_figure(result: dict, strips: dict, timeline: Any, fps: int, path: Path) -> None:
    policies, table = result["policies"], result["table"]
    film = _filmstrips(result, strips, timeline, fps)
    panel_w, panel_h, cols = 330, 200, 3
    width = max(film.width, cols * panel_w + 20)
    rows = 3
    img = Image.new("RGB", (width, 40 + film.height + 20 + rows * (panel_h + 16)), BG)
    d = ImageDraw.Draw(img)
    d.text((10, 8), "Memory quality on the toy model: held-out timeline 1 under each policy (3 frames per scene), "
                    f"metrics over {len(result['timelines'])} timeline(s)", fill=INK, font=_font(14))
    img.paste(film, (0, 36))
    y = 36 + film.height + 20
    col = lambda key: [table[p][key] for p in policies]  # noqa: E731
    chance, stab = result["chance_gt"], result["settings"]["stability_seconds"]
    other = float(np.mean(col("recall_vs_other_seed")))
    panels = [
        ("switch response, chunks (lower better)", col("switch_response_chunks"), [], None, "{:.2f}"),
        ("contamination after hard cut (lower better)", col("contamination"), [], 1.0, "{:.2f}"),
        ("continuity after smooth switch (higher better)", col("continuity"), [], 1.0, "{:.2f}"),
        ("recall fidelity", col("recall_fidelity"),
         [(chance, "chance", (200, 30, 30)), (other, "other seed", (120, 60, 0))], 1.0, "{:.2f}"),
        (f"long run: scene accuracy, last {stab:g} s", col("stability_last"),
         [(float(np.mean(col("stability_first"))), f"first {stab:g} s (mean)", (200, 30, 30))], 1.0, "{:.2f}"),
        ("per-chunk time, ms", col("chunk_ms"), [], None, "{:.0f}"),
        ("peak cache, KB (+ scene pool)", [table[p]["cache_kb"] + table[p]["pool_kb"] for p in policies], [], None,
         "{:.0f}"),
    ]
    for i, (title, values, lines, upper, fmt) in enumerate(panels):
        r, c = divmod(i, cols)
        box = (10 + c * panel_w, y + r * (panel_h + 16), 10 + (c + 1) * panel_w - 20, y + r * (panel_h + 16) + panel_h)
        _bars(d, box, title, values, policies, lines, upper, fmt)
    cut = {p: _mean_curve([c for t in result["per_timeline"] for c in t[p]["cut_curves"]]) for p in policies}
    rec = {p: _mean_curve([t[p]["recall_curve"] for t in result["per_timeline"]]) for p in policies}
    for i, (title, curves, xl) in enumerate((("new scene shown after a hard cut", cut, "s"),
                                             ("detail match over the recalled scene", rec, "s"))):
        r, c = divmod(len(panels) + i, cols)
        box = (10 + c * panel_w, y + r * (panel_h + 16), 10 + (c + 1) * panel_w - 20, y + r * (panel_h + 16) + panel_h)
        _curves(d, box, title, curves, fps, xl)
    img.save(path)
