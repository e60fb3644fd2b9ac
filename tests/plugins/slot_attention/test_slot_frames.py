"""Slot-centric decoding frames (model.decoder.frame = "slot"): centres and spreads read off the attention, a slot's
rendering follows its frame (so moving the frame moves the drawing), gradients reach the attention, and prior
samples without attention decode in the whole-image frame."""

from __future__ import annotations

import pytest
import torch

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.types import Batch, Features, ImageSpec, Slots
from slotrun_slot_attention.broadcast_decoder import slot_frames, unit_grid
from slotrun_slot_attention.configs import SpatialBroadcastConfig


def build(frame: str = "slot", size: int = 16, broadcast: int = 4):
    inputs = DecoderInputs(slot_dim=8, image=ImageSpec(channels=3, height=size, width=size), feature_dim=8,
                           grid=(4, 4))
    return SpatialBroadcastConfig(broadcast_size=broadcast, channels=8, frame=frame).build(inputs)


def test_frames_of_hand_worked_attention() -> None:
    n = 16
    attn = torch.zeros(1, 3, n)
    attn[0, 0, 5] = 1.0  # one token: row 1, column 1 of the 4x4 grid
    attn[0, 1, [0, 3]] = 0.5  # two tokens in row 0: columns 0 and 3
    attn[0, 2] = 1.0 / n  # everything evenly
    centre, spread = slot_frames(attn, (4, 4), eps=0.0)
    third = 1.0 / 3.0
    torch.testing.assert_close(centre[0, 0], torch.tensor([third, third]))
    torch.testing.assert_close(spread[0, 0], torch.tensor([0.01, 0.01]))  # variance 0, floored at 1e-4
    torch.testing.assert_close(centre[0, 1], torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(spread[0, 1], torch.tensor([0.01, 0.5]))
    grid_std = unit_grid(4, 4)[:, 0].std(unbiased=False)
    torch.testing.assert_close(centre[0, 2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(spread[0, 2], torch.stack([grid_std, grid_std]))


def test_a_slots_drawing_follows_its_frame() -> None:
    torch.manual_seed(0)
    decoder = build(size=32, broadcast=16)  # 16x16 broadcast grid, one doubling to 32 px
    slots = torch.randn(1, 1, 8)
    spread = torch.full((1, 1, 2), 0.1)
    cell = 1.0 / 15.0  # one broadcast cell in [0, 1] units
    rgb_a, alpha_a = decoder.decode_framed(slots, torch.tensor([[[7 * cell, 7 * cell]]]), spread)
    rgb_b, alpha_b = decoder.decode_framed(slots, torch.tensor([[[8 * cell, 7 * cell]]]), spread)
    # One broadcast cell down = two pixels down, away from where the borders' padding reaches.
    torch.testing.assert_close(rgb_b[..., 12:22, 10:22], rgb_a[..., 10:20, 10:22])
    torch.testing.assert_close(alpha_b[..., 12:22, 10:22], alpha_a[..., 10:20, 10:22])
    assert not torch.allclose(rgb_a, rgb_b)


def test_image_frame_ignores_the_attention_slot_frame_does_not_and_gets_its_gradient() -> None:
    torch.manual_seed(0)
    slots = torch.randn(2, 3, 8)
    batch = Batch(image=torch.randn(2, 3, 16, 16))
    features = Features(tokens=torch.zeros(2, 16, 8), grid=(4, 4))
    logits = torch.randn(2, 3, 16, requires_grad=True)
    moved = torch.randn(2, 3, 16)
    for frame in ("image", "slot"):
        decoder = build(frame)
        out = decoder(Slots(slots=slots, attn=(logits.softmax(dim=1),)), features, batch)
        other = decoder(Slots(slots=slots, attn=(moved.softmax(dim=1),)), features, batch)
        assert torch.equal(out.recon, other.recon) == (frame == "image")
        if frame == "slot":
            out.losses["recon"].backward()
            assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_prior_samples_decode_in_the_whole_image_frame_and_attention_is_required() -> None:
    torch.manual_seed(0)
    decoder = build()
    slots = torch.randn(2, 3, 8)
    even = torch.full((2, 3, 16), 1.0 / 16)  # attention spread evenly over a 4x4 token grid = the decoder's grid
    sampled = decoder.decode_slots(slots)
    framed = decoder.decode_slots(slots, slot_frames(even, (4, 4)))
    torch.testing.assert_close(sampled.recon, framed.recon)
    with pytest.raises(UserError, match="attention maps"):
        decoder(Slots(slots=slots), Features(tokens=torch.zeros(2, 16, 8), grid=(4, 4)),
                Batch(image=torch.randn(2, 3, 16, 16)))


def test_frame_is_validated_in_the_recipe() -> None:
    with pytest.raises((ValueError, TypeError)):
        SpatialBroadcastConfig(frame="object")
    with pytest.raises((ValueError, TypeError)):
        SpatialBroadcastConfig(frame_scale=0.0)
