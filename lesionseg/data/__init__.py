"""Reading the ISIC archives, decoding and caching image/mask pairs, augmentation."""
