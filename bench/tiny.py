"""Tiny StableDiffusionPipelines built from config, for tests and as the
PLACEHOLDER default backbone until the trained toy suite lands.

The weights are RANDOM (seeded), so images are meaningless; only the code paths
are real. The pipeline is saved in diffusers format and loaded back through
`bench.train.backbone.load_pipeline`, exactly like SD v1.4.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from bench.spec.cache import cache_root

SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<unk>")


def word_tokenizer(words, max_length: int = 16):
    """A word-level tokenizer (lower-cased, punctuation split) that pads with
    <|endoftext|> like CLIP. transformers' CLIPTokenizer needs BPE files; a
    WordLevel `tokenizers` model wrapped in PreTrainedTokenizerFast saves and
    reloads offline."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in sorted({w.lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        unk_token="<unk>", pad_token="<|endoftext|>", model_max_length=max_length,
    )


def get_dummy_components(words, seed: int = 0, text_dim: int = 32):
    """Tiny seeded components of a StableDiffusionPipeline: 32x32 images, 8x8x4 latents."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = word_tokenizer(words)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_dim,
        attention_head_dim=8, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        block_out_channels=(32, 64, 64), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def build_tiny_pipeline(words, seed: int = 0):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**get_dummy_components(words, seed))


def save_pipeline_dir(pipe, folder: Path, suite_meta: dict | None = None) -> Path:
    """Save atomically: build in a temporary sibling folder, then rename."""
    from bench.train.backbone import quiet_loading

    quiet_loading()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if suite_meta is not None:
            (tmp / "bench_suite.json").write_text(json.dumps(suite_meta, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def tiny_random_pipeline_dir() -> Path:
    """The placeholder backbone's folder, built once (seed 0) into the bench cache."""
    from bench.spec.catalog import backbones
    from bench.spec.prompts import resolve_prompt_set

    folder = cache_root() / "tiny-random-v1"
    if not (folder / "model_index.json").is_file():
        words = set()
        for name in ("simple-animals", "unseen-animals", "compositional"):
            for p in resolve_prompt_set(name)[1]:
                words.update(p.lower().split())
        meta = backbones.get("tiny-random").meta
        save_pipeline_dir(build_tiny_pipeline(sorted(words), seed=0), folder,
                          {"suite": meta["suite"], "defaults": meta["defaults"], "random_weights": True})
    return folder
