"""Measure a toy-suite build and write its model cards (README.md per asset,
suite.json with every number). Called by `python -m bench.toy.build` (step
"report"); everything is loaded through the public loaders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def saturate(images: torch.Tensor, k: float) -> torch.Tensor:
    """Scale colourfulness: blend each pixel with its grey value by factor k."""
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
    return (grey + k * (images - grey)).clamp(0, 1)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().float()
    rb = b.argsort().argsort().float()
    return float(np.corrcoef(ra.numpy(), rb.numpy())[0, 1])


def sample_prompts(backbone, prompts: list[str], per_prompt: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ps = [p for p in prompts for _ in range(per_prompt)]
    return backbone.sample(ps, generator=g, batch_size=64).images


def measure(per_prompt: int = 4, seed: int = 0) -> dict:
    from bench.train.backbone import build_backbone
    from bench.spec.prompts import resolve_prompt_set
    from bench.train.runner import load_reward
    from bench.toy.gold import image_stats
    from bench.toy.render import draw, sample_scene
    from bench.spec.toy_assets import pipeline_dir

    rewards = {n: load_reward(n, "toy", "cpu") for n in ("aesthetic", "pickscore", "hpsv2", "gold-aesthetic",
                                                          "gold-fidelity")}
    from bench.spec.catalog import backbones

    T = backbones.get("toy").meta["defaults"]["num_steps"]  # the bars hold at the suite's default T
    bb = build_backbone(str(pipeline_dir()), num_steps=T, guidance_scale=5.0, eta=1.0)
    res: dict = {"sampling": {"num_steps": T, "guidance_scale": 5.0, "eta": 1.0, "per_prompt": per_prompt,
                              "seed": seed}}
    seen_imgs = None
    for name in ("toy-seen", "toy-unseen", "toy-compositional"):
        prompts = resolve_prompt_set(name)[1]
        imgs = sample_prompts(bb, prompts, per_prompt, seed)
        ps = [p for p in prompts for _ in range(per_prompt)]
        fid = rewards["gold-fidelity"].score(imgs, ps)
        res[name] = {"fidelity_match_rate": float((fid > 0.5).float().mean()), "fidelity_mean": float(fid.mean()),
                     "n": len(ps), **{f"mean_{r}": float(rewards[r].score(imgs, ps).mean())
                                      for r in ("aesthetic", "gold-aesthetic", "pickscore", "hpsv2")}}
        if name == "toy-seen":
            seen_imgs, seen_prompts = imgs, ps
    # The same gold scorer on renders of the seen prompts: the ceiling of the rate.
    rng = np.random.default_rng(seed)
    from bench.toy.render import scene_for_caption

    renders = torch.from_numpy(np.stack([draw(scene_for_caption(p, rng)) for p in seen_prompts])).permute(0, 3, 1, 2)
    renders = renders.float() / 255
    fid_r = rewards["gold-fidelity"].score(renders, seen_prompts)
    res["toy-seen"]["renders_fidelity_match_rate"] = float((fid_r > 0.5).float().mean())

    # Reward agreement on a pool of renders and samples (Spearman rank correlation).
    pool_sc = [sample_scene(rng, kind="single") for _ in range(256)]
    pool = torch.from_numpy(np.stack([draw(s) for s in pool_sc])).permute(0, 3, 1, 2).float() / 255
    pool_p = [s.caption for s in pool_sc]
    pool = torch.cat([pool, seen_imgs])
    pool_p = pool_p + seen_prompts
    scores = {n: r.score(pool, pool_p) for n, r in rewards.items()}
    names = list(scores)
    res["spearman"] = {a: {b: round(_spearman(scores[a], scores[b]), 3) for b in names} for a in names}

    # Misspecification: push the colourfulness of renders past the data range.
    sweep = []
    base = pool[:256]
    for k in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        x = saturate(base, k)
        sweep.append({"k": k, "saturation": float(image_stats(x)["saturation"].mean()),
                      "aesthetic": float(rewards["aesthetic"].score(x, pool_p[:256]).mean()),
                      "gold-aesthetic": float(rewards["gold-aesthetic"].score(x).mean())})
    res["saturation_sweep"] = sweep
    return res


def _card_text(name: str, what: str, train: str, quality: str) -> str:
    return f"# {name}\n\n**What it is.** {what}\n\n**How it was trained.** {train}\n\n**Measured.** {quality}\n"


def measure_and_write_cards(out: Path, per_prompt: int = 4, seed: int = 0) -> dict:
    out = Path(out)
    old = os.environ.get("BENCH_TOY_ASSETS")
    os.environ["BENCH_TOY_ASSETS"] = str(out)
    try:
        res = measure(per_prompt, seed)
    finally:
        if old is None:
            os.environ.pop("BENCH_TOY_ASSETS", None)
        else:
            os.environ["BENCH_TOY_ASSETS"] = old
    reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*_report.json")}
    res["training"] = reports
    (out / "suite.json").write_text(json.dumps(res, indent=1) + "\n")
    seen = res["toy-seen"]
    sp = res["spearman"]
    sw = res["saturation_sweep"]
    cards = {
        "pipeline": ("toy StableDiffusionPipeline",
                     "A diffusers StableDiffusionPipeline for 32x32 images: AutoencoderKL (32x32x3 <-> 8x8x4), "
                     "UNet2DConditionModel (channels 64/96/128), CLIPTextModel (hidden 64, 3 layers) with a "
                     "word-level tokenizer over the toy vocabulary, DDIMScheduler with SD v1.4's beta schedule.",
                     "bench/toy/build.py: the VAE on rendered scenes (L1 + MSE + small KL); the text encoder "
                     "starts from the toy CLIP's text tower and is tuned jointly with the UNet (epsilon "
                     "prediction, 10% empty captions for classifier-free guidance, EMA weights).",
                     f"{res['sampling']['num_steps']} DDIM steps, guidance 5, eta 1, {per_prompt} images per prompt (seed {seed}): "
                     f"gold-fidelity match rate (score > 0.5) on the 48 seen prompts "
                     f"{seen['fidelity_match_rate']:.3f} (renders of the same prompts: "
                     f"{seen['renders_fidelity_match_rate']:.3f}); unseen {res['toy-unseen']['fidelity_match_rate']:.3f}; "
                     f"compositional {res['toy-compositional']['fidelity_match_rate']:.3f}."),
        "aesthetic": ("toy aesthetic (proxy)",
                      "A tiny transformers CLIPModel (ViT patch 4 on 32x32, projection 64) and a LAION-shaped "
                      "MLP head (1024-128-64-16-1, no activations) on its L2-normalised image features.",
                      "CLIP: contrastive on rendered (image, caption) pairs. Head: MSE on a limited, noisy label "
                      "set: renders whose saturation is below the gold peak only, labels = gold + N(0, 0.5).",
                      "Saturation sweep over 256 renders (k scales colourfulness): " + "; ".join(
                          f"k={s['k']}: sat {s['saturation']:.2f}, proxy {s['aesthetic']:.2f}, "
                          f"gold {s['gold-aesthetic']:.2f}" for s in sw)
                      + f". Spearman with gold-aesthetic: {sp['aesthetic']['gold-aesthetic']}."),
        "pickscore": ("toy pickscore",
                      "logit_scale * cos(image, text) of a tiny CLIPModel (PickScore's scoring rule).",
                      "Fine-tuned from the toy CLIP with a Bradley-Terry loss on same-prompt pairs preferred "
                      "by a hidden rater pool that likes big, bright objects and on-prompt images.",
                      f"Spearman with hpsv2 {sp['pickscore']['hpsv2']}, with aesthetic "
                      f"{sp['pickscore']['aesthetic']}, with gold-fidelity {sp['pickscore']['gold-fidelity']}."),
        "hpsv2": ("toy hpsv2",
                  "logit_scale * cos(image, text) of a tiny CLIPModel (HPSv2's scoring rule).",
                  "Fine-tuned from the toy CLIP with a Bradley-Terry loss on same-prompt pairs preferred by a "
                  "different hidden rater pool: calm (low saturation), high-contrast, on-prompt images.",
                  f"Spearman with pickscore {sp['hpsv2']['pickscore']}, with aesthetic {sp['hpsv2']['aesthetic']}, "
                  f"with gold-aesthetic {sp['hpsv2']['gold-aesthetic']}."),
        "gold-fidelity": ("gold fidelity scorer (evaluation only)",
                          "A CNN counting every (color, shape) pair in an image (0-3), plus procedural checks "
                          "for location and background words. Fidelity = probability of what the caption asks.",
                          "Cross-entropy on abundant renders with blur/noise augmentation.",
                          f"Held-out renders with every pair count right: "
                          f"{reports['gold_report']['heldout_exact_scene_accuracy']:.3f}; "
                          f"match rate on renders of the seen prompts {seen['renders_fidelity_match_rate']:.3f}."),
    }
    for folder, (title, what, train, quality) in cards.items():
        if (out / folder).is_dir():
            (out / folder / "README.md").write_text(_card_text(title, what, train, quality))
    lines = ["# Toy-suite assets", "",
             "Built by `python -m bench.toy.build` (seeded); every number below was measured by its `report` "
             "step and is stored in `suite.json`. Each folder has its own model card.", "",
             "| asset | what | measured |", "|---|---|---|"]
    for folder, (title, what, _, quality) in cards.items():
        lines.append(f"| `{folder}/` | {title} | {quality} |")
    lines += ["", "`_work/` (not committed) holds intermediate models of a rebuild."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return res
