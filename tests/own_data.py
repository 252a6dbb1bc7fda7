"""A small dataset of a user's own, made by the tests (not the synthetic shapes' generator): coloured stripe
and check textures with free-form captions, as a LAION-layout parquet and a CC3M-layout tsv of relative
URLs next to their images (both served by the download stage's loopback server), and a small CNN that
the tests train on the real images to tell the classes apart.

Classes: colour (red, green, blue) x pattern (horizontal stripes, vertical stripes, checks), 9 in all.
The patterns have a period of 16 pixels at 32 px with a random phase in whole tokenizer cells (4 px at 32 px,
6 px at the 48 px the images are made at) and the images carry noise, so no two images are alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210)}
# grey: on white, the toy tokenizer learns the colours far more slowly (held-out MAE 0.13 vs 0.06 at 150 steps)
BACKGROUND = 135.0
PATTERNS = ("horizontal stripes", "vertical stripes", "checks")
CLASSES = [(c, p) for c in COLORS for p in PATTERNS]
LAION_TEMPLATES = ("{color} {pattern}", "a pattern of {color} {pattern}", "{color} and grey {pattern}")
CC3M_TEMPLATES = ("fabric with {color} {pattern}", "a photo of {color} {pattern} on grey")


def texture(cls: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """uint8 [size, size, 3]: the class's pattern in its colour on grey, pixel noise, and a random phase in
    whole tokenizer cells (size / 8: one cell of the toy f4 tokenizer's 8x8 grid once the download stage has
    resized the image to 32 px). With a phase in pixels the edges fall inside the cells and the toy tokenizer
    spreads each class over 55-180 of its 256 codes (22-49 on whole cells); the tiny PDM of the own-data test
    (1000 steps, lr 5e-3) then drew its caption's class 0.34-0.43 of the time, against 0.71-0.80 on whole
    cells (3 seeds each, 180 held-out captions, trained in-process: README, "Own data")."""
    color, pattern = CLASSES[cls]
    period, cell = size // 2, size // 8
    y, x = np.mgrid[0:size, 0:size] + cell * rng.integers(0, period // cell, 2)[:, None, None]
    on_y, on_x = (y % period) < period // 2, (x % period) < period // 2
    mask = {"horizontal stripes": on_y, "vertical stripes": on_x, "checks": on_y ^ on_x}[pattern]
    img = np.where(mask[..., None], np.array(COLORS[color], np.float32), BACKGROUND)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def caption_of(cls: int, templates: tuple[str, ...], rng: np.random.Generator) -> str:
    color, pattern = CLASSES[cls]
    return templates[int(rng.integers(len(templates)))].format(color=color, pattern=pattern)


def class_of(caption: str) -> int:
    """The class a caption names (its colour and pattern words)."""
    color = next(c for c in COLORS if c in caption)
    pattern = next(p for p in PATTERNS if p in caption)
    return CLASSES.index((color, pattern))


def write_laion(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """``folder/images/*.png`` and ``folder/urls.parquet`` (URL, TEXT, similarity, WIDTH, HEIGHT); every 10th
    row has similarity 0.1, below the source's filter. Returns the kept (url, caption) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cls = i % len(CLASSES)
        url = f"images/{i:05d}.png"
        Image.fromarray(texture(cls, rng)).save(folder / url)
        rows.append((url, caption_of(cls, LAION_TEMPLATES, rng), 0.1 if i % 10 == 9 else 0.35))
    pq.write_table(
        pa.table(
            {
                "URL": [r[0] for r in rows],
                "TEXT": [r[1] for r in rows],
                "similarity": [r[2] for r in rows],
                "WIDTH": [48] * n,
                "HEIGHT": [48] * n,
            }
        ),
        folder / "urls.parquet",
    )
    return [(u, c) for u, c, s in rows if s >= 0.3]


def write_cc3m(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """``folder/images/*.png`` and ``folder/cc3m.tsv`` (caption<TAB>url, no header). Returns the rows."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cls = (i * 5) % len(CLASSES)
        url = f"images/{i:05d}.png"
        Image.fromarray(texture(cls, rng)).save(folder / url)
        rows.append((url, caption_of(cls, CC3M_TEMPLATES, rng)))
    (folder / "cc3m.tsv").write_text("".join(f"{c}\t{u}\n" for u, c in rows))
    return rows


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int = 200, seed: int = 0):
    """A small CNN (two convolutions, global average pooling) trained on uint8 [N, H, W, 3] images; returns
    ``predict(images) -> labels``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, len(CLASSES)),
    )

    def tensor(x):
        return torch.as_tensor(np.asarray(x), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1

    x, y = tensor(images), torch.as_tensor(labels)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def predict(batch) -> np.ndarray:
        with torch.no_grad():
            return net(tensor(batch)).argmax(1).numpy()

    return predict
