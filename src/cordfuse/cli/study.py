"""``cordfuse study``: the paper's experiment grid (every model for n seeds, evaluated on the test
cohorts) and its Tables 1 and 2; resumable."""

from __future__ import annotations

import argparse
import sys

from cordfuse.errors import CordfuseError


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``study`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "study",
        help="the paper's experiment grid, Tables 1 and 2",
        description="Train every model of the paper for n seeds, evaluate "
        "the test cohorts and write Tables 1 and 2 (resumable).",
    )
    parser.add_argument("config", nargs="?", help="study YAML/JSON (see --example)")
    parser.add_argument("-o", "--out", help="study folder (default: CONFIG without its suffix)")
    parser.add_argument("--example", action="store_true", help="print an example config")
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="rebuild the tables from the metrics already computed",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the example config, or run the study and print its tables.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0 (a run skipped for a reason is reported, not fatal).

    Raises:
        CordfuseError: no ``CONFIG``, an invalid one, or a study folder it does not own.
    """
    from cordfuse.study import EXAMPLE_CONFIG, run_study

    if args.example:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if not args.config:
        raise CordfuseError("give the study CONFIG (cordfuse study --example prints one)")
    result = run_study(args.config, args.out, tables_only=args.tables_only)
    for name in ("table1.md", "table2.md"):
        path = result["tables"].get(name)
        if path:
            print()
            print(path.read_text(), end="")
    for skipped in result["runs"]:
        if skipped.status == "skipped":
            print(
                f"skipped {skipped.experiment} seed {skipped.seed}: {skipped.message}",
                file=sys.stderr,
            )
    return 0
