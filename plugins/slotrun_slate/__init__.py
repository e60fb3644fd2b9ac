"""SLATE (Singh et al. 2021) for slotrun: the discrete-VAE token encoder `slate_dvae`, the autoregressive
transformer decoder `slate_transformer` (in evaluation it also returns images from its greedily generated
tokens, for the `mse` metric), and `reconstruct(model, batch)` for images from slots."""

from slotrun_slate.dvae import DVAE, SlateEncoder, SlateFeatures
from slotrun_slate.reconstruct import Reconstruction, reconstruct
from slotrun_slate.transformer import SlateTransformerDecoder

DVAE_PREFIX = "encoder.dvae."  # parameter-name prefix of the dVAE in a SlotModel (its own optimiser group)

__all__ = ["DVAE", "DVAE_PREFIX", "Reconstruction", "SlateEncoder", "SlateFeatures", "SlateTransformerDecoder",
           "reconstruct"]
