"""HPSv2 (v2.0 and v2.1), natively on transformers 5: no open_clip, no torchvision.

The official checkpoints (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`, read with
`torch.load(weights_only=True)["state_dict"]`) hold an open_clip ViT-H-14. Their keys map one to one onto
transformers' CLIPModel (the rules of transformers' own CLIP conversion: projections transposed, packed
q/k/v split in three, layer norms and MLPs renamed); `map_open_clip_state` does it and refuses keys that
do not map (layer scale, attentional pooling, custom text towers).

Official scoring (hpsv2.img_score with `light_augmentation=True`): PIL image -> float tensor in [0, 1];
resize the LONGER side to 224, bicubic, antialiased, in float; zero-pad to a square; normalise with the
OpenAI CLIP mean/std; score = cos(image features, text features), no logit scale. Images here arrive as
floats in [0, 1]: `score` rounds them to uint8 first (as saving them would), `score_differentiable` does not.

Weights, nothing downloaded: BENCH_HPSV2 (v2.0) / BENCH_HPSV2_1 (v2.1), else
~/.cache/bench/weights/HPS_v2_compressed.pt (HPS_v2.1_compressed.pt), else the xswu/HPSv2 snapshot in the
Hugging Face cache. The tokenizer is CLIP's BPE (metrics/clip_bpe.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from metrics.aesthetic import CLIP_MEAN, CLIP_STD
from metrics.base import Reward, to_uint8
from metrics.clip_bpe import tokenize

VIT_H_14 = dict(
    vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                patch_size=14, image_size=224),
    text=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              max_position_embeddings=77, vocab_size=49408),
    projection_dim=1024,
)
"""open_clip's ViT-H-14, the architecture of both HPSv2 checkpoints."""


def clip_config(arch: dict = VIT_H_14):
    from transformers import CLIPConfig

    common = dict(hidden_act="gelu", layer_norm_eps=1e-5)  # open_clip's GELU and LayerNorm, not quick_gelu
    return CLIPConfig(
        vision_config={**arch["vision"], **common},
        text_config={**arch["text"], **common, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        projection_dim=arch["projection_dim"],
    )


def map_open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> transformers CLIPModel state dict. Unknown keys raise BenchError."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("attn_mask"):
            continue  # open_clip's non-persistent causal mask: transformers builds its own
        if key.startswith("visual."):
            tower, rest = "vision_model", key[len("visual."):]
        else:
            tower, rest = "text_model", key
        if rest == "proj" and tower == "vision_model":
            out["visual_projection.weight"] = value.t().contiguous()
        elif rest == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif rest == "logit_scale":
            out["logit_scale"] = value
        elif rest == "class_embedding":
            out["vision_model.embeddings.class_embedding"] = value
        elif rest == "positional_embedding":
            out[f"{tower}.embeddings.position_embedding.weight"] = value
        elif rest == "conv1.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif rest == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif rest.startswith("ln_pre."):
            out[f"vision_model.pre_layrnorm.{rest[len('ln_pre.'):]}"] = value  # transformers' spelling
        elif rest.startswith("ln_post."):
            out[f"vision_model.post_layernorm.{rest[len('ln_post.'):]}"] = value
        elif rest.startswith("ln_final."):
            out[f"text_model.final_layer_norm.{rest[len('ln_final.'):]}"] = value
        elif rest.startswith("transformer.resblocks."):
            parts = rest.split(".")
            layer, sub = parts[2], ".".join(parts[3:])
            prefix = f"{tower}.encoder.layers.{layer}"
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = sub.rsplit("_", 1)[1]
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}.self_attn.{name}.{kind}"] = chunk.contiguous()
            else:
                mapped = {"attn.out_proj.weight": "self_attn.out_proj.weight",
                          "attn.out_proj.bias": "self_attn.out_proj.bias",
                          "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
                          "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
                          "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
                          "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}.get(sub)
                if mapped is None:
                    raise BenchError(f"HPSv2 checkpoint key {key!r} has no transformers counterpart (an open_clip "
                                     f"variant this loader does not support)")
                out[f"{prefix}.{mapped}"] = value
        else:
            raise BenchError(f"HPSv2 checkpoint key {key!r} has no transformers counterpart (an open_clip variant "
                             f"this loader does not support)")
    return out


def load_clip_from_open_clip(state: dict[str, torch.Tensor], arch: dict = VIT_H_14):
    """A CLIPModel holding an open_clip state dict, every key accounted for (strict)."""
    from transformers import CLIPModel

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError("not an HPSv2 checkpoint: it holds no state dict of tensors")
    mapped = map_open_clip_state(state)
    with torch.device("meta"):  # the keys and shapes, checked before the (986M-parameter) model is built
        own = {k: tuple(v.shape) for k, v in CLIPModel(clip_config(arch)).state_dict().items()}
    missing = [k for k in own if k not in mapped and not k.endswith("position_ids")]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise BenchError(f"HPSv2 checkpoint does not fit ViT-H-14: {len(missing)} missing keys "
                         f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    bad = [k for k in mapped if tuple(mapped[k].shape) != own[k]]
    if bad:
        raise BenchError(f"HPSv2 checkpoint key {bad[0]} has shape {tuple(mapped[bad[0]].shape)}, the model "
                         f"expects {own[bad[0]]}")
    model = CLIPModel(clip_config(arch))
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=False)
    return model.eval().requires_grad_(False)


def preprocess(images: torch.Tensor, size: int, differentiable: bool = False) -> torch.Tensor:
    """HPSv2's eval transform on (B, 3, H, W) floats in [0, 1]: uint8 rounding (unless differentiable),
    resize the longer side to `size` (bicubic, antialiased, in float), zero-pad to a square (the padding
    is split as torchvision's ResizeMaxSize does: left/top get the smaller half), CLIP mean/std."""
    x = images.float() if differentiable else to_uint8(images).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        ph, pw = size - nh, size - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class HPSv2Reward(Reward):
    higher_is_better = True
    differentiable = True

    def __init__(self, clip_model, tokenizer, name: str = "hpsv2", device="cpu"):
        self.name = name
        self.device = torch.device(device)
        self.clip = clip_model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = clip_model.config.vision_config.image_size
        self._text: dict[str, torch.Tensor] = {}

    @staticmethod
    def _normed(out) -> torch.Tensor:
        f = out if isinstance(out, torch.Tensor) else out.pooler_output
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            ids = tokenize(self.tokenizer, missing).to(self.device)  # with open_clip's text cleaning
            self._text.update(zip(missing, self._normed(self.clip.get_text_features(input_ids=ids))))
        return torch.stack([self._text[p] for p in prompts])

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._normed(self.clip.get_image_features(pixel_values=pixels.to(self.device)))

    @torch.no_grad()
    def score(self, images, prompts):
        feats = self.image_features(preprocess(images.to(self.device), self.size))
        return (feats * self.text_features(prompts)).sum(-1).float().cpu()

    def score_differentiable(self, images, prompts):
        feats = self.image_features(preprocess(images.to(self.device), self.size, differentiable=True))
        return (feats * self.text_features(prompts)).sum(-1)

    def image_encoder(self):
        @torch.no_grad()
        def encode(images):
            return self.image_features(preprocess(images.to(self.device), self.size))
        return encode


def checkpoint_path(version: str) -> Path:
    from bench.spec.weights import hpsv2_checkpoint

    return hpsv2_checkpoint(version)


def load_native(version: str = "v2.0", device="cpu", path: Path | None = None, arch: dict = VIT_H_14,
                tokenizer=None) -> HPSv2Reward:
    from metrics.clip_bpe import clip_tokenizer

    path = path or checkpoint_path(version)
    from bench.spec.weights import check_checkpoint_file

    check_checkpoint_file(path, "HPSv2")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # torch's own words would advise weights_only=False: never passed on
        raise BenchError(f"{path} is not an HPSv2 checkpoint: torch cannot read it as plain tensors "
                         f"(weights_only=True)") from None
    state = blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob
    model = load_clip_from_open_clip(state, arch)
    name = "hpsv2" if version == "v2.0" else "hpsv2.1"
    return HPSv2Reward(model, tokenizer or clip_tokenizer(), name=name, device=device)
