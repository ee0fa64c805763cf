"""Training configuration: a typed dataclass with the paper's recipe and a small CPU preset.

Each preset has its own schedule (:data:`SCHEDULES`): the paper's 1000 x 250 iterations for the
full networks (GPU work), 100 x 25 for ``small`` (minutes on a CPU, the study's CPU budget);
and its optimizer (:data:`PRESET_OPTIMIZERS`): nnU-Net's SGD for the paper's networks, AdamW for
``small``, which leaves the all-background plateau within the CPU budget.

Every checkpoint stores the whole configuration (``asdict``), so a result can always be traced
back to the settings that made it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from cordfuse.errors import CordfuseError
from cordfuse.nn.networks import CORRECTIONS, FUSIONS, NET_PRESETS, FeatureNoise, NetConfig
from cordfuse.sequences import SEQUENCES

MODELS = ("baseline", "specific", "mean-imputation", "early-fusion", "anchored")
#: The models that take any subset of their sequences containing T2Sag.
ACCEPT_MISSING = ("mean-imputation", "early-fusion", "anchored")
VARIANTS = ("frozen-encoder", "distillation", "feature-aug")
#: Each preset's default ``(epochs, iterations per epoch)``: the paper's schedule for the paper's
#: networks, and the budget of ``cordfuse study`` on a CPU for ``small`` (its
#: ``cordfuse.study.config.PRESET_SCHEDULES``, which a test keeps equal).
SCHEDULES: dict[str, tuple[int, int]] = {"paper": (1000, 250), "small": (100, 25)}
#: Each optimizer's default learning rate: nnU-Net's SGD (Nesterov) 0.01, AdamW 3e-3.
OPTIMIZERS: dict[str, float] = {"sgd": 0.01, "adamw": 3e-3}
#: Each preset's default optimizer. The paper's networks keep nnU-Net's SGD. The small preset's
#: CPU budget is too short for it: SGD sat on the all-background plateau for ~750 of its 2,500
#: iterations and was still climbing at the end, where AdamW left the plateau within ~100 and
#: ended higher (docs/training.md, ``benchmarks/bench_convergence.py``).
PRESET_OPTIMIZERS: dict[str, str] = {"paper": "sgd", "small": "adamw"}


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model (section 2.3: nnU-Net's recipe)."""

    model: str = "mean-imputation"
    sequences: tuple[str, ...] = SEQUENCES
    variant: str | None = None
    preset: str = "paper"
    #: Epochs and iterations per epoch; None (left out): the preset's :data:`SCHEDULES`.
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 2
    #: ``sgd`` (Nesterov, ``momentum``) or ``adamw``; None (left out): the preset's
    #: (:data:`PRESET_OPTIMIZERS`). The learning rate, left out: the optimizer's default.
    optimizer: str | None = None
    learning_rate: float | None = None
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    foreground_fraction: float = 1 / 3
    distillation_alpha: float = 0.1
    feature_noise: FeatureNoise = field(default_factory=FeatureNoise)
    frozen_from: str | None = None
    seed: int = 0
    val_fraction: float = 0.2
    fold_file: str | None = None
    augment: bool = True
    amp: str = "auto"  # auto | bf16 | fp16 | none
    deterministic: bool = False
    #: Data-loading processes; None: the cores less one (at most 8) on CUDA, none on CPU.
    num_workers: int | None = None
    #: Validate every this many epochs (and after the last one).
    val_every: int = 1
    #: Compile the training step with ``torch.compile`` (CUDA; a one-off compile of ~1 min).
    compile: bool = False
    val_overlap: float = 0.5
    #: Where the sequences meet: the paper's ``bottleneck``, or ``all-levels`` (every skip too).
    fusion: str = "bottleneck"
    #: Probability of hiding each available non-T2Sag sequence of a training sample (Mean
    #: Imputation only); 0 is the paper's recipe.
    sequence_dropout: float = 0.0
    #: Probability of hiding T2Sag itself in a training sample whose other sequences cover the
    #: patch (all-level fusion only: every level is then imputed from the others), so that each
    #: other encoder learns to find lesions on its own; 0 never hides it.
    reference_dropout: float = 0.0
    #: The anchored model's frozen T2Sag-only model (a baseline's training folder or checkpoint);
    #: its weights are copied into the anchored model's checkpoint when training starts.
    anchor: str | None = None
    #: The anchored model's correction network (``cordfuse.nn.networks.CORRECTIONS``).
    correction: str = "early-fusion"
    #: Weight of the auxiliary loss that segments lesions from one other sequence's features
    #: alone each step (Mean Imputation only); 0 is the paper's recipe.
    sequence_supervision: float = 0.0
    #: Probability of scaling a training sample's lesion contrast, per available sequence
    #: (:class:`~cordfuse.training.data.Augmentation`'s ``lesion_contrast``); 0 leaves the
    #: preset's augmentation as it is.
    lesion_contrast: float = 0.0
    #: Probability of a training sample whose field of view ends inside the patch
    #: (:class:`~cordfuse.training.data.Augmentation`'s ``fov_truncation``); 0 leaves the
    #: preset's augmentation as it is.
    fov_truncation: float = 0.0
    #: Probability of a small lesion painted into a training sample's cord and label
    #: (:class:`~cordfuse.training.data.Augmentation`'s ``p_paint``); 0 leaves the preset's
    #: augmentation as it is.
    paint_lesions: float = 0.0
    #: Weight of the lesion-wise loss added to nnU-Net's (:func:`~cordfuse.training.losses.
    #: blob_loss`, every truth lesion weighing the same); 0 is the paper's recipe.
    blob_loss: float = 0.0

    def __post_init__(self):
        if self.preset not in NET_PRESETS:
            raise CordfuseError(f"unknown preset {self.preset!r}")
        # the preset's schedule fills in what was left out, once, here (the class is frozen)
        epochs, iterations = self.schedule
        object.__setattr__(self, "epochs", epochs)
        object.__setattr__(self, "iterations", iterations)
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise CordfuseError(
                f"unknown optimizer {self.optimizer!r}; one of {', '.join(OPTIMIZERS)}"
            )
        optimizer, learning_rate = self.recipe
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "learning_rate", learning_rate)
        if not learning_rate > 0:
            raise CordfuseError("the learning rate must be positive")
        if self.val_every < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise CordfuseError("--val-every must be >= 1 and --workers >= 0")
        if self.model not in MODELS:
            raise CordfuseError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.variant is not None and self.variant not in VARIANTS:
            raise CordfuseError(f"unknown variant {self.variant!r}; one of {', '.join(VARIANTS)}")
        unknown = [s for s in self.sequences if s not in SEQUENCES]
        if unknown:
            raise CordfuseError(f"unknown sequence(s) {', '.join(unknown)}")
        if "T2Sag" not in self.sequences:
            raise CordfuseError("every model needs T2Sag")
        if self.variant == "feature-aug" and self.model != "baseline":
            raise CordfuseError("the feature-aug variant applies to the T2Sag baseline")
        if self.variant in ("frozen-encoder", "distillation") and self.model not in (
            "specific",
            "mean-imputation",
        ):
            raise CordfuseError(
                f"the {self.variant} variant needs one encoder per sequence (specific or "
                "mean-imputation)"
            )
        if self.variant == "frozen-encoder" and not self.frozen_from:
            raise CordfuseError("--variant frozen-encoder needs --frozen-from BASELINE_CHECKPOINT")
        if self.fusion not in FUSIONS:
            raise CordfuseError(f"unknown fusion {self.fusion!r}; one of {', '.join(FUSIONS)}")
        if self.fusion != "bottleneck" and len(self.model_sequences) < 2:
            raise CordfuseError(f"--fusion {self.fusion} needs a multi-sequence model")
        if not 0.0 <= self.lesion_contrast <= 1.0:
            raise CordfuseError("--lesion-contrast is a probability in [0, 1]")
        if self.lesion_contrast and not self.augment:
            raise CordfuseError("--lesion-contrast is an augmentation: not with --no-augment")
        if not 0.0 <= self.fov_truncation <= 1.0:
            raise CordfuseError("--fov-truncation is a probability in [0, 1]")
        if self.fov_truncation and not self.augment:
            raise CordfuseError("--fov-truncation is an augmentation: not with --no-augment")
        if not 0.0 <= self.paint_lesions <= 1.0:
            raise CordfuseError("--paint-lesions is a probability in [0, 1]")
        if self.paint_lesions and not self.augment:
            raise CordfuseError("--paint-lesions is an augmentation: not with --no-augment")
        if self.paint_lesions and self.lesion_contrast:
            raise CordfuseError(
                "--paint-lesions with --lesion-contrast would scale the painted lesions' contrast "
                "a second time (a 1/3x lesion to below zero): use one of them"
            )
        if not self.blob_loss >= 0:
            raise CordfuseError("--blob-loss W needs W >= 0")
        if not 0.0 <= self.sequence_dropout < 1.0:
            raise CordfuseError("--sequence-dropout is a probability in [0, 1)")
        if self.sequence_dropout and self.model not in ACCEPT_MISSING:
            raise CordfuseError(
                "--sequence-dropout needs a model that accepts missing sequences "
                f"({', '.join(ACCEPT_MISSING)})"
            )
        if self.sequence_supervision < 0 or (
            self.sequence_supervision and self.model != "mean-imputation"
        ):
            raise CordfuseError("--sequence-supervision W needs Mean Imputation and W >= 0")
        if self.correction not in CORRECTIONS:
            raise CordfuseError(f"--correction: one of {', '.join(CORRECTIONS)}")
        if self.correction != CORRECTIONS[0] and self.model != "anchored":
            raise CordfuseError("--correction applies to --model anchored")
        if (self.model == "anchored") != bool(self.anchor):
            raise CordfuseError("--anchor RUN goes with --model anchored, and it needs one")
        if self.model in ("early-fusion", "anchored") and self.fusion != "bottleneck":
            raise CordfuseError(f"--fusion applies to Mean Imputation, not to {self.model}")
        if not 0.0 <= self.reference_dropout < 1.0:
            raise CordfuseError("--reference-dropout is a probability in [0, 1)")
        if self.reference_dropout and (
            self.model != "mean-imputation" or self.fusion != "all-levels"
        ):
            raise CordfuseError(
                "--reference-dropout needs Mean Imputation with --fusion "
                "all-levels (the paper's decoder takes its skips from T2Sag)"
            )
        if min(*self.schedule, self.batch_size) < 1:
            raise CordfuseError("epochs, iterations and batch size must be at least 1")

    @property
    def recipe(self) -> tuple[str, float]:
        """``(optimizer, learning rate)``: those given, else the preset's optimizer and its
        default learning rate.

        Example:
            >>> TrainConfig(preset="small").recipe
            ('adamw', 0.003)
            >>> TrainConfig(optimizer="sgd", learning_rate=0.02).recipe
            ('sgd', 0.02)
        """
        optimizer = self.optimizer or PRESET_OPTIMIZERS[self.preset]
        if self.learning_rate is None:
            return optimizer, OPTIMIZERS[optimizer]
        return optimizer, self.learning_rate

    @property
    def schedule(self) -> tuple[int, int]:
        """``(epochs, iterations per epoch)``: those given, else the preset's.

        Example:
            >>> TrainConfig(preset="small").schedule
            (100, 25)
            >>> TrainConfig(preset="small", epochs=2).schedule
            (2, 25)
            >>> TrainConfig().schedule
            (1000, 250)
        """
        epochs, iterations = SCHEDULES[self.preset]
        return (
            epochs if self.epochs is None else self.epochs,
            iterations if self.iterations is None else self.iterations,
        )

    @property
    def model_sequences(self) -> list[str]:
        """The encoders of the model, in channel order (T2Sag first)."""
        if self.model == "baseline":
            return ["T2Sag"]
        if self.model in ACCEPT_MISSING:
            return list(SEQUENCES)
        return [s for s in SEQUENCES if s in self.sequences]

    @property
    def net(self) -> NetConfig:
        """The architecture of the configuration's preset (``paper`` or ``small``)."""
        return NET_PRESETS[self.preset]

    def to_dict(self) -> dict:
        """Every setting, as a checkpoint stores it.

        Returns:
            A plain dict (the feature noise as a nested dict).
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The configuration :meth:`to_dict` gave; settings this version does not know are left
        out, those it lacks take their defaults.

        Args:
            data: The stored settings.

        Returns:
            The configuration (validated).

        Raises:
            CordfuseError: an invalid setting.

        Example:
            >>> config = TrainConfig(model="baseline", preset="small", epochs=2)
            >>> TrainConfig.from_dict(config.to_dict()) == config
            True
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["sequences"] = tuple(values.get("sequences", SEQUENCES))
        # A stored configuration holds every setting; one with a learning rate but no optimizer
        # was stored before the optimizer was a setting, when every run used SGD. A partial one
        # (a study's) takes the preset's optimizer like any setting it leaves out.
        if "learning_rate" in values:
            values.setdefault("optimizer", "sgd")
        if isinstance(values.get("feature_noise"), dict):
            values["feature_noise"] = FeatureNoise(**values["feature_noise"])
        return cls(**values)
