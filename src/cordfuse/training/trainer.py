"""The trainer: nnU-Net's recipe in a small, readable loop (SGD Nesterov, or AdamW for the small
preset; poly LR, CE + Dice).

``train(prepared_dir, out_dir, config)`` writes into ``out_dir``:

* ``checkpoint_latest.pt`` (every epoch) and ``checkpoint_best.pt`` (best validation Dice), both
  :class:`cordfuse.checkpoint.Checkpoint`, written atomically: the weights, optimiser, LR
  scheduler, epoch, RNG states, the full configuration and architecture, the model's sequences,
  the normalisation and the pre-processing settings: all that ``predict`` needs;
* ``log.jsonl`` (one JSON line per epoch, rewritten from the checkpoint's history) and
  ``curves.png`` (loss and validation Dice).

``resume=True`` continues from ``checkpoint_latest.pt`` when the requested configuration (but for
the number of data-loading workers) and the train/val split are those of the checkpoint; because
every training sample is a pure function of the seed and its index, and the global RNG state is
restored, the final weights equal those of an uninterrupted run (CPU, deterministic algorithms).

Several GPUs or machines: launch with ``torchrun --nproc_per_node N -m cordfuse train ...``;
PyTorch DistributedDataParallel keeps the ranks in sync (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from cordfuse.checkpoint import BEST, LATEST, Checkpoint, initial_network
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.metrics import dice
from cordfuse.io import atomic_write_bytes, atomic_write_text
from cordfuse.nn.device import (
    autocast_dtype,
    choose_device,
    training_layout,
    use_onednn_convolutions,
)
from cordfuse.nn.networks import AnchoredNet, CordNet, NetOutput, Network, distillation_loss
from cordfuse.nn.sliding import predict_probabilities
from cordfuse.ownership import claim
from cordfuse.preprocess.batch import load_prepared_dataset
from cordfuse.preprocess.pipeline import PrepConfig
from cordfuse.threads import usable_cores
from cordfuse.training.config import TrainConfig
from cordfuse.training.data import (
    NORMALISATION,
    PRESET_AUGMENTATION,
    PatchDataset,
    lesion_signs,
    load_subjects,
)
from cordfuse.training.losses import blob_loss, deep_supervision_loss

#: Everything ``train`` writes in its folder (what ``--overwrite`` may remove).
RUN_FILES = (LATEST, BEST, "log.jsonl", "curves.png", "summary.json")

#: TrainConfig fields that change only how fast a run goes, not its result: a resumed run may
#: change them.
SPEED_ONLY = ("num_workers",)


class StopTraining(Exception):
    """Raised by a ``stop_hook`` to simulate an interruption (tests)."""


def split_subjects(document: dict, config: TrainConfig) -> tuple[list[str], list[str]]:
    """Training and validation subject ids (a fold file, or a seeded random split).

    Args:
        document: The prepared folder's ``dataset.json``.
        config: The training configuration (model, seed, fold file, validation fraction).

    Returns:
        ``(train ids, val ids)``, each sorted (a fold file's order is kept).

    Raises:
        CordfuseError: no labelled subject fits the model, or an unreadable fold file.
    """
    ids = [s["id"] for s in document["subjects"] if s.get("has_label")]
    if config.model == "specific":
        needed = set(config.model_sequences)
        ids = [
            s["id"]
            for s in document["subjects"]
            if s.get("has_label") and needed <= set(s["sequences"])
        ]
    if not ids:
        raise CordfuseError(
            "no prepared subject with a lesion label fits this model "
            f"(sequences {', '.join(config.model_sequences)})"
        )
    if config.fold_file:
        try:
            fold = json.loads(Path(config.fold_file).read_text())
            train, val = list(fold["train"]), list(fold["val"])
        except (OSError, ValueError, KeyError) as exc:
            raise CordfuseError(
                f"{config.fold_file}: fold file needs 'train' and 'val' lists ({exc})"
            ) from exc
        return [i for i in train if i in ids], [i for i in val if i in ids]
    rng = np.random.default_rng(config.seed)
    order = list(rng.permutation(ids))
    n_val = max(1, round(config.val_fraction * len(ids))) if len(ids) > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_model(config: TrainConfig, prep: PrepConfig | None = None) -> Network:
    """The network to train: the configuration's preset, freshly initialised; for the
    frozen-encoder variant, with the baseline's T2Sag encoder, frozen; for the anchored model,
    with its anchor's weights (frozen).

    Args:
        config: The training configuration.
        prep: The pre-processing of the training data, which an anchor must share.

    Returns:
        The network.

    Raises:
        CordfuseError: The ``frozen_from`` checkpoint cannot be read or its T2Sag encoder does
            not fit this preset, or the anchor does not fit (:func:`anchor_checkpoint`).
    """
    model = initial_network(config, config.net, config.model_sequences)
    if isinstance(model, AnchoredNet):
        model.anchor.load_state_dict(anchor_checkpoint(config, prep).model)
    if config.variant == "frozen-encoder" and isinstance(model, CordNet):
        if not config.frozen_from:
            raise CordfuseError("--variant frozen-encoder needs --frozen-from BASELINE_CHECKPOINT")
        baseline = Checkpoint.load(config.frozen_from)
        prefix = "encoders.T2Sag."
        weights = {k[len(prefix) :]: v for k, v in baseline.model.items() if k.startswith(prefix)}
        if not weights:
            raise CordfuseError(f"{config.frozen_from}: no T2Sag encoder in this checkpoint")
        try:
            model.encoders["T2Sag"].load_state_dict(weights)
        except RuntimeError as exc:
            raise CordfuseError(
                f"{config.frozen_from}: T2Sag encoder does not fit this preset "
                f"({str(exc).splitlines()[0]})"
            ) from exc
        model.freeze_encoder("T2Sag")
    return model


def anchor_checkpoint(config: TrainConfig, prep: PrepConfig | None = None) -> Checkpoint:
    """The anchored model's anchor: a T2Sag-only model of the same architecture (and, when
    ``prep`` is given, of the same pre-processing).

    Args:
        config: The anchored model's configuration (its ``anchor``).
        prep: The pre-processing of the training data, to check against the anchor's.

    Returns:
        The anchor's checkpoint.

    Raises:
        CordfuseError: In one line: unreadable, not a T2Sag-only model, or another architecture
            or pre-processing.
    """
    if not config.anchor:
        raise CordfuseError("--model anchored needs --anchor RUN (a T2Sag-only model)")
    anchor = Checkpoint.load(config.anchor)
    if anchor.sequences != ["T2Sag"] or anchor.config.model != "baseline":
        raise CordfuseError(
            f"{anchor.path}: an anchor is a T2Sag-only baseline, this is a "
            f"{anchor.config.model} model of {', '.join(anchor.sequences)}"
        )
    if anchor.net != config.net:
        raise CordfuseError(
            f"{anchor.path}: the anchor's network is not the {config.preset} preset's "
            "(train the anchor with the same preset and this cordfuse version, whose networks "
            "read each sequence's coverage)"
        )
    if prep is not None and anchor.prep != prep:
        raise CordfuseError(
            f"{anchor.path}: the anchor was trained on data prepared with other settings"
        )
    return anchor


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """nnU-Net's SGD (Nesterov momentum) or AdamW, with the configuration's learning rate and
    weight decay (the poly schedule is the same for both).

    Args:
        parameters: The weights to train.
        config: The training configuration (its :attr:`TrainConfig.recipe`).

    Returns:
        The optimizer.
    """
    optimizer, learning_rate = config.recipe
    if optimizer == "adamw":
        # fused: one kernel for every weight instead of a loop over them (5 % of a small step)
        return torch.optim.AdamW(
            parameters, lr=learning_rate, weight_decay=config.weight_decay, fused=True
        )
    return torch.optim.SGD(
        parameters,
        lr=learning_rate,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-weight state tensor of ``optimizer`` (AdamW's moments) its weight's memory
    layout, in place.

    A checkpoint's optimizer state keeps the layout it was saved in (contiguous from a GPU run,
    channels-last from a CPU one), and the fused AdamW kernel pairs moments with weights by
    memory, not by index: a run resumed on another device would update each weight with
    another's moments, silently.

    Args:
        optimizer: An optimizer whose state was just loaded.
    """
    for group in optimizer.param_groups:
        for weight in group["params"]:
            state = optimizer.state.get(weight, {})
            for key, value in state.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == weight.shape
                    and value.stride() != weight.stride()
                ):
                    state[key] = torch.empty_like(weight).copy_(value)


def resume_conflicts(
    checkpoint: Checkpoint, config: TrainConfig, split: dict[str, list[str]]
) -> list[str]:
    """Why a run cannot continue from a checkpoint: every setting that would change the result.

    Args:
        checkpoint: The checkpoint to resume from.
        config: The requested configuration.
        split: The train/val split computed now from the prepared data.

    Returns:
        One phrase per conflict (empty when the run can resume): each differing configuration
        field (all but :data:`SPEED_ONLY`), the architecture if the preset changed, and else the
        split, which then differs because the prepared data or the fold file changed.
    """
    before, after = checkpoint.config, config
    conflicts = [
        f"{f.name} {getattr(before, f.name)!r} in the checkpoint, "
        f"{getattr(after, f.name)!r} requested"
        for f in fields(TrainConfig)
        if f.name not in SPEED_ONLY and getattr(before, f.name) != getattr(after, f.name)
    ]
    stored, now = asdict(checkpoint.net), asdict(config.net)
    conflicts += [
        f"net.{key} {stored[key]!r} in the checkpoint, {now[key]!r} in the "
        f"{config.preset} preset now"
        for key in stored
        if stored[key] != now[key]
    ]
    # Another seed, model or fold file gives another split: only name it when nothing else does.
    if not conflicts and checkpoint.split != split:
        conflicts.append(
            "the train/val split in the checkpoint differs from this one (the "
            "prepared data or the fold file changed)"
        )
    return conflicts


def data_workers(config: TrainConfig, device: torch.device) -> int:
    """Data-loading processes: as configured, else (``None``) enough to keep a GPU fed (the
    cores less one, at most 8) and none on CPU, where they would compete with the training.

    Args:
        config: The training configuration.
        device: The training device.

    Returns:
        The number of worker processes.
    """
    if config.num_workers is not None:
        return config.num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(8, usable_cores() - 1))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a network's weights (names and bytes, sorted by name): equal weights, equal
    digest, to check that two runs trained the same model.

    Args:
        model: The network.

    Returns:
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def validate(model, subjects, config: TrainConfig, device, dtype) -> float:
    """Dice of the validation subjects pooled (every lesion voxel of every subject counted
    once, as nnU-Net's pseudo-Dice), sliding window over each whole crop.

    Pooled, not the mean of per-subject Dice: a lesion-free validation subject scores 1 for an
    empty prediction, so with few validation subjects the mean made a model that predicts
    nothing (the all-background plateau of the first epochs) the "best" checkpoint.

    Args:
        model: The network (put back in training mode afterwards).
        subjects: The validation subjects' arrays.
        config: The training configuration (patch and window overlap).
        device: Where the model runs.
        dtype: The autocast type, or None.

    Returns:
        The pooled Dice; NaN without validation subjects.
    """
    if not subjects:
        return float("nan")
    model.eval()
    masks, lesions = [], []
    for subject in subjects:
        prob = predict_probabilities(
            model,
            subject.images,
            subject.available,
            patch_z=config.net.patch_size[2],
            overlap=config.val_overlap,
            device=device,
            autocast_dtype=dtype,
        )
        masks.append((prob > 0.5).ravel())
        lesions.append((subject.label > 0).ravel())
    model.train()
    return dice(np.concatenate(masks), np.concatenate(lesions))


def _plot(history: list[dict], path: Path) -> None:
    from cordfuse.figures import png_bytes, pyplot

    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (CE + Dice)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(epochs, [h["val_dice"] for h in history], color="tab:red", label="validation Dice")
    twin.set_ylabel("Dice")
    twin.set_ylim(0, 1)
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


def train(
    prepared_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    stop_hook: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train one model (see the module's description of what it writes).

    Args:
        prepared_dir: The prepared dataset.
        out_dir: The training folder.
        config: The training configuration.
        device: ``auto`` or a torch device name.
        resume: Continue from ``out_dir/checkpoint_latest.pt`` if there is one.
        overwrite: Start again in a folder holding an earlier run: its checkpoints, log, curves
            and summary are removed first (nothing else; :mod:`cordfuse.ownership`).
        stop_hook: Called after every step with the step count (tests interrupt runs with it).
        progress: Show a progress bar.

    Returns:
        A summary: best and last validation Dice, epochs, time, weights digest, split, config.

    Raises:
        CordfuseError: The data do not fit the configuration, the run to resume was made
            with another configuration or split (one line naming every difference), or
            ``out_dir`` holds an earlier run (without ``resume``/``overwrite``) or files
            ``train`` did not write.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    out = Path(out_dir)
    if rank == 0:
        claim(out, "train")  # refuses a folder train did not make, before anything is removed
        if (out / LATEST).exists() and not (resume or overwrite):
            raise CordfuseError(
                f"{out}: holds a training run already (--resume continues it, "
                "--overwrite starts again)"
            )
        claim(out, "train", overwrite=overwrite).own(*RUN_FILES)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    document, paths = load_prepared_dataset(prepared_dir)
    train_ids, val_ids = split_subjects(document, config)
    if not train_ids:
        raise CordfuseError("no training subjects left after the split")
    by_id = {p.parent.name: p for p in paths}
    sequences = config.model_sequences
    coverage = config.net.coverage_input
    train_subjects = load_subjects([by_id[i] for i in train_ids], sequences, coverage=coverage)
    val_subjects = load_subjects([by_id[i] for i in val_ids], sequences, coverage=coverage)
    patch = config.net.patch_size
    size = document["crop_size"]
    if (size, size) != tuple(patch[:2]):
        raise CordfuseError(
            f"prepared crops are {size}x{size} but the {config.preset} preset "
            f"needs {patch[0]}x{patch[1]}: prepare with --preset {config.preset}"
        )

    layout = training_layout(dev)
    model = build_model(config, PrepConfig(**document["config"])).to(dev)
    model.to(memory_format=layout)  # type: ignore[call-overload]  # (torch's stubs lack it)
    if dev.type == "cpu":  # as validation would make them: the same kernels from the first step
        use_onednn_convolutions(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, config)
    epochs, iterations = config.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: (1 - epoch / epochs) ** config.poly_exponent
    )
    dtype = autocast_dtype(config.amp, dev)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    split = {"train": [str(i) for i in train_ids], "val": [str(i) for i in val_ids]}
    start_epoch, best, history = 0, -math.inf, []
    if resume and (out / LATEST).exists():
        checkpoint = Checkpoint.load(out / LATEST)
        if (
            checkpoint.epoch is None
            or checkpoint.optimizer is None
            or checkpoint.scheduler is None
            or checkpoint.scaler is None
            or checkpoint.rng is None
            or checkpoint.best_val_dice is None
        ):
            raise CordfuseError(f"{checkpoint.path}: cannot resume: no training state in it")
        conflicts = resume_conflicts(checkpoint, config, split)
        if conflicts:
            raise CordfuseError(
                f"{out}: cannot resume: {'; '.join(conflicts)} (start a new run "
                "with --overwrite or another folder)"
            )
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        match_state_layout(optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
        scaler.load_state_dict(checkpoint.scaler)
        torch.set_rng_state(checkpoint.rng["torch"])
        start_epoch = checkpoint.epoch + 1
        best, history = checkpoint.best_val_dice, checkpoint.history
    net: Callable[..., NetOutput] = model  # the model, maybe wrapped by DDP and compiled
    if world > 1:
        # Only Mean Imputation (also as an anchored model's correction) skips the encoder of a
        # sequence missing from a whole batch; every other model uses all its parameters at
        # every step, so DDP need not search the graph.
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=model.skips_parameters,
        )
    if config.compile:
        net = torch.compile(net)
    dataset = PatchDataset(
        train_subjects,
        patch,
        seed=config.seed,
        foreground_fraction=config.foreground_fraction,
        augment=config.augment,
        sequence_dropout=config.sequence_dropout,
        reference_dropout=config.reference_dropout,
        rank=rank,
        world_size=world,
        augmentation=replace(
            PRESET_AUGMENTATION[config.preset],
            p_lesion_contrast=config.lesion_contrast,
            p_fov_truncation=config.fov_truncation,
            p_paint=config.paint_lesions,
            spacing_mm=float(document["config"]["spacing"]),
            lesion_signs=lesion_signs(sequences),
        ),
    )
    per_epoch = iterations * config.batch_size
    started = time.perf_counter()
    step = start_epoch * iterations
    workers = data_workers(config, dev)
    # One loader for the whole run: its workers live across epochs and prefetch ahead. Sample n
    # depends on (seed, n) only, so any worker count draws the same patches.
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=range(start_epoch * per_epoch, epochs * per_epoch),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: starting the loader must not draw from the global torch RNG,
        # which the feature noise uses and a resumed run restores.
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = iter(loader)
    from tqdm import tqdm

    for epoch in range(start_epoch, epochs):
        bar = tqdm(
            range(iterations),
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=None if (progress and rank == 0) else True,
            leave=False,
        )
        losses = []
        epoch_start = time.perf_counter()
        for _ in bar:
            images, labels, available = next(batches)
            images = images.to(dev, non_blocking=True, memory_format=layout)
            labels = labels.to(dev, non_blocking=True)
            available = available.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = net(images, available)
                loss = deep_supervision_loss(output.logits, labels)
                if config.blob_loss:
                    loss = loss + config.blob_loss * blob_loss(output.logits[0], labels)
                if "sequence_alone" in output.extra:
                    alone, has, index = output.extra["sequence_alone"]
                    if config.net.coverage_input:  # nothing to ask where it saw nothing:
                        uncovered = images[:, len(sequences) + index] <= 0.5
                        has = has & ~((labels > 0) & uncovered).flatten(1).any(dim=1)
                    if bool(has.any()):
                        loss = loss + config.sequence_supervision * deep_supervision_loss(
                            [logits[has] for logits in alone], labels[has]
                        )
                if config.variant == "distillation":
                    loss = loss + config.distillation_alpha * distillation_loss(
                        output.features.float(), output.available
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())  # read once per epoch: no device sync per step
            step += 1
            if stop_hook is not None:
                stop_hook(step)
        train_loss = float(torch.stack(losses).float().mean())
        bar.set_postfix(loss=f"{train_loss:.3f}")
        scheduler.step()
        train_seconds = time.perf_counter() - epoch_start
        # Validation (a sliding window over whole crops) every val_every epochs and at the end,
        # so that at 1000 epochs it stays a bounded share of the run.
        validated = bool(val_subjects) and (
            (epoch + 1) % config.val_every == 0 or epoch + 1 == epochs
        )
        val_dice = validate(model, val_subjects, config, dev, dtype) if validated else math.nan
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "val_dice": val_dice,
            "epoch_seconds": round(time.perf_counter() - epoch_start, 3),
            "val_seconds": round(time.perf_counter() - epoch_start - train_seconds, 3),
        }
        history.append(record)
        improved = not math.isnan(val_dice) and val_dice > best
        best = val_dice if improved else best
        if rank == 0:
            checkpoint = Checkpoint(
                model=model.state_dict(),
                config=config,
                net=config.net,
                sequences=sequences,
                prep=PrepConfig(**document["config"]),
                normalisation=NORMALISATION,
                split=split,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                epoch=epoch,
                best_val_dice=best,
                history=history,
                rng={"torch": torch.get_rng_state()},
            )
            # Without validation subjects there is no "best": it follows the latest epoch. Nor
            # for an anchored model: it starts as its anchor, so its first epochs score the
            # anchor's validation Dice, and the few lesion voxels its correction adds cannot be
            # told from noise on a handful of validation subjects ("best" fell back to the
            # anchor itself: epoch 1 of 100 in a 120-subject study). The best is saved before
            # the latest, the point a resumed run restarts from: a run killed between the two
            # redoes the epoch and so cannot miss a best epoch.
            follows_latest = not val_subjects or config.model == "anchored"
            if improved or follows_latest or not (out / BEST).exists():
                checkpoint.save(out / BEST)
            checkpoint.save(out / LATEST)
            # Rewritten from the history, not appended: a resumed run's log is the uninterrupted
            # run's, and a fresh run into a used folder starts a new one.
            atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            _plot(history, out / "curves.png")
    summary = {
        "epochs": epochs,
        "best_val_dice": best if math.isfinite(best) else None,  # None: no validation
        "last_val_dice": history[-1]["val_dice"] if history else float("nan"),
        "seconds": round(time.perf_counter() - started, 2),
        "world_size": world,
        "digest": weights_digest(model),
        "train": [str(i) for i in train_ids],
        "val": [str(i) for i in val_ids],
        "config": config.to_dict(),
    }
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, summary["digest"])
        summary["ranks_in_sync"] = len(set(digests)) == 1
        dist.barrier()
    if rank == 0:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
