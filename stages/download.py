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
from stages.params import ParamError, get, load_params, local_path


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="extraction folder (stage output)")
    args = parser.parse_args()
    params = load_params()
    max_gb = get(params, "download.max_extract_gb")
    if not isinstance(max_gb, (int, float)) or isinstance(max_gb, bool) or max_gb <= 0:
        raise ParamError(f"params.yaml: download.max_extract_gb must be a positive number, got {max_gb!r}")
    source = get(params, "download.source")
    if not isinstance(source, str):
        raise ParamError(f"params.yaml: download.source must be a URL or a directory, got {source!r}")
    if "://" not in source:  # a local directory, relative to the repository
        source = local_path(source)
    config = DownloadConfig(
        source=source, retries=get(params, "download.retries"), max_extract_bytes=int(max_gb * 1024**3)
    )
    cache = get(params, "download.cache")
    if not isinstance(cache, str) or not cache:
        raise ParamError(f"params.yaml: download.cache must be a folder, got {cache!r}")
    with timed_work():
        download_and_extract(config, args.raw, Path(local_path(cache)))


if __name__ == "__main__":
    main(run)
