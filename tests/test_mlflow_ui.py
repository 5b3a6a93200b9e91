"""scripts/mlflow_ui.py (``make mlflow-ui``) leaves nothing behind: SIGTERM or SIGHUP (a closed terminal) stops
the ``mlflow ui`` server and its uvicorn with it, and the port is free again. A real server on an empty store."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, alive, descendants, free_port, params_project, port_free

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_server_and_frees_the_port(tmp_path, sig):
    project = params_project(tmp_path / "project")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's own store
    ui = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "mlflow_ui.py"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = ui.stdout.readline()
        while line and not line.startswith("lesionseg runs: "):
            line = ui.stdout.readline()
        assert line.startswith("lesionseg runs: "), f"no link, the launcher exited with {ui.wait()}"
        server = descendants(ui.pid)
        assert server and not port_free(port)
        ui.send_signal(sig)
        assert ui.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (left := [pid for pid in server if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"{sig.name}: the launcher exited, its server processes {left} did not"
        assert port_free(port)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
