"""Mixed precision, done so that no gradient silently vanishes.

Policy:
- `auto`: bf16 on a GPU that supports it (same exponent range as fp32: no loss scaling needed),
  fp16 on an older GPU, fp32 ('no') on a CPU. `fp16` and `bf16` may be asked for on a CPU too
  (autocast runs there; slower, for checks).
- The frozen UNet, VAE and text encoder are cast to the precision; LoRA and the critic stay fp32;
  the UNet runs under autocast. The Gaussian log-prob math (DDIM mean, sigma, log-density) runs
  in fp32 on the UNet's output (bench.train.sampling).
- Sampling-time and training-time log-probs go through the same path, so the ratio at the old
  parameters is 1 (the runner logs `ratio_at_old` and its largest deviation every epoch).
- fp16 always trains with dynamic loss scaling: the loss is multiplied by the scale before
  backward (a DDPO-2 update at SD scale has per-element output gradients near 2e-8, below fp16's
  smallest subnormal 6e-8, which flush to zero unscaled); gradients are unscaled before clipping;
  a step whose gradients overflowed is skipped and the scale halved; after 2,000 clean steps it is
  doubled (torch's GradScaler policy). Skipped steps are counted per epoch (`skipped_steps`).
"""

from __future__ import annotations

import torch

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(requested: str, device: torch.device | str) -> str:
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if requested not in DTYPES:
        raise ValueError(f"unknown precision {requested!r}: use auto, no, fp16 or bf16")
    return requested


class LossScaler:
    """Dynamic loss scaling for fp16; the identity (scale 1, nothing skipped) otherwise."""

    def __init__(self, precision: str, init_scale: float = 2.0 ** 16, growth_interval: int = 2000,
                 max_skips_in_a_row: int = 50):
        self.enabled = precision == "fp16"
        self.scale = init_scale if self.enabled else 1.0
        self.growth_interval = growth_interval
        self.max_skips = max_skips_in_a_row
        self.good_steps = 0
        self.skips_in_a_row = 0
        self.skipped = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale(self, params: list[torch.nn.Parameter]) -> bool:
        """Divide the gradients by the scale; True when they are all finite. Without scaling nothing is
        checked here: the gradient norm the optimizer step computes is finite exactly when they all are."""
        if not self.enabled:
            return True
        finite = True
        for p in params:
            if p.grad is not None:
                p.grad.div_(self.scale)
                finite = finite and bool(torch.isfinite(p.grad).all())
        return finite

    def update(self, finite: bool) -> None:
        from bench.errors import NonFinite

        if not self.enabled:
            return
        if finite:
            self.skips_in_a_row = 0
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2.0
            return
        self.skipped += 1
        self.skips_in_a_row += 1
        self.good_steps = 0
        self.scale /= 2.0
        if self.skips_in_a_row >= self.max_skips or self.scale < 2.0 ** -24:
            raise NonFinite(f"fp16 gradients overflowed {self.skips_in_a_row} steps in a row (loss scale "
                            f"{self.scale:g}); train in bf16 or fp32")

    def state(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skips_in_a_row": self.skips_in_a_row,
                "skipped": self.skipped}

    def load(self, state: dict) -> None:
        self.scale, self.good_steps = state["scale"], state["good_steps"]
        self.skips_in_a_row, self.skipped = state["skips_in_a_row"], state["skipped"]


def backward(ctx, loss: torch.Tensor) -> None:
    """loss.backward(), scaled when the run trains in fp16 (every method calls this)."""
    scaler = getattr(ctx, "scaler", None)
    loss = scaler.scaled(loss) if scaler is not None else loss
    group = getattr(getattr(ctx, "backbone", None), "lockstep", None)
    if group is not None:  # one backward over the lockstep group's merged graph (bench/train/lockstep.py)
        ctx.backbone.backward(loss)
    else:
        loss.backward()
