"""The sample worker keeps prompts, tokens and images paired: image ``i`` is the decoded token row ``i``, and it
is made from prompt ``i`` (changing one prompt changes that prompt's image and token row only)."""

import json

import numpy as np
import torch
from PIL import Image

from tests.eval_utils import make_run, one_thread  # noqa: F401


def _sample(cfg, out, prompts):
    from evaluation.sample_files import PROMPTS, image_path
    from evaluation.sample_worker import ChunkWorker, assemble_tokens, job_for

    for d in ("images", "tokens", "steps"):
        (out / d).mkdir(parents=True, exist_ok=True)
    recs = [{"index": i, "prompt": p, "refs": [p]} for i, p in enumerate(prompts)]
    (out / PROMPTS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    job = job_for(cfg.sample, cfg.text_encoder, cfg.eval, out, cfg.run_dir, len(prompts))
    worker = ChunkWorker(job, device="cpu")
    for c in range(job.n_chunks):
        worker.run(c)
    tokens = np.load(assemble_tokens(job))
    images = [np.asarray(Image.open(image_path(out, i)).convert("RGB")) for i in range(len(prompts))]
    return tokens, images


def test_each_image_is_its_prompts_token_row_decoded(tmp_path):
    from evaluation.sample_files import to_uint8
    from tokenization.synthetic import load_images
    from tokenization.vqgan import load_tokenizer_dir

    cfg = make_run(tmp_path)
    run_dir = tmp_path / "run"
    _, prompts = load_images(run_dir / "synthetic" / "eval")
    tokens, images = _sample(cfg, tmp_path / "a", prompts)
    assert cfg.sample.batch_size < len(prompts)  # several chunks
    vq = load_tokenizer_dir(run_dir / "tokenizer").eval()
    with torch.no_grad():
        decoded = to_uint8(vq.decode(torch.from_numpy(tokens.astype(np.int64)))).astype(np.float64)
    for i, img in enumerate(images):
        dist = np.abs(decoded - img.astype(np.float64)).mean(axis=(1, 2, 3))
        assert dist[i] < 1.0 and int(dist.argmin()) == i, (i, dist)

    # one prompt changed (the second of chunk 1): its image and token row change, no other one does
    k = cfg.sample.batch_size + 1
    changed = list(prompts)
    changed[k] = prompts[0] if prompts[0] != prompts[k] else prompts[1]
    tokens2, images2 = _sample(cfg, tmp_path / "b", changed)
    diff_rows = [i for i in range(len(prompts)) if (tokens2[i] != tokens[i]).any()]
    diff_images = [i for i in range(len(prompts)) if not np.array_equal(images2[i], images[i])]
    assert diff_rows == [k] and diff_images == [k]
