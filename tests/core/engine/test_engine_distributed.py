"""Two CPU processes (torchrun + Accelerate over gloo): both ranks train on their own shard of every batch, the
logged (cross-rank reduced) numbers agree, and only the main process writes the run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import engine_fakes as ef

HERE = Path(__file__).parent

WORKER = r"""
import json, os, sys
sys.path.insert(0, {here!r})
from pathlib import Path
import engine_fakes as ef
from slotrun import engine

tmp = Path(sys.argv[1])
rank = int(os.environ["RANK"])
records = []
metrics = engine.train(ef.recipe(tmp, 'data.log_dir="{tmp}"'), ef.plugins(), on_log=records.append)
(tmp / f"rank{{rank}}.json").write_text(json.dumps({{"logs": records, "metrics": metrics}}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_and_agree(tmp_path: Path) -> None:
    ef.recipe(tmp_path)  # write the recipe file once, before the workers read it
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(here=str(HERE), tmp=str(tmp_path)))
    # torchrun starts the processes; Accelerate finds them through its environment (RANK, WORLD_SIZE...)
    # and, with ACCELERATE_USE_CPU, joins them over gloo: what `accelerate launch` does on a GPU machine.
    # (`accelerate launch --cpu --num_processes 2` needs an MPI hostfile, which a test machine lacks.)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks[0]["logs"]] == list(range(1, 11))
    for a, b in zip(ranks[0]["logs"], ranks[1]["logs"], strict=True):
        for key in ("step", "loss", "loss_mse", "loss_aux", "grad_norm", "lr", "nonfinite_steps"):
            assert a[key] == b[key], key
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["metrics"]["count"] == 12.0  # every eval image counted once, across both ranks

    # Both ranks trained, each on its own half of each global batch of 4.
    data = {r: [x for x in ef.read_jsonl(tmp_path / f"data_rank{r}.jsonl") if x["split"] == "train"]
            for r in (0, 1)}
    assert len(data[0]) == len(data[1]) == 10
    for a, b in zip(data[0], data[1], strict=True):
        assert len(a["indices"]) == len(b["indices"]) == 2
        assert not set(a["indices"]) & set(b["indices"])

    # The run directory was written once, by the main process.
    run = tmp_path / "run"
    assert [r["step"] for r in ef.read_jsonl(run / "metrics.jsonl")] == list(range(1, 11))
    assert len(ef.read_jsonl(run / "eval.jsonl")) == 1
    assert (run / "checkpoints" / "step_0000010" / "COMPLETE").exists()
    state = torch.load(run / "checkpoints" / "step_0000010" / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2 and state["world_size"] == 2
