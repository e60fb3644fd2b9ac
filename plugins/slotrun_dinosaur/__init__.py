"""DINOSAUR (Seitzer et al., 2023): slots from a frozen self-supervised ViT, trained by reconstructing its features.

Components: the `timm` encoder (any timm model, frozen by default, pretrained or from a local checkpoint) and
two feature decoders, `dinosaur_mlp` and `dinosaur_transformer`, each with the loss term "feature_recon".
"""
