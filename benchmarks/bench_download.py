"""Download-stage throughput vs plain img2dataset (plain script; every figure measured in this run).

Serves --images synthetic PNGs from a loopback ``http.server`` (127.0.0.1, free port) and downloads the
same URL list, with the same settings (size, resize mode, processes, threads, shard size), twice each,
alternating:

  plain   ``img2dataset.download`` on the parquet url list
  stage   ``run_download`` (url list rewrite, img2dataset with the stage's guards: checked addresses,
          deadline and byte cap per image, header pixel limit, a pool that survives a dead worker;
          missing-shard check, stats summary)

images/s = images / wall time of the call; the best of --rounds runs is used for each (the machine is
shared). Also the CPU seconds of the call's child processes (img2dataset's workers: user + system, from
``getrusage``), which other jobs on the machine disturb much less than the wall time. Goal: stage / plain
>= 0.9. Both include img2dataset's process start-up (spawned workers importing torch, cv2, albumentations),
which dominates small runs; use --images in the thousands.

    .venv/bin/python benchmarks/bench_download.py --images 4000 --processes 1 --threads 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tokenization.download import run_download  # noqa: E402
from tokenization.download_config import DownloadConfig  # noqa: E402
from tokenization.synthetic import write_dataset  # noqa: E402
from tokenization.url_lists import serve_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--source-size", type=int, default=64, help="served PNG side")
    ap.add_argument("--image-size", type=int, default=32, help="img2dataset output side")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "www", args.images, seed=0, size=args.source_size)
        table = pq.read_table(tmp / "www" / "urls.parquet")
        times: dict[str, list[float]] = {"plain": [], "stage": []}
        cpu: dict[str, list[float]] = {"plain": [], "stage": []}
        with serve_folder(tmp / "www") as base:
            urls = [f"{base}/{u}" for u in table["URL"].to_pylist()]
            pq.write_table(pa.table({"URL": urls, "TEXT": table["TEXT"]}), tmp / "list.parquet")
            cfg = DownloadConfig(
                source="laion",
                url_list=str(tmp / "list.parquet"),
                serve_local=False,
                image_size=args.image_size,
                resize_mode="center_crop",
                processes=args.processes,
                threads=args.threads,
                samples_per_shard=args.per_shard,
                distributor="multiprocessing",
                timeout=10,
                allow_hosts=["127.0.0.1"],  # the benchmark's own server
            )
            for r in range(args.rounds):
                for name in ("plain", "stage"):
                    out = tmp / f"{name}{r}"
                    t0, c0 = time.perf_counter(), _children_cpu()
                    if name == "plain":
                        import img2dataset

                        img2dataset.download(
                            url_list=str(tmp / "list.parquet"),
                            input_format="parquet",
                            url_col="URL",
                            caption_col="TEXT",
                            output_folder=str(out),
                            output_format="webdataset",
                            image_size=args.image_size,
                            resize_mode="center_crop",
                            processes_count=args.processes,
                            thread_count=args.threads,
                            number_sample_per_shard=args.per_shard,
                            distributor="multiprocessing",
                            timeout=10,
                            compute_hash=None,
                            extract_exif=False,
                            enable_wandb=False,
                            incremental_mode="incremental",
                        )
                        ok = sum(1 for _ in out.glob("*_stats.json"))
                    else:
                        rep = run_download(cfg, out, log=lambda m: None)
                        ok = rep["counts"]["shards"]
                        assert rep["counts"]["success"] == args.images, rep["counts"]
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(_children_cpu() - c0)
                    assert ok == -(-args.images // args.per_shard)
                    shutil.rmtree(out)
    plain, stage_t = min(times["plain"]), min(times["stage"])
    cpu_plain, cpu_stage = min(cpu["plain"]), min(cpu["stage"])
    print(
        f"\ndownload benchmark: {args.images} images {args.source_size}px -> {args.image_size}px center_crop, "
        f"{args.processes} process(es) x {args.threads} threads, shards of {args.per_shard}, loopback server"
    )
    print(f"{'':8s}{'images/s':>10s}{'ratio':>8s}   runs (s)")
    print(f"{'plain':8s}{args.images / plain:10.1f}{1.0:8.2f}   {', '.join(f'{t:.1f}' for t in times['plain'])}")
    print(
        f"{'stage':8s}{args.images / stage_t:10.1f}{plain / stage_t:8.2f}   "
        f"{', '.join(f'{t:.1f}' for t in times['stage'])}   (goal >= 0.9)"
    )
    print(f"{'':8s}{'CPU s':>10s}{'ratio':>8s}   runs (CPU s of the workers)")
    for name, best in (("plain", cpu_plain), ("stage", cpu_stage)):
        print(f"{name:8s}{best:10.1f}{cpu_plain / best:8.2f}   {', '.join(f'{t:.1f}' for t in cpu[name])}")


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    main()
