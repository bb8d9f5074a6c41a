"""The LAION aesthetic predictor, as used by DDPO, AlignProp and TDPO.

score = MLP(normalize(CLIP.get_image_features(preprocess(image)))), where the MLP
is Linear(D,1024), Dropout(.2), Linear(1024,128), Dropout(.2), Linear(128,64),
Dropout(.1), Linear(64,16), Linear(16,1) with NO activations (the LAION
"linearMSE" head). Module names match the official state dict (layers.0 ...
layers.7), so `sac+logos+ava1-l14-linearMSE.pth` loads with weights_only=True.

Two preprocessing paths:
- `score` (reference): round to uint8, resize the shortest side to the CLIP input
  size (bicubic, antialiased), center crop, scale to [0,1], CLIP mean/std. The
  reference uses CLIPProcessor (PIL); this is the same recipe in torch ops.
- `score_differentiable` (AlignProp): the same recipe without the uint8 rounding,
  so gradients flow into the images and both paths agree to quantisation error.
  (AlignProp's own code resizes bilinearly without a crop; we keep the scorer's
  recipe so that training and evaluation score the same function.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from metrics.base import Reward, to_uint8

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AestheticHead(nn.Module):
    def __init__(self, input_dim: int = 768, widths=(1024, 128, 64, 16)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.layers = nn.Sequential(
            nn.Linear(input_dim, w1), nn.Dropout(0.2),
            nn.Linear(w1, w2), nn.Dropout(0.2),
            nn.Linear(w2, w3), nn.Dropout(0.1),
            nn.Linear(w3, w4),
            nn.Linear(w4, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess_reference(images: torch.Tensor, size: int) -> torch.Tensor:
    x = to_uint8(images).float()
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                          mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)  # the processor resizes uint8 images
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    return _normalize(x / 255.0)


def preprocess_differentiable(images: torch.Tensor, size: int) -> torch.Tensor:
    """The reference recipe in differentiable torch ops: no uint8 rounding, the same
    antialiased bicubic shortest-side resize and center crop, CLIP mean/std."""
    x = images.float()
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                          mode="bicubic", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return _normalize(x[..., top:top + size, left:left + size])


class AestheticReward(Reward):
    name = "aesthetic"
    higher_is_better = True
    differentiable = True

    def __init__(self, clip_model, head: AestheticHead, device="cpu"):
        self.device = torch.device(device)
        self.clip = clip_model.to(self.device).eval().requires_grad_(False)
        self.head = head.to(self.device).eval().requires_grad_(False)
        self.size = clip_model.config.vision_config.image_size

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image features (get_image_features)."""
        pooled = self.clip.vision_model(pixel_values=pixel_values.to(self.device)).pooler_output
        feats = self.clip.visual_projection(pooled)
        return feats / feats.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def score(self, images, prompts=None):
        feats = self.embed(preprocess_reference(images.to(self.device), self.size))
        return self.head(feats).squeeze(-1).float().cpu()

    def score_differentiable(self, images, prompts=None):
        feats = self.embed(preprocess_differentiable(images.to(self.device), self.size))
        return self.head(feats).squeeze(-1)

    def image_encoder(self):
        @torch.no_grad()
        def encode(images: torch.Tensor) -> torch.Tensor:
            return self.embed(preprocess_reference(images.to(self.device), self.size))
        return encode


def load_head(path: Path, input_dim: int) -> AestheticHead:
    """Load head weights: safetensors, or the official .pth with weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    widths = tuple(state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6))
    head = AestheticHead(input_dim, widths)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise BenchError(f"{path}: not a LAION-shaped aesthetic head for {input_dim}-d features ({str(e).splitlines()[0]})") from None
    return head


def load_aesthetic_from(clip_folder: Path, head_path: Path, device="cpu") -> AestheticReward:
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(str(clip_folder), local_files_only=True, dtype=torch.float32)
    return AestheticReward(clip, load_head(head_path, clip.config.projection_dim), device)


def tiny_clip_config(projection_dim: int = 32, image_size: int = 32, vocab_size: int = 64):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )


def write_tiny_random_aesthetic(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random-weight CLIPModel + LAION-shaped head, saved as safetensors (placeholder suite and tests)."""
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from bench.store.atomic import atomic_write_json

    folder = Path(folder)
    clip_dir, head_path = folder / "clip", folder / "head.safetensors"
    if not head_path.is_file():
        torch.manual_seed(seed)
        clip = CLIPModel(tiny_clip_config())
        clip.save_pretrained(str(clip_dir), safe_serialization=True)
        torch.manual_seed(seed + 1)
        head = AestheticHead(clip.config.projection_dim)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(head_path) + ".tmp")
        Path(str(head_path) + ".tmp").replace(head_path)
        atomic_write_json(folder / "MODEL_CARD.json", {"what": "random-weight placeholder aesthetic reward",
                                                       "seed": seed, "trained": False})
    return clip_dir, head_path


def load_aesthetic(suite: str = "sd", device="cpu", **_) -> AestheticReward:
    if suite == "sd":
        from bench.spec.weights import aesthetic_paths

        clip_dir, head_path = aesthetic_paths(suite)
    elif suite == "toy":
        from bench.spec.toy_assets import asset

        clip_dir, head_path = asset("aesthetic", "clip"), asset("aesthetic", "head.safetensors")
    elif suite == "tiny-random":
        from bench.spec.cache import cache_root

        clip_dir, head_path = write_tiny_random_aesthetic(cache_root() / "tiny-random-aesthetic-v1")
    else:
        raise BenchError(f"the aesthetic reward has no weights for suite {suite!r}")
    return load_aesthetic_from(clip_dir, head_path, device)
