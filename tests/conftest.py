"""Shared fixtures. Every server a test starts listens on 127.0.0.1 and is stopped by the fixture."""

from __future__ import annotations

import os

# Before anything imports albumentations (via img2dataset) or starts Ray: no update checks, no usage stats.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# No implicit `ray.init()` in a test process: a Ray call outside the session's loopback Ray (`ray_local`) or a
# stage's own `ensure_ray` raises "Ray has not been started yet" in that test, where a default Ray would listen on
# the interface address and be reused, unseen, by the tests after it (cluster/local_ray.py turns this off too, in
# any process that has started an embedded Ray; this also covers the calls before the first start).
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
# OpenMP threads that wait sleep instead of spinning (read when torch loads its OpenMP runtime; inherited by every
# process a test starts). On 2 cores shared by two xdist workers the spinning threads of the session's 2-thread
# tokenizer took the other worker's CPU: 60 of its steps beside a 1-thread matmul loop took 84.6 s and 114.5 CPU-s
# spinning, 62.0 s and 61.9 CPU-s passive, while the loop did 44% more work; alone 34.3 s vs 32.1 s. The weights
# are the same bit for bit (the threads split the work as before).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray starts its workers at nice 15 (RAY_worker_niceness), and the tests leave it so on purpose. Beside the other
# xdist worker's nice-0 tests those workers get little CPU (a Ray Data actor's `import open_clip` took 94 s beside a
# two-thread torch loop, 3.4 s at nice 0), but the suite's longest chain, the shared tokenizer and the tests on it,
# gets the cores first. With the workers at nice 0 (one clean-clone CI run) the Ray tests took ~200 s less, but the
# tokenizer's setup 1034 s (445-539 s at nice 15) and the suite 1704 s (1485-1582 s).

import contextlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tests.cpu_report import (  # noqa: E402, F401 - pytest finds the hooks by name here
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_terminal_summary,
)


@pytest.fixture
def http_server():
    """Factory: ``start(root, handler=None) -> base URL`` serving ``root`` on 127.0.0.1 (free port).
    ``handler`` subclasses ``tokenization.url_lists.QuietHandler``. Servers stop at test teardown."""
    from tokenization.url_lists import QuietHandler, serve_folder

    with contextlib.ExitStack() as stack:

        def start(root, handler=None) -> str:
            return stack.enter_context(serve_folder(root, handler or QuietHandler))

        yield start


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray (2 CPUs) on 127.0.0.1 for the whole session; shut down at the end.
    Stages calling ``ensure_ray`` inside reuse it."""
    import ray

    from cluster.local_ray import LOOPBACK, ensure_ray, node_addresses

    if ray.is_initialized() and node_addresses() != [LOOPBACK]:  # ensure_ray would reuse it: name who left it
        raise RuntimeError(f"a Ray beyond loopback {node_addresses()} was left initialised by {RAY_LEFT_BY[:1]}")
    with ensure_ray(None, num_cpus=2, object_store_memory=200 * 1024 * 1024, log_to_driver=False):
        assert node_addresses() == [LOOPBACK]
        yield ray


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """Each test hands the next one torch's thread count as it found it (a test may set its own for itself):
    trained weights depend on it, and which tests come before which on an xdist worker varies between runs."""
    import torch

    found = torch.get_num_threads()
    yield
    if torch.get_num_threads() != found:
        torch.set_num_threads(found)


RAY_LEFT_BY: list[str] = []  # the first test at whose end Ray was initialised in this worker (read by ray_local)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    if not RAY_LEFT_BY and getattr(sys.modules.get("ray"), "is_initialized", lambda: False)():
        RAY_LEFT_BY.append(item.nodeid)


# The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup`, the README's test command). Session fixtures
# are built once per worker, so every test that uses the costly shared ones runs on one worker, in one group, and
# first: the other worker takes the rest meanwhile, and the longest chain of work does not start last.
SHARED_FIXTURE_GROUP, SHARED_FIXTURES = "shapes", ("shapes_tokenizer", "shapes_t5")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not uses_shared_fixtures(item))  # stable: the order within each part is kept
    for item in items:
        if uses_shared_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(SHARED_FIXTURE_GROUP))


def uses_shared_fixtures(item) -> bool:
    return any(name in SHARED_FIXTURES for name in item.fixturenames)


SHAPES_TOKENIZER_STEPS = 800  # held-out MAE ~0.005, codebook usage ~100%
# The session's tokenizer trains on one thread, seed 1, beside the other xdist worker: its weights depend on the
# thread count and seed, and the tests on it were measured with this one (caption match 0.992 of 256, VQ-Diffusion
# 0.44, SR 0.96 against bicubic 0.82; 562 s and 524 CPU-s to train, Zen 4; with the kernels held to AVX2 there, as
# an AVX2-only CPU runs them (README, "Determinism"), other weights: 0.992, SR 0.98). On two threads on an AVX2-only
# EPYC it took ~900 CPU-s of the suite's (708-841 s wall, the other worker's core shared; on Zen 4 it made little
# difference). Seed 0 on one thread is the weakest of seven tokenizers measured for the caption test (0.94 of 256,
# the rest 0.99-1.00: tests/test_model_learning.py)
SHAPES_TOKENIZER_SEED = 1


@pytest.fixture(scope="session")
def shapes_tokenizer(tmp_path_factory):
    """The tiny VQ tokenizer trained once on 1500 synthetic images (data seed 0, training seed 1), shared by the
    learning tests: ``(folder, metrics)``; load it with ``tokenization.vqgan.load_tokenizer_dir(folder)``."""
    from tests.data_utils import make_dataset
    from tests.threads import one_thread
    from tokenization.vqgan import TokenizerConfig, train_tokenizer

    folder = tmp_path_factory.mktemp("shapes_tokenizer")
    images, _ = make_dataset(1500, seed=0, size=32)
    with one_thread():
        config = TokenizerConfig(steps=SHAPES_TOKENIZER_STEPS, seed=SHAPES_TOKENIZER_SEED)
        metrics = train_tokenizer(config, images, folder, progress=False)
    return folder, metrics


SHAPES_T5_STEPS = 500  # ~60 CPU-s at one thread


@pytest.fixture(scope="session")
def shapes_t5(tmp_path_factory):
    """A tiny T5 fitted on the 3000 captions of the synthetic train set (seed 0) and pretrained for 500 steps on
    restating them in position order, shared by the caption-following tests: like a real T5, its states tell
    apart captions that differ only in which attribute goes with which shape (a random one is nearly
    bag-of-words, and then 2-shape captions are ambiguous; tests/test_t5_pretrain.py). Returns its folder."""
    from tests.data_utils import make_dataset
    from tests.threads import one_thread
    from tokenization.t5_pretrain import pretrain_on_captions
    from tokenization.text import build_tiny_t5

    folder = tmp_path_factory.mktemp("shapes_t5")
    _, captions = make_dataset(3000, seed=0, size=32)
    with one_thread():
        build_tiny_t5(captions, folder, d_model=64)
        pretrain_on_captions(folder, captions, steps=SHAPES_T5_STEPS)
    return folder
