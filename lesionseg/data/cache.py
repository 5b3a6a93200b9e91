"""Prepared splits: uint8 tensors decoded once, saved with ``torch.save`` as a plain dict (``weights_only=True``).

``images`` uint8 ``(N, S, S, 3)`` RGB at model resolution ``S``; ``masks`` uint8 ``(N, S, S)`` 0/1
(nearest-neighbour resized); ``ids``, the N ISIC IDs; ``orig_sizes`` int64 ``(N, 2)``, original ``(height,
width)``; ``fullres_masks``, the original-resolution masks bit-packed and zlib-compressed (``data`` uint8,
``offsets`` int64 ``(N + 1,)``), so that evaluation at original resolution decodes no image. :class:`Split` reads one.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lesionseg import atomic
from lesionseg.errors import DataError, unreadable_torch_file

_SPLIT_KEYS = ("images", "masks", "ids", "orig_sizes", "fullres_masks")


def encode_mask(mask: np.ndarray) -> bytes:
    """Lossless compact encoding of a bool ``(H, W)`` mask (bit-packed, then zlib level 1:
    lesion masks are large uniform regions, so the fast level compresses nearly as well)."""
    return zlib.compress(np.packbits(mask.astype(bool, copy=False).ravel()).tobytes(), 1)


def _decode_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: bool ``(height, width)``."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(blob), dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


@dataclass
class Split:
    """One prepared split in memory (see module doc for shapes)."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str]
    orig_sizes: torch.Tensor
    fullres_data: torch.Tensor
    fullres_offsets: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def _fullres_blob(self, index: int) -> torch.Tensor:
        """The encoded original-resolution mask of image ``index`` (see :func:`encode_mask`)."""
        return self.fullres_data[int(self.fullres_offsets[index]) : int(self.fullres_offsets[index + 1])]

    def fullres_mask(self, index: int) -> np.ndarray:
        """Original-resolution mask of image ``index`` (bool ``(H, W)``)."""
        height, width = (int(v) for v in self.orig_sizes[index])
        return _decode_mask(self._fullres_blob(index).numpy().tobytes(), height, width)

    def subset(self, indices) -> Split:
        """A new split with the rows in ``indices`` (full-res masks re-packed)."""
        indices = [int(i) for i in indices]
        data, offsets = _pack([self._fullres_blob(i) for i in indices])
        return Split(
            self.images[indices],
            self.masks[indices],
            [self.ids[i] for i in indices],
            self.orig_sizes[indices],
            data,
            offsets,
        )

    @classmethod
    def concat(cls, splits: list[Split]) -> Split:
        """One split holding the rows of ``splits`` in order (e.g. train + val: all training pairs)."""
        data, offsets = _pack([split._fullres_blob(i) for split in splits for i in range(len(split))])
        return cls(
            torch.cat([s.images for s in splits]),
            torch.cat([s.masks for s in splits]),
            [isic_id for s in splits for isic_id in s.ids],
            torch.cat([s.orig_sizes for s in splits]),
            data,
            offsets,
        )

    @classmethod
    def from_arrays(cls, images, masks, ids, orig_sizes, fullres_blobs: list[bytes]) -> Split:
        data, offsets = _pack([torch.from_numpy(np.frombuffer(b, dtype=np.uint8).copy()) for b in fullres_blobs])
        return cls(
            torch.as_tensor(images, dtype=torch.uint8),
            torch.as_tensor(masks, dtype=torch.uint8),
            list(ids),
            torch.as_tensor(orig_sizes, dtype=torch.int64).reshape(-1, 2),
            data,
            offsets,
        )

    def save(self, path: Path) -> None:
        payload = {
            "images": self.images,
            "masks": self.masks,
            "ids": self.ids,
            "orig_sizes": self.orig_sizes,
            "fullres_masks": {"data": self.fullres_data, "offsets": self.fullres_offsets},
        }
        atomic.torch_save(payload, path)

    @classmethod
    def load(cls, path: Path) -> Split:
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise DataError(path, "prepared split not found; run the prepare stage first") from exc
        except Exception as exc:
            raise DataError(path, f"not a readable prepared split: {unreadable_torch_file(path, exc)}") from exc
        if not isinstance(payload, dict) or any(k not in payload for k in _SPLIT_KEYS):
            raise DataError(path, f"not a prepared split: expected keys {list(_SPLIT_KEYS)}")
        full = payload["fullres_masks"]
        split = cls(
            payload["images"],
            payload["masks"],
            list(payload["ids"]),
            payload["orig_sizes"],
            full["data"],
            full["offsets"],
        )
        n = len(split.ids)
        if split.images.shape[0] != n or split.masks.shape[0] != n or split.fullres_offsets.shape[0] != n + 1:
            raise DataError(path, "prepared split is inconsistent (row counts differ)")
        return split


def _pack(blobs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(b) for b in blobs], dtype=torch.int64)
    data = torch.cat(blobs) if blobs else torch.zeros(0, dtype=torch.uint8)
    return data, torch.cumsum(lengths, 0)
