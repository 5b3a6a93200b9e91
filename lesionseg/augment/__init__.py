"""What the model sees in training: the dataset, its augmentation (albumentations on the CPU, batched on the
GPU) and lesion-aware crops."""
