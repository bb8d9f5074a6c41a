"""Run under torchrun with 2 CPU processes (gloo) by tests/test_distributed.py.

Trains one tiny DDPO run and records, per rank, what the stat tracker saw and
the final LoRA weights."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.train.runner import make_accelerator, train_run  # noqa: E402
from tests.helpers import make_spec  # noqa: E402
from methods.ddpo import DDPO  # noqa: E402

out = Path(sys.argv[1])
seen = []
original_advantages = DDPO.advantages


def recording_advantages(self, prompts, rewards):
    seen.append({"prompts": list(prompts), "rewards": [float(r) for r in rewards]})
    return original_advantages(self, prompts, rewards)


DDPO.advantages = recording_advantages
local_rewards = []

accelerator = make_accelerator("no")
spec = make_spec("ddpo-100", reward="jpeg-compressibility", num_steps=3, samples_per_epoch=16, budget=32,
                 num_checkpoints=2, train_batch_size=4, overrides={"lr": "1e-2"}, multiplier=4.0)

from bench.train import runner  # noqa: E402

orig_ctx_gather = runner.TrainContext.gather


def recording_gather(self, prompts, rewards):
    local_rewards.append([float(r) for r in rewards])
    return orig_ctx_gather(self, prompts, rewards)


runner.TrainContext.gather = recording_gather
holder = {}
orig_init = DDPO.__init__


def keep(self, ctx):
    orig_init(self, ctx)
    holder["bb"] = ctx.backbone


DDPO.__init__ = keep
train_run(spec, out, progress=False, accelerator=accelerator)
lora = holder["bb"].lora_state_dict()
torch.save(lora, out / f"lora_rank{accelerator.process_index}.pt")
(out / f"rank{accelerator.process_index}.json").write_text(json.dumps(
    {"world": accelerator.num_processes, "seen": seen, "local": local_rewards}))
