"""The CLI builds its parser without the API (``cordfuse --help`` stays fast), yet its vocabularies,
defaults and the defaults its help states are the API's."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cordfuse.cli import build_parser
from cordfuse.cli._options import keyword_defaults
from cordfuse.errors import CordfuseError


def option(verb: str, flag: str):
    """The argparse action of ``cordfuse VERB FLAG``."""
    parser = build_parser()._subparsers._group_actions[0].choices[verb]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_building_the_parser_imports_no_heavy_module():
    code = (
        "import sys; from cordfuse.cli import build_parser; build_parser(); "
        "print([m for m in ('torch', 'scipy', 'nibabel', 'matplotlib', 'numpy') "
        "if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def stated_default(verb: str, flag: str) -> float:
    """The number an option's help gives as its default: ``(default 24)``, ``(default 2e6)``."""
    return float(re.search(r"\(default ([0-9.e]+)", option(verb, flag).help).group(1))


def test_choices_are_the_apis():
    from cordfuse.nn.networks import CORRECTIONS, FUSIONS, NET_PRESETS
    from cordfuse.preprocess.centerline import POLARITY_SIGNS
    from cordfuse.preprocess.pipeline import PRESETS, PrepConfig
    from cordfuse.training.config import MODELS, VARIANTS

    assert option("train", "--model").choices == MODELS
    assert option("train", "--variant").choices == VARIANTS
    assert option("train", "--fusion").choices == FUSIONS
    assert option("train", "--correction").choices == CORRECTIONS
    assert list(option("train", "--preset").choices) == list(NET_PRESETS)
    assert list(option("prepare", "--preset").choices) == list(PRESETS)
    assert sorted(option("centerline", "--contrast").choices) == sorted(POLARITY_SIGNS)
    for verb, flag in (
        ("prepare", "--centerline"),
        ("predict", "--centerline"),
        ("centerline", "--method"),
    ):
        for method in option(verb, flag).choices:
            PrepConfig(centerline=method)
    with pytest.raises(CordfuseError):
        PrepConfig(centerline="other")


def test_options_left_out_take_the_api_defaults():
    """Left out, an option is None and not passed on: the API's default applies."""
    args = build_parser().parse_args(["train", "prepared", "out"])
    for dest in (
        "model",
        "preset",
        "epochs",
        "iterations",
        "batch_size",
        "seed",
        "val_fraction",
        "amp",
        "device",
        "fusion",
        "sequence_dropout",
        "reference_dropout",
        "val_every",
    ):
        assert getattr(args, dest) is None, dest
    args = build_parser().parse_args(["evaluate", "--pred", "p", "--gt", "g"])
    assert [args.alpha, args.beta, args.gamma, args.min_volume, args.connectivity] == [None] * 5


def test_help_states_the_api_defaults():
    from cordfuse.demo import DemoSettings
    from cordfuse.features import analyze_features
    from cordfuse.preprocess.pipeline import PRESETS
    from cordfuse.synth import write_cohort
    from cordfuse.training.config import TrainConfig

    config = TrainConfig()
    assert stated_default("train", "--val-every") == config.val_every
    assert stated_default("train", "--sequence-dropout") == config.sequence_dropout
    assert stated_default("train", "--reference-dropout") == config.reference_dropout
    assert f"the paper's {config.fusion} (default)" in option("train", "--fusion").help
    assert stated_default("demo", "--subjects") == DemoSettings().subjects
    assert (
        stated_default("analyze-features", "--max-values")
        == keyword_defaults(analyze_features)["max_values"]
    )
    cohorts = ",".join(keyword_defaults(write_cohort)["cohorts"])
    assert f"({cohorts})" in option("synth", "--cohorts").help
    paper, small = PRESETS["paper"], PRESETS["small"]
    assert (
        f"paper: {paper.spacing:g} mm, {paper.crop_size}x{paper.crop_size} (default); "
        f"small: {small.spacing:g} mm, {small.crop_size}x{small.crop_size}"
        in option("prepare", "--preset").help
    )
