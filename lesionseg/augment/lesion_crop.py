"""The albumentations transform of the lesion-aware crop (:func:`lesionseg.augment.augmentation.lesion_crop_boxes`).

A module of its own, imported where a CPU transform is built: it subclasses albumentations' ``DualTransform``,
which :mod:`lesionseg.augment.augmentation` does not import, and a class at module level pickles into DataLoader
worker processes.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from lesionseg.augment.augmentation import lesion_crop_boxes


class LesionCrop(A.DualTransform):
    """With probability ``p``, a random square crop that keeps the whole lesion, resized to the input size
    (image bilinear, mask nearest): the same boxes as the batched path draws."""

    def get_params_dependent_on_data(self, params, data):
        mask = torch.from_numpy(np.asarray(data["mask"]) > 0)[None]
        draws = torch.from_numpy(self.random_generator.random(3)).float()[None]
        top, left, side = lesion_crop_boxes(mask, draws)[0].tolist()
        return {"top": top, "left": left, "side": side}

    @staticmethod
    def _warp(array, top, left, side, interpolation):
        # Output pixel x reads the input at left + (x + 0.5) * scale - 0.5, as crop_theta samples it.
        size = array.shape[0]
        scale = side / size
        inverse = np.array([[scale, 0, left + 0.5 * scale - 0.5], [0, scale, top + 0.5 * scale - 0.5]])
        flags = interpolation | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(array, inverse, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT_101)

    def apply(self, img, top, left, side, **params):
        return self._warp(img, top, left, side, cv2.INTER_LINEAR)

    def apply_to_mask(self, mask, top, left, side, **params):
        return self._warp(mask, top, left, side, cv2.INTER_NEAREST)
