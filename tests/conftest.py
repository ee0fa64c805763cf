"""Shared fixtures: one small synthetic cohort on disk and in-memory subjects, made once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cordfuse.synth.cohort import generate_subject, write_cohort

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
COHORT_SEED = 11
COHORT_SUBJECTS = 4

#: Fixtures that pre-process a cohort, train a model or run a pipeline end to end, each made once
#: per worker process. A test that uses one is in the ``slow`` tier, which ``make test-fast``
#: leaves out (``make test`` runs all); the tests that share one run in the same worker of
#: ``pytest -n`` (``--dist loadgroup``, grouped by the first they use), so that each is made once
#: in the whole run.
SLOW_FIXTURES = (
    "learned",
    "tiny_demo",
    "tiny_study",
    "tiny_models",
    "tiny_baseline",
    "prepared_small",
    "prepared_root",
    "prepared",
)
#: Fixtures of the fast tier that cost seconds to make (synthetic subjects generated), each
#: made once per worker process: the tests that share one run in the same worker, so that it is
#: made once in the whole run, as the slow ones are.
SHARED_FIXTURES = ("synth_subjects", "randomised", "synth_root")


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one worker per core) each worker computes on its
    share of the cores, and so do the processes it starts: two workers with every core each would
    fight over them (measured: 1.7x slower each, docs/performance.md)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        from cordfuse.threads import set_threads, usable_cores

        set_threads(max(1, usable_cores() // int(workers)))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Put every test that needs a slow fixture in the ``slow`` tier (the others are marked by
    hand with ``@pytest.mark.slow``), and the tests that share an expensive fixture in one
    pytest-xdist group."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        slow = next((name for name in SLOW_FIXTURES if name in names), None)
        if slow is not None:
            item.add_marker(pytest.mark.slow)
        shared = slow or next((name for name in SHARED_FIXTURES if name in names), None)
        if shared is not None:
            item.add_marker(pytest.mark.xdist_group(shared))


def generator_truth(faint: bool) -> dict:
    """A ground-truth lesion's generator truth as a study stores it (``LesionRow.truth``):
    faint or clear on T2Sag, bright on every other sequence, covered by all."""
    from cordfuse.sequences import SEQUENCES

    return {
        "faint": faint,
        "generated": 1,
        "visibility": {s: 0.9 for s in SEQUENCES} | {"T2Sag": 0.3 if faint else 0.9},
        "covers": {s: True for s in SEQUENCES},
    }


def require_real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real scans not found at {REAL_DATA} (the ../shared checkout is absent)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A written synthetic BIDS cohort (read-only for tests: copy before modifying)."""
    root = tmp_path_factory.mktemp("synth") / "bids"
    write_cohort(root, subjects=COHORT_SUBJECTS, seed=COHORT_SEED)
    return root


@pytest.fixture()
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic cohort that a test may damage."""
    dest = tmp_path / "bids"
    shutil.copytree(synth_root, dest)
    return dest


@pytest.fixture(scope="session")
def synth_subjects():
    """In-memory subjects covering every sequence and both T2Sag slab layouts."""
    subjects = [
        generate_subject(5, index, cohort)
        for index, cohort in [
            (1, "A"),
            (2, "B"),
            (3, "C"),
            (4, "A"),
            (5, "B"),
            (6, "C"),
            (7, "A"),
            (8, "C"),
        ]
    ]
    present = {plan.sequence for s in subjects for plan in s.plans.values()}
    assert present == {"T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE"}, present
    return subjects


@pytest.fixture(scope="session")
def learned(tmp_path_factory):
    """A small-preset T2Sag baseline trained for 250 steps on a 10-subject synthetic cohort."""
    from cordfuse.cli import main
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    root = tmp_path_factory.mktemp("learned")
    bids = write_cohort(root / "bids", subjects=10, seed=21)
    prepared = root / "prepared"
    assert main(["prepare", str(bids), str(prepared), "--preset", "small", "--jobs", "2"]) == 0
    # Validated every 5 epochs: the tests need the best of the run, not every epoch's Dice. The
    # small preset's recipe (AdamW) reaches pooled validation Dice 0.19 and 0.39 at epochs 5 and
    # 10 (measured at 81bf9a4; the tests ask for 0.15 over an untrained net, which scores under
    # 0.05); 15 epochs reached 0.45, which no test needs, for 50 % more of the suite's longest
    # training. nnU-Net's SGD needed 80 epochs and lesion-centred patches for 0.53.
    config = TrainConfig(
        model="baseline",
        preset="small",
        epochs=10,
        iterations=25,
        seed=0,
        val_every=5,
    )
    summary = train(prepared, root / "run", config, progress=False)
    return {
        "bids": bids,
        "prepared": prepared,
        "run": root / "run",
        "summary": summary,
        "config": config,
    }


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """``cordfuse demo`` with a tiny setting (9 subjects, 1 epoch x 2 iterations), and what it
    printed."""
    import contextlib
    import io

    from cordfuse.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            [
                "demo",
                str(out),
                "--subjects",
                "9",
                "--epochs",
                "1",
                "--iterations",
                "2",
                "--test-per-cohort",
                "1",
            ]
        )
    return {"out": out, "status": status, "printed": printed.getvalue()}


@pytest.fixture(scope="session")
def prepared_small(synth_root, tmp_path_factory) -> Path:
    """The fixture cohort prepared with the small preset (read-only for tests)."""
    from cordfuse.cli import main

    out = tmp_path_factory.mktemp("prep_small") / "out"
    assert main(["prepare", str(synth_root), str(out), "--preset", "small"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_baseline(prepared_small, tmp_path_factory) -> Path:
    """A small-preset T2Sag baseline trained for 2 iterations (deterministic): a real model whose
    quality does not matter."""
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    out = tmp_path_factory.mktemp("tiny_baseline") / "run"
    config = TrainConfig(
        model="baseline", preset="small", epochs=1, iterations=2, seed=3, deterministic=True
    )
    train(prepared_small, out, config, progress=False)
    return out
