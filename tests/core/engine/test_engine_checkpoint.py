"""Checkpoints: atomic writes, the COMPLETE marker decides, pruning, weights_only state, full disks."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slotrun.engine import checkpoint, rng
from slotrun.errors import UserError


def state() -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), eps=1e-7)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "ranks": [{"rng": rng.capture(torch.device("cpu")),
                                                      "data": {"epoch": 1, "index": 2}}]}


def test_newest_complete_wins_and_incomplete_is_ignored(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    checkpoint.save(tmp_path, 5, model, state())
    checkpoint.save(tmp_path, 10, model, state())
    # A kill during a write leaves a directory without its marker, or with a truncated file.
    unmarked = tmp_path / "step_0000015"
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"half")
    truncated = tmp_path / "step_0000020"
    checkpoint.save(tmp_path, 20, model, state())
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(8)
    assert checkpoint.latest(tmp_path).name == "step_0000010"
    loaded = checkpoint.load_state(checkpoint.latest(tmp_path))  # weights_only=True inside
    assert loaded["step"] == 10 and loaded["ranks"][0]["data"] == {"epoch": 1, "index": 2}
    assert json.loads((tmp_path / "step_0000010" / "COMPLETE").read_text())["step"] == 10


def test_prune_keeps_the_newest_and_removes_leftovers(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, model, state())
    (tmp_path / "step_0000009").mkdir()
    (tmp_path / ".tmp-step_0000004-123").mkdir()
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000003"]


def test_rng_state_roundtrips_through_a_checkpoint(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    rng.seed_all(3)
    checkpoint.save(tmp_path, 1, nn.Linear(1, 1), {"ranks": [{"rng": rng.capture(cpu)}]})
    expected = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    rng.seed_all(99)
    rng.restore(checkpoint.load_state(tmp_path / "step_0000001")["ranks"][0]["rng"], cpu)
    got = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(3, 2)
    checkpoint.save(tmp_path, 5, model, state())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(UserError, match="No space left on device.*step_0000005 is intact"):
        checkpoint.save(tmp_path, 10, model, state())
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000005"]
    assert checkpoint.latest(tmp_path).name == "step_0000005"


def test_weights_that_do_not_fit_are_a_user_error(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, nn.Linear(3, 2), {})
    with pytest.raises(UserError, match="do not fit this model"):
        checkpoint.load_weights(nn.Linear(4, 2), tmp_path / "step_0000001")


def test_state_file_that_needs_code_is_refused(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, nn.Linear(1, 1), {})
    path = tmp_path / "step_0000001"
    torch.save({"format": 1, "evil": Path("x")}, path / "state.pt")  # an arbitrary class: not weights_only
    with pytest.raises(UserError, match="cannot read"):
        checkpoint.load_state(path)
