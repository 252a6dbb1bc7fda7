"""Tokenize-stage throughput vs the bare VQ encoder (plain script; every figure measured in this run).

Builds --shards image shards (img2dataset layout, JPEGs at the model's resolution) and a randomly
initialised VQModel of the tiny config (or --preset, see ``taming_preset``), then measures with the same
batch size and threads:

  bare      images/s of ``model.encode`` alone on the stage's first batch (the same decoded images),
            in this process (min over --reps runs, measured before and after the stage; best used)
  stage     images/s of ``run_tokenize`` end to end, Ray already up (actor start, model build, tar
            reading, JPEG decoding, text ids, token shard writing)
  actor     images/s over the actors' busy time (the same run without the actor start-up)
  decode    images/s of JPEG decoding alone (``decode_image`` on the actor's decoding threads, best of --reps
            passes over the first shard): below the bare encoder's, the actor waits for its images

  in-run    time inside ``model.encode`` / actor time, measured in the same run on the same batches:
            the stage's images/s over the bare encoder's images/s, immune to the load swings of a shared
            machine (separate bare runs here vary by up to 2x within a minute; see before/after).

Goal: in-run >= 0.8 (and actor / bare when the machine is quiet). The text tokenizer is a character stand-in unless
--text real (then ``tokenization.text.load_text_encoder`` with its default config).

    .venv/bin/python benchmarks/bench_tokenize.py --shards 8 --per-shard 256 --batch 64 --threads 1
    python benchmarks/bench_tokenize.py --device cuda --preset imagenet_f16_16384 --shards 4 --batch 64

``--device cuda``: the encoder runs on the GPU (bare and in the actor, which Ray gives one GPU), timed with
``torch.cuda.synchronize``; decoding the JPEGs stays on the actor's CPU, on ``--decode-threads`` threads
(default: ``--threads``, the actor's CPUs). Where Ray is not installed the stage's actor code
(``ShardEncoder.encode_shard``, the same reading, decoding, encoding and writing) runs in this process, one
shard after another, and the 'stage' row is that run's.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import sync  # noqa: E402
from tokenization.shard_encoder import (  # noqa: E402
    ShardEncoder,
    TokenizeConfig,
    decode_threads,
    run_tokenize,
    shard_metrics,
)
from tokenization.vqgan import TokenizerConfig, VQModel, taming_preset  # noqa: E402


class CharText:
    """Character-level stand-in text tokenizer: ``tokenize(captions) -> (ids, mask)``."""

    def tokenize(self, captions):
        n = max(len(c) for c in captions)
        ids = torch.zeros(len(captions), n, dtype=torch.long)
        for i, c in enumerate(captions):
            ids[i, : len(c)] = torch.tensor([ord(ch) % 500 + 1 for ch in c])
        return ids, ids > 0


class RealText:
    def __call__(self):
        from tokenization.text import TextEncoderConfig, load_text_encoder

        return load_text_encoder(TextEncoderConfig())


def build_model(tcfg: TokenizerConfig) -> VQModel:
    torch.manual_seed(0)
    return VQModel(tcfg).eval()


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    jobs = []
    for s in range(shards):
        path = folder / "images" / f"{s:05d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(np.roll(base, i, axis=1)).save(buf, "JPEG", quality=95)
                for suffix, data in (
                    ("jpg", buf.getvalue()),
                    ("txt", f"a small red circle at the top left {i}".encode()),
                ):
                    info = tarfile.TarInfo(f"{s:05d}{i:04d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        jobs.append((str(path), str(folder / "tokens" / path.name), f"train/{path.name}"))
    (folder / "tokens").mkdir(exist_ok=True)
    return jobs


def first_batch(shard: str, batch: int, size: int) -> torch.Tensor:
    """The stage's first batch: the shard's first ``batch`` images decoded as the actor decodes them."""
    from tokenization.shard_encoder import decode_image, iter_image_samples

    images = []
    for _, group in iter_image_samples(shard):
        images.append(decode_image(group["jpg"], size)[0])
        if len(images) == batch:
            break
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def decode_rate(shard: str, size: int, threads: int, reps: int) -> float:
    """Images/s of decoding alone (``decode_image``, as the actor does) over a shard's images on ``threads``
    threads; best of ``reps`` passes."""
    from concurrent.futures import ThreadPoolExecutor

    from tokenization.shard_encoder import decode_image, iter_image_samples

    data = [group["jpg"] for _, group in iter_image_samples(shard)]
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(functools.partial(decode_image, size=size), data))
            times.append(time.perf_counter() - t0)
    return len(data) / min(times)


def bare_forward(model: VQModel, x: torch.Tensor, threads: int, reps: int) -> float:
    torch.set_num_threads(threads)
    device = next(model.parameters()).device
    x = x.to(device)
    batch = x.shape[0]
    times = []
    with torch.inference_mode():
        model.encode(x)
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            model.encode(x)
            sync(device)
            times.append(time.perf_counter() - t0)
    return batch / min(times)


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def run_in_process(cfg: TokenizeConfig, jobs, make_model, text, size: int) -> dict:
    """The stage's actor code without Ray: one ``ShardEncoder`` encodes every shard in this process; the
    figures ``run_tokenize`` reports (``shard_metrics``)."""
    t0 = time.time()
    threads = decode_threads(cfg, cfg.device == "cuda")
    enc = ShardEncoder(make_model, text, cfg.batch_size, size, cfg.torch_threads, cfg.device, decode_threads=threads)
    results = [enc.encode_shard(src, dst, name) for src, dst, name in jobs]
    return {
        "metrics": shard_metrics(results, time.time() - t0),
        "counts": {"samples": sum(r["samples"] for r in results)},
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, bare and per actor")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--preset", default=None, help="taming preset name (default: the tiny config)")
    ap.add_argument("--text", choices=("stand-in", "real"), default="stand-in")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the encoder runs")
    ap.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="image decoding threads per actor (default: the stage's, --threads on a GPU actor, else 1)",
    )
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")

    tcfg = taming_preset(args.preset) if args.preset else TokenizerConfig()
    size = tcfg.resolution
    model = build_model(tcfg).to(args.device)
    text = RealText() if args.text == "real" else CharText
    cfg = TokenizeConfig(
        batch_size=args.batch,
        num_actors=1,
        cpus_per_actor=args.threads,
        torch_threads=args.threads,
        device=args.device,
        decode_threads=args.decode_threads,
    )
    decoders = decode_threads(cfg, args.device == "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = write_shards(Path(tmp), args.shards, args.per_shard, size)
        x = first_batch(jobs[0][0], args.batch, size)
        bare_before = bare_forward(model, x, args.threads, args.reps)
        decode = decode_rate(jobs[0][0], size, decoders, args.reps)
        make_model = functools.partial(build_model, tcfg)
        if ray_installed():
            from cluster.local_ray import ensure_ray

            num_gpus = 1 if args.device == "cuda" else 0
            with ensure_ray(None, num_cpus=args.threads, num_gpus=num_gpus, log_to_driver=False):
                n = args.shards * args.per_shard
                rep = run_tokenize(cfg, jobs, make_model, text, image_size=size, expected_samples=n, log=print)
            where = "Ray actor"
        else:
            print("Ray is not installed: the stage's actor code runs in this process (no actor start-up, no queue)")
            rep = run_in_process(cfg, jobs, make_model, text, size)
            where = "in process, no Ray"
    bare_after = bare_forward(model, x, args.threads, args.reps)
    bare = max(bare_before, bare_after)
    m = rep["metrics"]
    n = rep["counts"]["samples"]
    print(
        f"\ntokenize benchmark: {n} images {size}x{size}, batch {args.batch}, {args.threads} thread(s), "
        f"{decoders} decoding thread(s), "
        f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, text {args.text}, encoder on "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, stage: {where}"
    )
    print(f"{'':10s}{'images/s':>10s}{'ratio':>8s}")
    print(f"{'bare':10s}{bare:10.1f}{1.0:8.2f}   (before {bare_before:.1f}, after {bare_after:.1f}; best used)")
    print(f"{'stage':10s}{m['images_per_s']:10.1f}{m['images_per_s'] / bare:8.2f}   (end to end, {m['seconds']:.1f}s)")
    print(
        f"{'actor':10s}{m['actor_images_per_s']:10.1f}{m['actor_images_per_s'] / bare:8.2f}   "
        f"(actor busy time, {m['actor_seconds']:.1f}s)"
    )
    print(
        f"{'decode':10s}{decode:10.1f}{decode / bare:8.2f}   (decoding alone on {decoders} thread(s); "
        "below 1 the actor waits for its images)"
    )
    print(
        f"{'in-run':10s}{m['actor_images_per_s'] / m['encode_fraction']:10.1f}{m['encode_fraction']:8.2f}   "
        "(bare encode speed inside the actor; ratio = encode time / actor time; goal >= 0.8)"
    )


if __name__ == "__main__":
    main()
