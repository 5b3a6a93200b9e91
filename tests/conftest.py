import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import MINI, REPO, SHARED_WEIGHTS, make_external_set

# One thread, here and (unless set) in the processes the tests start: the tests' tensors are tiny, and on shared
# cores a second OpenMP thread spins waiting for its partner (the fast tier took 2 to 5 times as long).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

requires_shared = pytest.mark.skipif(
    not (MINI.is_dir() and SHARED_WEIGHTS.is_file()), reason="../shared data and weights are not available"
)

# Every process a test starts inherits this variable (subprocess passes os.environ on, and the tests build their
# environments from it), also one that outlives its parent and is adopted by init: the leak check finds them by it.
SESSION_ENV = "LESIONSEG_TEST_SESSION"
os.environ[SESSION_ENV] = f"{os.getpid()}-{uuid.uuid4().hex}"
# Helpers of the pytest process itself, which end with it: not leaks.
OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "torch._inductor.compile_worker")
LEAK_GRACE_S = 15  # a server or worker told to stop a moment ago may still be exiting


def _proc(pid: str, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def session_processes() -> dict[int, str]:
    """Live processes (not zombies) other than pytest itself that carry this session's variable: pid -> what
    they run, with their parent."""
    mark = f"{SESSION_ENV}={os.environ[SESSION_ENV]}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in _proc(entry.name, "environ").split(b"\0"):
                continue
            state, ppid = _proc(entry.name, "stat").rsplit(b")", 1)[1].split()[:2]
            cmdline = _proc(entry.name, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if state == b"Z" or (int(ppid) == os.getpid() and any(h in cmdline for h in OWN_HELPERS)):
            continue
        found[int(entry.name)] = f"pid {entry.name} (parent {int(ppid)}): {cmdline[:300]}"
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """At the end of the session, no process started by a test is still running (Linux /proc): the leftovers
    are listed in the error, then killed."""
    yield
    if not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + LEAK_GRACE_S
    while (left := session_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes started by the tests are still running (now killed):\n" + "\n".join(left.values())


# The generated run: 10 training and 4 test pairs at 64 px, 2 + 1 epochs, no pretrained weights, an external set.
GENERATED_RUN = (
    "data.size=64",
    "data.val_fraction=0.2",
    "train.epochs=2",
    "train.batch_size=4",
    "finetune.epochs=1",
    "finetune.unfreeze=all",
    "report.samples=3",
)


@pytest.fixture(scope="session")
def generated_repro(tmp_path_factory):
    """One real ``dvc repro`` of the whole pipeline on generated data, timed by the end-to-end benchmark
    (``benchmarks/bench.py --parts e2e``), shared by test_benchmark.py (its timing report) and test_stages.py
    (the project it kept: outputs, MLflow store). ``report``: the benchmark's e2e result; ``project``: the
    pipeline's repository; ``processes``: its stage processes (start and end wall clock); ``clinic``: the
    external set (5 PNG pairs)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import e2e

    root = tmp_path_factory.mktemp("generated-repro")
    clinic = make_external_set(root / "clinic")
    out, keep = root / "e2e.json", root / "kept"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--parts", "e2e", "--generate", "10,4"]
    cmd += ["--weights", "none", "--bare-steps", "2", "--json", str(out), "--keep", str(keep)]
    for override in (*GENERATED_RUN, f"evaluate.external={{clinic: {clinic}}}"):
        cmd += ["--set", override]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    return SimpleNamespace(
        report=json.loads(out.read_text())["e2e"],
        stderr=result.stderr,
        project=keep / "project",
        processes=e2e.read_processes(keep / "processes.tsv"),
        clinic=clinic,
    )


@pytest.fixture
def tiny_model():
    from lesionseg.model.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(encoder_weights="none"), unfreeze=0)
