"""Options several verbs share, defined once, and the progress bar.

An option whose default belongs to the API (a ``TrainConfig`` field, a metric constant, a
function's keyword default) defaults to None here, and a verb passes it on only when it was given
(:func:`given`): the API's own default applies, so the CLI cannot drift from it.

The vocabularies (``choices``) are spelled here, not imported, because the modules that define
them import torch or scipy and ``cordfuse --help`` builds every verb's parser;
tests/test_cli_options.py checks they equal the API's.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from typing import Any

from cordfuse.sequences import SEQUENCES

#: ``--amp``: the modes of :func:`cordfuse.nn.device.autocast_dtype`.
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: ``--centerline`` and ``centerline --method``: the backends of ``PrepConfig.centerline``.
CENTERLINE_METHODS = ("auto", "mask", "sct")
#: ``--preset``: the names of ``cordfuse.preprocess.pipeline.PRESETS`` (prepare) and
#: ``cordfuse.nn.networks.NET_PRESETS`` (train).
PRESET_NAMES = ("paper", "small")


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


def add_participant_label(parser: argparse.ArgumentParser) -> None:
    """``--participant-label LABEL...``: the BIDS-App selection of participants.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="only these participants (01 or sub-01), as a BIDS App: one job per "
        "participant may write into the same output folder at once",
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


def add_centerline(parser: argparse.ArgumentParser, help: str | None = None) -> None:
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


def add_device(parser: argparse.ArgumentParser, help: str | None = None) -> None:
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
    parser.add_argument("--seed", type=int)


def add_threshold(parser: argparse.ArgumentParser) -> None:
    """``--threshold T``: probability above which a voxel is lesion; the API's default when left
    out.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument("--threshold", type=float)


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
