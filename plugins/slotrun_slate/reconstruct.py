"""Image reconstruction for a SLATE model: the contract between its two halves.

The autoregressive decoder predicts discrete tokens; pixels need the dVAE decoder, which lives in the encoder.
So the decoder returns recon=None from its forward (training and evaluation stay cheap: one teacher-forced pass),
and images are made here, by whoever needs them (pictures, MSE/FID evaluation, generation):

    tokens = model.decoder.generate(slots)          # greedy AR decoding, [B, N] (embed=: tied tables)
    images = model.encoder.decode_tokens(tokens)    # dVAE decoder, [B, C, H, W]

Any encoder with `decode_tokens(indices, grid)` and any decoder with `generate(slots, num_tokens, grid)` work.
In evaluation mode `slate_transformer` also returns these generated images as DecoderOutput.recon (its
`eval_recon` option), which is how `slotrun eval` reports the image MSE of a SLATE run.
"""

from __future__ import annotations

import dataclasses

import attrs
import torch
from torch import Tensor, nn

from slotrun.types import Batch

from slotrun_slate.dvae import SlateFeatures


@attrs.frozen(kw_only=True)
class Reconstruction:
    """generated: images decoded from greedily generated tokens [B, C, H, W] (clamped to [0, 1] when the
    decoder's clamp_recon is set, as it scores them); tokens: those tokens [B, N];
    dvae: the dVAE's own reconstruction from the image's tokens (the upper bound of `generated`);
    masks: the decoder's slot masks [B, K, h, w] under teacher forcing, or None."""

    generated: Tensor
    tokens: Tensor
    dvae: Tensor
    masks: Tensor | None


@torch.no_grad()
def reconstruct(model: nn.Module, batch: Batch | Tensor, *, num_slots: int | None = None,
                iters: int | None = None) -> Reconstruction:
    """Reconstruct images with a SLATE-style model (a SlotModel or anything with .encoder/.grouper/.decoder).
    Runs in eval mode (restoring the previous mode), without gradients."""
    if isinstance(batch, Tensor):
        batch = Batch(image=batch)
    encoder, decoder = model.encoder, model.decoder
    for need, owner in (("decode_tokens", encoder), ("generate", decoder)):
        if not callable(getattr(owner, need, None)):
            raise TypeError(f"reconstruct() needs an encoder with decode_tokens() and a decoder with generate(); "
                            f"{type(owner).__name__} has no {need}()")
    was_training = model.training
    model.eval()
    try:
        features = encoder(batch.image)
        slots = model.grouper(features, num_slots=num_slots, iters=iters)
        grid = tuple(features.grid)
        embed = getattr(features, "embed_decoder", None)  # the encoder's tables, when the decoder reads them
        tokens = decoder.generate(slots.slots, grid[0] * grid[1], grid, **({"embed": embed} if embed else {}))
        generated = encoder.decode_tokens(tokens, grid)
        if getattr(decoder, "clamp_recon", False):  # the images the decoder's evaluation scores
            generated = generated.clamp(0.0, 1.0)
        dvae = encoder.decode_tokens(features.target.argmax(dim=-1), grid)
        # Masks only: without the pixel hook the decoder does not generate its evaluation images a second time.
        plain = dataclasses.replace(features, decode_tokens=None) if isinstance(features, SlateFeatures) else features
        masks = decoder(slots, plain, batch).masks
    finally:
        model.train(was_training)
    return Reconstruction(generated=generated, tokens=tokens, dvae=dvae, masks=masks)
