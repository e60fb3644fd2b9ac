"""Spatial broadcast decoder and set-prediction head with its Hungarian-matched Huber loss."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.types import Batch, Features, ImageSpec, PropertyLayout, Slots
from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder
from slotrun_slot_attention.configs import SetPredictionConfig, SpatialBroadcastConfig
from slotrun_slot_attention.set_prediction import SetPredictionDecoder, hungarian_huber_loss, pairwise_huber
from slotrun_slot_attention.tf_padding import TFSameConvTranspose2d


def decoder_inputs(size: int = 16, slot_dim: int = 8, properties: PropertyLayout | None = None) -> DecoderInputs:
    return DecoderInputs(slot_dim=slot_dim, image=ImageSpec(channels=3, height=size, width=size),
                         feature_dim=8, grid=(4, 4), properties=properties)


def dummy_features(grid: tuple[int, int] = (4, 4)) -> Features:
    return Features(tokens=torch.zeros(2, grid[0] * grid[1], 8), grid=grid)


@pytest.mark.parametrize(("size", "broadcast"), [(16, 4), (16, 16), (35, 35)])
def test_broadcast_decoder_masks_recon_and_loss(size: int, broadcast: int) -> None:
    torch.manual_seed(0)
    decoder = SpatialBroadcastConfig(broadcast_size=broadcast, channels=8).build(decoder_inputs(size))
    assert decoder.loss_terms == ("recon",)
    slots = Slots(slots=torch.randn(2, 3, 8))
    batch = Batch(image=torch.randn(2, 3, size, size))
    out = decoder(slots, dummy_features(), batch)
    assert out.recon.shape == (2, 3, size, size)
    assert out.masks.shape == (2, 3, size, size)
    torch.testing.assert_close(out.masks.sum(dim=1), torch.ones(2, size, size))
    assert out.per_slot.shape == (2, 3, 3, size, size)
    torch.testing.assert_close(out.per_slot.sum(dim=1), out.recon)
    torch.testing.assert_close(out.losses["recon"], F.mse_loss(out.recon, batch.image))


def test_broadcast_layer_counts() -> None:
    def convs(d: SpatialBroadcastDecoder) -> list[tuple[int, int]]:
        return [(m.kernel_size[0], m.stride[0]) for m in d.net if isinstance(m, torch.nn.ConvTranspose2d)]

    clevr = SpatialBroadcastDecoder(64, image_size=(128, 128), broadcast_size=8, channels=4)
    assert convs(clevr) == [(5, 2)] * 4 + [(5, 1), (3, 1)]
    full = SpatialBroadcastDecoder(64, image_size=(64, 64), broadcast_size=64, channels=4)
    assert convs(full) == [(5, 1)] * 3 + [(3, 1)]
    assert full.net[-1].out_channels == 4  # RGB + alpha


def test_broadcast_size_must_reach_the_image_by_doubling() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        SpatialBroadcastDecoder(8, image_size=(48, 48), broadcast_size=8)  # 48 / 8 = 6
    with pytest.raises(UserError, match="power of 2"):
        SpatialBroadcastConfig(broadcast_size=8).build(decoder_inputs(35))


def test_broadcast_non_square_images() -> None:
    decoder = SpatialBroadcastDecoder(8, image_size=(16, 24), broadcast_size=4, channels=4)
    assert decoder.grid == (4, 6)
    out = decoder(Slots(slots=torch.randn(1, 2, 8)), dummy_features(), Batch(image=torch.zeros(1, 3, 16, 24)))
    assert out.masks.shape == (1, 2, 16, 24)


@pytest.mark.parametrize(("kernel", "stride"), [(5, 2), (4, 2), (3, 1), (5, 1), (7, 3)])
def test_tf_same_transposed_conv_crops_the_full_output_as_tensorflow(kernel: int, stride: int) -> None:
    # TF 'SAME' transposed conv: output n * s = the full transposed conv ((n - 1) * s + k) cropped
    # pad_total // 2 before and the rest after, pad_total = k - s.
    torch.manual_seed(0)
    conv = TFSameConvTranspose2d(3, 4, kernel, stride=stride)
    x = torch.randn(2, 3, 5, 6)
    full = F.conv_transpose2d(x, conv.weight, conv.bias, stride)
    before = (kernel - stride) // 2
    want = full[..., before:before + 5 * stride, before:before + 6 * stride]
    torch.testing.assert_close(conv(x), want)
    assert conv(x).shape[-2:] == (5 * stride, 6 * stride)


def test_symmetric_upsampling_is_the_tf_output_shifted_by_one_pixel() -> None:
    torch.manual_seed(0)
    tf = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=4)
    old = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=4, padding="symmetric")
    old.load_state_dict(tf.state_dict())
    x = torch.randn(2, 8, 4, 4)
    a, b = tf.net[0](x), old.net[0](x)
    assert a.shape == b.shape == (2, 4, 8, 8)
    torch.testing.assert_close(b[..., :-1, :-1], a[..., 1:, 1:])  # symmetric[:-1] == TF[1:]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="unknown padding"):
        SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, padding="same")
    with pytest.raises(ValueError, match="kernel_size >= stride"):
        TFSameConvTranspose2d(3, 4, 2, stride=3)


def test_channels_last_decoder_gives_the_same_result() -> None:
    torch.manual_seed(0)
    a = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=4)
    b = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=4, channels_last=True)
    b.load_state_dict(a.state_dict())
    slots = torch.randn(2, 3, 8)
    for got, want in zip(b.decode(slots), a.decode(slots)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- set prediction ------------------------------------------------------------------------------------------


LAYOUT = PropertyLayout(coords=(0, 3), coord_scale=6.0, categorical=(("shape", 3, 5),), presence=5)


def test_hungarian_loss_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 3, 6, generator=g)
    target = torch.rand(4, 3, 6, generator=g)
    cost = pairwise_huber(target, pred)
    best = torch.stack([
        min(sum(cost[b, i, p[i]] for i in range(3)) for p in itertools.permutations(range(3)))
        for b in range(4)
    ])
    torch.testing.assert_close(hungarian_huber_loss(pred, target), best.mean())
    want = F.huber_loss(pred[1, 2], target[1, 0], delta=1.0)
    torch.testing.assert_close(cost[1, 0, 2], want)


def test_hungarian_loss_ignores_target_order_and_is_zero_when_perfect() -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 4, 6, generator=g)
    target = torch.rand(2, 4, 6, generator=g)
    perm = torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(hungarian_huber_loss(pred, target[:, perm]), hungarian_huber_loss(pred, target))
    assert hungarian_huber_loss(pred, pred[:, perm]).item() == 0.0
    assert hungarian_huber_loss(pred, target).item() > 0.0


def test_hungarian_loss_pads_missing_targets_with_absent_objects() -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 4, 6, generator=g)
    target = torch.rand(2, 2, 6, generator=g)
    padded = torch.cat([target, torch.zeros(2, 2, 6)], dim=1)
    torch.testing.assert_close(hungarian_huber_loss(pred, target), hungarian_huber_loss(pred, padded))


def test_hungarian_loss_gradient_flows_to_predictions() -> None:
    pred = torch.rand(2, 3, 6, requires_grad=True)
    hungarian_huber_loss(pred, torch.rand(2, 3, 6)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_set_prediction_decoder() -> None:
    torch.manual_seed(0)
    decoder = SetPredictionConfig(coord_scale=2.0).build(decoder_inputs(properties=LAYOUT))
    assert decoder.loss_terms == ("set",)
    attn = torch.rand(2, 3, 16).softmax(dim=1)
    slots = Slots(slots=torch.randn(2, 3, 8), attn=(attn,))
    target = torch.rand(2, 3, 6)
    out = decoder(slots, dummy_features(), Batch(image=torch.zeros(2, 3, 16, 16), properties=target))
    assert out.predictions.shape == (2, 3, 6)
    assert ((out.predictions > 0) & (out.predictions < 1)).all()
    scale = torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.0])  # coordinates scaled in both, the rest not
    torch.testing.assert_close(out.losses["set"], hungarian_huber_loss(out.predictions * scale, target * scale))
    torch.testing.assert_close(out.masks, attn.reshape(2, 3, 4, 4))
    assert SetPredictionDecoder(8, 6)(Slots(slots=torch.randn(2, 3, 8)), dummy_features(),
                                      Batch(image=torch.zeros(2, 3, 4, 4), properties=target)).masks is None


def test_set_prediction_needs_properties() -> None:
    with pytest.raises(UserError, match="properties"):
        SetPredictionConfig().build(decoder_inputs())


def test_stepwise_set_loss_averages_the_loss_of_every_iteration() -> None:
    from slotrun_slot_attention.grouper import SlotAttention

    torch.manual_seed(0)
    grouper = SlotAttention(8, slot_dim=8, num_slots=3, iters=3, mlp_hidden=16)
    slots = grouper(Features(tokens=torch.randn(2, 16, 8), grid=(4, 4)))
    assert len(slots.history) == 3 and slots.history[-1] is slots.slots
    decoder = SetPredictionConfig(stepwise=True).build(decoder_inputs(properties=LAYOUT))
    batch = Batch(image=torch.zeros(2, 3, 16, 16), properties=torch.rand(2, 3, 6))
    per_iteration = [hungarian_huber_loss(decoder.head(h).sigmoid(), batch.properties) for h in slots.history]
    loss = decoder(slots, dummy_features(), batch).losses["set"]
    torch.testing.assert_close(loss, torch.stack(per_iteration).mean())
    assert not torch.allclose(loss, per_iteration[-1])  # the earlier iterations really count
    loss.backward()  # ... and train the grouper through them: the first update's GRU gets their gradient
    assert grouper.gru.weight_hh.grad.abs().sum() > 0
    decoder.eval()  # evaluation reports the final slots' loss, comparable with a non-stepwise run
    torch.testing.assert_close(decoder(slots, dummy_features(), batch).losses["set"], per_iteration[-1])
    decoder.train()
    with pytest.raises(UserError, match="model.decoder.stepwise = true needs a grouper"):
        decoder(Slots(slots=torch.randn(2, 3, 8)), dummy_features(), batch)


def test_perceptual_loss_term_is_lpips_of_the_reconstruction(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SpatialBroadcastConfig(broadcast_size=8, channels=8, perceptual="alex", perceptual_pretrained=False)
    decoder = config.build(decoder_inputs(size=32))
    assert decoder.loss_terms == ("recon", "perceptual") and decoder.perceptual.distance is None  # built lazily
    plain = SpatialBroadcastConfig(broadcast_size=8, channels=8).build(decoder_inputs(size=32))
    assert decoder.state_dict().keys() == plain.state_dict().keys()  # LPIPS weights stay out of checkpoints
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    out = decoder(Slots(slots=torch.randn(2, 3, 8)), dummy_features(), Batch(image=image))
    distance = decoder.perceptual.distance
    torch.testing.assert_close(out.losses["perceptual"], distance(out.recon, image).mean())
    assert out.losses["perceptual"] > 0
    out.losses["perceptual"].backward()  # trains the decoder; LPIPS itself stays frozen
    assert all(p.grad is not None for p in decoder.net.parameters())
    assert all(p.grad is None for p in distance.parameters())
    # Offline with pretrained weights: nothing happens at build (slotrun check), the engine's load_pretrained()
    # before step 0 gives the one-line error.
    import lpips.pretrained_networks as pn

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(pn.tv, "alexnet", offline)
    online = SpatialBroadcastConfig(broadcast_size=8, channels=8, perceptual="alex").build(decoder_inputs(size=32))
    with pytest.raises(UserError, match="LPIPS \\(alex\\) could not load its ImageNet backbone weights"):
        online.load_pretrained()
