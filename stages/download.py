"""Stage download: fetch (or read locally) the four ISIC 2016 Part 1 archives and extract them.

Downloaded archives are kept in ``download.cache`` (default ``data/downloads``,
git-ignored), resolved against the main repository root: temporary and
queued experiments (``dvc exp run --temp`` / ``--queue``), which run in
copies of the repository, use the same cache and never download twice. It is
not a DVC output; the extracted ``data/raw`` is.
"""

import argparse
from pathlib import Path

from lesionseg.data.download import DownloadConfig, download_and_extract
from stages.launch import main, timed_work
from stages.params import ParamError, build, load_params, local_path, section


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="extraction folder (stage output)")
    args = parser.parse_args()
    download = section(load_params(), "download")
    if download.max_extract_gb <= 0:
        raise ParamError(f"params.yaml: download.max_extract_gb must be positive, got {download.max_extract_gb!r}")
    if not download.cache:
        raise ParamError("params.yaml: download.cache must be a folder, got ''")
    source = download.source if "://" in download.source else local_path(download.source)  # local: from the repo
    max_bytes = int(download.max_extract_gb * 1024**3)
    config = build(
        DownloadConfig, "download", {"source": source, "retries": download.retries}, max_extract_bytes=max_bytes
    )
    with timed_work():
        download_and_extract(config, args.raw, Path(local_path(download.cache)))


if __name__ == "__main__":
    main(run)
