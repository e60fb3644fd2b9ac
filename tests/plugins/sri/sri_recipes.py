"""The towers recipes and the overrides that shrink them for tests (shared by the SRI test modules)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TOWERS = ROOT / "recipes" / "sri" / "towers.toml"
INDEPENDENT = ROOT / "recipes" / "sri" / "towers_independent.toml"
SMALL = [
    "data.image_size=32", "model.encoder.channels=16", "model.grouper.latent_dim=16",
    "model.grouper.inner.slot_dim=16", "model.grouper.inner.mlp_hidden=32", "model.grouper.inner.num_slots=4",
    "model.decoder.channels=16", "model.prior.scene_dim=16", "model.prior.hidden=32",
    "model.prior.decoder.channels=16",
]
