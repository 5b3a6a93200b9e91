"""How many images calibration needs: calibrate on ``--n`` random images of a labelled folder, score the rest.

The model runs once over the whole folder with its stored settings (flip TTA, zoom, clean-up) and every
threshold of ``lesionseg calibrate``'s grid is scored per image at original resolution, as
:func:`lesionseg.evaluation.calibrate.threshold_search` does (one pass serves every ``--erode``). Each draw
then applies the command's rule (:func:`~lesionseg.evaluation.calibrate.choose_threshold`: best threshold on
the draw, adopted only when the held-out gain's interval lies above 0) to ``--n`` images and scores the other
images at the threshold it stores; the gain is their mean IoU change over the stored threshold. ``--erode PX``
shrinks every mask by that many pixels at original resolution: a tight annotator's folder (0: the masks as
drawn). With the zoom on, the held-out images are re-thresholded with the second pass's crops placed at the
stored threshold (the command re-evaluates its choice; here that would cost a forward pass per draw).

    python scripts/calibration_gain.py --checkpoint models/model.pt --images ../shared/data/isic2018-extra \\
        --erode 8 0 --n 5 10 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lesionseg.data.cache import Split  # noqa: E402
from lesionseg.data.external import ExternalSet, prepare_external  # noqa: E402
from lesionseg.evaluation.calibrate import choose_threshold, search_grid, threshold_ious  # noqa: E402
from lesionseg.inference.exported import stored_settings  # noqa: E402
from lesionseg.inference.predict import predict  # noqa: E402
from lesionseg.model.checkpoint import load_model  # noqa: E402


def styles(split: Split, erosions: list[int]):
    """For each image, its mask as drawn eroded by each of ``erosions`` pixels (0: as drawn; 8-connected steps
    at original resolution), as bool tensors."""
    for i in range(len(split)):
        mask = split.fullres_mask(i)
        yield [torch.from_numpy(ndimage.binary_erosion(mask, iterations=e) if e > 0 else mask) for e in erosions]


def draws(iou: np.ndarray, stored: int, n: int, count: int, seed: int) -> dict:
    """``count`` random calibration sets of ``n`` images: the held-out gain of the rule and of the best
    threshold without the guard, and how often the rule moved the threshold."""
    rng = np.random.default_rng(seed)
    guarded, unguarded, adopted, chosen = [], [], [], []
    for _ in range(count):
        picked = np.zeros(len(iou), dtype=bool)
        picked[rng.choice(len(iou), n, replace=False)] = True
        choice = choose_threshold(iou[picked], stored)
        rest = iou[~picked]
        gain = float((rest[:, choice.best] - rest[:, stored]).mean())
        unguarded.append(gain)
        guarded.append(gain if choice.adopted else 0.0)
        adopted.append(choice.adopted)
        chosen.append(choice.best)

    def summary(values):
        return {
            "mean": float(np.mean(values)),
            "p5": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)),
        }

    return {
        "n": n,
        "draws": count,
        "gain": summary(guarded),
        "gain_unguarded": summary(unguarded),
        "adopted": float(np.mean(adopted)),
        "chosen_column_median": int(np.median(chosen)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path)
    parser.add_argument("--erode", type=int, nargs="+", default=[0], help="mask erosion(s) in pixels; 0 = as drawn")
    parser.add_argument("--n", type=int, nargs="+", default=[10], help="calibration set size(s)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.checkpoint)
    settings = stored_settings(checkpoint)
    split, _ = prepare_external(ExternalSet("set", args.images, args.masks), checkpoint["preprocessing"]["size"], 0)
    stored = settings.record()
    results = {"checkpoint": str(args.checkpoint), "images": str(args.images), "settings": stored, "sets": []}
    start = time.perf_counter()
    thresholds = search_grid(settings.threshold)
    stored = int(np.flatnonzero(np.isclose(thresholds, settings.threshold))[0])
    prediction = predict(model, split.images, settings)
    sizes = [(int(h), int(w)) for h, w in split.orig_sizes]
    # (styles, N, T): one forward pass and one clean-up per threshold serve every annotator's style.
    iou = np.stack(
        [
            threshold_ious(prediction.logits(i, *size), truths, settings, thresholds)
            for i, (size, truths) in enumerate(zip(sizes, styles(split, args.erode)))
        ],
        axis=1,
    )
    for pixels, style in zip(args.erode, iou):
        means = style.mean(0)
        entry = {
            "erode": pixels,
            "images": len(split),
            "iou_stored": float(means[stored]),
            "best_threshold_all": float(thresholds[means.argmax()]),
            "iou_best_all": float(means.max()),
            "search_seconds": time.perf_counter() - start,
            "by_n": [],
        }
        for n in args.n:
            drawn = draws(style, stored, n, args.draws, args.seed)
            drawn["chosen_threshold_median"] = float(thresholds[drawn.pop("chosen_column_median")])
            entry["by_n"].append(drawn)
        results["sets"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
