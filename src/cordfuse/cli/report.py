"""``cordfuse report``: the self-contained HTML report (pictures embedded) of a demo or study
folder."""

from __future__ import annotations

import argparse
import sys


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "report",
        help="the self-contained HTML report of a run folder",
        description="One HTML file (pictures embedded) for a demo or study "
        "folder: availability, metrics, box plots, QC, curves, versions.",
    )
    parser.add_argument("run_dir", help="folder written by cordfuse demo or cordfuse study")
    parser.add_argument("-o", "--out", help="HTML file (default RUN_DIR/report.html)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the report, naming each section on stderr as it is drawn.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: not a demo or study folder.
    """
    from cordfuse.report import write_report

    path = write_report(
        args.run_dir, args.out, progress=lambda title: print(f"  {title}", file=sys.stderr)
    )
    print(f"Report: {path.resolve()}")
    return 0
