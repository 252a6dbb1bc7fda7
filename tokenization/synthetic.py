"""Built-in synthetic caption->image dataset: coloured shapes on a plain background.

Each image holds 1..4 (default 1..2) shapes, one per quadrant of a 2x2 grid, so shapes never
overlap. Every attribute is chosen from a few well separated values so that it can be read back
from pixels even after a blurry VQ-GAN reconstruction:

    kind      circle | square | triangle         (triangle: upright isoceles, apex at the top)
    color     red | green | blue | yellow        (saturated, far apart in RGB and from the grey background)
    size      small | large                      (bounding box 0.55 | 0.85 of a quadrant's side)
    position  top left | top right | bottom left | bottom right   (the quadrant of the centroid)

Captions follow one grammar, e.g. "a small red circle at the top left and a large blue square at
the bottom right"; `parse_caption` inverts `caption`; `canonical_caption` restates one with its
shapes in position order. `read_attributes` reads a `Scene` back from
an image (nearest palette colour per pixel, connected components per quadrant, best matching
kind x size template by IoU); `attributes_match` / `attribute_scores` compare an image with a
caption: the evaluation uses them as an exact, model-free text-image agreement score.

Image i of a dataset depends only on (seed, i), so datasets are prefix-consistent and resumable.
`write_dataset` lays the images out like a LAION url list (`urls.parquet` with URL/TEXT/WIDTH/HEIGHT
next to `images/NNNNNNNN.png`) so the download stage can fetch them like any other source.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.files import atomic_path, write_text_atomic

KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
PALETTE = {
    "red": (230, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
}
COLORS = tuple(PALETTE)
BACKGROUND = (128, 128, 128)
SIZE_FRACTION = {"small": 0.55, "large": 0.85}  # shape side / quadrant side
FORMAT_VERSION = 1


@dataclass
class SyntheticConfig:
    """Config of the `synthetic` stage (experiment key `data.synthetic`)."""

    n_train: int = field(default=2000, metadata={"min": 0, "help": "training images"})
    n_eval: int = field(default=200, metadata={"min": 0, "help": "evaluation images"})
    seed: int = field(default=0, metadata={"min": 0, "help": "train uses seed, eval uses seed + 1"})
    image_size: int = field(default=32, metadata={"min": 16, "max": 1024, "help": "square side in pixels"})
    min_objects: int = field(default=1, metadata={"min": 1, "max": 4})
    max_objects: int = field(default=2, metadata={"min": 1, "max": 4})
    base_url: str = field(
        default="", metadata={"help": "URL prefix in urls.parquet; empty = paths relative to the split folder"}
    )

    def __post_init__(self):
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        if self.image_size % 2:
            raise ValueError(f"image_size must be even, got {self.image_size}")


@dataclass
class Shape:
    """One shape: kind in KINDS, color in COLORS, size in SIZES, position in POSITIONS."""

    kind: str
    color: str
    size: str
    position: str


@dataclass
class Scene:
    """The shapes of one image (at most one per position)."""

    shapes: list[Shape]

    def canonical(self) -> list[tuple[str, str, str, str]]:
        """Order-free comparable form: (position, kind, color, size) sorted by position."""
        return sorted((s.position, s.kind, s.color, s.size) for s in self.shapes)


# ---------------------------------------------------------------- sampling and rendering


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 2) -> Scene:
    """Draw a random scene: object count, distinct positions, then kind/colour/size uniformly."""
    n = int(rng.integers(min_objects, max_objects + 1))
    positions = rng.choice(len(POSITIONS), size=n, replace=False)
    return Scene(
        [
            Shape(
                KINDS[rng.integers(len(KINDS))],
                COLORS[rng.integers(len(COLORS))],
                SIZES[rng.integers(len(SIZES))],
                POSITIONS[p],
            )
            for p in positions
        ]
    )


def _shape_mask(kind: str, cx: float, cy: float, side: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean coverage of sample points (xs, ys) by a shape of bbox side `side` centred at (cx, cy)."""
    h = side / 2
    if kind == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= h * h
    inside = (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    if kind == "square":
        return inside
    # upward isoceles triangle: apex at top centre, base along the bottom edge
    t = (ys - (cy - h)) / side  # 0 at apex row, 1 at base row
    return inside & (np.abs(xs - cx) <= h * t)


@functools.lru_cache(maxsize=4096)
def _coverage(kind: str, side: float, cx: float, cy: float, hgt: int, wid: int, ss: int = 4) -> np.ndarray:
    """Fraction [hgt, wid] of each pixel covered by a shape (ss x ss supersampling); cached, read-only."""
    ys, xs = np.meshgrid((np.arange(hgt * ss) + 0.5) / ss, (np.arange(wid * ss) + 0.5) / ss, indexing="ij")
    cov = _shape_mask(kind, cx, cy, side, xs, ys).reshape(hgt, ss, wid, ss).mean(axis=(1, 3), dtype=np.float32)
    cov.setflags(write=False)
    return cov


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Rasterise a scene to uint8 [size, size, 3], anti-aliased (4x4 supersampled coverage)."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    cell = size / 2
    for sh in scene.shapes:
        row, col = _cell_of(sh.position)
        cov = _coverage(sh.kind, SIZE_FRACTION[sh.size] * cell, (col + 0.5) * cell, (row + 0.5) * cell, size, size)
        img += cov[..., None] * (np.asarray(PALETTE[sh.color], np.float32) - img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _cell_of(position: str) -> tuple[int, int]:
    vert, horiz = position.split()
    return (0 if vert == "top" else 1), (0 if horiz == "left" else 1)


# ---------------------------------------------------------------- captions


def caption(scene: Scene) -> str:
    """Caption from the grammar: 'a {size} {color} {kind} at the {position}' joined by ' and '."""
    return " and ".join(f"a {s.size} {s.color} {s.kind} at the {s.position}" for s in scene.shapes)


_PHRASE = re.compile(
    r"an? (?P<size>{}) (?P<color>{}) (?P<kind>{}) at the (?P<position>{})".format(
        "|".join(SIZES), "|".join(COLORS), "|".join(KINDS), "|".join(POSITIONS)
    )
)


def parse_caption(text: str) -> Scene:
    """Inverse of `caption`; raises ValueError for text outside the grammar."""
    parts = " ".join(text.lower().strip().rstrip(".").split()).split(" and ")
    shapes = []
    for part in parts:
        m = _PHRASE.fullmatch(part)
        if m is None:
            raise ValueError(f"caption outside the synthetic grammar: {text!r} (at {part!r})")
        shapes.append(Shape(m["kind"], m["color"], m["size"], m["position"]))
    return Scene(shapes)


def canonical_caption(text: str) -> str:
    """The same caption with its shapes in POSITIONS order (top left first): a text-to-text task
    that needs every attribute bound to its position (``tokenization.t5_pretrain``)."""
    return caption(Scene(sorted(parse_caption(text).shapes, key=lambda s: POSITIONS.index(s.position))))


# ---------------------------------------------------------------- reading images back

_PAL = np.array([BACKGROUND] + [PALETTE[c] for c in COLORS], np.float32)  # label 0 = background


def _template(kind: str, side: float, cx: float, cy: float, hgt: int, wid: int) -> np.ndarray:
    """Binary mask [hgt, wid] of a shape as `render` draws it (pixels more than half covered).

    The centre is rounded to 1/4 pixel so that the cache is hit for the typical centroids."""
    return _coverage(kind, side, round(cx * 4) / 4, round(cy * 4) / 4, hgt, wid) > 0.5


def read_attributes(image: np.ndarray, min_area_frac: float = 0.25) -> Scene:
    """Read the shapes of an image (uint8 [H,W,3]) back from its pixels.

    Each pixel gets the nearest palette colour (or the background). Within each quadrant, every
    connected component of one colour larger than `min_area_frac` of a small triangle becomes a
    shape: its colour is the palette colour, its position the quadrant, and its kind and size
    those of the best matching (highest IoU) of the six kind x size templates, each placed so that
    its centroid falls on the component's centroid (tolerates shifts, blur and noise). Shapes are
    returned sorted by position; extra blobs are returned too (so they count as errors).
    """
    from scipy import ndimage

    img = np.asarray(image, np.float32)[..., :3]
    hgt, wid = img.shape[:2]
    labels = ((img[:, :, None, :] - _PAL) ** 2).sum(-1).argmin(-1)
    cell = min(hgt, wid) / 2
    min_area = min_area_frac * 0.5 * (SIZE_FRACTION["small"] * cell) ** 2
    found = []
    for pi, position in enumerate(POSITIONS):
        row, col = divmod(pi, 2)
        quad = labels[row * hgt // 2 : (row + 1) * hgt // 2, col * wid // 2 : (col + 1) * wid // 2]
        qh, qw = quad.shape
        counts = np.bincount(quad.ravel(), minlength=len(_PAL))
        for ci in np.nonzero(counts[1:] >= min_area)[0] + 1:
            comp, n = ndimage.label(quad == ci)
            for k in range(1, n + 1):
                mask = comp == k
                if mask.sum() < min_area:
                    continue
                yy, xx = np.nonzero(mask)
                cy, cx = yy.mean() + 0.5, xx.mean() + 0.5
                best, best_iou = None, -1.0
                for kind in KINDS:
                    for size in SIZES:
                        side = SIZE_FRACTION[size] * cell
                        dy = side / 6 if kind == "triangle" else 0.0  # centroid below the bbox centre
                        t = _template(kind, side, cx, cy - dy, qh, qw)
                        iou = np.count_nonzero(t & mask) / max(np.count_nonzero(t | mask), 1)
                        if iou > best_iou:
                            best, best_iou = (kind, size), iou
                found.append(Shape(best[0], COLORS[ci - 1], best[1], position))
    return Scene(found)


def attribute_scores(image: np.ndarray, text: str) -> dict[str, float]:
    """Per-attribute agreement of an image with a caption, each in [0, 1].

    For every shape of the caption, the shape read at the same position (if any) is compared:
    `position` = a shape is there, `color`/`kind`/`size` = that attribute is right (0 if no shape).
    `count` = same number of shapes, `all` = the whole scene matches exactly.
    """
    want = parse_caption(text)
    got = read_attributes(image)
    at = {s.position: s for s in got.shapes}
    n = max(len(want.shapes), 1)
    scores = {"position": 0.0, "color": 0.0, "kind": 0.0, "size": 0.0}
    for s in want.shapes:
        g = at.get(s.position)
        if g is not None:
            scores["position"] += 1
            for a in ("color", "kind", "size"):
                scores[a] += float(getattr(g, a) == getattr(s, a))
    scores = {k: v / n for k, v in scores.items()}
    scores["count"] = float(len(got.shapes) == len(want.shapes))
    scores["all"] = float(got.canonical() == want.canonical())
    return scores


def attributes_match(image: np.ndarray, text: str) -> bool:
    """True when the shapes read from the image are exactly those of the caption."""
    return read_attributes(image).canonical() == parse_caption(text).canonical()


# ---------------------------------------------------------------- datasets


def scene_for(seed: int, index: int, min_objects: int = 1, max_objects: int = 2) -> Scene:
    """The scene of image `index` of the dataset with `seed` (independent of dataset size)."""
    return sample_scene(np.random.default_rng([seed, index]), min_objects, max_objects)


def render_dataset(
    n: int, seed: int, size: int = 32, min_objects: int = 1, max_objects: int = 2
) -> tuple[np.ndarray, list[str]]:
    """Images 0..n-1 of the dataset with ``seed`` rendered at ``size`` (uint8 [n, size, size, 3]) and their
    captions, in memory: the same scenes as ``write_dataset`` at any resolution."""
    scenes = [scene_for(seed, i, min_objects, max_objects) for i in range(n)]
    images = np.stack([render(s, size) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, [caption(s) for s in scenes]


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, size, size, 3] by box filtering (the mean of each source block)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in images])


def _image_name(i: int) -> str:
    return f"images/{i:08d}.png"


def write_dataset(
    out_dir, n: int, seed: int, size: int = 32, base_url: str = "", min_objects: int = 1, max_objects: int = 2
) -> Path:
    """Write `out_dir/images/NNNNNNNN.png` and `out_dir/urls.parquet` (LAION layout: URL, TEXT, WIDTH, HEIGHT).

    URL = base_url + "/images/NNNNNNNN.png", or the relative path "images/NNNNNNNN.png" when base_url
    is empty. Images already present are kept when `meta.json` says they were made with the same
    generator settings; every file is written to a temporary name and then renamed.
    """
    import pandas as pd
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    meta = {
        "version": FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "min_objects": min_objects,
        "max_objects": max_objects,
    }
    meta_path = out / "meta.json"
    reuse = meta_path.exists() and json.loads(meta_path.read_text()) == meta
    if not reuse:
        meta_path.unlink(missing_ok=True)  # images are invalid until the new meta is written
    captions = []
    for i in range(n):
        scene = scene_for(seed, i, min_objects, max_objects)
        captions.append(caption(scene))
        path = out / _image_name(i)
        if reuse and path.exists():
            continue
        with atomic_path(path, fsync=False) as tmp:  # thousands of images: not fsynced one by one
            Image.fromarray(render(scene, size)).save(tmp, format="PNG")
    write_text_atomic(meta_path, json.dumps(meta, sort_keys=True))
    prefix = base_url.rstrip("/") + "/" if base_url else ""
    df = pd.DataFrame(
        {
            "URL": [prefix + _image_name(i) for i in range(n)],
            "TEXT": captions,
            "WIDTH": np.full(n, size, np.int64),
            "HEIGHT": np.full(n, size, np.int64),
        }
    )
    with atomic_path(out / "urls.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return out


def load_images(out_dir) -> tuple[np.ndarray, list[str]]:
    """Read back what `write_dataset` wrote: images uint8 [N,H,W,3] and captions, in URL order."""
    import pandas as pd
    from PIL import Image

    out = Path(out_dir)
    df = pd.read_parquet(out / "urls.parquet")
    images = []
    for url in df["URL"]:
        name = "images/" + str(url).rsplit("/", 1)[-1]
        images.append(np.asarray(Image.open(out / name).convert("RGB")))
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), []
    return np.stack(images), [str(t) for t in df["TEXT"]]
