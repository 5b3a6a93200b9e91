"""Synthetic ISIC-style data for tests: small images with an elliptic 'lesion'."""

from __future__ import annotations

import base64
import json
import os
import signal
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

# A test project (a temporary git repository running the real pipeline) holds what the benchmark's does.
sys.path.insert(0, str(REPO / "benchmarks"))
from e2e import PROJECT_FILES, copy_project  # noqa: E402, F401

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
