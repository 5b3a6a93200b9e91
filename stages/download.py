"""Stage download: fetch (or read locally) the four ISIC 2016 Part 1 archives and extract them."""

import argparse
from pathlib import Path

from lesionseg.download import DownloadConfig, download_and_extract
from stages.common import ParamError, get, load_params, local_path, main


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="extraction folder (stage output)")
    parser.add_argument("--downloads", type=Path, required=True, help="where downloaded archives are kept")
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
    download_and_extract(config, args.raw, args.downloads)


if __name__ == "__main__":
    main(run)
