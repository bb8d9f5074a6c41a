"""Lockstep: runs whose updates have the same shape train in one process, and every UNet call
and every backward carries the rows of all of them.

Why: the per-step methods train on a few rows per update (4 for the TDPO family on the toy), where a
UNet call costs about twice its large-batch rate per row (issue 22). G seeds of one method, or the TDPO
family's variants (bench/grid.py: `lockstep_key`), make the same calls in the same order, so one call of G x the
rows does the work of G.

How, without touching the methods' per-run code:
- Each run keeps its own LoRA: one adapter per run on the shared frozen UNet, applied to exactly its run's rows
  (`adapter_blocks`: two batched matmuls per layer; peft's mixed-batch forward where that does not apply), and
  its own optimizer, critic,
  generators, stat tracker, checkpoints, metrics and resume state, as in a serial run.
- The runs take turns, one at a time in a fixed order (`Lockstep`), each until its next UNet call or
  backward. When the last one has asked, that call runs once for all of them: the inputs concatenated,
  the output split back; a backward is one `torch.autograd.backward` over the runs' losses (each run's
  gradient reaches only its own adapter). Turn-taking makes the group deterministic, and each run sees
  its own stream of torch's global generator (swapped at every turn), as it would alone: the TDPO
  critic's dropout draws from it.
- Differences from a serial run: the frozen layers' GEMMs run on the merged batch, whose size moves
  the last bits of their sums; nothing else. How far that carries over a run is measured and tested
  (tests/test_lockstep.py). The same group, in the same order, gives the same bits every time.
- A run whose calls stop matching the others' (a method whose call sequence depends on its data), or
  that fails, stops the group: the others are told (`LockstepAborted`) and resume serially from their
  last checkpoints (bench/grid.py).
"""

from __future__ import annotations

import threading
import time
import warnings
from contextlib import contextmanager
from functools import partial

import torch

from bench.train.backbone import Backbone


class LockstepAborted(RuntimeError):
    """Another run of the group failed or diverged; this run resumes serially from its last checkpoint."""


class Lockstep:
    """Turn-taking and call merging for `n` runs in threads of one process."""

    def __init__(self, n: int, merge: bool = True):
        self.n = n
        self.merge = merge
        """False: every run's call runs on its own rows only, still in turns (tests: the machinery without the
        merged GEMMs' rounding must give each run's serial bits)."""
        self.cond = threading.Condition()
        self.turn = 0
        self.alive = [True] * n
        self.requests: dict[int, tuple] = {}
        self.results: dict[int, object] = {}
        self.rng: list[torch.Tensor | None] = [None] * n
        self.error: str | None = None
        """Why the group stopped (None while it runs)."""
        self.culprit: int | None = None
        """The run whose own failure stopped the group (None: it ran through, or the merged call failed)."""
        self.others_s = [0.0] * n
        """Per run, the seconds it spent waiting on the others: in its asks, the other runs' turns and the merged
        calls but its equal share of them. A phase timer minus what this grew by during the phase is the run's own
        work (`TrainContext.timed`): only one run works at a time, so the runs' own seconds add up to the group's."""
        self.share_s: dict[int, float] = {}
        self.layers: tuple | None = None
        """(the shared UNet, its LoRA layers): see `_layers`."""

    # ---------------------------------------------------------------- turns
    def enter(self, i: int) -> None:
        """Block until it is run i's first turn (runs start in index order)."""
        with self.cond:
            self._wait(i, lambda: True)

    def leave(self, i: int, error: BaseException | None = None) -> None:
        """Run i is done (or failed: then the group stops)."""
        with self.cond:
            self.alive[i] = False
            if error is not None and self.error is None and not isinstance(error, LockstepAborted):
                self.culprit = i
                self.error = f"run {i} of the group stopped ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            self._advance(i)

    def _wait(self, i: int, ready) -> None:
        while self.error is None and not (self.turn == i and ready()):
            self.cond.wait()
        if self.error is not None:
            raise LockstepAborted(self.error)
        if self.rng[i] is not None:
            torch.set_rng_state(self.rng[i])

    def _advance(self, i: int) -> None:
        """After run i's turn: the next live run that has not asked yet, or, when every live run has, the
        merged call, and then the round starts again at the first live run."""
        nxt = next((j for j in range(i + 1, self.n) if self.alive[j]), None)
        if nxt is None:
            live = [j for j in range(self.n) if self.alive[j]]
            if live and self.error is None:
                try:
                    self._execute(live)
                except BaseException as e:  # the merged call itself failed: every run stops
                    self.error = f"the merged call failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            nxt = live[0] if live else None
        self.turn = nxt
        self.cond.notify_all()

    def ask(self, i: int, request: tuple):
        """Run i's UNet call or backward: its turn ends here; returns once the merged call has run."""
        t0 = time.perf_counter()
        with self.cond:
            if self.error is not None:
                raise LockstepAborted(self.error)
            self.rng[i] = torch.get_rng_state()
            self.requests[i] = request
            self._advance(i)
            self._wait(i, lambda: i in self.results)
            self.others_s[i] += time.perf_counter() - t0 - self.share_s.pop(i, 0.0)
            return self.results.pop(i)

    # ---------------------------------------------------------------- the merged call
    def _layers(self, unet) -> list:
        """The shared UNet's LoRA layers, found once: walking its ~2,000 modules took about 4 ms of every merged
        call, a tenth of a TDPO run's update on the toy."""
        if self.layers is None or self.layers[0] is not unet:
            self.layers = (unet, lora_layers(unet))
        return self.layers[1]

    def _execute(self, live: list[int]) -> None:
        t0 = time.perf_counter()
        try:
            self._merged_call(live)
        finally:
            share = (time.perf_counter() - t0) / len(live)
            for j in live:
                self.share_s[j] = share

    def _merged_call(self, live: list[int]) -> None:
        requests = [self.requests.pop(j) for j in live]
        kinds = {r[0] for r in requests}
        if len(kinds) > 1 or (requests[0][0] == "unet" and len({r[1] for r in requests}) > 1):
            sig = ", ".join(f"run {j}: {r[0]}{r[1] if r[0] == 'unet' else ''}" for j, r in zip(live, requests))
            raise LockstepDiverged(f"lockstep runs diverged ({sig})")
        if requests[0][0] == "backward":
            losses = [r[1] for r in requests]
            with torch.enable_grad():
                torch.autograd.backward(losses)
            for j in live:
                self.results[j] = None
            return
        _, (grad, _, _, _), unet, autocast = requests[0][:4]
        batches = [requests] if self.merge else [[r] for r in requests]
        parts = []
        for batch in batches:
            samples = torch.cat([r[4] for r in batch])
            timesteps = torch.cat([r[5] for r in batch])
            hidden = torch.cat([r[6] for r in batch])
            blocks = [(r[7], len(r[4])) for r in batch]
            with torch.set_grad_enabled(grad), autocast, adapter_blocks(unet, blocks, self.merge, self._layers(unet)):
                out = unet(samples, timesteps, encoder_hidden_states=hidden).sample
            parts += out.split([len(r[4]) for r in batch])
        for j, part in zip(live, parts):
            self.results[j] = part


class LockstepDiverged(RuntimeError):
    """The runs of a group asked for different calls at the same point."""


def _adapter_names_hook(module, args, kwargs, names):
    kwargs["adapter_names"] = names
    return args, kwargs


@contextmanager
def adapter_rows(unet, names: list[str]):
    """Every LoRA layer of `unet` applies adapter names[k] to row k ('__base__': none) for the block."""
    handles = [m.register_forward_pre_hook(partial(_adapter_names_hook, names=names), with_kwargs=True)
               for m in lora_layers(unet)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Padding:
    """Where the rows of a merged call's blocks go in a (G, longest block) padded batch, for `_padded_lora`: `rows`
    are the adapters' rows of the call in order ('__base__' rows left out), `slots` their places in the padding.
    Equal blocks, each with an adapter, are already that batch (`identity`: no copies)."""

    def __init__(self, blocks: list[tuple[str, int]]):
        self.names, self.longest, rows, slots, start = [], max(k for _, k in blocks), [], [], 0
        for name, k in blocks:
            if name != "__base__":
                g = len(self.names)
                self.names.append(name)
                rows += range(start, start + k)
                slots += range(g * self.longest, g * self.longest + k)
            start += k
        self.every_row = len(rows) == start
        self.identity = self.every_row and len({k for _, k in blocks}) == 1
        self._rows, self._slots = torch.tensor(rows), torch.tensor(slots)
        self._on: dict = {}

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self._rows.to(device), self._slots.to(device))
        return self._on[device]


def _padded_lora(module, args, output, padding: _Padding):
    """The LoRA deltas of a merged call's contiguous row blocks, one adapter each, as two batched matmuls over a
    (G, longest block) batch. Unequal blocks (the scale rule's fractional update sizes give the seeds of a group
    windows of q or q + 1 rows in different orders) are copied into a zero-padded batch and the padding dropped;
    '__base__' blocks get no delta. Why: peft's mixed-batch path (a gather and a scatter per adapter per layer)
    cost more than merging saved, and a tenth of a TDPO group's time where blocks were unequal."""
    x = args[0]
    names, G, longest = padding.names, len(padding.names), padding.longest
    down = torch.stack([module.lora_A[n].weight for n in names])  # (G, r, d): each run's own parameters
    up = torch.stack([module.lora_B[n].weight for n in names])  # (G, out, r)
    flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(down.dtype)  # (rows, tokens, d)
    if padding.identity:
        padded = flat
    else:
        rows, slots = padding.on(x.device)
        source = flat if padding.every_row else flat.index_select(0, rows)
        padded = flat.new_zeros(G * longest, *flat.shape[1:]).index_copy(0, slots, source)
    delta = torch.bmm(torch.bmm(padded.reshape(G, -1, flat.shape[-1]), down.transpose(1, 2)), up.transpose(1, 2))
    delta = (delta * module.scaling[names[0]]).reshape(G * longest, flat.shape[1], -1)
    if not padding.identity:
        delta = delta.index_select(0, slots)
    if padding.every_row:
        return output + delta.reshape(output.shape).to(output.dtype)
    out_flat = output.reshape(output.shape[0], flat.shape[1], -1)
    return out_flat.index_add(0, rows, delta.to(output.dtype)).reshape(output.shape)


def lora_layers(unet) -> list:
    """The UNet's peft LoRA layers, in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


@contextmanager
def adapter_blocks(unet, blocks: list[tuple[str, int]], batched: bool = True, layers: list | None = None):
    """Rows in contiguous blocks (adapter name, rows), in order ('__base__': no adapter), through the batched
    low-rank path (`_padded_lora`: two bmm per layer); a LoRA layer whose modules are being observed (TDPO's
    dormant-neuron hooks), or `batched=False`, through peft's mixed-batch path. `layers`: the UNet's LoRA layers
    (`lora_layers`) when the caller keeps them (a group's adapters are all made before its first call)."""
    layers = lora_layers(unet) if layers is None else layers
    names = [n for n, _ in blocks]
    observed = any(m.lora_A[n]._forward_hooks or m.lora_A[n]._forward_pre_hooks
                   for m in layers for n in set(names) if n in m.lora_A)
    if not batched or observed:
        with adapter_rows(unet, [n for n, k in blocks for _ in range(k)]):
            yield
        return
    # every row skipping its adapter: the frozen layers alone
    hook = partial(_padded_lora, padding=_Padding(blocks)) if any(n != "__base__" for n in names) else None
    saved = [(m, m._active_adapter) for m in layers]
    handles = []
    try:
        for m in layers:
            m._active_adapter = []  # peft's own forward: the frozen layer only (requires_grad untouched)
            if hook is not None:
                handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, active in saved:
            m._active_adapter = active


def adapter_name(i: int) -> str:
    return f"lockstep{i}"


class LockstepBackbone(Backbone):
    """Run i's view of a backbone shared by a lockstep group: its own adapter, its calls merged."""

    def __init__(self, shared: Backbone, group: Lockstep, index: int, lora_rng: torch.Tensor):
        self.__dict__.update({k: v for k, v in shared.__dict__.items() if k != "counts"})
        from bench.train.compute import ComputeCounts

        self.counts = ComputeCounts()
        self.lockstep, self.index, self.adapter = group, index, adapter_name(index)
        self._lora_rng = lora_rng
        self._pretrained = False

    def add_lora(self, rank: int = 4, targets=None) -> list[torch.nn.Parameter]:
        """The adapter was made when the group was built (`build_group`); here the global generator is put
        where this run's own LoRA initialisation would have left it."""
        if rank != self._lora_rank:
            raise ValueError(f"the group's adapters have rank {self._lora_rank}, not {rank}")
        torch.set_rng_state(self._lora_rng)
        return self.trainable_parameters()

    def load_lora(self, path, sha256=None) -> None:
        raise NotImplementedError("a lockstep run trains; its checkpoints are evaluated by a serial backbone")

    @contextmanager
    def pretrained(self):
        """This run's rows skip its adapter (the other runs' calls are not affected)."""
        saved, self._pretrained = self._pretrained, True
        try:
            yield
        finally:
            self._pretrained = saved

    def _unet(self, sample, timestep, hidden):
        signature = (torch.is_grad_enabled(), tuple(sample.shape[1:]), tuple(hidden.shape[1:]), str(sample.dtype))
        return self.lockstep.ask(self.index, ("unet", signature, self.unet, self.autocast(), sample, timestep,
                                              hidden, "__base__" if self._pretrained else self.adapter))

    def backward(self, loss: torch.Tensor) -> None:
        self.lockstep.ask(self.index, ("backward", loss))

    def others_seconds(self) -> float:
        """Seconds this run has so far waited on the rest of its group (`Lockstep.others_s`)."""
        return self.lockstep.others_s[self.index]


def build_group(shared: Backbone, seeds: list[int], rank: int, merge: bool = True) -> tuple[Lockstep, list[LockstepBackbone]]:
    """One adapter per run, initialised as a serial run's (the global generator seeded with the run's seed,
    then the adapter made: `set_seed` as in bench/train/runner.py), all of them active and trainable."""
    from accelerate.utils import set_seed

    from bench.train.backbone import lora_config

    group = Lockstep(len(seeds), merge)
    after = []
    for i, seed in enumerate(seeds):
        set_seed(seed)
        config = lora_config(rank)
        with warnings.catch_warnings():  # peft warns that a model with several adapters has several adapters
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            shared.unet.add_adapter(config, adapter_name=adapter_name(i))
        after.append(torch.get_rng_state())
    shared.unet.set_adapter([adapter_name(i) for i in range(len(seeds))])  # every adapter active and trainable
    for n, p in shared.unet.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    shared._lora_rank = rank
    return group, [LockstepBackbone(shared, group, i, after[i]) for i in range(len(seeds))]


def train_group(specs, out_dir, restart: bool = False, log_with: str | None = None, on_progress=None,
                merge: bool = True) -> list:
    """Train `specs` (one `lockstep_key`: one setting, different seeds or TDPO variants) in lockstep, one thread per run. Returns, per
    run, its `runs` row, the exception it failed with itself, or `LockstepAborted` for a run that did nothing
    wrong (another run failed, or the calls diverged): it resumes serially from its last checkpoint."""
    from bench.train.precision import DTYPES, resolve_precision
    from bench.train.backbone import build_backbone
    from bench.train.runner import backbone_location, make_accelerator, train_run

    first = specs[0]
    accelerator = make_accelerator(first.mixed_precision)
    dtype = DTYPES[resolve_precision(first.mixed_precision, accelerator.device)]
    shared = build_backbone(backbone_location(first), first.num_steps, first.guidance_scale, first.eta,
                            device=accelerator.device, weight_dtype=dtype)
    group, views = build_group(shared, [s.seed for s in specs], first.lora_rank, merge)
    members = [s.run_name for s in specs]
    results: list = [None] * len(specs)

    def work(i: int) -> None:
        error = None
        try:
            group.enter(i)
            results[i] = train_run(specs[i], out_dir, progress=False, accelerator=accelerator,
                                   on_progress=on_progress and partial(on_progress, specs[i].run_name),
                                   restart=restart, log_with=log_with, backbone=views[i],
                                   lockstep={"runs": members, "index": i, "phase_seconds": "own"})
        except BaseException as e:  # noqa: BLE001 (reported per run by the caller)
            error = results[i] = e
        finally:
            group.leave(i, error)

    threads = [threading.Thread(target=work, args=(i,), name=f"lockstep-{s.run_name}", daemon=True)
               for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # a timed join, so that Ctrl-C reaches this thread
            t.join(0.5)
    return [r if not isinstance(r, BaseException) or i == group.culprit else LockstepAborted(group.error or str(r))
            for i, r in enumerate(results)]
