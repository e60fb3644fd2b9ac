"""SLATE's autoregressive transformer decoder: causality with the BOS shift, the loss, masks, and greedy
decoding (with its key/value cache) into a full token map and an image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.protocols import DecoderInputs
from slotrun.types import Batch, Features, ImageSpec, Slots
from slotrun_slate.configs import SlateTransformerConfig
from slotrun_slate.dvae import SlateEncoder
from slotrun_slate.transformer import SlateTransformerDecoder


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


B, K, DS, V, GRID = 2, 3, 12, 10, (3, 4)
N = GRID[0] * GRID[1]


def make(**kwargs) -> SlateTransformerDecoder:
    """A decoder on its own: its own embedding tables unless told otherwise (tied ones live in the encoder)."""
    torch.manual_seed(0)
    return SlateTransformerDecoder(DS, V, GRID, d_model=16, blocks=2, heads=2, **{"tie_embeddings": False, **kwargs})


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(seed))


def slots(requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(B, K, DS, generator=torch.Generator().manual_seed(1)).requires_grad_(requires_grad)


def inputs(z: torch.Tensor, s: torch.Tensor) -> tuple[Slots, Features, Batch]:
    target = F.one_hot(z, V).float()
    return Slots(slots=s), Features(tokens=torch.zeros(B, N, 4), grid=GRID, target=target), Batch(
        image=torch.zeros(B, 3, 12, 16))


@pytest.mark.parametrize("t", [0, 5, N - 1])
def test_causal_logits_at_t_ignore_tokens_from_t_on(t: int) -> None:
    dec = make().eval()
    s, z = slots(), tokens()
    changed = z.clone()
    changed[:, t] = (z[:, t] + 1) % V
    a, _ = dec.logits(s, z)
    b, _ = dec.logits(s, changed)
    # Position t predicts token t from tokens < t: positions <= t see nothing of token t.
    torch.testing.assert_close(b[:, : t + 1], a[:, : t + 1])
    if t + 1 < N:
        assert not torch.allclose(b[:, t + 1], a[:, t + 1])  # the next position does see it


def test_first_position_sees_only_bos_and_slots() -> None:
    dec = make().eval()
    a, _ = dec.logits(slots(), tokens(0))
    b, _ = dec.logits(slots(), tokens(1))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    c, _ = dec.logits(slots() + 1.0, tokens(0))
    assert not torch.allclose(a[:, 0], c[:, 0])  # but it is conditioned on the slots


def test_masks_are_the_groupers_last_assignment_by_default() -> None:
    dec = make().eval()
    s, z = slots(), tokens()
    attn = torch.rand(B, K, N).softmax(dim=1)
    features, batch = inputs(z, s)[1:]
    out = dec(Slots(slots=s, attn=(torch.rand(B, K, N), attn)), features, batch)
    torch.testing.assert_close(out.masks, attn.reshape(B, K, *GRID))
    with pytest.raises(ValueError, match="cross_attention"):
        dec(*inputs(z, s))  # a grouper without attention maps


def test_loss_is_summed_token_cross_entropy_and_masks_normalised() -> None:
    dec = make(masks="cross_attention").eval()
    s, z = slots(requires_grad=True), tokens()
    out = dec(*inputs(z, s))
    assert set(out.losses) == {"token_ce"} and dec.loss_terms == ("token_ce",)
    logits, _ = dec.logits(s, z)
    expected = F.cross_entropy(logits.reshape(-1, V), z.reshape(-1), reduction="sum") / B
    torch.testing.assert_close(out.losses["token_ce"], expected)
    assert out.masks.shape == (B, K, *GRID)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(B, *GRID))
    assert out.recon is None
    out.losses["token_ce"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("first_block", ["slate", "pre_ln"])
def test_greedy_generation_matches_teacher_forced_argmax(first_block: str) -> None:
    dec = make(first_block=first_block).eval()
    s = slots()
    z = dec.generate(s)
    assert z.shape == (B, N) and z.dtype == torch.long
    assert int(z.min()) >= 0 and int(z.max()) < V
    logits, _ = dec.logits(s, z)
    torch.testing.assert_close(logits.argmax(-1), z)  # the cached incremental pass = the full causal pass
    assert dec.generate(Slots(slots=s), num_tokens=5).shape == (B, 5)
    torch.testing.assert_close(dec.generate(s, num_tokens=5), z[:, :5])
    with pytest.raises(ValueError, match="positions"):
        dec.generate(s, num_tokens=N + 1)


@pytest.mark.parametrize("first_block", ["slate", "pre_ln"])
@pytest.mark.parametrize("capacity", [None, 7], ids=["growing", "preallocated"])
def test_cached_block_with_several_new_positions_matches_full_pass(capacity: int | None, first_block: str) -> None:
    cache: dict = {} if capacity is None else {"capacity": capacity}
    dec = make(first_block=first_block).eval()
    assert dec.blocks[0].normalised_residual == (first_block == "slate") and not dec.blocks[1].normalised_residual
    s = dec.slot_proj(slots())
    x = torch.randn(B, 7, 16)
    block = dec.blocks[0]
    full, _ = block(x, s)
    first, _ = block(x[:, :3], s, cache=cache)
    middle, _ = block(x[:, 3:4], s, cache=cache)
    rest, _ = block(x[:, 4:], s, cache=cache)
    torch.testing.assert_close(torch.cat([first, middle, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_generated_tokens_decode_to_a_full_image() -> None:
    torch.manual_seed(0)
    enc = SlateEncoder(3, (12, 16), vocab_size=V, d_model=16, dvae_channels=8).eval()
    dec = make()
    dec.eval()
    z = dec.generate(slots())
    image = enc.decode_tokens(z, GRID)
    assert image.shape == (B, 3, 12, 16) and torch.isfinite(image).all()


def test_tied_tables_come_from_the_encoder_and_generation_uses_them() -> None:
    torch.manual_seed(0)
    enc = SlateEncoder(3, (12, 16), vocab_size=V, d_model=16, dvae_channels=8).eval()
    dec = make(tie_embeddings=True).eval()
    assert not hasattr(dec, "embed") and not hasattr(dec, "pos") and enc.pos.shape == (1, N + 1, 16)
    feats = enc(torch.rand(B, 3, 12, 16))
    z = feats.target.argmax(-1)
    # The decoder's input is the encoder's sequence at positions 0..N-1, the grouper's tokens positions 1..N.
    bos = torch.zeros(B, 1, dtype=torch.long)
    seq = enc.embed(torch.cat([bos, z + 1], 1)) + enc.pos
    torch.testing.assert_close(feats.decoder_input, seq[:, :-1])
    torch.testing.assert_close(feats.tokens, enc.mlp(enc.norm(seq[:, 1:])))
    s = slots()
    generated = dec.generate(s, embed=feats.embed_decoder)
    logits, _ = dec.logits(s, generated, embed=feats.embed_decoder)
    torch.testing.assert_close(logits.argmax(-1), generated)
    with pytest.raises(ValueError, match="tie_embeddings"):
        dec.generate(s)  # tied tables live in the encoder
    with pytest.raises(ValueError, match="tie_embeddings"):
        make()(*inputs(z, s)[:1], feats, Batch(image=torch.zeros(B, 3, 12, 16)))  # own tables, tied encoder
    with pytest.raises(ValueError, match="tie_embeddings"):
        dec(*inputs(z, s))  # tied decoder, plain features


def test_config_needs_a_token_target() -> None:
    image = ImageSpec(channels=3, height=12, width=16)
    dec = SlateTransformerConfig().build(DecoderInputs(slot_dim=DS, image=image, feature_dim=192, grid=GRID,
                                                       target_dim=V))
    assert dec.vocab_size == V and len(dec.blocks) == 4 and dec.d_model == 192
    with pytest.raises(Exception, match="slate_dvae"):
        SlateTransformerConfig().build(DecoderInputs(slot_dim=DS, image=image, feature_dim=8, grid=GRID))
    with pytest.raises(ValueError, match="divisible"):
        SlateTransformerConfig(d_model=10, heads=4)
