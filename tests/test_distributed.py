"""Data parallelism: 2 CPU processes with the gloo backend."""

import json
import os
import socket
import subprocess
import sys

import torch

from tests.conftest import ROOT


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gather_rewards_and_keep_lora_in_sync(tmp_path, tiny_dir):
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "tests/dist_worker.py", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(x["world"] == 2 for x in ranks)
    for epoch in range(2):  # budget 32 at 16 per epoch
        seen0, seen1 = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        # the stat tracker on both ranks saw the whole epoch: rank 0's 8 rewards then rank 1's
        assert seen0 == seen1 and len(seen0["rewards"]) == 16
        expected = ranks[0]["local"][epoch] + ranks[1]["local"][epoch]
        assert seen0["rewards"] == expected
        assert ranks[0]["local"][epoch] != ranks[1]["local"][epoch]  # each rank sampled its own images
    lora0, lora1 = (torch.load(tmp_path / f"lora_rank{i}.pt", weights_only=True) for i in range(2))
    assert lora0.keys() == lora1.keys()
    assert all(torch.equal(lora0[k], lora1[k]) for k in lora0), "LoRA weights diverged across processes"
    assert any(lora0[k].abs().max() > 0 for k in lora0 if "lora_B" in k), "training did not change LoRA"
