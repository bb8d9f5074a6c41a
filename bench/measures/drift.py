"""Image-statistics drift: cheap signals of a policy walking away from the data along an axis a reward can
hack. Per checkpoint and prompt set, the mean over the evaluation images of

- `drift_brightness`: Rec. 601 luma (0.299 R + 0.587 G + 0.114 B), pixels in [0, 1];
- `drift_saturation`: HSV saturation (max - min) / max of RGB, per pixel (0 for black);
- `drift_latent_sq`: the mean square of the final latent x0 (DiffusionNFT issue #47: x0^2 creeps up, images get
  brighter, while the reward stays flat).

On the toy, saturation is exactly the axis the proxy aesthetic hacks. The report shows each against reward
queries beside diversity, and each method's change from query 0 (the same evaluation images: paired).
"""

from __future__ import annotations

import torch

METRICS = ("drift_brightness", "drift_saturation", "drift_latent_sq")


def drift_metrics(images: torch.Tensor, latents: torch.Tensor | None = None) -> dict[str, float]:
    """The set means of the three statistics (`drift_latent_sq` only with the final latents)."""
    x = images.detach().float().clamp(0, 1)
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    saturation = torch.where(mx > 0, (mx - mn) / mx.clamp(min=1e-12), torch.zeros_like(mx))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    out = {"drift_brightness": float(luma.mean()), "drift_saturation": float(saturation.mean())}
    if latents is not None:
        out["drift_latent_sq"] = float(latents.detach().float().pow(2).mean())
    return out
