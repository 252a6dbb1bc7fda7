"""Cost of one order-learner policy-gradient update (PDM 3.2, Eq. 6) vs one PDM training step.

Both on the same batch of the ``small`` preset (16x16 grid, 1024 codes, dim 512, 8 layers):

  generator step  make_tuples (random order) + PDM forward + backward + AdamW step
  policy update   policy_update: T-step rollout (T PDM forwards without grad + policy scoring), the
                  reward (token accuracy: no decoder in the loop), REINFORCE backward through the policy
                  only, grad clip, AdamW step; with --baseline self_critical a second (greedy) rollout.
  joint step      one trainer step of order_learner.mode joint: the policy's rollout, the PDM's tuples
                  cut with the learned order, the generator step, the policy update. "separate" rolls
                  out once more for the tuples (the old wiring: 2 rollouts, 3 with self_critical);
                  "reused" cuts the tuples with the policy update's own rollout (what the trainer does).

Each is timed --repeats times after one warm-up; the best time is reported (the machine is shared).
The ratios are policy / generator (expect about T forwards / (forward + backward ~ 3 forwards) ~ T/3)
and reused / separate joint step.

    .venv/bin/python benchmarks/bench_policy.py --batch 4 --stages 16 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.model.config import model_config  # noqa: E402
from training.model.order_learner import (  # noqa: E402
    OrderLearnerConfig,
    apply_policy_loss,
    build_order_learner,
    generator_stage_of,
    make_optimizer,
    policy_update,
)
from training.model.orders import get_order  # noqa: E402
from training.model.pdm import PDM  # noqa: E402
from training.model.pdm_loss import pdm_loss  # noqa: E402
from training.model.tuples import make_tuples  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--stages", type=int, default=16, help="T of the rollouts")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--baseline", default="moving_average", choices=("moving_average", "self_critical", "none"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mcfg = model_config(args.preset)
    pdm = PDM(mcfg)
    B, L, S = args.batch, mcfg.seq_len, args.text_len
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, mcfg.codebook_size, (B, L), generator=g)
    text, text_mask = torch.randn(B, S, mcfg.text_dim, generator=g), torch.ones(B, S, dtype=torch.bool)
    stage_of = get_order("random")(B, L, args.stages, generator=g)
    tuples = make_tuples(tokens, stage_of, args.stages, pdm.mask_id, mcfg.codebook_size, generator=g)
    gen_opt = torch.optim.AdamW(pdm.parameters(), lr=1e-4)

    def generator_step(tup=tuples):
        pdm.train()
        loss, _ = pdm_loss(pdm(tup.inputs, text, text_mask), tup)
        gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        gen_opt.step()

    cfg = OrderLearnerConfig(reward="token_acc", baseline=args.baseline, warmup_steps=0)
    learner = build_order_learner(mcfg, cfg, stages=args.stages)
    pol_opt = make_optimizer(learner, cfg)
    batch = dict(tokens=tokens, text=text, text_mask=text_mask)

    def policy_step():
        policy_update(learner, pdm, batch, pol_opt, g)

    def joint_step(reuse: bool):
        loss, _, ro = learner(pdm, batch, g)
        so = generator_stage_of(learner, pdm, batch, step=1, rollout_result=ro if reuse else None, generator=g)
        generator_step(make_tuples(tokens, so, args.stages, pdm.mask_id, mcfg.codebook_size, generator=g))
        apply_policy_loss(learner, loss, pol_opt)

    n_pdm = sum(p.numel() for p in pdm.parameters())
    n_pol = sum(p.numel() for p in learner.parameters())
    print(
        f"preset {args.preset}: L={L}, dim={mcfg.dim}, layers={mcfg.layers}, PDM {n_pdm / 1e6:.1f}M params, "
        f"policy {n_pol / 1e3:.0f}k params; batch {B}, T={args.stages}, baseline {args.baseline}, "
        f"threads {torch.get_num_threads()}"
    )
    t_gen = best_of(generator_step, args.repeats)
    print(f"generator step (fwd+bwd+AdamW):           {t_gen * 1e3:9.1f} ms")
    t_pol = best_of(policy_step, args.repeats)
    print(f"policy update (T-step rollout+REINFORCE): {t_pol * 1e3:9.1f} ms")
    print(f"ratio policy / generator:                 {t_pol / t_gen:9.2f}x")
    t_sep = best_of(lambda: joint_step(reuse=False), args.repeats)
    print(f"joint step, separate tuple rollout:       {t_sep * 1e3:9.1f} ms")
    t_re = best_of(lambda: joint_step(reuse=True), args.repeats)
    print(f"joint step, rollout reused (trainer):     {t_re * 1e3:9.1f} ms")
    print(f"ratio reused / separate:                  {t_re / t_sep:9.2f}x")


if __name__ == "__main__":
    main()
