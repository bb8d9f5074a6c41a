"""Runs one RunSpec: builds the backbone and reward, hands a TrainContext to the
method, and owns the budget loop, checkpoints and shards.

The method interface is small on purpose:

    class Method:
        def __init__(self, ctx: TrainContext): ...
        def train_epoch(self, n: int, epoch: int) -> dict[str, float]:
            '''Sample n images on this process, score each exactly once with
            ctx.reward (that spends n reward queries), and train on them.'''
        gradient_updates: int   # optimizer steps so far

Data parallelism (accelerate launch / torchrun): every process gets the same
LoRA initialisation, samples its own share of the epoch with its own noise, and
averages LoRA gradients over processes before each optimizer step
(`ctx.sync_gradients`), so the weights stay identical. Rewards are gathered
over processes before normalisation (`ctx.gather`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.train.budget import CountedReward, RewardBudget
from bench.errors import BenchError, RunFailed, check_finite
from bench.store.atomic import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from bench.spec.runspec import RunSpec


@dataclass
class TrainContext:
    spec: RunSpec
    backbone: "object"
    reward: CountedReward
    prompts: list[str]
    accelerator: "object"
    generator: torch.Generator
    """Per-process noise generator (CPU)."""
    rng: np.random.Generator
    """Per-process generator for prompts and shuffling."""
    progress: bool = True
    scaler: "object" = None
    """bench.train.precision.LossScaler of the run (scales every backward in fp16; identity otherwise)."""
    timings: dict = None
    """Seconds per phase in the current epoch ('sampling', 'scoring', ...), read and reset by the runner."""
    epoch: int = 0
    """The epoch being trained (1-based; set by the runner)."""
    queries_before: int = 0
    """Reward queries of the run (all processes) before the epoch being trained (set by the runner): the
    update schedules carry fractions of an update across epochs with it."""
    grad_norms: list = None
    """The policy's gradient norm (before clipping) of every update this epoch; read and reset by the runner."""

    def __post_init__(self):
        self.timings = {}
        self.grad_norms = []

    def timed(self, phase: str):
        """Context manager adding the block's wall time to `timings[phase]`; in a lockstep group, less the time
        it waited on the other runs (its own work and its share of the merged calls)."""
        from contextlib import contextmanager

        @contextmanager
        def block():
            t0, o0 = time.perf_counter(), self.others_seconds()
            try:
                yield
            finally:
                own = time.perf_counter() - t0 - (self.others_seconds() - o0)
                self.timings[phase] = self.timings.get(phase, 0.0) + own
        return block()

    def others_seconds(self) -> float:
        """Seconds spent waiting on the other runs of a lockstep group so far (0 alone)."""
        others = getattr(self.backbone, "others_seconds", None)
        return others() if others is not None else 0.0

    @property
    def hp(self) -> dict:
        return self.spec.hp

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def sample_prompts(self, n: int) -> list[str]:
        """Training prompts drawn uniformly with replacement (as DDPO does)."""
        return [self.prompts[i] for i in self.rng.integers(0, len(self.prompts), size=n)]

    def sample_prompt_groups(self, sizes: list[int]) -> list[str]:
        """One uniformly drawn prompt per group, repeated `sizes[g]` times (group-wise
        methods such as PRDP and dense DPO compare images of the same prompt)."""
        return [p for p, k in zip(self.sample_prompts(len(sizes)), sizes) for _ in range(k)]

    def gather(self, prompts: list[str], rewards: torch.Tensor) -> tuple[list[str], np.ndarray]:
        """All processes' prompts and rewards, in rank order."""
        local = (list(prompts), rewards.detach().float().cpu().numpy().tolist())
        if self.world_size == 1:
            return local[0], np.asarray(local[1])
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, local)
        return [p for ps, _ in parts for p in ps], np.asarray([r for _, rs in parts for r in rs])

    def gather_array(self, local: np.ndarray) -> np.ndarray:
        """All processes' arrays, concatenated along the first axis in rank order."""
        if self.world_size == 1:
            return np.asarray(local)
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, np.asarray(local))
        return np.concatenate(parts)

    def gather_tensor(self, local: torch.Tensor) -> torch.Tensor:
        """`gather_array` for tensors: every process gets all rows, on its own device."""
        if self.world_size == 1:
            return local
        return torch.as_tensor(self.gather_array(local.detach().float().cpu().numpy())).to(local.device)

    def local_slice(self, n_local: int) -> slice:
        return slice(self.rank * n_local, (self.rank + 1) * n_local)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes (one flat all-reduce)."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def sample_and_score(self, prompts: list[str], latents: torch.Tensor | None = None, **sampler):
        """Sample one trajectory per prompt with the current policy (from `latents`, one initial noise per
        prompt, when given: GRPO shares one), then score each final image once with the training reward
        (len(prompts) reward queries). Returns (Trajectory, rewards as a float32 CPU tensor). `sampler`
        (eta, guidance_scale) replaces the run's sampling settings (DiffusionNFT's deterministic rollouts)."""
        crash_point(self.epoch, "mid")
        from bench.train.sampling import Trajectory

        n, bs = len(prompts), self.spec.sample_batch_size
        with self.bar(n, "sampling") as bar, self.timed("sampling"):
            parts = []
            for s in range(0, n, bs):
                parts.append(self.backbone.sample(prompts[s:s + bs], generator=self.generator, batch_size=bs,
                                                  latents=None if latents is None else latents[s:s + bs],
                                                  **sampler))
                bar.update(len(parts[-1]))
        traj = Trajectory.cat(parts)
        check_finite("sampled latents", traj.next_latents[:, -1])
        with self.bar(n, "scoring") as bar, self.timed("scoring"):
            chunks = []
            for s in range(0, n, bs):
                chunks.append(self.reward(traj.images[s:s + bs], traj.prompts[s:s + bs]))
                bar.update(len(chunks[-1]))
        return traj, torch.cat(chunks).float()

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                    disable=not (self.progress and self.accelerator.is_main_process))


def crash_point(epoch: int, phase: str) -> None:
    """Tests kill a run here: BENCH_CRASH_AT=EPOCH:PHASE ('mid': after an epoch's sampling, 'end':
    after its metrics are written, 'ckpt': after its checkpoint is written but before the state)."""
    if os.environ.get("BENCH_CRASH_AT") == f"{epoch}:{phase}":
        _die()


def _die() -> None:
    os._exit(137)  # as a kill -9 would: no cleanup, no flushing


def make_adamw(params, hp: dict, lr_key: str = "lr") -> torch.optim.AdamW:
    """AdamW from a method's hyperparameters (lr, adam_beta1/2, adam_eps, weight_decay).

    foreach: one kernel per operation over all LoRA tensors instead of a Python loop over them (torch's CPU
    default). The same operations in the same order, so the same bits as the loop (tested); on a CPU it is
    about 1.6x faster per step for the 112 small tensors of a toy LoRA, where a small update pays every step."""
    return torch.optim.AdamW(params, lr=hp[lr_key], betas=(hp["adam_beta1"], hp["adam_beta2"]),
                             weight_decay=hp["weight_decay"], eps=hp["adam_eps"], foreach=True)


def optimizer_step(ctx, optimizer, params, max_grad_norm: float) -> None:
    """End an update: unscale (fp16), average gradients over processes, clip the norm, step and
    zero. Shared by every method."""
    optimizer_steps(ctx, [(optimizer, params, max_grad_norm)])


def optimizer_steps(ctx, groups: list[tuple]) -> bool:
    """One update of several optimizers that share a backward (TDPO: LoRA and critic). With fp16 an
    update whose gradients overflowed is skipped for all of them and the loss scale halved; in fp32
    or bf16 a non-finite gradient stops the run. Returns whether the step was taken."""
    from bench.train.precision import LossScaler

    scaler = getattr(ctx, "scaler", None) or LossScaler("no")
    finite = all([scaler.unscale(params) for _, params, _ in groups])  # unscale every group, always
    for _, params, _ in groups:
        ctx.sync_gradients(params)
    if scaler.enabled and not finite:
        scaler.update(False)
        for optimizer, _, _ in groups:
            optimizer.zero_grad(set_to_none=True)
        return False
    for k, (optimizer, params, max_grad_norm) in enumerate(groups):
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        check_finite("gradient norm", float(norm))
        if k == 0 and hasattr(ctx, "grad_norms"):
            ctx.grad_norms.append(float(norm))  # the policy's, before clipping: logged per epoch
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scaler.update(True)
    return True


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def make_accelerator(mixed_precision: str = "no"):
    """Process topology only (rank, world size, device): precision is the runner's (bench/train/precision.py),
    since every backward and step goes through its loss scaling."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())


def backbone_location(spec: RunSpec) -> str:
    from bench.spec.runspec import resolve_backbone

    info = resolve_backbone(spec.backbone)
    if info.builder:
        from bench.spec.registry import load_target

        return str(load_target(info.builder)())
    return info.location


def load_reward(name: str, suite: str, device):
    from bench.spec.catalog import rewards

    entry = rewards.get(name)
    return entry.load()(suite=suite, device=device, **entry.meta.get("params", {}))


def run_dir_for(spec: RunSpec, out_dir: Path) -> Path:
    return Path(out_dir) / "runs" / spec.run_name


def is_finished(spec: RunSpec, out_dir: Path) -> bool:
    f = run_dir_for(spec, out_dir) / "run.json"
    return f.is_file() and json.loads(f.read_text()).get("status") == "finished"


def train_run(spec: RunSpec, out_dir: Path, progress: bool = True, accelerator=None, on_progress=None,
              restart: bool = False, log_with: str | None = None, backbone=None, lockstep: dict | None = None) -> dict:
    """Train one run to its budget. Returns the final `runs` row. `on_progress(n)` is called with
    the reward queries of each finished epoch (the grid's overall progress bar). `log_with`
    ('tensorboard' or 'wandb') also sends each epoch's metrics to that tracker (bench/train/trackers.py).

    A run that stopped (a crash, a kill) resumes from the training state saved with its last
    checkpoint (bench/train/state.py's RunState and the method's own state), so that it ends bit for bit where
    an uninterrupted run would. `restart` discards that state and starts over. `backbone` (with `lockstep`, the
    group's description recorded in run.json) is a lockstep group's view for this run (bench/train/lockstep.py)."""
    run = RunLoop(spec, out_dir, accelerator or make_accelerator(spec.mixed_precision), restart, lockstep)
    run.build(progress, backbone)
    return run.train(progress, on_progress, log_with)


class RunLoop:
    """One run's live pieces and its budget loop: the run row, the context and method, the checkpoint and metric
    rows, and the snapshot that resume reads back."""

    def __init__(self, spec: RunSpec, out_dir: Path, accelerator, restart: bool, lockstep: dict | None):
        from bench.store.provenance import git_commit, package_versions
        from bench.train.state import load_state, state_folder

        self.spec, self.accelerator = spec, accelerator
        world, self.rank = accelerator.num_processes, accelerator.process_index
        self.marks = spec.checkpoint_marks()
        if world > 1 and (spec.samples_per_epoch % world or any(m % world for m in self.marks)):
            raise BenchError(f"with {world} processes, samples per epoch ({spec.samples_per_epoch}) and every "
                             f"checkpoint mark {self.marks} must be multiples of {world}")
        self.run_dir = run_dir_for(spec, out_dir)
        self.main = accelerator.is_main_process
        self.state = None if restart else load_state(state_folder(self.run_dir, self.rank))
        previous = _read_json(self.run_dir / "run.json") if self.state is not None else None
        self.t_start = time.time() - (self.state["elapsed"] if self.state else 0.0)
        # CPU seconds carry over a resume like wall seconds; a snapshot from before they were kept leaves them unknown
        before = self.state.get("cpu_elapsed") if self.state else 0.0
        self.cpu_start = None if before is None else time.process_time() - before
        started = (previous or {}).get("started_at") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.row = dict(
            run_id=spec.run_name, config_hash=spec.config_hash, method=spec.method, reward=spec.reward,
            backbone=spec.backbone, suite=spec.suite, seed=spec.seed, budget=spec.budget, config=spec.to_dict(),
            package_versions=package_versions(), git_commit=git_commit(), started_at=started, finished_at=None,
            status="running", wall_time_s=None, world_size=world, threads=torch.get_num_threads(),
            resumed_from=self.state["budget_used"] if self.state else None, lockstep=lockstep,
        )
        if self.main:
            if self.state is None:  # a fresh start: an earlier attempt's files are superseded
                for stale in ("metrics.jsonl", "checkpoints.jsonl", "eval_timing.json"):
                    (self.run_dir / stale).unlink(missing_ok=True)
                for stale in ("scores", "grids", "eval_metrics", "state", "checkpoints"):
                    shutil.rmtree(self.run_dir / stale, ignore_errors=True)
            atomic_write_json(self.run_dir / "run.json", self.row)
        self.epoch = self.sampled = 0
        self.stop_scores: dict[int, float] = {}
        """Checkpoint mark index -> the stop rule's score there (RunSpec.stop_level)."""
        self.ckpt_rows: list[dict] = []
        self.metric_rows: list[dict] = []

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def cpu_elapsed(self) -> float | None:
        """The process's CPU seconds since the run started (all threads; a lockstep group's, like its wall)."""
        return None if self.cpu_start is None else time.process_time() - self.cpu_start

    def build(self, progress: bool, backbone=None) -> None:
        """The backbone with its LoRA, the counted reward, the context and the method; then the snapshot's state
        put back, if the run resumes."""
        from accelerate.utils import set_seed

        from bench.spec.catalog import methods
        from bench.spec.prompts import resolve_prompt_set
        from bench.train.backbone import build_backbone
        from bench.train.precision import DTYPES, LossScaler, resolve_precision
        from bench.train.state import RunState

        spec, device = self.spec, self.accelerator.device
        precision = resolve_precision(spec.mixed_precision, device)
        self.row["precision"] = precision
        if backbone is None:
            backbone = build_backbone(backbone_location(spec), spec.num_steps, spec.guidance_scale, spec.eta,
                                      device=device, weight_dtype=DTYPES[precision])
        set_seed(spec.seed)  # identical LoRA initialisation on every process
        backbone.add_lora(spec.lora_rank)
        self.reward = CountedReward(load_reward(spec.reward, spec.suite, device))
        # the stop rule's reward, uncounted: the training reward's own model unless the spec names another
        self.stop_model = self.reward.reward if spec.stop_reward is None else load_reward(spec.stop_reward, spec.suite,
                                                                                          device)
        self.reward.counts = backbone.counts
        _, prompts = resolve_prompt_set(spec.train_prompts)
        self.ctx = TrainContext(
            spec=spec, backbone=backbone, reward=self.reward, prompts=prompts, accelerator=self.accelerator,
            generator=torch.Generator().manual_seed(spec.seed * 100_003 + self.rank),
            rng=np.random.default_rng([spec.seed, self.rank]), progress=progress,
        )
        self.ctx.scaler = LossScaler(precision)
        self.method = methods.get(spec.method).load()(self.ctx)
        self.budget = RewardBudget(spec.budget, self.marks)
        if self.state is not None:
            RunState.from_dict(self.state).restore(self)
            # rows written after the snapshot belong to the epochs that will run again
            self.ckpt_rows = [r for r in _read_jsonl(self.run_dir / "checkpoints.jsonl")
                              if r["reward_queries"] <= self.budget.used]
            self.stop_scores = {r["mark_index"]: r["stop_score"] for r in self.ckpt_rows if "stop_score" in r}
            self.metric_rows = [r for r in _read_jsonl(self.run_dir / "metrics.jsonl") if r["epoch"] <= self.epoch]

    def snapshot(self) -> None:
        from bench.train.state import RunState, save_state, state_folder

        save_state(state_folder(self.run_dir, self.rank), RunState.capture(self).as_dict())

    def checkpoint(self) -> None:
        used = self.budget.used
        rel = f"checkpoints/q{used:08d}.safetensors"
        if self.main:
            backbone = self.ctx.backbone
            digest = backbone.save_lora(self.run_dir / rel)
            self.ckpt_rows.append(dict(
                run_id=self.spec.run_name, reward_queries=used, mark_index=self.marks.index(used), epoch=self.epoch,
                sampled_images=self.sampled, gradient_updates=self.method.gradient_updates,
                wall_time_s=round(self.elapsed(), 3), path=rel, sha256=digest, **backbone.counts.as_dict()))
            atomic_write_jsonl(self.run_dir / "checkpoints.jsonl", self.ckpt_rows)

    def train(self, progress: bool, on_progress=None, log_with: str | None = None) -> dict:
        """The budget loop: epochs until the budget is spent, a checkpoint (and a snapshot) at every mark."""
        from tqdm.auto import tqdm

        from bench.train.trackers import Tracker

        spec = self.spec
        tracker = Tracker(log_with if self.main else None, self.run_dir, spec.run_name, spec.to_dict())
        if self.state is None:
            self.checkpoint()  # the pretrained model (LoRA up-projections are zero)
        bar = tqdm(total=spec.budget, initial=self.budget.used, desc=f"{spec.method} s{spec.seed}", unit="query",
                   dynamic_ncols=True, disable=not (progress and self.main), leave=False)
        try:
            while not self.budget.exhausted:
                n, metrics = self.train_epoch()
                if self.main:
                    tracker.log_train(metrics, self.budget.used)
                crash_point(self.epoch, "end")
                bar.update(n)
                if on_progress is not None and self.main:
                    on_progress(n)
                bar.set_postfix(reward=f"{metrics.get('reward_mean', float('nan')):.3g}")
                if self.budget.at_mark():
                    self.checkpoint()
                    crash_point(self.epoch, "ckpt")
                    if self.stop_reached():
                        break
                    if not self.budget.exhausted:
                        self.snapshot()
        except Exception as e:  # mark the run failed (a kill never gets here, and stays 'running')
            bar.close()
            tracker.close()
            self.fail(e)
        bar.close()
        tracker.close()
        self.accelerator.wait_for_everyone()
        self.row.update(status="finished", finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        wall_time_s=round(self.elapsed(), 3), cpu_time_s=_rounded(self.cpu_elapsed()))
        if self.main:
            atomic_write_json(self.run_dir / "run.json", self.row)  # written last: marks the run finished
            shutil.rmtree(self.run_dir / "state", ignore_errors=True)  # a finished run needs no resume state
        return self.row

    def stop_reached(self) -> bool:
        """The stop rule (RunSpec.stop_level): this checkpoint's score is recorded in checkpoints.jsonl
        (`stop_score`), and True once the run has trained `stop_margin` marks past the first mark at or above the
        level (in the training reward's direction). The scores of earlier marks come back with a resumed run's
        checkpoint rows, so a resumed run decides as an uninterrupted one."""
        spec = self.spec
        if spec.stop_level is None:
            return False
        index = self.marks.index(self.budget.used)
        self.stop_scores[index] = score = self.stop_score()
        if self.main:
            self.ckpt_rows[-1]["stop_score"] = score
            atomic_write_jsonl(self.run_dir / "checkpoints.jsonl", self.ckpt_rows)
        sign = 1.0 if self.stop_model.higher_is_better else -1.0
        crossed = [i for i, v in sorted(self.stop_scores.items()) if sign * v >= sign * spec.stop_level]
        if not crossed or index - crossed[0] < spec.stop_margin or self.budget.exhausted:
            return False  # (at the cap the run ends anyway: not an early stop)
        self.row.update(stopped_at=self.budget.used, stop_crossed_at=self.marks[crossed[0]])
        return True

    def stop_score(self) -> float:
        """Mean training reward over the fixed-seed evaluation images of the training prompts at the current
        weights: the images evaluation will score for this checkpoint (bench/train/fixed_seeds.py). Not a reward
        query (evaluation, outside the budget); the compute counts and torch's generator are left as they were,
        so the rule does not change the training it watches."""
        from dataclasses import fields

        from bench.train.fixed_seeds import DEFAULT_EVAL_SEED, sample_fixed_traj

        spec, counts = self.spec, self.ctx.backbone.counts
        saved = {f.name: getattr(counts, f.name) for f in fields(counts)}
        rng = torch.get_rng_state()
        traj, keys = sample_fixed_traj(self.ctx.backbone, spec.train_prompts, self.ctx.prompts, spec.stop_per_prompt,
                                       DEFAULT_EVAL_SEED)
        with torch.no_grad():
            scores = self.stop_model.score(traj.images, [p for p, _ in keys])
        check_finite("stop-rule scores", scores)
        torch.set_rng_state(rng)
        for name, value in saved.items():
            setattr(counts, name, value)
        score = float(scores.double().mean())
        if self.accelerator.num_processes > 1:  # one decision for every process: the main one's number
            from accelerate.utils import broadcast_object_list

            score = broadcast_object_list([score])[0]
        return score

    def train_epoch(self) -> tuple[int, dict]:
        """One epoch of the method on its share of the budget, its metrics checked finite and written."""
        spec, ctx, reward = self.spec, self.ctx, self.reward
        n = self.budget.epoch_size(spec.samples_per_epoch)
        n_local = n // self.accelerator.num_processes
        reward.allow(n_local)
        before = reward.queries
        ctx.timings.clear()
        ctx.epoch = self.epoch + 1
        ctx.queries_before = self.budget.used
        skipped_before = ctx.scaler.skipped
        t0, others0 = time.time(), ctx.others_seconds()
        metrics = self.method.train_epoch(n_local, self.epoch)
        spent = reward.queries - before
        if spent != n_local:
            raise RuntimeError(f"{spec.method} spent {spent} reward queries in epoch {self.epoch}, expected {n_local}")
        self.budget.charge(n)
        self.sampled += n
        self.epoch += 1
        epoch_time = time.time() - t0
        phases = {f"time_{k}_s": v for k, v in ctx.timings.items()}
        # everything else in the epoch (a lockstep run's own part: not its waits on the other runs)
        phases["time_training_s"] = max(0.0, epoch_time - (ctx.others_seconds() - others0) - sum(phases.values()))
        ctx.timings.clear()
        metrics = {**metrics, **phases, "epoch_time_s": epoch_time, "gradient_updates": self.method.gradient_updates}
        if ctx.grad_norms:
            metrics["grad_norm"] = float(np.mean(ctx.grad_norms))
            metrics["grad_norm_zero_fraction"] = float(np.mean([g == 0 for g in ctx.grad_norms]))
        ctx.grad_norms.clear()
        if ctx.scaler.enabled:
            metrics.update(loss_scale=ctx.scaler.scale, skipped_steps=ctx.scaler.skipped - skipped_before)
        for k, v in metrics.items():
            if v is not None:
                check_finite(f"training metric {k}", float(v))
        for p in ctx.backbone.trainable_parameters():  # finite gradients and lr keep them finite; checked per epoch
            check_finite("LoRA weights", p)
        self.metric_rows += [dict(run_id=spec.run_name, epoch=self.epoch, reward_queries=self.budget.used, metric=k,
                                  value=float(v)) for k, v in metrics.items() if v is not None]
        if self.main:
            atomic_write_jsonl(self.run_dir / "metrics.jsonl", self.metric_rows)
        return n, metrics

    def fail(self, e: Exception):
        """Mark the run failed with one line (and the traceback in error.log when unexpected), then raise."""
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        reason = f"epoch {self.epoch + 1}: {first}"
        if not isinstance(e, (RunFailed, BenchError)):  # unexpected: keep the traceback for whoever debugs it
            import traceback

            log = self.run_dir / "error.log"
            if self.main:
                atomic_write_bytes(log, traceback.format_exc().encode())
            reason = f"{reason} ({type(e).__name__}; traceback in {log})"
        self.row.update(status="failed", error=reason, wall_time_s=round(self.elapsed(), 3))
        if self.main:
            atomic_write_json(self.run_dir / "run.json", self.row)
        raise RunFailed(f"run {self.spec.run_name}, {reason}") from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a half-written last line (a crash mid-write) is dropped."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows

