"""Throughput benchmark: bare training steps vs the real training loop, inference, prepare.

Prints one JSON object (and a readable table). Each part runs in a fresh
process so that its peak resident memory is its own. Run with
``python benchmarks/bench.py [--device cpu] [--size 128] [--batch-size 16]``.

- ``bare_train_ips``: images/s of forward + DiceBCE + backward + Adam step on
  random tensors already in memory;
- ``pipeline_train_ips``: images/s of :func:`lesionseg.training.train.train_model` for
  one full epoch over cached uint8 tensors (real augmentation, per-epoch
  validation on a split of `--val-fraction` (default 5%), checkpointing, history);
- ``ratio`` = pipeline / bare, for the frozen encoder (level 0) and all layers:
  both measured in one process, interleaved round by round after a warm-up
  round, median of 3 rounds;
- all three for each training step format of ``--formats`` (:data:`FORMATS`: fp32, fp32 channels-last,
  bf16 autocast, bf16 channels-last; bf16 only where it is native, else marked skipped), interleaved in the
  same rounds, with ``bare_vs_fp32`` / ``loop_vs_fp32``: its bare / loop rate against the fp32 bare step of
  the same round;
- ``infer_ips`` at batch 1 and at the training batch size;
- ``prepare_ips``: decode + resize + cache of generated JPEG/PNG pairs at
  1024x768 and 4288x2848 with the real prepare code (worker processes), and
  whether its output equals the in-process path;
- ``quality``: the share of ``lesionseg predict``'s time (:func:`lesionseg.serving.predict_files.predict_files` on
  generated 1024x768 JPEGs, flip TTA and clean-up, as the exported model predicts) spent computing the masks'
  quality score (:func:`lesionseg.inference.quality.mask_quality`, timed call by call), and predict's time with the
  score replaced by zeros; median of 3 interleaved rounds after a warm-up;
- ``zoom``: ``lesionseg predict``'s time (:func:`~lesionseg.serving.predict_files.predict_files` as above) with the
  zoom-in second pass (:mod:`lesionseg.inference.zoom`) on every image (its box fixed to the central half, the
  worst case: a real first pass skips large and empty masks) against without; median of 3 interleaved rounds;
- ``e2e`` (not in the default parts): a real ``dvc repro`` in a scratch copy of
  the project on ``--source`` archives (else generated ones), timed per stage
  (start-up, work, shut-down) with the end-to-end efficiency; see
  ``benchmarks/e2e.py``. E.g. ``--parts e2e --source ../shared/data/isic2016-dev
  --weights ../shared/weights/mobilenet_v2_imagenet.pth``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEATS = 3


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def _model(level):
    from lesionseg.model.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(encoder_weights="none"), unfreeze=level)


def _random_split(n: int, size: int, seed: int):
    from lesionseg.data.cache import Split, encode_mask

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    return Split.from_arrays(pixels, masks, ids, [(size, size)] * n, [encode_mask(m) for m in masks])


# The training step's number formats and layouts: name -> (runtime.amp, runtime.channels_last).
FORMATS = {"fp32": ("off", False), "fp32-cl": ("off", True), "bf16": ("bf16", False), "bf16-cl": ("bf16", True)}
REFERENCE = "fp32"  # every format's rates are also given as a ratio to this format's bare step of the same round


def bare_steps(model, device, size, batch, steps, numerics):
    """A function timing ``steps`` bare training steps of ``model``: forward + DiceBCE + backward + Adam
    (the pipeline's optimizer, :func:`~lesionseg.training.train.make_optimizer`) on distinct random
    batches already on ``device``, in ``numerics``' precision and layout (the model already in that layout);
    it returns images/s."""
    from lesionseg.runtime import autocast_for
    from lesionseg.training.losses import DiceBCELoss
    from lesionseg.training.train import TrainConfig, make_optimizer

    optimizer = make_optimizer(model, TrainConfig(lr=1e-4), device)
    # Distinct batches, like an epoch's: one reused batch would sit in cache and flatter the bare rate.
    xs = [
        torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=numerics.memory_format)
        for _ in range(steps)
    ]
    ys = [(torch.rand(batch, 1, size, size, device=device) > 0.5).float() for _ in range(steps)]
    loss_fn = DiceBCELoss()

    def rate():
        _sync(device)
        start = time.perf_counter()
        for x, y in zip(xs, ys):
            with autocast_for(numerics.precision, device):
                logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return steps * batch / (time.perf_counter() - start)

    return rate


def bare_train_ips(level, device_name, size, batch, steps, amp="auto", channels_last="auto"):
    """Bare training images/s at unfreeze ``level`` in the precision and layout ``runtime.amp`` and
    ``runtime.channels_last`` resolve to on the device: median of 3 timed rounds after a warm-up round."""
    from lesionseg.model.model import parse_unfreeze_level
    from lesionseg.runtime import resolve_numerics

    device = torch.device(device_name)
    numerics = resolve_numerics(amp, channels_last, device)
    model = _model(parse_unfreeze_level(level)).to(device, memory_format=numerics.memory_format).train()
    rate = bare_steps(model, device, size, batch, steps, numerics)
    rate()
    return statistics.median(rate() for _ in range(REPEATS))


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``amp: auto`` would train in bf16 on ``device`` (an Ampere or later GPU, or a CPU with native bf16).
    On CUDA it asks the device: call it in the process that measures, not before forking one."""
    from lesionseg.runtime import resolve_numerics

    return resolve_numerics("auto", False, device).precision == "bf16"


def train_ratio(
    level,
    device_name,
    size,
    batch,
    steps,
    images,
    formats=("fp32",),
    augment_on="auto",
    num_workers=0,
    val=0.05,
    rounds=REPEATS,
):
    """Bare steps and the real loop of every format in ``formats`` (:data:`FORMATS`) in one process,
    interleaved round by round.

    Each round times, format after format (the order rotated every round), ``steps`` bare steps, then one
    full epoch of :func:`train_model` (with its validation, checkpoint and history). Per format: the
    medians over ``rounds`` rounds, after one warm-up round, of its bare and loop images/s, of ``ratio`` = loop / its
    own bare step, and of ``bare_vs_fp32`` / ``loop_vs_fp32`` = its rates / the fp32 bare step of the same
    round (fp32 is always measured). Interleaving makes all rates see the same machine conditions. bf16
    formats where bf16 is not native (:func:`bf16_is_native`) are reported as skipped: emulated bf16 is
    about 12x slower on an AVX2 CPU and would only stretch the run.
    """
    from lesionseg.runtime import resolve_numerics
    from lesionseg.training.train import TrainConfig

    device = torch.device(device_name)
    names = [REFERENCE, *(f for f in formats if f != REFERENCE)]
    native = bf16_is_native(device)
    skipped = {
        f: "bf16 is not native here (amp: auto does not resolve to bf16)" for f in names if "bf16" in f and not native
    }
    names = [f for f in names if f not in skipped]
    train, val = _random_split(images, size, 0), _random_split(max(1, round(images * val)), size, 1)
    bare_rates, pipeline_rates = {}, {}
    for name in names:
        amp, channels_last = FORMATS[name]
        numerics = resolve_numerics(amp, channels_last, device)
        model = _model(level).to(device, memory_format=numerics.memory_format).train()
        bare_rates[name] = bare_steps(model, device, size, batch, steps, numerics)
        config = TrainConfig(
            epochs=1,
            batch_size=batch,
            device=device_name,
            progress=False,
            lr=1e-4,
            augment_on=augment_on,
            amp=amp,
            channels_last=channels_last,
            num_workers=num_workers,
        )
        pipeline_rates[name] = _pipeline_rate(_model(level), config, train, val, images)

    timed, peak_bare = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds + 1):
            measured = {}
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                bare = bare_rates[name]()
                peak_bare = peak_bare or _peak_mb()
                measured[name] = (bare, pipeline_rates[name](Path(tmp)))
            if round_:  # round 0 is the warm-up
                timed.append(measured)
    result = {name: {"skipped": why} for name, why in skipped.items()}
    for name in names:
        bare = [r[name][0] for r in timed]
        loop = [r[name][1] for r in timed]
        reference = [r[REFERENCE][0] for r in timed]
        result[name] = {
            "bare_train_ips": round(statistics.median(bare), 1),
            "pipeline_train_ips": round(statistics.median(loop), 1),
            "ratio": round(statistics.median(p / b for p, b in zip(loop, bare)), 3),
            "ratio_per_round": [round(p / b, 3) for p, b in zip(loop, bare)],
            "bare_vs_fp32": round(statistics.median(b / f for b, f in zip(bare, reference)), 3),
            "loop_vs_fp32": round(statistics.median(p / f for p, f in zip(loop, reference)), 3),
        }
    result["peak_rss_mb"] = {"bare": peak_bare, "with_pipeline": _peak_mb()}
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _pipeline_rate(model, config, train, val, images):
    """A function training ``model`` one more epoch with :func:`train_model` in a folder it is given; it
    returns the epoch's images/s (the history's ``seconds``: training, validation and checkpointing)."""
    from lesionseg.model.model import ModelConfig
    from lesionseg.training.train import TrainingJob, train_model

    def rate(tmp: Path) -> float:
        result = train_model(TrainingJob(model, ModelConfig("none"), train, val, config, tmp / "c.pt", tmp / "h.csv"))
        return images / float(result.history["seconds"].iloc[0])

    return rate


def inference(device, size, batch, steps):
    from lesionseg.inference.logits import predict_uint8

    device = torch.device(device)
    model = _model(0).to(device).eval()
    images = torch.randint(0, 256, (batch * steps, size, size, 3), dtype=torch.uint8)
    predict_uint8(model, images[:batch], batch, device)
    _sync(device)
    start = time.perf_counter()
    predict_uint8(model, images, batch, device)
    _sync(device)
    return {"ips": len(images) / (time.perf_counter() - start), "peak_rss_mb": _peak_mb()}


def prepare(width, height, count, size, workers):
    from PIL import Image

    from lesionseg.data.isic import pair_images_and_masks
    from lesionseg.data.prepare import decode_pairs, decoding_pool

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = Path(tmp) / "images", Path(tmp) / "masks"
        images.mkdir()
        masks.mkdir()
        base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        photo = Image.fromarray(base).resize((width, height), Image.BICUBIC)  # smooth, photo-like JPEG
        yy, xx = np.mgrid[:height, :width]
        lesion = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 <= 1
        for i in range(count):
            photo.save(images / f"ISIC_{i:07d}.jpg", quality=90)
            Image.fromarray(lesion.astype(np.uint8) * 255).save(masks / f"ISIC_{i:07d}_Segmentation.png")
        pairing = pair_images_and_masks(images, masks)
        start = time.perf_counter()  # pool start-up included, as in a real prepare
        with decoding_pool(workers) as pool:
            fast, _ = decode_pairs(pairing, size, pool)
        ips = count / (time.perf_counter() - start)
        plain, _ = decode_pairs(pairing, size)
    same = torch.equal(fast.images, plain.images) and torch.equal(fast.masks, plain.masks)
    same = same and torch.equal(fast.fullres_data, plain.fullres_data)
    return {"ips": ips, "peak_rss_mb": _peak_mb(), "identical_to_plain_path": bool(same)}


def quality_cost(size, count, batch, tta=True):
    """Seconds of :func:`predict_files` on ``count`` generated photos with and without the quality score, and the
    seconds its :func:`mask_quality` calls take within it (median of :data:`REPEATS` interleaved rounds)."""
    from unittest import mock

    from lesionseg.inference import predict as model_predict
    from lesionseg.inference.quality import mask_quality
    from lesionseg.inference.settings import InferenceSettings, PostprocessConfig
    from lesionseg.serving import predict_files as predict

    model = _model(0).eval()
    spent = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        scores = mask_quality(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return scores

    def without(probabilities, threshold):
        return torch.zeros(len(probabilities))

    with tempfile.TemporaryDirectory() as tmp:
        paths, out = _photos(Path(tmp) / "photos", 1024, 768, count), Path(tmp) / "out"
        settings = InferenceSettings(tta=tta, postprocess=PostprocessConfig(True, True), review_threshold=0.5)

        def run(score) -> float:
            start = time.perf_counter()
            with mock.patch.object(model_predict, "mask_quality", score):
                predict.predict_files(model, paths, size, out, settings, batch_size=batch, progress=False)
            return time.perf_counter() - start

        run(mask_quality)  # warm-up
        rounds = []
        for _ in range(REPEATS):
            spent.clear()
            with_score = run(timed)
            rounds.append((with_score, sum(spent), run(without)))
    with_score, quality, without_score = (statistics.median(r[i] for r in rounds) for i in range(3))
    return {
        "images": count,
        "predict_s": round(with_score, 3),
        "predict_without_quality_s": round(without_score, 3),
        "quality_s": round(quality, 4),
        "quality_share": round(statistics.median(r[1] / r[0] for r in rounds), 4),
        "peak_rss_mb": _peak_mb(),
    }


def zoom_cost(size, count, batch, tta=True):
    """Seconds of :func:`predict_files` on ``count`` generated photos without and with the zoom-in second pass
    on every image (median of :data:`REPEATS` interleaved rounds after a warm-up)."""
    from unittest import mock

    from lesionseg.inference import zoom
    from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
    from lesionseg.serving import predict_files as predict

    model = _model(0).eval()

    def central_half(mask, config):  # every image gets the second pass, whatever the random model predicts
        return (size // 4, size // 4, 3 * size // 4, 3 * size // 4)

    with tempfile.TemporaryDirectory() as tmp:
        paths, out = _photos(Path(tmp) / "photos", 1024, 768, count), Path(tmp) / "out"
        cleanup = PostprocessConfig(True, True)

        def run(enabled: bool) -> float:
            settings = InferenceSettings(tta=tta, postprocess=cleanup, zoom=ZoomConfig(enabled=enabled))
            start = time.perf_counter()
            with mock.patch.object(zoom, "zoom_box", central_half):
                predict.predict_files(model, paths, size, out, settings, batch_size=batch, progress=False)
            return time.perf_counter() - start

        run(True)  # warm-up
        rounds = [(run(False), run(True)) for _ in range(REPEATS)]
    without, with_zoom = (statistics.median(r[i] for r in rounds) for i in range(2))
    return {
        "images": count,
        "predict_s": round(without, 3),
        "predict_with_zoom_s": round(with_zoom, 3),
        "ratio": round(statistics.median(r[1] / r[0] for r in rounds), 3),
        "peak_rss_mb": _peak_mb(),
    }


def _photos(folder: Path, width: int, height: int, count: int) -> list[Path]:
    """``count`` smooth, photo-like generated JPEGs (distinct)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        paths.append(folder / f"photo_{i:04d}.jpg")
        Image.fromarray(base).resize((width, height), Image.BICUBIC).save(paths[-1], quality=90)
    return paths


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh process (own peak memory, no shared warm state)."""
    # Fork where possible: a spawned part would make "spawn" the default start method for prepare's own
    # worker pool too, which then re-imports torch per worker, unlike a real `dvc repro`.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:  # not daemonic: may start workers
        return pool.submit(fn, *args).result()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=640, help="training images per epoch (isic2016-dev has 635)")
    parser.add_argument("--prepare-count", type=int, default=300, help="generated 1024x768 pairs (1/5 as many large)")
    parser.add_argument("--workers", type=int, default=2, help="prepare decoding processes")
    parser.add_argument("--augment-on", default="auto", choices=("auto", "loader", "device"), help="TrainConfig")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"training step precisions/layouts to time, interleaved (of {', '.join(FORMATS)}; fp32 always; "
        "bf16 only where native)",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="TrainConfig: DataLoader worker processes")
    parser.add_argument("--rounds", type=int, default=REPEATS, help="timed rounds of the train part (median)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="validation images per training image")
    parser.add_argument("--quality-count", type=int, default=32, help="generated 1024x768 photos to predict")
    parser.add_argument("--parts", default="train,infer,prepare,quality,zoom", help="comma-separated subset, or e2e")
    e2e_args = parser.add_argument_group("e2e (a real dvc repro in a scratch copy of the project)")
    e2e_args.add_argument("--source", type=Path, help="folder with the four official archives (default: generated)")
    e2e_args.add_argument("--generate", default="64,16", help="generated training,test pairs (without --source)")
    e2e_args.add_argument("--weights", default="imagenet", help="train.encoder_weights (e.g. a local state dict)")
    e2e_args.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params.yaml override")
    e2e_args.add_argument("--bare-steps", type=int, default=20, help="bare training steps per timed round")
    e2e_args.add_argument("--keep", type=Path, help="keep the scratch project, logs and timing files here")
    e2e_args.add_argument("--json", type=Path, help="also write the result here")
    return parser


def _train_parts(args, formats: tuple[str, ...]) -> dict:
    """:func:`train_ratio` at the frozen encoder and with all layers, each in a fresh process."""
    steps = max(1, args.images // args.batch_size)  # a bare "epoch" of the same size
    options = (args.images, formats, args.augment_on, args.num_workers, args.val_fraction, args.rounds)
    return {
        name: _isolated(train_ratio, level, args.device, args.size, args.batch_size, steps, *options)
        for name, level in (("frozen", 0), ("all", "all"))
    }


def _infer_parts(args) -> dict:
    """Inference images/s and peak memory at batch 1 and at the training batch size."""
    result = {}
    for batch in (1, args.batch_size):
        infer = _isolated(inference, args.device, args.size, batch, max(4, 64 // batch))
        result[f"infer_ips_batch{batch}"] = round(infer["ips"], 1)
        result[f"infer_peak_rss_mb_batch{batch}"] = infer["peak_rss_mb"]
    return result


def _prepare_parts(args) -> dict:
    """Prepare's images/s, peak memory and agreement with the in-process path, at two photo sizes."""
    result = {}
    for width, height in ((1024, 768), (4288, 2848)):
        count = args.prepare_count if width < 2000 else max(8, args.prepare_count // 5)
        prep = _isolated(prepare, width, height, count, args.size, args.workers)
        result[f"prepare_ips_{width}x{height}"] = round(prep["ips"], 1)
        result[f"prepare_peak_rss_mb_{width}x{height}"] = prep["peak_rss_mb"]
        result[f"prepare_identical_{width}x{height}"] = prep["identical_to_plain_path"]
    return result


def _e2e_part(args) -> dict:
    """A real ``dvc repro`` in a scratch copy of the project (``benchmarks/e2e.py``)."""
    import e2e

    def bare_rate(level, size, batch, runtime):
        amp, layout = runtime["amp"], runtime["channels_last"]
        return _isolated(bare_train_ips, level, args.device, size, batch, args.bare_steps, amp, layout)

    weights = args.weights if args.weights in ("imagenet", "none") else str(Path(args.weights).resolve())
    return e2e.run_e2e(
        args.source,
        weights,
        e2e.parse_overrides(args.set),
        args.device,
        bare_rate,
        keep=args.keep,
        generated=tuple(int(n) for n in args.generate.split(",")),
    )


def _print_table(result: dict) -> None:
    """The result as a readable table on stderr (the e2e part as :func:`e2e.print_table` shows it)."""
    print(f"\n{'part':<34}{'value':>12}", file=sys.stderr)
    for key, value in result.items():
        if key == "e2e":
            import e2e

            e2e.print_table(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                print(f"{key + '.' + sub:<34}{str(v):>12}", file=sys.stderr)
        else:
            print(f"{key:<34}{str(value):>12}", file=sys.stderr)


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    formats = tuple(args.formats.split(","))
    if unknown := set(formats) - set(FORMATS):
        parser.error(f"--formats: unknown {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    result = {"device": args.device, "size": args.size, "batch_size": args.batch_size, "torch": torch.__version__}
    result.update({"augment_on": args.augment_on, "formats": formats})
    result.update({"num_workers": args.num_workers, "val_fraction": args.val_fraction, "rounds": args.rounds})
    if "train" in parts:
        result.update(_train_parts(args, formats))
    if "infer" in parts:
        result.update(_infer_parts(args))
    if "prepare" in parts:
        result.update(_prepare_parts(args))
    if "quality" in parts:  # predict's own batch size (8), as `lesionseg predict` runs
        result["quality"] = _isolated(quality_cost, args.size, args.quality_count, 8)
    if "zoom" in parts:
        result["zoom"] = _isolated(zoom_cost, args.size, args.quality_count, 8)
    if "e2e" in parts:
        result["e2e"] = _e2e_part(args)
    if args.device.startswith("cuda"):  # only now: CUDA must not be initialised before the parts are forked
        result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    _print_table(result)


if __name__ == "__main__":
    main()
