"""lesionseg: reproducible skin-lesion segmentation on ISIC 2016 Part 1."""

__version__ = "0.1.0"
