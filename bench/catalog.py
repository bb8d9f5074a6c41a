"""Every registered method, reward, prompt set and backbone, as pure data.

This module must stay import-light: `python -m bench list` and name validation
read it without importing torch. Implementations are named as "module:attr"
strings and imported only when a run needs them.
"""

from __future__ import annotations

from pathlib import Path

from bench.registry import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent

methods = Registry("method")
rewards = Registry("reward")
prompt_sets = Registry("prompt set")
backbones = Registry("backbone")

# --------------------------------------------------------------------------- methods
# Hyperparameters are the method's defaults; `--set key=value` overrides them.
# A value written "kT" means k times the backbone's number of denoising steps T,
# so presets scale with T (Table 1 of the TDPO paper is stated at T=50).

_DDPO_COMMON = dict(
    clip_range=1e-4,          # PPO ratio clip (Table 1)
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
    hparams=dict(_DDPO_COMMON, lr=3e-4, updates_per_epoch="2"),
)
methods.register(
    "ddpo-100", "methods.ddpo:DDPO",
    "DDPO with 2T gradient updates per epoch (100 at T=50), lr 1e-4 (TDPO paper Table 1)",
    hparams=dict(_DDPO_COMMON, lr=1e-4, updates_per_epoch="2T"),
)

methods.register(
    "alignprop", "methods.alignprop:AlignProp",
    "AlignProp: backprop of a differentiable reward through the last K ~ U{1..T} sampling steps (LoRA, checkpointing)",
    needs_differentiable_reward=True,
    hparams=dict(lr=1e-3, weight_decay=1e-4, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                 loss_coeff=0.01, reward_target=10.0, updates_per_epoch=2, k_min=1, k_max="1T",
                 gradient_checkpointing=True),
)

_TDPO_COMMON = dict(
    lr=1e-4, critic_lr=1e-4,  # two AdamW optimizers (TDPO reference)
    weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
    max_grad_norm=1.0,        # clipped separately for LoRA and critic
    clip_range=1e-4,          # PPO ratio clip; no advantage clipping
    clip_range_critic=0.2,    # value clipping around the sampling-time residual
    cf_coef=1.0,              # critic loss weight
    updates_per_epoch="2T",   # 100 optimizer steps per epoch at T=50
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
    reset_every="auto",       # epochs between resets; auto = the reference's 10 of 100, scaled to the run
    dormancy_batch=8,         # samples whose activations classify neurons
    kl_penalty_coef=0.0, kl_penalty="clip", init_kl_coef=0.2, kl_target=0.0, kl_horizon=2000,
)


def _tdpo(name: str, help: str, **overrides) -> None:
    methods.register(name, "methods.tdpo:TDPO", help, family="tdpo", hparams=dict(_TDPO_COMMON, **overrides))


_tdpo("tdpo", "TDPO: per-timestep PPO on temporal rewards from a temporal critic, 2T updates per epoch")
_tdpo("tdpo-r", "TDPO-R: TDPO plus a periodic reset of the critic's ACTIVE neurons", critic_reset="active")
_tdpo("tdpo-kl", "TDPO with a per-step KL penalty to the pretrained policy in the returns", kl_penalty_coef=1.0)
_tdpo("tdpo-reset-all", "TDPO with a periodic reset of ALL critic neurons", critic_reset="all")
_tdpo("tdpo-reset-dormant", "TDPO with a periodic reset of the critic's DORMANT neurons", critic_reset="dormant")
_tdpo("tdpo-r-leaky", "TDPO-R with activation scores measured through LeakyReLU (paper Appendix B)",
      critic_reset="active", activation="leaky_relu")
_tdpo("tdpo-policy-reset-dormant", "TDPO with a periodic reset of the policy's dormant LoRA neurons (threshold 0.1)",
      policy_reset="dormant", policy_dormant_threshold=0.1)
_tdpo("tdpo-policy-reset-active", "TDPO with a periodic reset of the policy's active LoRA neurons",
      policy_reset="active")

methods.register(
    "prdp", "methods.prdp:PRDP",
    "PRDP: regress same-prompt reward differences / beta onto trajectory log-ratio differences, per-step proximal clip",
    hparams=dict(lr=3e-4, weight_decay=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                 beta=3e-5, clip_range=1e-6,   # small-scale setting (PRDP Table 4)
                 images_per_prompt=8, updates_per_epoch=10),
)
methods.register(
    "dense-dpo", "methods.dense_dpo:DenseDPO",
    "temporally discounted dense-reward DPO: Bradley-Terry on gamma^k-sampled, clamped per-step log-ratios",
    hparams=dict(lr=2e-5, weight_decay=1.5e-3, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=0.05,
                 gamma=0.9,            # stated at T=50, rescaled to gamma^(50/T)
                 beta_tilde=12.5, delta=5e-4, steps_per_pair=1,  # multi-prompt mode of the reference
                 rollouts_per_prompt=8, kept_per_prompt=5, pairs_per_step=8, updates_per_prompt=2),
)

# --------------------------------------------------------------------------- rewards
rewards.register(
    "jpeg-compressibility", "metrics.jpeg:JpegCompressibility",
    "minus the JPEG size in kB (quality 95), DDPO's compressibility reward; no weights",
    higher_is_better=True, differentiable=False,
)
rewards.register(
    "jpeg-incompressibility", "metrics.jpeg:JpegIncompressibility",
    "the JPEG size in kB (quality 95), DDPO's incompressibility reward; no weights",
    higher_is_better=True, differentiable=False,
    in_eval_matrix=False,     # minus jpeg-compressibility: scoring both would only mirror a column
)
rewards.register(
    "aesthetic", "metrics.aesthetic:load_aesthetic",
    "LAION aesthetic predictor: CLIP image features, L2-normalised, into the LAION MLP head",
    higher_is_better=True, differentiable=True, suites=("sd", "toy", "tiny-random"),
)
rewards.register(
    "pickscore", "metrics.clip_score:load_pickscore",
    "PickScore-style CLIP text-image preference score (toy: a tiny CLIP tuned on one rater pool)",
    higher_is_better=True, differentiable=True, suites=("sd", "toy"),
)
rewards.register(
    "hpsv2", "metrics.clip_score:load_hpsv2",
    "HPSv2-style CLIP text-image preference score (toy: a tiny CLIP tuned on another rater pool)",
    higher_is_better=True, differentiable=True, suites=("toy",),
)
rewards.register(
    "gold-aesthetic", "metrics.gold:GoldAesthetic",
    "toy ground truth: aesthetics from pixels, peaked in saturation (evaluation only)",
    higher_is_better=True, differentiable=False, suites=("toy",), eval_only=True,
)
rewards.register(
    "gold-fidelity", "metrics.gold:GoldFidelity",
    "toy ground truth: probability the image shows what the prompt says (evaluation only)",
    higher_is_better=True, differentiable=False, suites=("toy",), eval_only=True,
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
# command line says otherwise.
backbones.register(
    "toy", "bench.toy.suite:pipeline_dir",
    "the embedded toy suite: a tiny StableDiffusionPipeline trained on rendered 32x32 scenes (committed weights)",
    suite="toy",
    defaults=dict(num_steps=20, guidance_scale=5.0, eta=1.0, budget=640, samples_per_epoch=32,
                  train_batch_size=16, sample_batch_size=32, train_prompts="toy-seen"),
)
backbones.register(
    "tiny-random", "bench.tiny:tiny_random_pipeline_dir",
    "PLACEHOLDER: a tiny StableDiffusionPipeline with RANDOM weights (32x32 images), built offline",
    suite="tiny-random",
    defaults=dict(num_steps=20, guidance_scale=5.0, eta=1.0, budget=320, samples_per_epoch=32,
                  train_batch_size=16, sample_batch_size=32, train_prompts="simple-animals"),
)
backbones.register(
    "sd-v1-4", "", "Stable Diffusion v1.4 from a local folder or the local Hugging Face cache",
    suite="sd", hf_id="CompVis/stable-diffusion-v1-4",
    defaults=dict(num_steps=50, guidance_scale=5.0, eta=1.0, budget=25600, samples_per_epoch=256,
                  train_batch_size=8, sample_batch_size=8, train_prompts="simple-animals"),
)

DEFAULT_BACKBONE = "toy"
SD_DEFAULTS = backbones.get("sd-v1-4").meta["defaults"]
