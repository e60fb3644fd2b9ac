"""Farthest-point-sampled initial slots (`init = "fps"`): which tokens are picked, order invariance, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.types import Features
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_slot_attention.slot_init import SlotInit, farthest_point_indices


def test_picks_the_outlier_first_then_the_farthest_clusters() -> None:
    # Three tight clusters of tokens (a big "background" one, two small "objects"; orthogonal after the
    # LayerNorm) and one token unlike all of them: the outlier comes first, then one token from each cluster.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, -1, 0, 0, 0, 0], [0, 0, 1, -1, 0, 0], [0, 0, 0, 0, 1, -1]])
    sizes = (20, 5, 5)
    tokens = torch.cat([c + 0.01 * torch.randn(n, 6, generator=g) for c, n in zip(centres, sizes)])
    tokens = torch.cat([tokens, torch.tensor([[1.0, 1, 1, -1, -1, -1]])])[None]
    picks = farthest_point_indices(tokens, 4)[0].tolist()
    assert picks[0] == 30  # the outlier
    clusters = [0 if i < 20 else 1 if i < 25 else 2 for i in picks[1:]]
    assert sorted(clusters) == [0, 1, 2]  # one per cluster, none twice


def test_distances_are_on_layer_normalised_tokens() -> None:
    tokens = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(1))
    scaled = tokens * 5.0 + 3.0  # a per-token affine change the LayerNorm removes
    assert torch.equal(farthest_point_indices(tokens, 4), farthest_point_indices(scaled, 4))
    x = F.layer_norm(tokens, (6,))
    first = (x - x.mean(dim=1, keepdim=True)).square().sum(-1).argmax(dim=1)
    assert torch.equal(farthest_point_indices(tokens, 1)[:, 0], first)


def test_more_slots_than_tokens_repeats_tokens() -> None:
    picks = farthest_point_indices(torch.randn(1, 3, 4), 5)
    assert picks.shape == (1, 5) and set(picks[0, :3].tolist()) == {0, 1, 2}


def test_fps_slots_are_invariant_to_token_order_and_need_tokens() -> None:
    torch.manual_seed(0)
    grouper = SlotAttention(16, slot_dim=8, num_slots=4, mlp_hidden=16, init="fps")
    tokens = torch.randn(2, 12, 16)
    perm = torch.randperm(12)
    out = grouper(Features(tokens=tokens, grid=(3, 4)))
    shuffled = grouper(Features(tokens=tokens[:, perm], grid=(3, 4)))
    torch.testing.assert_close(shuffled.slots, out.slots, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.attn[-1], out.attn[-1][:, :, perm], atol=1e-5, rtol=1e-5)
    again = grouper(Features(tokens=tokens, grid=(3, 4)))
    assert torch.equal(again.slots, out.slots)  # no noise: the same tokens give the same slots
    assert grouper(Features(tokens=tokens, grid=(3, 4)), num_slots=6).slots.shape == (2, 6, 8)
    with pytest.raises(ValueError, match="pass them"):
        grouper.init(2, 4)
    with pytest.raises(ValueError, match="in_dim"):
        SlotInit(8, 4, "fps")


def test_fps_init_is_the_projection_of_the_picked_tokens_and_learns() -> None:
    torch.manual_seed(0)
    init = SlotInit(8, 3, "fps", in_dim=16)
    tokens = torch.randn(2, 12, 16, requires_grad=True)
    slots = init(2, 3, tokens=tokens)
    picks = farthest_point_indices(tokens, 3)
    want = init.project(torch.stack([tokens[b, picks[b]] for b in range(2)]))
    torch.testing.assert_close(slots, want)
    slots.square().sum().backward()
    assert init.project[1].weight.grad.abs().sum() > 0
    assert tokens.grad[0, picks[0]].abs().sum() > 0  # the picked tokens get gradient ...
    unpicked = [i for i in range(12) if i not in picks[0].tolist()]
    assert tokens.grad[0, unpicked].abs().sum() == 0  # ... the others none through the init
