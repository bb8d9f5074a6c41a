"""Stable Diffusion v1.4's architecture with RANDOM weights, built from config: the same classes and sizes
as the real model (UNet 860M, VAE 84M, text encoder 123M parameters; CLIP's BPE tokenizer, built offline),
for SD-scale speed and memory figures and end-to-end checks where no weights can be downloaded.

`pipeline_dir(resolution)` saves the pipeline once (seeded) into the bench cache and returns the folder,
loadable by `--backbone` like SD v1.4 itself. A resolution below 512 keeps the architecture and shrinks
the latents (128 px: 16x16x4), for minutes-long checks on a CPU.
"""

from __future__ import annotations

from pathlib import Path

UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


def build(resolution: int = 512, seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from metrics.clip_bpe import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=resolution // 8, **UNET)
    vae = AutoencoderKL(sample_size=resolution, **VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(),
                                   scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def pipeline_dir(resolution: int = 512) -> Path:
    """The saved random pipeline (weights in float16 on disk, half the bytes; loaded as float32)."""
    import torch

    from bench.spec.catalog import backbones
    from bench.spec.cache import cache_root
    from bench.tiny import save_pipeline_dir

    folder = cache_root() / f"sd-v1-4-random-{resolution}-v1"
    if not (folder / "model_index.json").is_file():
        pipe = build(resolution)
        pipe.to(torch.float16)
        meta = backbones.get("sd-v1-4-random").meta
        save_pipeline_dir(pipe, folder, {"suite": "sd", "defaults": {**meta["defaults"],
                                                                     "latent_dims": 4 * (resolution // 8) ** 2},
                                         "random_weights": True})
    return folder


def pipeline_dir_128() -> Path:
    return pipeline_dir(128)
