"""DDPO's JPEG rewards. The size is measured exactly as the DDPO reference does:
images -> uint8 -> PIL JPEG at quality 95 -> bytes / 1000 (kB)."""

from __future__ import annotations

import io

import torch

from metrics.base import Reward, to_uint8


def jpeg_size_kb(images: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegCompressibility(Reward):
    """Reward = -JPEG size (kB): higher means more compressible."""

    name = "jpeg-compressibility"

    def __init__(self, **_):
        pass

    def score(self, images, prompts):
        return -jpeg_size_kb(images)


class JpegIncompressibility(Reward):
    """Reward = +JPEG size (kB)."""

    name = "jpeg-incompressibility"

    def __init__(self, **_):
        pass

    def score(self, images, prompts):
        return jpeg_size_kb(images)
