"""Checkpoints (issue 14): a trained model keeps its architecture, and loading one runs no code."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from cordfuse import __version__
from cordfuse.checkpoint import Checkpoint
from cordfuse.cli import main
from cordfuse.errors import CordfuseError
from cordfuse.inference import LoadedModel, load_model, model_probabilities
from cordfuse.nn.networks import NET_PRESETS
from cordfuse.preprocess.batch import load_prepared_dataset
from cordfuse.preprocess.pipeline import PreparedSubject
from cordfuse.training.trainer import build_model, resume_conflicts

CPU = torch.device("cpu")


def test_save_and_load_keep_every_field(tiny_baseline, tmp_path):
    checkpoint = Checkpoint.load(tiny_baseline)
    assert checkpoint.path == tiny_baseline / "checkpoint_best.pt"
    assert checkpoint.net == NET_PRESETS["small"] and checkpoint.epoch == 0
    checkpoint.save(tmp_path / "copy.pt")
    copy = Checkpoint.load(tmp_path / "copy.pt")
    for name in (
        "config",
        "net",
        "sequences",
        "prep",
        "normalisation",
        "split",
        "epoch",
        "best_val_dice",
        "history",
        "cordfuse_version",
        "scheduler",
    ):
        assert getattr(copy, name) == getattr(checkpoint, name), name
    assert copy.model.keys() == checkpoint.model.keys()
    assert all(torch.equal(copy.model[k], checkpoint.model[k]) for k in copy.model)
    assert torch.equal(copy.rng["torch"], checkpoint.rng["torch"])


def test_a_checkpoint_outlives_a_change_of_its_preset(tiny_baseline, prepared_small, monkeypatch):
    """The network is built from the architecture stored in the checkpoint: after the preset
    changes, the model predicts exactly as before; built from the preset's name, as before
    issue 14, it would predict otherwise or not load at all."""
    _, paths = load_prepared_dataset(prepared_small)
    prepared = PreparedSubject.load(paths[0])

    def probabilities(model: LoadedModel) -> np.ndarray:
        return model_probabilities(model, prepared, tta=False, device=CPU, batch_size=2, amp="none")

    before = probabilities(load_model(tiny_baseline, CPU))
    small = NET_PRESETS["small"]
    checkpoint = Checkpoint.load(tiny_baseline)

    def by_preset_name() -> LoadedModel:
        model = build_model(checkpoint.config)
        model.load_state_dict(checkpoint.model)
        return LoadedModel(
            tiny_baseline,
            model.eval(),
            checkpoint.config,
            checkpoint.config.net,
            checkpoint.sequences,
            checkpoint.prep,
        )

    # A shorter training patch: the same weights fit, the prediction windows do not.
    monkeypatch.setitem(NET_PRESETS, "small", replace(small, patch_size=(24, 24, 32)))
    loaded = load_model(tiny_baseline, CPU)
    assert loaded.net == small
    assert np.array_equal(probabilities(loaded), before)
    assert not np.allclose(probabilities(by_preset_name()), before, atol=1e-4)
    # Nor does training resume on another architecture.
    assert resume_conflicts(checkpoint, checkpoint.config, checkpoint.split) == [
        "net.patch_size (24, 24, 64) in the checkpoint, (24, 24, 32) in the small preset now"
    ]
    # Narrower stages: the weights no longer fit the preset.
    monkeypatch.setitem(NET_PRESETS, "small", replace(small, features=(4, 8, 16, 32, 40)))
    assert np.array_equal(probabilities(load_model(tiny_baseline, CPU)), before)
    with pytest.raises(RuntimeError, match="size mismatch"):
        by_preset_name()


def test_clear_one_line_errors(tiny_baseline, tmp_path):
    checkpoint = torch.load(tiny_baseline / "checkpoint_best.pt", weights_only=True)
    del checkpoint["net"]
    torch.save(checkpoint, tmp_path / "no_net.pt")
    with pytest.raises(CordfuseError, match=r"no_net.pt: not a cordfuse checkpoint \(no net\)$"):
        Checkpoint.load(tmp_path / "no_net.pt")
    checkpoint = torch.load(tiny_baseline / "checkpoint_best.pt", weights_only=True)
    checkpoint["net"]["features"] = (4, 8, 16, 32, 40)
    torch.save(checkpoint, tmp_path / "narrow.pt")
    with pytest.raises(
        CordfuseError, match="narrow.pt: checkpoint does not match its configuration"
    ) as error:
        Checkpoint.load(tmp_path / "narrow.pt").build_network()
    assert "\n" not in str(error.value)
    with pytest.raises(CordfuseError, match="missing.pt: unreadable checkpoint"):
        Checkpoint.load(tmp_path / "missing.pt")


class RunsCode:
    """Unpickled, this runs a shell command: what a crafted checkpoint can do to a reader that
    trusts pickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def craft(path, marker):
    torch.save(
        {
            "model": RunsCode(marker),
            "config": {},
            "net": {},
            "sequences": ["T2Sag"],
            "prep": {},
            "cordfuse_version": __version__,
        },
        path,
    )
    return path


def test_the_crafted_file_does_run_code_when_trusted(tmp_path):
    """The control: without ``weights_only``, reading the file runs its command."""
    marker = tmp_path / "MARKER"
    torch.load(craft(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def _study(tmp_path, evil, prepared):
    """The least ``diagnose`` reads: a fold, the prepared data and one run."""
    study = tmp_path / "study"
    (study / "runs" / "mi" / "seed-0").mkdir(parents=True)
    (study / "fold.json").write_text(json.dumps({"train": [], "test": []}))
    (study / "prepared").symlink_to(prepared)
    (study / "runs" / "mi" / "seed-0" / "summary.json").write_text("{}")
    evil.rename(study / "runs" / "mi" / "seed-0" / "checkpoint_best.pt")
    return study


def _resumable(tmp_path, evil, trained):
    """A copy of a training folder whose latest checkpoint was replaced by the crafted file."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    evil.replace(out / "checkpoint_latest.pt")
    return out


SMALL = ["--preset", "small", "--epochs", "1", "--iterations", "2"]
#: For each verb that loads a model, its command line given the crafted file ``evil``, the
#: test's folder, the prepared data, the BIDS cohort and a trained baseline.
VERBS = {
    "predict": lambda evil, tmp, prepared, bids, trained: [
        "predict",
        str(evil),
        "-i",
        str(bids),
        "-o",
        str(tmp / "predicted"),
    ],
    "train --frozen-from": lambda evil, tmp, prepared, bids, trained: [
        "train",
        str(prepared),
        str(tmp / "frozen"),
        "--model",
        "mean-imputation",
        "--variant",
        "frozen-encoder",
        "--frozen-from",
        str(evil),
        *SMALL,
    ],
    "train --anchor": lambda evil, tmp, prepared, bids, trained: [
        "train",
        str(prepared),
        str(tmp / "anchored"),
        "--model",
        "anchored",
        "--anchor",
        str(evil),
        *SMALL,
    ],
    "train --resume": lambda evil, tmp, prepared, bids, trained: [
        "train",
        str(prepared),
        str(_resumable(tmp, evil, trained)),
        "--model",
        "baseline",
        *SMALL,
        "--resume",
    ],
    "analyze-features": lambda evil, tmp, prepared, bids, trained: [
        "analyze-features",
        str(evil),
        str(prepared),
        "-o",
        str(tmp / "features"),
    ],
    "diagnose": lambda evil, tmp, prepared, bids, trained: [
        "diagnose",
        str(_study(tmp, evil, prepared)),
    ],
}


@pytest.mark.parametrize("verb", VERBS)
def test_loading_a_model_runs_no_code(
    verb, tmp_path, prepared_small, synth_root, tiny_baseline, capsys
):
    marker = tmp_path / "MARKER"
    evil = craft(tmp_path / "evil.pt", marker)
    argv = VERBS[verb](evil, tmp_path, prepared_small, synth_root, tiny_baseline)
    assert main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith("cordfuse: error: ") and err.count("\n") == 1, err
    assert "not a cordfuse checkpoint (" in err and "system" in err, err  # the refused call


def test_report_of_a_run_with_a_crafted_checkpoint_runs_no_code(tmp_path, tiny_baseline):
    """``report`` reads a run's log, curves and summary, never unpickles its checkpoints: a
    crafted one beside them changes nothing and runs nothing."""
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    shutil.copytree(tiny_baseline, run)
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
        craft(tmp_path / "evil.pt", marker).replace(run / name)
    assert main(["report", str(run)]) == 0
    assert not marker.exists()
    assert "Training curves" in (run / "report.html").read_text()
