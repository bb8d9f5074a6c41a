"""Run specifications: one frozen dataclass per training run, with a readable
name and a hash of its full configuration.

Everything here is pure Python, so a whole grid is validated before torch loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, did_you_mean
from bench.spec.values import HPARAM_CHOICES, HPARAM_RANGES, INTEGER_HPARAMS, NUMERIC_OR_AUTO, safe_component


@dataclass(frozen=True)
class RunSpec:
    method: str
    """Registered method name, e.g. 'ddpo-2'."""
    reward: str
    """Registered name of the training reward (the one that spends the budget)."""
    backbone: str
    """Registered backbone name, a local pipeline folder, or a Hugging Face model id found in the local cache."""
    suite: str
    """The world the run belongs to ('sd', 'tiny-random', ...). Results of different suites never mix."""
    seed: int
    """Seed for LoRA initialisation, prompts and sampling noise."""
    budget: int
    """Total reward queries: images scored by the training reward. Every method stops exactly here."""
    num_checkpoints: int
    """Evenly spaced checkpoint marks after the pretrained model at 0 (10 by default)."""
    num_steps: int
    """T, the number of DDIM denoising steps."""
    guidance_scale: float
    """Classifier-free guidance scale, used in sampling and in the training pass."""
    eta: float
    """DDIM eta; 1.0 makes every step a Gaussian with the DDPM posterior variance."""
    samples_per_epoch: int
    """Images sampled (and reward queries spent) per epoch, over all processes."""
    train_batch_size: int
    """Samples per process in one forward/backward micro-step of training."""
    sample_batch_size: int
    """Images per process in one sampling batch (changes which noise each image gets)."""
    train_prompts: str
    """Registered prompt set name or path of the training prompts."""
    lora_rank: int = 4
    """Rank of the LoRA adapters on to_q, to_k, to_v and to_out.0 of every UNet attention."""
    mixed_precision: str = "auto"
    """'auto' (fp16 on GPU, fp32 on CPU), 'no', 'fp16' or 'bf16'."""
    update_multiplier: float = 1.0
    """m of the scale rule: every method makes m times its source's optimizer updates per reward query."""
    latent_dims: int = 4 * 64 * 64
    """Latent channels x height x width of the backbone (the scale rule's D)."""
    scale_rule: str = "count"
    """The scale rule's optimiser conversion (bench/spec/scale.py): 'count' (the source's learning rate and Adam
    constants) or 'sde' (the square-root scaling rule, rule 10)."""
    noise_temperature: float = 1.0
    """tau of the 'sde' rule (the run's gradient-noise temperature as a multiple of its source's); unused by
    'count'."""
    reset_rule: str = "share"
    """Rule 7's reading of a reset period (bench/spec/scale.py): 'updates' (the critic's optimizer steps between
    resets are the source's; every grid since 2026-12-07) or 'share' (the period's share of the run; the default
    here because every stored run before that field used it)."""
    stop_level: float | None = None
    """The stop rule (study version 4): once the mean of the training reward over the fixed-seed evaluation images
    of the training prompts reaches this level at a checkpoint, the run trains `stop_margin` more checkpoint
    marks and stops; `budget` is then the cap. None: train to the budget (every run before the field)."""
    stop_margin: int = 1
    """Checkpoint marks trained past the first one at or above `stop_level` (0: stop at the crossing mark)."""
    stop_per_prompt: int = 2
    """Fixed-seed images per training prompt the stop rule scores (the grid's --eval-per-prompt: evaluation's)."""
    stop_reward: str | None = None
    """The reward whose level stops the run (None: the training reward). A planted control trained on a blend
    stops on its proxy, where the study's level is."""
    inputs: str = ""
    """Digest of the CONTENTS of what the run reads: its prompts, backbone folder and reward weights
    (bench/store/manifest.py). A changed input is a new run."""
    hparams: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    """The method's hyperparameters at this run's scale: preset and overrides at the source scale, mapped by
    the scale rule (bench/spec/scale.py)."""

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hparams"] = dict(self.hparams)
        if self.scale_rule == "count":  # the fields came after the count rule's runs: their names stay as stored
            del d["scale_rule"], d["noise_temperature"]
        if self.reset_rule == "share":  # likewise: the runs before the field keep their names
            del d["reset_rule"]
        if self.stop_level is None:  # likewise
            del d["stop_level"], d["stop_margin"], d["stop_per_prompt"], d["stop_reward"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """Inverse of to_dict (the `config` column); the hash is unchanged by the round trip."""
        return cls(**{**d, "hparams": tuple(sorted(d.get("hparams", {}).items()))})

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        parts = (safe_component(self.method, "method"), safe_component(self.reward, "reward"),
                 safe_component(self.suite, "suite"))
        return f"{parts[0]}_{parts[1]}_{parts[2]}_s{int(self.seed)}_{self.config_hash[:8]}"

    @property
    def hp(self) -> dict[str, Any]:
        return dict(self.hparams)

    def checkpoint_marks(self) -> list[int]:
        """Reward-query counts at which checkpoints are taken: 0 plus `num_checkpoints` evenly spaced marks."""
        k = self.num_checkpoints
        return sorted({round(i * self.budget / k) for i in range(k + 1)})


# ---------------------------------------------------------------------- parsing helpers
def _ascii_int(text: str) -> int:
    import re

    t = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?[0-9]+", t):  # int() would take '٣' and other Unicode digits
        raise ValueError(text)
    return int(t)


def parse_budget(text: str) -> int:
    try:
        value = _ascii_int(text)
    except ValueError:
        raise BenchError(f"--budget must be a positive integer number of reward queries, got {text!r}") from None
    if value > 10**9:
        raise BenchError(f"--budget {value} is too large (at most 1,000,000,000 reward queries)")
    if value <= 0:
        raise BenchError(f"--budget must be a positive integer number of reward queries, got {text!r}")
    return value


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        try:
            value = _ascii_int(part)
        except ValueError:
            value = -1
        if value < 0 or value >= 2**31:
            raise BenchError(f"--seeds must be comma-separated non-negative integers like 0,1,2, got {text!r}")
        seeds.append(value)
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def parse_methods(text: str) -> list[str]:
    from bench.spec.catalog import methods

    if text.strip() == "all":
        return [e.name for e in methods.entries()]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BenchError("--methods is empty; give names like ddpo-2,ddpo-100 or 'all'")
    for n in names:
        methods.get(n)  # raises did-you-mean
    return names


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(like, int) and not isinstance(like, bool):
        if not value.lstrip("+-").isascii() or not value.lstrip("+-").isdigit():
            raise ValueError(value)  # refuses '1e3', '٣' (non-ASCII digits) and '1.5'
        return int(value)
    if isinstance(like, float):
        if not value.isascii():
            raise ValueError(value)
        return float(value)
    if isinstance(like, str) and like == "auto":  # "auto", a number, or (critic_encoder) a name
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_hparams(method: str, hp: dict[str, Any]) -> None:
    """Refuse out-of-range or unknown-choice values (a one-line BenchError), before torch. A plugin's own keys
    have the ranges it declares (`hparam_ranges`)."""
    from bench.spec.catalog import methods, rewards

    ranges = {**HPARAM_RANGES, **(methods.get(method).meta.get("hparam_ranges", {}) if method in methods else {})}

    for key, value in hp.items():
        if isinstance(value, bool):
            continue
        if key in HPARAM_CHOICES and value not in HPARAM_CHOICES[key]:
            raise did_you_mean(f"value of {key} for {method}", str(value), HPARAM_CHOICES[key])
        if key == "critic_encoder" and value != "auto" and value not in rewards:
            raise did_you_mean(f"critic_encoder (a reward name) for {method}", str(value), rewards.names())
        if isinstance(value, (int, float)):
            if key in ranges and value not in ranges[key]:
                raise BenchError(f"hyperparameter {key}={value} of {method} must be {ranges[key].text}")
            if key in INTEGER_HPARAMS and float(value) != int(value):
                raise BenchError(f"hyperparameter {key}={value} of {method} must be a whole number")
    if hp.get("kept_per_prompt", 0) > hp.get("rollouts_per_prompt", 1 << 30):
        raise BenchError(f"{method}: kept_per_prompt ({hp['kept_per_prompt']}) exceeds rollouts_per_prompt "
                         f"({hp['rollouts_per_prompt']})")


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def scale_rule_of(args, defaults: dict) -> tuple[str, float, float]:
    """(rule, m, tau) of a grid: the flags, else the study's or the backbone's defaults. Under 'sde' the update
    multiplier and temperature default to the backbone's sde_update_multiplier and sde_temperature."""
    rule = getattr(args, "scale_rule", None) or defaults.get("scale_rule", "count")
    temperature = getattr(args, "noise_temperature", None)
    if rule == "count":
        if temperature is not None:
            raise BenchError("--noise-temperature has no effect under --scale-rule count; use --scale-rule sde")
        m = args.update_multiplier if args.update_multiplier is not None else defaults["update_multiplier"]
        return rule, m, 1.0
    if temperature is not None:
        from bench.errors import check_positive

        check_positive("--noise-temperature", temperature)
        if temperature > 10**4:
            raise BenchError(f"--noise-temperature {temperature:g} is too large (at most 10000)")
    m = args.update_multiplier if args.update_multiplier is not None else \
        defaults.get("sde_update_multiplier", defaults["update_multiplier"])
    return rule, m, temperature if temperature is not None else defaults.get("sde_temperature", 1.0)


def reset_rule_of(args, defaults: dict) -> str:
    """Rule 7's reading of a reset period for a grid: the flag, else the study's or the backbone's, else
    'updates'."""
    return getattr(args, "reset_rule", None) or defaults.get("reset_rule", "updates")


def scale_for(spec: "RunSpec"):
    """The scale rule's target for a spec."""
    from bench.spec.scale import Scale

    return Scale(num_steps=spec.num_steps, samples_per_epoch=spec.samples_per_epoch, latent_dims=spec.latent_dims,
                 budget=spec.budget, multiplier=spec.update_multiplier, rule=spec.scale_rule,
                 temperature=spec.noise_temperature, reset_rule=spec.reset_rule)


def resolve_hparams(method: str, overrides: dict[str, str], scale) -> tuple[tuple[str, Any], ...]:
    """Preset defaults + overrides (both at the source scale), mapped to `scale` (a
    bench.spec.scale.Scale) by the scale rule."""
    import math

    from bench.spec.catalog import methods
    from bench.spec.scale import effective_hparams

    entry = methods.get(method)
    hp = dict(entry.meta.get("hparams", {}))
    for key, raw in overrides.items():
        if key not in hp:
            continue  # checked against the union of all selected methods by the caller
        try:  # a NUMERIC_OR_AUTO key takes "auto" or a number, whatever its preset
            value = _coerce(raw, "auto" if key in NUMERIC_OR_AUTO else hp[key])
        except ValueError:
            raise BenchError(f"--set {key}={raw}: expected a {type(hp[key]).__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise BenchError(f"--set {key}={raw}: must be a finite number")
        if key in NUMERIC_OR_AUTO and isinstance(value, str) and value != "auto":
            raise BenchError(f"--set {key}={raw}: expected a number or 'auto'")
        hp[key] = value
    validate_hparams(method, hp)
    return tuple(sorted(effective_hparams(entry, hp, scale).items()))


# ---------------------------------------------------------------------- backbones
def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_in_hf_cache(model_id: str, marker: str = "model_index.json") -> Path | None:
    """The newest cached snapshot folder of `model_id` that holds `marker`, or None."""
    repo = hf_cache_dir() / ("models--" + model_id.replace("/", "--"))
    snaps = sorted((repo / "snapshots").glob(f"*/{marker}"), key=lambda p: p.stat().st_mtime)
    return snaps[-1].parent if snaps else None


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    """What the user typed (name, path or model id)."""
    suite: str
    defaults: dict[str, Any]
    builder: str | None = None
    """Registered 'module:attr' that builds the pipeline folder (tiny-random)."""
    location: str | None = None
    """Local folder or Hugging Face model id to load."""


def resolve_backbone(name: str) -> BackboneInfo:
    """Find a backbone without importing torch. Missing weights raise a one-line BenchError."""
    from bench.spec.catalog import SD_DEFAULTS, backbones

    if name in backbones:
        entry = backbones.get(name)
        meta = entry.meta
        if entry.target:
            return BackboneInfo(name, meta["suite"], dict(meta["defaults"]), builder=entry.target)
        return resolve_backbone_location(meta["hf_id"], suite=meta["suite"], defaults=meta["defaults"], shown=name)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return resolve_backbone_location(name, suite=None, defaults=SD_DEFAULTS, shown=name)
    if name.count("/") == 1:  # a Hugging Face model id, looked up in the local cache
        return resolve_backbone_location(name, suite="sd", defaults=SD_DEFAULTS, shown=name)
    raise did_you_mean("backbone", name, backbones.names())


def latent_dims_of(folder: Path) -> int | None:
    """Channels x height x width of a pipeline folder's UNet latents, from its config (no torch)."""
    f = Path(folder) / "unet" / "config.json"
    try:
        cfg = json.loads(f.read_text())
        size = cfg["sample_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg["in_channels"]) * int(h) * int(w)
    except (OSError, ValueError, KeyError, TypeError):
        return None


SUITE_DEFAULTS = {
    "num_steps": (int, 1, 1000), "guidance_scale": (float, 0.0, 100.0), "eta": (float, 0.0, 1.0),
    "budget": (int, 1, 10**9), "samples_per_epoch": (int, 1, 10**6), "train_batch_size": (int, 1, 10**6),
    "sample_batch_size": (int, 1, 10**6), "train_prompts": (str, None, None), "latent_dims": (int, 1, 10**9),
    "update_multiplier": (float, 0.0, 10**4), "eval_per_prompt": (int, 1, 64), "num_checkpoints": (int, 1, 10**4),
    "scale_rule": (str, None, None), "reset_rule": (str, None, None), "sde_update_multiplier": (float, 0.0, 10**4),
    "sde_temperature": (float, 0.0, 10**4),
}
"""The defaults a backbone folder's bench_suite.json may set: (type, lowest, highest). A float's lowest is
exclusive (a positive number), a whole number's inclusive; eta may be 0 (DDIM)."""


def check_suite_defaults(values: dict, where: Path) -> None:
    """The same checks `bench run` gives its flags, for defaults read from a file: known key, type (a whole
    number is no bool and no string), finite, in range."""
    import math

    for key, value in values.items():
        if key not in SUITE_DEFAULTS:
            raise did_you_mean(f"default in {where}", key, SUITE_DEFAULTS)
        kind, low, high = SUITE_DEFAULTS[key]
        if kind is str:
            if not isinstance(value, str) or not value.strip():
                raise BenchError(f"{where}: defaults.{key} must be a non-empty name, got {value!r}")
            if key == "scale_rule" and value not in ("count", "sde"):
                raise did_you_mean(f"defaults.scale_rule in {where}", value, ("count", "sde"))
            if key == "reset_rule" and value not in ("updates", "share"):
                raise did_you_mean(f"defaults.reset_rule in {where}", value, ("updates", "share"))
            continue
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            what = "a whole number" if kind is int else "a finite number"
            raise BenchError(f"{where}: defaults.{key} must be {what}, got {value!r}")
        too_low = value < low if (kind is int or key == "eta") else value <= low
        if too_low or value > high:
            raise BenchError(f"{where}: defaults.{key} = {value!r} is out of range "
                             f"({'from' if kind is int or key == 'eta' else 'above'} {low:g} to {high:g})")


def resolve_backbone_location(location: str, suite: str | None, defaults: dict, shown: str) -> BackboneInfo:
    path = Path(location).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise BenchError(f"backbone folder {path} has no model_index.json: it is not a diffusers pipeline folder")
        defaults = dict(defaults)
        dims = latent_dims_of(path)
        if dims:
            defaults["latent_dims"] = dims
        suite_file = path / "bench_suite.json"
        if suite_file.is_file():  # a folder that declares its own suite and scale (e.g. the toy suite)
            try:
                meta = json.loads(suite_file.read_text())
                suite_name, extra = meta["suite"], dict(meta.get("defaults", {}))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise BenchError(f"{suite_file}: not a bench suite file (needs a 'suite' name)") from None
            safe_component(suite_name, f"suite name in {suite_file}")
            check_suite_defaults(extra, suite_file)
            return BackboneInfo(shown, suite_name, {**defaults, **extra}, location=str(path.resolve()))
        return BackboneInfo(shown, suite or "sd", dict(defaults), location=str(path.resolve()))
    if location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise BenchError(f"backbone path not found: {location} (pass a diffusers StableDiffusionPipeline folder)")
    cached = find_in_hf_cache(location)
    if cached is None:
        raise BenchError(
            f"backbone {location!r} is not available offline: no folder of that name and no snapshot in the "
            f"Hugging Face cache {hf_cache_dir()}; copy a downloaded snapshot there (or set HF_HUB_CACHE) "
            f"or pass --backbone /path/to/pipeline_folder"
        )
    defaults = dict(defaults)
    defaults["latent_dims"] = latent_dims_of(cached) or defaults.get("latent_dims")
    return BackboneInfo(shown, suite or "sd", defaults, location=str(cached))
