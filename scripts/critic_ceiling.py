"""Why TDPO's critic explains little of the return on the toy: two ceilings on its explained variance, measured on
the pretrained policy (issue "The toy as a faithful miniature", item 3).

TDPO's critic is a purely linear MLP of the reward encoder's embedding of the decoded x_t, without the timestep
(methods/tdpo.py), and its target is the per-prompt-normalised final reward. So:

1. **Leverage** (any critic): the share of the final reward's within-prompt variance that the state x_t
   determines, Var(E[r | x_t]) / Var(r), by Monte Carlo: K continuations of the sampler (eta of the run) from
   each of M states per step. Unbiased: the conditional means' variance less the continuations' own noise / K.
2. **The linear ceiling** (this critic's family): the held-out R^2 per step of ONE ridge regression from the
   embeddings of every step to the normalised reward (no timestep input, as the critic), 5-fold by chain;
   beside it, one fit per step (what a critic told the timestep could reach).

A trained critic's explained variance (train metric `critic_ev_step_KK`) can at best reach the smaller of the two.

    python scripts/critic_ceiling.py [--reward aesthetic] [--backbone toy] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward", default="aesthetic")
    p.add_argument("--backbone", default="toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=48, help="training prompts used (the first N)")
    p.add_argument("--per-prompt", type=int, default=8, help="chains per prompt for the linear ceiling")
    p.add_argument("--mc-prompts", type=int, default=8, help="prompts of the Monte Carlo leverage")
    p.add_argument("--mc-per-prompt", type=int, default=8, help="states per prompt and step")
    p.add_argument("--continuations", type=int, default=8, help="K continuations per state")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-leverage", action="store_true", help="the linear ceilings only")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from bench.spec import catalog
    from bench.spec.prompts import resolve_prompt_set
    from bench.spec.runspec import resolve_backbone
    from bench.spec.registry import load_target
    from bench.train.backbone import build_backbone
    from bench.train.runner import load_reward
    from bench.train.sampling import ddim_step_with_logprob

    torch.set_num_threads(a.threads)
    info = resolve_backbone(a.backbone)
    d = info.defaults
    location = str(load_target(info.builder)()) if info.builder else info.location
    bb = build_backbone(location, d["num_steps"], d["guidance_scale"], d["eta"])
    reward = load_reward(a.reward, info.suite, "cpu")
    encoder = reward.image_encoder()
    prompts_all = resolve_prompt_set(d["train_prompts"])[1][:a.prompts]
    T = d["num_steps"]
    print(f"{a.backbone}: T = {T}, eta = {d['eta']}, guidance {d['guidance_scale']}; reward {a.reward}; "
          f"{len(prompts_all)} prompts; catalog {catalog.DEFAULT_BACKBONE}")

    def within_prompt_z(r: np.ndarray, groups: np.ndarray) -> np.ndarray:
        z = np.empty_like(r)
        for g in np.unique(groups):
            m = groups == g
            z[m] = (r[m] - r[m].mean()) / (r[m].std() + 1e-6)
        return z

    # ---------------------------------------------------------------- 2. the linear ceiling
    prompts = [q for q in prompts_all for _ in range(a.per_prompt)]
    groups = np.repeat(np.arange(len(prompts_all)), a.per_prompt)
    traj = bb.sample(prompts, generator=torch.Generator().manual_seed(a.seed), batch_size=64)
    r = reward.score(traj.images, prompts).float().numpy()
    z = within_prompt_z(r, groups)
    with torch.no_grad():
        B = len(prompts)
        flat = traj.latents.reshape(B * T, *traj.latents.shape[2:])
        emb = torch.cat([encoder(bb.decode(flat[s:s + 256])).float() for s in range(0, B * T, 256)])
    X = emb.reshape(B, T, -1).numpy().astype(np.float64)
    folds = np.random.default_rng(a.seed).permutation(B) % 5

    def held_out(steps_of_fit, z=z) -> tuple[list[float], float]:
        """Per-step held-out R^2 of ridge fits (5-fold by chain), each fit on the steps `steps_of_fit(k)`
        gives for step k; the ridge strength is the best of a small grid (a slight optimism, for a ceiling)."""
        best = None
        for lam in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
            pred = np.zeros((B, T))
            for f in range(5):
                tr, te = folds != f, folds == f
                for ks in {tuple(steps_of_fit(k)) for k in range(T)}:
                    Xtr = X[tr][:, list(ks)].reshape(-1, X.shape[-1])
                    ytr = np.repeat(z[tr], len(ks))
                    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
                    A = (Xtr - mu) / sd
                    w = np.linalg.solve(A.T @ A + lam * len(A) * np.eye(A.shape[1]), A.T @ (ytr - ytr.mean()))
                    for k in ks:
                        pred[te, k] = ((X[te][:, k] - mu) / sd) @ w + ytr.mean()
            r2 = [1 - np.var(z - pred[:, k]) / np.var(z) for k in range(T)]
            if best is None or np.mean(r2) > np.mean(best[0]):
                best = (r2, lam)
        return best

    print(f"\n## linear ceiling: held-out R^2 of ridge fits to the normalised reward, {B} chains, 5-fold")
    for label, fit, target in (
            ("one fit over all steps (the critic: no timestep input)", lambda k: range(T), z),
            ("one fit per step (a critic that knew the step)", lambda k: [k], z),
            ("one fit over all steps, to the RAW reward (what per-prompt normalisation hides)", lambda k: range(T),
             (r - r.mean()) / r.std())):
        r2, lam = held_out(fit, target)
        print(f"{label}, ridge {lam:g} x rows:")
        print("  step (x_T first): " + "; ".join(f"{k:02d}: {v:.2f}" for k, v in enumerate(r2))
              + f"; mean {np.mean(r2):.3f}")

    if a.skip_leverage:
        return 0
    # ---------------------------------------------------------------- 1. leverage by Monte Carlo
    mc_prompts = [q for q in prompts_all[:a.mc_prompts] for _ in range(a.mc_per_prompt)]
    mc_groups = np.repeat(np.arange(a.mc_prompts), a.mc_per_prompt)
    base = bb.sample(mc_prompts, generator=torch.Generator().manual_seed(a.seed + 1), batch_size=64)
    K = a.continuations
    lever = []
    gen = torch.Generator().manual_seed(a.seed + 2)
    for k in range(T):
        x = base.latents[:, k].repeat_interleave(K, 0)
        rep = [q for q in mc_prompts for _ in range(K)]
        with torch.no_grad():
            cond, uncond = bb.encode_prompts(rep)
            for t in bb.timesteps[k:]:
                eps = bb.predict_noise(x, t, cond, uncond)
                x, _ = ddim_step_with_logprob(bb.scheduler, eps, t, x, eta=bb.eta, generator=gen)
            rr = reward.score(bb.decode(x), rep).float().numpy().reshape(len(mc_prompts), K)
        # within-prompt decomposition: Var(r) = Var(E[r|x_t]) + E[Var(r|x_t)], per prompt, then averaged
        num, den = [], []
        for g in range(a.mc_prompts):
            m = rr[mc_groups == g]                       # states x K
            within = m.var(axis=1, ddof=1).mean()       # E[Var(r | x_t)]
            between = m.mean(axis=1).var(ddof=1) - within / K  # Var(E[r | x_t]), unbiased
            num.append(between)
            den.append(between + within)
        lever.append(max(0.0, float(np.mean(num))) / float(np.mean(den)))
    print(f"\n## leverage: Var(E[r | x_t]) / Var(r) within prompts, {len(mc_prompts)} states x {K} continuations")
    print("step (x_T first): " + "; ".join(f"{k:02d}: {v:.2f}" for k, v in enumerate(lever)))
    print(f"mean over steps: {np.mean(lever):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
