"""What the model sees in training: the dataset, its augmentation on the CPU or the GPU, lesion crops."""
