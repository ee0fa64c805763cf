"""``cordfuse check``: the subjects x sequences availability matrix of a BIDS dataset and every
problem in it; exit status 0 only when nothing is wrong."""

from __future__ import annotations

import argparse
import json

from cordfuse.cli._options import add_mapping, add_participant_label, progress_bar


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``check`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "check",
        help="availability matrix and problems of a BIDS dataset",
        description="Report the subjects x sequences matrix and every problem; "
        "exit status 0 only when nothing is wrong.",
    )
    parser.add_argument("dataset", help="BIDS dataset folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_participant_label(parser, writes=False)
    add_mapping(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check every file of the dataset and print the report (text or JSON).

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0 when nothing is wrong, 1 otherwise.

    Raises:
        CordfuseError: the folder is not a dataset, the mapping is invalid, or a participant is
            not in the dataset.
    """
    from cordfuse.check import check_dataset
    from cordfuse.dataset import open_dataset

    dataset = open_dataset(args.dataset, mapping=args.mapping, participants=args.participant_label)
    report = check_dataset(dataset, progress=progress_bar(len(dataset.subjects), "check"))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format_text())
    return 0 if report.ok else 1
