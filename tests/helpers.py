"""Synthetic ISIC-style data for tests: small images with an elliptic 'lesion'."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI = SHARED / "data" / "isic2016-mini"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
# The pipeline on isic2016-mini (40 training, 16 test pairs) with ImageNet weights, 1 epoch a phase: params for
# make_project, in the slow tier's runs on ../shared data.
MINI_RUN = {
    "download.source": str(MINI),
    "data.expected_train": 40,
    "data.expected_test": 16,
    "train.encoder_weights": str(SHARED_WEIGHTS),
    "train.epochs": 1,
}


def load_script(name: str):
    """``scripts/<name>.py`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A test project (a temporary git repository running the real pipeline) is made like the benchmark's, by
# benchmarks/e2e.py's make_project: PROJECT_FILES copied, dotted params set, git-initialised.
sys.path.insert(0, str(REPO / "benchmarks"))
from e2e import GIT_IDENTITY, PROJECT_FILES, make_project, set_params  # noqa: E402, F401

TRAIN_IMAGES = "ISBI2016_ISIC_Part1_Training_Data"
TRAIN_MASKS = "ISBI2016_ISIC_Part1_Training_GroundTruth"
TEST_IMAGES = "ISBI2016_ISIC_Part1_Test_Data"
TEST_MASKS = "ISBI2016_ISIC_Part1_Test_GroundTruth"


def lesion_pair(seed: int, width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB image (H, W, 3) and bool mask (H, W): a dark ellipse on skin-coloured noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = np.empty((height, width, 3))
    image[:] = (220, 170, 150)
    image[mask] = (110, 70, 50)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_pair(image_dir: Path, mask_dir: Path, isic_id: str, seed: int, size=(64, 48)) -> None:
    image, mask = lesion_pair(seed, *size)
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_dir / f"{isic_id}.jpg", quality=95)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{isic_id}_Segmentation.png")


def make_raw_tree(root: Path, n_train: int = 12, n_test: int = 4, size=(64, 48)) -> Path:
    """The extracted-archive layout that the prepare stage reads."""
    for i in range(n_train):
        write_pair(root / TRAIN_IMAGES / TRAIN_IMAGES, root / TRAIN_MASKS / TRAIN_MASKS, f"ISIC_{i:07d}", i, size)
    for i in range(n_test):
        j = 1000 + i
        write_pair(root / TEST_IMAGES / TEST_IMAGES, root / TEST_MASKS / TEST_MASKS, f"ISIC_{j:07d}", j, size)
    return root


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip ``folder``'s contents with the folder name as top level, like the official archives."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def make_archives(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """The four official archives, built from a synthetic tree, in ``root/archives``."""
    tree = make_raw_tree(root / "tree", n_train, n_test)
    out = root / "archives"
    out.mkdir()
    for name in (TRAIN_IMAGES, TRAIN_MASKS, TEST_IMAGES, TEST_MASKS):
        zip_folder(tree / name / name, out / f"{name}.zip")
    return out


def params_project(project: Path, **overrides) -> Path:
    """A project of a params.yaml only (for one stage run by hand), with ``overrides`` (``section__name=value``)."""
    params = {key.replace("__", "."): value for key, value in overrides.items()}
    return make_project(project, params, files=("params.yaml",), git=False)


def run_stage(project: Path, stage: str, *args, env=None, check=True, timeout=900, **popen):
    """``python -m stages.<stage> args`` in ``project`` with this checkout's code, logging to the project's own
    SQLite store unless ``env`` says otherwise: the finished process (``check``: asserted to succeed), or with
    ``popen`` keywords the running :class:`subprocess.Popen`."""
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env = {**os.environ, "PYTHONPATH": str(REPO), **store, **(env or {})}
    cmd = [sys.executable, "-m", f"stages.{stage}", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=project, env=env, **popen)
    result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def project_env(**extra: str) -> dict:
    """The environment for ``dvc``/``git`` in a test project: this interpreter's bin first on PATH (DVC runs
    ``python -m stages...`` through the shell), a git identity (``dvc exp run`` commits), the project's
    default MLflow store (no inherited ``MLFLOW_TRACKING_URI``), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **GIT_IDENTITY, **extra}


def make_external_set(folder: Path, n: int = 5) -> Path:
    """A clinic's labelled folder as users have them: PNG images with ``<stem>_mask.png`` beside them."""
    folder.mkdir(parents=True)
    for i in range(n):
        image, mask = lesion_pair(500 + i, 80, 60)
        Image.fromarray(image).save(folder / f"case{i}.png")
        Image.fromarray(mask.astype("uint8") * 255).save(folder / f"case{i}_mask.png")
    return folder


def alive(pid: int) -> bool:
    """A live process (not a zombie waiting for an init that does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from /proc."""
    found, todo = [], [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                new = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            found += new
            todo += new
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowRest:
    """The tracking server's REST API (what the MLflow UI reads), for checks from tests.

    ``auth``: (user, password) for a server with MLflow's login (basic-auth).
    """

    def __init__(self, uri: str, timeout: float = 30, auth: tuple[str, str] | None = None):
        self.uri, self.timeout = uri.rstrip("/"), timeout
        self.headers = {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()} if auth else {}

    def get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> dict:
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/{path}",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **self.headers},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())


class MlflowServer(MlflowRest):
    """A real ``mlflow server`` on a SQLite store, started in its own session and stopped by PID."""

    def __init__(self, store: Path, port: int, timeout: float = 10):
        super().__init__(f"http://127.0.0.1:{port}", timeout)
        self.store, self.port, self.proc = store, port, None

    def start(self) -> MlflowServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.store}",
             "--default-artifact-root", (self.store.parent / "mlartifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited during start-up"
                time.sleep(0.5)
        raise AssertionError("mlflow server did not answer within 120 s")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)


def stretched_model(images, model_config=None, lesion_share=None):
    """A random-weight model (eval mode) that gives masks of varied quality on uint8 ``images`` ``(N, S, S, 3)``.

    A random head's logits are nearly flat (std ~1e-3 around ~0.1), so every mask would score 0: the head is
    stretched around their mean on ``images`` so that the probabilities, and the masks' quality, vary from
    image to image. ``model_config``: default ``ModelConfig("none")``. ``lesion_share``: stretch around the
    logit quantile that leaves about this share of all pixels lesion (default: around the mean)."""
    import torch

    from lesionseg.data.normalize import normalize_batch
    from lesionseg.model.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(model_config or ModelConfig("none"), unfreeze="all").eval()
    with torch.no_grad():
        logits = model(normalize_batch(torch.as_tensor(images)))
        mean = float(logits.mean() if lesion_share is None else logits.quantile(1 - lesion_share))
        head = model.decoder.head
        head.weight *= 3000
        head.bias.copy_(3000 * (head.bias - mean))
    return model
