"""How a stage process runs: logging set-up, one clear line for expected errors, timing marks.

Nothing here changes what a stage computes (so no stage depends on this file
in dvc.yaml: see :data:`stages.codeset.EXEMPT`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

from lesionseg.errors import EncoderWeightsError, TrackingError
from stages.params import ParamError

# Set by the end-to-end benchmark (benchmarks/e2e.py): where each stage appends the wall-clock interval
# of its work, so that the benchmark can split a stage's process time into start-up, work and shut-down.
TIMING_LOG_ENV = "LESIONSEG_TIMING_LOG"


def main(fn) -> None:
    """Run a stage's ``fn()``: configure logging, and turn expected errors into one clear line."""
    rank = os.environ.get("RANK")
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if rank is None
        else f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
    )
    logging.basicConfig(level=logging.INFO, format=fmt)
    try:
        fn()
    except (ParamError, ValueError, OSError, EncoderWeightsError, TrackingError) as exc:
        logging.getLogger("lesionseg").error("%s failed: %s", Path(sys.argv[0]).stem, exc)
        sys.exit(1)
    finally:
        # A torchrun rank leaves its process group through the atexit handler that
        # stages.distributed.distributed_rank registered when it joined.
        # Skip the teardown's collection of every torch and MLflow object, slow on small CPUs (docs/benchmarks.md);
        # atexit handlers and the normal exit still run.
        gc.disable()
        gc.freeze()


@contextlib.contextmanager
def timed_work(**info):
    """Mark the stage's work (the library call, after imports and reading inputs) for the benchmark.

    If ``LESIONSEG_TIMING_LOG`` names a file, a JSON line with the stage, the
    wall-clock start and end of the block and ``info`` (e.g. a training
    phase's images) is appended to it when the block succeeds; else nothing.
    """
    start = time.time()
    yield
    path = os.environ.get(TIMING_LOG_ENV)
    if path:
        entry = {"stage": Path(sys.argv[0]).stem, "start": start, "end": time.time(), "rank": os.environ.get("RANK")}
        with open(path, "a") as handle:  # one short line per write: appends from several processes stay whole
            handle.write(json.dumps({**entry, **info}) + "\n")
