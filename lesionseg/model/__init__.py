"""The network: the MobileNetV2 U-Net, its checkpoints and ensembles."""
