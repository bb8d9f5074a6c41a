"""Neuron states (dormant / active) and neuron resets, after Sokar et al. (2023)
as used by TDPO-R (Zhang et al. 2024, Sec. 4.2; reference `neuron_recycler.py`).

A "neuron" is one output unit of a Linear layer. Its activation score is

    A_n = E_x |f(a_n(x))| / ((1/N) sum_n' E_x |f(a_n'(x))|)

with f = ReLU (the critic itself has no nonlinearity: like the reference, the
ReLU exists only inside this measurement; `leaky_relu` is the paper's
Appendix B alternative). A neuron is dormant if A_n <= threshold, active
otherwise. The expectation is over a batch (and over tokens, for LoRA layers).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01  # torch's default, as in the reference's commented-out alternative


def activation_scores(acts: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """Normalised activation score per neuron (last dim) of raw pre-activation outputs."""
    if activation == "relu":
        a = F.relu(acts)
    elif activation == "leaky_relu":
        a = F.leaky_relu(acts, LEAKY_SLOPE)
    else:
        raise ValueError(f"unknown activation {activation!r}; use relu or leaky_relu")
    score = a.float().abs().reshape(-1, acts.shape[-1]).mean(0)
    return score / (score.mean() + 1e-9)


@contextmanager
def record_outputs(modules: dict[str, nn.Module]):
    """Collect each module's forward output (detached) while the context is open."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
               for name, m in modules.items()]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def dormant_masks(outputs: dict[str, torch.Tensor], threshold: float, activation: str = "relu") -> dict[str, torch.Tensor]:
    """True where a neuron is dormant (score <= threshold), per layer."""
    return {name: activation_scores(out, activation) <= threshold for name, out in outputs.items()}


def dormant_fraction(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values()) / total) if total else 0.0


def dormant_overlap(prev: dict[str, torch.Tensor] | None, cur: dict[str, torch.Tensor]) -> float | None:
    """|dormant before ∩ dormant now| / min(|before|, |now|), over all layers.

    The reference counts tensor elements (numel) instead of dormant neurons in
    both numerator and denominator, which makes its "overlap" always 100%.
    None when there is no earlier epoch or either set is empty (undefined).
    """
    if not prev:
        return None
    both = sum(int((prev[k] & cur[k]).sum()) for k in cur)
    smaller = min(sum(int(m.sum()) for m in prev.values()), sum(int(m.sum()) for m in cur.values()))
    return both / smaller if smaller else None


def _zero_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, index) -> None:
    state = optimizer.state.get(param)
    if state:
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0


@torch.no_grad()
def reset_linear_neurons(linears: list[nn.Linear], masks: list[torch.Tensor], std: float,
                         optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> int:
    """Re-initialise masked neurons of a chain of Linear layers: for hidden layer i,
    the incoming rows of linears[i] ~ N(0, std), their biases 0, and the outgoing
    columns of linears[i+1] ~ N(0, std); their Adam moments are zeroed (the step
    count is kept). `masks[i]` belongs to the output of linears[i]. Returns the
    number of neurons reset."""
    count = 0
    for incoming, outgoing, mask in zip(linears[:-1], linears[1:], masks, strict=True):
        mask = mask.to(incoming.weight.device)
        k = int(mask.sum())
        if k == 0:
            continue
        count += k
        rows = torch.randn((k, incoming.in_features), generator=generator) * std
        incoming.weight[mask] = rows.to(incoming.weight)
        cols = torch.randn((outgoing.out_features, k), generator=generator) * std
        outgoing.weight[:, mask] = cols.to(outgoing.weight)
        if optimizer is not None:
            _zero_moments(optimizer, incoming.weight, mask)
            _zero_moments(optimizer, outgoing.weight, (slice(None), mask))
        if incoming.bias is not None:
            incoming.bias[mask] = 0.0
            if optimizer is not None:
                _zero_moments(optimizer, incoming.bias, mask)
    return count


def lora_layers(unet: nn.Module, adapter: str = "default") -> dict[str, tuple[nn.Linear, nn.Linear, int]]:
    """(down A, up B, rank) of every peft LoRA layer of the UNet for one adapter (the run's: a lockstep group's
    UNet holds one per run), by module name. Keyed as a serial run's adapter ('NAME.default') whatever its
    name, so that a run's resume state reads the same in lockstep and alone."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            out[f"{name}.default"] = (module.lora_A[adapter], module.lora_B[adapter], module.r[adapter])
    return out


@torch.no_grad()
def reset_lora_neurons(layers: dict[str, tuple[nn.Linear, nn.Linear, int]], masks: dict[str, torch.Tensor],
                       optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> int:
    """Re-initialise masked LoRA neurons as LoRA starts: rows of the down projection
    A ~ N(0, 1/r), columns of the up projection B = 0, Adam moments zeroed."""
    count = 0
    for name, (down, up, rank) in layers.items():
        mask = masks[name].to(down.weight.device)
        k = int(mask.sum())
        if k == 0:
            continue
        count += k
        down.weight[mask] = (torch.randn((k, down.in_features), generator=generator) / rank).to(down.weight)
        up.weight[:, mask] = 0.0
        if optimizer is not None:
            _zero_moments(optimizer, down.weight, mask)
            _zero_moments(optimizer, up.weight, (slice(None), mask))
    return count
