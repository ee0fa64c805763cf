"""``cordfuse export-model``: training runs (one model or an ensemble) packed into one zip with
their model card and a SHA-256 manifest, to hand on."""

from __future__ import annotations

import argparse

from cordfuse.cli._options import given


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export-model`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "export-model",
        help="pack training runs into a model zip to hand on",
        description="The weights-only checkpoints of an ensemble, its model card (MODEL.md and "
        "model.json) and a SHA-256 manifest, in one zip that `cordfuse model install` and "
        "`cordfuse predict -m` take.",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="training folder(s) or checkpoint(s)"
    )
    parser.add_argument("-o", "--output", required=True, help="the model zip to write (.zip)")
    parser.add_argument("--name", help="the model's name (default: the zip's name)")
    parser.add_argument(
        "--licence",
        "--license",
        dest="licence",
        help="the licence the weights are handed on under",
    )
    parser.add_argument(
        "--prepared",
        metavar="DIR",
        help="the prepared dataset the runs were trained on: the card then counts subjects "
        "and lesions per cohort (else unknown)",
    )
    parser.add_argument(
        "--test-metrics",
        metavar="JSON",
        help="cordfuse evaluate --json of the model's test predictions: the card then holds "
        "them (else unknown)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    return parser


def run(args: argparse.Namespace) -> int:
    """Export the runs and say what the zip holds.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: an unreadable run, runs that do not form an ensemble, an existing output
            (without ``--overwrite``), an invalid name, a prepared dataset that lacks the runs'
            subjects, or unreadable test metrics.
    """
    from cordfuse.models import export_model

    package = export_model(
        args.runs,
        args.output,
        name=args.name,
        prepared=args.prepared,
        test_metrics=args.test_metrics,
        overwrite=args.overwrite,
        **given(licence=args.licence),
    )
    print(f"{package.path}: {package.name}: {package.summary}")
    print(f"licence {package.licence}; SHA-256 {package.sha256}")
    return 0
