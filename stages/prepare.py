"""Stage prepare: pair, validate, resize and cache train/val/test tensors."""

import argparse
from pathlib import Path

from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from stages.launch import main, timed_work
from stages.params import build, load_params, section


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = build(PrepareConfig, "data", section(load_params(), "data").model_dump())
    with timed_work():
        prepare_dataset(args.raw, args.out, config)


if __name__ == "__main__":
    main(run)
