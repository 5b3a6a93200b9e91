"""Copy the report figures shown in the docs (docs/results.md) from reports/figures to docs/img.

`make docs-figures` after a pipeline run: each figure is downscaled to at most ``--max-width``
pixels and, if still over ``--max-kb``, reduced to a 256-colour palette, so the pictures in git stay
small and current.
"""

import argparse
import sys
from pathlib import Path

from PIL import Image

FIGURES = ("overlays.png", "curves.png", "comparison.png", "worst.png")


def shrink(source: Path, target: Path, max_width: int = 1100, max_kb: int = 300) -> int:
    """Write ``source`` to ``target`` at most ``max_width`` wide; return the bytes written."""
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    if image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, optimize=True)
    if target.stat().st_size > max_kb * 1024:
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--figures", type=Path, default=Path("reports/figures"))
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--max-width", type=int, default=1100)
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args(argv)
    missing = [name for name in FIGURES if not (args.figures / name).is_file()]
    if missing:
        print(f"{args.figures} lacks {', '.join(missing)}: run the pipeline first (make repro)", file=sys.stderr)
        return 1
    for name in FIGURES:
        size = shrink(args.figures / name, args.out / name, args.max_width, args.max_kb)
        print(f"{args.out / name}: {size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
