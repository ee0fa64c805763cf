"""What a study runs: the experiments of the paper and the settings of one study.

A study is described by a YAML or JSON mapping (``cordfuse study --example`` prints one), read by
:meth:`StudyConfig.from_file` and checked when the :class:`StudyConfig` is made, so a bad
setting fails in one line before anything runs. :meth:`StudyConfig.to_mapping` writes it back in
the same form (the study's ``config.json``, a config ``cordfuse study`` reads again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cordfuse.errors import CordfuseError
from cordfuse.sequences import SEQUENCES

#: Sequence dropout of the anchored model: low, since a sample left with T2Sag alone is the
#: anchor's answer and teaches the correction nothing; enough that it learns every subset.
ANCHORED_DROPOUT = 0.25


@dataclass(frozen=True)
class Experiment:
    """One model of the grid and how it is trained.

    Args:
        name: Its name in configs, folders and CSV files (``mi``).
        label: Its name in the tables (``Mean Imputation``).
        model: The ``cordfuse train --model`` it trains (``baseline``, ``specific``,
            ``mean-imputation``, ``early-fusion``, ``anchored``: anchored on the baseline of the
            same seed).
        sequences: Its encoders (T2Sag first).
        variant: ``frozen-encoder``, ``distillation`` or ``feature-aug``; None for the plain model.
        fusion: Where the sequences meet: ``bottleneck`` (the paper) or ``all-levels``.
        sequence_dropout: Probability of hiding each other sequence of a training sample.
        reference_dropout: Probability of hiding T2Sag in a training sample whose other sequences
            cover the patch.
        correction: The anchored model's correction network.
        sequence_supervision: Weight of the loss segmenting from one other sequence alone.
    """

    name: str
    label: str
    model: str
    sequences: tuple[str, ...] = SEQUENCES
    variant: str | None = None
    fusion: str = "bottleneck"
    sequence_dropout: float = 0.0
    reference_dropout: float = 0.0
    correction: str = "early-fusion"
    sequence_supervision: float = 0.0

    @property
    def multi(self) -> bool:
        """Whether the model has more than the T2Sag encoder."""
        return self.model != "baseline"

    @property
    def accepts_missing(self) -> bool:
        """Whether the model predicts with some of its sequences missing (not a specific one)."""
        return self.model != "specific"


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("baseline", "T2Sag baseline", "baseline", ("T2Sag",)),
        Experiment("specific-stir", "Specific T2Sag+STIR", "specific", ("T2Sag", "STIR")),
        Experiment(
            "specific-t2s-t1",
            "Specific T2Sag+T2starAx+T1Sag",
            "specific",
            ("T2Sag", "T2starAx", "T1Sag"),
        ),
        Experiment(
            "specific-t2s-t2ax",
            "Specific T2Sag+T2starAx+T2Ax",
            "specific",
            ("T2Sag", "T2starAx", "T2Ax"),
        ),
        Experiment("mi", "Mean Imputation", "mean-imputation"),
        Experiment("mi-frozen", "MI + frozen encoder", "mean-imputation", variant="frozen-encoder"),
        Experiment("mi-distill", "MI + distillation", "mean-imputation", variant="distillation"),
        Experiment("feature-aug", "T2Sag + feature aug.", "baseline", ("T2Sag",), "feature-aug"),
        Experiment("mi-dropout", "MI + sequence dropout", "mean-imputation", sequence_dropout=0.5),
        Experiment("mi-all-levels", "MI, all-level fusion", "mean-imputation", fusion="all-levels"),
        Experiment(
            "mi-seqsup",
            "MI + each sequence supervised",
            "mean-imputation",
            sequence_supervision=0.5,
        ),
        Experiment(
            "mi-all-levels-refdrop",
            "MI, all-level fusion + T2Sag dropout",
            "mean-imputation",
            fusion="all-levels",
            reference_dropout=0.35,
        ),
        # Beyond the paper: the models whose extra sequences must beat T2Sag alone.
        Experiment(
            "early-fusion", "Early fusion + sequence dropout", "early-fusion", sequence_dropout=0.5
        ),
        Experiment(
            "anchored", "Anchored on the baseline", "anchored", sequence_dropout=ANCHORED_DROPOUT
        ),
        Experiment(
            "anchored-all-levels",
            "Anchored, all-level fusion correction",
            "anchored",
            sequence_dropout=ANCHORED_DROPOUT,
            correction="all-levels",
        ),
    )
}

#: The label of every experiment in the tables, by name.
LABELS: dict[str, str] = {e.name: e.label for e in EXPERIMENTS.values()}

PRESET_SCHEDULES = {
    "paper": {"epochs": 1000, "iterations": 250},
    "small": {"epochs": 100, "iterations": 25},
}

EXAMPLE_CONFIG = """\
# cordfuse study: the paper's experiment grid (Tables 1 and 2).
# Either a BIDS dataset with cohorts in participants.tsv ...
#   dataset: /path/to/bids
# ... or a synthetic cohort made by the study itself:
# 120 subjects: 66 test (about 50 lesions faint on T2Sag, enough for the paired faint-lesion
# comparison), 3 validation, 51 training. Test subjects only cost inference time.
synthetic:
  subjects: 120
  seed: 0
  # qc: true           # a QC picture per synthetic subject
  # randomise: true    # random appearance, resolution and cord size (domain randomisation)
preset: small          # small (CPU) or paper (full networks, for a GPU)
seeds: 1               # number of training seeds (0, 1, ...) or a list; the paper used 3
# epochs: 100          # default: 100 x 25 for small, 1000 x 250 for paper
# iterations: 25
test_per_cohort: 22    # held-out test subjects per cohort (one more per cohort validates)
# The paper's grid, then models beyond it (docs/multisequence.md); also available:
# mi-dropout (Mean Imputation with sequence dropout), mi-seqsup (each sequence supervised).
experiments: [baseline, specific-stir, specific-t2s-t1, specific-t2s-t2ax, mi, mi-frozen,
              mi-distill, feature-aug, mi-all-levels, mi-all-levels-refdrop, early-fusion,
              anchored, anchored-all-levels]
feature_noise: paper   # paper | fit (analyze the MI model of the same seed) | a JSON file
# device: auto         # auto | cpu | cuda
# jobs: 2              # pre-processing processes
# val_every: 1         # validate every N epochs (and after the last)
"""


@dataclass(frozen=True)
class StudyConfig:
    """The settings of one study, checked when made.

    Args:
        dataset: A BIDS dataset with cohorts in ``participants.tsv``; None for a synthetic cohort.
        synthetic_subjects: Subjects of the synthetic cohort (without ``dataset``).
        synthetic_seed: Seed of the synthetic cohort.
        synthetic_qc: Also write a QC picture per synthetic subject.
        synthetic_randomise: Randomise the synthetic cohort (``cordfuse synth --randomise``).
        preset: ``small`` (CPU) or ``paper`` (full networks): pre-processing, network size and
            default schedule.
        seeds: Training seeds; the first one also draws the fold.
        epochs: Epochs per model (None: the preset's).
        iterations: Iterations per epoch (None: the preset's).
        batch_size: Training batch size.
        test_per_cohort: Held-out test subjects per cohort (one more per cohort validates).
        experiments: Names from :data:`EXPERIMENTS` (run in that dictionary's order).
        feature_noise: ``paper``, ``fit`` (fitted on the ``mi`` model of the same seed) or the
            path of a ``noise_params.json``.
        centerline: The pre-processing's centreline method.
        fold: A ``fold.json`` to use instead of drawing one.
        jobs: Pre-processing processes.
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: Autocast in training and inference (``auto``, ``bf16``, ``fp16``, ``none``).
        augment: Data augmentation in training.
        val_every: Validate every this many epochs (and after the last one).

    Raises:
        CordfuseError: An unknown preset or experiment, an experiment without the one it needs,
            no seed or no test subject.
    """

    dataset: str | None = None
    synthetic_subjects: int = 120
    synthetic_seed: int = 0
    synthetic_qc: bool = False
    synthetic_randomise: bool = False
    preset: str = "small"
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 2
    test_per_cohort: int = 22
    experiments: tuple[str, ...] = tuple(EXPERIMENTS)
    feature_noise: str = "paper"
    centerline: str = "auto"
    fold: str | None = None
    jobs: int = 2
    device: str = "auto"
    amp: str = "auto"
    augment: bool = True
    val_every: int = 1

    def __post_init__(self):
        if self.preset not in PRESET_SCHEDULES:
            raise CordfuseError(f"preset must be one of {', '.join(PRESET_SCHEDULES)}")
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown:
            raise CordfuseError(
                f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}"
            )
        if "mi-frozen" in self.experiments and "baseline" not in self.experiments:
            raise CordfuseError("mi-frozen freezes the baseline's T2Sag encoder: add baseline")
        anchored = any(EXPERIMENTS[e].model == "anchored" for e in self.experiments)
        if anchored and "baseline" not in self.experiments:
            raise CordfuseError("anchored keeps the baseline of the same seed: add baseline")
        if (
            self.feature_noise == "fit"
            and "feature-aug" in self.experiments
            and "mi" not in self.experiments
        ):
            raise CordfuseError("feature_noise: fit analyses the mi model: add mi")
        if not self.seeds or self.test_per_cohort < 1:
            raise CordfuseError("a study needs at least one seed and one test subject per cohort")

    @property
    def schedule(self) -> tuple[int, int]:
        """``(epochs, iterations per epoch)`` of every training, the preset's by default."""
        defaults = PRESET_SCHEDULES[self.preset]
        return (self.epochs or defaults["epochs"], self.iterations or defaults["iterations"])

    @property
    def ordered_experiments(self) -> list[Experiment]:
        """The study's experiments in training order (a frozen encoder needs its baseline)."""
        return [EXPERIMENTS[name] for name in EXPERIMENTS if name in self.experiments]

    @property
    def specific_sets(self) -> list[tuple[str, ...]]:
        """The sequence combinations of the study's specific models."""
        return [e.sequences for e in self.ordered_experiments if e.model == "specific"]

    @classmethod
    def from_mapping(cls, data: dict, base: Path) -> StudyConfig:
        """The config of a mapping as a study file holds it (see :data:`EXAMPLE_CONFIG`).

        Args:
            data: The settings; ``synthetic`` is a mapping of ``subjects``, ``seed``, ``qc``
                and ``randomise``.
            base: The folder relative paths (``dataset``, ``fold``, ``feature_noise``) start from.

        Returns:
            The checked config, with absolute paths.

        Raises:
            CordfuseError: Not a mapping, an unknown setting, or a bad value.
        """
        if not isinstance(data, dict):
            raise CordfuseError("a study config is a mapping of settings (see --example)")
        data = dict(data)
        values: dict[str, Any] = {}
        synthetic = data.pop("synthetic", None)
        if synthetic is not None:
            if not isinstance(synthetic, dict):
                raise CordfuseError("synthetic: needs subjects and seed")
            values["synthetic_subjects"] = int(synthetic.get("subjects", 120))
            values["synthetic_seed"] = int(synthetic.get("seed", 0))
            values["synthetic_qc"] = bool(synthetic.get("qc", False))
            values["synthetic_randomise"] = bool(synthetic.get("randomise", False))
        if "dataset" in data:
            values["dataset"] = str((base / str(data.pop("dataset"))).resolve())
        if "fold" in data:
            values["fold"] = str((base / str(data.pop("fold"))).resolve())
        seeds = data.pop("seeds", 1)
        values["seeds"] = (
            tuple(range(int(seeds))) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
        )
        if "experiments" in data:
            values["experiments"] = tuple(str(e) for e in data.pop("experiments"))
        noise = data.pop("feature_noise", "paper")
        if noise not in ("paper", "fit"):
            noise = str((base / str(noise)).resolve())
        values["feature_noise"] = noise
        known = {f.name for f in fields(cls)} - {
            "synthetic_subjects",
            "synthetic_seed",
            "synthetic_qc",
            "synthetic_randomise",
        }
        unknown = [k for k in data if k not in known]
        if unknown:
            raise CordfuseError(
                f"unknown setting(s) {', '.join(sorted(unknown))} (see cordfuse study --example)"
            )
        values.update(data)
        try:
            return cls(**values)
        except TypeError as exc:
            raise CordfuseError(f"bad study config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> StudyConfig:
        """The config of a YAML or JSON study file.

        Args:
            path: The file; relative paths in it start from its folder.

        Returns:
            The checked config.

        Raises:
            CordfuseError: The file is unreadable, not YAML/JSON, or a bad config.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise CordfuseError(f"{path}: cannot read the study config ({exc})") from exc
        import yaml

        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise CordfuseError(
                f"{path}: not valid JSON/YAML ({str(exc).splitlines()[0]})"
            ) from exc
        return cls.from_mapping(data, path.parent)

    def to_mapping(self) -> dict:
        """The config as a study file holds it: :meth:`from_mapping` reads it back equal.

        Returns:
            A JSON-serialisable mapping (absolute paths; unset paths left out).
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        mapping: dict[str, Any] = {
            "synthetic": {
                "subjects": values.pop("synthetic_subjects"),
                "seed": values.pop("synthetic_seed"),
                "qc": values.pop("synthetic_qc"),
                "randomise": values.pop("synthetic_randomise"),
            }
        }
        for name in ("dataset", "fold"):  # None would read back as a path named "None"
            if values[name] is None:
                del values[name]
        values["seeds"] = list(self.seeds)
        values["experiments"] = list(self.experiments)
        return mapping | values
