#!/usr/bin/env python3
"""Open the MLflow UI on the lesionseg runs table (``make mlflow-ui``).

    scripts/mlflow_ui.py [--host 127.0.0.1] [--port 5000]

The store is the pipeline's: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` in
params.yaml (run from the repository root). Before anything is shown, the experiment and its saved
view of the headline columns are made sure of (:mod:`lesionseg.mlflow_view`), so a store that
predates them gets them too.

- A local store (SQLite): starts ``mlflow ui`` on it and, once it answers, prints the URL of the
  experiment's runs table in the model-training view with that saved view applied. Ctrl-C, SIGTERM or
  SIGHUP (a closed terminal) stops it: the server runs in its own process group (with its uvicorn), and
  the whole group is stopped, so nothing keeps holding the port.
- A tracking server (``http(s)://``, e.g. the team server of scripts/services.sh, with
  ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` where it asks for a login): starts
  nothing and prints the same URL on that server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stages.params, from a checkout without install

from lesionseg import mlflow_view, tracking  # noqa: E402
from stages.params import load_params, repo_root, section  # noqa: E402

START_TIMEOUT_S = 300  # mlflow ui takes ~30 s to answer on a busy 2-core machine
STOP_TIMEOUT_S = 20  # after SIGTERM to the server's group, then SIGKILL


class Stop(Exception):
    """SIGTERM or SIGHUP arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def _stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


def stop_group(process: subprocess.Popen) -> None:
    """Stop the server's process group (``mlflow ui`` and its uvicorn): SIGTERM, then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_TIMEOUT_S
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                process.poll()  # reaps the leader: a zombie would keep the group alive
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:  # no process left in the group
            break
    process.wait()


def wait_until_up(base_url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"mlflow ui exited during start-up (status {process.returncode})")
        try:
            urllib.request.urlopen(f"{base_url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer on {base_url} within {START_TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    settings = section(load_params(), "mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    uri = tracking.resolve_tracking_uri(uri, repo_root())
    experiment_id = tracking.setup(uri, settings.experiment)

    if uri.startswith(("http://", "https://")):
        print(f"lesionseg runs on {tracking.server()}: {mlflow_view.runs_page_url(uri, experiment_id)}", flush=True)
        return
    base_url = f"http://{args.host}:{args.port}"
    # One worker: enough for one person, quicker to start, and no worker supervisor to kill a worker that is
    # slow to answer its health check on a busy machine (uvicorn restarts it, and the UI never comes up).
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--workers", "1"]
    # The server's own output goes to stderr: stdout carries the link only (for scripts and the UI test).
    # Its own process group (session), stopped as a whole when this script ends, however it ends but SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    process = subprocess.Popen([*cmd, "--port", str(args.port)], stdout=sys.stderr, start_new_session=True)
    try:
        wait_until_up(base_url, process)
        print(f"\nlesionseg runs: {mlflow_view.runs_page_url(base_url, experiment_id)}\n", flush=True)
        status = process.wait()
    except (KeyboardInterrupt, Stop):
        status = 0
    finally:
        stop_group(process)
    sys.exit(status)


if __name__ == "__main__":
    main()
