"""Stange et al.'s image-reconstruction model on frozen ViT tokens (robert1003/slot-attention-disentanglement @
6018e8b, pytorch/model.py: DINOSAURProjection with --decoder_type coco-adaptive --dinosaur-downsample), as
recipes/dinosaur/image_recon.toml builds it from slotrun's components: the token path (input_mlp with
input_mlp_inner_norm), Slot Attention (weight_init "stange") and the coco-adaptive decoder (spatial_broadcast with
a per-pixel mlp). The reference below rebuilds their forward from plain torch ops, reading slotrun's parameters;
the parameter counts are those of their model.py built on CPU (D = 64: 263,876; D = 128: 550,404)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.blocks import coordinate_grid
from slotrun.protocols import DecoderInputs, GrouperInputs
from slotrun.types import Features, ImageSpec
from slotrun_slot_attention.configs import SlotAttentionConfig, SpatialBroadcastConfig

EPS_LN = 1e-3  # every LayerNorm of their model: nn.LayerNorm(..., eps=0.001)


def build(d: int, size: int = 128):
    grouper = SlotAttentionConfig(num_slots=7, iters=3, slot_dim=d, mlp_hidden=4 * d, layer_norm_eps=EPS_LN,
                                  input_mlp=(d, d, d), input_mlp_inner_norm=True, weight_init="stange"
                                  ).build(GrouperInputs(dim=768, grid=(14, 14)))
    decoder = SpatialBroadcastConfig(broadcast_size=8, channels=32, mlp=(32, 32, 32), padding="symmetric",
                                     weight_init="torch", channels_last=False).build(
        DecoderInputs(slot_dim=d, image=ImageSpec(channels=3, height=size, width=size), feature_dim=d,
                      grid=(14, 14)))
    return grouper, decoder


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize(("d", "expected"), [(64, 263_876), (128, 550_404)])
def test_parameter_count_equals_their_model(d: int, expected: int) -> None:
    assert n_params(*build(d)) == expected


def reference(s: dict, tokens: torch.Tensor, slots: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Their forward from the helper's description of model.py, on slotrun's parameter names `s`."""
    def ln(x, key):
        return F.layer_norm(x, x.shape[-1:], s[f"{key}.weight"], s[f"{key}.bias"], EPS_LN)

    def lin(x, key, bias=True):
        return F.linear(x, s[f"{key}.weight"], s[f"{key}.bias"] if bias else None)

    # encoder_ln0 -> fc0 -> ReLU -> encoder_layer_norm -> fc1 -> ReLU -> fc2
    x = F.relu(lin(ln(tokens, "g.input_mlp.norm"), "g.input_mlp.mlp.0"))
    x = lin(F.relu(lin(ln(x, "g.input_mlp.mlp.2"), "g.input_mlp.mlp.3")), "g.input_mlp.mlp.5")
    inputs = ln(x, "g.norm_inputs")
    w_k, w_v = s["g.project_kv.weight"].chunk(2)
    k, v = F.linear(inputs, w_k), F.linear(inputs, w_v)
    for _ in range(3):
        prev = slots
        q = lin(ln(slots, "g.norm_slots"), "g.project_q", bias=False)
        attn = torch.einsum("bid,bjd->bij", q, k) * d**-0.5
        attn = attn.softmax(dim=1) + 1e-8  # over the slots, then renormalised over the inputs
        attn = attn / attn.sum(dim=-1, keepdim=True)
        updates = torch.einsum("bjd,bij->bid", v, attn)
        gru = torch.nn.GRUCell(d, d)
        gru.load_state_dict({n: s[f"g.gru.{n}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        slots = gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(prev.shape)
        slots = slots + lin(F.relu(lin(ln(slots, "g.norm_mlp"), "g.mlp.0")), "g.mlp.2")
    # coco-adaptive decoder: broadcast to 8 x 8, + Linear(4, D) of the ramps, per-pixel MLP, transposed convs
    b, n = slots.shape[:2]
    x = slots.reshape(b * n, 1, 1, d).expand(-1, 8, 8, -1) + lin(coordinate_grid(8, 8), "d.pos.proj")
    x = lin(F.relu(lin(F.relu(lin(x, "d.pixel_mlp.0")), "d.pixel_mlp.2")), "d.pixel_mlp.4").permute(0, 3, 1, 2)
    for i in range(4):
        x = F.relu(F.conv_transpose2d(x, s[f"d.net.{2 * i}.weight"], s[f"d.net.{2 * i}.bias"], stride=2,
                                      padding=2, output_padding=1))
    x = F.relu(F.conv_transpose2d(x, s["d.net.8.weight"], s["d.net.8.bias"], padding=2))
    x = F.conv_transpose2d(x, s["d.net.10.weight"], s["d.net.10.bias"], padding=1)
    x = x.reshape(b, n, 4, 128, 128)
    masks = x[:, :, 3:].softmax(dim=1)
    return (x[:, :, :3] * masks).sum(dim=1), masks[:, :, 0]


@pytest.mark.parametrize("d", [64, 128])
def test_forward_equals_their_computation(d: int) -> None:
    torch.manual_seed(0)
    grouper, decoder = build(d)
    s = {f"g.{k}": t for k, t in grouper.state_dict().items()} | {f"d.{k}": t for k, t in decoder.state_dict().items()}
    tokens = torch.randn(2, 196, 768)
    slots0 = grouper.init.mu + grouper.init.log_sigma.exp() * torch.randn(2, 7, d)  # mu + exp(log_sigma) * N(0, 1)
    with torch.no_grad():
        out = decoder.decode_slots(grouper(Features(tokens=tokens, grid=(14, 14)), slots_init=slots0).slots)
        recon, masks = reference(s, tokens, slots0, d)
    torch.testing.assert_close(out.recon, recon, rtol=0, atol=1e-5 * float(recon.abs().max()))
    torch.testing.assert_close(out.masks, masks, rtol=0, atol=1e-5)


def test_inner_norm_needs_two_widths() -> None:
    with pytest.raises(ValueError, match="input_mlp needs at least two widths, got \\[64\\]"):
        SlotAttentionConfig(input_mlp=(64,), input_mlp_inner_norm=True)


def test_the_target_is_the_image_at_128_px_as_pil_resizes_it() -> None:
    """target_size = 128: the loss compares the reconstruction with the 224 px input resized to 128 px, within one
    grey level of their PIL Resize((128, 128)) (PIL rounds to uint8) on built-in scenes."""
    import numpy as np
    from PIL import Image

    from slotrun.data.shapes import SceneConfig, generate
    from slotrun.types import Batch, Slots

    decoder = SpatialBroadcastConfig(broadcast_size=8, channels=8, mlp=(8,), padding="symmetric", weight_init="torch",
                                     target_size=128).build(
        DecoderInputs(slot_dim=16, image=ImageSpec(channels=3, height=224, width=224), feature_dim=16, grid=(14, 14)))
    scenes = [np.ascontiguousarray(generate(SceneConfig(image_size=224), "train", i).image) for i in range(4)]
    image = torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float() / 255
    pil = np.stack([np.asarray(Image.fromarray(s).resize((128, 128), Image.BILINEAR)) for s in scenes])
    target = decoder.target(image)
    assert target.shape == (4, 3, 128, 128)
    assert float((target - torch.from_numpy(pil).permute(0, 3, 1, 2) / 255).abs().max()) <= 1 / 255
    torch.manual_seed(0)
    out = decoder(Slots(slots=torch.randn(4, 7, 16)), Features(tokens=torch.zeros(4, 196, 16), grid=(14, 14)),
                  Batch(image=image))
    assert out.recon.shape == (4, 3, 128, 128) and out.masks.shape == (4, 7, 128, 128)
    torch.testing.assert_close(out.losses["recon"], F.mse_loss(out.recon, target))
