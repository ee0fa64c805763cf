"""``cordfuse analyze-features``: fit the latent-noise mixture (logistic/normal) of a Mean
Imputation model's bottleneck feature differences, for ``train --variant feature-aug``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cordfuse.cli._options import add_device, add_seed, given


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``analyze-features`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "analyze-features",
        help="fit the latent-noise mixture of a Mean Imputation model",
        description="Bottleneck feature differences (other sequences - T2Sag) of a trained "
        "multi-encoder model, fitted by maximum likelihood with the logistic/normal mixture.",
    )
    parser.add_argument("model", help="training folder or checkpoint of a Mean Imputation model")
    parser.add_argument("prepared", help="prepared dataset folder")
    parser.add_argument("-o", "--out", default="features", help="output folder")
    parser.add_argument("--max-values", type=int, help="subsample of differences to fit")
    add_seed(parser)
    add_device(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Fit the mixture, write its files and print the fitted parameters.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: an unreadable model or prepared dataset.
    """
    from cordfuse.features import analyze_features

    out = Path(args.out)
    fit = analyze_features(
        args.model,
        args.prepared,
        out,
        **given(device=args.device, max_values=args.max_values, seed=args.seed),
    )
    noise = fit.noise
    print(
        f"Fitted on {fit.n_values} feature differences: weight {noise.weight:.4f}, "
        f"logistic scale {noise.logistic_scale:.4g}, normal sigma {noise.normal_sigma:.4g}"
    )
    print(
        f"Wrote {out / 'noise_params.json'} (train --noise-params), {out / 'fit.json'}, "
        f"{out / 'histogram.png'}"
    )
    return 0
