"""ImageReward v1.0, natively on transformers 5 (image-reward 1.5 fails to import with transformers >= 4.57).

The model: BLIP's ViT-L/16 vision encoder at 224 px -> the BERT "med" text encoder, cross-attending to the
image tokens -> its [CLS] output -> the LAION-shaped MLP 768->1024->128->64->16->1 ->
(r - 0.16717362830052426) / 1.0333394966054072. It fits transformers' BlipVisionModel and BlipTextModel
(built with cross-attention layers, run with is_decoder=False); `map_imagereward_state` maps the official
`ImageReward.pt` keys (timm-style `blip.visual_encoder.*`, `blip.text_encoder.*`, `mlp.layers.*`) onto them.
`blip.vision_proj` / `blip.text_proj` are ITM heads the score does not use; any other key is refused.

Official scoring (ImageReward.score): PIL image -> torchvision Resize(224, bicubic) of the SHORTER side
(the longer becomes int(224 * long / short)) -> CenterCrop(224) (offset round((L - 224) / 2)) -> tensor ->
CLIP mean/std. `score` does exactly that with PIL on uint8-rounded images; `score_differentiable` is ReFL's:
the same resize (bicubic, antialiased) and crop on the float tensor.
Text: bert-base-uncased plus [DEC] and [ENC] (vocabulary 30524), max_length 35, padded, truncated.

Weights, nothing downloaded: BENCH_IMAGEREWARD (the .pt) or ~/.cache/bench/weights/ImageReward.pt or the
THUDM/ImageReward snapshot in the Hugging Face cache; med_config.json beside it (or BLIP's standard one);
the tokenizer from BENCH_BERT_TOKENIZER or bert-base-uncased in the Hugging Face cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from metrics.aesthetic import CLIP_MEAN, CLIP_STD, AestheticHead
from metrics.base import Reward, to_uint8

MEAN, STD = 0.16717362830052426, 1.0333394966054072
FULL_VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   patch_size=16, image_size=224)
FULL_TEXT = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
UNUSED = ("blip.vision_proj.", "blip.text_proj.")


def blip_models(vision: dict = FULL_VISION, text: dict = FULL_TEXT):
    """(BlipVisionModel, BlipTextModel with cross-attention layers) of ImageReward's shapes."""
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vcfg = BlipVisionConfig(**vision, layer_norm_eps=1e-6, hidden_act="gelu")  # timm ViT: eps 1e-6, exact GELU
    tcfg = BlipTextConfig(**text, encoder_hidden_size=vision["hidden_size"], is_decoder=True,  # builds x-attn
                          layer_norm_eps=1e-12, hidden_act="gelu", bos_token_id=None, sep_token_id=None,
                          pad_token_id=0)
    return BlipVisionModel(vcfg), BlipTextModel(tcfg, add_pooling_layer=False)


def map_imagereward_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Official keys -> (vision, text, head) state dicts. Unknown keys raise BenchError."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith(UNUSED) or key.endswith("position_ids"):
            continue
        if key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder."):]] = value
        elif key.startswith("mlp.layers."):
            head[key[len("mlp."):]] = value
        elif key.startswith("blip.visual_encoder."):
            rest = key[len("blip.visual_encoder."):]
            fixed = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
                     "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                     "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
                     "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
            if rest in fixed:
                vision[fixed[rest]] = value
            elif rest.startswith("blocks."):
                _, n, sub = rest.split(".", 2)
                sub = {"norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
                       "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
                       "attn.qkv.weight": "self_attn.qkv.weight", "attn.qkv.bias": "self_attn.qkv.bias",
                       "attn.proj.weight": "self_attn.projection.weight", "attn.proj.bias": "self_attn.projection.bias",
                       "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
                       "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias"}.get(sub)
                if sub is None:
                    raise BenchError(f"ImageReward checkpoint key {key!r} has no transformers counterpart")
                vision[f"encoder.layers.{n}.{sub}"] = value
            else:
                raise BenchError(f"ImageReward checkpoint key {key!r} has no transformers counterpart")
        else:
            raise BenchError(f"ImageReward checkpoint key {key!r} has no transformers counterpart")
    return vision, text, head


def _load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BenchError(f"ImageReward {what}: {len(missing)} missing keys (e.g. {missing[:1]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise BenchError(f"ImageReward {what} key {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def preprocess_pil(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The official path: uint8 -> PIL -> torchvision's Resize(size, bicubic) of the shorter side and its
    integer sizing -> CenterCrop(size) -> [0, 1] -> CLIP mean/std."""
    import numpy as np
    from PIL import Image

    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        im = Image.fromarray(a)
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out).to(images.device)
    return (x - torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)) / \
        torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)


def preprocess_differentiable(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ReFL's path on float tensors: Resize(size, bicubic, antialiased) of the shorter side, CenterCrop, mean/std."""
    x = images.float()
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    return (x - torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)) / \
        torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)


class ImageRewardModel(Reward):
    name = "imagereward"
    higher_is_better = True
    differentiable = True

    def __init__(self, vision, text, head, tokenizer, device="cpu"):
        self.device = torch.device(device)
        self.vision = vision.to(self.device).eval().requires_grad_(False)
        self.text = text.to(self.device).eval().requires_grad_(False)
        self.head = head.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = vision.config.image_size

    def _reward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        image_embeds = self.vision(pixel_values=pixels.to(self.device)).last_hidden_state
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = self.text(input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device),
                        encoder_hidden_states=image_embeds, encoder_attention_mask=atts, is_decoder=False)
        r = self.head(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (r - MEAN) / STD

    @torch.no_grad()
    def score(self, images, prompts):
        return self._reward(preprocess_pil(images, self.size), prompts).float().cpu()

    def score_differentiable(self, images, prompts):
        return self._reward(preprocess_differentiable(images.to(self.device), self.size), prompts)


def build(state: dict[str, torch.Tensor], tokenizer, vision_cfg: dict = FULL_VISION, text_cfg: dict = FULL_TEXT,
          device="cpu") -> ImageRewardModel:
    vision, text = blip_models(vision_cfg, text_cfg)
    v, t, h = map_imagereward_state(state)
    _load_strict(vision, v, "vision encoder")
    _load_strict(text, t, "text encoder")
    head = AestheticHead(text_cfg["hidden_size"])
    _load_strict(head, h, "MLP head")
    return ImageRewardModel(vision, text, head, tokenizer, device)


def blip_tokenizer(folder_or_vocab):
    """bert-base-uncased's tokenizer plus BLIP's [DEC] (bos) and [ENC] tokens."""
    from transformers import AutoTokenizer, BertTokenizer

    if isinstance(folder_or_vocab, (list, tuple)):
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(folder_or_vocab)}, do_lower_case=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(folder_or_vocab), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_imagereward(suite: str = "sd", device="cpu", **_) -> ImageRewardModel:
    if suite != "sd":
        raise BenchError(f"the imagereward reward has weights for suite 'sd' only, not {suite!r}")
    from bench.spec.weights import bert_tokenizer_folder, check_checkpoint_file, imagereward_checkpoint

    path = imagereward_checkpoint()
    tok_dir = bert_tokenizer_folder()
    check_checkpoint_file(path, "ImageReward")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # torch's own words would advise weights_only=False: never passed on
        raise BenchError(f"{path} is not an ImageReward checkpoint: torch cannot read it as plain tensors "
                         f"(weights_only=True)") from None
    return build(state, blip_tokenizer(tok_dir), device=device)
