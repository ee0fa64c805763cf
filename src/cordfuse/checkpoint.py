"""A trained model on disk: :class:`Checkpoint`, what ``train`` writes and every verb reads.

A checkpoint holds the weights and all that is needed to use them: the training configuration,
the network's architecture (:class:`NetConfig`, stored whole: a later change of a preset does not
change a trained model), the model's sequences, the pre-processing settings and the
normalisation; written by the trainer, it also holds the state to resume from (optimiser, learning
rate scheduler, gradient scaler, epoch, best validation Dice, history, RNG).

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
crafted file cannot run code while it is read. That is why everything is stored as plain data
(dataclasses as dicts).

Importing this module does not import the trainer: prediction needs only this.

Example:
    An untrained baseline of the small preset, written and read back:

    >>> import tempfile
    >>> from cordfuse.nn.networks import NET_PRESETS
    >>> config = TrainConfig(model="baseline", preset="small")
    >>> model = initial_network(config, config.net, ["T2Sag"]).state_dict()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     Checkpoint(model, config, NET_PRESETS["small"], ["T2Sag"], PrepConfig()).save(
    ...         Path(tmp, BEST))
    ...     checkpoint = Checkpoint.load(tmp)   # a training folder: its best checkpoint
    >>> checkpoint.sequences, checkpoint.path.name, checkpoint.config.model
    (['T2Sag'], 'checkpoint_best.pt', 'baseline')
    >>> network = checkpoint.build_network().eval()
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cordfuse import __version__
from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_bytes
from cordfuse.nn.networks import AnchoredNet, CordNet, EarlyFusionNet, NetConfig, Network
from cordfuse.preprocess.pipeline import PrepConfig
from cordfuse.training.config import TrainConfig
from cordfuse.training.data import NORMALISATION

#: The checkpoint of the last finished epoch and the one of the best validation Dice.
LATEST, BEST = "checkpoint_latest.pt", "checkpoint_best.pt"
#: Keys every checkpoint file holds; the training state's keys are optional.
REQUIRED = ("model", "config", "net", "sequences", "prep", "cordfuse_version")


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a path names: the file itself, or a training folder's best checkpoint
    (else its latest).

    Args:
        path: A checkpoint file or a ``cordfuse train`` output folder.

    Returns:
        The checkpoint file (not checked to exist).
    """
    path = Path(path)
    if path.is_dir():
        return path / BEST if (path / BEST).exists() else path / LATEST
    return path


def initial_network(config: TrainConfig, net: NetConfig, sequences: Sequence[str]) -> Network:
    """The untrained network of a training configuration (its weights drawn from torch's RNG).

    An anchored model's anchor is untrained here too: its weights come from the anchor's
    checkpoint when training starts, and from the anchored model's own checkpoint afterwards.

    Args:
        config: Which model and variant (Mean Imputation, feature noise, fusion).
        net: The architecture.
        sequences: The encoders, T2Sag first.

    Returns:
        The network, freshly initialised.
    """
    if config.model == "early-fusion":
        return EarlyFusionNet(net, sequences)
    if config.model == "anchored":
        return AnchoredNet(net, sequences, correction=config.correction)
    return CordNet(
        net,
        sequences,
        mean_imputation=config.model == "mean-imputation",
        feature_noise=config.feature_noise if config.variant == "feature-aug" else None,
        fusion=config.fusion,
        sequence_supervision=config.sequence_supervision > 0,
    )


@dataclass
class Checkpoint:
    """A trained model and how it was made.

    Attributes:
        model: The network's weights (state dict).
        config: The training configuration.
        net: The architecture the weights belong to (the preset's at training time).
        sequences: The model's encoders, in channel order (T2Sag first).
        prep: The pre-processing of the training data, which prediction repeats.
        normalisation: How the crops were normalised (a description).
        split: Training and validation subject ids (``{"train": [...], "val": [...]}``).
        optimizer: The optimiser's state, to resume.
        scheduler: The learning rate scheduler's state, to resume.
        scaler: The gradient scaler's state, to resume.
        epoch: The last finished epoch, counted from 0.
        best_val_dice: The best validation Dice so far (``-inf`` before any validation).
        history: One record per finished epoch (what ``log.jsonl`` holds).
        rng: The RNG states at the end of ``epoch`` (``{"torch": ...}``), to resume.
        cordfuse_version: The cordfuse version that wrote it.
        path: The file it was read from (None when not read from a file).
    """

    model: dict[str, torch.Tensor]
    config: TrainConfig
    net: NetConfig
    sequences: list[str]
    prep: PrepConfig
    normalisation: str = NORMALISATION
    split: dict[str, list[str]] | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    epoch: int | None = None
    best_val_dice: float | None = None
    history: list[dict] = field(default_factory=list)
    rng: dict[str, torch.Tensor] | None = None
    cordfuse_version: str = __version__
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint file, or a training folder's best checkpoint (else its latest).

        Args:
            path: A checkpoint file or a training folder.

        Returns:
            The checkpoint, with ``path`` set to the file read.

        Raises:
            CordfuseError: In one line: the file is unreadable, is not a cordfuse checkpoint (a
                file that would run code or build other objects when unpickled is refused
                without running anything), comes from another major version, or holds an
                invalid configuration.
        """
        path = checkpoint_file(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as exc:
            raise CordfuseError(f"{path}: unreadable checkpoint ({exc.strerror or exc})") from exc
        except Exception as exc:  # whatever a damaged or crafted file makes the unpickler raise
            raise CordfuseError(f"{path}: not a cordfuse checkpoint ({_reason(exc)})") from exc
        missing = [k for k in REQUIRED if k not in data] if isinstance(data, dict) else REQUIRED
        if missing:
            raise CordfuseError(f"{path}: not a cordfuse checkpoint (no {', '.join(missing)})")
        version = str(data["cordfuse_version"])
        if version.split(".")[0] != __version__.split(".")[0]:
            raise CordfuseError(
                f"{path}: trained with cordfuse {version}, this is {__version__} "
                "(another major version)"
            )
        try:
            config = TrainConfig.from_dict(data["config"])
            # Networks stored before coverage masks were an input read their images only.
            stored_net = {"coverage_input": False} | dict(data["net"])
            net = NetConfig(**{k: _tuples(v) for k, v in stored_net.items()})
            prep = PrepConfig(**data["prep"])
        except (TypeError, ValueError, AttributeError, CordfuseError) as exc:
            raise CordfuseError(
                f"{path}: invalid configuration in the checkpoint ({_reason(exc)})"
            ) from exc
        return cls(
            model=data["model"],
            config=config,
            net=net,
            sequences=list(data["sequences"]),
            prep=prep,
            normalisation=data.get("normalisation", NORMALISATION),
            split=data.get("split"),
            optimizer=data.get("optimizer"),
            scheduler=data.get("scheduler"),
            scaler=data.get("scaler"),
            epoch=data.get("epoch"),
            best_val_dice=data.get("best_val_dice"),
            history=list(data.get("history", [])),
            rng=data.get("rng"),
            cordfuse_version=version,
            path=path,
        )

    def to_dict(self) -> dict:
        """The stored form: plain data under the keys checkpoints have always used.

        Returns:
            A dict of tensors, containers and primitives (``path`` is not stored).
        """
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "epoch": self.epoch,
            "best_val_dice": self.best_val_dice,
            "history": self.history,
            "rng": self.rng,
            "config": self.config.to_dict(),
            "sequences": list(self.sequences),
            "net": asdict(self.net),
            "normalisation": self.normalisation,
            "prep": asdict(self.prep),
            "split": self.split,
            "cordfuse_version": self.cordfuse_version,
        }

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (an interruption never leaves half a file).

        Args:
            path: The file to write.
        """
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def build_network(self) -> Network:
        """The trained network: the stored architecture with the stored weights.

        A frozen-encoder model's T2Sag encoder is in its weights: its baseline is not read.

        Returns:
            The network (in training mode, on the CPU).

        Raises:
            CordfuseError: The weights do not fit the stored architecture and sequences.
        """
        try:
            network = initial_network(self.config, self.net, self.sequences)
            network.load_state_dict(self.model)
        except (RuntimeError, ValueError) as exc:
            raise CordfuseError(
                f"{self.path}: checkpoint does not match its configuration ({_reason(exc)})"
            ) from exc
        return network


def _tuples(value):
    """Lists (as a dict from JSON would hold) as tuples, nested: NetConfig compares by value."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _reason(exc: Exception) -> str:
    """One line of an exception's message. torch's weights-only refusal opens with lines of
    advice (to load without ``weights_only``, the very thing to avoid): keep the reason line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if "GLOBAL" in line or "Unsupported" in line] or lines
    return lines[0] if lines else type(exc).__name__
