"""Apply a trained checkpoint to image files: masks (and overlays) at original size."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from lesionseg import atomic
from lesionseg.data.images import image_size, load_image, model_input
from lesionseg.errors import DataError
from lesionseg.evaluation.drawing import overlay
from lesionseg.evaluation.review import needs_review
from lesionseg.model.postprocess import PostprocessConfig, ZoomConfig, clean_mask
from lesionseg.model.quality import mask_quality
from lesionseg.model.zoom import compose_logits, composed_at_input_size, predict_two_pass

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
QUALITY_TABLE = "quality.csv"
QUALITY_COLUMNS = ("file", "quality", "review", "mask_area_px")


@dataclass
class PredictSummary:
    """``written``: files written; ``failed``: input -> problem; ``rows``: one per image scored, the
    :data:`QUALITY_TABLE`'s (``review`` is ``"yes"``/``"no"``, or ``""`` without a review threshold)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(row["review"] == "yes" for row in self.rows)


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Image files named directly, plus images found (non-recursively) in named folders, sorted."""
    found = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found += sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.append(entry)
    return found


def predict_files(
    model: torch.nn.Module,
    paths: list[Path],
    size: int,
    output_dir: Path,
    *,
    threshold: float = 0.5,
    tta: bool = False,
    postprocess: PostprocessConfig = PostprocessConfig(),
    overlays: bool = False,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
    review_threshold: float | None = None,
    review_only: bool = False,
    zoom: ZoomConfig = ZoomConfig(),
) -> PredictSummary:
    """Write ``<stem>_mask.png`` (0/255, original size) and optionally ``<stem>_overlay.png`` per input,
    and :data:`QUALITY_TABLE`: per image its ``file``, mask ``quality``
    (:func:`~lesionseg.model.quality.mask_quality` at model resolution), ``review`` (``yes`` when the
    quality is below ``review_threshold``; empty without one) and ``mask_area_px`` (lesion pixels of the
    written mask). With ``review_only`` only the flagged images' masks (and overlays) are written.

    Images are resized to the checkpoint's ``size`` exactly as the prepare stage
    does, run through the model ``batch_size`` at a time, and the logits are
    upsampled to each image's original size before thresholding, as in
    evaluation, then ``postprocess`` cleans the mask. With ``zoom.enabled`` the zoom-in second pass runs as
    in evaluation (:mod:`lesionseg.model.zoom`). Unreadable inputs are logged and listed in ``summary.failed``;
    the others still run.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    with tqdm(total=len(paths), desc="predict", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            loaded = []
            for path in paths[start : start + batch_size]:
                try:
                    loaded.append((path, image_size(path), model_input(path, size)))
                except DataError as exc:
                    log.error("%s", exc)
                    summary.failed[str(path)] = exc.problem
            if loaded:
                batch = torch.from_numpy(np.stack([pixels for _, _, pixels in loaded]))
                logits, second = predict_two_pass(model, batch, zoom, threshold, tta, batch_size, device)
                quality = mask_quality(torch.sigmoid(composed_at_input_size(logits, second)), threshold).numpy()
                flagged = needs_review(quality, review_threshold)
                for index, ((path, (width, height), _), score, review) in enumerate(zip(loaded, quality, flagged)):
                    probs = torch.sigmoid(compose_logits(logits, second, index, height, width))[0, 0]
                    mask = clean_mask((probs > threshold).numpy(), postprocess)
                    if review or not review_only:
                        summary.written += _write_outputs(path, mask, output_dir, overlays)
                    verdict = "" if review_threshold is None else ("yes" if review else "no")
                    summary.rows.append(
                        {"file": str(path), "quality": float(score), "review": verdict, "mask_area_px": int(mask.sum())}
                    )
            bar.update(min(batch_size, len(paths) - start))
    table = pd.DataFrame(summary.rows, columns=list(QUALITY_COLUMNS))
    atomic.write_text(output_dir / QUALITY_TABLE, table.to_csv(index=False, float_format="%.6f"))
    summary.written.append(output_dir / QUALITY_TABLE)
    return summary


def _write_outputs(path: Path, mask: np.ndarray, output_dir: Path, overlays: bool) -> list[Path]:
    written = [output_dir / f"{path.stem}_mask.png"]
    with atomic.atomic_path(written[0]) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    if overlays:
        written.append(output_dir / f"{path.stem}_overlay.png")
        with atomic.atomic_path(written[1]) as tmp:
            Image.fromarray(overlay(np.asarray(load_image(path)), mask)).save(tmp, format="PNG")
    return written
