"""Checkpoints that are never half-written yet look complete.

    checkpoints/step_0000500/
        model.safetensors   the model's weights (safetensors: loading cannot run code)
        state.pt            optimiser, scheduler, step, counters, per-rank RNG and data position;
                            plain tensors/numbers only, loaded with torch.load(weights_only=True)
        COMPLETE            written last: {"step": 500, "files": {name: size in bytes}}

A checkpoint is written into checkpoints/.tmp-step_0000500-PID, each file fsynced, the directory renamed to
its final name, then COMPLETE written and fsynced. Loading takes the newest directory whose COMPLETE marker
exists and whose file sizes match it, so a kill or a full disk at any moment leaves the previous checkpoint
the one that loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from slotrun.errors import UserError
from slotrun.files import fsync_dir, fsync_file

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MARKER = "COMPLETE"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def save(folder: Path, step: int, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically; returns its directory. On failure (disk full...) nothing that
    looks complete is left behind and the previous checkpoints are untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:07d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS))
        with open(tmp / STATE, "wb") as f:
            torch.save({"format": FORMAT, "step": step, **state}, f)
        for name in (WEIGHTS, STATE):
            fsync_file(tmp / name)
        sizes = {name: (tmp / name).stat().st_size for name in (WEIGHTS, STATE)}
        if final.exists():  # a leftover without its marker, or the same step written again
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(folder)
        marker = final / MARKER
        with open(marker, "w", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "files": sizes}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists() and not (final / MARKER).exists():
            shutil.rmtree(final, ignore_errors=True)
        previous = latest(folder)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"could not write checkpoint {final}: {exc.strerror or exc}; {kept}") from None
    return final


def is_complete(path: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        return all((path / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else -1


def complete(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and step_of(p) >= 0 and is_complete(p)]
    return sorted(found, key=step_of)


def latest(folder: Path) -> Path | None:
    found = complete(folder)
    return found[-1] if found else None


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and any incomplete or temporary
    directory (left by a killed write). Only the lock holder calls this."""
    done = complete(folder)
    for path in done[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(".tmp-step_") or (path.is_dir() and step_of(path) >= 0 and path not in done):
            shutil.rmtree(path, ignore_errors=True)


def _shape_mismatches(model: nn.Module, weights: Path) -> list[str]:
    """'name: checkpoint [..], model [..]' for each tensor whose stored shape differs from the model's."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - an unreadable file is reported by load_model below
        return []
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return [f"{k}: checkpoint {list(stored[k])}, model {list(shape)}" for k, shape in wanted.items()
            if k in stored and stored[k] != shape]


def load_weights(model: nn.Module, path: Path) -> None:
    wrong = _shape_mismatches(model, path / WEIGHTS)
    if wrong:
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise UserError(f"the weights in {path} do not fit this model ({shown}); overrides may only change "
                        "settings that keep parameter shapes (e.g. model.grouper.iters, num_slots)")
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS), strict=False)
    except (RuntimeError, ValueError) as exc:  # shape mismatch: an override changed a parameter's shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the weights in {path} do not fit this model ({first}); overrides may only change "
                        "settings that keep parameter shapes (e.g. model.grouper.iters, num_slots)") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(sorted(missing)[:5]))
        if unexpected:
            parts.append("unexpected " + ", ".join(sorted(unexpected)[:5]))
        raise UserError(f"the weights in {path} do not fit this model ({'; '.join(parts)})")


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable or unsafe file is reported, never executed
        raise UserError(f"cannot read {path / STATE}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path / STATE} is not a slotrun checkpoint state (format {FORMAT})")
    return state
