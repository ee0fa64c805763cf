"""``cordfuse predict``: from raw NIfTI/BIDS to a lesion mask on the native T2Sag grid.

For each subject, pre-processing runs on the fly with the settings stored in the checkpoint. Every
model predicts the whole straightened crop by a sliding window along S-I (50 % overlap, Gaussian
weighting, optional left-right mirroring). Several models (seeds, folds) form an ensemble: the
mean of their probabilities, their minimum (``--ensemble min``: a voxel is lesion only where
every model puts it above the threshold) or their median (``--ensemble median``: where most
do). The probability map is mapped back onto the native fused T2Sag grid by the exact inverse of
the crop (:func:`cordfuse.preprocess.pipeline.restore`) and thresholded, so a prediction outside
the cord crop is impossible by construction. Lesions smaller than a minimum volume can be
removed.

A Mean Imputation, early-fusion or anchored model takes any subset of its sequences that
contains T2Sag. A baseline or
specific-sequence model refuses input that lacks one of its sequences.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cordfuse import __version__
from cordfuse.checkpoint import Checkpoint, checkpoint_file
from cordfuse.dataset import Subject
from cordfuse.derivatives import (
    DATASET_FILES,
    bids_uri,
    data_dictionary,
    json_text,
    prediction_files,
    record_file,
    tsv_text,
    update_summary,
    write_dataset_files,
)
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.burden import (
    FACE_CONNECTIVITY,
    LESION_COLUMNS,
    SUMMARY_COLUMNS,
    lesion_statistics,
    subject_burden,
)
from cordfuse.io import atomic_write_text, voxel_sizes
from cordfuse.models import ModelSource, resolve_models
from cordfuse.nn.device import autocast_dtype
from cordfuse.nn.networks import NetConfig
from cordfuse.nn.sliding import predict_probabilities
from cordfuse.ownership import OutputFolder, claim
from cordfuse.preprocess.pipeline import (
    PreparedSubject,
    PrepConfig,
    prepare_subject,
    restore,
    slab_numbers,
)
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES
from cordfuse.threads import set_threads, threads_budget
from cordfuse.training.config import ACCEPT_MISSING, TrainConfig
from cordfuse.training.data import NORMALISATION, normalise

#: How an ensemble combines its models' probabilities, voxel by voxel. ``mean`` is nnU-Net's
#: ensemble. ``min`` keeps a voxel only where every model puts it above the threshold: the
#: false lesions of models trained on synthetic data differ from model to model, the real lesions
#: they find do not, so the consensus finds more real lesions at its zero-false-lesion threshold
#: on real scans (docs/training.md#one-model-is-not-enough-the-consensus-of-three). ``median``
#: is a majority vote: with three models, a voxel is lesion where two of them put it above the
#: threshold (with two, it is the mean), for models whose false lesions rarely coincide
#: (docs/training.md#a-loss-that-weighs-every-lesion-alike-blob-loss).
ENSEMBLES: dict[str, Callable[..., np.ndarray]] = {
    "mean": np.mean,
    "min": np.min,
    "median": np.median,
}


def check_ensemble(ensemble: str) -> None:
    """Refuse an ensemble rule that :data:`ENSEMBLES` does not name.

    Args:
        ensemble: The rule's name.

    Raises:
        CordfuseError: An unknown rule, in one line.
    """
    if ensemble not in tuple(ENSEMBLES):  # a tuple: an unhashable value is refused too
        raise CordfuseError(f"ensemble must be one of {', '.join(ENSEMBLES)}, not {ensemble!r}")


@dataclass
class LoadedModel:
    """A trained model ready to predict.

    Attributes:
        path: The training folder or checkpoint file it was loaded from.
        model: The network, in evaluation mode on its device.
        config: Its training configuration.
        net: Its architecture, as stored in the checkpoint (its patch size is the window's).
        sequences: Its encoders, in channel order (T2Sag first).
        prep: The pre-processing to repeat on the input.
        warnings: What a prediction with it should say (a model trained on crops normalised
            otherwise than this cordfuse normalises them).
    """

    path: Path
    model: torch.nn.Module
    config: TrainConfig
    net: NetConfig
    sequences: list[str]
    prep: PrepConfig
    warnings: list[str] = field(default_factory=list)

    @property
    def accepts_missing(self) -> bool:
        """Whether the model accepts missing sequences (Mean Imputation, early fusion,
        anchored)."""
        return self.config.model in ACCEPT_MISSING


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """A trained model ready to predict, from a training folder or a checkpoint file.

    The network is built from the architecture stored in the checkpoint, so a later change of
    its preset does not change it.

    Args:
        path: A training folder (its best checkpoint) or a checkpoint file.
        device: Where the model will run.

    Returns:
        The model, in evaluation mode on ``device``.

    Raises:
        CordfuseError: In one line: not a readable cordfuse checkpoint, or its weights do not fit
            its architecture.
    """
    checkpoint = Checkpoint.load(path)
    model = checkpoint.build_network().to(device).eval()
    warnings = []
    if checkpoint.normalisation != NORMALISATION:
        # e.g. trained before the statistics left uncovered voxels out: it runs, but its inputs
        # are scaled otherwise than in its training, so its accuracy is not the one measured
        warnings.append(
            f"model {path} was trained on crops normalised otherwise ({checkpoint.normalisation}"
            f"; now: {NORMALISATION}): retrain it for its measured accuracy"
        )
    return LoadedModel(
        Path(path),
        model,
        checkpoint.config,
        checkpoint.net,
        checkpoint.sequences,
        checkpoint.prep,
        warnings,
    )


def load_models(paths, device: torch.device) -> list[LoadedModel]:
    """Models of an ensemble.

    Args:
        paths: Training folders, checkpoint files, model zips or installed models' names
            (:func:`cordfuse.models.resolve_model`); a packaged ensemble gives all its members.
        device: Where the models will run.

    Returns:
        The models, in the order given.

    Raises:
        CordfuseError: A model cannot be loaded (a package that fails verification is refused
            before any checkpoint is read), or the models differ in pre-processing or
            architecture.
    """
    models = [load_model(p, device) for source in resolve_models(paths) for p in source.paths]
    first = models[0]
    for other in models[1:]:
        # each model reads its own input (with or without coverage masks): the rest must agree
        same_net = replace(other.net, coverage_input=first.net.coverage_input) == first.net
        if other.prep != first.prep or not same_net:
            raise CordfuseError(
                f"{other.path}: an ensemble needs models with the same "
                f"pre-processing and network size as {first.path}"
            )
    return models


def usable_sequences(models: list[LoadedModel], restrict: list[str] | None) -> list[str]:
    """The sequences the networks will read: those any model takes, within ``restrict``.

    Args:
        models: The models of the ensemble.
        restrict: ``--sequences`` (None: no restriction).

    Returns:
        The sequences, in channel order.

    Raises:
        CordfuseError: ``restrict`` names an unknown sequence.
    """
    wanted = {s for m in models for s in m.sequences}
    if restrict:
        unknown = [s for s in restrict if s not in SEQUENCES]
        if unknown:
            raise CordfuseError(f"--sequences: unknown {', '.join(unknown)}")
        wanted &= set(restrict)
    return [s for s in SEQUENCES if s in wanted]


def restrict_subject(subject: Subject, sequences: list[str]) -> Subject:
    """The subject as if only ``sequences`` had been acquired (its other scans dropped), to
    simulate a missing sequence before pre-processing. Not how ``--sequences`` predicts: see
    :func:`predict_prepared` for that.

    Args:
        subject: The subject's scans.
        sequences: The sequences to keep.

    Returns:
        A copy with only those sequences' scans.
    """
    return replace(subject, scans={s: v for s, v in subject.scans.items() if s in sequences})


@dataclass
class Prediction:
    """One subject's prediction.

    Attributes:
        subject: The subject (and session).
        prepared: The prepared subject it was made from (crop grid and the way back).
        probabilities: Lesion probabilities on the crop grid.
        mask: The lesion mask (uint8) on the native fused T2Sag grid.
        affine: That grid's affine.
        probability_native: The probabilities on that grid.
        sequences: The sequences the networks read.
        lesions: One row per predicted lesion
            (:func:`cordfuse.evaluation.burden.lesion_statistics`).
        warnings: Pre-processing warnings (a dropped sequence, a centreline fallback).
    """

    subject: str
    prepared: PreparedSubject
    probabilities: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    probability_native: np.ndarray
    sequences: list[str]
    lesions: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def model_probabilities(
    model: LoadedModel,
    prepared: PreparedSubject,
    *,
    tta: bool,
    device: torch.device,
    batch_size: int,
    amp: str,
) -> np.ndarray:
    """One model's lesion probabilities on a prepared subject's crop (sliding window along S-I,
    the model's patch length, 50 % overlap).

    Args:
        model: The model.
        prepared: The subject, prepared with the model's settings.
        tta: Also predict the left-right mirrored input and average.
        device: Where to run.
        batch_size: Windows per forward pass.
        amp: ``--amp`` (``auto`` uses bf16 on CPUs that compute it natively).

    Returns:
        The probabilities on the crop grid.

    Raises:
        CordfuseError: The input lacks T2Sag, or a sequence that the model cannot do without.
    """
    images, available = normalise(prepared, model.sequences, coverage=model.net.coverage_input)
    if not available[0]:
        raise CordfuseError(f"{model.path}: needs {REFERENCE_SEQUENCE}")
    if not model.accepts_missing and not available.all():
        missing = [s for s, a in zip(model.sequences, available, strict=True) if not a]
        raise CordfuseError(
            f"model {model.path} ({model.config.model}) needs "
            f"{', '.join(model.sequences)}; this input lacks {', '.join(missing)}"
        )
    return predict_probabilities(
        model.model,
        images,
        available,
        patch_z=model.net.patch_size[2],
        overlap=0.5,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype(amp, device, cpu_auto_bf16=True),
        mirror=tta,
    )


def remove_small_lesions(mask: np.ndarray, affine: np.ndarray, min_volume_mm3: float) -> np.ndarray:
    """The mask without its lesions (face-connected components) smaller than ``min_volume_mm3``.

    Args:
        mask: A binary mask.
        affine: Its affine (for the voxel volume).
        min_volume_mm3: The smallest lesion kept; 0 keeps all.

    Returns:
        The filtered mask (uint8), or ``mask`` itself when nothing is removed.

    Example:
        >>> mask = np.zeros((5, 5, 5), np.uint8); mask[0, 0, 0] = 1; mask[2:4, 2:4, 2:4] = 1
        >>> int(remove_small_lesions(mask, np.diag([1.0, 1.0, 1.0, 1.0]), 2.0).sum())
        8
    """
    if min_volume_mm3 <= 0 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=FACE_CONNECTIVITY)
    voxel = float(np.prod(voxel_sizes(affine)))
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1)) * voxel
    keep = np.concatenate([[False], sizes >= min_volume_mm3])
    return keep[labels].astype(np.uint8)


def t2sag_centreline(prepared: PreparedSubject) -> np.ndarray | None:
    """The T2Sag cord centreline in world mm, ``(n, 3)`` from the top of its cord down, at the
    crop's slices (None for a subject prepared before the cord's extent was recorded).

    Args:
        prepared: The prepared subject.

    Returns:
        The points, or None.
    """
    extent = prepared.t2sag.get("cord_z_mm")
    centres = prepared.centres.get(REFERENCE_SEQUENCE)
    if extent is None or centres is None:
        return None
    z = prepared.geometry.z
    inside = (z >= extent[0]) & (z <= extent[1])
    points = np.column_stack([centres[inside], z[inside]])
    return points[::-1] if len(points) >= 2 else None


def predict_subject(
    subject: Subject,
    models: list[LoadedModel],
    *,
    sequences: list[str] | None = None,
    tta: bool = False,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    device: torch.device | None = None,
    batch_size: int = 1,
    amp: str = "auto",
    centerline: str | None = None,
    ensemble: str = "mean",
) -> Prediction:
    """Predict one subject from its raw scans with one model or an ensemble (the mean or the
    minimum of their probabilities).

    The subject is prepared with every sequence it has, then predicted by
    :func:`predict_prepared` with ``sequences`` only: the one meaning of "predicted with these
    sequences", the study's (see :func:`predict_prepared`).

    Args:
        subject: The subject's scans.
        models: One model, or several of the same pre-processing (an ensemble).
        sequences: Use only these of the subject's sequences (default: all the models take).
        tta: Average with the left-right mirrored input.
        threshold: Probability above which a voxel is lesion.
        min_volume_mm3: Remove lesions smaller than this.
        device: Where the networks run (default CPU).
        batch_size: Windows per forward pass.
        amp: Autocast (``auto``, ``bf16``, ``fp16``, ``none``).
        centerline: Overrides the checkpoint's centreline backend (``mask`` uses the subject's
            cord masks).
        ensemble: How several models' probabilities combine (:data:`ENSEMBLES`).

    Returns:
        The prediction on the subject's native fused T2Sag grid.

    Raises:
        CordfuseError: No T2Sag (or ``sequences`` leave it out), a scan that cannot be prepared,
            or a model that needs a sequence the subject lacks, or an unknown ``ensemble``.
    """
    check_ensemble(ensemble)
    device = device or torch.device("cpu")
    if REFERENCE_SEQUENCE not in usable_sequences(models, sequences) or not subject.scans.get(
        REFERENCE_SEQUENCE
    ):
        raise CordfuseError(f"no {REFERENCE_SEQUENCE} scan (every model needs it)")
    prep = models[0].prep if centerline is None else replace(models[0].prep, centerline=centerline)
    prepared = prepare_subject(subject, prep)
    prepared.label = None
    return predict_prepared(
        prepared,
        models,
        sequences=sequences,
        tta=tta,
        threshold=threshold,
        min_volume_mm3=min_volume_mm3,
        device=device,
        batch_size=batch_size,
        amp=amp,
        ensemble=ensemble,
    )


def restrict_prepared(prepared: PreparedSubject, sequences) -> PreparedSubject:
    """The prepared subject as if only ``sequences`` had been acquired: what a missing sequence
    means to the networks (its channel is absent), on the crop geometry of the whole subject.

    Args:
        prepared: The subject prepared with all its sequences.
        sequences: The sequences to keep (others, and those it lacks, are left out).

    Returns:
        The same subject (crop grid, native T2Sag, label) with only those sequences' crops.
    """
    keep = [s for s in prepared.sequences if s in sequences]
    return replace(
        prepared,
        images={s: prepared.images[s] for s in keep},
        centres={s: prepared.centres[s] for s in keep},
        stats={s: prepared.stats[s] for s in keep},
        coverage={s: prepared.coverage[s] for s in keep},
    )


def predict_prepared(
    prepared: PreparedSubject,
    models: list[LoadedModel],
    *,
    sequences: list[str] | None = None,
    tta: bool = False,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    device: torch.device | None = None,
    batch_size: int = 1,
    amp: str = "auto",
    ensemble: str = "mean",
) -> Prediction:
    """Predict a prepared subject with one model or an ensemble (the mean or the minimum of their
    probabilities), back on its native fused T2Sag grid.

    "Predicted with these sequences" has one meaning in cordfuse, this function's: the subject
    prepared with every sequence it has, the others switched off (:func:`restrict_prepared`).
    Only the networks' inputs change; the crop's S-I extent (the union of every sequence's cord)
    and so the sliding windows stay those of the whole subject, as in training. ``predict
    --sequences``, ``study`` and ``demo`` all predict this way; preparing the subject again with
    T2Sag alone would give another crop, and another prediction.

    Args:
        prepared: The subject on the reference grid (as ``prepare`` wrote it, or just prepared).
        models: One model, or several of the same pre-processing (an ensemble).
        sequences: Use only these of the subject's sequences (default: all the models take).
        tta: Average with the left-right mirrored input.
        threshold: Probability above which a voxel is lesion.
        min_volume_mm3: Remove lesions smaller than this.
        device: Where the networks run (default CPU).
        batch_size: Windows per forward pass.
        amp: Autocast (``auto``, ``bf16``, ``fp16``, ``none``).
        ensemble: How several models' probabilities combine (:data:`ENSEMBLES`).

    Returns:
        The prediction; its ``sequences`` are those the networks saw.

    Raises:
        CordfuseError: no T2Sag, a model that needs a sequence the subject lacks, or an unknown
            ``ensemble``.
    """
    check_ensemble(ensemble)
    subset = restrict_prepared(prepared, usable_sequences(models, sequences))
    probabilities = ENSEMBLES[ensemble](
        [
            model_probabilities(
                m,
                subset,
                tta=tta,
                device=device or torch.device("cpu"),
                batch_size=batch_size,
                amp=amp,
            )
            for m in models
        ],
        axis=0,
    )
    prediction = finish_prediction(
        subset, probabilities, threshold=threshold, min_volume_mm3=min_volume_mm3
    )
    prediction.warnings += [w for m in models for w in m.warnings]
    return prediction


def finish_prediction(
    prepared: PreparedSubject, probabilities: np.ndarray, *, threshold: float, min_volume_mm3: float
) -> Prediction:
    """Crop-space probabilities -> native T2Sag mask, lesion table (also used by the oracle).

    Args:
        prepared: The prepared subject the probabilities are on.
        probabilities: Lesion probabilities on its crop grid.
        threshold: Probability above which a voxel is lesion.
        min_volume_mm3: Remove lesions smaller than this.

    Returns:
        The prediction on the native fused T2Sag grid.
    """
    native, affine = restore(prepared, probabilities.astype(np.float32))
    mask = (native > threshold).astype(np.uint8)
    mask = remove_small_lesions(mask, affine, min_volume_mm3)
    return Prediction(
        prepared.subject,
        prepared,
        probabilities,
        mask,
        affine,
        native,
        prepared.sequences,
        lesion_statistics(mask, affine, t2sag_centreline(prepared)),
        list(prepared.warnings),
    )


def slab_masks(prediction: Prediction, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The prediction on every original T2Sag slab grid.

    Args:
        prediction: The prediction (its crop-space probabilities are mapped back).
        threshold: Probability above which a voxel is lesion.

    Returns:
        ``(mask, slab_affine)`` for each slab, in the prepared subject's slab order.
    """
    out = []
    for k in range(len(prediction.prepared.t2sag["slabs"])):
        values, affine = restore(
            prediction.prepared, prediction.probabilities.astype(np.float32), slab=k
        )
        out.append(((values > threshold).astype(np.uint8), affine))
    return out


# ---------------------------------------------------------------------------------------------
# Outputs and the batch run (the I/O edge)


def prediction_targets(
    prediction: Prediction,
    out: Path,
    *,
    per_slab: bool,
    save_probabilities: bool,
    qc: bool,
    bids: bool = False,
) -> dict[str, Path]:
    """The files :func:`write_prediction` writes for these options, by kind
    (:func:`cordfuse.derivatives.prediction_files`).

    Args:
        prediction: The prediction (its subject names the files).
        out: The output folder.
        per_slab: Also one mask per original T2Sag slab.
        save_probabilities: Also the probability map.
        qc: Also the QC picture.
        bids: The BIDS derivative layout (BIDS input); else the simple one (explicit files).

    Returns:
        ``mask``, ``table`` and, with the options, ``prob``, ``qc``, ``slab<k>`` (and in the
        derivative layout each one's ``<kind>.json`` sidecar): their paths, the mask first.
    """
    t2sag = prediction.prepared.t2sag
    files = prediction_files(
        prediction.subject,
        [slab["path"] for slab in t2sag["slabs"]],
        slab_numbers(t2sag),
        bids=bids,
        per_slab=per_slab,
        save_probabilities=save_probabilities,
        qc=qc,
    )
    return {kind: out / path for kind, path in files.items()}


def write_prediction(
    prediction: Prediction,
    out: Path,
    *,
    threshold: float,
    per_slab: bool,
    save_probabilities: bool,
    qc: bool,
    inputs: set[Path],
    source: Path | None = None,
    metadata: dict | None = None,
) -> list[Path]:
    """Write the subject's mask, its lesion table and the optional outputs
    (:func:`prediction_targets`).

    Args:
        prediction: The prediction.
        out: The output folder.
        threshold: Probability above which a voxel is lesion (for the per-slab masks).
        per_slab: Also one mask per original T2Sag slab, on that slab's grid.
        save_probabilities: Also the probability map.
        qc: Also the QC picture.
        inputs: The subject's input files (resolved), which no output may replace.
        source: The BIDS dataset the subject comes from: the derivative layout, every image's
            sidecar naming its ``Sources`` in it; None: the simple layout.
        metadata: What else every sidecar records (threshold, models).

    Returns:
        The files written.

    Raises:
        CordfuseError: An output would overwrite an input file.
    """
    import csv
    import io

    from cordfuse.io import load_nifti, make_nifti, save_nifti

    slabs = prediction.prepared.t2sag["slabs"]
    like = None
    if len(slabs) == 1 and Path(slabs[0]["path"]).exists():
        like = load_nifti(slabs[0]["path"])  # keep the T2Sag header
    targets = prediction_targets(
        prediction,
        out,
        per_slab=per_slab,
        save_probabilities=save_probabilities,
        qc=qc,
        bids=source is not None,
    )
    clash = [p for p in targets.values() if p.resolve() in inputs]
    if clash:
        raise CordfuseError(f"{clash[0]}: output would overwrite an input file")
    save_nifti(make_nifti(prediction.mask, prediction.affine, like=like), targets["mask"])
    if save_probabilities:
        save_nifti(
            make_nifti(
                prediction.probability_native.astype(np.float32), prediction.affine, like=like
            ),
            targets["prob"],
        )
    if "slab0" in targets:  # the derivative layout has none for a single slab (the mask is it)
        for k, (mask, affine) in enumerate(slab_masks(prediction, threshold)):
            slab_like = load_nifti(slabs[k]["path"]) if Path(slabs[k]["path"]).exists() else None
            save_nifti(make_nifti(mask, affine, like=slab_like), targets[f"slab{k}"])
    if source is None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(LESION_COLUMNS))
        writer.writeheader()
        writer.writerows(prediction.lesions)
        atomic_write_text(targets["table"], buffer.getvalue())
    else:
        atomic_write_text(targets["table"], tsv_text(list(LESION_COLUMNS), prediction.lesions))
        atomic_write_text(targets["table.json"], json_text(data_dictionary(LESION_COLUMNS)))
        write_sidecars(prediction, targets, source, inputs, metadata or {})
    if qc:
        write_prediction_qc(prediction, targets["qc"])
    return list(targets.values())


def write_sidecars(
    prediction: Prediction,
    targets: dict[str, Path],
    source: Path,
    inputs: set[Path],
    metadata: dict,
) -> None:
    """The JSON sidecar of every image of the derivative layout: what it is, on which grid, its
    raw inputs (``Sources``), the sequences the networks read and ``metadata``.

    Args:
        prediction: The prediction.
        targets: Its files (:func:`prediction_targets`, derivative layout).
        source: The raw BIDS dataset.
        inputs: The subject's input files (resolved).
        metadata: Threshold, models and what else every sidecar records.
    """
    slabs = [bids_uri(slab["path"], source) for slab in prediction.prepared.t2sag["slabs"]]
    common = {
        "Sources": [bids_uri(path, source) for path in sorted(inputs)],
        "Sequences": prediction.sequences,
        **metadata,
    }
    # one slab is its own fused grid; several are registered and fused onto a grid of their own
    grid = (
        "the fused T2Sag grid (the slabs registered and fused)"
        if len(slabs) > 1
        else "the T2Sag's grid"
    )
    reference = {"SpatialReference": slabs[0]} if len(slabs) == 1 else {}
    sidecars = {
        "mask": {
            "Description": f"MS lesion mask (1: lesion) on {grid}",
            "Type": "Lesion",
            **reference,
        },
        "prob": {"Description": f"lesion probability (the models' mean) on {grid}", **reference},
        **{
            f"slab{k}": {
                "Description": "MS lesion mask (1: lesion) on the grid of one T2Sag slab",
                "Type": "Lesion",
                "SpatialReference": slab,
            }
            for k, slab in enumerate(slabs)
        },
    }
    for kind, sidecar in sidecars.items():
        if f"{kind}.json" in targets:
            atomic_write_text(targets[f"{kind}.json"], json_text({**sidecar, **common}))


def write_prediction_qc(prediction: Prediction, path: Path) -> None:
    """Sagittal T2Sag through the cord with the predicted lesion outline (red).

    Args:
        prediction: The prediction (with its prepared subject's native T2Sag).
        path: The PNG to write.

    Raises:
        CordfuseError: The prepared subject has no native T2Sag.
    """
    from cordfuse.figures import pyplot
    from cordfuse.qc import busiest_slice, canonical, draw_image, draw_outline, view, write_png

    if prediction.prepared.native is None:
        raise CordfuseError(f"{prediction.subject}: no native T2Sag to draw the QC on")
    data, affine = canonical(prediction.prepared.native.image, prediction.affine)
    labels, _ = canonical(prediction.mask, prediction.affine)
    x, spacing = busiest_slice(labels), voxel_sizes(affine)
    fig, ax = pyplot().subplots(figsize=(4, 9), facecolor="black")
    image, aspect = view(data, spacing, "sagittal", x)
    draw_image(ax, image, aspect=aspect)
    draw_outline(ax, view(labels, spacing, "sagittal", x)[0], "red")
    ax.set_title(
        f"{prediction.subject}: {len(prediction.lesions)} lesions predicted",
        color="white",
        fontsize=9,
    )
    write_png(fig, path)


def subjects_from_input(
    path: str | Path | None,
    files: dict[str, list[str]],
    *,
    mapping: str | Path | None = None,
    participants: list[str] | None = None,
) -> list[Subject]:
    """Subjects to predict: explicit files, one subject folder, or a BIDS dataset.

    Args:
        path: ``-i``: a BIDS dataset or one subject folder (None with explicit files).
        files: Explicit files by sequence (several T2Sag files are its slabs, in order).
        mapping: A ``mapping.yaml`` of file-name rules (default: the built-in rules).
        participants: Keep only these subjects of a dataset (``--participant-label``).

    Returns:
        The subjects.

    Raises:
        CordfuseError: No input, explicit files without T2Sag, or a file that does not exist.
    """
    from cordfuse.dataset import Scan, discover
    from cordfuse.sequences import load_rules, strip_nifti_extension

    if files:
        if REFERENCE_SEQUENCE not in files:
            raise CordfuseError("explicit files need --t2sag (the output grid)")
        scans: dict[str, list[Scan]] = {}
        for seq, paths in files.items():
            scans[seq] = []
            for i, name in enumerate(paths):
                file = Path(name)
                if not file.exists():
                    raise CordfuseError(f"{file}: file not found")
                chunk = i + 1 if len(paths) > 1 else None
                scans[seq].append(
                    Scan(file, seq, chunk, strip_nifti_extension(file.name) or file.stem)
                )
        name = strip_nifti_extension(Path(files[REFERENCE_SEQUENCE][0]).name) or "subject"
        return [Subject(name.split("_")[0] if name.startswith("sub-") else name, None, None, scans)]
    if path is None:
        raise CordfuseError("give -i INPUT (BIDS dataset or subject folder) or explicit files")
    path = Path(path)
    rules = load_rules(mapping)
    if path.name.startswith("sub-") and path.is_dir():
        dataset = discover(path.parent, rules=rules)
        return [s for s in dataset.subjects if s.subject_id == path.name]
    return discover(path, rules=rules).select(participants).subjects


_MODEL_CACHE: dict[tuple, list[LoadedModel]] = {}


def predict_options(**given) -> dict:
    """The ``options`` of :func:`predict_dataset` (what ``predict`` records with each subject),
    every one spelled out: :func:`predict_subject`'s defaults where not ``given``.

    Args:
        **given: ``sequences``, ``tta``, ``threshold``, ``min_volume``, ``device``,
            ``batch_size``, ``amp``, ``per_slab``, ``save_probabilities``, ``qc``,
            ``centerline``, ``ensemble``, ``overwrite``.

    Returns:
        The options.

    Example:
        >>> predict_options(qc=True)["threshold"], predict_options(qc=True)["qc"]
        (0.5, True)
    """
    import inspect

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(predict_subject).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    options = {
        "sequences": None,
        "tta": defaults["tta"],
        "threshold": defaults["threshold"],
        "min_volume": defaults["min_volume_mm3"],
        "device": "cpu",
        "batch_size": defaults["batch_size"],
        "amp": defaults["amp"],
        "per_slab": False,
        "save_probabilities": False,
        "qc": False,
        "centerline": defaults["centerline"],
        "ensemble": defaults["ensemble"],
        "overwrite": False,
    }
    unknown = set(given) - set(options)
    if unknown:
        raise TypeError(f"unknown predict options: {sorted(unknown)}")
    return {**options, **given}


#: The options that change what ``predict`` writes for a subject (a finished subject predicted
#: with other values is predicted again).
RESULT_OPTIONS = (
    "sequences",
    "tta",
    "threshold",
    "min_volume",
    "amp",
    "per_slab",
    "save_probabilities",
    "qc",
    "centerline",
    "ensemble",
)


def model_identity(paths) -> list[dict]:
    """What makes a model the same model again: a packaged model's name and SHA-256, else its
    checkpoint file, size and modification time (a training folder's best checkpoint, else its
    latest, as :class:`Checkpoint` reads).

    Args:
        paths: Models as :func:`load_models` takes them.

    Returns:
        One ``{model, sha256}`` per packaged model, one ``{checkpoint, bytes, modified_ns}`` per
        other model.
    """
    identity: list[dict] = []
    for source in resolve_models(paths):
        if source.sha256 is not None:  # its manifest holds the SHA-256 of every file
            identity.append({"model": source.name, "sha256": source.sha256})
            continue
        for path in map(checkpoint_file, source.paths):
            stat = path.stat()
            identity.append(
                {
                    "checkpoint": str(path.resolve()),
                    "bytes": stat.st_size,
                    "modified_ns": stat.st_mtime_ns,
                }
            )
    return identity


def record_path(out: Path, subject: str, *, bids: bool = False) -> Path:
    """``[logs/]<subject>_prediction.json``: what a finished subject's prediction was made with
    and the files it wrote; written last, so its presence marks the subject done
    (:func:`cordfuse.derivatives.record_file`).

    Args:
        out: The output folder.
        subject: The subject (and session).
        bids: The derivative layout (the record goes under ``logs/``).

    Returns:
        The record's path.
    """
    return out / record_file(subject, bids=bids)


def finished(out: Path, subject: str, record: dict, *, bids: bool = False) -> bool:
    """Whether ``subject`` was predicted into ``out`` with the same models and options, and all
    its files are there (a subject interrupted mid-way is not).

    Args:
        out: The output folder.
        subject: The subject (and session).
        record: This run's ``models`` and ``options``.
        bids: The derivative layout.

    Returns:
        True when the subject can be skipped.
    """
    try:
        previous = json.loads(record_path(out, subject, bids=bids).read_text())
    except (OSError, ValueError):
        return False
    same = all(previous.get(k) == record[k] for k in ("models", "options"))
    return same and all((out / name).exists() for name in previous.get("files", []))


@dataclass
class SubjectPrediction:
    """What ``predict`` did with one subject.

    Attributes:
        name: The subject (and session).
        status: ``done``, ``skipped`` (done before with the same models and options) or
            ``failed``.
        message: Why it failed (one line).
        files: The files written (or found done).
        warnings: Pre-processing warnings (a dropped sequence, a centreline fallback).
    """

    name: str
    status: str
    message: str = ""
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def predict_and_write(
    subject: Subject, model_paths: tuple[str | Path | ModelSource, ...], out: Path, options: dict
) -> SubjectPrediction:
    """Predict one subject and write its outputs, unless it was finished before with the same
    models and options (a failure is returned, never raised).

    Models are loaded once per process (``--jobs`` runs subjects in worker processes). A subject
    of a BIDS dataset is written in the derivative layout, its row put in the dataset's
    ``lesions.tsv`` before its record (so a finished subject always has its row).

    Args:
        subject: The subject's scans.
        model_paths: Models as :func:`load_models` takes them (one model or an ensemble).
        out: The output folder (claimed by ``predict``).
        options: ``predict``'s options: :data:`RESULT_OPTIONS`, ``device``, ``batch_size`` and
            ``overwrite``.

    Returns:
        What was done: ``done``, ``skipped`` or ``failed`` with its one-line reason.
    """
    device = torch.device(options["device"])
    key = (model_paths, str(device))
    record = {
        "models": model_identity(model_paths),
        "options": {k: options.get(k) for k in RESULT_OPTIONS},
    }
    bids = subject.dataset is not None
    record_at = record_path(out, subject.name, bids=bids)
    if not options.get("overwrite") and finished(out, subject.name, record, bids=bids):
        files = json.loads(record_at.read_text())["files"]
        return SubjectPrediction(subject.name, "skipped", files=[out / name for name in files])
    try:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load_models(model_paths, device)
        prediction = predict_subject(
            subject,
            _MODEL_CACHE[key],
            sequences=options["sequences"],
            tta=options["tta"],
            threshold=options["threshold"],
            min_volume_mm3=options["min_volume"],
            device=device,
            batch_size=options["batch_size"],
            amp=options["amp"],
            centerline=options.get("centerline"),
            ensemble=options["ensemble"],
        )
        inputs = {scan.path.resolve() for scans in subject.scans.values() for scan in scans}
        targets = prediction_targets(
            prediction,
            out,
            per_slab=options["per_slab"],
            save_probabilities=options["save_probabilities"],
            qc=options["qc"],
            bids=bids,
        )
        OutputFolder(out, "predict").own(
            *(str(path.relative_to(out)) for path in (*targets.values(), record_at))
        )
        files = write_prediction(
            prediction,
            out,
            threshold=options["threshold"],
            per_slab=options["per_slab"],
            save_probabilities=options["save_probabilities"],
            qc=options["qc"],
            inputs=inputs,
            source=subject.dataset,
            metadata={
                "Threshold": options["threshold"],
                "MinimumLesionVolume_mm3": options["min_volume"],
                "Models": record["models"],
                # how the models above were combined: a mask depends on it as on the threshold
                "Ensemble": options["ensemble"],
            },
        )
    except CordfuseError as exc:
        return SubjectPrediction(subject.name, "failed", str(exc))
    if bids:
        update_summary(
            out,
            list(SUMMARY_COLUMNS),
            subject_burden(subject.subject_id, subject.session, prediction.lesions),
        )
    atomic_write_text(
        record_at,
        json.dumps(
            {
                **record,
                "cordfuse_version": __version__,
                "sequences": prediction.sequences,
                "files": [path.relative_to(out).as_posix() for path in files],
                "warnings": prediction.warnings,
            },
            indent=1,
        )
        + "\n",
    )
    return SubjectPrediction(subject.name, "done", files=files, warnings=prediction.warnings)


def predict_dataset(
    subjects: list[Subject],
    model_paths: tuple[str | Path | ModelSource, ...],
    out: str | Path,
    options: dict,
    *,
    jobs: int = 1,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[SubjectPrediction]:
    """Predict every subject into ``out``: the counterpart of ``prepare_dataset``.

    Args:
        subjects: The subjects (raw scans).
        model_paths: Training folders, checkpoints, model zips or installed models' names:
            one model or an ensemble.
        out: A new or empty folder, or an earlier ``predict`` output (finished subjects with the
            same models and options are skipped unless ``options["overwrite"]``); for subjects
            of a BIDS dataset, a BIDS derivative dataset (:mod:`cordfuse.derivatives`).
        options: ``predict``'s options (:func:`predict_options`; those left out take its
            defaults).
        jobs: Subjects predicted at once, in separate processes.
        threads: Threads of each process (default: :func:`cordfuse.threads.threads_budget`
            shared by the ``jobs`` processes).
        progress: Called with each subject's name when it is done.

    Returns:
        One result per subject, in order; a failed subject never stops the others.

    Raises:
        CordfuseError: ``out`` holds files ``predict`` did not write, a model is unreadable
            or a packaged one fails verification, or an unknown ``ensemble`` (checked once,
            before any subject).
    """
    from concurrent.futures import ProcessPoolExecutor

    # every option spelled out, so that each subject's record says what made its files
    options = predict_options(**options)
    check_ensemble(options["ensemble"])
    threads = threads_budget(threads, processes=jobs)
    sources = resolve_models(model_paths)  # a packaged model is verified once, here
    load_models(sources, torch.device("cpu"))  # a bad model file fails once, up front
    out = Path(out)
    folder = claim(out, "predict")
    source = next((s.dataset for s in subjects if s.dataset is not None), None)
    if source is not None:  # BIDS input: a derivative dataset
        folder.own(*DATASET_FILES)
        write_dataset_files(out, source, model_identity(sources), SUMMARY_COLUMNS)
    results = []
    if jobs > 1:
        # spawn, not fork: forking a process whose torch thread pools are running deadlocks;
        # each worker gets its share of the cores: oversubscribed torch pools run far slower
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=set_threads,
            initargs=(threads,),
        ) as pool:
            futures = [pool.submit(predict_and_write, s, sources, out, options) for s in subjects]
            for future in futures:
                results.append(future.result())
                if progress:
                    progress(results[-1].name)
        return results
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for subject in subjects:
            results.append(predict_and_write(subject, sources, out, options))
            if progress:
                progress(subject.name)
    finally:
        torch.set_num_threads(before)
    return results
