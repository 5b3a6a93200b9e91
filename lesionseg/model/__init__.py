"""The MobileNetV2 U-Net, its checkpoints, ensembles and batched inference."""
