"""Stage external@<name>: decode and resize one labelled folder of ``evaluate.external`` once.

DVC makes one stage per set, depending on the folder itself, so a set is decoded again only when its files (or
``data.size``, ``evaluate.mask_suffix``) change. Writes ``<out>.pt`` (a prepared split like ``test.pt``) and
``<out>.json`` (the folder, image count and what was skipped, by name). Folder layouts: docs/other-clinics.md.
"""

import argparse
import logging
from pathlib import Path

from lesionseg import atomic
from stages.external_sets import external_folders
from stages.launch import main, timed_work
from stages.params import ParamError, load_params, local_path, section

log = logging.getLogger("lesionseg")


def external_set(params: dict, name: str):
    """The :class:`~lesionseg.data.external.ExternalSet` of ``evaluate.external.<name>``."""
    from lesionseg.data.external import ExternalSet

    folders = external_folders(params)
    if name not in folders:
        raise ParamError(f"params.yaml: evaluate.external has no set {name!r}")
    suffix = section(params, "evaluate").mask_suffix
    try:
        return ExternalSet(name, Path(local_path(folders[name])), mask_suffix=suffix)
    except ValueError as exc:
        raise ParamError(f"params.yaml: evaluate.external.{name}: {exc}") from exc


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the set's name in evaluate.external")
    parser.add_argument("--out", type=Path, required=True, help="output stem: <out>.pt and <out>.json are written")
    args = parser.parse_args()
    params = load_params()
    spec = external_set(params, args.name)
    from lesionseg.data.external import prepare_external

    with timed_work():
        data = section(params, "data")
        split, pairing = prepare_external(spec, data.size, data.workers)
    for line in pairing.skipped:
        log.warning("external set %s: skipped %s", spec.name, line)
    split.save(args.out.with_suffix(".pt"))
    summary = {"images": str(spec.images), "n": len(split), "skipped": pairing.skipped}
    atomic.write_json(args.out.with_suffix(".json"), summary)
    log.info("external set %s: %d pairs from %s", spec.name, len(split), spec.images)


if __name__ == "__main__":
    main(run)
