"""The model card of a packaged model (:mod:`cordfuse.models`): what a recipient needs to judge
it, for machines (``model.json``) and for people (``MODEL.md``).

What the checkpoints know goes in always: each member's model, preset, seed, sequences, network,
pre-processing, training budget, best validation Dice and the cordfuse version that trained it.
What they do not know goes in when given, else "unknown": the subjects and ground-truth lesions
per cohort (from the prepared dataset the members were trained on, counted on the fused native
T2Sag as ``evaluate`` counts them), the test metrics (``cordfuse evaluate --json``), the licence.
The card names no subject: the subject ids of the members' splits stay home.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cordfuse import __version__
from cordfuse.checkpoint import Checkpoint
from cordfuse.errors import CordfuseError
from cordfuse.io import voxel_sizes
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES
from cordfuse.training.config import ACCEPT_MISSING

DEFAULT_LICENCE = "unspecified"
#: What the card says where a fact is not known (no prepared dataset, no test metrics given).
UNKNOWN = "unknown"
#: The files of a package the card points to.
MANIFEST, CARD_JSON = "manifest.json", "model.json"


def _member(arcname: str, checkpoint: Checkpoint) -> dict:
    """One member's part of the card: what it is, its training budget and validation Dice."""
    config = checkpoint.config
    split = checkpoint.split
    run = checkpoint.path.parent if checkpoint.path else None
    seconds: Any = UNKNOWN
    if run is not None and (run / "summary.json").is_file():
        try:
            seconds = json.loads((run / "summary.json").read_text()).get("seconds", UNKNOWN)
        except (OSError, ValueError):
            pass  # a damaged summary only costs the card its training time
    return {
        "checkpoint": arcname,
        "run": run.name if run is not None else UNKNOWN,
        "model": config.model,
        "variant": config.variant,
        "preset": config.preset,
        "seed": config.seed,
        "sequences": list(checkpoint.sequences),
        "accepts_missing": config.model in ACCEPT_MISSING,
        "training_budget": {
            "epochs": config.schedule[0],
            "iterations": config.schedule[1],
            "batch_size": config.batch_size,
            "checkpoint_epoch": checkpoint.epoch + 1 if checkpoint.epoch is not None else UNKNOWN,
            "seconds": _known(seconds),
        },
        "subjects": (
            {"train": len(split.get("train", [])), "validation": len(split.get("val", []))}
            if split
            else UNKNOWN
        ),
        "best_validation_dice": _known(checkpoint.best_val_dice),
        "trained_with": checkpoint.cordfuse_version,
        "config": config.to_dict(),
        "net": asdict(checkpoint.net),
        "prep": asdict(checkpoint.prep),
        "normalisation": checkpoint.normalisation,
    }


def _known(value: Any) -> Any:
    """A number as the card stores it: ``unknown`` for none, NaN or infinity."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return UNKNOWN
    return value


def _trained_on(prepared: Path, checkpoints: Sequence[Checkpoint]) -> dict | str:
    """Subjects and ground-truth lesions per cohort of the members' training and validation
    splits, counted on the fused native T2Sag as ``evaluate`` counts them."""
    from cordfuse.evaluation.metrics import lesions
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import load_native

    document, _ = load_prepared_dataset(prepared)
    if any(not checkpoint.split for checkpoint in checkpoints):
        return UNKNOWN  # a checkpoint that does not say which subjects it saw
    ids = sorted(
        {i for c in checkpoints for part in ("train", "val") for i in (c.split or {}).get(part, [])}
    )
    subjects = {s["id"]: s for s in document["subjects"]}
    missing = [i for i in ids if i not in subjects]
    if missing:
        raise CordfuseError(
            f"{prepared}: lacks {len(missing)} subject(s) the models were trained on "
            f"({', '.join(missing[:3])}): not their prepared dataset"
        )
    cohorts: dict[str, dict[str, int]] = {}
    for subject in ids:
        counts = cohorts.setdefault(subjects[subject].get("cohort") or UNKNOWN, {})
        native = load_native(prepared / subject)
        found = 0
        if native.lesion is not None:
            volume = float(np.prod(voxel_sizes(native.affine)))
            found = lesions(native.lesion, voxel_volume_mm3=volume)[1]
        counts["subjects"] = counts.get("subjects", 0) + 1
        counts["lesions"] = counts.get("lesions", 0) + found
    return {
        "dataset": prepared.resolve().name,
        "subjects": len(ids),
        "lesions": sum(c["lesions"] for c in cohorts.values()),
        "cohorts": dict(sorted(cohorts.items())),
    }


def _test_metrics(path: Path) -> dict:
    """The per-cohort summary of ``cordfuse evaluate --json`` on a folder of predictions."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CordfuseError(f"{path}: unreadable test metrics ({exc})") from exc
    summary = document.get("summary") if isinstance(document, dict) else None
    if not isinstance(summary, dict):
        raise CordfuseError(
            f"{path}: not the output of cordfuse evaluate --json on a folder (no summary)"
        )
    return summary


def model_card(
    name: str,
    members: Sequence[tuple[str, Checkpoint]],
    *,
    licence: str = DEFAULT_LICENCE,
    prepared: str | Path | None = None,
    test_metrics: str | Path | None = None,
) -> dict:
    """The card of a model or ensemble: its summary line, what holds for all its members, then
    each member.

    Args:
        name: The model's name.
        members: Each member's checkpoint, with its file's name in the package.
        licence: The licence the weights are handed on under.
        prepared: The prepared dataset the members were trained on, for the subjects and
            lesions per cohort ("unknown" without it).
        test_metrics: ``cordfuse evaluate --json`` of the model's test predictions ("unknown"
            without it).

    Returns:
        The card, as ``model.json`` holds it (plain JSON data).

    Raises:
        CordfuseError: a prepared dataset that lacks the members' subjects, or unreadable test
            metrics.
    """
    checkpoints = [checkpoint for _, checkpoint in members]
    cards = [_member(arcname, checkpoint) for arcname, checkpoint in members]
    sequences = [s for s in SEQUENCES if any(s in m["sequences"] for m in cards)]
    dice = [m["best_validation_dice"] for m in cards if m["best_validation_dice"] != UNKNOWN]
    card = {
        "name": name,
        "summary": "",
        "licence": licence,
        "cordfuse_version": __version__,
        "sequences": sequences,
        "accepts_missing": all(m["accepts_missing"] for m in cards),
        "trained_on": _trained_on(Path(prepared), checkpoints) if prepared else UNKNOWN,
        "validation_dice": float(np.mean(dice)) if len(dice) == len(cards) else UNKNOWN,
        "test_metrics": _test_metrics(Path(test_metrics)) if test_metrics else UNKNOWN,
        "members": cards,
    }
    card["summary"] = _summary(card)
    return card


def _summary(card: dict) -> str:
    """One line: what the model is, what it reads, how good it is."""
    members = card["members"]
    kinds = sorted({m["model"] for m in members})
    presets = "/".join(sorted({m["preset"] for m in members}))
    kind = kinds[0] if len(kinds) == 1 else "mixed"
    what = (
        f"{kind} model" if len(members) == 1 else f"ensemble of {len(members)} {kind} models"
    ) + f" ({presets} preset)"
    others = ", ".join(s for s in card["sequences"] if s != REFERENCE_SEQUENCE)
    reads = f"reads {REFERENCE_SEQUENCE}"
    if others:
        reads += f" and any of {others}" if card["accepts_missing"] else f", {others} (all needed)"
    parts = [what, reads]
    if isinstance(card["trained_on"], dict):
        parts.append(f"trained on {card['trained_on']['subjects']} subjects")
    parts.append(f"validation Dice {_number(card['validation_dice'])}")
    test = card["test_metrics"]
    if isinstance(test, dict) and isinstance(test.get("all"), dict):
        parts.append(f"test Dice {_number(test['all'].get('dice', {}).get('mean'))}")
    return "; ".join(parts)


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else UNKNOWN


def model_markdown(card: dict) -> str:
    """``MODEL.md``: the card for people.

    Args:
        card: The model card (``model.json``).

    Returns:
        The Markdown text.
    """
    lines = [
        f"# {card['name']}",
        "",
        card["summary"],
        "",
        f"- licence: {card['licence']}",
        f"- exported with cordfuse {card['cordfuse_version']}",
        f"- sequences: {', '.join(card['sequences'])}"
        + (
            f" (any subset that contains {REFERENCE_SEQUENCE})"
            if card["accepts_missing"]
            else " (all of them)"
        ),
        f"- validation Dice (best epoch, mean of the members): {_number(card['validation_dice'])}",
        f"- every file's SHA-256: `{MANIFEST}`; `{CARD_JSON}` holds this card for machines",
        "",
        "## Trained on",
        "",
    ]
    trained_on = card["trained_on"]
    if isinstance(trained_on, dict):
        lines += [
            f"The training and validation subjects of `{trained_on['dataset']}`: "
            f"{trained_on['subjects']} subjects, {trained_on['lesions']} lesions.",
            "",
            "| cohort | subjects | lesions |",
            "|---|---|---|",
            *(
                f"| {cohort} | {c['subjects']} | {c['lesions']} |"
                for cohort, c in trained_on["cohorts"].items()
            ),
        ]
    else:
        lines.append("Unknown (exported without its prepared dataset).")
    lines += [
        "",
        "## Members",
        "",
        "| checkpoint | model | preset | seed | sequences | epochs x iterations (batch) "
        "| train / validation subjects | best validation Dice | trained with |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in card["members"]:
        budget, subjects = m["training_budget"], m["subjects"]
        split = (
            f"{subjects['train']} / {subjects['validation']}"
            if isinstance(subjects, dict)
            else UNKNOWN
        )
        model = m["model"] + (f" ({m['variant']})" if m["variant"] else "")
        lines.append(
            f"| `{m['checkpoint']}` | {model} | {m['preset']} | {m['seed']} "
            f"| {', '.join(m['sequences'])} "
            f"| {budget['epochs']} x {budget['iterations']} ({budget['batch_size']}) "
            f"| {split} | {_number(m['best_validation_dice'])} | cordfuse {m['trained_with']} |"
        )
    lines += ["", "## Test metrics", ""]
    test = card["test_metrics"]
    if isinstance(test, dict):
        metrics = sorted({k for group in test.values() for k in group})
        lines += [
            "Mean (median) per cohort, from `cordfuse evaluate`.",
            "",
            "| cohort | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        for cohort, group in test.items():
            cells = [
                f"{_number(group[k].get('mean'))} ({_number(group[k].get('median'))})"
                if k in group
                else ""
                for k in metrics
            ]
            lines.append(f"| {cohort} | " + " | ".join(cells) + " |")
    else:
        lines.append("Unknown (exported without test metrics).")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"cordfuse model install {card['name']}.zip",
        f"cordfuse predict -m {card['name']} -i BIDS_OR_SUBJECT -o predictions",
        "```",
        "",
    ]
    return "\n".join(lines)
