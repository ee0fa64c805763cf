"""The paper's experiment grid as one command (``cordfuse study CONFIG``).

A study trains every model of the paper for ``seeds`` seeds on one dataset, predicts the held-out
test subjects of every cohort with every set of sequences the model can use, evaluates them with
the Anima rules, and writes Tables 1 and 2 (Markdown, CSV, LaTeX), box plots per cohort,
``per_image.csv``, what the extra sequences add lesion by lesion, and ``report.html``.
``cordfuse demo`` is a study too, with a built-in configuration (:mod:`cordfuse.demo`).

The models (section 2.3-2.4), in training order:

==================== ====================================================================
``baseline``         T2Sag only (nnU-Net)
``specific-stir``    specific sequences T2Sag+STIR (trained on the subjects that have them)
``specific-t2s-t1``  T2Sag+T2starAx+T1Sag
``specific-t2s-t2ax`` T2Sag+T2starAx+T2Ax
``mi``               Mean Imputation, six encoders
``mi-frozen``        Mean Imputation with the T2Sag encoder of ``baseline`` (same seed) frozen
``mi-distill``       Mean Imputation with the L1 distillation loss (alpha 0.1)
``feature-aug``      T2Sag with latent feature augmentation
``mi-dropout``       Mean Imputation, each other sequence hidden with probability 0.5 in training
``mi-all-levels``    Mean Imputation fused at every encoder level (beyond the paper)
``mi-seqsup``        Mean Imputation, one other sequence also segments alone each step (0.5)
``mi-all-levels-refdrop`` the same, T2Sag hidden with probability 0.35 in training samples whose
                     other sequences cover the patch
``early-fusion``     one U-Net over the stacked sequences, sequence dropout 0.5
``anchored``         ``baseline`` (same seed) frozen plus an early-fusion correction
``anchored-all-levels`` the same with an all-level fusion correction
==================== ====================================================================

Three modules, one job each:

* :mod:`cordfuse.study.config`: the experiments and :class:`StudyConfig` (read and checked);
* :mod:`cordfuse.study.grid`: the fold and the sequences each model sees at inference (pure);
* :mod:`cordfuse.study.runner`: the run, its stages and the folder it writes (resumable).
"""

from cordfuse.study.config import (
    EXAMPLE_CONFIG,
    EXPERIMENTS,
    LABELS,
    PRESET_SCHEDULES,
    Experiment,
    StudyConfig,
)
from cordfuse.study.grid import (
    ALL_AVAILABLE,
    inference_order,
    inference_sets,
    sequences_label,
    split_by_cohort,
)
from cordfuse.study.runner import (
    OUTPUTS,
    RunStatus,
    StudyData,
    StudyRun,
    evaluate_run,
    load_lesion_rows,
    load_records,
    load_test_subjects,
    prediction_folder,
    run_stages,
    run_study,
    write_lesion_tables,
    write_report,
    write_tables,
)

__all__ = [
    "ALL_AVAILABLE",
    "EXAMPLE_CONFIG",
    "EXPERIMENTS",
    "LABELS",
    "OUTPUTS",
    "PRESET_SCHEDULES",
    "Experiment",
    "RunStatus",
    "StudyConfig",
    "StudyData",
    "StudyRun",
    "evaluate_run",
    "inference_order",
    "inference_sets",
    "load_lesion_rows",
    "load_records",
    "load_test_subjects",
    "prediction_folder",
    "run_stages",
    "run_study",
    "sequences_label",
    "split_by_cohort",
    "write_lesion_tables",
    "write_report",
    "write_tables",
]
