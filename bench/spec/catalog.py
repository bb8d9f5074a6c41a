"""Every registered method, reward, prompt set and backbone, as pure data.

This module must stay import-light: `python -m bench list` and name validation
read it without importing torch. Implementations are named as "module:attr"
strings and imported only when a run needs them.
"""

from __future__ import annotations

from pathlib import Path

from bench.spec.plan import ComparisonPlan
from bench.spec.registry import Registry
from bench.spec.values import FULL_TO_LORA_LR, PLANTED_WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[2]

methods = Registry("method")
rewards = Registry("reward")
prompt_sets = Registry("prompt set")
backbones = Registry("backbone")
studies = Registry("study")

# --------------------------------------------------------------------------- methods
# `hparams` are the method's source-scale values (its paper or reference code, at SD
# scale); `--set key=value` overrides them at that scale. `source` states the
# source's epoch: samples, steps T, optimizer updates and the update's shape. The
# scale rule (bench/spec/scale.py) maps both to a run's scale, the same way for every
# method; `bench list methods --effective` prints the result.

_SD = dict(samples_per_epoch=256, num_steps=50)  # the DDPO/TDPO reference epoch: 8 GPUs x 32 samples, T=50

_DDPO_COMMON = dict(
    clip_range=1e-4,          # PPO ratio clip (Table 1), on the mean-over-dims log-prob
    adv_clip_max=5.0,         # advantages clamped to +-5 (DDPO reference)
    max_grad_norm=1.0,
    weight_decay=1e-4,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_eps=1e-8,
    per_prompt_stat_tracking=True,
    stat_buffer_size=32,      # aesthetic config of the DDPO reference
    stat_min_count=16,
    num_inner_epochs=1,
)

methods.register(
    "ddpo-2", "methods.ddpo:DDPO",
    "DDPO (PPO on the denoising MDP), 2 gradient updates per epoch, lr 3e-4 (TDPO paper Table 1)",
    shape="methods.shapes:PolicyGradient", log_ratio_bounds=("clip_range",),
    # accumulation 16 x T: each update is 128 samples x all 50 steps
    source=dict(_SD, updates_per_epoch=2, update_steps=50),
    hparams=dict(_DDPO_COMMON, lr=3e-4),
)
methods.register(
    "ddpo-100", "methods.ddpo:DDPO",
    "DDPO with 2T gradient updates per epoch (100 at T=50), lr 1e-4 (TDPO paper Table 1)",
    shape="methods.shapes:PolicyGradient", log_ratio_bounds=("clip_range",),
    # train batch 8, accumulation 16, minibatch outer: each update is 8 samples x 16 consecutive steps
    source=dict(_SD, updates_per_epoch=100, update_steps=16),
    hparams=dict(_DDPO_COMMON, lr=1e-4),
)

methods.register(
    "alignprop", "methods.alignprop:AlignProp",
    "AlignProp: backprop of a differentiable reward through the last K ~ U{1..T} sampling steps (LoRA, checkpointing)",
    needs_differentiable_reward=True, shape="methods.shapes:AlignProp",
    source=dict(_SD, updates_per_epoch=2),  # 256 samples per epoch, 128 per update
    hparams=dict(lr=1e-3, weight_decay=1e-4, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                 loss_coeff=0.01, loss_form="abs", reward_target="auto", k_min=1, k_group=8,
                 gradient_checkpointing=True),
)

_TDPO_COMMON = dict(
    lr=1e-4, critic_lr=1e-4,  # two AdamW optimizers (TDPO reference)
    weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
    max_grad_norm=1.0,        # clipped separately for LoRA and critic
    clip_range=1e-4,          # PPO ratio clip; no advantage clipping
    clip_range_critic=0.2,    # value clipping around the sampling-time residual
    cf_coef=1.0,              # critic loss weight
    num_inner_epochs=1,
    gamma=1.0,                # returns: every step gets the normalised final reward
    temporal_reward_norm=True,
    per_prompt_stat_tracking=True, stat_buffer_size=32, stat_min_count=16,
    critic_encoder="auto",    # the training reward's own encoder; a reward name swaps it (Appendix E)
    encode_batch_size=64,     # decoded states per encoder call
    activation="relu",        # the nonlinearity of the activation score (the critic itself has none)
    dormant_threshold=0.0,
    critic_reset="none",      # none | active (TDPO-R) | dormant | all
    policy_reset="none",      # none | dormant | active (LoRA neurons)
    policy_dormant_threshold=0.0,
    reset_every="auto",       # epochs between resets; auto: the reference's 1,000 critic updates between resets
    dormancy_batch=8,         # samples whose activations classify neurons
    kl_penalty_coef=0.0, kl_penalty="clip", init_kl_coef=0.2, kl_target=0.0, kl_horizon=2000,
)
# train batch 8, accumulation 16, timestep outer: each update is 128 samples x 1 step; 100 epochs, resets every 10
_TDPO_SOURCE = dict(_SD, updates_per_epoch=100, update_steps=1, epochs=100, reset_every=10)


def _tdpo(name: str, help: str, meta: dict | None = None, **overrides) -> None:
    methods.register(name, "methods.tdpo:TDPO", help, family="tdpo", shape="methods.shapes:TDPO", log_ratio_bounds=("clip_range",),
                     source=_TDPO_SOURCE, hparams=dict(_TDPO_COMMON, **overrides), **(meta or {}))


_tdpo("tdpo", "TDPO: per-timestep PPO on temporal rewards from a temporal critic, 2T updates per epoch")
_tdpo("tdpo-r", "TDPO-R: TDPO plus a periodic reset of the critic's ACTIVE neurons", critic_reset="active")
_tdpo("tdpo-kl", "TDPO with a per-step KL penalty to the pretrained policy in the returns (coefficient by the "
      "scale rule)", kl_penalty_coef="auto")
_tdpo("tdpo-reset-all", "TDPO with a periodic reset of ALL critic neurons", critic_reset="all")
_tdpo("tdpo-reset-dormant", "TDPO with a periodic reset of the critic's DORMANT neurons", critic_reset="dormant")
_tdpo("tdpo-r-leaky", "TDPO-R with activation scores measured through LeakyReLU, threshold 0.1 (paper Appendix B)",
      critic_reset="active", activation="leaky_relu", dormant_threshold=0.1)
_tdpo("tdpo-policy-reset-dormant", "TDPO with a periodic reset of the policy's dormant LoRA neurons (threshold 0.1)",
      policy_reset="dormant", policy_dormant_threshold=0.1)
_tdpo("tdpo-policy-reset-active", "TDPO with a periodic reset of the policy's active LoRA neurons",
      meta=dict(expected_not_to_learn="TDPO paper Sec. 4.2 and Appendix B: resetting the policy's active neurons "
                                      "causes catastrophic forgetting and heavily hinders learning"),
      policy_reset="active")

methods.register(
    "grpo", "methods.grpo:GRPO",
    "GRPO as DanceGRPO runs SD v1.4: 16 images per prompt from one shared initial noise, group-normalised "
    "advantages, PPO clip 1e-4 on every step but the last, 2 updates per epoch, lr 1e-5",
    shape="methods.shapes:PolicyGradient", log_ratio_bounds=("clip_range",), companion="DanceGRPO (Xue et al. 2025), SD v1.4 recipe",
    # 8 GPUs x 4 prompts x 16 images = 512 per epoch; batch 4, accumulation 8 x 49 micro-steps: 2 updates of
    # 256 samples x the 49 trained steps (the last DDIM step is never trained)
    source=dict(samples_per_epoch=512, num_steps=50, updates_per_epoch=2, update_steps=49, trains_last_step=False,
                trains="full-unet"),  # use_lora=False: its lr 1e-5 is a full-UNet rate (scale rule 11)
    hparams=dict(lr=1e-5, full_to_lora_lr=FULL_TO_LORA_LR, weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                 clip_range=1e-4, adv_clip_max=5.0, images_per_prompt=16, num_inner_epochs=1),
)
methods.register(
    "prdp", "methods.prdp:PRDP",
    "PRDP: regress same-prompt reward differences / beta onto trajectory log-ratio differences, per-step proximal clip",
    shape="methods.shapes:PRDP", log_ratio_bounds=("clip_range",), log_ratio_coefficients=("beta",),
    companion="PRDP paper (Deng et al., CVPR 2024)",
    # small-scale setting (PRDP Table 4): N=32 prompts x B=16 images, K=10 updates per epoch
    source=dict(samples_per_epoch=512, num_steps=50, updates_per_epoch=10),
    hparams=dict(lr=3e-4, weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                 beta=3e-5, clip_range=1e-6, images_per_prompt=16,
                 update_data="whole"),  # whole: K steps on all the epoch's pairs (the paper); groups: an ablation
)
methods.register(
    "dense-dpo", "methods.dense_dpo:DenseDPO",
    "temporally discounted dense-reward DPO: Bradley-Terry on gamma^k-sampled, clamped per-step log-ratios",
    shape="methods.shapes:DenseDPO", log_ratio_bounds=("delta",), log_ratio_coefficients=("beta_tilde",), per_step_discounts=("gamma",),
    companion="dense-reward paper (Yang, Chen & Zhou, ICML 2024)",
    # multi-prompt mode of the reference: 2,000 prompts x 12 rollouts per collection, 4,000 updates of 32 pairs
    source=dict(samples_per_epoch=24_000, num_steps=50, updates_per_epoch=4000, pairs_per_step=32),
    hparams=dict(lr=2e-5, weight_decay=1.5e-3, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=0.05,
                 gamma=0.9, beta_tilde=12.5, delta=5e-4, steps_per_pair=1,
                 rollouts_per_prompt=12, kept_per_prompt=5),
)
methods.register(
    "diffusion-nft", "methods.nft:DiffusionNFT",
    "DiffusionNFT ported to epsilon prediction: implicit positive/negative predictions mixed by r in x0 space on "
    "freshly noised final latents, adaptive weights, a soft-updated old policy that samples; no log-probs",
    shape="methods.shapes:DiffusionNFT", companion="DiffusionNFT (Zheng et al. 2025), flow-matching recipe ported to epsilon prediction",
    # scripts/train_nft_sd3.py: 48 prompts x 24 images = 1,152 per epoch, ONE optimizer step per epoch, a 10-step
    # sampler whose grid gives the loss's noise levels (int(0.99 x 10) = 9 per sample)
    source=dict(samples_per_epoch=1152, num_steps=10, updates_per_epoch=1, level_fraction=0.99),
    hparams=dict(lr=3e-4, weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                 nft_beta=1.0, loss_weight=5.0, ref_coef=1e-4, adv_clip_max=5.0, std_eps=1e-4, images_per_prompt=24,
                 old_decay_per_update=1e-3, old_decay_max=0.5, rollout_eta=0.0,
                 # guidance 1 (the recipe's CFG-free setting), decided on jpeg-compressibility by the rule declared
                 # in the README before its runs (e03a27a): g = 1 beat g = 5 by 0.0034 +- 0.0033 (3 seeds, paired)
                 rollout_guidance=1.0, train_guidance=1.0),
)

# --------------------------------------------------------------------------- rewards
rewards.register(
    "jpeg-compressibility", "metrics.jpeg:JpegCompressibility",
    "minus the JPEG size in kB (quality 95), DDPO's compressibility reward; no weights",
    higher_is_better=True, differentiable=False, scale="-kB: about -1.0 for a 32x32 toy image, -5 to -30 at 512 px",
)
rewards.register(
    "jpeg-incompressibility", "metrics.jpeg:JpegIncompressibility",
    "the JPEG size in kB (quality 95), DDPO's incompressibility reward; no weights",
    higher_is_better=True, differentiable=False, scale="kB, the mirror of jpeg-compressibility",
    in_eval_matrix=False,     # minus jpeg-compressibility: scoring both would only mirror a column
)
rewards.register(
    "aesthetic", "metrics.aesthetic:load_aesthetic",
    "LAION aesthetic predictor: CLIP image features, L2-normalised, into the LAION MLP head",
    higher_is_better=True, differentiable=True, suites=("sd", "toy", "tiny-random"),
    scale="LAION 1-10 scale: SD v1.4 about 5.5, toy about 7", max_score=10.0,  # AlignProp's |r - 10|
    sd_weights="bench.spec.weights:aesthetic_files", toy_assets="aesthetic",
)
rewards.register(
    "pickscore", "metrics.clip_score:load_pickscore",
    "PickScore-style CLIP text-image preference score (toy: a tiny CLIP tuned on one rater pool)",
    higher_is_better=True, differentiable=True, suites=("sd", "toy"),
    scale="official: logit_scale.exp() x cosine, about 20-22 for SD images (papers often report /100)",
    max_score=100.0,  # logit_scale.exp() x the largest cosine
    sd_weights="bench.spec.weights:pickscore_files", toy_assets="pickscore",
)
rewards.register(
    "hpsv2", "metrics.clip_score:load_hpsv2",
    "HPSv2 v2.0: open_clip ViT-H-14 weights loaded natively into transformers (toy: a tiny CLIP tuned on "
    "another rater pool)",
    higher_is_better=True, differentiable=True, suites=("sd", "toy"),
    scale="official: cosine of normalised image and text features, about 0.25-0.30 for SD images", max_score=1.0,
    sd_weights="bench.spec.weights:hpsv2_files", toy_assets="hpsv2",
)
rewards.register(
    "hpsv2.1", "metrics.clip_score:load_hpsv2_1",
    "HPSv2 v2.1 (HPS_v2.1_compressed.pt), loaded natively like hpsv2",
    higher_is_better=True, differentiable=True, suites=("sd",), in_eval_matrix=False,
    scale="official: cosine, about 0.25-0.35 for SD images", max_score=1.0,
    sd_weights="bench.spec.weights:hpsv2_1_files",
)
rewards.register(
    "imagereward", "metrics.imagereward:load_imagereward",
    "ImageReward v1.0: BLIP ViT-L + BERT cross-attention + MLP, loaded natively into transformers 5",
    higher_is_better=True, differentiable=True, suites=("sd",),
    scale="official: standardised, (r - 0.167) / 1.033; about -0.5 to 1 for SD images (the TDPO reference "
          "logs the raw r)",
    sd_weights="bench.spec.weights:imagereward_files",
)
rewards.register(
    "gold-aesthetic", "metrics.gold:GoldAesthetic",
    "toy ground truth: aesthetics from pixels, peaked in saturation (evaluation only)",
    higher_is_better=True, differentiable=False, suites=("toy",), eval_only=True,
    scale="0-10, peaks at moderate saturation",
)
rewards.register(
    "gold-fidelity", "metrics.gold:GoldFidelity",
    "toy ground truth: probability the image shows what the prompt says (evaluation only)",
    higher_is_better=True, differentiable=False, suites=("toy",), eval_only=True, scale="probability, 0-1",
    toy_assets="gold-fidelity",
)

# The planted-effect controls (issue 45, bench/report/calibration.py): aesthetic + w x gold aesthetics, for a few
# declared weights. `control` keeps them out of the evaluation matrix and every default grid; a run names one
# with --reward. `params` are the loader's arguments.
for _w in PLANTED_WEIGHTS:
    rewards.register(
        f"aesthetic+{_w:g}gold", "metrics.planted:PlantedBlend",
        f"CONTROL: the aesthetic proxy plus {_w:g} x gold aesthetics (a planted effect of known direction; toy only)",
        higher_is_better=True, differentiable=False, suites=("toy",), in_eval_matrix=False, control=True,
        params=dict(proxy="aesthetic", gold="gold-aesthetic", weight=_w), scale="aesthetic + w x gold, about 7 (1 + w)",
        toy_assets="aesthetic",
    )

# --------------------------------------------------------------------------- prompt sets
prompt_sets.register(
    "simple-animals", "", "the 45 DDPO animals, bare words (training / seen prompts)",
    path="prompts/simple_animals.txt", role="seen",
)
prompt_sets.register(
    "unseen-animals", "", "8 held-out animals from the TDPO paper, Appendix C",
    path="prompts/unseen_animals.txt", role="unseen",
)
prompt_sets.register(
    "compositional", "", "4 DPOK prompts: color, count, composition, location (TDPO paper, Appendix C)",
    path="prompts/compositional.txt", role="compositional",
)

prompt_sets.register(
    "toy-seen", "", "toy suite: 48 'a <color> <shape>' prompts (training / seen prompts)",
    path="prompts/toy_seen.txt", role="seen", suite="toy",
)
prompt_sets.register(
    "toy-unseen", "", "toy suite: 8 held-out color-shape pairs the base model knows but training never sees",
    path="prompts/toy_unseen.txt", role="unseen", suite="toy",
)
prompt_sets.register(
    "toy-compositional", "", "toy suite: one prompt each for color, count, composition, location",
    path="prompts/toy_compositional.txt", role="compositional", suite="toy",
)

# --------------------------------------------------------------------------- backbones
# `defaults` is the scale of a run on this backbone: what a run uses unless the
# command line says otherwise. `latent_dims` (channels x height x width of the UNet's
# latents) and `update_multiplier` (m of the scale rule) feed bench/spec/scale.py;
# `train_batch_size` is the most sample-steps one UNet call takes (a memory bound:
# the shape of an update is the scale rule's).
backbones.register(
    "toy", "bench.spec.toy_assets:pipeline_dir",
    "the embedded toy suite: a tiny StableDiffusionPipeline trained on rendered 32x32 scenes (committed weights)",
    suite="toy",
    defaults=dict(num_steps=10, guidance_scale=5.0, eta=1.0, budget=1280, samples_per_epoch=32,
                  train_batch_size=256, sample_batch_size=32, train_prompts="toy-seen",
                  latent_dims=4 * 8 * 8, update_multiplier=16.0, eval_per_prompt=2, num_checkpoints=8,
                  # the 'sde' rule's candidate (docs/decisions/scale-rule.md): updates 4x larger than the count
                  # rule's, at 16x the sources' gradient-noise temperature
                  scale_rule="count", sde_update_multiplier=4.0, sde_temperature=16.0),
)
backbones.register(
    "tiny-random", "bench.tiny:tiny_random_pipeline_dir",
    "PLACEHOLDER: a tiny StableDiffusionPipeline with RANDOM weights (32x32 images), built offline",
    suite="tiny-random",
    defaults=dict(num_steps=20, guidance_scale=5.0, eta=1.0, budget=320, samples_per_epoch=32,
                  train_batch_size=64, sample_batch_size=32, train_prompts="simple-animals",
                  latent_dims=4 * 8 * 8, update_multiplier=8.0, sde_update_multiplier=2.0, sde_temperature=16.0),
)
backbones.register(
    "sd-v1-4", "", "Stable Diffusion v1.4 from a local folder or the local Hugging Face cache",
    suite="sd", hf_id="CompVis/stable-diffusion-v1-4",
    defaults=dict(num_steps=50, guidance_scale=5.0, eta=1.0, budget=25600, samples_per_epoch=256,
                  train_batch_size=8, sample_batch_size=8, train_prompts="simple-animals",
                  latent_dims=4 * 64 * 64, update_multiplier=1.0, eval_per_prompt=2),
)

backbones.register(
    "sd-v1-4-random", "bench.sd_random:pipeline_dir",
    "Stable Diffusion v1.4's architecture with RANDOM weights (512 px), built from config: SD-scale speed checks",
    suite="sd", defaults=dict(backbones.get("sd-v1-4").meta["defaults"]),
)
backbones.register(
    "sd-v1-4-random-128", "bench.sd_random:pipeline_dir_128",
    "Stable Diffusion v1.4's architecture with RANDOM weights at 128 px (16x16x4 latents): SD-scale checks on a CPU",
    suite="sd", defaults=dict(backbones.get("sd-v1-4").meta["defaults"], latent_dims=4 * 16 * 16),
)

DEFAULT_BACKBONE = "toy"
SD_DEFAULTS = backbones.get("sd-v1-4").meta["defaults"]

# --------------------------------------------------------------------------- comparison plans
V4_LEVEL = 8.80
"""Study v4's fixed level: aesthetic on the seen prompts, set from v3's data without reading gold (the 10th
percentile of the best proxy checkpoint mean of v3's 21 DDPO-family runs, 8.815, rounded down to 0.05;
docs/decisions/probe-aesthetic.md)."""
V4_SEEDS = 12
V4_POWER_RULE = (
    "the fewest seeds n with t_0.975(n-1) sd80 / sqrt(n) <= 0.15 gold points for both primaries at the level, sd80 "
    "the pilot's paired sd's one-sided 80% upper confidence limit, capped at 12 (about 39 min per seed on 2 cores). "
    "Pilot (docs/decisions/probe-aesthetic.md, final regime, seeds 0-4): TDPO-R - TDPO sd 0.471, sd80 0.734 (95 "
    "seeds); TDPO-R - DDPO-100 (v3's DDPO-100) sd 0.178, sd80 0.307 (19). N = 12, the cap: detectable with 80% "
    "power 0.42 (0.65 at sd80) and 0.16 (0.27) at the level; on the co-primary 0.12 (0.18) and 0.06 (0.10)")
# Declared before the runs they judge (bench/spec/plan.py); a changed rule is a new version.
MAIN_PLAN_V1 = ComparisonPlan(
    name="main", version=1,
    declared="2026-11-22, AFTER the 1,280-query main run it judges was seen (the level rule was changed then: "
             "PRDP, moving +0.04, pinned the level at the pretrained model); it judged the main runs up to fe47a8d",
    level_setters="paper", primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
    primary_prompts="seen")
MAIN_PLAN_V2 = ComparisonPlan(
    name="main", version=2,
    declared="2026-12-02, before any run of this version: the scale rule gives every method exactly m x its "
             "source's updates per reward query (seeded schedules of update sizes, fractions carried across "
             "epochs; no floor binds on the toy) and PRDP its paper's K steps per epoch with beta converted like "
             "the clip ranges, so every method that improves its training reward sets the level ('all'), PRDP "
             "and dense DPO included",
    level_setters="all", primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
    primary_prompts="seen")
MAIN_PLAN = ComparisonPlan(
    name="main", version=3,
    declared="2026-12-07, before any run of this version: the level is the common start plus 0.75 of the median "
             "best gain of the level setters, so a method that barely learns fails to reach it instead of pinning "
             "it at the start (version 2: GRPO's +0.009 set it); f = 0.75 chosen on jpeg-compressibility by the "
             "rule of docs/decisions/main-level-rule.md (0.25, 0.5 and 0.75 measured; 9 of 13 setters reach 0.75)",
    level_setters="all", level_fraction=0.75, primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")),
    primary_score="gold-aesthetic", primary_prompts="seen")
OVEROPT_PLAN_V2 = ComparisonPlan(
    name="overoptimization", version=2,
    declared="2026-12-02, before any run of this version (version 1: 3 seeds, Welch CIs, no primary comparison, "
             "run 2026-11-22); never run: superseded by version 3 when the scale rule changed",
    level_setters="paper", primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
    primary_prompts="seen", seeds=7,
    power_rule="the fewest seeds n with t_0.975(n-1) sd / sqrt(n) <= 0.15 gold points on each primary paired "
               "difference, capped at what fits in about 3 hours on 2 cores")
OVEROPT_PLAN_V3 = ComparisonPlan(
    name="overoptimization", version=3,
    declared="2026-12-02, before any run of this version; it differs from version 2 only in the runs it judges: "
             "the scale rule now gives DDPO-100 and the TDPO family exactly 16x their sources' updates per query "
             "(version 2's runs would have had 8.56x and 12.8x)",
    level_setters="paper", primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
    primary_prompts="seen", seeds=7,
    power_rule="the fewest seeds n with t_0.975(n-1) sd / sqrt(n) <= 0.15 gold points on each primary paired "
               "difference, capped at what fits in about 3 hours on 2 cores (4 methods x N seeds over 2 workers). "
               "sd from version 1's Welch CIs (3 vs 3 seeds, read at 4 degrees of freedom, the conservative end): "
               "TDPO-R - TDPO 0.143 (n = 7, half-width 0.133 at 7), TDPO-R - DDPO-100 0.418 (n = 33; at the cap "
               "of 7 the expected half-width is 0.39, so that comparison stays underpowered and the report gives "
               "its minimum detectable difference)")

OVEROPT_PLAN = ComparisonPlan(
    name="overoptimization", version=4,
    declared="2026-12-07, before any run of this version (docs/decisions/study-v4.md): a fixed level, runs "
             "stopped at the first mark at or past it, AlignProp in a separate arm, a co-primary over a proxy interval, Holm "
             "across the primaries, seeds by a power rule on the final regime's pilot with its sd's upper limit",
    level_setters="paper", primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
    primary_prompts="seen", seeds=V4_SEEDS, fixed_level=("aesthetic", V4_LEVEL), auc_interval=(7.0, V4_LEVEL),
    familywise=True, critic_ev_threshold=0.1,
    power_rule=V4_POWER_RULE)

# --------------------------------------------------------------------------- studies
# `bench run --study NAME` runs a preset grid; explicit flags override its settings.
studies.register(
    "overoptimization", "",
    f"the TDPO paper's question on the toy (plan v4): DDPO-100, TDPO and TDPO-R, {V4_SEEDS} seeds, each run stopped "
    f"at the first checkpoint at or past aesthetic {V4_LEVEL} on the seen prompts (cap 1,920 queries); the report compares TDPO-R "
    f"with TDPO and DDPO-100 at that fixed level, Holm over the primaries, with its A/A and planted controls",
    methods=("ddpo-100", "tdpo", "tdpo-r"), seeds=tuple(range(V4_SEEDS)), reward="aesthetic", backbone="toy",
    plan=OVEROPT_PLAN, scale_rule="count", reset_rule="updates", stop_level=V4_LEVEL, stop_margin=0,
    budget=1920, num_checkpoints=6, eval_per_prompt=2,
)
studies.register(
    "overoptimization-alignprop", "",
    "study v4's exploratory arm: AlignProp alone, 3 seeds, the same stop rule and budget (in no primary comparison)",
    methods=("alignprop",), seeds=(0, 1, 2), reward="aesthetic", backbone="toy", plan=OVEROPT_PLAN,
    scale_rule="count", reset_rule="updates", stop_level=V4_LEVEL, stop_margin=0, budget=1920, num_checkpoints=6,
    eval_per_prompt=2,
)
studies.register(
    "overoptimization-v3", "",
    "the TDPO paper's question on the toy as study v3 ran it (2026-12-05): DDPO-100, TDPO, TDPO-R and AlignProp, 7 "
    "seeds, to 1,920 queries, matched level over the runs",
    methods=("ddpo-100", "tdpo", "tdpo-r", "alignprop"), seeds=tuple(range(OVEROPT_PLAN_V3.seeds)), reward="aesthetic",
    backbone="toy", plan=OVEROPT_PLAN_V3, scale_rule="count", reset_rule="share",  # version 3's rules
    # 1920, by one rule: the smallest multiple of the default checkpoint spacing (320 queries) at which the probe
    # (DDPO-100, seed 0, run to 2560) shows gold aesthetics past its peak AND below its pretrained value by more
    # than one paired standard error: 6.98 -> 7.24 at 960 -> 6.95 at 1600 (-0.04 +- 0.23, not yet) -> 6.63 at
    # 1920 (-0.35 +- 0.25); see the README
    budget=1920, num_checkpoints=6, eval_per_prompt=2,
)

