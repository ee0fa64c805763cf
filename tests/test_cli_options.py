"""The CLI builds its parser without the API (``cordfuse --help`` stays fast), yet its vocabularies,
defaults and the defaults its help states are the API's."""

from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

import pytest

from cordfuse.cli import build_parser
from cordfuse.cli._options import API_DEFAULTS, api_default, keyword_defaults
from cordfuse.errors import CordfuseError
from cordfuse.sequences import SEQUENCES


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


def test_choices_are_the_apis():
    from cordfuse.inference import ENSEMBLES
    from cordfuse.nn.networks import CORRECTIONS, FUSIONS, NET_PRESETS
    from cordfuse.preprocess.centerline import POLARITY_SIGNS
    from cordfuse.preprocess.pipeline import PRESETS, PrepConfig
    from cordfuse.training.config import MODELS, OPTIMIZERS, VARIANTS

    assert option("train", "--model").choices == MODELS
    assert list(option("train", "--optimizer").choices) == list(OPTIMIZERS)
    assert option("train", "--variant").choices == VARIANTS
    assert option("train", "--fusion").choices == FUSIONS
    assert option("train", "--correction").choices == CORRECTIONS
    assert list(option("train", "--preset").choices) == list(NET_PRESETS)
    assert list(option("prepare", "--preset").choices) == list(PRESETS)
    assert sorted(option("centerline", "--contrast").choices) == sorted(POLARITY_SIGNS)
    assert option("predict", "--ensemble").choices == tuple(ENSEMBLES)
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


def verbs() -> dict:
    """Every verb's parser, by name."""
    return build_parser()._subparsers._group_actions[0].choices


def shown_default(verb: str, flag: str) -> str | None:
    """The default ``cordfuse VERB --help`` prints for FLAG (``(default: ...)``), as printed."""
    parser = verbs()[verb]
    with mock.patch.dict(os.environ, {"COLUMNS": "10000"}):  # one line per option
        help_text = parser.format_help()
    text = parser._get_formatter().default_text(option(verb, flag))
    if text is not None:
        assert f"(default: {text})" in help_text, (verb, flag)
    return text


#: Options that have no default to show: left out, they are not used (an input, a filter), or
#: what leaving them out does depends on another input.
NOT_DEFAULTED = {
    ("check", "--participant-label"),
    ("check", "--mapping"),
    ("prepare", "--participant-label"),
    ("prepare", "--mapping"),
    ("prepare", "--nnunet"),
    ("centerline", "--mask"),
    ("centerline", "--qc"),
    ("restore", "--slab"),
    ("train", "--anchor"),
    ("train", "--sequences"),
    ("train", "--variant"),
    ("train", "--frozen-from"),
    ("train", "--fold-file"),
    ("predict", "--model"),
    ("predict", "--input"),
    *(("predict", f"--{seq.lower()}") for seq in SEQUENCES),
    ("predict", "--sequences"),
    ("predict", "--centerline"),  # the checkpoint's
    ("predict", "--participant-label"),
    ("predict", "--mapping"),
    ("evaluate", "--output"),
    ("evaluate", "--lesions"),
    ("evaluate", "--participants"),
    ("export-model", "--prepared"),
    ("export-model", "--test-metrics"),
}


def test_help_shows_every_default_or_says_why_not():
    """Each option that takes a value shows its default in --help (the API's, read from the code
    when the help is printed), says in its help what leaving it out does, or is listed above."""
    missing = []
    for verb, parser in verbs().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positional, a flag, or always given
            flag = max(action.option_strings, key=len)
            if formatter.default_text(action) is not None or "default" in (action.help or ""):
                continue
            if (verb, flag) not in NOT_DEFAULTED:
                missing.append(f"{verb} {flag}")
    assert not missing, f"options whose --help states no default: {missing}"


def test_every_api_default_names_an_option_left_as_none():
    """An API default is shown only where the option defaults to None, so that the verb passes
    nothing and the API's own default applies (``given``)."""
    for (verb, flag), spec in API_DEFAULTS.items():
        assert option(verb, flag).default is None, (verb, flag)
        api_default(spec)  # the API still has it


def test_help_states_the_api_defaults():
    """What --help prints is what the API does when the option is left out."""
    from cordfuse.demo import DemoSettings
    from cordfuse.diagnostics import diagnose_study
    from cordfuse.evaluation.metrics import lesion_detection
    from cordfuse.features import analyze_features
    from cordfuse.inference import predict_dataset, predict_subject
    from cordfuse.nn.networks import NET_PRESETS, FeatureNoise
    from cordfuse.preprocess.batch import prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS, restore_to_file, write_centerline
    from cordfuse.synth import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    config = TrainConfig()
    for flag in (
        "--model",
        "--fusion",
        "--sequence-dropout",
        "--reference-dropout",
        "--correction",
        "--sequence-supervision",
        "--lesion-contrast",
        "--fov-truncation",
        "--blob-loss",
        "--preset",
        "--batch-size",
        "--seed",
        "--val-fraction",
        "--amp",
        "--val-every",
    ):
        value = getattr(config, flag[2:].replace("-", "_"))
        assert type(value)(shown_default("train", flag)) == value, flag
    for flag, field in (("--epochs", "epochs"), ("--iterations", "iterations")):
        text = shown_default("train", flag)
        for preset in NET_PRESETS:
            assert f"{getattr(TrainConfig(preset=preset), field)} for {preset}" in text
    noise = FeatureNoise()
    assert f"weight {noise.weight:g}" in shown_default("train", "--noise-params")
    assert shown_default("train", "--device") == keyword_defaults(train)["device"]
    for flag, name in (
        ("--threshold", "threshold"),
        ("--min-volume", "min_volume_mm3"),
        ("--batch-size", "batch_size"),
        ("--amp", "amp"),
        ("--ensemble", "ensemble"),
    ):
        value = keyword_defaults(predict_subject)[name]
        assert type(value)(shown_default("predict", flag)) == value, flag
    assert shown_default("predict", "--threshold") == "0.5"  # the value the docs state
    assert shown_default("predict", "--jobs") == str(keyword_defaults(predict_dataset)["jobs"])
    assert shown_default("restore", "--threshold") == str(
        keyword_defaults(restore_to_file)["threshold"]
    )
    metrics = keyword_defaults(lesion_detection)
    for flag, name in (
        ("--alpha", "alpha"),
        ("--beta", "beta"),
        ("--gamma", "gamma"),
        ("--min-volume", "min_volume_mm3"),
        ("--connectivity", "connectivity"),
    ):
        assert float(shown_default("evaluate", flag)) == metrics[name], flag
    assert (shown_default("evaluate", "--alpha"), shown_default("evaluate", "--beta")) == (
        "0.1",
        "0.7",
    )
    settings = DemoSettings()
    for flag in ("--subjects", "--seed", "--epochs", "--iterations", "--test-per-cohort"):
        assert shown_default("demo", flag) == str(getattr(settings, flag[2:].replace("-", "_")))
    features = keyword_defaults(analyze_features)
    assert int(shown_default("analyze-features", "--max-values")) == features["max_values"]
    assert shown_default("analyze-features", "--device") == features["device"]
    assert shown_default("diagnose", "--device") == keyword_defaults(diagnose_study)["device"]
    assert shown_default("synth", "--cohorts") == ",".join(
        keyword_defaults(write_cohort)["cohorts"]
    )
    assert shown_default("synth", "--subjects") == "10"  # the verb's own default
    for flag, name in (("--spacing", "spacing"), ("--crop-size", "crop_size")):
        text = shown_default("prepare", flag)
        for preset, prep in PRESETS.items():
            assert f"{getattr(prep, name):g} for {preset}" in text
    assert float(shown_default("prepare", "--margin")) == PRESETS["paper"].margin_mm
    assert shown_default("prepare", "--preset") == "paper"
    assert shown_default("prepare", "--jobs") == str(keyword_defaults(prepare_dataset)["jobs"])
    assert shown_default("prepare", "--centerline") == PRESETS["paper"].centerline
    for flag in ("--method", "--contrast"):
        assert shown_default("centerline", flag) == keyword_defaults(write_centerline)[flag[2:]]


def test_participant_label_says_who_writes():
    assert "output folder" in option("prepare", "--participant-label").help
    assert "output folder" not in option("check", "--participant-label").help  # check never writes
