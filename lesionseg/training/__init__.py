"""Training phases, distributed training and cross-validation."""
