"""CLIP-similarity preference rewards in the style of PickScore and HPSv2, each with
its official score formula (transformers' CLIPModel):
- PickScore: logit_scale.exp() * cos(image_features, text_features) (about 20-22
  for SD images; papers sometimes divide by 100);
- HPSv2: cos(image_features, text_features), no logit scale (about 0.25-0.30).

- toy suite: two tiny CLIPs fine-tuned from the toy base CLIP on pairwise
  preferences of two different hidden rater pools (bench/toy/build.py,
  `_pref_utility`), so they disagree with each other and with `aesthetic`.
- sd suite, `pickscore`: yuvalkirstain/PickScore_v1 (weights) with the
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K tokenizer, both from a local folder or
  the local Hugging Face cache. `hpsv2` ships as an open_clip checkpoint, which
  cannot be imported without torchvision here; it is refused on the sd suite.
"""

from __future__ import annotations


import torch

from bench.errors import BenchError
from metrics.aesthetic import preprocess_differentiable, preprocess_reference
from metrics.base import Reward



class ClipPreferenceReward(Reward):
    higher_is_better = True
    differentiable = True

    def __init__(self, name: str, clip_model, tokenizer, device="cpu", logit_scale: bool = True):
        self.name = name
        self.use_logit_scale = logit_scale
        self.device = torch.device(device)
        self.clip = clip_model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = clip_model.config.vision_config.image_size
        self._text_cache: dict[str, torch.Tensor] = {}

    def _features(self, out) -> torch.Tensor:
        f = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 may return an output object
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            feats = self._features(self.clip.get_text_features(input_ids=ids.to(self.device)))
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._features(self.clip.get_image_features(pixel_values=pixel_values.to(self.device)))

    def _score(self, img_feats: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cos = (img_feats * self.text_features(prompts)).sum(dim=-1)
        return self.clip.logit_scale.exp() * cos if self.use_logit_scale else cos

    @torch.no_grad()
    def score(self, images, prompts):
        feats = self.image_features(preprocess_reference(images.to(self.device), self.size))
        return self._score(feats, prompts).float().cpu()

    def score_differentiable(self, images, prompts):
        feats = self.image_features(preprocess_differentiable(images.to(self.device), self.size))
        return self._score(feats, prompts)

    def image_encoder(self):
        @torch.no_grad()
        def encode(images: torch.Tensor) -> torch.Tensor:
            return self.image_features(preprocess_reference(images.to(self.device), self.size))
        return encode


def _load(name: str, folder, tokenizer_folder, device, logit_scale: bool = True) -> ClipPreferenceReward:
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    return ClipPreferenceReward(name, clip, tok, device, logit_scale=logit_scale)


def load_pickscore(suite: str = "sd", device="cpu", **_) -> ClipPreferenceReward:
    if suite == "toy":
        from bench.spec.toy_assets import asset

        return _load("pickscore", asset("pickscore"), asset("pickscore"), device)
    if suite == "sd":
        from bench.spec.weights import pickscore_paths

        model, proc = pickscore_paths()
        return _load("pickscore", model, proc, device)
    raise BenchError(f"the pickscore reward has no weights for suite {suite!r}")


def load_hpsv2(suite: str = "sd", device="cpu", **_):
    if suite == "toy":
        from bench.spec.toy_assets import asset

        return _load("hpsv2", asset("hpsv2"), asset("hpsv2"), device, logit_scale=False)
    if suite == "sd":
        from metrics.hpsv2 import load_native

        return load_native("v2.0", device)
    raise BenchError(f"the hpsv2 reward has no weights for suite {suite!r}")


def load_hpsv2_1(suite: str = "sd", device="cpu", **_):
    if suite != "sd":
        raise BenchError(f"the hpsv2.1 reward has weights for suite 'sd' only, not {suite!r}")
    from metrics.hpsv2 import load_native

    return load_native("v2.1", device)
