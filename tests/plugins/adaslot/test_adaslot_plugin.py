"""AdaSlot: the selection network's decisions (training draws, evaluation argmax / sample, symmetries), the
masked decoder (equal to decoding the kept slots alone), the sparsity penalty, and a whole model training step
with the built components."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.blocks import token_positions
from slotrun.model import SlotModel
from slotrun.protocols import DecoderInputs, GrouperInputs
from slotrun.testing import check, params, permuted
from slotrun.types import Batch, Features, ImageSpec, Slots
from slotrun_adaslot.configs import AdaSlotConfig, AdaSlotMLPConfig
from slotrun_adaslot.decoders import masked_alpha
from slotrun_adaslot.selection import AdaSlots, decide, keep_mask, sparse_penalty
from slotrun_dinosaur.decoders import MLPFeatureDecoder
from slotrun_slot_attention.configs import SlotAttentionConfig

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, GRID = 16, (4, 4)
IMAGE = ImageSpec(channels=3, height=16, width=16)
N = GRID[0] * GRID[1]


@pytest.mark.parametrize("case", params(plugin="adaslot"))
def test_conformance(case):
    check(case)


def _grouper(**kw):
    torch.manual_seed(0)
    return AdaSlotConfig(slot_dim=DIM, mlp_hidden=32, num_slots=5, **kw).build(GrouperInputs(dim=DIM, grid=GRID))


def _features(b=3):
    g = torch.Generator().manual_seed(1)
    return Features(tokens=torch.randn(b, N, DIM, generator=g), grid=GRID, positions=token_positions(GRID, b),
                    target=torch.randn(b, N, 8, generator=g))


def test_slots_are_slot_attentions_with_the_decisions_beside_them():
    """The selection leaves the slots alone: same weights -> the same slots as slot_attention's grouper."""
    ada = _grouper()
    plain = SlotAttentionConfig(slot_dim=DIM, mlp_hidden=32, num_slots=5, layer_norm_eps=1e-5).build(
        GrouperInputs(dim=DIM, grid=GRID))  # adaslot's default eps, PyTorch's
    missing, unexpected = plain.load_state_dict(ada.state_dict(), strict=False)
    assert not missing and all(k.startswith("score.") for k in unexpected)
    f = _features()
    torch.manual_seed(3)
    a = ada(f)
    torch.manual_seed(3)
    b = plain(f)
    assert isinstance(a, AdaSlots) and isinstance(a, Slots)
    assert torch.allclose(a.slots, b.slots, atol=1e-6)
    assert a.keep.shape == a.keep_prob.shape == (3, 5)
    logits = ada.score(a.slots)
    assert torch.allclose(a.keep_prob, logits.softmax(-1)[..., 1], atol=1e-6)


def test_training_draws_hard_straight_through_gumbel_decisions():
    ada = _grouper().train()
    f = _features()
    torch.manual_seed(7)
    out = ada(f)
    assert set(out.keep.unique().tolist()) <= {0.0, 1.0}
    logits = ada.score(out.slots)
    # the official draw: F.gumbel_softmax(logits, hard=True, tau=1)[..., 1], after Slot Attention's init noise
    torch.manual_seed(7)
    ada.init(f.tokens.shape[0], 5, tokens=f.tokens)  # the Gaussian init's noise comes first
    want = F.gumbel_softmax(logits, tau=1.0, hard=True)[..., 1]
    assert torch.equal(out.keep, want)
    ada.zero_grad()
    (out.keep * torch.arange(5.0)).sum().backward()
    assert ada.score[-1].weight.grad is not None and ada.score[-1].weight.grad.abs().sum() > 0


def test_evaluation_keeps_where_the_keep_logit_wins_or_samples():
    ada = _grouper().eval()
    f = _features()
    with torch.no_grad():
        out = ada(f)
        logits = ada.score(out.slots)
    assert torch.equal(out.keep, (logits[..., 1] > logits[..., 0]).float())
    assert torch.equal(out.keep, (out.keep_prob > 0.5).float())
    sampler = _grouper(eval_decision="sample").eval()
    draws = []
    for seed in range(20):
        torch.manual_seed(seed)
        with torch.no_grad():
            draws.append(sampler(f).keep)
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1  # a draw, as the official evaluation's


def test_decisions_follow_permuted_slots_and_ignore_token_order():
    ada = _grouper().eval()
    f = _features()
    with torch.no_grad():
        init = ada.initial_slots(f)
        perm = torch.tensor([2, 0, 4, 1, 3])
        a, b = ada(f, slots_init=init), ada(f, slots_init=init[:, perm])
        assert torch.equal(a.keep[:, perm], b.keep)
        assert torch.allclose(a.keep_prob[:, perm], b.keep_prob, atol=1e-6)
        tokens = torch.randperm(N, generator=torch.Generator().manual_seed(2))
        c = ada(permuted(f, tokens), slots_init=init)
        assert torch.equal(a.keep, c.keep)


def test_decide_refuses_an_unknown_eval_decision():
    with pytest.raises(ValueError, match="eval_decision"):
        decide(torch.zeros(1, 2, 2), training=False, temperature=1.0, eval_decision="mode")


def _decoder(mask_type="mask_normalized", **kw):
    torch.manual_seed(0)
    inputs = DecoderInputs(slot_dim=DIM, image=IMAGE, feature_dim=DIM, grid=GRID, target_dim=8)
    return AdaSlotMLPConfig(hidden=(32, 32), mask_type=mask_type, **kw).build(inputs)


@pytest.mark.parametrize("mask_type", ["mask_normalized", "logit"])
def test_masked_decoder_equals_decoding_the_kept_slots_alone(mask_type):
    dec = _decoder(mask_type)
    plain = MLPFeatureDecoder(DIM, 8, GRID, hidden=(32, 32))
    plain.load_state_dict(dec.state_dict())
    f = _features(b=2)
    z = torch.randn(2, 5, DIM)
    keep = torch.tensor([[1.0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    out = dec(AdaSlots(slots=z, keep=keep, keep_prob=keep), f, None)
    assert out.masks.shape == (2, 5, *GRID)
    assert torch.all(out.masks[keep == 0] < 1e-4)
    assert torch.allclose(out.masks.sum(1), torch.ones(2, *GRID), atol=1e-4)
    for i in range(2):
        kept = keep[i].bool()
        one = Features(tokens=f.tokens[i:i + 1], grid=GRID, target=f.target[i:i + 1])
        ref = plain(Slots(slots=z[i:i + 1, kept]), one, None)
        assert torch.allclose(out.recon[i], ref.recon[0], atol=1e-4)
        assert torch.allclose(out.masks[i, kept], ref.masks[0], atol=1e-4)


def test_mask_normalized_is_the_official_formula():
    alpha = torch.randn(2, 4, 6)
    keep = torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 1]])
    w = alpha.softmax(1) * keep[..., None]
    assert torch.allclose(masked_alpha(alpha, keep, "mask_normalized"), w / (w.sum(1, keepdim=True) + 1e-5))
    assert torch.allclose(masked_alpha(alpha, keep, "logit"), (alpha - 1e5 * (1 - keep[..., None])).softmax(1))
    assert torch.allclose(masked_alpha(alpha, None, "logit"), alpha.softmax(1))


def test_plain_slots_decode_as_dinosaur_and_count_as_all_kept():
    dec = _decoder()
    plain = MLPFeatureDecoder(DIM, 8, GRID, hidden=(32, 32))
    plain.load_state_dict(dec.state_dict())
    f, z = _features(b=2), Slots(slots=torch.randn(2, 5, DIM))
    out, ref = dec(z, f, None), plain(z, f, None)
    assert keep_mask(z) is None
    assert torch.allclose(out.recon, ref.recon, atol=1e-6)
    assert torch.allclose(out.losses["feature_recon"], ref.losses["feature_recon"])
    assert float(out.losses["sparse_penalty"]) == pytest.approx(0.1)  # linear_weight * 1


def test_sparse_penalty_is_oclfs():
    keep = torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 0]])  # d = 5 / 8
    got = sparse_penalty(keep, linear_weight=0.1, quadratic_weight=2.0, quadratic_bias=0.5)
    assert float(got) == pytest.approx(0.1 * 0.625 + 2.0 * 0.125**2)
    dec = _decoder(linear_weight=10.0)
    out = dec(AdaSlots(slots=torch.randn(2, 4, DIM), keep=keep, keep_prob=keep), _features(b=2), None)
    assert float(out.losses["sparse_penalty"]) == pytest.approx(6.25)


def test_config_bounds_refuse_bad_values():
    with pytest.raises((ValueError, TypeError)):
        AdaSlotConfig(temperature=0.0)
    with pytest.raises((ValueError, TypeError)):
        AdaSlotConfig(score_hidden=0)
    with pytest.raises(ValueError):
        AdaSlotConfig(eval_decision="mode")
    with pytest.raises((ValueError, TypeError)):
        AdaSlotMLPConfig(quadratic_bias=2.0)
    with pytest.raises(ValueError):
        AdaSlotMLPConfig(mask_type="mask")


class _Tokens(torch.nn.Module):
    """A stand-in encoder: a linear patch embedding with a detached target."""

    out_dim, target_dim, loss_terms = DIM, DIM, ()

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 16, DIM)

    def grid_for(self, h, w):
        return (h // 4, w // 4)

    def forward(self, images):
        b = images.shape[0]
        patches = images.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, N, 48)
        tokens = self.proj(patches)
        return Features(tokens=tokens, grid=GRID, target=tokens.detach())


def test_a_model_trains_the_selection_through_the_sparsity_penalty():
    """In a whole model the penalty's gradient reaches the score network (straight-through), and training on
    the penalty alone (feature_recon weighted 0) lowers the keep probability."""
    torch.manual_seed(0)
    grouper = _grouper()
    inputs = DecoderInputs(slot_dim=DIM, image=IMAGE, feature_dim=DIM, grid=GRID, target_dim=DIM)
    decoder = AdaSlotMLPConfig(hidden=(32,), linear_weight=10.0).build(inputs)
    model = SlotModel(_Tokens(), grouper, decoder, loss_weights={"feature_recon": 0.0}).train()
    assert model.loss_terms == ("feature_recon", "sparse_penalty")
    batch = Batch(image=torch.rand(4, 3, 16, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probs = []
    for _ in range(15):
        out = model(batch)
        probs.append(float(out.slots.keep_prob.mean().detach()))
        opt.zero_grad()
        out.loss.backward()
        assert grouper.score[-1].weight.grad.abs().sum() > 0
        opt.step()
    assert probs[-1] < probs[0]


def test_components_default_to_the_oclf_pytorch_conventions() -> None:
    """AdaSlot's code is OCLF's PyTorch: its grouper and pixel decoder default to OCLF's initialisation and
    PyTorch's padding and LayerNorm eps, where the Slot Attention components they extend default to the TF code's.
    A module built from the defaults equals one built with those settings spelled out (same seed)."""
    from slotrun_adaslot.configs import AdaSlotBroadcastConfig

    assert (AdaSlotConfig().weight_init, AdaSlotConfig().layer_norm_eps) == ("oclf", 1e-5)
    assert (SlotAttentionConfig().weight_init, SlotAttentionConfig().layer_norm_eps) == ("keras", 1e-3)
    torch.manual_seed(0)
    default = _grouper()
    torch.manual_seed(0)
    spelled = _grouper(weight_init="oclf", layer_norm_eps=1e-5)
    for (name, a), (_, b) in zip(default.state_dict().items(), spelled.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    decoder = AdaSlotBroadcastConfig()
    assert (decoder.padding, decoder.weight_init) == ("symmetric", "torch")
    with pytest.raises(ValueError, match="'padding' must be in"):
        AdaSlotBroadcastConfig(padding="same")
