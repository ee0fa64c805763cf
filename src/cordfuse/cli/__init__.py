"""``cordfuse <verb>``: one module per verb (as SCT has one file per command), each with
``add_parser(verbs)`` and ``run(args)``; :func:`main` parses, runs and reports errors.

A verb holds no logic of its own: it parses, calls the API and prints. Its heavy imports (torch,
the stage modules) are inside ``run``, so ``cordfuse --help`` stays fast. :func:`main` takes
``argv``, so tests call the CLI in-process. A :class:`~cordfuse.errors.CordfuseError` (a user
mistake: bad file, bad option) is printed as one line ``cordfuse: error: ...`` with exit status 2,
never as a traceback. Every verb takes ``--threads`` and runs its thread pools within the cores
it may use (:mod:`cordfuse.threads`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cordfuse import __version__
from cordfuse.cli import (
    analyze_features,
    centerline,
    check,
    demo,
    diagnose,
    evaluate,
    export_model,
    model,
    predict,
    prepare,
    report,
    restore,
    study,
    synth,
    train,
)
from cordfuse.cli._options import DefaultsHelpFormatter, add_threads
from cordfuse.errors import CordfuseError
from cordfuse.threads import (
    OPENMP_WAIT_VARIABLES,
    limited_threads,
    short_spin_openmp,
    threads_budget,
)

#: The verbs, in the order ``cordfuse --help`` lists them.
VERBS = (
    synth,
    check,
    prepare,
    centerline,
    restore,
    train,
    export_model,
    model,
    predict,
    evaluate,
    demo,
    study,
    report,
    analyze_features,
    diagnose,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cordfuse`` parser: ``--version`` and one sub-parser per verb.

    Returns:
        The parser; each verb's parsed arguments carry its ``run`` as ``args.run``.
    """
    parser = argparse.ArgumentParser(
        prog="cordfuse",
        description="Multi-sequence MS lesion segmentation in spinal cord MRI.",
    )
    parser.add_argument("--version", action="version", version=f"cordfuse {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        sub = verb.add_parser(verbs)
        sub.formatter_class = DefaultsHelpFormatter  # each option's default, from the API
        add_threads(sub)
        sub.set_defaults(run=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cordfuse`` with ``argv``.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: the verb's (0 when all went well), 2 for a user error, 130 when
        interrupted.
    """
    args = build_parser().parse_args(argv)
    policy = {name: os.environ.get(name) for name in OPENMP_WAIT_VARIABLES}
    try:
        # before the verb imports torch: OpenMP reads its wait policy once, when it starts
        short_spin_openmp()
        # DDP ranks started by torchrun on one node share its cores
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        with limited_threads(threads_budget(args.threads, processes=ranks)):
            return int(args.run(args))
    except CordfuseError as exc:
        print(f"cordfuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cordfuse: interrupted", file=sys.stderr)
        return 130
    finally:  # an in-process caller's later child processes get its own policy back
        for name, value in policy.items():
            if value is None:
                os.environ.pop(name, None)
