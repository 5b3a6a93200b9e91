"""Stage external: decode and resize each labelled folder of ``evaluate.external`` once.

``evaluate.external`` maps a set's name to a folder (``images/`` + ``masks/``
inside, or masks beside the images), or to ``{images: DIR, masks: DIR,
mask_suffix: S}`` (see :mod:`lesionseg.data.external`). Each set becomes
``<out>/<name>.pt``, a prepared split like ``test.pt``, listed in
``<out>/manifest.json`` with its folder digest, image count and what was
skipped.

DVC runs this stage every time (``always_changed``): it only lists the folders
(names, sizes, modification times), re-prepares a set whose listing or
``data.size`` changed, and leaves unchanged files as they are, so the
``evaluate`` stage re-scores only when a set changed. With no set configured
it writes an empty manifest without importing torch.
"""

import argparse
import json
import logging
from pathlib import Path

from lesionseg import atomic
from stages.common import ParamError, get, load_params, local_path, main, work

MANIFEST = "manifest.json"
log = logging.getLogger("lesionseg")


def external_sets(params: dict) -> list:
    """``evaluate.external`` as :class:`~lesionseg.data.external.ExternalSet` objects (paths made absolute)."""
    from lesionseg.data.external import ExternalSet

    value = get(params, "evaluate.external") or {}
    if not isinstance(value, dict):
        raise ParamError("params.yaml: evaluate.external must map a set's name to a folder")
    sets = []
    for name, entry in value.items():
        key = f"evaluate.external.{name}"
        if isinstance(entry, str):
            entry = {"images": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), str):
            raise ParamError(f"params.yaml: {key} must be a folder or a mapping with images (and masks, mask_suffix)")
        if unknown := set(entry) - {"images", "masks", "mask_suffix"}:
            raise ParamError(f"params.yaml: {key}: unknown keys {sorted(unknown)} (images, masks, mask_suffix)")
        masks, suffix = entry.get("masks"), entry.get("mask_suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise ParamError(f"params.yaml: {key}.mask_suffix must be a string, got {suffix!r}")
        try:
            sets.append(
                ExternalSet(
                    str(name), Path(local_path(entry["images"])), Path(local_path(masks)) if masks else None, suffix
                )
            )
        except ValueError as exc:
            raise ParamError(f"params.yaml: {key}: {exc}") from exc
    return sets


def load_external_sets(folder: Path) -> dict:
    """The prepared sets in ``folder`` (name -> :class:`~lesionseg.data.cache.Split`), in manifest order."""
    from lesionseg.data.cache import Split

    manifest = json.loads((folder / MANIFEST).read_text())
    return {name: Split.load(folder / entry["file"]) for name, entry in manifest.items()}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    sets, size, workers = external_sets(params), get(params, "data.size"), get(params, "data.workers")
    manifest_path = args.out / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest = {}
    args.out.mkdir(parents=True, exist_ok=True)
    with work():
        for spec in sets:
            from lesionseg.data.external import folder_digest, prepare_external

            digest, file = folder_digest(spec, size), f"{spec.name}.pt"
            entry = previous.get(spec.name, {})
            if entry.get("digest") == digest and (args.out / file).is_file():
                manifest[spec.name] = entry
                continue
            split, pairing = prepare_external(spec, size, workers)
            split.save(args.out / file)
            manifest[spec.name] = {
                "file": file,
                "digest": digest,
                "images": str(spec.images),
                "masks": str(spec.masks) if spec.masks else None,
                "n": len(split),
                "skipped": pairing.skipped,
            }
            log.info("external set %s: %d pairs from %s", spec.name, len(split), spec.images)
            for line in pairing.skipped:
                log.warning("external set %s: skipped %s", spec.name, line)
    for stale in set(previous) - set(manifest):  # a set no longer configured
        (args.out / previous[stale].get("file", f"{stale}.pt")).unlink(missing_ok=True)
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    if not manifest_path.is_file() or manifest_path.read_text() != text:
        atomic.write_text(manifest_path, text)


if __name__ == "__main__":
    main(run)
