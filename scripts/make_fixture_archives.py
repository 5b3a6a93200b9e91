"""Write the CI data set: four synthetic ISIC-style archives the pipeline reads like the official ones.

The GitHub workflow has no ../shared and no dermoscopy it may download, so it runs the pipeline on
these (``make ci-fixture``). Usage: python scripts/make_fixture_archives.py OUT [--train N] [--test N]
"""

import argparse
from pathlib import Path

from lesionseg.data.synthetic import write_archives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the four .zip archives (created)")
    parser.add_argument("--train", type=int, default=32, help="training pairs")
    parser.add_argument("--test", type=int, default=16, help="test pairs")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=144)
    args = parser.parse_args()
    write_archives(args.out, args.train, args.test, args.width, args.height)
    print(f"wrote {args.train} training and {args.test} test pairs ({args.width}x{args.height}) to {args.out}")


if __name__ == "__main__":
    main()
