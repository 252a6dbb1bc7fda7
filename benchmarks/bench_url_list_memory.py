"""Peak memory of rewriting a LAION-style parquet url list (the download stage's first step), every figure
measured in this run.

Writes a parquet of --rows rows (URL, TEXT, similarity; pyarrow's default row groups of 1M rows), then, each in
a fresh process, converts it with a similarity filter two ways:

  whole   the whole table read with ``pq.read_table``, filtered and written (the stage before streaming)
  stage   ``tokenization.url_lists.convert_parquet``: a batch of rows at a time

and prints each one's peak RSS (``VmHWM``), seconds, and the ratio stage / whole. A LAION-2B part file holds
~18M rows; the whole-table figure grows with the rows, the stage's stays near one batch.

    .venv/bin/python benchmarks/bench_url_list_memory.py --rows 3000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONVERT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
mode, src, dst = sys.argv[2:5]
from tokenization.download_config import DownloadConfig
t0 = time.time()
if mode == "stage":
    from tokenization.url_lists import convert_parquet
    cfg = DownloadConfig(source="laion", url_list=src, min_similarity=0.3)
    rows = convert_parquet(src, Path(dst), cfg, lambda u: u)
else:
    import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
    table = pq.read_table(src, columns=["URL", "TEXT", "similarity"])
    table = table.filter(pc.fill_null(pc.greater_equal(table["similarity"], 0.3), False))
    table = table.filter(pc.is_valid(table["URL"]))
    pq.write_table(pa.table({"url": table["URL"], "caption": table["TEXT"]}), dst)
    rows = table.num_rows
# VmHWM: this process's own high-water mark (ru_maxrss would carry over the parent's from before exec)
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
print(json.dumps({"rows": rows, "seconds": time.time() - t0, "peak_mb": peak}))
"""


def write_list(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    urls = pa.array(
        [f"https://images.example-{i % 997}.com/photos/{i:09d}/large_image_file_name.jpg" for i in range(rows)]
    )
    caps = pa.array(
        [f"a photo of a thing number {i} standing in a field with some words of a caption" for i in range(rows)]
    )
    pq.write_table(pa.table({"URL": urls, "TEXT": caps, "similarity": rng.random(rows)}), path)


def convert(mode: str, src: Path, dst: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CONVERT, str(ROOT), mode, str(src), str(dst)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "urls.parquet"
        write_list(src, args.rows)
        res = {mode: convert(mode, src, Path(tmp) / f"{mode}.parquet") for mode in ("whole", "stage")}
    assert res["whole"]["rows"] == res["stage"]["rows"], res
    for mode, r in res.items():
        print(
            f"{mode:6s} {r['rows']:,} rows kept of {args.rows:,}: peak RSS {r['peak_mb']:.0f} MB, {r['seconds']:.1f} s"
        )
    print(f"peak RSS stage / whole: {res['stage']['peak_mb'] / res['whole']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
