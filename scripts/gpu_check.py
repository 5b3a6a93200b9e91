"""``make gpu-check``: the checks that need an NVIDIA GPU, in one run of under 8 minutes, into one summary.

1. ``tests``: the CUDA tests (tests/test_cuda.py: the precision ``amp: auto`` picks for this card, fp16 with the
   gradient scaler, CPU and GPU predicting the same masks, a CUDA-graph step) and tests/test_batch_augment.py on
   CPU and GPU;
2. ``pipeline``: the whole ``dvc repro`` on the GPU in a scratch copy of the project (benchmarks/bench.py's e2e
   part; isic2016-mini and the ImageNet weights from ../shared when there, else generated data and a
   random-weight encoder), one epoch a phase, timed stage by stage;
3. ``ddp``: with two or more GPUs, 2 torchrun processes over NCCL with SyncBatchNorm and a compiled step;
4. ``benchmark``: the benchmark's GPU rows (``--parts train,infer --batch-size 64``).

Writes ``summary.json`` and ``summary.md`` (and each step's log) to ``--out``; exits 1 if a step failed, 2 without a
GPU. docs/benchmarks.md says how to run it and where its results go.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI, WEIGHTS = SHARED / "data" / "isic2016-mini", SHARED / "weights" / "mobilenet_v2_imagenet.pth"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
DDP_TEST = "tests/test_cuda.py::test_two_gpus_train_one_phase_with_nccl_syncbatchnorm_and_a_compiled_step"


def card() -> dict:
    """This machine's GPUs and the precision ``amp: auto`` resolves to on the first."""
    from lesionseg.runtime import resolve_numerics

    return {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False),
        "amp_auto": resolve_numerics("auto", "auto", torch.device("cuda", 0)).precision,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def steps(out: Path, gpus: int) -> list[tuple[str, list[str] | None, int]]:
    """(name, command or None to skip, timeout in seconds); the timeouts add up to under 8 minutes."""
    pipeline = [
        sys.executable,
        "benchmarks/bench.py",
        "--parts",
        "e2e",
        "--device",
        "cuda",
        "--json",
        str(out / "e2e.json"),
    ]
    if MINI.is_dir() and WEIGHTS.is_file():
        pipeline += ["--source", str(MINI), "--weights", str(WEIGHTS)]
    else:
        pipeline += ["--generate", "64,16", "--weights", "none"]
    pipeline += ["--set", "train.epochs=1"]  # finetune's too: it states only what differs from train
    bench = [sys.executable, "benchmarks/bench.py", "--device", "cuda", "--batch-size", "64", "--parts", "train,infer"]
    return [
        ("tests", [*PYTEST, "tests/test_cuda.py", "tests/test_batch_augment.py", "-k", "not two_gpus"], 150),
        ("pipeline", pipeline, 200),
        ("ddp", [*PYTEST, DDP_TEST] if gpus >= 2 else None, 60),
        ("benchmark", [*bench, "--rounds", "1", "--json", str(out / "bench.json")], 60),
    ]


def run_step(name: str, cmd: list[str] | None, timeout: int, out: Path) -> dict:
    if cmd is None:
        return {"step": name, "status": "skipped (needs two GPUs)", "seconds": 0.0}
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"failed (over {timeout} s)"
    seconds = round(time.perf_counter() - start, 1)
    tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
    return {"step": name, "status": status, "seconds": seconds, "command": " ".join(cmd), "last_lines": tail}


def markdown(summary: dict) -> str:
    info = summary["card"]
    lines = [
        f"GPU check: {', '.join(info['gpus'])} (compute capability {info['capability']}, native bf16 "
        f"{info['native_bf16']}: `amp: auto` = {info['amp_auto']}), torch {info['torch']}, CUDA {info['cuda']}",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
        *(f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in summary["steps"]),
    ]
    if summary.get("pipeline_wall_s") is not None:
        lines += ["", f"Whole `dvc repro` on the GPU ({summary['pipeline_source']}): {summary['pipeline_wall_s']} s"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check", help="summary and logs folder")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("make gpu-check needs an NVIDIA GPU with a working driver: torch.cuda.is_available() is False")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"card": card(), "steps": []}
    start = time.perf_counter()
    for name, cmd, timeout in steps(args.out, torch.cuda.device_count()):
        summary["steps"].append(run_step(name, cmd, timeout, args.out))
        print(f"{name}: {summary['steps'][-1]['status']} ({summary['steps'][-1]['seconds']} s)", flush=True)
    summary["total_s"] = round(time.perf_counter() - start, 1)
    if (args.out / "e2e.json").is_file():
        e2e = json.loads((args.out / "e2e.json").read_text())["e2e"]
        summary["pipeline_wall_s"], summary["pipeline_source"] = e2e["wall_s"], e2e["source"]
    if (args.out / "bench.json").is_file():
        summary["benchmark"] = json.loads((args.out / "bench.json").read_text())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary) + f"\nwritten to {args.out / 'summary.json'} and summary.md")
    return 0 if all(s["status"].startswith(("passed", "skipped")) for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
