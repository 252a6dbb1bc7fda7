"""What the download stage changes in img2dataset for one ``download()`` call (it has no hooks for these).

* ``SafeDownloader``: every URL goes through ``tokenization.safe_fetch`` (http/https only, no
  non-public address unless allowed, bounded redirects, a wall-clock deadline and a byte cap per image)
  instead of a bare ``urllib.request.urlopen``.
* ``SafeResizer``: an image whose header says it has more than ``max_image_pixels`` pixels, or that PIL
  does not recognise, is refused before OpenCV decodes it (``tokenization.image_limits``); one whose EXIF
  says it is rotated or mirrored (phone photos) is turned upright first: OpenCV's decode ignores the tag and
  the re-encoded shard image keeps no EXIF, so it would be stored sideways beside its caption.
* ``pool_distributor``: img2dataset's ``multiprocessing.Pool`` waits forever for a shard whose worker
  was killed (the out-of-memory killer, a crash); a ``ProcessPoolExecutor`` notices, and the shards it
  lost are left without stats for the stage to rerun. ``ray_pool_distributor`` does the same for Ray
  tasks that fail (img2dataset's would raise out of the call with other tasks still running).

img2dataset's workers are other processes: they get these classes by pickling (they import this module),
and the spawned workers inherit ``OPENCV_IO_MAX_IMAGE_PIXELS`` (OpenCV's own limit, read when cv2 is
first imported) from the environment of the call. Import this module only after
``cluster.local_ray.apply_quiet_env`` (img2dataset imports albumentations, which checks for updates).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator
from typing import Any

import img2dataset.downloader as i2d_downloader
from img2dataset.downloader import Downloader, is_disallowed
from img2dataset.resizer import Resizer

from tokenization.image_limits import pixels_over_limit
from tokenization.safe_fetch import FetchPolicy, fetch

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"  # img2dataset's
REASON_DISALLOWED = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's wording
OPENCV_LIMIT_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"


def download_image(row, timeout, user_agent_token, disallowed_header_directives, *, policy: FetchPolicy):
    """img2dataset's ``download_image`` (same arguments and result: ``(key, BytesIO | None, error | None)``)
    through ``safe_fetch.fetch``; ``timeout`` is the policy's."""
    key, url = row
    agent = USER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"

    def robots(headers) -> str | None:
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return REASON_DISALLOWED
        return None

    try:
        return key, io.BytesIO(fetch(url, policy, {"User-Agent": agent}, robots)), None
    except Exception as err:  # noqa: BLE001  (every failure is a counted reason, as in img2dataset)
        return key, None, str(err)


class SafeDownloader(Downloader):
    """img2dataset's ``Downloader`` whose shards fetch through ``download_image`` above."""

    def __init__(self, *args, guard: Any, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard

    def download_shard(self, row):
        real = i2d_downloader.download_image
        i2d_downloader.download_image = functools.partial(download_image, policy=self.guard.policy)
        try:
            return super().download_shard(row)
        finally:
            i2d_downloader.download_image = real


class SafeResizer(Resizer):
    """img2dataset's ``Resizer`` that refuses an image by its header before decoding it."""

    def __init__(self, *args, max_pixels: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        reason = pixels_over_limit(img_stream, self.max_pixels)
        if reason is not None:
            return None, None, None, None, None, reason
        return super().__call__(upright(img_stream), blurring_bbox_list)


EXIF_ORIENTATION = 0x0112


def upright(img_stream: io.BytesIO) -> io.BytesIO:
    """``img_stream`` as it is displayed: an image with an EXIF orientation other than 1 is transposed and
    re-encoded losslessly (PNG); any other stream is returned as it is (rewound)."""
    from PIL import Image, ImageOps

    img_stream.seek(0)
    out = None
    try:
        with Image.open(img_stream) as im:  # the header only, unless it must be turned
            if im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
                out = io.BytesIO()
                ImageOps.exif_transpose(im).save(out, format="PNG")
    except Exception:  # noqa: BLE001 - unreadable here: img2dataset's decode reports it
        out = None
    stream = out if out is not None else img_stream
    stream.seek(0)
    return stream


def _worker_init(parent: int) -> None:
    """In a pool worker: end at once when it is told to stop, skipping the interpreter's teardown of torch,
    OpenCV and the rest (seconds per worker; img2dataset's own pool terminates its workers instead); on Ctrl-C
    (the terminal signals the whole process group) end quietly: the parent stops the run and says so, where
    each worker printed its KeyboardInterrupt traceback. When the parent (``pt2i run``) dies, even by SIGKILL,
    the worker dies too: an orphan went on downloading with the stage's loopback server gone and wrote stats
    of failed images for the shards it had, which the rerun took for done."""
    import atexit
    import signal

    from cluster.guard import signal_when_parent_dies

    atexit.register(os._exit, 0)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))
    if not signal_when_parent_dies(parent, signal.SIGKILL):
        os._exit(1)


def pool_distributor(processes_count, downloader, reader, _subjob_size, _max_shard_retry, *, lost: list):
    """img2dataset's multiprocessing distributor on a ``ProcessPoolExecutor`` (spawned workers): a worker
    that dies breaks the pool instead of hanging it; the shards not finished are appended to ``lost``
    and left without stats."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        processes_count, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(downloader, row): row[0] for row in reader}
        for future in tqdm(as_completed(futures), total=len(futures)):
            try:
                future.result()
            except BrokenProcessPool:
                lost.append(futures[future])


def ray_pool_distributor(
    processes_count, downloader, reader, _subjob_size, _max_shard_retry, *, lost: list, poll_s: float = 5.0
):
    """img2dataset's Ray distributor (one task per shard) that waits for every task and appends the shards
    whose task failed (a worker or node that died) to ``lost`` instead of raising with tasks still running.
    A progress bar counts the shards as they finish (one ``ray.wait`` over the pending tasks every ``poll_s``
    at most, not one per shard: that would be quadratic in the shards)."""
    import ray
    from img2dataset.distributor import ray_download
    from tqdm import tqdm

    refs = {ray_download.remote(downloader, row): row[0] for row in reader}
    pending = list(refs)
    with tqdm(total=len(refs), unit="shard", desc="download", smoothing=0.1) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    lost.append(refs[ref])
            bar.update(len(done))


@contextlib.contextmanager
def _attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    real = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, real)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    real = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if real is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = real


@contextlib.contextmanager
def installed(i2d_main: Any, guard: Any) -> Iterator[list]:
    """Install the above in img2dataset's ``main`` module for one call, under ``guard``
    (``tokenization.download.Guard``); yields the list of shards lost to a dead worker (filled by the
    distributors)."""
    lost: list = []
    with contextlib.ExitStack() as stack:
        for name, value in (
            ("Downloader", functools.partial(SafeDownloader, guard=guard)),
            ("Resizer", functools.partial(SafeResizer, max_pixels=guard.max_pixels)),
            ("multiprocessing_distributor", functools.partial(pool_distributor, lost=lost)),
            ("ray_distributor", functools.partial(ray_pool_distributor, lost=lost)),
        ):
            stack.enter_context(_attribute(i2d_main, name, value))
        stack.enter_context(_environ(OPENCV_LIMIT_ENV, str(guard.max_pixels)))
        yield lost
