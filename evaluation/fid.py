"""FID (and a clean-fid-style second number) against cached reference statistics.

Protocol (printed in every report, stored beside every cache file):
  * real images: center square crop, PIL bicubic resize to ``eval.fid_resize`` (256), uint8;
  * generated images: one size per set; resized the same way when not already 256x256;
  * features: Inception-v3 pool3 via torch-fidelity (see :mod:`evaluation.inception` for the two
    resize modes ``fid`` and ``clean_fid`` and for the stand-in used without weights);
  * statistics: float64 mean and ``np.cov`` (N-1); distance: :func:`evaluation.frechet.frechet_distance`.

Reference statistics are computed once per protocol and cached as ``ref-<mode>-<hash>.npz`` with a
``.json`` sidecar holding the protocol (extractor, weights sha256, resize, reference set and the sha256 of its
files' contents, count, mode); a cache file is reused only when its sidecar equals the current protocol.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from core.files import atomic_path, sha256_of, write_text_atomic
from evaluation.frechet import GaussianStats, feature_stats, stats_distance
from evaluation.images import ImageItem, Images, ImageSet, batched, center_crop_resize, image_files, progress
from evaluation.inception import MODES, InceptionFeatures

MODE_DOC = {
    "fid": "uint8 {r}x{r} -> torch-fidelity TF1.x bilinear resize to 299 (no antialias) -> pool3",
    "clean_fid": "uint8 {r}x{r} -> per-channel float32 PIL bicubic to 299 (antialias), clip, round to uint8 "
    "-> same network (its resize is then the identity) -> pool3",
}
PREPROCESS = "center square crop, PIL bicubic (antialias) resize to {r}x{r}, uint8"
DISTANCE = "float64 mean and np.cov (N-1); scipy.linalg.sqrtm, eps=1e-6 diagonal offset when singular"


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"FID modes must be a non-empty subset of {MODES}, got {list(modes)}")
    return tuple(dict.fromkeys(modes))


def reference_protocol(
    extractor, mode: str, resize: int, reference: str, count: int, files_sha256: str | None = None
) -> dict:
    """Everything that decides the reference statistics; the cache key (the weights' path is not part
    of it, their sha256 is)."""
    ext = {k: v for k, v in extractor.protocol.items() if k != "weights"}
    return {
        **ext,
        "mode": mode,
        "mode_doc": MODE_DOC[mode].format(r=resize),
        "preprocess": PREPROCESS.format(r=resize),
        "resize": resize,
        "reference": str(reference),
        "reference_files_sha256": files_sha256,
        "count": int(count),
        "statistics": DISTANCE,
    }


def _cache_paths(cache_dir: Path, protocol: dict) -> tuple[Path, Path]:
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]
    stem = cache_dir / f"ref-{protocol['mode']}-{key}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def load_cached(cache_dir: str | Path, protocol: dict) -> GaussianStats | None:
    """Cached statistics whose sidecar protocol equals ``protocol``, else None."""
    npz, side = _cache_paths(Path(cache_dir), protocol)
    if not (npz.is_file() and side.is_file()):
        return None
    try:
        if json.loads(side.read_text()) != protocol:
            return None
        with np.load(npz) as data:
            return GaussianStats(mu=data["mu"], sigma=data["sigma"], n=int(data["n"]))
    except (OSError, ValueError, KeyError):
        return None


def save_cached(cache_dir: str | Path, protocol: dict, stats: GaussianStats) -> Path:
    """Write ``.npz`` then its sidecar, each to a temporary name then renamed (sidecar = complete)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    npz, side = _cache_paths(cache_dir, protocol)
    with atomic_path(npz) as tmp:
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=stats.n)
    write_text_atomic(side, json.dumps(protocol, indent=2, sort_keys=True))
    return npz


def _files_sha256(images) -> str | None:
    """Digest of the reference files' contents, in order (a file rewritten in place with other pixels, such as
    the held-out references of a new download, is another reference; the same images written again, as the
    evaluate stage writes its held-out references on every run, are the same); None for arrays. Reading
    30,000 COCO images for it takes seconds, against minutes of Inception features."""
    if isinstance(images, (list, tuple)) and images and all(isinstance(x, (str, Path)) for x in images):
        digest = hashlib.sha256()
        for x in images:
            digest.update(bytes.fromhex(sha256_of(x)))
        return digest.hexdigest()
    return None


def reference_stats(
    images_iter: Iterable[ImageItem],
    extractor,
    cache_dir: str | Path,
    reference: str,
    count: int,
    resize: int = 256,
    modes: Sequence[str] = MODES,
    batch_size: int = 32,
) -> dict[str, GaussianStats]:
    """Reference statistics per mode, from the cache when the protocol matches, else computed.

    ``images_iter`` yields real images of any size (arrays, PIL images or paths); it is consumed only
    when some mode misses the cache, and must yield exactly ``count`` images. ``extractor`` is an
    :class:`~evaluation.inception.InceptionFeatures` (or any ``f(uint8 batch, mode) -> features`` with a
    ``protocol`` dict).
    """
    modes = _check_modes(modes)
    if count < 2:
        raise ValueError(f"reference set: need at least 2 images, count={count}")
    if hasattr(images_iter, "__len__") and len(images_iter) != count:
        raise ValueError(f"reference set {reference!r} has {len(images_iter)} images, expected count={count}")
    if isinstance(images_iter, (list, tuple)):
        missing = [str(x) for x in images_iter if isinstance(x, (str, Path)) and not Path(x).is_file()]
        if missing:
            raise FileNotFoundError(
                f"reference set {reference!r}: {len(missing)} image files not found, e.g. {missing[0]}"
            )
    files = _files_sha256(images_iter)
    protocols = {m: reference_protocol(extractor, m, resize, reference, count, files) for m in modes}
    out = {m: s for m in modes if (s := load_cached(cache_dir, protocols[m])) is not None}
    todo = [m for m in modes if m not in out]
    if not todo:
        return out
    feats = {m: [] for m in todo}
    seen = 0
    with progress(count, f"FID reference {','.join(todo)}") as bar:
        for chunk in batched(images_iter, batch_size):
            batch = np.stack([center_crop_resize(x, resize) for x in chunk])
            seen += len(batch)
            for m in todo:
                feats[m].append(extractor(batch, m).astype(np.float32))
            bar.update(len(batch))
    if seen != count:
        raise ValueError(f"reference set {reference!r} yielded {seen} images, expected count={count}")
    for m in todo:
        out[m] = feature_stats(np.concatenate(feats[m]))
        save_cached(cache_dir, protocols[m], out[m])
    return out


class FIDEvaluator:
    """FID of generated images against reference statistics; one number per mode.

    ``evaluator(images)`` -> ``{"fid": float, "clean_fid": float, "num_images": N, "protocol": {...}}``.
    """

    name = "fid"

    def __init__(
        self,
        reference: dict[str, GaussianStats],
        extractor,
        resize: int = 256,
        batch_size: int = 32,
        reference_info: dict | None = None,
    ):
        self.modes = _check_modes(list(reference))
        self.reference, self.extractor = reference, extractor
        self.resize, self.batch_size = resize, batch_size
        self.reference_info = reference_info or {}

    def protocol(self, num_images: int | None = None) -> dict:
        return {
            **self.extractor.protocol,
            "preprocess": PREPROCESS.format(r=self.resize),
            "modes": {m: MODE_DOC[m].format(r=self.resize) for m in self.modes},
            "reference": {**self.reference_info, "count": {m: s.n for m, s in self.reference.items()}},
            "num_generated": num_images,
            "statistics": DISTANCE,
        }

    def features(self, images: Images) -> dict[str, np.ndarray]:
        imgs = ImageSet(images)  # validates (mixed sizes, missing files) before any network work
        if imgs.n < 2:
            raise ValueError(f"FID needs at least 2 generated images, got {imgs.n}")
        feats: dict[str, np.ndarray] = {}  # one array per mode, filled batch by batch: never a second copy
        start = 0
        for batch in imgs.batches(self.batch_size, desc=f"FID {','.join(self.modes)}"):
            if batch.shape[1:3] != (self.resize, self.resize):
                batch = np.stack([center_crop_resize(x, self.resize) for x in batch])
            for m in self.modes:
                f = self.extractor(batch, m)
                if m not in feats:
                    feats[m] = np.empty((imgs.n, *f.shape[1:]), f.dtype)
                feats[m][start : start + len(f)] = f
            start += len(batch)
        return feats

    def __call__(self, images: Images, prompts=None, refs=None) -> dict:
        feats = self.features(images)
        n = len(next(iter(feats.values())))
        out = {m: stats_distance(feature_stats(feats[m]), self.reference[m]) for m in self.modes}
        return {**out, "num_images": n, "protocol": self.protocol(n)}

    @classmethod
    def from_config(
        cls,
        cfg,
        reference_images: Sequence[ImageItem] | Iterable[ImageItem],
        reference: str,
        count: int,
        cache_dir: str | Path,
        device: str | None = None,
        extractor=None,
    ) -> FIDEvaluator:
        """Build from the ``eval`` section; missing weights fail here, before reading any image."""
        extractor = extractor or InceptionFeatures(cfg.inception_weights, device=device, sha256=cfg.inception_sha256)
        ref = reference_stats(
            reference_images,
            extractor,
            cfg.fid_stats_cache or cache_dir,
            reference,
            count,
            cfg.fid_resize,
            cfg.fid_modes,
            cfg.fid_batch_size,
        )
        return cls(ref, extractor, cfg.fid_resize, cfg.fid_batch_size, {"set": reference})


def _image_files(folder: str) -> list[Path]:
    files = image_files(folder)
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def main(argv: list[str] | None = None) -> dict:
    """``python -m evaluation.fid GENERATED_DIR REFERENCE_DIR [--weights W] [--cache DIR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generated"), p.add_argument("reference")
    p.add_argument("--weights", default=None, help="pt_inception-2015-12-05-6726825d.pth (else stand-in)")
    p.add_argument("--sha256", default=None, help="the weights' sha256 (default: the hash in their file name)")
    p.add_argument("--cache", default=".fid_cache"), p.add_argument("--resize", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=list(MODES)), p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    gen, ref = _image_files(a.generated), _image_files(a.reference)
    ImageSet(gen)
    extractor = InceptionFeatures(a.weights, sha256=a.sha256)
    stats = reference_stats(ref, extractor, a.cache, a.reference, len(ref), a.resize, a.modes, a.batch_size)
    result = FIDEvaluator(stats, extractor, a.resize, a.batch_size, {"set": a.reference})(gen)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
