"""`python -m bench probe`: the attention / slot-collapse measures on hand-made outputs, and a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import __main__ as cli
from bench import probe
from result_files import result_file
from slotrun.types import DecoderOutput, Features, ModelOutput, Slots


def _output(attn: torch.Tensor, slots: torch.Tensor, masks: torch.Tensor) -> ModelOutput:
    b = attn.shape[0]
    return ModelOutput(features=Features(tokens=torch.zeros(b, attn.shape[2], 1), grid=(1, attn.shape[2])),
                       slots=Slots(slots=slots, attn=(attn,)),
                       decoded=DecoderOutput(losses={}, masks=masks), losses={}, loss=torch.tensor(0.5))


def test_uniform_attention_and_collapsed_slots() -> None:
    k, n = 4, 6
    attn = torch.full((2, k, n), 1.0 / k)
    slots = torch.ones(2, k, 3)  # all slots equal
    masks = torch.zeros(2, k, 2, 3)
    masks[:, 1] = 1.0  # slot 1 wins every pixel
    stats = probe.probe_stats(_output(attn, slots, masks))
    assert stats["attn_entropy"] == pytest.approx(1.0)
    assert stats["slot_spread"] == pytest.approx(0.0)
    assert stats["slots_used"] == 1.0 and stats["loss"] == 0.5


def test_one_hot_attention_and_distinct_slots() -> None:
    k, n = 2, 4
    attn = torch.zeros(1, k, n)
    attn[0, 0, :2] = 1.0
    attn[0, 1, 2:] = 1.0
    slots = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # distance sqrt(2), norms 1
    masks = torch.zeros(1, k, 1, 2)
    masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = 1.0
    stats = probe.probe_stats(_output(attn, slots, masks))
    assert stats["attn_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert stats["slot_spread"] == pytest.approx(math.sqrt(2.0))
    assert stats["slots_used"] == 2.0


@pytest.mark.slow
def test_probe_runs_tiny(tmp_path) -> None:
    args = ["probe", "--out", str(tmp_path), "--steps", "3", "--every", "2", "train.batch_size=4",
            "data.num_train=8", "data.num_val=4", "data.num_test=4", f"data.cache_dir={tmp_path / 'data'}"]
    assert cli.main(args) == 0
    rows = json.loads(result_file(tmp_path, "probe", "json").read_text())["result"]["rows"]
    assert [r["step"] for r in rows] == [0, 2, 3]
    for r in rows:
        assert 0.0 <= r["attn_entropy"] <= 1.0 and r["slot_spread"] >= 0.0 and 1.0 <= r["slots_used"] <= 5.0
    assert result_file(tmp_path, "probe", "md").read_text().split("\n\n", 1)[1].startswith("###")
