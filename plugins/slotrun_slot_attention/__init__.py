"""Slot Attention (Locatello et al., 2020) for slotrun: the paper's CNN encoder, the Slot Attention grouper and
its soft k-means ablation, the spatial broadcast decoder and the set-prediction head.

The modules take plain arguments and work without slotrun's recipes; `configs` holds the recipe-facing config
classes and `plugin` registers them.
"""
