"""Rebuild every asset of the embedded toy suite from scratch, seeded.

    python -m bench.toy.build                  # full build into bench/toy/assets (~1 h on 2 cores)
    python -m bench.toy.build --quick --out /tmp/toy   # minutes; tiny step counts, for tests
    python -m bench.toy.build --only unet,report       # redo some steps

Steps, in order (each writes its own sub-folder of --out and is skipped if that
exists, unless --force): vae, clip, unet, pipeline, gold, aesthetic, prefs, report.
Everything is saved as safetensors (diffusers / transformers formats).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from bench.toy.models import UNET_CONFIGS

WORK = "_work"  # intermediate models (the VAE and base CLIP also live inside the final assets); not committed
STEPS = ("vae", "clip", "unet", "gold", "aesthetic", "prefs", "report")
DEFAULT_OUT = Path(__file__).resolve().parent / "assets"

FULL = dict(n_train=120_000, vae_steps=1200, vae_steps2=800, clip_steps=1500, unet_steps=3000, gold_steps=1500, head_labels=2000,
            head_steps=1500, pref_steps=800, eval_per_prompt=4, batch=128)
QUICK = dict(n_train=1_200, vae_steps=6, vae_steps2=4, clip_steps=6, unet_steps=6, gold_steps=6, head_labels=64,
             head_steps=10, pref_steps=4, eval_per_prompt=1, batch=16)


# --------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[toy-build {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)


def _cosine_lr(opt, step: int, total: int, base: float, warmup: int = 100) -> None:
    w = min(1.0, (step + 1) / max(1, min(warmup, total // 10 + 1)))
    lr = base * w * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def _dataset(n: int, seed: int):
    import numpy as np
    import torch

    from bench.toy.render import render_dataset

    _log(f"rendering {n} scenes (seed {seed})")
    images, scenes = render_dataset(n, seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x, scenes


def _tokens(tokenizer, captions):
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _save_dir(model, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _save_tensors(state: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def _card(folder: Path, title: str, body: str) -> None:
    (folder / "README.md").write_text(f"# {title}\n\n{body.strip()}\n")


# --------------------------------------------------------------------------- steps
def _train_vae(vae, x, steps: int, lr: float, seed: int, desc: str):
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    bs = 64
    vae.train()
    with _bar(steps, desc) as bar:
        for step in range(steps):
            _cosine_lr(opt, step, steps, lr)
            batch = x[torch.randint(len(x), (bs,), generator=g)] * 2 - 1
            post = vae.encode(batch).latent_dist
            rec = vae.decode(post.sample(generator=g)).sample
            kl = post.kl().mean() / post.mean[0].numel()
            loss = (rec - batch).abs().mean() + (rec - batch).pow(2).mean() + 1e-4 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.2f}")
    return vae.eval()


def step_vae(out: Path, cfg: dict, seed: int) -> None:
    """Two cosine cycles (lr 1e-3, then 3e-4): the second sharpens small shapes
    (crosses, stars, rings) that the first leaves as blobs."""
    import torch
    from diffusers import AutoencoderKL

    from bench.toy.models import new_vae

    x, _ = _dataset(cfg["n_train"] // 2, seed + 11)
    phase1 = out / WORK / "vae_phase1"
    if phase1.is_dir():
        vae = AutoencoderKL.from_pretrained(str(phase1))
        _log(f"vae: phase 1 found at {phase1}, continuing")
    else:
        torch.manual_seed(seed)
        vae = _train_vae(new_vae(), x, cfg["vae_steps"], 1e-3, seed, "vae (1/2)")
        _save_dir(vae, phase1)
    vae = _train_vae(vae, x, cfg["vae_steps2"], 3e-4, seed + 1, "vae (2/2)")
    with torch.no_grad():
        held = x[-512:] * 2 - 1
        z = vae.encode(held).latent_dist.mean
        rec = vae.decode(z).sample
        mse = (rec - held).pow(2).mean().item() / 4  # in [0,1] units
        scale = 1.0 / z.std().item()
    vae.register_to_config(scaling_factor=scale)
    _save_dir(vae, out / WORK / "vae")
    (out / "vae_report.json").write_text(json.dumps({"recon_mse_01": mse, "scaling_factor": scale}, indent=1))
    _log(f"vae: held-out reconstruction MSE {mse:.5f} (images in [0,1]); scaling_factor {scale:.4f}")


def _contrastive_loss(clip, pixels, ids, captions):
    import torch
    import torch.nn.functional as F

    out = clip(input_ids=ids, pixel_values=pixels, return_loss=False)
    logits = out.logits_per_image
    # Identical captions in a batch are positives too (soft targets), not negatives.
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _clip_pixels(x):
    from metrics.aesthetic import _normalize

    return _normalize(x)


def step_clip(out: Path, cfg: dict, seed: int) -> None:
    import torch
    from transformers import CLIPModel

    from bench.toy.models import clip_config, toy_tokenizer

    x, scenes = _dataset(cfg["n_train"] // 2, seed + 12)
    captions = [s.caption for s in scenes]
    tok = toy_tokenizer()
    ids = _tokens(tok, captions)
    torch.manual_seed(seed)
    clip = CLIPModel(clip_config(tok)).train()
    opt = torch.optim.AdamW(clip.parameters(), lr=5e-4, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    total, bs = cfg["clip_steps"], max(cfg["batch"], 16) * 2
    with _bar(total, "clip") as bar:
        for step in range(total):
            _cosine_lr(opt, step, total, 5e-4)
            idx = torch.randint(len(x), (bs,), generator=g)
            loss = _contrastive_loss(clip, _clip_pixels(x[idx]), ids[idx], [captions[i] for i in idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
            opt.step()
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    clip.eval()
    acc = _retrieval_accuracy(clip, tok, seed)
    _save_dir(clip, out / WORK / "clip")
    tok.save_pretrained(str(out / WORK / "clip"))
    (out / "clip_report.json").write_text(json.dumps({"caption_retrieval_top1": acc}, indent=1))
    _log(f"clip: caption retrieval top-1 among 56 single-object captions: {acc:.3f}")


def _retrieval_accuracy(clip, tok, seed: int) -> float:
    """Top-1 accuracy of picking the right 'a <color> <shape>' caption for a render."""
    import numpy as np
    import torch

    from bench.toy.render import draw, sample_scene
    from bench.toy.vocab import COLORS, SHAPES, article

    rng = np.random.default_rng(seed + 99)
    cands = [f"{article(c)} {c} {s}" for c in COLORS for s in SHAPES]
    scenes = [sample_scene(rng, kind="single") for _ in range(512)]
    x = torch.from_numpy(np.stack([draw(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        t = clip.get_text_features(input_ids=_tokens(tok, cands))
        i = clip.get_image_features(pixel_values=_clip_pixels(x))
        t = _as_tensor(t)
        i = _as_tensor(i)
        pred = (i / i.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).t()
    truth = torch.tensor([cands.index(s.caption) for s in scenes])
    return (pred.argmax(1) == truth).float().mean().item()


def _as_tensor(x):
    return x if hasattr(x, "norm") else x.pooler_output


def step_unet(out: Path, cfg: dict, seed: int) -> None:
    """The denoiser (cfg["unet"] names its configuration) and the text encoder, trained jointly."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPModel, CLIPTextModel

    from bench.toy.models import new_scheduler, new_unet, toy_tokenizer

    tok = toy_tokenizer()
    vae = AutoencoderKL.from_pretrained(str(out / WORK / "vae")).eval().requires_grad_(False)
    clip = CLIPModel.from_pretrained(str(out / WORK / "clip"))
    # SD's text encoder is CLIP's text tower; ours starts from the toy CLIP's and
    # is fine-tuned with the UNet (a tiny tower needs it to carry word order).
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    del clip
    x, scenes = _dataset(cfg["n_train"], seed + 13)
    captions = [s.caption for s in scenes]
    ids = _tokens(tok, captions)
    empty = _tokens(tok, [""])[0]
    _log("encoding the training set with the VAE")
    mean, std = [], []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            d = vae.encode(x[i:i + 512] * 2 - 1).latent_dist
            mean.append(d.mean)
            std.append(d.std)
    mean, std = torch.cat(mean), torch.cat(std)
    sf = vae.config.scaling_factor
    noise_sched = DDPMScheduler.from_config(new_scheduler().config)
    torch.manual_seed(seed)
    unet = new_unet(cfg["unet"]).train()
    text.train()
    params = [{"params": unet.parameters()}, {"params": text.parameters(), "lr_scale": 0.3}]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    total, bs = cfg["unet_steps"], cfg["batch"]
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    with _bar(total, "unet") as bar:
        for step in range(total):
            _cosine_lr(opt, step, total, 5e-4, warmup=200)
            idx = torch.randint(len(x), (bs,), generator=g)
            z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=g)
            zt = noise_sched.add_noise(z0, noise, t)
            b_ids = ids[idx].clone()
            drop = torch.rand(bs, generator=g) < 0.1  # classifier-free guidance needs the "" prompt
            b_ids[drop] = empty
            cond = text(b_ids)[0]
            loss = (unet(zt, t, encoder_hidden_states=cond).sample - noise).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
            opt.step()
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in unet.state_dict().items():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay) if v.dtype.is_floating_point else ema[k].copy_(v)
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    unet.load_state_dict(ema)
    _save_pipeline(out, unet.eval(), text.eval(), vae, tok)


def _save_pipeline(out: Path, unet, text, vae, tok) -> None:
    """Save in diffusers format. The UNet's weights are stored in float16 to keep
    the committed assets under 30 MB; `load_pipeline` loads them as float32."""
    import torch
    from diffusers import StableDiffusionPipeline

    from bench.spec.catalog import backbones
    from bench.tiny import save_pipeline_dir
    from bench.toy.models import new_scheduler

    pipe = StableDiffusionPipeline(unet=unet.to(torch.float16), vae=vae, text_encoder=text, tokenizer=tok, scheduler=new_scheduler(),
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    shutil.rmtree(out / "pipeline", ignore_errors=True)
    meta = backbones.get("toy").meta
    save_pipeline_dir(pipe, out / "pipeline", {"suite": meta["suite"], "defaults": meta["defaults"]})
    _log(f"pipeline saved to {out / 'pipeline'}")


def step_gold(out: Path, cfg: dict, seed: int) -> None:
    import torch
    import torch.nn.functional as F

    from bench.toy.gold import CountNet, count_targets, noisy_views

    x, scenes = _dataset(cfg["n_train"] // 2, seed + 14)
    y = count_targets(scenes)
    torch.manual_seed(seed)
    net = CountNet().train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    total, bs = cfg["gold_steps"], cfg["batch"]
    n_hold = min(1000, len(x) // 5)
    with _bar(total, "gold-fidelity") as bar:
        for step in range(total):
            _cosine_lr(opt, step, total, 2e-3)
            idx = torch.randint(len(x) - n_hold, (bs,), generator=g)
            logits = net(noisy_views(x[idx], g))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    net.eval()
    with torch.no_grad():
        pred = net(x[-n_hold:]).argmax(-1)
    exact = (pred == y[-n_hold:]).all(dim=1).float().mean().item()
    folder = out / "gold-fidelity"
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors(net.state_dict(), folder / "countnet.safetensors", {"format": "bench-toy-countnet"})
    (out / "gold_report.json").write_text(json.dumps({"heldout_exact_scene_accuracy": exact}, indent=1))
    _log(f"gold fidelity: held-out renders with every (color, shape) count right: {exact:.3f}")


def _clip_embed(clip, x):
    import torch

    from metrics.aesthetic import preprocess_reference

    with torch.no_grad():
        f = _as_tensor(clip.get_image_features(pixel_values=preprocess_reference(x, 32)))
    return f / f.norm(dim=-1, keepdim=True)


def step_aesthetic(out: Path, cfg: dict, seed: int) -> None:
    import numpy as np
    import torch
    from transformers import CLIPModel

    from bench.toy.gold import SAT_PEAK, gold_aesthetic, image_stats
    from bench.toy.render import draw, sample_scene
    from metrics.aesthetic import AestheticHead

    clip = CLIPModel.from_pretrained(str(out / WORK / "clip")).eval()
    # A limited, noisy, curated label set: only renders whose saturation is below
    # the gold peak ("the photos the raters saw were muted"), gold + N(0, 0.5).
    rng = np.random.default_rng(seed + 15)
    imgs = []
    while len(imgs) < cfg["head_labels"]:
        im = torch.from_numpy(draw(sample_scene(rng))).permute(2, 0, 1).float()[None] / 255
        if image_stats(im)["saturation"].item() < SAT_PEAK - 0.05:
            imgs.append(im)
    x = torch.cat(imgs)
    g = torch.Generator().manual_seed(seed)
    labels = gold_aesthetic(x) + 0.5 * torch.randn(len(x), generator=g)
    feats = _clip_embed(clip, x)
    torch.manual_seed(seed)
    head = AestheticHead(feats.shape[1]).train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-3)
    n_val = len(x) // 5
    for step in range(cfg["head_steps"]):
        idx = torch.randint(n_val, len(x), (256,), generator=g)
        loss = (head(feats[idx]).squeeze(-1) - labels[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        val = head(feats[:n_val]).squeeze(-1)
    gold_val = gold_aesthetic(x[:n_val])
    corr = float(np.corrcoef(val.numpy(), gold_val.numpy())[0, 1])
    folder = out / "aesthetic"
    folder.mkdir(parents=True, exist_ok=True)
    _save_dir(clip, folder / "clip")
    _save_tensors(head.state_dict(), folder / "head.safetensors", {"format": "laion-aesthetic-head"})
    (out / "aesthetic_report.json").write_text(json.dumps({"labels": len(x), "val_corr_with_gold": corr}, indent=1))
    _log(f"aesthetic head: {len(x)} noisy labels; held-out correlation with gold {corr:.3f}")


def _pref_utility(pool: str, x, matched):
    """The hidden preferences of the two toy 'human' rater pools."""
    from bench.toy.gold import image_stats

    st = image_stats(x)
    fg = ((x - x[:, :, :1, :1]).abs().sum(dim=1) > 0.25).float().mean(dim=(1, 2))  # object area fraction
    if pool == "pickscore":  # big, bright objects
        return 3.0 * matched + 6.0 * fg + 1.5 * st["brightness"]
    return 3.0 * matched + 3.0 * (1 - st["saturation"]) + 2.0 * st["contrast"] / 0.1  # hpsv2: calm, clear


def step_prefs(out: Path, cfg: dict, seed: int) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel

    from bench.toy.models import toy_tokenizer
    from bench.toy.render import draw, sample_scene

    tok = toy_tokenizer()
    report = {}
    for k, pool in enumerate(("pickscore", "hpsv2")):
        rng = np.random.default_rng(seed + 20 + k)
        clip = CLIPModel.from_pretrained(str(out / WORK / "clip")).train()
        opt = torch.optim.AdamW(clip.parameters(), lr=5e-5, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed + k)
        bs = max(cfg["batch"] // 2, 8)
        with _bar(cfg["pref_steps"], pool) as bar:
            for step in range(cfg["pref_steps"]):
                a_sc = [sample_scene(rng, kind="single") for _ in range(bs)]
                b_sc = [sample_scene(rng, kind="single", color=s.objects[0].color, shape=s.objects[0].shape)
                        for s in a_sc]
                mismatch = rng.random(bs) < 0.25  # some pairs hold an off-prompt image
                b_sc = [sample_scene(rng, kind="single") if m else s for s, m in zip(b_sc, mismatch)]
                xa = torch.from_numpy(np.stack([draw(s) for s in a_sc])).permute(0, 3, 1, 2).float() / 255
                xb = torch.from_numpy(np.stack([draw(s) for s in b_sc])).permute(0, 3, 1, 2).float() / 255
                mb = torch.tensor([float(sb.caption == sa.caption) for sa, sb in zip(a_sc, b_sc)])
                ua, ub = _pref_utility(pool, xa, torch.ones(bs)), _pref_utility(pool, xb, mb)
                pref_a = (torch.rand(bs, generator=g) < torch.sigmoid(2.0 * (ua - ub))).float()
                ids = _tokens(tok, [s.caption for s in a_sc])
                out_a = clip(input_ids=ids, pixel_values=_clip_pixels(xa))
                out_b = clip(input_ids=ids, pixel_values=_clip_pixels(xb))
                sa, sb = out_a.logits_per_image.diagonal(), out_b.logits_per_image.diagonal()
                loss = F.binary_cross_entropy_with_logits(sa - sb, pref_a)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        _save_dir(clip.eval(), out / pool)
        tok.save_pretrained(str(out / pool))
        report[pool] = {"steps": cfg["pref_steps"]}
    (out / "prefs_report.json").write_text(json.dumps(report, indent=1))


def step_report(out: Path, cfg: dict, seed: int) -> None:
    """Measure the suite (generator fidelity, reward agreement) and write the model cards."""
    from bench.toy.report import measure_and_write_cards

    measure_and_write_cards(out, per_prompt=cfg["eval_per_prompt"], seed=seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.toy.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="tiny step counts (tests); the models are useless")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--force", action="store_true", help="redo steps whose output already exists")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--unet", default="base", help="the denoiser's configuration (bench/toy/models.py UNET_CONFIGS): "
                                                   + ", ".join(UNET_CONFIGS))
    args = ap.parse_args(argv)
    if args.unet not in UNET_CONFIGS:
        print(f"error: unknown --unet {args.unet!r}; choose from {', '.join(UNET_CONFIGS)}", file=sys.stderr)
        return 2
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        print(f"error: unknown step(s) {bad}; steps are {', '.join(STEPS)}", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.train.backbone import quiet_loading

    quiet_loading()
    cfg = dict(QUICK if args.quick else FULL, unet=args.unet)
    args.out.mkdir(parents=True, exist_ok=True)
    marker = {"vae": f"{WORK}/vae", "clip": f"{WORK}/clip", "unet": "pipeline", "gold": "gold-fidelity", "aesthetic": "aesthetic",
              "prefs": "hpsv2", "report": "suite.json"}
    for s in STEPS:
        if s not in steps:
            continue
        if (args.out / marker[s]).exists() and not args.force:
            _log(f"{s}: {args.out / marker[s]} exists, skipped (--force to redo)")
            continue
        t0 = time.time()
        globals()[f"step_{s}"](args.out, cfg, args.seed)
        _log(f"{s}: done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
