"""``cordfuse diagnose``: why the extra sequences do (or do not) change a finished study's
answers: encoder learning, fusion weights, lesion contrast and misalignment, coverage."""

from __future__ import annotations

import argparse
from pathlib import Path

from cordfuse.cli._options import add_device, comma_list, given


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``diagnose`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "diagnose",
        help="why the extra sequences do (not) change a study's answers",
        description="Measurements on a finished study: encoder learning and fusion weights per "
        "sequence, bottleneck and probability change when sequences are added, lesion contrast "
        "and misalignment per sequence in the prepared crops, field-of-view coverage.",
    )
    parser.add_argument("study_dir", help="folder of a finished cordfuse study")
    parser.add_argument(
        "--experiments",
        help="comma-separated experiments (default: every Mean Imputation model of the study)",
    )
    add_device(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Measure, write ``diagnostics.md`` and ``.json`` into the study and say so.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: not a finished study, or an unknown experiment.
    """
    from cordfuse.diagnostics import diagnose_study

    result = diagnose_study(
        args.study_dir, experiments=comma_list(args.experiments), **given(device=args.device)
    )
    print(
        f"Diagnosed {len(result['models'])} model(s): "
        f"{Path(args.study_dir) / 'diagnostics.md'} (and .json)"
    )
    return 0
