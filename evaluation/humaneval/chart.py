"""The report's bar chart (PIL only): one panel per question, for each baseline three bars (baseline wins,
same, reference wins) in percent of that baseline's votes, with their Wilson 95% intervals as whiskers."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from core.files import atomic_path
from evaluation.humaneval.stats import OUTCOMES

COLORS = {"baseline_wins": (214, 96, 77), "same": (180, 180, 180), "reference_wins": (67, 114, 196)}
PANEL_TITLES = {"quality": "Image realism", "text": "Image-text match"}
BAR, GROUP_GAP, PLOT_H = 26, 30, 220
LEFT, TOP, BOTTOM, PANEL_GAP = 44, 64, 46, 30


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def save_chart(summary: dict, path: str | Path) -> Path:
    rows, ref = summary["table"], summary["reference"]
    font, small = _font(13), _font(11)
    group_w = 3 * BAR + GROUP_GAP
    panel_w = max(len(rows), 1) * group_w + GROUP_GAP
    width = LEFT + 2 * panel_w + PANEL_GAP + 10
    img = Image.new("RGB", (width, TOP + PLOT_H + BOTTOM), "white")
    draw = ImageDraw.Draw(img)
    legend = (("baseline_wins", "baseline wins"), ("same", "same"), ("reference_wins", f"{ref} wins"))
    x = LEFT
    for key, label in legend:
        draw.rectangle([x, 8, x + 12, 20], fill=COLORS[key])
        draw.text((x + 16, 7), label, fill="black", font=font)
        x += 26 + int(draw.textlength(label, font=font))

    def y_of(pct: float) -> float:
        return TOP + PLOT_H * (1 - pct / 100)

    for q_i, question in enumerate(PANEL_TITLES):
        x0 = LEFT + q_i * (panel_w + PANEL_GAP)
        draw.text((x0 + 4, TOP - 30), PANEL_TITLES[question], fill="black", font=font)
        for tick in range(0, 101, 25):
            y = y_of(tick)
            draw.line([x0, y, x0 + panel_w, y], fill=(230, 230, 230))
            if q_i == 0:
                draw.text((x0 - 6, y), f"{tick}%", fill="black", font=small, anchor="rm")
        draw.line([x0, TOP, x0, TOP + PLOT_H], fill="black")
        draw.line([x0, TOP + PLOT_H, x0 + panel_w, TOP + PLOT_H], fill="black")
        for g, row in enumerate(rows):
            gx = x0 + GROUP_GAP + g * group_w
            for b, (key, _) in enumerate(OUTCOMES):
                cell = row[question][key]
                if math.isnan(cell["pct"]):
                    continue
                bx = gx + b * BAR
                draw.rectangle([bx + 2, y_of(cell["pct"]), bx + BAR - 2, TOP + PLOT_H], fill=COLORS[key])
                lo, hi = (y_of(v) for v in cell["ci95"])
                cx = bx + BAR / 2
                draw.line([cx, lo, cx, hi], fill="black", width=1)
                for y in (lo, hi):
                    draw.line([cx - 4, y, cx + 4, y], fill="black")
            label = f"{row['baseline']} (n={row['n']})"
            draw.text((gx + 1.5 * BAR, TOP + PLOT_H + 8), label, fill="black", font=small, anchor="mt")
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
