"""A timm backbone as a slot encoder: images -> the tokens of one block (before the final norm).

Plain nn.Module, usable without slotrun recipes. Weights are loaded in a separate, idempotent step,
`load_pretrained()`, never in the constructor: building the architecture (what `slotrun check` does) touches
neither the network nor the disk. The step runs
  - explicitly, when the caller (the training engine, a user's own loop) calls `encoder.load_pretrained()`;
  - otherwise lazily, at the first forward;
  - never, once the module's weights were restored with `load_state_dict` (resuming or evaluating a run:
    the run's checkpoint already holds the encoder's weights, so no download is needed offline).
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from slotrun.blocks import token_positions
from slotrun.errors import UserError
from slotrun.types import Features


def _pretrained_timm_model(name: str, create_kwargs: Mapping[str, Any]) -> nn.Module:
    """timm's pretrained model: from the local cache without touching the network, else downloaded once the
    Hugging Face hub answers (offline, huggingface_hub would retry for about a minute before failing)."""
    import socket
    from urllib.parse import urlparse

    import timm
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub: the cache or an error, no request
    try:
        return timm.create_model(name, pretrained=True, **create_kwargs)
    except Exception:  # noqa: BLE001 - not in the cache (or not a hub model): try the network below
        if offline:
            raise OSError("HF_HUB_OFFLINE is set and the weights are not in the local cache") from None
    finally:
        constants.HF_HUB_OFFLINE = offline
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise OSError(f"the weights are not in the local cache and {host} cannot be reached "
                      f"({exc.strerror or exc})") from None
    return timm.create_model(name, pretrained=True, **create_kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def unknown_model_message(name: str) -> str | None:
    """None if timm knows `name` (with or without a pretrained tag), else a message with a suggestion."""
    import timm

    if timm.is_model(name):
        return None
    known = timm.list_models()
    close = difflib.get_close_matches(name.split(".")[0], known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else " (see timm.list_models())"
    return f"unknown timm model '{name}'{hint}"


def create_architecture(name: str, image_size: tuple[int, int] | None, kwargs: Mapping[str, Any]
                        ) -> tuple[nn.Module, dict[str, Any]]:
    """timm.create_model without weights. `img_size` is passed when the architecture takes it (ViTs: the
    position embedding is built for this size); returns the model and the kwargs that built it."""
    import timm

    create = {"num_classes": 0, **kwargs}
    if image_size is not None and "img_size" not in create:
        try:
            return timm.create_model(name, pretrained=False, img_size=image_size, **create), \
                {**create, "img_size": image_size}
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise UserError(f"timm model '{name}': {_first_line(exc)} (check model.encoder.model_kwargs)") \
                    from None
    try:
        return timm.create_model(name, pretrained=False, **create), create
    except TypeError as exc:
        raise UserError(f"timm model '{name}': {_first_line(exc)} (check model.encoder.model_kwargs)") from None
    except RuntimeError as exc:  # timm's "Unknown model"
        raise UserError(unknown_model_message(name) or f"timm model '{name}': {_first_line(exc)}") from None


class TimmEncoder(nn.Module):
    """Images [B, C, H, W] -> Features: the output of block `block` of a timm model (before the final norm),
    prefix tokens (class, register, distillation) dropped, as tokens [B, h*w, D] on the patch grid (h, w).
    The reconstruction target (DINOSAUR) is the same features, detached.

    name: a timm model name, optionally with a pretrained tag ("vit_base_patch16_224.dino").
    image_size: (H, W) the model is built for (ViTs size their position embedding for it); None = timm's.
    block: index into the model's intermediates (`feature_info`: ViT blocks, CNN stages); negative counts
        from the end; -1 = the last.
    frozen: no gradients (requires_grad False, forward under no_grad) and always in eval mode.
    pretrained: load timm's pretrained weights (downloaded and cached by timm) in `load_pretrained()`.
    checkpoint: a local weights file (safetensors, or a torch state dict loaded with weights_only=True);
        takes precedence over `pretrained`.
    model_kwargs: extra keyword arguments for timm.create_model (e.g. patch_size, depth, dynamic_img_size).
    target_model: the reconstruction target comes from a second copy of the model (`target_model`, the same
        pretrained weights, always frozen) instead of the tokens themselves: SPOT's student reads its slots from
        a partly fine-tuned ViT and reconstructs the original ViT's features (gkakogeorgiou/spot train_spot_2.py,
        `SPOT(encoder_new, args, encoder)`: the `second_encoder` of spot.py).
    """

    def __init__(
        self,
        name: str = "vit_base_patch16_224.dino",
        *,
        in_channels: int = 3,
        image_size: tuple[int, int] | None = None,
        block: int = -1,
        frozen: bool = True,
        pretrained: bool = True,
        checkpoint: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        target_model: bool = False,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if in_channels != 3:
            kwargs.setdefault("in_chans", in_channels)
        self.name = name
        self.model, self.create_kwargs = create_architecture(name, image_size, kwargs)
        if not callable(getattr(self.model, "forward_intermediates", None)):
            raise UserError(f"timm model '{name}' has no forward_intermediates(); choose a ViT or CNN that has "
                            "it (timm >= 1.0 models generally do)")
        info = list(getattr(self.model, "feature_info", None) or [])
        count = len(info)
        index = block + count if block < 0 else block
        if not 0 <= index < count:
            raise UserError(f"block {block} is out of range for timm model '{name}', which has {count} "
                            f"(use -{count}..{count - 1}; -1 = the last)")
        self.block = index
        self.out_dim = int(info[index]["num_chs"])
        self.target_dim = self.out_dim
        self.frozen = frozen
        self.pretrained = pretrained
        self.checkpoint = checkpoint
        self._weights_pending = checkpoint is not None or pretrained
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()
        self.target_model: nn.Module | None = None
        if target_model:
            self.target_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.register_load_state_dict_pre_hook(_restored)

    # ---- weights ----------------------------------------------------------------------------------------

    @property
    def weights_pending(self) -> bool:
        """True until pretrained/checkpoint weights are loaded (or restored through load_state_dict)."""
        return self._weights_pending

    def load_pretrained(self) -> None:
        """Load the configured weights once (local checkpoint first, else timm's download). Idempotent.
        Raises slotrun.errors.UserError, in one line, when the weights cannot be had."""
        if not self._weights_pending:
            return
        if self.checkpoint is not None:
            self._load_file(self.checkpoint)
        else:
            self._load_timm()
        if self.target_model is not None:  # the target copy starts from the same weights
            with torch.no_grad():
                self.target_model.load_state_dict(self.model.state_dict())
        self._weights_pending = False

    def _load_file(self, path: str) -> None:
        import timm.models

        where = "model.encoder.checkpoint"
        if not os.path.isfile(path):
            raise UserError(f"encoder checkpoint not found: {path} (set {where} to a weights file)")
        try:
            state = timm.models.load_state_dict(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"cannot read encoder checkpoint {path}: {_first_line(exc)}") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UserError(f"encoder checkpoint {path} is not a state dict of tensors")
        # The architecture's own converter: original (e.g. DINO) key layouts, position-embedding resampling.
        convert = getattr(sys.modules.get(type(self.model).__module__), "checkpoint_filter_fn", None)
        if callable(convert):
            try:
                state = convert(dict(state), self.model)
            except Exception:  # noqa: BLE001 - a converter that does not apply leaves the state as is
                pass
        own = self.model.state_dict()
        heads = getattr(self.model, "pretrained_cfg", {}).get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(h + "." for h in heads))}
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise UserError(f"encoder checkpoint {path} does not fit timm model '{self.name}' "
                            f"({_first_line(exc).split(':', 1)[-1].strip()[:200]})") from None
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append("missing " + ", ".join(result.missing_keys[:4]))
            if result.unexpected_keys:
                parts.append("unexpected " + ", ".join(result.unexpected_keys[:4]))
            raise UserError(f"encoder checkpoint {path} does not fit timm model '{self.name}' "
                            f"({'; '.join(parts)})")

    def _load_timm(self) -> None:
        try:
            with torch.random.fork_rng(devices=[]):  # a second init must not shift the run's random stream
                source = _pretrained_timm_model(self.name, self.create_kwargs)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - offline, missing cache, hub errors: all end the same way
            raise UserError(
                f"could not get pretrained weights for timm model '{self.name}' ({_first_line(exc)}); "
                f"download them once while online (timm caches them), or point at a local file with "
                f"model.encoder.checkpoint=/path/to/weights.safetensors, or set model.encoder.pretrained=false "
                f"for a random init"
            ) from None
        with torch.no_grad():
            self.model.load_state_dict(source.state_dict())

    # ---- modes ------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> TimmEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # no dropout / batch-norm updates in a frozen backbone, ever
        if self.target_model is not None:
            self.target_model.eval()  # always frozen
        return self

    # ---- forward ----------------------------------------------------------------------------------------

    def feature_map(self, images: Tensor, model: nn.Module | None = None) -> Tensor:
        """[B, D, h, w] output of the chosen block (no weight loading, no grad handling); `model`: another copy
        of the architecture (the target model), default self.model."""
        (fmap,) = (self.model if model is None else model).forward_intermediates(
            images, indices=[self.block], norm=False, stop_early=True, output_fmt="NCHW",
            intermediates_only=True,
        )
        return fmap

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        key = (height, width)
        if key not in self._grids:
            patch_embed = getattr(self.model, "patch_embed", None)
            if patch_embed is not None and callable(getattr(patch_embed, "dynamic_feat_size", None)):
                grid = patch_embed.dynamic_feat_size((height, width))
            else:  # CNNs: ask the network itself (exact for any padding / rounding)
                p = next(self.model.parameters())
                with torch.no_grad():
                    images = torch.zeros(1, self.model_in_channels, height, width, device=p.device, dtype=p.dtype)
                    grid = self.feature_map(images).shape[-2:]
            self._grids[key] = (int(grid[0]), int(grid[1]))
        return self._grids[key]

    @property
    def model_in_channels(self) -> int:
        return int(self.create_kwargs.get("in_chans", 3))

    def forward(self, images: Tensor) -> Features:
        if self._weights_pending:
            self.load_pretrained()
        if self.frozen:
            with torch.no_grad():
                fmap = self.feature_map(images)
        else:
            fmap = self.feature_map(images)
        h, w = fmap.shape[-2:]
        tokens = fmap.flatten(2).transpose(1, 2)
        grid = (int(h), int(w))
        positions = token_positions(grid, tokens.shape[0], device=tokens.device)
        if self.target_model is None:
            target = tokens.detach()
        else:
            with torch.no_grad():
                target = self.feature_map(images, self.target_model).flatten(2).transpose(1, 2)
        return Features(tokens=tokens, grid=grid, positions=positions, target=target)


def _restored(module: TimmEncoder, state_dict: Mapping[str, Any], prefix: str, *_: Any) -> None:
    """load_state_dict pre-hook: weights restored from a run's checkpoint replace any pretrained loading."""
    if any(k.startswith(prefix + "model.") for k in state_dict):
        module._weights_pending = False
