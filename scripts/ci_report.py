"""The CI's Markdown report of what a change did: each model's paired change, a chart and the metrics' diff.

    python scripts/ci_report.py BASE HEAD [--out DIR] [--note LINE] [--append-to FILE]

BASE and HEAD are reports folders (metrics.json and per_image/), git revisions or DVC experiments (read through
DVC). docs/ci.md shows it on two experiments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionseg.errors import DataError
from lesionseg.experiments.runs import read_pipeline_run
from lesionseg.report.ci_report import write_change_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/ci_report.py",
        description="Compare the pipeline's test results of BASE and HEAD, each a reports folder (holding "
        "metrics.json and per_image/) or a git revision or DVC experiment (read through DVC); write "
        "OUT/report.md and OUT/change.png and print the report.",
    )
    parser.add_argument("base", metavar="BASE")
    parser.add_argument("head", metavar="HEAD")
    parser.add_argument(
        "--out", type=Path, default=Path("build/ci/report"), help="folder for report.md and change.png (git-ignored)"
    )
    parser.add_argument("--metric", default="orig_jaccard", help="per-image column compared (default orig_jaccard)")
    parser.add_argument("--base-label", help="name shown for BASE (default: BASE as given)")
    parser.add_argument("--head-label", help="name shown for HEAD (default: HEAD as given)")
    parser.add_argument("--note", action="append", help="a line of text under the report's heading (repeatable)")
    parser.add_argument("--reports-dir", default="reports", help="the reports folder read at a revision")
    parser.add_argument("--append-to", type=Path, help="also append the report to this file (a job summary)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = read_pipeline_run(args.base, args.base_label, args.reports_dir)
        head = read_pipeline_run(args.head, args.head_label, args.reports_dir)
        markdown = write_change_report(base, head, args.out, args.metric, args.note or [])
    except (DataError, ValueError, OSError) as exc:
        print(f"scripts/ci_report.py: {exc}", file=sys.stderr)
        return 1
    if args.append_to:  # e.g. $GITHUB_STEP_SUMMARY, which other steps write to as well
        with open(args.append_to, "a", encoding="utf-8") as summary:
            summary.write(markdown)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
