"""Configurations of the toy suite's models: the same classes as the real ones
(diffusers AutoencoderKL / UNet2DConditionModel / DDIMScheduler, transformers
CLIPModel / CLIPTextModel), only tiny."""

from __future__ import annotations

from bench.toy.vocab import vocabulary

TEXT_DIM = 64
MAX_TOKENS = 16


def toy_tokenizer():
    from bench.tiny import word_tokenizer  # torch: only when a model is built, so the build's flags check first

    return word_tokenizer(vocabulary(), max_length=MAX_TOKENS)


def clip_config(tokenizer):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=4),
        projection_dim=64,
    )


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )


# The toy denoiser and the leaner candidates of its frontier (README, "Toy suite"). Levels run 8x8, 4x4, 2x2;
# "base" is the committed model. The candidates cut where the FLOPs are: the 8x8 level (the first channel
# width, and its attention) holds most of them.
UNET_CONFIGS = {
    "base": dict(block_out_channels=(64, 96, 128),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "no-attn-8x8": dict(block_out_channels=(64, 96, 128),
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    "narrow-8x8": dict(block_out_channels=(48, 96, 128), norm_num_groups=16,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "narrow-no-attn-8x8": dict(block_out_channels=(48, 96, 128), norm_num_groups=16,
                               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    "thin-8x8": dict(block_out_channels=(32, 96, 128),
                     down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}


def new_unet(name: str = "base"):
    from diffusers import UNet2DConditionModel

    cfg = dict(norm_num_groups=32) | UNET_CONFIGS[name]
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                cross_attention_dim=TEXT_DIM, attention_head_dim=8, **cfg)


def new_scheduler():
    from diffusers import DDIMScheduler

    # SD v1.4's schedule, so that eta, T and log-prob scales behave as on SD.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
