"""The diffusion backbone: a diffusers StableDiffusionPipeline with LoRA, sampled
with DDIM + classifier-free guidance, and the log-prob of any stored step
recomputed under the current weights.

The same code serves real SD v1.4 and the tiny suites: everything goes through
`StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.store.atomic import atomic_write_bytes
from bench.train.sampling import Trajectory, ddim_mean_std, ddim_step_with_logprob, gaussian_noise, step_kl

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_config(rank: int, targets=LORA_TARGETS):
    """The adapter every run trains (peft's LoraConfig): rank r, alpha r, A ~ N(0, 1/r), B = 0."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))


def quiet_loading() -> None:
    """The harness shows its own progress; the libraries' loading bars are noise."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(location: str, dtype: torch.dtype = torch.float32):
    """Load a StableDiffusionPipeline offline from a folder, with DDIM as scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    quiet_loading()
    if not (Path(location) / "model_index.json").is_file():
        raise BenchError(f"backbone folder {location} has no model_index.json")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            location, local_files_only=True, dtype=dtype,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except OSError as e:
        raise BenchError(f"could not load the pipeline at {location}: {str(e).splitlines()[0]}") from None
    # DDPO and TDPO sample with DDIM whatever scheduler the checkpoint ships.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Backbone:
    """A pipeline plus the sampling settings of a run (T, guidance, eta)."""

    def __init__(self, pipe, num_steps: int, guidance_scale: float, eta: float = 1.0,
                 device: torch.device | str = "cpu", weight_dtype: torch.dtype = torch.float32):
        self.pipe = pipe
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
        self.scheduler = pipe.scheduler
        self.num_steps, self.guidance_scale, self.eta = num_steps, guidance_scale, eta
        self.device = torch.device(device)
        self.weight_dtype = weight_dtype
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            if module.dtype != weight_dtype:  # casting is only needed for mixed precision
                module.to(dtype=weight_dtype)
            module.to(self.device)
        self.vae.eval()
        self.text_encoder.eval()
        self.scheduler.set_timesteps(num_steps, device=self.device)
        self.timesteps = self.scheduler.timesteps.clone()
        self._lora_rank: int | None = None
        self.adapter = "default"
        """The run's LoRA adapter (peft's name); a lockstep group's runs each have their own (bench/train/lockstep.py)."""
        self.lockstep = None
        """The lockstep group whose calls this backbone's are merged with, or None (a serial run)."""
        from bench.train.compute import ComputeCounts

        self.counts = ComputeCounts()

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, rank: int = 4, targets=LORA_TARGETS) -> list[torch.nn.Parameter]:
        """LoRA as in DDPO: A ~ N(0, 1/r), B = 0, scale alpha/r = 1. LoRA stays fp32."""
        self.unet.add_adapter(lora_config(rank, targets))
        self._lora_rank = rank
        params = self.trainable_parameters()
        for p in params:
            p.data = p.data.float()
        return params

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The run's own adapter's LoRA weights (a lockstep group's UNet holds one adapter per run)."""
        tag = f".{self.adapter}."
        return [p for n, p in self.unet.named_parameters() if "lora_" in n and tag in n and p.requires_grad]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.unet, adapter_name=self.adapter)
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    def set_lora_state(self, state: dict) -> None:
        """Put `lora_state_dict`'s tensors back (resume)."""
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(self.unet, state, adapter_name=self.adapter)

    def save_lora(self, path: str | Path) -> str:
        """Save only the LoRA weights, atomically; returns the file's SHA-256 (recorded with the
        checkpoint and verified before it is scored). (Saving the whole pipeline with a peft
        adapter attached writes keys that `from_pretrained` silently re-initialises.)"""
        import hashlib

        from safetensors.torch import save

        # one metadata key: safetensors keeps metadata in a hash map whose order varies between saves,
        # and the checksum must not
        meta = {"bench": json.dumps({"format": "bench-lora", "rank": self._lora_rank, "targets": list(LORA_TARGETS)},
                                    sort_keys=True)}
        blob = save(self.lora_state_dict(), metadata=meta)
        atomic_write_bytes(Path(path), blob)
        return hashlib.sha256(blob).hexdigest()

    def load_lora(self, path: str | Path, sha256: str | None = None) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors import safe_open
        from safetensors.torch import load_file

        if sha256 is not None:
            import hashlib

            try:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError as e:
                raise BenchError(f"cannot read checkpoint {path}: {e.strerror}") from None
            if digest != sha256:
                raise BenchError(f"checkpoint {path} does not match its recorded checksum (corrupt or replaced)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise BenchError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
        if "bench" in meta:
            try:
                meta = json.loads(meta["bench"])
            except ValueError:
                meta = {}
        if meta.get("format") != "bench-lora":
            raise BenchError(f"{path} is not a bench LoRA checkpoint")
        rank = int(meta["rank"])
        if self._lora_rank is None:
            self.add_lora(rank)
        elif self._lora_rank != rank:
            raise BenchError(f"{path} has LoRA rank {rank}, the backbone has rank {self._lora_rank}")
        state = load_file(str(path))
        result = set_peft_model_state_dict(self.unet, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise BenchError(f"{path}: {len(unexpected)} LoRA keys do not match this backbone (e.g. {unexpected[0]})")

    # ------------------------------------------------------------------ model calls
    def autocast(self):
        if self.weight_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) text embeddings; the negative prompt is ""."""
        cond, uncond = self.pipe.encode_prompt(
            prompts, self.device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=None
        )
        return cond, uncond

    def predict_noise(self, latents, timesteps, cond, uncond) -> torch.Tensor:
        """Guided epsilon: uncond + g * (cond - uncond), from one batched UNet call."""
        t = torch.as_tensor(timesteps, device=self.device)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        with self.autocast():
            out = self._unet(torch.cat([latents, latents]).to(self.weight_dtype), torch.cat([t, t]),
                             torch.cat([uncond, cond]))
        eps_uncond, eps_cond = self.counts.unet_output(out).float().chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    def guided_noise(self, latents, timesteps, cond, uncond, guidance_scale: float) -> torch.Tensor:
        """`predict_noise` at another guidance than the run's. At guidance 1 (classifier-free guidance off,
        DiffusionNFT's recipe) the unconditional pass would be multiplied by zero: one conditional pass."""
        if guidance_scale != 1.0:
            saved, self.guidance_scale = self.guidance_scale, guidance_scale
            try:
                return self.predict_noise(latents, timesteps, cond, uncond)
            finally:
                self.guidance_scale = saved
        t = torch.as_tensor(timesteps, device=self.device)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        with self.autocast():
            out = self._unet(latents.to(self.weight_dtype), t, cond)
        return self.counts.unet_output(out).float()

    def _unet(self, sample, timestep, hidden) -> torch.Tensor:
        """Every UNet call of the backbone goes through here (a lockstep view merges it with its group's)."""
        return self.unet(sample, timestep, encoder_hidden_states=hidden).sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1], float32, (B, 3, H, W)."""
        self.counts.vae_decodes += latents.shape[0]
        with self.autocast():
            x = self.vae.decode(latents.to(self.weight_dtype) / self.vae.config.scaling_factor).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def decode_with_grad(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode` with the graph kept (AlignProp backpropagates through the VAE)."""
        self.counts.vae_decodes += latents.shape[0]
        with self.autocast():
            x = self.vae.decode(latents.to(self.weight_dtype) / self.vae.config.scaling_factor).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def initial_latents(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.unet.config.in_channels
        s = self.unet.config.sample_size
        # Noise is drawn on the CPU so that a seed gives the same images on any device;
        # a list of generators gives each sample its own (fixed evaluation seeds).
        return gaussian_noise((n, c, s, s), generator, torch.device("cpu")).to(self.device) \
            * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: torch.Generator | None = None,
               batch_size: int = 16, latents: torch.Tensor | None = None,
               kl_to_pretrained: bool = False, eta: float | None = None,
               guidance_scale: float | None = None) -> Trajectory:
        """Sample trajectories with DDIM(eta) + CFG and record each step's log-prob.
        `generator` is one generator for the whole call, or a list with one per prompt.
        With `kl_to_pretrained`, each step also runs the UNet with LoRA disabled and the
        trajectory records the summed closed-form step KL to the pretrained policy.
        `eta` and `guidance_scale` replace the run's for this call (DiffusionNFT's rollouts); at eta 0 a step
        is deterministic and has no density: its log-probs are NaN, so that no loss can use them unnoticed."""
        eta = self.eta if eta is None else eta
        parts = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            gen = generator[start:start + len(chunk)] if isinstance(generator, (list, tuple)) else generator
            x = self.initial_latents(len(chunk), gen) if latents is None else latents[start:start + len(chunk)]
            cond, uncond = self.encode_prompts(chunk)
            xs, nexts, lps = [], [], []
            kl = torch.zeros(len(chunk), device=self.device) if kl_to_pretrained else None
            for t in self.timesteps:
                eps = self.predict_noise(x, t, cond, uncond) if guidance_scale is None else \
                    self.guided_noise(x, t, cond, uncond, guidance_scale)
                if kl_to_pretrained:
                    with self.pretrained():
                        eps_ref = self.predict_noise(x, t, cond, uncond)
                    mean, std = ddim_mean_std(self.scheduler, eps, t, x, eta)
                    ref_mean, _ = ddim_mean_std(self.scheduler, eps_ref, t, x, eta)
                    kl += step_kl(mean, ref_mean, std)
                if eta == 0:
                    x_next = ddim_mean_std(self.scheduler, eps, t, x, 0.0)[0].to(x.dtype)
                    lp = torch.full((len(chunk),), float("nan"), device=self.device)
                else:
                    x_next, lp = ddim_step_with_logprob(self.scheduler, eps, t, x, eta=eta, generator=gen)
                xs.append(x)
                nexts.append(x_next)
                lps.append(lp)
                x = x_next
            parts.append(Trajectory(
                prompts=list(chunk), prompt_embeds=cond, negative_prompt_embeds=uncond,
                latents=torch.stack(xs, 1), next_latents=torch.stack(nexts, 1),
                log_probs=torch.stack(lps, 1), timesteps=self.timesteps.clone(), images=self.decode(x),
                kl_to_pretrained=kl,
            ))
        return Trajectory.cat(parts)

    @contextmanager
    def pretrained(self):
        """Inside the block the UNet is the pretrained policy (LoRA adapters disabled): the
        reference of KL penalties and log-ratios."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    @torch.no_grad()
    def step_log_probs(self, traj: Trajectory, batch_size: int) -> torch.Tensor:
        """(B, T) log-probs of every stored step under the current weights, `batch_size` samples per call."""
        n, T = traj.latents.shape[:2]
        cols = []
        for j in range(T):
            cols.append(torch.cat([self.log_prob(traj.index(range(s, min(s + batch_size, n))),
                                                 torch.full((min(batch_size, n - s),), j))
                                   for s in range(0, n, batch_size)]))
        return torch.stack(cols, 1)

    def log_prob(self, traj: Trajectory, step_index: torch.Tensor) -> torch.Tensor:
        """Log-prob of the stored step `step_index[i]` of sample i under the current
        weights (differentiable w.r.t. LoRA)."""
        step_index = torch.as_tensor(step_index, device=traj.latents.device, dtype=torch.long)
        rows = torch.arange(len(traj), device=traj.latents.device)
        x = traj.latents[rows, step_index]
        x_next = traj.next_latents[rows, step_index]
        t = traj.timesteps.to(self.device)[step_index.to(self.device)]
        eps = self.predict_noise(x, t, traj.prompt_embeds, traj.negative_prompt_embeds)
        _, lp = ddim_step_with_logprob(self.scheduler, eps, t, x, eta=self.eta, prev_sample=x_next)
        return lp


def build_backbone(location: str, num_steps: int, guidance_scale: float, eta: float = 1.0,
                   device="cpu", weight_dtype=torch.float32) -> Backbone:
    return Backbone(load_pipeline(location), num_steps, guidance_scale, eta, device, weight_dtype)
