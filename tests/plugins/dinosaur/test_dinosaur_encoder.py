"""The timm encoder: tokens of one block before the final norm, prefix tokens dropped, frozen by default,
weights from a local checkpoint or timm's download (failing offline with a one-line UserError)."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from slotrun.errors import UserError
from slotrun_dinosaur.configs import TimmEncoderConfig
from slotrun_dinosaur.encoder import TimmEncoder

TINY = {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}
NAME = "vit_tiny_patch16_224"


def tiny(**kwargs) -> TimmEncoder:
    args = {"image_size": (32, 32), "pretrained": False, "model_kwargs": TINY}
    args.update(kwargs)
    return TimmEncoder(NAME, **args)


def manual_blocks(vit: torch.nn.Module, images: torch.Tensor, upto: int) -> torch.Tensor:
    """Reference: run the ViT block by block; all tokens (prefix included) after block `upto`."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for blk in vit.blocks[: upto + 1]:
        x = blk(x)
    return x


def test_tokens_drop_class_token_and_follow_the_patch_grid() -> None:
    torch.manual_seed(0)
    enc = tiny()
    images = torch.randn(2, 3, 32, 32)
    out = enc(images)
    assert enc.grid_for(32, 32) == (4, 4) and out.grid == (4, 4)
    assert out.tokens.shape == (2, 16, 32) and enc.out_dim == enc.target_dim == 32
    assert enc.model.num_prefix_tokens == 1
    ref = manual_blocks(enc.model, images, 2)
    assert ref.shape[1] == 17
    torch.testing.assert_close(out.tokens, ref[:, 1:])  # class token dropped, before the final norm
    assert not torch.allclose(out.tokens, enc.model.norm(ref)[:, 1:])
    torch.testing.assert_close(out.target, out.tokens)
    assert not out.target.requires_grad


def test_register_tokens_are_dropped_too() -> None:
    enc = tiny(model_kwargs={**TINY, "reg_tokens": 4})
    assert enc.model.num_prefix_tokens == 5
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 16, 32)


def test_block_selection() -> None:
    torch.manual_seed(0)
    enc_last = tiny()
    enc_first = tiny(block=0)
    enc_first.model.load_state_dict(enc_last.model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    first, last = enc_first(images).tokens, enc_last(images).tokens
    assert not torch.allclose(first, last)
    torch.testing.assert_close(first, manual_blocks(enc_last.model, images, 0)[:, 1:])
    assert tiny(block=-3).block == 0
    with pytest.raises(UserError, match="block 3 is out of range"):
        tiny(block=3)


def test_non_224_inputs_resize_the_position_embedding() -> None:
    enc = TimmEncoder(NAME, image_size=(48, 64), pretrained=False, model_kwargs=TINY)
    assert enc.grid_for(48, 64) == (6, 8)
    assert enc(torch.randn(1, 3, 48, 64)).tokens.shape == (1, 48, 32)


def test_frozen_encoder_never_changes_and_gets_no_gradients() -> None:
    torch.manual_seed(0)
    enc = tiny()
    head = torch.nn.Linear(32, 32)
    model = torch.nn.ModuleDict({"enc": enc, "head": head})
    model.train()
    assert not enc.model.training  # frozen backbones stay in eval mode
    assert all(not p.requires_grad for p in enc.parameters())
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # the encoder's parameters are even in the optimizer
    for _ in range(3):
        tokens = enc(torch.randn(2, 3, 32, 32)).tokens
        assert not tokens.requires_grad
        loss = head(tokens).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in enc.parameters())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_trainable_encoder_gets_gradients_and_follows_train_mode() -> None:
    enc = tiny(frozen=False)
    enc.train()
    assert enc.model.training
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.requires_grad and not out.target.requires_grad
    out.tokens.square().mean().backward()
    assert enc.model.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt_wrapped"])
def test_checkpoint_loads_and_gives_identical_features(tmp_path, fmt: str) -> None:
    torch.manual_seed(1)
    source = tiny()
    state = source.model.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({"state_dict": state} if fmt == "pt_wrapped" else state, path)
    torch.manual_seed(2)
    loaded = tiny(checkpoint=str(path), pretrained=True)  # the checkpoint takes precedence over the download
    assert loaded.weights_pending
    images = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(loaded.feature_map(images), source.feature_map(images))  # not loaded at build
    torch.testing.assert_close(loaded(images).tokens, source(images).tokens, rtol=0, atol=0)
    assert not loaded.weights_pending


def test_checkpoint_with_a_classifier_head_and_other_size(tmp_path) -> None:
    """A classification checkpoint (head kept) at another resolution: head dropped, position embedding resampled."""
    src = timm.create_model(NAME, pretrained=False, num_classes=10, img_size=32, **TINY)
    path = tmp_path / "cls.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(path))
    enc = TimmEncoder(NAME, image_size=(48, 48), checkpoint=str(path), model_kwargs=TINY)
    enc.load_pretrained()
    torch.testing.assert_close(enc.model.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    assert enc(torch.randn(1, 3, 48, 48)).tokens.shape == (1, 36, 32)


def test_checkpoint_errors_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        tiny(checkpoint=str(tmp_path / "missing.safetensors")).load_pretrained()
    other = TimmEncoder(NAME, image_size=(32, 32), pretrained=False, model_kwargs={**TINY, "depth": 2})
    path = tmp_path / "shallow.safetensors"
    safetensors.torch.save_file(other.model.state_dict(), str(path))
    with pytest.raises(UserError, match="does not fit .*missing blocks.2"):
        tiny(checkpoint=str(path)).load_pretrained()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        tiny(checkpoint=str(bad)).load_pretrained()


def _offline(monkeypatch) -> list[str]:
    calls: list[str] = []

    def fail(*args, **kwargs):
        calls.append("download")
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    import socket

    import timm.models._builder as builder

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, name, fail)

    def unreachable(address, timeout=None):
        calls.append(f"connect {address[0]}")
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    return calls


def test_offline_download_failure_is_one_line_saying_how_to_fix(monkeypatch) -> None:
    calls = _offline(monkeypatch)
    enc = tiny(pretrained=True)  # building the architecture never downloads
    assert calls == [] and enc.weights_pending
    with pytest.raises(UserError) as info:
        enc(torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert calls == ["download", "connect huggingface.co"]  # the cache, then one quick look: no retries
    assert "\n" not in message
    assert "huggingface.co cannot be reached (Name or service not known)); download them once while online" in message
    assert NAME in message
    assert "model.encoder.checkpoint=/path/to/weights.safetensors" in message
    assert "model.encoder.pretrained=false" in message


def test_pretrained_weights_load_once_and_keep_the_random_stream(monkeypatch) -> None:
    """The download path (faked): loads at the first forward, exactly once, and draws no random numbers."""
    donor = timm.create_model(NAME, pretrained=False, num_classes=0, img_size=32, **TINY)
    calls: list[int] = []

    def fake_create(name, pretrained=False, **kwargs):
        if pretrained:
            calls.append(1)
            torch.randn(100)  # timm's own init draws random numbers: they must not leak
            return donor
        return real_create(name, pretrained=False, **kwargs)

    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", fake_create)
    enc = tiny(pretrained=True)
    torch.manual_seed(5)
    enc(torch.randn(1, 3, 32, 32))
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.randn(1, 3, 32, 32)
    assert torch.equal(after, torch.rand(1))
    enc(torch.randn(1, 3, 32, 32))
    assert calls == [1]
    torch.testing.assert_close(enc.model.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)


def test_restored_weights_replace_pretrained_loading(monkeypatch) -> None:
    """Resuming / evaluating a run: load_state_dict (from the run's checkpoint) means nothing to download."""
    calls = _offline(monkeypatch)
    trained = tiny()
    holder = torch.nn.ModuleDict({"encoder": tiny(pretrained=True)})
    holder.load_state_dict(torch.nn.ModuleDict({"encoder": trained}).state_dict())
    assert not holder["encoder"].weights_pending
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(holder["encoder"](images).tokens, trained(images).tokens)
    assert calls == []


def test_cnn_backbones_work() -> None:
    enc = TimmEncoder("resnet10t", image_size=(64, 64), pretrained=False)
    assert enc.out_dim == 512 and enc.grid_for(64, 64) == (2, 2)
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 4, 512) and out.grid == (2, 2)
    mid = TimmEncoder("resnet10t", image_size=(64, 64), pretrained=False, block=-2)
    assert mid.grid_for(64, 64) == (4, 4) and mid(torch.randn(1, 3, 64, 64)).tokens.shape == (1, 16, 256)


def test_config_validation_and_defaults() -> None:
    cfg = TimmEncoderConfig()
    assert (cfg.name, cfg.pretrained, cfg.frozen, cfg.block, cfg.checkpoint) == (
        "vit_base_patch16_224.dino", True, True, -1, None)
    with pytest.raises(ValueError, match="did you mean 'vit_base_patch16_224'"):
        TimmEncoderConfig(name="vit_base_patch16_22")
    with pytest.raises(ValueError, match="may not set num_classes"):
        TimmEncoderConfig(model_kwargs={"num_classes": 3})
    with pytest.raises(UserError, match="model_kwargs"):
        TimmEncoderConfig(name=NAME, pretrained=False, model_kwargs={"no_such_arg": 1}).build(
            __import__("slotrun").ImageSpec(channels=3, height=32, width=32))


def test_cached_weights_load_without_the_network(monkeypatch) -> None:
    """The first attempt runs with huggingface_hub's offline mode on: a cached model never waits on the hub."""
    from huggingface_hub import constants

    donor = timm.create_model(NAME, pretrained=False, num_classes=0, img_size=32, **TINY)
    seen: list[bool] = []

    def cached_create(name, pretrained=False, **kwargs):
        if pretrained:
            seen.append(constants.HF_HUB_OFFLINE)
            return donor
        return real_create(name, pretrained=False, **kwargs)

    real_create = timm.create_model
    calls = _offline(monkeypatch)
    monkeypatch.setattr(timm, "create_model", cached_create)
    before = constants.HF_HUB_OFFLINE
    tiny(pretrained=True).load_pretrained()
    assert seen == [True] and calls == []  # found in the cache: no connection attempt
    assert constants.HF_HUB_OFFLINE == before  # the offline switch is put back
