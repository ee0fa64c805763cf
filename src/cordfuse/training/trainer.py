"""The trainer: nnU-Net's recipe in a small, readable loop (SGD Nesterov, poly LR, CE + Dice).

``train(prepared_dir, out_dir, config)`` writes into ``out_dir``:

* ``checkpoint_latest.pt`` (every epoch) and ``checkpoint_best.pt`` (best validation Dice), both
  written atomically, holding the weights, optimiser, LR scheduler, epoch, RNG states, the full
  configuration, the model's sequences, the normalisation and the pre-processing settings: all
  that ``predict`` needs;
* ``log.jsonl`` (one JSON line per epoch) and ``curves.png`` (loss and validation Dice).

``resume=True`` continues from ``checkpoint_latest.pt``; because every training sample is a pure
function of the seed and its index, and the global RNG state is restored, the final weights equal
those of an uninterrupted run (CPU, deterministic algorithms).

Several GPUs or machines: launch with ``torchrun --nproc_per_node N -m cordfuse train ...``;
PyTorch DistributedDataParallel keeps the ranks in sync (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cordfuse import __version__
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.metrics import dice
from cordfuse.io import atomic_write_bytes, atomic_write_text
from cordfuse.nn.networks import CordNet, distillation_loss
from cordfuse.nn.sliding import predict_probabilities
from cordfuse.preprocess.batch import load_prepared_dataset
from cordfuse.training.config import TrainConfig
from cordfuse.training.data import (
    NORMALISATION,
    PRESET_AUGMENTATION,
    PatchDataset,
    load_subjects,
)
from cordfuse.training.losses import deep_supervision_loss

LATEST, BEST = "checkpoint_latest.pt", "checkpoint_best.pt"


class StopTraining(Exception):
    """Raised by a ``stop_hook`` to simulate an interruption (tests)."""


def choose_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CordfuseError("--device cuda requested but no CUDA device is available")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); otherwise it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(amp: str, device: torch.device, *, cpu_auto_bf16: bool = False):
    """The autocast dtype for ``--amp``; ``auto`` uses bf16/fp16 on CUDA and, when
    ``cpu_auto_bf16`` (prediction), bf16 on CPUs that compute it natively."""
    if amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_auto_bf16 and cpu_has_native_bf16() else None
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def split_subjects(document: dict, config: TrainConfig) -> tuple[list[str], list[str]]:
    """Training and validation subject ids (a fold file, or a seeded random split)."""
    ids = [s["id"] for s in document["subjects"] if s.get("has_label")]
    if config.model == "specific":
        needed = set(config.model_sequences)
        ids = [s["id"] for s in document["subjects"]
               if s.get("has_label") and needed <= set(s["sequences"])]
    if not ids:
        raise CordfuseError("no prepared subject with a lesion label fits this model "
                            f"(sequences {', '.join(config.model_sequences)})")
    if config.fold_file:
        try:
            fold = json.loads(Path(config.fold_file).read_text())
            train, val = list(fold["train"]), list(fold["val"])
        except (OSError, ValueError, KeyError) as exc:
            raise CordfuseError(f"{config.fold_file}: fold file needs 'train' and 'val' lists "
                                f"({exc})") from exc
        return [i for i in train if i in ids], [i for i in val if i in ids]
    rng = np.random.default_rng(config.seed)
    order = list(rng.permutation(ids))
    n_val = max(1, round(config.val_fraction * len(ids))) if len(ids) > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_model(config: TrainConfig) -> CordNet:
    model = CordNet(
        config.net,
        config.model_sequences,
        mean_imputation=config.model == "mean-imputation",
        feature_noise=config.feature_noise if config.variant == "feature-aug" else None,
        fusion=config.fusion,
    )
    if config.variant == "frozen-encoder":
        baseline = load_checkpoint(config.frozen_from)
        prefix = "encoders.T2Sag."
        weights = {k[len(prefix):]: v for k, v in baseline["model"].items() if k.startswith(prefix)}
        if not weights:
            raise CordfuseError(f"{config.frozen_from}: no T2Sag encoder in this checkpoint")
        try:
            model.encoders["T2Sag"].load_state_dict(weights)
        except RuntimeError as exc:
            raise CordfuseError(f"{config.frozen_from}: T2Sag encoder does not fit this preset "
                                f"({str(exc).splitlines()[0]})") from exc
        model.freeze_encoder("T2Sag")
    return model


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (file or training folder); one clear error if it is not one of ours."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST if (path / BEST).exists() else path / LATEST
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CordfuseError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise CordfuseError(f"{path}: not a cordfuse checkpoint")
    major = str(checkpoint.get("cordfuse_version", "0")).split(".")[0]
    if major != __version__.split(".")[0]:
        raise CordfuseError(f"{path}: trained with cordfuse {checkpoint.get('cordfuse_version')}, "
                            f"this is {__version__} (another major version)")
    return checkpoint


def _save(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def data_workers(config: TrainConfig, device: torch.device) -> int:
    """Data-loading processes: as configured, else (``None``) enough to keep a GPU fed (the
    cores less one, at most 8) and none on CPU, where they would compete with the training."""
    if config.num_workers is not None:
        return config.num_workers
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 2) - 1))


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def validate(model, subjects, config: TrainConfig, device, dtype) -> float:
    """Mean Dice over validation subjects, sliding window over each whole crop."""
    if not subjects:
        return float("nan")
    model.eval()
    scores = []
    for subject in subjects:
        prob = predict_probabilities(model, subject.images, subject.available,
                                     patch_z=config.net.patch_size[2], overlap=config.val_overlap,
                                     device=device, autocast_dtype=dtype)
        scores.append(dice(prob > 0.5, subject.label > 0))
    model.train()
    return float(np.mean(scores))


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
    stop_hook: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train one model; returns a summary (best/last validation Dice, epochs, time, digest)."""
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
        out.mkdir(parents=True, exist_ok=True)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    document, paths = load_prepared_dataset(prepared_dir)
    train_ids, val_ids = split_subjects(document, config)
    if not train_ids:
        raise CordfuseError("no training subjects left after the split")
    by_id = {p.parent.name: p for p in paths}
    sequences = config.model_sequences
    train_subjects = load_subjects([by_id[i] for i in train_ids], sequences)
    val_subjects = load_subjects([by_id[i] for i in val_ids], sequences)
    patch = config.net.patch_size
    size = document["crop_size"]
    if (size, size) != tuple(patch[:2]):
        raise CordfuseError(f"prepared crops are {size}x{size} but the {config.preset} preset "
                            f"needs {patch[0]}x{patch[1]}: prepare with --preset {config.preset}")

    model = build_model(config).to(dev)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: (1 - epoch / config.epochs) ** config.poly_exponent)
    dtype = autocast_dtype(config.amp, dev)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    start_epoch, best, history = 0, -math.inf, []
    if resume and (out / LATEST).exists():
        checkpoint = load_checkpoint(out / LATEST)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        start_epoch = checkpoint["epoch"] + 1
        best, history = checkpoint["best_val_dice"], checkpoint["history"]
    net = model
    if world > 1:
        # Only Mean Imputation skips the encoder of a sequence missing from a whole batch; every
        # other model uses all its parameters at every step, so DDP need not search the graph.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=model.mean_imputation)
    if config.compile:
        net = torch.compile(net)
    dataset = PatchDataset(train_subjects, patch, seed=config.seed,
                           foreground_fraction=config.foreground_fraction,
                           augment=config.augment, sequence_dropout=config.sequence_dropout,
                           reference_dropout=config.reference_dropout, rank=rank,
                           world_size=world, augmentation=PRESET_AUGMENTATION[config.preset])
    per_epoch = config.iterations * config.batch_size
    started = time.perf_counter()
    step = start_epoch * config.iterations
    workers = data_workers(config, dev)
    # One loader for the whole run: its workers live across epochs and prefetch ahead. Sample n
    # depends on (seed, n) only, so any worker count draws the same patches.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size,
        sampler=range(start_epoch * per_epoch, config.epochs * per_epoch),
        num_workers=workers, persistent_workers=workers > 0, pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: starting the loader must not draw from the global torch RNG,
        # which the feature noise uses and a resumed run restores.
        generator=torch.Generator().manual_seed(config.seed))
    batches = iter(loader)
    from tqdm import tqdm

    for epoch in range(start_epoch, config.epochs):
        bar = tqdm(range(config.iterations), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=None if (progress and rank == 0) else True, leave=False)
        losses = []
        epoch_start = time.perf_counter()
        for _ in bar:
            images, labels, available = next(batches)
            images = images.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            available = available.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = net(images, available)
                loss = deep_supervision_loss(output.logits, labels)
                if config.variant == "distillation":
                    loss = loss + config.distillation_alpha * distillation_loss(
                        output.features.float(), output.available)
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
            (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
        val_dice = validate(model, val_subjects, config, dev, dtype) if validated else math.nan
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": train_loss, "val_dice": val_dice,
                  "epoch_seconds": round(time.perf_counter() - epoch_start, 3),
                  "val_seconds": round(time.perf_counter() - epoch_start - train_seconds, 3)}
        history.append(record)
        improved = not math.isnan(val_dice) and val_dice > best
        best = val_dice if improved else best
        if rank == 0:
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "best_val_dice": best, "history": history,
                "rng": {"torch": torch.get_rng_state()},
                "config": config.to_dict(), "sequences": sequences, "net": asdict(config.net),
                "normalisation": NORMALISATION, "prep": document.get("config", {}),
                "split": {"train": [str(i) for i in train_ids], "val": [str(i) for i in val_ids]},
                "cordfuse_version": __version__,
            }
            _save(out / LATEST, payload)
            # Without validation subjects there is no "best": it follows the latest epoch.
            if improved or not val_subjects or not (out / BEST).exists():
                _save(out / BEST, payload)
            with open(out / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            _plot(history, out / "curves.png")
    summary = {"epochs": config.epochs,
               "best_val_dice": best if math.isfinite(best) else None,  # None: no validation
               "last_val_dice": history[-1]["val_dice"] if history else float("nan"),
               "seconds": round(time.perf_counter() - started, 2), "world_size": world,
               "digest": weights_digest(model), "train": [str(i) for i in train_ids],
               "val": [str(i) for i in val_ids], "config": config.to_dict()}
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, summary["digest"])
        summary["ranks_in_sync"] = len(set(digests)) == 1
        dist.barrier()
    if rank == 0:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
