"""Why extra sequences do (or do not) change a multi-sequence model's answer: measurements.

``cordfuse diagnose STUDY_DIR`` runs these on a finished study (its prepared test subjects and
trained multi-sequence models) and writes ``diagnostics.json`` and ``diagnostics.md``:

* :func:`encoder_learning`: how far training moved each encoder from its initial weights
  (relative Frobenius change; the initial weights are rebuilt from the run's seed, exactly as the
  trainer drew them), and how much weight the fusion convolution gives each sequence's channels.
  An encoder that barely moved, or whose fusion block is small, is one the model does not use.
* :func:`sequence_effect`: for test subjects with more than T2Sag, how much the fused bottleneck
  and the lesion probability change when their other sequences are added (relative L2 change of
  the bottleneck; mean absolute change of the probability inside the ground-truth lesions).
* :func:`lesion_alignment`: in the prepared crops, around each labelled lesion, the in-plane
  misalignment of every sequence with T2Sag (the shift that best correlates the two crops: the
  residual of aligning centrelines instead of registering), and the lesion's signal on that
  sequence at the label position (mean z-score against the cord, signed by the sequence's lesion
  polarity), as delivered and with the misalignment undone.
* :func:`misalignment_cost`: lesion-wise sensitivity (crop space) with T2Sag alone and with
  every sequence when the other sequences are moved left-right by 0-3 mm: what a residual
  misalignment costs each fusion.
* :func:`coverage`: the share of each sequence's crop voxels outside its field of view (stored as
  zeros, the z-score of an average cord voxel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cordfuse.io import atomic_write_text
from cordfuse.sequences import SEQUENCES
from cordfuse.synth.protocol import LESION_SIGN


def encoder_learning(run_dir: str | Path) -> dict:
    """Per encoder, ``||W - W0|| / ||W0||`` over its weights; per sequence, the share of the
    bottleneck fusion convolution's weight norm on that sequence's input channels.

    Args:
        run_dir: A training folder (or checkpoint) of a multi-encoder model.

    Returns:
        ``{"encoder_relative_change": {seq: change}}``, with ``fusion_weight_share`` when the
        model has a fusion convolution.

    Raises:
        CordfuseError: an unreadable checkpoint.
    """
    from cordfuse.checkpoint import Checkpoint, initial_network

    checkpoint = Checkpoint.load(run_dir)
    # The trainer seeds, then builds: the same initial weights (a frozen-encoder model's T2Sag
    # encoder started as its baseline's, which this does not rebuild).
    torch.manual_seed(checkpoint.config.seed)
    initial = initial_network(checkpoint.config, checkpoint.net, checkpoint.sequences).state_dict()
    final = checkpoint.model
    moved = {}
    for seq in checkpoint.sequences:
        prefix = f"encoders.{seq}."
        keys = [k for k in final if k.startswith(prefix) and final[k].dtype.is_floating_point]
        change = sum(float(((final[k] - initial[k]).double() ** 2).sum()) for k in keys)
        norm = sum(float((initial[k].double() ** 2).sum()) for k in keys)
        moved[seq] = (change / norm) ** 0.5 if norm else float("nan")
    out = {"encoder_relative_change": moved}
    if "fusion.weight" in final:
        weight = final["fusion.weight"].double()
        blocks = weight.reshape(weight.shape[0], len(checkpoint.sequences), -1)
        norms = blocks.pow(2).sum(dim=(0, 2)).sqrt()
        out["fusion_weight_share"] = {
            seq: float(n / norms.sum()) for seq, n in zip(checkpoint.sequences, norms, strict=True)
        }
    return out


@torch.no_grad()
def sequence_effect(model, prepared_subjects, *, device="cpu") -> dict:
    """Bottleneck and probability change when a subject's other sequences are added to T2Sag.

    Args:
        model: A loaded Mean Imputation model (:func:`cordfuse.inference.load_model`).
        prepared_subjects: Prepared test subjects (those with a label and more than T2Sag
            count).
        device: Where the model runs.

    Returns:
        One row per subject and the medians of each measure.
    """
    from cordfuse.nn.sliding import predict_probabilities
    from cordfuse.training.data import normalise

    net = model.model
    patch_z = model.net.patch_size[2]
    rows = []
    for prepared in prepared_subjects:
        if len(prepared.sequences) < 2 or prepared.label is None:
            continue
        images, available = normalise(prepared, model.sequences, coverage=model.net.coverage_input)
        only = available.copy()
        only[1:] = False
        fused = [
            _fused_bottleneck(net, images, flags, patch_z, device) for flags in (only, available)
        ]
        probabilities = [
            predict_probabilities(net, images, flags, patch_z=patch_z, device=device)
            for flags in (only, available)
        ]
        lesion = prepared.label > 0
        row = {
            "subject": prepared.subject,
            "sequences": prepared.sequences,
            "probability_change_in_lesions": float(
                np.abs(probabilities[1] - probabilities[0])[lesion].mean()
            )
            if lesion.any()
            else None,
            "mask_voxels_changed": float(
                ((probabilities[1] > 0.5) != (probabilities[0] > 0.5)).mean()
            ),
        }
        row["bottleneck_relative_change"] = float(
            (fused[1] - fused[0]).norm() / fused[0].norm().clamp(min=1e-12)
        )
        rows.append(row)
    return {
        "subjects": rows,
        **_medians(
            rows,
            ("bottleneck_relative_change", "probability_change_in_lesions", "mask_voxels_changed"),
        ),
    }


def _fused_bottleneck(net, images: np.ndarray, flags: np.ndarray, patch_z: int, device):
    """The fused bottleneck of non-overlapping windows covering the crop along S-I."""
    from cordfuse.nn.networks import mean_impute, sequence_channels
    from cordfuse.nn.sliding import window_starts

    length = max(images.shape[-1], patch_z)
    padded = np.zeros((*images.shape[:-1], length), np.float32)
    padded[..., : images.shape[-1]] = images
    x = torch.from_numpy(
        np.stack([padded[..., s : s + patch_z] for s in window_starts(length, patch_z, 0.0)])
    ).to(device)
    flag = torch.as_tensor(flags, device=device)[None].expand(len(x), -1)
    k, coverage = len(net.sequences), net.config.coverage_input
    features = torch.stack(
        [
            net.encoders[seq](sequence_channels(x, i, k, coverage))[-1]
            for i, seq in enumerate(net.sequences)
        ],
        dim=1,
    )
    if net.mean_imputation:
        features = mean_impute(features, flag)
    return net.fusion(features.flatten(1, 2)) if net.fusion is not None else features[:, 0]


def _medians(rows: list[dict], keys) -> dict:
    return {
        f"median_{key}": _median(r[key] for r in rows if r.get(key) is not None) for key in keys
    }


def inplane_misalignment(
    reference: np.ndarray, moving: np.ndarray, *, search: int = 3
) -> tuple[int, int]:
    """The in-plane shift (voxels) that best aligns ``moving`` with ``reference`` (largest
    absolute normalised cross-correlation over the voxels both cover: the cord, CSF and bone
    show on every sequence, with either polarity). ``moving`` rolled by the shift matches
    ``reference``.

    Args:
        reference: The T2Sag crop (zeros outside its field of view).
        moving: Another sequence's crop, same shape.
        search: Shifts of up to this many voxels along each in-plane axis are tried.

    Returns:
        The shift ``(dx, dy)``; ``(0, 0)`` when no shift overlaps enough.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> crop = rng.random((12, 12, 2)) + 1.0
        >>> inplane_misalignment(crop, np.roll(crop, (1, -2), axis=(0, 1)))
        (-1, 2)
    """
    best, best_shift = -np.inf, (0, 0)
    for dx in range(-search, search + 1):
        for dy in range(-search, search + 1):
            moved = np.roll(moving, (dx, dy), axis=(0, 1))
            both = (reference != 0) & (moved != 0)
            if both.sum() < 20:
                continue
            a = reference[both] - reference[both].mean()
            b = moved[both] - moved[both].mean()
            ncc = abs(
                float((a * b).sum()) / max(float(np.sqrt((a * a).sum() * (b * b).sum())), 1e-12)
            )
            if ncc > best + 1e-9:  # ties keep the smaller shift (listed first from the centre)
                best, best_shift = ncc, (dx, dy)
    return best_shift


def lesion_alignment(prepared_subjects, *, search: int = 3, margin: int = 8) -> dict:
    """Per sequence, over the labelled lesions it covers: the in-plane misalignment of its crop
    with the T2Sag crop around the lesion (mm), and the lesion's signal at the label position
    (mean z-score, signed by the sequence's lesion polarity) as is and after undoing that
    misalignment.

    Args:
        prepared_subjects: Prepared subjects (those with a label count).
        search: In-plane shifts of up to this many voxels are tried.
        margin: Slices above and below a lesion compared.

    Returns:
        Per sequence: lesions covered, median misalignment (mm), share misaligned by more than
        1 mm, and median signal at the label as is and aligned.
    """
    from cordfuse.training.data import normalise

    per_sequence: dict[str, list[dict]] = {seq: [] for seq in SEQUENCES}
    for prepared in prepared_subjects:
        if prepared.label is None:
            continue
        components, n = ndimage.label(prepared.label > 0)
        spacing = prepared.geometry.spacing
        normalised, _ = normalise(prepared, list(SEQUENCES))
        z = {seq: normalised[SEQUENCES.index(seq)] for seq in prepared.sequences}
        for index in range(1, n + 1):
            mask = components == index
            if mask.sum() < 4:
                continue
            slices = np.nonzero(mask.any(axis=(0, 1)))[0]
            lo, hi = max(slices[0] - margin, 0), slices[-1] + margin + 1
            for seq in prepared.sequences:
                if prepared.coverage[seq][mask].mean() < 0.9:
                    continue  # this sequence does not cover the lesion
                shift = (
                    (0, 0)
                    if seq == "T2Sag"
                    else inplane_misalignment(
                        z["T2Sag"][..., lo:hi], z[seq][..., lo:hi], search=search
                    )
                )
                aligned = np.roll(z[seq], shift, axis=(0, 1))
                per_sequence[seq].append(
                    {
                        "subject": prepared.subject,
                        "lesion": index,
                        "misalignment_mm": float(np.hypot(*shift) * spacing),
                        "signal_at_label": LESION_SIGN[seq] * float(z[seq][mask].mean()),
                        "signal_aligned": LESION_SIGN[seq] * float(aligned[mask].mean()),
                    }
                )
    summary = {}
    for seq, rows in per_sequence.items():
        summary[seq] = {
            "lesions_covered": len(rows),
            "median_misalignment_mm": _median(r["misalignment_mm"] for r in rows),
            "share_misaligned_over_1mm": (
                sum(r["misalignment_mm"] > 1.0 for r in rows) / len(rows) if rows else None
            ),
            "median_signal_at_label": _median(r["signal_at_label"] for r in rows),
            "median_signal_aligned": _median(r["signal_aligned"] for r in rows),
        }
    return summary


def _median(values) -> float | None:
    values = list(values)
    return float(np.median(values)) if values else None


@torch.no_grad()
def misalignment_cost(
    model, prepared_subjects, *, shifts_mm=(0.0, 1.0, 2.0, 3.0), device="cpu"
) -> dict:
    """Lesion-wise sensitivity in crop space (against the prepared label) with T2Sag alone, and
    with every sequence after moving the non-T2Sag crops left-right by each shift: what a
    residual misalignment between sequences costs the model.

    Args:
        model: A loaded Mean Imputation model.
        prepared_subjects: Prepared test subjects (those with lesions and more than T2Sag
            count).
        shifts_mm: Left-right shifts of the non-T2Sag crops.
        device: Where the model runs.

    Returns:
        The number of lesions, the T2Sag-only sensitivity, and per shift the sensitivity with
        every sequence and the lesions found only with more sequences.
    """
    from cordfuse.nn.sliding import predict_probabilities
    from cordfuse.training.data import normalise

    net = model.model
    patch_z = model.net.patch_size[2]
    counts = {"T2Sag": [0, 0], **{shift: [0, 0] for shift in shifts_mm}}
    gained = {shift: 0 for shift in shifts_mm}
    for prepared in prepared_subjects:
        if len(prepared.sequences) < 2 or prepared.label is None or not prepared.label.any():
            continue
        images, available = normalise(prepared, model.sequences, coverage=model.net.coverage_input)
        only = available.copy()
        only[1:] = False
        spacing = prepared.geometry.spacing
        truth = prepared.label > 0

        def detected(flags, shifted, truth=truth, voxel=spacing**3):
            prob = predict_probabilities(net, shifted, flags, patch_z=patch_z, device=device)
            return _per_lesion(prob > 0.5, truth, voxel)

        alone = detected(only, images)
        counts["T2Sag"][0] += int(alone.sum())
        counts["T2Sag"][1] += len(alone)
        for shift in shifts_mm:
            moved = images.copy()
            others = [c for c in range(len(images)) if c % len(available)]  # coverage moves too
            moved[others] = _shift_x(images[others], int(round(shift / spacing)))
            found = detected(available, moved)
            counts[shift][0] += int(found.sum())
            counts[shift][1] += len(found)
            gained[shift] += int((found & ~alone).sum())
    return {
        "lesions": counts["T2Sag"][1],
        "sensitivity_t2sag_only": _ratio(*counts["T2Sag"]),
        "with_every_sequence": [
            {
                "shift_mm": shift,
                "sensitivity": _ratio(*counts[shift]),
                "found_only_with_more": gained[shift],
            }
            for shift in shifts_mm
        ],
    }


def _ratio(found: int, total: int) -> float | None:
    return found / total if total else None


def _per_lesion(prediction: np.ndarray, truth: np.ndarray, voxel: float) -> np.ndarray:
    from cordfuse.evaluation.metrics import lesion_outcomes, lesions

    truth_labels, n_truth = lesions(truth, voxel_volume_mm3=voxel)
    pred_labels, n_pred = lesions(prediction, voxel_volume_mm3=voxel)
    return lesion_outcomes(truth_labels, n_truth, pred_labels, n_pred)[1]


def _shift_x(images: np.ndarray, voxels: int) -> np.ndarray:
    """Move crops ``(K, X, Y, Z)`` by ``voxels`` along X, filling with zeros (uncovered)."""
    if voxels == 0:
        return images
    out = np.zeros_like(images)
    if voxels > 0:
        out[:, voxels:] = images[:, :-voxels]
    else:
        out[:, :voxels] = images[:, -voxels:]
    return out


def coverage(prepared_subjects) -> dict:
    """Per sequence: subjects that have it and the mean share of their crop voxels outside its
    field of view (the coverage ``prepare`` stored, not zeros: a covered voxel may be 0).

    Args:
        prepared_subjects: Prepared subjects.

    Returns:
        ``{sequence: {"subjects": n, "mean_uncovered_share": share or None}}``.
    """
    out = {}
    for seq in SEQUENCES:
        shares = [1.0 - float(p.coverage[seq].mean()) for p in prepared_subjects if seq in p.images]
        out[seq] = {
            "subjects": len(shares),
            "mean_uncovered_share": float(np.mean(shares)) if shares else None,
        }
    return out


def diagnose_study(
    study_dir: str | Path, *, device: str = "cpu", experiments: list[str] | None = None
) -> dict:
    """All measurements on a finished study; writes ``diagnostics.{json,md}`` into it.

    Args:
        study_dir: A ``cordfuse study`` output folder.
        device: Where the models run.
        experiments: Only these experiments' models (default: every Mean Imputation model).

    Returns:
        What ``diagnostics.json`` holds: coverage, lesion alignment and, per model, encoder
        learning, sequence effect and misalignment cost.

    Raises:
        CordfuseError: not a study folder, or an unreadable prepared folder or model.
    """
    from cordfuse.errors import CordfuseError
    from cordfuse.inference import load_model
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import PreparedSubject

    out = Path(study_dir)
    try:
        fold = json.loads((out / "fold.json").read_text())
    except (OSError, ValueError) as exc:
        raise CordfuseError(f"{out}: not a study folder (no readable fold.json)") from exc
    _, paths = load_prepared_dataset(out / "prepared")
    test = [PreparedSubject.load(p) for p in paths if p.parent.name in fold["test"]]
    train = [PreparedSubject.load(p) for p in paths if p.parent.name in fold["train"]]
    result = {
        "coverage_train": coverage(train),
        "alignment_test": lesion_alignment(test),
        "models": {},
    }
    runs = sorted((out / "runs").glob("*/seed-*/summary.json"))
    for summary in runs:
        run = summary.parent
        name = run.parent.name
        if experiments and name not in experiments:
            continue
        model = load_model(run, torch.device(device))
        if model.config.model != "mean-imputation":  # the paper's fusion is what is diagnosed
            continue
        result["models"][f"{name}/{run.name}"] = {
            **encoder_learning(run),
            "sequence_effect": sequence_effect(model, test, device=device),
            "misalignment_cost": misalignment_cost(model, test, device=device),
        }
    atomic_write_text(out / "diagnostics.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "diagnostics.md", to_markdown(result))
    return result


def _f(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def to_markdown(result: dict) -> str:
    """The diagnostics as Markdown tables (``diagnostics.md``).

    Args:
        result: What :func:`diagnose_study` returns.

    Returns:
        The Markdown text.
    """
    lines = [
        "# Multi-sequence diagnostics",
        "",
        "## Inputs (prepared crops)",
        "",
        "| sequence | training subjects | uncovered share of crop | test lesions covered | "
        "median misalignment with T2Sag (mm) | share > 1 mm | lesion signal at label (z) | "
        "with misalignment undone (z) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seq in SEQUENCES:
        c, a = result["coverage_train"][seq], result["alignment_test"][seq]
        lines.append(
            f"| {seq} | {c['subjects']} | {_f(c['mean_uncovered_share'], 2)} | "
            f"{a['lesions_covered']} | {_f(a['median_misalignment_mm'], 2)} | "
            f"{_f(a['share_misaligned_over_1mm'], 2)} | "
            f"{_f(a['median_signal_at_label'], 2)} | "
            f"{_f(a['median_signal_aligned'], 2)} |"
        )
    lines += ["", "## Models", ""]
    for name, m in result["models"].items():
        effect = m["sequence_effect"]
        lines += [
            f"### {name}",
            "",
            "| sequence | encoder weight change | fusion weight share |",
            "|---|---|---|",
        ]
        for seq, change in m["encoder_relative_change"].items():
            share = m.get("fusion_weight_share", {}).get(seq)
            lines.append(f"| {seq} | {change:.3g} | {_f(share)} |")
        lines += [
            "",
            f"Adding a test subject's other sequences to T2Sag (median over "
            f"{len(effect['subjects'])} subjects): bottleneck moves by "
            f"{_f(effect['median_bottleneck_relative_change'])} (relative L2), lesion "
            f"probability inside the lesions by "
            f"{_f(effect['median_probability_change_in_lesions'])}, and "
            f"{_f(effect['median_mask_voxels_changed'], 4)} of the crop's voxels change "
            "class.",
            "",
        ]
        cost = m["misalignment_cost"]
        lines += [
            f"Misalignment cost (crop space, {cost['lesions']} lesions of test subjects "
            f"with more than T2Sag; T2Sag alone: sensitivity "
            f"{_f(cost['sensitivity_t2sag_only'])}):",
            "",
            "| other sequences moved (mm) | sensitivity, every sequence | lesions found "
            "only with more |",
            "|---|---|---|",
        ]
        lines += [
            f"| {c['shift_mm']:g} | {_f(c['sensitivity'])} | {c['found_only_with_more']} |"
            for c in cost["with_every_sequence"]
        ]
        lines.append("")
    return "\n".join(lines) + "\n"
