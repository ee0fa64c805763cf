"""The experiment grid: which subjects test, and which sequences each model sees at inference.

Pure functions of the prepared dataset's summary and of the study's experiments; nothing here
reads or writes a file.

Sequences at inference, for each test subject: T2Sag alone (every model that can), each
specific model's combination when the subject has it, and all of the subject's sequences
(:data:`ALL_AVAILABLE`; multi-sequence models). What "with these sequences" means is
:func:`cordfuse.inference.predict_prepared`'s: the subject prepared with all its sequences, the
others switched off.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.evaluation.tables import ALL_AVAILABLE, T2SAG_ONLY
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES
from cordfuse.study.config import Experiment


def sequences_label(sequences: Iterable[str]) -> str:
    """The row label of a set of sequences, in channel order.

    Args:
        sequences: Sequence names, in any order.

    Returns:
        The names joined by ``+`` in :data:`cordfuse.sequences.SEQUENCES` order
        (``T2Sag+STIR``).
    """
    wanted = set(sequences)
    return "+".join(s for s in SEQUENCES if s in wanted)


def inference_sets(
    experiment: Experiment, available: list[str], specific_sets: list[tuple[str, ...]]
) -> list[tuple[str, tuple[str, ...]]]:
    """The sets of sequences one model predicts one test subject with (see the module doc).

    Args:
        experiment: The model.
        available: The subject's sequences.
        specific_sets: The combinations of the study's specific models.

    Returns:
        ``(row label, sequences)`` pairs; empty when the model cannot predict the subject (a
        specific model whose sequences it lacks).
    """
    have = set(available)
    if experiment.model == "baseline":
        return [(T2SAG_ONLY, (REFERENCE_SEQUENCE,))]
    if experiment.model == "specific":
        needed = experiment.sequences
        return [(sequences_label(needed), needed)] if set(needed) <= have else []
    sets: list[tuple[str, tuple[str, ...]]] = [(T2SAG_ONLY, (REFERENCE_SEQUENCE,))]
    sets += [(sequences_label(s), s) for s in specific_sets if set(s) <= have]
    if len(have) > 1:  # with T2Sag alone, "all available" is the T2Sag row again
        sets.append((ALL_AVAILABLE, tuple(s for s in SEQUENCES if s in have)))
    return sets


def inference_order(specific_sets: list[tuple[str, ...]]) -> list[str]:
    """The rows of Table 1 for one model, in order.

    Args:
        specific_sets: The combinations of the study's specific models.

    Returns:
        T2Sag alone, each specific combination, then :data:`ALL_AVAILABLE`.
    """
    return [T2SAG_ONLY, *[sequences_label(s) for s in specific_sets], ALL_AVAILABLE]


def split_by_cohort(document: dict, test_per_cohort: int, seed: int) -> dict[str, list[str]]:
    """Held-out test subjects per cohort; one validation subject per cohort; the rest trains.

    Drawn per cohort so that every test cohort of Table 1 has its subjects, whatever the cohorts'
    sizes.

    Args:
        document: A prepared dataset's ``dataset.json`` (its ``subjects``, with ``id``,
            ``cohort`` and ``has_label``); unlabelled subjects are left out.
        test_per_cohort: Test subjects drawn from each cohort.
        seed: Seed of the draw.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        CordfuseError: No subject is left to train on.
    """
    rng = np.random.default_rng(seed)
    by_cohort: dict[str, list[str]] = {}
    for s in document["subjects"]:
        if s.get("has_label"):
            by_cohort.setdefault(s["cohort"] or "-", []).append(s["id"])
    fold: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ids in by_cohort.values():
        drawn = list(rng.permutation(sorted(ids)))
        fold["test"] += drawn[:test_per_cohort]
        fold["val"] += drawn[test_per_cohort : test_per_cohort + 1]
        fold["train"] += drawn[test_per_cohort + 1 :]
    if not fold["train"]:
        raise CordfuseError(
            f"needs at least {test_per_cohort + 2} labelled subjects per cohort "
            "(test, validation and training)"
        )
    return {k: sorted(str(i) for i in v) for k, v in fold.items()}
