"""Apply a trained checkpoint to image files: masks (and overlays) at original size."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from lesionseg import atomic
from lesionseg.data.external import IMAGE_EXTENSIONS, MASK_SUFFIXES
from lesionseg.data.images import image_size, load_image, model_input
from lesionseg.errors import DataError
from lesionseg.inference.predict import predict
from lesionseg.inference.settings import InferenceSettings
from lesionseg.report.drawing import overlay

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)
_QUALITY_TABLE = "quality.csv"
_QUALITY_COLUMNS = ("file", "mask", "quality", "review", "mask_area_px")
_MASK_ENDING = "_mask.png"
_OVERLAY_ENDING = "_overlay.png"
_CLASH_JOINER = "__"  # between the folders and the file name in the output name of an image whose stem clashes


@dataclass
class PredictSummary:
    """``written``: files written; ``failed``: input -> problem; ``rows``: one per image scored, the
    ``quality.csv``'s (``review`` is ``"yes"``/``"no"``, or ``""`` without a review threshold)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(row["review"] == "yes" for row in self.rows)


@dataclass
class PredictInputs:
    """``images``: the images to predict, each once, in the order given; ``skipped``: masks and overlays among
    the inputs, not predicted."""

    images: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _ImageOutputs:
    """Where one image's results go in the output folder: ``<name>_mask.png`` and ``<name>_overlay.png``."""

    image: Path
    name: str

    @property
    def mask(self) -> str:
        return self.name + _MASK_ENDING

    @property
    def overlay(self) -> str:
        return self.name + _OVERLAY_ENDING


def collect_inputs(inputs: list[Path]) -> PredictInputs:
    """Image files named directly, plus images found (non-recursively) in named folders, sorted per folder; a
    file named twice (or also found in a named folder) once. Masks and overlays are skipped: files named like
    predict's outputs, and masks beside their images named as ``lesionseg evaluate`` reads them."""
    collected, seen, stems = PredictInputs(), set(), {}
    for entry in map(Path, inputs):
        found = _images_in(entry) if entry.is_dir() else [entry]
        for path in found:
            if path.parent not in stems:
                stems[path.parent] = {p.stem for p in _images_in(path.parent)} if path.parent.is_dir() else set()
            if _is_mask_or_overlay(path, stems[path.parent]):
                collected.skipped.append(path)
            elif (key := path.resolve()) not in seen:
                seen.add(key)
                collected.images.append(path)
    return collected


def _is_mask_or_overlay(path: Path, folder_stems: set[str]) -> bool:
    """Whether ``path`` is a mask or an overlay rather than an image to segment: named as predict names its
    outputs (``*_mask.png``, ``*_overlay.png``), or a mask beside its image in the folder whose image stems are
    ``folder_stems``, named as ``lesionseg evaluate`` pairs them (``ISIC_1.jpg`` -> ``ISIC_1_segmentation.png``)."""
    if path.name.endswith((_MASK_ENDING, _OVERLAY_ENDING)):
        return True
    stem = path.stem
    return any(stem.endswith(suffix) and stem[: -len(suffix)] in folder_stems for suffix in MASK_SUFFIXES)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def output_names(images: list[Path]) -> list[str]:
    """Each image's output name: its stem (``a.jpg`` -> ``a``, its mask ``a_mask.png``), or, where two or more
    images' stems are equal (ignoring case, as some file systems do), the image's path from the folder those
    images share, folders joined by ``__``, extension kept: ``a.jpg`` and ``a.png`` -> ``a.jpg``, ``a.png``;
    ``d1/a.jpg`` and ``d2/a.jpg`` -> ``d1__a.jpg``, ``d2__a.jpg``."""
    names = [path.stem for path in images]
    by_stem: dict[str, list[int]] = {}
    for index, path in enumerate(images):
        by_stem.setdefault(path.stem.casefold(), []).append(index)
    for indices in by_stem.values():
        if len(indices) > 1:
            paths = [Path(os.path.abspath(images[i])) for i in indices]
            common = os.path.commonpath([path.parent for path in paths])
            for index, path in zip(indices, paths):
                names[index] = _CLASH_JOINER.join(path.relative_to(common).parts)
    return names


def _plan_outputs(
    images: list[Path], output_dir: Path, *, overlays: bool = False, overwrite: bool = False
) -> list[_ImageOutputs]:
    """Every image's :class:`_ImageOutputs` (:func:`output_names`), checked before anything is written: raises
    :class:`DataError` naming every problem when two images would still share a name, when an output would
    replace one of the input files or a folder, or (without ``overwrite``) an existing file that the last predict
    run into ``output_dir`` did not write (:func:`_earlier_outputs`). With ``overlays`` the overlays' names are
    checked too. Every image's names are checked, also for ``predict_files(review_only=True)``, which writes the
    masks of the flagged images only: any image may be flagged."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(output_dir, "nothing written: the output folder is a file")
    outputs = [_ImageOutputs(path, name) for path, name in zip(images, output_names(images))]
    sharing: dict[str, list[Path]] = {}
    for output in outputs:
        sharing.setdefault(output.mask, []).append(output.image)
    problems = [
        f"{name} would be the mask of {' and of '.join(map(str, paths))} (rename one)"
        for name, paths in sharing.items()
        if len(paths) > 1
    ]
    targets = [_QUALITY_TABLE, *(o.mask for o in outputs), *((o.overlay for o in outputs) if overlays else ())]
    own, input_files = _earlier_outputs(output_dir), {_file_id(path) for path in images} - {None}
    replaced = []
    for name in targets:
        target = output_dir / name
        if target.is_dir():
            problems.append(f"{target} is a folder")
        elif target.is_file() and _file_id(target) in input_files:
            problems.append(f"{target} is one of the inputs")
        elif target.is_file() and name not in own and not overwrite:
            replaced.append(name)
    if replaced:
        problems.append(
            f"{len(replaced)} file(s) there that the last predict run into it did not write (not listed in its "
            f"{_QUALITY_TABLE}) would be replaced: {first_names(replaced)}; give another --output, or --overwrite to "
            "replace them"
        )
    if problems:
        raise DataError(output_dir, "nothing written: " + "; ".join(problems))
    return outputs


def _earlier_outputs(output_dir: Path) -> set[str]:
    """The names of the files the last predict run into ``output_dir`` wrote there, from its
    :data:`_QUALITY_TABLE`: the table, each row's mask and overlay (a table from before the ``mask`` column:
    ``<stem of file>_mask.png``). Empty without a table, or when the table there is not predict's."""
    path = Path(output_dir) / _QUALITY_TABLE
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError):  # none there, or not a table (pandas' errors are ValueErrors)
        return set()
    if not set(_QUALITY_COLUMNS) - {"mask"} <= set(table.columns):
        return set()
    masks = table["mask"] if "mask" in table.columns else [Path(file).stem + _MASK_ENDING for file in table["file"]]
    owned = {_QUALITY_TABLE}
    for mask in masks:
        if mask.endswith(_MASK_ENDING):
            owned |= {mask, mask[: -len(_MASK_ENDING)] + _OVERLAY_ENDING}
    return owned


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode): the same for two names of one file (links)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def first_names(names: list[str], shown: int = 10) -> str:
    """The first ``shown`` of ``names`` and how many more, for messages."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def predict_files(
    model: torch.nn.Module,
    paths: list[Path],
    size: int,
    output_dir: Path,
    settings: InferenceSettings = InferenceSettings(),
    *,
    overlays: bool = False,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
    review_only: bool = False,
    overwrite: bool = False,
) -> PredictSummary:
    """Write ``<name>_mask.png`` (0/255, original size), optionally ``<name>_overlay.png``, per input, ``name`` its
    stem unless stems clash (:func:`output_names`), and ``quality.csv``: per image ``file``, ``mask`` (its name),
    ``quality``, ``review`` (``yes``/``no``; empty without a review threshold) and ``mask_area_px``. With
    ``review_only`` only the flagged images' masks are written.

    Every name is checked before anything is written (:class:`DataError`: no input file and, without ``overwrite``,
    no file an earlier predict did not write is replaced; docs/predict.md). Images go through
    :func:`~lesionseg.inference.predict.predict` ``batch_size`` at a time, each mask at its original size as
    evaluation takes it; unreadable inputs are logged and listed in ``summary.failed``, the others still run.
    """
    output_dir = Path(output_dir)
    outputs = _plan_outputs(paths, output_dir, overlays=overlays, overwrite=overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_table(output_dir, [{"file": str(o.image), "mask": o.mask} for o in outputs])
    summary = PredictSummary()
    with tqdm(total=len(outputs), desc="predict", disable=not progress) as bar:
        for start in range(0, len(outputs), batch_size):
            loaded = []
            for output in outputs[start : start + batch_size]:
                try:
                    loaded.append((output, image_size(output.image), model_input(output.image, size)))
                except DataError as exc:
                    log.error("%s", exc)
                    summary.failed[str(output.image)] = exc.problem
            if loaded:
                batch = torch.from_numpy(np.stack([pixels for _, _, pixels in loaded]))
                prediction = predict(model, batch, settings, batch_size, device)
                for index, (output, (width, height), _) in enumerate(loaded):
                    review = bool(prediction.review[index])
                    mask = prediction.mask(index, height, width).numpy()
                    if review or not review_only:
                        summary.written += _write_outputs(output, mask, output_dir, overlays)
                    verdict = "" if settings.review_threshold is None else ("yes" if review else "no")
                    summary.rows.append(
                        {
                            "file": str(output.image),
                            "mask": output.mask,
                            "quality": float(prediction.quality[index]),
                            "review": verdict,
                            "mask_area_px": int(mask.sum()),
                        }
                    )
            bar.update(min(batch_size, len(outputs) - start))
    _write_table(output_dir, summary.rows)
    summary.written.append(output_dir / _QUALITY_TABLE)
    return summary


def _write_table(output_dir: Path, rows: list[dict]) -> None:
    table = pd.DataFrame(rows, columns=list(_QUALITY_COLUMNS))
    atomic.write_text(output_dir / _QUALITY_TABLE, table.to_csv(index=False, float_format="%.6f"))


def _write_outputs(output: _ImageOutputs, mask: np.ndarray, output_dir: Path, overlays: bool) -> list[Path]:
    written = [output_dir / output.mask]
    with atomic.atomic_path(written[0]) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    if overlays:
        written.append(output_dir / output.overlay)
        with atomic.atomic_path(written[1]) as tmp:
            Image.fromarray(overlay(np.asarray(load_image(output.image)), mask)).save(tmp, format="PNG")
    return written
