"""Options several verbs share, defined once, and the progress bar.

An option whose default belongs to the API (a ``TrainConfig`` field, a metric constant, a
function's keyword default) defaults to None here, and a verb passes it on only when it was given
(:func:`given`): the API's own default applies, so the CLI cannot drift from it. ``--help`` shows
that default, read from the API when the help is printed (:data:`API_DEFAULTS`,
:class:`DefaultsHelpFormatter`): no default is typed twice.

The vocabularies (``choices``) are spelled here, not imported, because the modules that define
them import torch or scipy and ``cordfuse --help`` builds every verb's parser;
tests/test_cli_options.py checks they equal the API's.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from cordfuse.sequences import SEQUENCES

#: ``--amp``: the modes of :func:`cordfuse.nn.device.autocast_dtype`.
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: ``predict --ensemble``: the rules of :data:`cordfuse.inference.ENSEMBLES`.
ENSEMBLES = ("mean", "min", "median")
#: ``--centerline`` and ``centerline --method``: the backends of ``PrepConfig.centerline``.
CENTERLINE_METHODS = ("auto", "mask", "sct")
#: ``--preset``: the names of ``cordfuse.preprocess.pipeline.PRESETS`` (prepare) and
#: ``cordfuse.nn.networks.NET_PRESETS`` (train).
PRESET_NAMES = ("paper", "small")


def _schedule(part: int) -> str:
    from cordfuse.training.config import SCHEDULES

    return "the preset's: " + ", ".join(
        f"{schedule[part]} for {preset}" for preset, schedule in SCHEDULES.items()
    )


def _optimizer() -> str:
    from cordfuse.training.config import PRESET_OPTIMIZERS

    return "the preset's: " + ", ".join(
        f"{optimizer} for {preset}" for preset, optimizer in PRESET_OPTIMIZERS.items()
    )


def _learning_rate() -> str:
    from cordfuse.training.config import OPTIMIZERS

    return "the optimizer's: " + ", ".join(f"{lr:g} for {name}" for name, lr in OPTIMIZERS.items())


def _prep_setting(name: str) -> str:
    from cordfuse.preprocess.pipeline import PRESETS

    values = {preset: getattr(config, name) for preset, config in PRESETS.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values())):g}"
    return "the preset's: " + ", ".join(f"{v:g} for {preset}" for preset, v in values.items())


def _feature_noise() -> str:
    from cordfuse.nn.networks import FeatureNoise

    noise = FeatureNoise()
    return (
        f"the paper's: weight {noise.weight:g}, logistic scale {noise.logistic_scale:g}, "
        f"normal sigma {noise.normal_sigma:g}"
    )


_TRAIN = "cordfuse.training.config:TrainConfig."
_PREDICT = "cordfuse.inference:predict_subject"
_METRICS = "cordfuse.evaluation.metrics:lesion_detection"
_DEMO = "cordfuse.demo:DemoSettings."

#: Where the default of each option left as None lives in the API, by ``(verb, option)``:
#: ``"module:Class.field"`` (a dataclass field), ``"module:function(keyword)"`` (a keyword
#: default) or a function that returns the text. ``--help`` reads it when it is printed.
API_DEFAULTS: dict[tuple[str, str], str | Callable[[], str]] = {
    ("synth", "--cohorts"): "cordfuse.synth:write_cohort(cohorts)",
    ("prepare", "--preset"): "cordfuse.preprocess.pipeline:preset_config(preset)",
    ("prepare", "--spacing"): lambda: _prep_setting("spacing"),
    ("prepare", "--crop-size"): lambda: _prep_setting("crop_size"),
    ("prepare", "--margin"): lambda: _prep_setting("margin_mm"),
    ("prepare", "--centerline"): "cordfuse.preprocess.pipeline:PrepConfig.centerline",
    ("prepare", "--jobs"): "cordfuse.preprocess.batch:prepare_dataset(jobs)",
    ("centerline", "--method"): "cordfuse.preprocess.pipeline:write_centerline(method)",
    ("centerline", "--contrast"): "cordfuse.preprocess.pipeline:write_centerline(contrast)",
    ("restore", "--threshold"): "cordfuse.preprocess.pipeline:restore_to_file(threshold)",
    ("train", "--model"): _TRAIN + "model",
    ("train", "--noise-params"): _feature_noise,
    ("train", "--fusion"): _TRAIN + "fusion",
    ("train", "--sequence-dropout"): _TRAIN + "sequence_dropout",
    ("train", "--reference-dropout"): _TRAIN + "reference_dropout",
    ("train", "--correction"): _TRAIN + "correction",
    ("train", "--sequence-supervision"): _TRAIN + "sequence_supervision",
    ("train", "--lesion-contrast"): _TRAIN + "lesion_contrast",
    ("train", "--fov-truncation"): _TRAIN + "fov_truncation",
    ("train", "--paint-lesions"): _TRAIN + "paint_lesions",
    ("train", "--blob-loss"): _TRAIN + "blob_loss",
    ("train", "--preset"): _TRAIN + "preset",
    ("train", "--epochs"): lambda: _schedule(0),
    ("train", "--iterations"): lambda: _schedule(1),
    ("train", "--batch-size"): _TRAIN + "batch_size",
    ("train", "--optimizer"): _optimizer,
    ("train", "--learning-rate"): _learning_rate,
    ("train", "--seed"): _TRAIN + "seed",
    ("train", "--val-fraction"): _TRAIN + "val_fraction",
    ("train", "--device"): "cordfuse.training.trainer:train(device)",
    ("train", "--amp"): _TRAIN + "amp",
    ("train", "--val-every"): _TRAIN + "val_every",
    ("predict", "--threshold"): _PREDICT + "(threshold)",
    ("predict", "--min-volume"): _PREDICT + "(min_volume_mm3)",
    ("predict", "--batch-size"): _PREDICT + "(batch_size)",
    ("predict", "--amp"): _PREDICT + "(amp)",
    ("predict", "--ensemble"): _PREDICT + "(ensemble)",
    ("predict", "--device"): "cordfuse.nn.device:choose_device(requested)",
    ("predict", "--jobs"): "cordfuse.inference:predict_dataset(jobs)",
    ("export-model", "--licence"): "cordfuse.models:export_model(licence)",
    ("evaluate", "--alpha"): _METRICS + "(alpha)",
    ("evaluate", "--beta"): _METRICS + "(beta)",
    ("evaluate", "--gamma"): _METRICS + "(gamma)",
    ("evaluate", "--min-volume"): _METRICS + "(min_volume_mm3)",
    ("evaluate", "--connectivity"): _METRICS + "(connectivity)",
    ("demo", "--subjects"): _DEMO + "subjects",
    ("demo", "--seed"): _DEMO + "seed",
    ("demo", "--epochs"): _DEMO + "epochs",
    ("demo", "--iterations"): _DEMO + "iterations",
    ("demo", "--test-per-cohort"): _DEMO + "test_per_cohort",
    ("analyze-features", "--max-values"): "cordfuse.features:analyze_features(max_values)",
    ("analyze-features", "--seed"): "cordfuse.features:analyze_features(seed)",
    ("analyze-features", "--device"): "cordfuse.features:analyze_features(device)",
    ("diagnose", "--device"): "cordfuse.diagnostics:diagnose_study(device)",
}


def api_default(spec: str | Callable[[], str]) -> Any:
    """The value an :data:`API_DEFAULTS` entry points at, read from the API (imported here).

    Args:
        spec: ``"module:Class.field"``, ``"module:function(keyword)"`` or a function.

    Returns:
        The default.

    Example:
        >>> api_default("cordfuse.synth:write_cohort(cohorts)")
        ('A', 'B', 'C')
    """
    if callable(spec):
        return spec()
    module, _, path = spec.partition(":")
    if path.endswith(")"):
        function, _, keyword = path[:-1].partition("(")
        return keyword_defaults(getattr(importlib.import_module(module), function))[keyword]
    value: Any = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` that ends each option's text with its default: the API's
    (:data:`API_DEFAULTS`, imported only when the help is printed, so that building the parser
    stays light) or the option's own, unless its text already says what leaving it out does."""

    def default_text(self, action: argparse.Action) -> str | None:
        """The default ``--help`` shows for an option.

        Args:
            action: The option.

        Returns:
            The text, or None for an option without a default to show.
        """
        verb = self._prog.split(" ", 1)[-1]
        spec = next((API_DEFAULTS.get((verb, o)) for o in action.option_strings), None)
        if spec is not None:
            try:
                return _shown(api_default(spec))
            except ImportError:  # a part of the API this install lacks (torch): say nothing
                return None
        if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
            return None  # a flag, or an option left out means "not used"
        if action.default == []:
            return None
        if "default" in (action.help or ""):
            return None
        return _shown(action.default)

    def _format_action(self, action: argparse.Action) -> str:
        # here rather than in _get_help_string, which argparse skips for an option without help
        text = self.default_text(action)
        if text is not None:
            action = copy.copy(action)
            shown = f"(default: {text})".replace("%", "%%")
            action.help = f"{action.help} {shown}" if action.help else shown
        return super()._format_action(action)


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments of an API call that the user gave (not None).

    Args:
        **values: API keyword -> the option's parsed value (None when left out).

    Returns:
        Those given, so that the API's default applies to the others.
    """
    return {name: value for name, value in values.items() if value is not None}


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of an API function, where a verb needs the value itself.

    Args:
        function: The API function.

    Returns:
        Parameter name -> default, for the parameters that have one.
    """
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def comma_list(text: str | None) -> list[str] | None:
    """``"T2Sag, STIR"`` -> ``["T2Sag", "STIR"]``, empty names dropped.

    Args:
        text: The option's value.

    Returns:
        The names, or None when not given or naming none.
    """
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    return names or None


def progress_bar(total: int, desc: str) -> Callable[[str], None]:
    """A tqdm bar on stderr, hidden when stderr is not a terminal.

    Args:
        total: Subjects to come.
        desc: The bar's label (the verb).

    Returns:
        The callback an API function calls with each subject's name once it is done.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="subject", disable=None, file=sys.stderr)

    def update(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return update


def add_participant_label(parser: argparse.ArgumentParser, *, writes: bool = True) -> None:
    """``--participant-label LABEL...``: the BIDS-App selection of participants.

    Args:
        parser: The verb's parser.
        writes: Whether the verb writes an output folder (one job per participant may then
            write into the same one).
    """
    parser.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="only these participants (01 or sub-01), as a BIDS App"
        + (": one job per participant may write into the same output folder at once" * writes),
    )


def add_mapping(
    parser: argparse.ArgumentParser,
    help: str = "JSON/YAML file overriding the sequence matching rules",
) -> None:
    """``--mapping FILE``: sequence matching rules replacing the built-in ones.

    Args:
        parser: The verb's parser.
        help: The option's help.
    """
    parser.add_argument("--mapping", help=help)


def add_sequence_files(parser: argparse.ArgumentParser) -> None:
    """``--t2sag NIFTI...``, ``--stir NIFTI...``, ...: one option per sequence, in channel order.

    Args:
        parser: The verb's parser.
    """
    for seq in SEQUENCES:
        parser.add_argument(
            f"--{seq.lower()}",
            nargs="+",
            metavar="NIFTI",
            help=f"explicit {seq} file(s) (several = slabs, top first)",
        )


def add_preset(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--preset {paper,small}``; the API's default when left out.

    Args:
        parser: The verb's parser.
        help: The option's help.
    """
    parser.add_argument("--preset", choices=PRESET_NAMES, help=help)


def add_centerline(
    parser: argparse.ArgumentParser,
    help: str = "the cord centreline: auto (the built-in detector), mask (the cord masks in "
    "derivatives/labels) or sct (Spinal Cord Toolbox, when installed)",
) -> None:
    """``--centerline {auto,mask,sct}``; the API's default when left out.

    Args:
        parser: The verb's parser.
        help: The option's help.
    """
    parser.add_argument("--centerline", choices=CENTERLINE_METHODS, help=help)


def add_amp(parser: argparse.ArgumentParser, help: str) -> None:
    """``--amp {auto,bf16,fp16,none}``: autocast; the API's default when left out.

    Args:
        parser: The verb's parser.
        help: The option's help.
    """
    parser.add_argument("--amp", choices=AMP_MODES, help=help)


def add_device(
    parser: argparse.ArgumentParser, help: str = "auto (CUDA when present), cpu or cuda:N"
) -> None:
    """``--device``: ``auto``, ``cpu`` or ``cuda:N``; the API's default when left out.

    Args:
        parser: The verb's parser.
        help: The option's help.
    """
    parser.add_argument("--device", help=help)


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed S``; the API's default when left out.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument("--seed", type=int, help="random seed")


def add_threshold(parser: argparse.ArgumentParser) -> None:
    """``--threshold T``: probability above which a voxel is lesion; the API's default when left
    out.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument("--threshold", type=float, help="probability above which a voxel is lesion")


def add_jobs(parser: argparse.ArgumentParser) -> None:
    """``--jobs J``: subjects in parallel; the API's default when left out.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument("--jobs", type=int, help="subjects in parallel (processes)")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the verb's CPU threads (each process's, with ``--jobs``); every verb has
    it, and :func:`cordfuse.cli.main` applies it before the verb runs.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of each process (default: $CORDFUSE_THREADS, else the cores this "
        "process may use, shared by --jobs processes)",
    )


def add_qc(parser: argparse.ArgumentParser) -> None:
    """``--qc``: a QC picture per subject.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument("--qc", action="store_true", help="QC picture per subject")


def add_overwrite(parser: argparse.ArgumentParser, help: str) -> None:
    """``--overwrite``: redo what an earlier run of the verb wrote.

    Args:
        parser: The verb's parser.
        help: What it replaces, for this verb.
    """
    parser.add_argument("--overwrite", action="store_true", help=help)
