"""Devices and processes through HuggingFace Accelerate: one CPU, one GPU, or many under `accelerate launch`.

The data is never wrapped in an Accelerate DataLoader: each rank asks the DataSource for its own shard
(rank, world_size), so the order of batches is a pure function of (seed, epoch) and a run resumes exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from slotrun.errors import UserError


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """fp32 on CPU whatever the recipe asks (CPU autocast is slow and changes the numbers); bf16/fp16 on GPU.
    fp16 must see a CUDA device: on CPU the recipe's choice is ignored rather than refused, so one recipe
    runs everywhere."""
    cpu = not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else mixed_precision)


def broadcast(accelerator: Accelerator, value: Any) -> Any:
    """The main process's `value` on every rank (picklable objects, decided once: e.g. which checkpoint)."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gather(accelerator: Accelerator, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [value]
    return list(gather_object([value]))


def raise_together(accelerator: Accelerator, error: str | None) -> None:
    """A user error found on the main process only (lock, recipe mismatch) stops every rank, instead of
    leaving the others waiting forever at the next collective."""
    error = broadcast(accelerator, error)
    if error:
        raise UserError(error)


def per_rank_batch(batch_size: int, world_size: int, what: str = "train.batch_size") -> int:
    """Recipes give the global batch size, so a recipe trains the same on 1 or 8 GPUs."""
    if batch_size % world_size:
        raise UserError(f"{what}={batch_size} is not divisible by the {world_size} processes; choose a batch "
                        f"size that is a multiple of {world_size}")
    return batch_size // world_size
