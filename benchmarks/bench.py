"""Throughput benchmark: bare training steps vs the real training loop, inference, prepare.

Prints one JSON object (and a readable table). Each part runs in a fresh
process so that its peak resident memory is its own. Run with
``python benchmarks/bench.py [--device cpu] [--size 128] [--batch-size 16]``.

- ``bare_train_ips``: images/s of forward + DiceBCE + backward + Adam step on
  random tensors already in memory (after warm-up);
- ``pipeline_train_ips``: images/s of :func:`lesionseg.train.train_model` for
  one full epoch over cached uint8 tensors (real augmentation, per-epoch
  validation on a 5% split, checkpointing, history), after a warm-up epoch;
- ``ratio`` = pipeline / bare, for the frozen encoder (level 0) and all layers;
- ``infer_ips`` at batch 1 and at the training batch size;
- ``prepare_ips``: decode + resize + cache of generated JPEG/PNG pairs at
  1024x768 and 4288x2848 with the real prepare code (worker processes), and
  whether its output equals the in-process path.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def _model(level):
    from lesionseg.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(encoder_weights="none"), unfreeze=level)


def bare_train(level, device, size, batch, steps):
    from lesionseg.inference import autocast
    from lesionseg.losses import DiceBCELoss

    device = torch.device(device)
    model = _model(level).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    loss_fn = DiceBCELoss()

    def step():
        with autocast(device):
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"ips": steps * batch / (time.perf_counter() - start), "peak_rss_mb": _peak_mb()}


def pipeline_train(level, device, size, batch, images):
    from lesionseg.cache import Split, encode_mask
    from lesionseg.model import ModelConfig
    from lesionseg.train import TrainConfig, train_model

    rng = np.random.default_rng(0)
    n_val = max(1, images // 20)

    def split(n):
        masks = np.zeros((n, size, size), dtype=np.uint8)
        masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
        pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        blobs = [encode_mask(m) for m in masks]
        return Split.from_arrays(pixels, masks, [f"ISIC_{i:07d}" for i in range(n)], [(size, size)] * n, blobs)

    train, val = split(images), split(n_val)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(epochs=2, batch_size=batch, device=device, progress=False, lr=1e-4)
        result = train_model(
            _model(level), ModelConfig("none"), train, val, config, Path(tmp) / "c.pt", Path(tmp) / "h.csv"
        )
    seconds = float(result.history["seconds"].iloc[-1])  # the second epoch: warm
    return {"ips": images / seconds, "peak_rss_mb": _peak_mb()}


def inference(device, size, batch, steps):
    from lesionseg.inference import predict_uint8

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

    from lesionseg.isic import pair_images_and_masks
    from lesionseg.prepare import decode_pairs

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
        start = time.perf_counter()
        fast, _ = decode_pairs(pairing, size, workers)
        ips = count / (time.perf_counter() - start)
        plain, _ = decode_pairs(pairing, size, 0)
    same = torch.equal(fast.images, plain.images) and torch.equal(fast.masks, plain.masks)
    same = same and torch.equal(fast.fullres_data, plain.fullres_data)
    return {"ips": ips, "peak_rss_mb": _peak_mb(), "identical_to_plain_path": bool(same)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh process (own peak memory, no shared warm state)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:  # not daemonic: may fork workers
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="bare training steps timed")
    parser.add_argument("--images", type=int, default=320, help="training images in the pipeline epoch")
    parser.add_argument("--prepare-count", type=int, default=40, help="generated pairs per prepare size")
    parser.add_argument("--workers", type=int, default=2, help="prepare decoding processes")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    result = {"device": args.device, "size": args.size, "batch_size": args.batch_size, "torch": torch.__version__}
    for name, level in (("frozen", 0), ("all", "all")):
        bare = _isolated(bare_train, level, args.device, args.size, args.batch_size, args.steps)
        pipe = _isolated(pipeline_train, level, args.device, args.size, args.batch_size, args.images)
        result[name] = {
            "bare_train_ips": round(bare["ips"], 1),
            "pipeline_train_ips": round(pipe["ips"], 1),
            "ratio": round(pipe["ips"] / bare["ips"], 3),
            "peak_rss_mb": {"bare": bare["peak_rss_mb"], "pipeline": pipe["peak_rss_mb"]},
        }
    for batch in (1, args.batch_size):
        infer = _isolated(inference, args.device, args.size, batch, max(4, 64 // batch))
        result[f"infer_ips_batch{batch}"] = round(infer["ips"], 1)
        result[f"infer_peak_rss_mb_batch{batch}"] = infer["peak_rss_mb"]
    for width, height in ((1024, 768), (4288, 2848)):
        count = args.prepare_count if width < 2000 else max(8, args.prepare_count // 2)
        prep = _isolated(prepare, width, height, count, args.size, args.workers)
        result[f"prepare_ips_{width}x{height}"] = round(prep["ips"], 1)
        result[f"prepare_peak_rss_mb_{width}x{height}"] = prep["peak_rss_mb"]
        result[f"prepare_identical_{width}x{height}"] = prep["identical_to_plain_path"]

    print(json.dumps(result))
    print(f"\n{'part':<34}{'value':>12}", file=sys.stderr)
    for key, value in result.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                print(f"{key + '.' + sub:<34}{str(v):>12}", file=sys.stderr)
        else:
            print(f"{key:<34}{str(value):>12}", file=sys.stderr)


if __name__ == "__main__":
    main()
