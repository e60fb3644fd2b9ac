"""The smallest real model over the built-in synthetic scenes (16 px, 3 slots): trains at ~40 steps/s on one
CPU thread, for tests that run real training processes. Recipes add [train] and [eval] tables to it."""

MODEL = """
[run]
dir = "runs/unused"

[data]
type = "shapes"
image_size = 16
num_train = {num_train}
num_val = 8
num_test = 8
cache_dir = "{cache}"

[model.encoder]
type = "sa_cnn"
channels = 8

[model.grouper]
type = "slot_attention"
num_slots = 3
iters = 2
slot_dim = 16
mlp_hidden = 16

[model.decoder]
type = "spatial_broadcast"
broadcast_size = 8
channels = 8
"""
