"""Image and prompt inputs shared by the evaluators, checked before any model is loaded.

Every evaluator takes ``images`` as one of
  * a ``uint8`` array ``[N, H, W, 3]``,
  * a list of ``uint8`` arrays ``[H, W, 3]``, of PIL images, of file paths or of :class:`CenterCropped` files
    (read lazily, in batches),
and an evaluated set must have one size (a sampler writes one resolution): mixed sizes are an error. A file
with more pixels than PIL's limit (``tokenization.image_limits``) is refused at its header, not decoded.

Each pass of an evaluator over its images shows a progress bar on stderr (:func:`progress`): at COCO's 30k
images an FID, CLIP score or captioning pass takes minutes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from tokenization.image_limits import DEFAULT_MAX_PIXELS, ImageRefused, header_size, open_image


@dataclass(frozen=True)
class CenterCropped:
    """An image file read as :func:`center_crop_resize` gives it: ``size`` x ``size`` (real images of many sizes,
    such as MS COCO's, scored beside generated ones of one size, as FID sees them)."""

    path: Path
    size: int


ImageItem = Union[np.ndarray, str, Path, Image.Image, CenterCropped]
Images = Union[np.ndarray, Sequence[ImageItem]]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | Path) -> list[Path]:
    """The image files in ``folder`` by name; hidden ones (a killed writer's temporary files,
    ``core.files.temp_name``) are left out."""
    return sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _size_of(item: ImageItem, index: int) -> tuple[int, int]:
    if isinstance(item, CenterCropped):
        _size_of(item.path, index)  # exists and is a readable image
        return item.size, item.size
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"image {index}: expected a uint8 array [H, W, 3], got {item.dtype} {item.shape}")
        return item.shape[0], item.shape[1]
    if isinstance(item, Image.Image):
        return item.height, item.width
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image {index}: file not found: {path}")
        try:
            with open(path, "rb") as f:  # reads the header only
                width, height = header_size(f, DEFAULT_MAX_PIXELS)
                return height, width
        except (OSError, ImageRefused) as exc:
            raise ValueError(f"image {index}: not a readable image: {path} ({exc})") from None
    raise TypeError(f"image {index}: expected an array, a PIL image or a path, got {type(item).__name__}")


def load_rgb(item: ImageItem) -> np.ndarray:
    """One image as a ``uint8 [H, W, 3]`` array (files and PIL images converted to RGB)."""
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, CenterCropped):
        return center_crop_resize(item.path, item.size)
    if isinstance(item, (str, Path)):
        with open_image(item) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(item.convert("RGB"))


class ImageSet:
    """A validated set of same-size images, read lazily in batches.

    Construction checks everything cheap (types, dtypes, existence, sizes from file headers) so a bad
    input fails before a network is built; pixels are read only by :meth:`batches`.
    """

    def __init__(self, images: Images):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"images: expected a uint8 array [N, H, W, 3], got {images.dtype} {images.shape}")
            items: Sequence[ImageItem] = images
            sizes = Counter({(images.shape[1], images.shape[2]): images.shape[0]})
            first = {(images.shape[1], images.shape[2]): 0}
        else:
            items = list(images)
            sizes, first = Counter(), {}
            for i, item in enumerate(items):
                s = _size_of(item, i)
                sizes[s] += 1
                first.setdefault(s, i)
        if len(items) == 0:
            raise ValueError("images: the image set is empty")
        if len(sizes) > 1:
            desc = ", ".join(
                f"{n} of {h}x{w} (first: #{first[(h, w)]}{_name(items, first[(h, w)])})"
                for (h, w), n in sizes.most_common()
            )
            raise ValueError(f"images have mixed sizes: {desc}; an evaluated set must have one resolution")
        self.items = items
        ((self.height, self.width),) = sizes
        self.n = len(items)

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, desc: Optional[str] = None) -> Iterator[np.ndarray]:
        """Yield ``uint8 [B, H, W, 3]`` batches in order (with ``desc``: under a progress bar of that name,
        advanced as each batch is handed back for the next one)."""
        with progress(self.n, desc) as bar:
            for start in range(0, self.n, batch_size):
                chunk = self.items[start : start + batch_size]
                yield chunk if isinstance(chunk, np.ndarray) else np.stack([load_rgb(x) for x in chunk])
                bar.update(len(chunk))

    def pil(self, index: int) -> Image.Image:
        return Image.fromarray(load_rgb(self.items[index]))


def _name(items: Sequence[ImageItem], i: int) -> str:
    item = items[i]
    item = item.path if isinstance(item, CenterCropped) else item
    return f" {item}" if isinstance(item, (str, Path)) else ""


def check_prompts(prompts: Sequence[str] | None, n_images: int | None = None, what: str = "prompts") -> list[str]:
    """The prompts as a list of non-empty strings, one per image when ``n_images`` is given."""
    if prompts is None or len(prompts) == 0:
        raise ValueError(f"{what}: the prompt set is empty")
    out = list(prompts)
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{what}[{i}]: expected a non-empty string, got {p!r}")
    if n_images is not None and len(out) != n_images:
        raise ValueError(f"{what}: {len(out)} prompts for {n_images} images; need one per image")
    return out


def check_refs(refs: Sequence[Sequence[str]] | None, n: int) -> list[list[str]]:
    """Reference captions: one non-empty list of strings per image."""
    if refs is None or len(refs) == 0:
        raise ValueError("refs: the reference caption set is empty")
    if len(refs) != n:
        raise ValueError(f"refs: {len(refs)} reference lists for {n} images; need one per image")
    out = []
    for i, r in enumerate(refs):
        if isinstance(r, str) or not r or not all(isinstance(c, str) and c.strip() for c in r):
            raise ValueError(f"refs[{i}]: expected a non-empty list of non-empty captions, got {r!r}")
        out.append(list(r))
    return out


def center_crop_resize(image: ImageItem, size: int) -> np.ndarray:
    """Center square crop, then PIL bicubic (antialiased) resize to ``size``; ``uint8 [size, size, 3]``."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(load_rgb(image))
    im = im.convert("RGB")
    side = min(im.width, im.height)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im)


PROGRESS_INTERVAL_S = 1.0  # the least time between two redraws of a bar (a log file gets a line per redraw)


def progress(total: Optional[int], desc: Optional[str]):
    """A progress bar on stderr over ``total`` images, named ``desc`` (no bar without one)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", disable=desc is None, smoothing=0.1, mininterval=PROGRESS_INTERVAL_S
    )


def batched(items: Iterable, batch_size: int) -> Iterator[list]:
    """Group an iterable into lists of ``batch_size`` (the last may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
