"""The repository's records of finished experiments (results/<name>/) and the pages' tables rendered from them.

    python scripts/results.py save EXP [--name NAME] [--command LINE] [--wall-seconds S]
    python scripts/results.py render [PAGE ...] [--check]

docs/recipe.md, "Recording the results", says when to use each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionseg.errors import DataError
from lesionseg.experiments.results_record import save_record
from lesionseg.experiments.results_tables import RENDER_COMMAND, pages, render_pages


def save(args) -> int:
    if Path(args.exp).is_dir() and not args.name:
        print("scripts/results.py save: a reports folder needs --name (the record's name)", file=sys.stderr)
        return 2
    name = args.name or Path(args.exp).name
    target = save_record(args.exp, name, args.results_dir, args.repo, args.command_line, args.wall_seconds)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"wrote {target}/ ({size / 1024:.0f} KiB): commit it, then `{RENDER_COMMAND}`")
    return 0


def render(args) -> int:
    differ, missing = render_pages(args.pages or pages(Path(".")), args.results_dir, write=not args.check)
    for line in missing:
        print(f"{line}: its table says so", file=sys.stderr)
    if args.check:
        for page in differ:
            print(f"{page}: its results tables differ from the records' (run `{RENDER_COMMAND}`)")
        return 1 if differ else 0
    print(f"rendered: {', '.join(map(str, differ))}" if differ else "every results table is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/results.py", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    p = actions.add_parser(
        "save",
        help="write results/<name>/: params as run, metrics, per-image tables, provenance (no images or weights)",
        description="Record a finished experiment: EXP is a DVC experiment name or git revision (read through "
        "DVC, as lesionseg compare reads it) or a reports folder on disk (the workspace's: reports, with --name).",
    )
    p.add_argument("exp", metavar="EXP")
    p.add_argument("--name", help="the record's name (default: EXP)")
    p.add_argument(
        "--command",
        dest="command_line",
        metavar="LINE",
        help="the exact `dvc exp run` line that made it (default: reconstructed from the params that differ "
        "from params.yaml at the commit)",
    )
    p.add_argument("--wall-seconds", type=float, help="the run's measured wall time (default: the training phases')")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where records live (default results/)")
    p.add_argument("--repo", default=".", help="the repository the experiment belongs to (default .)")
    p.set_defaults(func=save)
    p = actions.add_parser(
        "render",
        help="render every results table of README.md and docs/ from the records",
        description="Rewrite each `<!-- results:KIND RECORD... -->` ... `<!-- /results -->` region of the pages "
        "(default: README.md and docs/*.md) from results/<record>/.",
    )
    p.add_argument("pages", nargs="*", type=Path, metavar="PAGE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each page that differs")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where records live (default results/)")
    p.set_defaults(func=render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, OSError) as exc:
        print(f"scripts/results.py {args.action}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
