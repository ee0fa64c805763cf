"""``cordfuse demo``: the whole pipeline on a small synthetic cohort (synth, check, prepare,
train, predict, evaluate, report) in one folder."""

from __future__ import annotations

import argparse

from cordfuse.cli._options import add_overwrite, add_seed, given


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser("demo", help="run the whole pipeline on a small synthetic cohort")
    parser.add_argument("out", nargs="?", default="cordfuse-demo", help="output folder")
    parser.add_argument("--subjects", type=int, help="subjects of the synthetic cohort")
    add_seed(parser)
    parser.add_argument("--epochs", type=int, help="training epochs per model")
    parser.add_argument("--iterations", type=int, help="iterations per epoch")
    parser.add_argument("--test-per-cohort", type=int, help="held-out test subjects per cohort")
    add_overwrite(parser, help="replace an earlier demo in OUT (only what the demo wrote there)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; it reports its own steps.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0, or 1 when a step found a problem.

    Raises:
        CordfuseError: settings that leave no test subject, or a folder the demo does not own.
    """
    from cordfuse.demo import DemoSettings, run_demo

    settings = DemoSettings(
        **given(
            subjects=args.subjects,
            seed=args.seed,
            epochs=args.epochs,
            iterations=args.iterations,
            test_per_cohort=args.test_per_cohort,
        )
    )
    result = run_demo(args.out, settings, overwrite=args.overwrite)
    return 0 if result["ok"] else 1
