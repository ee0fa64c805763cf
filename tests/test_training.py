"""The trainer (issue 4): resume = straight run, variants, checkpoints, DDP, and it learns."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cordfuse.checkpoint import Checkpoint
from cordfuse.cli import main
from cordfuse.errors import CordfuseError
from cordfuse.preprocess.batch import load_prepared_dataset
from cordfuse.sequences import SEQUENCES
from cordfuse.training.config import TrainConfig
from cordfuse.training.data import load_subjects
from cordfuse.training.trainer import (
    StopTraining,
    build_model,
    train,
    validate,
)


def tiny(**overrides) -> TrainConfig:
    values = dict(
        model="baseline",
        preset="small",
        epochs=3,
        iterations=2,
        batch_size=2,
        seed=3,
        deterministic=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


class TestResume:
    @pytest.mark.parametrize("variant", [None, "feature-aug"])
    def test_interrupted_then_resumed_equals_straight_run(self, prepared_small, tmp_path, variant):
        config = tiny(variant=variant)
        straight = train(prepared_small, tmp_path / "straight", config, progress=False)

        def kill(step):
            if step == 3:  # in the middle of the second epoch
                raise StopTraining

        with pytest.raises(StopTraining):
            train(prepared_small, tmp_path / "resumed", config, stop_hook=kill, progress=False)
        assert Checkpoint.load(tmp_path / "resumed" / "checkpoint_latest.pt").epoch == 0
        # As if the interruption had come between the checkpoint and the log: the log is
        # rebuilt from the checkpoint's history, not appended to.
        (tmp_path / "resumed" / "log.jsonl").write_text("")
        resumed = train(prepared_small, tmp_path / "resumed", config, resume=True, progress=False)
        assert resumed["digest"] == straight["digest"]
        a = Checkpoint.load(tmp_path / "straight" / "checkpoint_latest.pt").model
        b = Checkpoint.load(tmp_path / "resumed" / "checkpoint_latest.pt").model
        assert all(torch.equal(a[k], b[k]) for k in a)

        def log(run):
            lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
            return [
                {k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")}
                for line in lines
            ]

        assert [record["epoch"] for record in log("resumed")] == [1, 2, 3]
        assert json.dumps(log("resumed")) == json.dumps(log("straight"))  # NaN-safe equality

    def test_resume_refuses_another_configuration_or_split(self, prepared_small, tmp_path, capsys):
        out = tmp_path / "run"
        args = [
            "train",
            str(prepared_small),
            str(out),
            "--model",
            "baseline",
            "--preset",
            "small",
            "--epochs",
            "1",
            "--iterations",
            "2",
            "--seed",
            "3",
        ]
        assert main(args) == 0
        capsys.readouterr()
        trained = (out / "checkpoint_latest.pt").read_bytes()
        model = "model 'baseline' in the checkpoint, 'mean-imputation' requested"
        epochs = "epochs 1 in the checkpoint, 2 requested"
        for change, named in (
            (["--model", "mean-imputation"], [model]),
            (["--epochs", "2"], [epochs]),
            (["--epochs", "2", "--model", "mean-imputation"], [model, epochs]),
        ):
            assert main([*args, *change, "--resume"]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"cordfuse: error: {out}: cannot resume: ")
            assert err.count("\n") == 1 and err.count(" in the checkpoint") == len(named)
            assert all(phrase in err for phrase in named), err
        # The prepared data changed (a subject lost its label): another train/val split.
        changed = tmp_path / "prepared"
        shutil.copytree(prepared_small, changed)
        document = json.loads((changed / "dataset.json").read_text())
        next(s for s in document["subjects"] if s["has_label"])["has_label"] = False
        (changed / "dataset.json").write_text(json.dumps(document))
        assert main([*args[:1], str(changed), *args[2:], "--resume"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume: the train/val split" in err and err.count("\n") == 1
        assert (out / "checkpoint_latest.pt").read_bytes() == trained  # nothing was trained
        # The number of data-loading workers changes only the speed: that run resumes (here
        # with nothing left to train).
        assert main([*args, "--workers", "0", "--resume"]) == 0

    def test_other_seed_other_weights(self, prepared_small, tmp_path):
        a = train(prepared_small, tmp_path / "a", tiny(epochs=1), progress=False)
        b = train(prepared_small, tmp_path / "b", tiny(epochs=1, seed=4), progress=False)
        assert a["digest"] != b["digest"]


class TestCheckpointsAndVariants:
    def test_checkpoint_holds_everything_to_predict(self, prepared_small, tmp_path):
        out = tmp_path / "run"
        train(prepared_small, out, tiny(model="mean-imputation", epochs=2), progress=False)
        checkpoint = torch.load(out / "checkpoint_latest.pt", weights_only=True)
        for key in (
            "model",
            "optimizer",
            "scheduler",
            "epoch",
            "rng",
            "config",
            "sequences",
            "normalisation",
            "prep",
            "net",
            "split",
            "cordfuse_version",
        ):
            assert key in checkpoint, key
        assert checkpoint["sequences"] == ["T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE"]
        assert checkpoint["prep"]["spacing"] == 1.0 and checkpoint["prep"]["crop_size"] == 24
        config = TrainConfig.from_dict(checkpoint["config"])
        model = build_model(config)
        model.load_state_dict(checkpoint["model"])
        assert checkpoint["scheduler"]["last_epoch"] == 2
        lines = (out / "log.jsonl").read_text().splitlines()
        assert len(lines) == 2 and json.loads(lines[1])["lr"] == pytest.approx(0.0)
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "checkpoint_best.pt").exists()

    def test_frozen_encoder_keeps_the_baseline_t2sag_encoder(self, prepared_small, tmp_path):
        train(prepared_small, tmp_path / "base", tiny(epochs=1), progress=False)
        frozen = tiny(
            model="mean-imputation",
            variant="frozen-encoder",
            epochs=1,
            frozen_from=str(tmp_path / "base"),
        )
        train(prepared_small, tmp_path / "frozen", frozen, progress=False)
        base = Checkpoint.load(tmp_path / "base").model
        after = Checkpoint.load(tmp_path / "frozen").model
        keys = [k for k in base if k.startswith("encoders.T2Sag.")]
        assert keys and all(torch.equal(base[k], after[k]) for k in keys)
        init = build_model(Checkpoint.load(tmp_path / "frozen").config)
        decoder = [k for k in after if k.startswith("decoder.stages")]
        assert any(not torch.equal(after[k], init.state_dict()[k]) for k in decoder)

    def test_specific_model_trains_on_subjects_with_all_its_sequences(
        self, prepared_small, tmp_path
    ):
        document, _ = load_prepared_dataset(prepared_small)
        with_stir = {s["id"] for s in document["subjects"] if "STIR" in s["sequences"]}
        config = tiny(model="specific", sequences=("T2Sag", "STIR"), epochs=1)
        summary = train(prepared_small, tmp_path / "specific", config, progress=False)
        assert set(summary["train"]) | set(summary["val"]) == with_stir
        assert Checkpoint.load(tmp_path / "specific").sequences == ["T2Sag", "STIR"]

    def test_distillation_variant_trains(self, prepared_small, tmp_path):
        config = tiny(model="mean-imputation", variant="distillation", epochs=1)
        summary = train(prepared_small, tmp_path / "distil", config, progress=False)
        assert np.isfinite(json.loads((tmp_path / "distil/log.jsonl").read_text())["train_loss"])
        assert Checkpoint.load(tmp_path / "distil").config.variant == "distillation"
        assert summary["digest"]

    def test_bad_configurations_are_clear_errors(self, prepared_small, tmp_path, capsys):
        with pytest.raises(CordfuseError, match="needs --frozen-from"):
            TrainConfig(model="mean-imputation", variant="frozen-encoder")
        with pytest.raises(CordfuseError, match="applies to the T2Sag baseline"):
            TrainConfig(model="mean-imputation", variant="feature-aug")
        with pytest.raises(CordfuseError, match="prepare with --preset paper"):
            train(prepared_small, tmp_path / "x", TrainConfig(preset="paper", epochs=1))
        assert main(["train", str(prepared_small), str(tmp_path / "y"), "--model", "specific"]) == 2
        assert "needs --sequences" in capsys.readouterr().err
        (tmp_path / "junk.pt").write_bytes(b"junk")
        with pytest.raises(CordfuseError, match="junk.pt: not a cordfuse checkpoint"):
            Checkpoint.load(tmp_path / "junk.pt")


def test_each_preset_has_its_schedule_and_the_study_agrees():
    """``train --preset small`` trains the study's CPU budget, not the paper's 1000 x 250."""
    from cordfuse.nn.networks import NET_PRESETS
    from cordfuse.study.config import PRESET_SCHEDULES
    from cordfuse.training.config import SCHEDULES

    assert list(SCHEDULES) == list(NET_PRESETS) == list(PRESET_SCHEDULES)
    assert {k: (v["epochs"], v["iterations"]) for k, v in PRESET_SCHEDULES.items()} == SCHEDULES
    assert (TrainConfig().epochs, TrainConfig().iterations) == (1000, 250)
    small = TrainConfig(preset="small")
    assert (small.epochs, small.iterations) == (100, 25)
    assert TrainConfig(preset="small", epochs=3).schedule == (3, 25)  # overrides kept
    assert TrainConfig.from_dict(small.to_dict()) == small
    with pytest.raises(CordfuseError):
        TrainConfig(preset="small", iterations=0)


def test_each_preset_has_its_optimizer_and_old_checkpoints_stay_sgd():
    """The paper's networks train with nnU-Net's SGD, the small preset with AdamW; a learning
    rate left out is the chosen optimizer's; a configuration stored before the optimizer was a
    setting was trained with SGD, and reads back so."""
    import torch

    from cordfuse.training.trainer import build_optimizer

    assert (TrainConfig().optimizer, TrainConfig().learning_rate) == ("sgd", 0.01)
    small = TrainConfig(preset="small")
    assert (small.optimizer, small.learning_rate) == ("adamw", 3e-3)
    assert TrainConfig(preset="small", optimizer="sgd").learning_rate == 0.01
    assert TrainConfig(preset="small", learning_rate=1e-4).learning_rate == 1e-4
    old = small.to_dict()
    del old["optimizer"]
    old["learning_rate"] = 0.01
    assert TrainConfig.from_dict(old).optimizer == "sgd"
    assert TrainConfig.from_dict({"preset": "small"}).optimizer == "adamw"  # a study's
    assert TrainConfig.from_dict(small.to_dict()) == small
    with pytest.raises(CordfuseError, match="unknown optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(CordfuseError, match="learning rate must be positive"):
        TrainConfig(learning_rate=0.0)
    weights = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(weights, small)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 3e-3
    sgd = build_optimizer(weights, TrainConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert sgd.defaults["momentum"] == 0.99


def test_train_preset_small_left_alone_trains_the_small_schedule(monkeypatch, tmp_path, capsys):
    """``cordfuse train --preset small`` without ``--epochs`` hands the trainer 100 x 25."""
    configs = []

    def fake_train(prepared, out, config, **options):
        configs.append(config)
        return {"best_val_dice": 0.5, "seconds": 1.0}

    monkeypatch.setattr("cordfuse.training.trainer.train", fake_train)
    assert main(["train", str(tmp_path), str(tmp_path / "run"), "--preset", "small"]) == 0
    assert "for 100 epochs" in capsys.readouterr().out
    assert (
        main(["train", str(tmp_path), str(tmp_path / "r2"), "--preset", "small", "--epochs", "7"])
        == 0
    )
    assert [c.schedule for c in configs] == [(100, 25), (7, 25)]
    assert [c.optimizer for c in configs] == ["adamw", "adamw"]
    args = ["train", str(tmp_path), str(tmp_path / "r3"), "--optimizer", "sgd"]
    assert main([*args, "--learning-rate", "0.02"]) == 0
    assert (configs[-1].optimizer, configs[-1].learning_rate) == ("sgd", 0.02)


def test_sequence_dropout_hides_other_sequences_never_t2sag(prepared_small):
    from cordfuse.training.data import PatchDataset

    _, paths = load_prepared_dataset(prepared_small)
    subjects = load_subjects(paths, list(SEQUENCES))
    many = [s for s in subjects if s.available.sum() >= 2]
    assert many, "the fixture cohort needs a subject with several sequences"
    plain = PatchDataset(many, (24, 24, 64), seed=0, foreground_fraction=0.3, augment=False)
    dropped = PatchDataset(
        many, (24, 24, 64), seed=0, foreground_fraction=0.3, augment=False, sequence_dropout=0.5
    )
    hidden = kept = 0
    for n in range(200):
        image, label, available = dropped[n]
        full_image, full_label, full_available = plain[n]
        assert available[0] and bool((available <= full_available).all())
        assert torch.equal(label, full_label)  # the same patch, only sequences hidden
        for k in range(1, len(SEQUENCES)):
            if full_available[k] and not available[k]:
                hidden += 1
                assert torch.count_nonzero(image[k]) == 0
            elif full_available[k]:
                kept += 1
                assert torch.equal(image[k], full_image[k])
        assert torch.equal(image[0], full_image[0])
    assert 0.4 < hidden / (hidden + kept) < 0.6
    with pytest.raises(CordfuseError, match="accepts missing sequences"):
        TrainConfig(model="baseline", sequence_dropout=0.5)
    with pytest.raises(CordfuseError, match="probability"):
        TrainConfig(sequence_dropout=1.0)
    with pytest.raises(CordfuseError, match="multi-sequence model"):
        TrainConfig(model="baseline", fusion="all-levels")


def test_reference_dropout_hides_t2sag_only_where_the_others_cover_the_patch(prepared_small):
    from cordfuse.training.data import REFERENCE_DROP_COVER, PatchDataset

    _, paths = load_prepared_dataset(prepared_small)
    subjects = load_subjects(paths, list(SEQUENCES))
    plain = PatchDataset(subjects, (24, 24, 64), seed=1, foreground_fraction=0.5, augment=False)
    dropped = PatchDataset(
        subjects,
        (24, 24, 64),
        seed=1,
        foreground_fraction=0.5,
        augment=False,
        reference_dropout=0.6,
    )
    hidden = eligible = 0
    for n in range(300):
        image, label, available = dropped[n]
        full_image, _, full_available = plain[n]
        others = (full_image[1:][full_available[1:]] != 0).any(dim=0)
        covered = bool(others.float().mean() >= REFERENCE_DROP_COVER) and bool(
            others[label > 0].all()
        )
        eligible += covered
        if not available[0]:
            hidden += 1
            assert covered and torch.count_nonzero(image[0]) == 0
            assert torch.equal(available[1:], full_available[1:])  # the others stay
        else:
            assert torch.equal(image, full_image)
    assert eligible > 20 and 0.45 < hidden / eligible < 0.75
    with pytest.raises(CordfuseError, match="--fusion all-levels"):
        TrainConfig(reference_dropout=0.3)


def test_all_level_fusion_trains_and_predicts(prepared_small, tmp_path):
    from cordfuse.inference import load_model

    config = tiny(
        model="mean-imputation",
        fusion="all-levels",
        sequence_dropout=0.3,
        reference_dropout=0.5,
        epochs=1,
    )
    train(prepared_small, tmp_path / "run", config, progress=False)
    model = load_model(tmp_path / "run", torch.device("cpu"))
    assert model.config.fusion == "all-levels" and model.model.skip_fusions is not None


def test_ddp_trains_every_model_and_variant_and_resumes(prepared_small, tmp_path):
    """Every model and variant under torchrun on 2 gloo processes: no unused-parameter error
    (the unused deep-supervision heads are gone), ranks bit-identical, and an interrupted
    Mean Imputation or anchored run resumed under DDP equals the straight one."""
    torchrun = Path(sys.executable).with_name("torchrun")
    script = Path(__file__).with_name("ddp_every_model.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(script.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            str(script),
            str(prepared_small),
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    runs = json.loads(line.removeprefix("RESULT "))
    assert set(runs) == {
        "baseline",
        "feature-aug",
        "specific",
        "mean-imputation",
        "frozen-encoder",
        "distillation",
        "sequence-supervision",
        "early-fusion",
        "anchored",
        "anchored-all-levels",
        "mean-imputation-straight",
        "mean-imputation-resumed",
        "anchored-straight",
        "anchored-resumed",
    }
    assert all(run["in_sync"] is True for run in runs.values()), runs
    for name in ("mean-imputation", "anchored"):
        assert runs[f"{name}-resumed"]["digest"] == runs[f"{name}-straight"]["digest"]
    assert len({run["digest"] for run in runs.values()}) == 12  # all differ but the resumed


def test_blob_loss_joins_the_loss_at_full_resolution(prepared_small, tmp_path, monkeypatch):
    """``--blob-loss W`` adds the lesion-wise loss on the finest output, once a step; 0 leaves
    the paper's loss as it was."""
    from cordfuse.training import trainer as trainer_module

    shapes = []
    real = trainer_module.blob_loss

    def spy(logits, labels):
        shapes.append((tuple(logits.shape[2:]), tuple(labels.shape[1:])))
        return real(logits, labels)

    monkeypatch.setattr(trainer_module, "blob_loss", spy)
    plain = train(prepared_small, tmp_path / "plain", tiny(epochs=1), progress=False)
    assert shapes == []
    blob = train(prepared_small, tmp_path / "blob", tiny(epochs=1, blob_loss=1.0), progress=False)
    assert len(shapes) == 2 and all(out == label for out, label in shapes), shapes
    assert blob["digest"] != plain["digest"]


def test_small_preset_learns_on_cpu(learned):
    """A few minutes of CPU training beat an untrained net by a clear margin."""
    config, summary = learned["config"], learned["summary"]
    _, paths = load_prepared_dataset(learned["prepared"])
    val = load_subjects(
        [p for p in paths if p.parent.name in summary["val"]], ["T2Sag"], coverage=True
    )
    torch.manual_seed(0)
    untrained = validate(build_model(config), val, config, torch.device("cpu"), None)
    assert untrained < 0.05
    assert summary["best_val_dice"] > untrained + 0.15, summary["best_val_dice"]


class TestAugmentation:
    """nnU-Net-strength augmentation (paper preset): ranges and probabilities over many draws,
    one spatial transform for all sequences and the label, zeros kept where nothing was seen."""

    @staticmethod
    def patch():
        rng = np.random.default_rng(0)
        base = rng.normal(size=(32, 32, 40)).astype(np.float32) + 3.0
        image = np.stack([base] * 4)  # identical sequences: any spatial difference would show
        image[:, :, :, :6] = 0.0  # outside the field of view at the bottom of the patch
        image[2] = 0.0  # a missing sequence
        label = np.zeros((32, 32, 40), np.uint8)
        label[12:20, 13:18, 16:26] = 1
        return image, label, np.array([True, True, False, True])

    @pytest.mark.slow
    def test_ranges_and_probabilities_of_the_paper_recipe(self):
        from cordfuse.training.data import NNUNET, augment_patch

        image, label, available = self.patch()
        draws = []
        for n in range(400):
            drawn = {}
            augment_patch(image, label, available, NNUNET, np.random.default_rng(n), drawn)
            draws.append(drawn)
        rotated = [d["angles_deg"] for d in draws if np.any(d["angles_deg"])]
        zoomed = [d["zoom"] for d in draws if d["zoom"] != 1.0]
        assert 0.14 < len(rotated) / 400 < 0.26 and 0.14 < len(zoomed) / 400 < 0.26
        angles = np.abs(np.array(rotated))
        assert angles[:, 2].max() > 25 and angles[:, 2].max() <= 30  # about S-I: +-30
        assert angles[:, :2].max() > 12 and angles[:, :2].max() <= 15  # in-plane axes: +-15
        assert min(zoomed) < 0.8 and max(zoomed) > 1.3 and 0.7 <= min(zoomed) <= max(zoomed) <= 1.4
        for axis in (0, 2):
            assert 0.42 < np.mean([axis in d["mirror"] for d in draws]) < 0.58
        assert not any(1 in d["mirror"] for d in draws)  # never anterior-posterior
        per_sequence = [d[i] for d in draws for i in (0, 1, 3)]
        for key, p, lo, hi in (
            ("gamma", 0.3, 0.7, 1.5),
            ("brightness", 0.15, 0.75, 1.25),
            ("contrast", 0.15, 0.75, 1.25),
            ("noise_variance", 0.1, 0, 0.1),
            ("gamma_inverted", 0.1, 0.7, 1.5),
            ("low_resolution", 0.125, 0.5, 1.0),
        ):
            values = [d[key] for d in per_sequence if key in d]
            assert abs(len(values) / len(per_sequence) - p) < 0.05, (key, len(values))
            assert lo <= min(values) and max(values) <= hi, key
        assert all(2 not in d for d in draws)  # nothing drawn for the missing sequence

    def test_one_spatial_transform_and_zeros_kept(self):
        from dataclasses import replace

        from cordfuse.training.data import NNUNET, augment_patch

        image, label, available = self.patch()
        spatial_only = replace(
            NNUNET,
            p_noise=0,
            p_blur=0,
            p_brightness=0,
            p_contrast=0,
            p_low_resolution=0,
            p_gamma=0,
            p_gamma_inverted=0,
            p_rotation=1.0,
            p_scaling=1.0,
        )
        full = replace(NNUNET, p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_gamma=1.0)
        for n in range(20):
            out, lab = augment_patch(
                image, label, available, spatial_only, np.random.default_rng(n)
            )
            assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[3])
            assert (out[2] == 0).all()
            # The label moved with the image: the lesion block's texture is where the label is.
            moved, _ = augment_patch(
                np.where(label > 0, 50.0, 1.0)[None].astype(np.float32),
                label,
                np.array([True]),
                spatial_only,
                np.random.default_rng(n),
            )
            assert np.mean(moved[0][lab > 0] > 25) > 0.9
            noisy, _ = augment_patch(image, label, available, full, np.random.default_rng(n))
            outside = out[0] == 0  # not seen after the spatial transform
            assert (noisy[:, outside][[0, 1, 3]] == 0).all() and (noisy[2] == 0).all()
            assert (noisy[0][~outside] != 0).mean() > 0.99

    @staticmethod
    def lesion_contrast_only(**changes):
        from dataclasses import replace

        from cordfuse.training.data import LIGHT

        return replace(
            LIGHT,
            p_rotation=0,
            p_scaling=0,
            mirror_axes=(),
            p_noise=0,
            p_blur=0,
            p_brightness=0,
            p_contrast=0,
            p_gamma=0,
            **({"p_lesion_contrast": 1.0} | changes),
        )

    @staticmethod
    def assert_off_in_presets_and_refused(
        monkeypatch, sample, transform: str, option: str, bad: float, field: str = ""
    ):
        """An optional transform: the presets never draw it (so their random numbers stay as
        they were), and its option is refused without augmentation and outside [0, 1]."""
        from cordfuse.training import data
        from cordfuse.training.config import TrainConfig

        def drawn_from(*args):
            raise AssertionError(f"{transform} drawn")

        monkeypatch.setattr(data, transform, drawn_from)
        for preset in data.PRESET_AUGMENTATION.values():
            assert getattr(preset, field or f"p_{option}") == 0.0
            data.augment_patch(*sample, preset, np.random.default_rng(0))
        with pytest.raises(CordfuseError, match="not with --no-augment"):
            TrainConfig(preset="small", augment=False, **{option: 0.3})
        with pytest.raises(CordfuseError, match="probability"):
            TrainConfig(preset="small", **{option: bad})

    def test_lesion_contrast_scales_each_lesion_over_the_cord_and_nothing_else(self):
        from scipy import ndimage

        from cordfuse.training.data import augment_patch

        image, label, available = self.patch()
        label[3:6, 3:6, 30:33] = 1  # a second lesion, brighter on sequence 0
        image[0][3:6, 3:6, 30:33] += 4.0
        lesions = [ndimage.label(label)[0] == c for c in (1, 2)]
        shell = ndimage.binary_dilation(label > 0) & (label == 0)
        far = ~ndimage.binary_dilation(label > 0, iterations=4)
        factors = []
        for n in range(30):
            drawn = {}
            out, lab = augment_patch(
                image,
                label,
                available,
                self.lesion_contrast_only(),
                np.random.default_rng(n),
                drawn,
            )
            np.testing.assert_array_equal(lab, label)
            for i in (0, 1, 3):  # each sequence its own factor
                factor = drawn[i]["lesion_contrast"]
                for lesion in lesions:
                    # the lesion's mean over the cord (0) scaled; its texture and noise kept
                    mean = image[i][lesion].mean()
                    added = out[i][lesion] - image[i][lesion]
                    np.testing.assert_allclose(added, (factor - 1) * mean, rtol=1e-4)
                    assert out[i][lesion].mean() == pytest.approx(factor * mean, rel=1e-4)
                # a soft edge: the shell gets part of what its lesion got, never more
                brightest = max(image[i][lesion].mean() for lesion in lesions)
                edge = (out[i][shell] - image[i][shell]) * np.sign(factor - 1)
                assert (edge > 0).all() and (edge < abs(factor - 1) * brightest).all()
                np.testing.assert_array_equal(out[i][far], image[i][far])
                factors.append(factor)
            assert 2 not in drawn and (out[2] == 0).all()
        assert 0.5 <= min(factors) < 0.7 and 2.4 < max(factors) <= 3.0
        assert len(set(factors)) == len(factors)

    def test_lesion_contrast_keeps_coverage_and_draws_nothing_when_off(self, monkeypatch):
        from cordfuse.training.data import augment_patch

        image, label, available = self.patch()
        label[12:20, 13:18, 2:10] = 1  # a lesion half outside the field of view (z < 6)
        covered = (image != 0).astype(np.float32)
        with_coverage = np.concatenate([image, covered])
        drawn = {}
        out, _ = augment_patch(
            with_coverage,
            label,
            available,
            self.lesion_contrast_only(),
            np.random.default_rng(0),
            drawn,
        )
        np.testing.assert_array_equal(out[4:], covered)  # the coverage channels untouched
        assert (out[:4][covered == 0] == 0).all()  # nothing added where nothing was seen
        # the lesion's mean is taken over covered voxels: the uncovered zeros do not dilute it
        inside = (label > 0) & (covered[0] > 0)
        factor = drawn[0]["lesion_contrast"]
        assert out[0][inside].mean() == pytest.approx(factor * image[0][inside].mean(), rel=1e-4)

        self.assert_off_in_presets_and_refused(
            monkeypatch, (image, label, available), "_lesion_contrast", "lesion_contrast", 1.5
        )
        no_lesion = np.zeros_like(label)  # nothing to scale: not drawn either
        augment_patch(
            image, no_lesion, available, self.lesion_contrast_only(), np.random.default_rng(0)
        )

    def test_fov_truncation_clears_one_end_of_every_channel_and_the_label(self, monkeypatch):
        from cordfuse.training.data import augment_patch

        image, label, available = self.patch()
        label[12:20, 13:18, 30:38] = 1  # a second lesion near the superior end
        covered = (image != 0).astype(np.float32)
        with_coverage = np.concatenate([image, covered])
        truncating = self.lesion_contrast_only(p_lesion_contrast=0.0, p_fov_truncation=1.0)
        ends = set()
        for seed in range(12):
            drawn = {}
            out, out_label = augment_patch(
                with_coverage, label, available, truncating, np.random.default_rng(seed), drawn
            )
            cut, end = drawn["fov_truncation"]["slices"], drawn["fov_truncation"]["end"]
            ends.add(end)
            assert 2 <= cut <= 20, "5-50 % of the 40 slices"
            gone = np.s_[..., :cut] if end == "inferior" else np.s_[..., 40 - cut :]
            kept = np.s_[..., cut:] if end == "inferior" else np.s_[..., : 40 - cut]
            # images, coverage masks and label: nothing past the cut, the rest as it was
            assert not out[gone].any() and not out_label[gone].any()
            np.testing.assert_array_equal(out[kept], with_coverage[kept])
            np.testing.assert_array_equal(out_label[kept], label[kept])
        assert ends == {"inferior", "superior"}

        self.assert_off_in_presets_and_refused(
            monkeypatch, (image, label, available), "_truncate_fov", "fov_truncation", -0.1
        )

    def test_painted_lesion_is_small_inside_the_cord_and_as_bright_as_drawn(self, monkeypatch):
        """One lesion in the cord (near the crop's centre), in the label and in every available
        sequence, brighter by the drawn multiple of the cord's signal where lesions are
        hyperintense and darker by it where they are hypointense; nothing else changes."""
        from dataclasses import replace

        from cordfuse.training.config import TrainConfig
        from cordfuse.training.data import augment_patch, lesion_signs

        sequences = ["T2Sag", "STIR", "T2starAx", "MP2RAGE"]
        available = np.array([True, True, False, True])
        ii, jj = np.ogrid[:24, :24]
        cord = np.broadcast_to(
            (((ii - 11.5) ** 2 + (jj - 11.5) ** 2) <= 3.5**2)[..., None], (24, 24, 40)
        )
        levels = np.array([0.3, -0.2, 0.0, 0.5], np.float32)  # each cord's z-score
        image = np.zeros((8, 24, 24, 40), np.float32)
        for i in np.flatnonzero(available):
            image[i] = np.where(cord, levels[i], 8.0)  # a cord in bright CSF
            image[4 + i] = 1.0
        image[4:, :, :, :6] = 0.0  # outside the field of view at the bottom of the patch
        image[:4, :, :, :6] = 0.0
        seen = cord.copy()  # the cord where the sequences cover it
        seen[..., :6] = False
        label = np.zeros((24, 24, 40), np.uint8)
        signal = np.array([5.0, 4.0, 0.0, 6.0], np.float32)  # mean over spread of each core
        painting = self.lesion_contrast_only(
            p_lesion_contrast=0.0, p_paint=1.0, lesion_signs=lesion_signs(sequences)
        )
        assert painting.lesion_signs == (1, 1, 1, -1)
        for seed in range(10):
            drawn = {}
            out, out_label = augment_patch(
                image, label, available, painting, np.random.default_rng(seed), drawn, signal=signal
            )
            paint = drawn["paint"]
            assert 2.0 <= paint["length_mm"] <= 8.0 and 1.5 <= paint["width_mm"] <= 3.5
            lesion = np.argwhere(out_label > 0)
            assert 0 < len(lesion) <= 60, "a small lesion"
            assert seen[out_label > 0].all(), "inside the cord, where T2Sag covers it"
            assert (np.abs(lesion[:, :2] - 11.5) <= 1.0 + paint["width_mm"] / 2 + 0.5).all()
            assert abs(lesion[:, 2].mean() - paint["slice"]) <= 1.0
            assert set(paint["contrast"]) == {0, 1, 3}  # the available sequences
            fractions = []
            for i, factor in paint["contrast"].items():
                hyper = painting.lesion_signs[i] > 0
                assert 1.25 <= (factor if hyper else 1 / factor) <= 3.0
                # in the cord, the signal over the cord's own is 1 + (factor - 1) x each
                # voxel's lesion fraction (the cord's signal: its mean plus its z-score)
                ratio = (out[i][seen] + signal[i]) / (signal[i] + levels[i])
                fractions.append((ratio - 1) / (factor - 1))
            for fraction in fractions:  # the same lesion in every sequence
                np.testing.assert_allclose(fraction, fractions[0], atol=1e-5)
            assert fractions[0].min() >= -1e-5 and fractions[0].max() <= 1 + 1e-5
            np.testing.assert_array_equal(out_label[seen] > 0, fractions[0] >= 0.5 - 1e-5)
            np.testing.assert_array_equal(out[4:], image[4:])  # the coverage masks
            far = np.ones(label.shape, bool)
            far[
                np.ix_(
                    *[
                        np.arange(max(lo - 3, 0), hi + 4)
                        for lo, hi in zip(lesion.min(0), lesion.max(0), strict=True)
                    ]
                )
            ] = False
            np.testing.assert_array_equal(out[:, far], image[:, far])
        # A tilted sample: painted on the straight patch, the lesion turns with the cord (here
        # STIR's coverage is the cord, so the spatial transform moves it as it moves the cord).
        tilted = image.copy()
        tilted[5] = cord
        turning = replace(painting, rotation_deg=(15.0, 15.0, 0.0), p_rotation=1.0)
        inside = []
        for seed in range(20):
            out, out_label = augment_patch(
                tilted, label, available, turning, np.random.default_rng(seed), signal=signal
            )
            inside.append(out[5][out_label > 0].mean())
        assert min(inside) >= 0.9, inside
        with pytest.raises(ValueError, match="cord signal and polarity"):
            augment_patch(image, label, available, painting, np.random.default_rng(0))

        self.assert_off_in_presets_and_refused(
            monkeypatch, (image, label, available), "_paint", "paint_lesions", 1.5, "p_paint"
        )
        with pytest.raises(CordfuseError, match="a second time"):
            TrainConfig(preset="small", paint_lesions=0.3, lesion_contrast=0.5)


class TestDataPath:
    def test_workers_persist_and_draw_the_same_patches(self, prepared_small, tmp_path):
        """Worker processes (persistent over epochs) give the run bit for bit: sample n is a
        function of (seed, n) only."""
        inline = train(
            prepared_small, tmp_path / "inline", tiny(epochs=2, num_workers=0), progress=False
        )
        workers = train(
            prepared_small, tmp_path / "workers", tiny(epochs=2, num_workers=2), progress=False
        )
        assert workers["digest"] == inline["digest"]

    def test_validation_every_n_epochs_and_at_the_end(self, prepared_small, tmp_path):
        summary = train(
            prepared_small, tmp_path / "run", tiny(epochs=3, val_every=2), progress=False
        )
        log = [
            json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
        ]
        validated = [not np.isnan(r["val_dice"]) for r in log]
        assert validated == [False, True, True]
        assert all(r["val_seconds"] >= 0 for r in log) and summary["best_val_dice"] is not None
        assert Checkpoint.load(tmp_path / "run").epoch in (1, 2)  # best: a validated epoch

    def test_auto_workers(self):
        from cordfuse.training.trainer import data_workers

        assert data_workers(tiny(), torch.device("cpu")) == 0
        assert 1 <= data_workers(tiny(), torch.device("cuda")) <= 8
        assert data_workers(tiny(num_workers=3), torch.device("cuda")) == 3


def test_compile_option_wraps_the_training_step(prepared_small, tmp_path, monkeypatch):
    """``train --compile`` hands the training network to torch.compile (checked with a stand-in:
    compiling needs a compiler toolchain, and pays off on CUDA only)."""
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = train(prepared_small, tmp_path / "plain", tiny(epochs=1), progress=False)
    assert compiled == []
    again = train(
        prepared_small, tmp_path / "compiled", tiny(epochs=1, compile=True), progress=False
    )
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert again["digest"] == plain["digest"]


class TestMultiSequenceModels:
    """The models built to beat T2Sag alone (issue 21) train, resume and load like the others."""

    def test_anchored_keeps_its_anchor_and_resumes(self, prepared_small, tmp_path):
        from cordfuse.inference import load_model
        from cordfuse.nn.sliding import predict_probabilities
        from cordfuse.preprocess.pipeline import PreparedSubject
        from cordfuse.training.data import normalise

        train(prepared_small, tmp_path / "anchor", tiny(epochs=1), progress=False)
        config = tiny(
            model="anchored", anchor=str(tmp_path / "anchor"), sequence_dropout=0.25, epochs=2
        )
        straight = train(prepared_small, tmp_path / "straight", config, progress=False)

        def kill(step):
            if step == 3:
                raise StopTraining

        with pytest.raises(StopTraining):
            train(prepared_small, tmp_path / "resumed", config, stop_hook=kill, progress=False)
        resumed = train(prepared_small, tmp_path / "resumed", config, resume=True, progress=False)
        assert resumed["digest"] == straight["digest"]
        best = Checkpoint.load(tmp_path / "straight" / "checkpoint_best.pt")
        assert best.epoch == 1, "an anchored model's best checkpoint is its latest"
        # One file a user can move: the anchor's weights are in the anchored checkpoint,
        # unchanged by training, and the anchor's folder is not needed to load it.
        anchor = Checkpoint.load(tmp_path / "anchor").model
        anchored = Checkpoint.load(tmp_path / "straight").model
        assert all(torch.equal(anchored[f"anchor.{k}"], v) for k, v in anchor.items())
        shutil.rmtree(tmp_path / "anchor")
        model = load_model(tmp_path / "straight", torch.device("cpu"))
        assert type(model.model).__name__ == "AnchoredNet" and model.accepts_missing
        # With T2Sag alone its probabilities are the anchor's, bit for bit.
        _, paths = load_prepared_dataset(prepared_small)
        prepared = PreparedSubject.load(paths[0])
        images, available = normalise(prepared, model.sequences, coverage=True)
        only = available.copy()
        only[1:] = False
        alone = predict_probabilities(model.model, images, only, patch_z=64)
        anchor_net = model.model.anchor
        expected = predict_probabilities(anchor_net, images[[0, 6]], only[:1], patch_z=64)
        assert np.array_equal(alone, expected)

    def test_anchor_must_be_a_t2sag_only_model_of_the_same_preset(self, prepared_small, tmp_path):
        train(prepared_small, tmp_path / "mi", tiny(model="mean-imputation", epochs=1))
        with pytest.raises(CordfuseError, match="an anchor is a T2Sag-only baseline"):
            train(
                prepared_small, tmp_path / "a", tiny(model="anchored", anchor=str(tmp_path / "mi"))
            )
        with pytest.raises(CordfuseError, match="--anchor RUN goes with --model anchored"):
            tiny(model="anchored")
        with pytest.raises(CordfuseError, match="--anchor RUN goes with --model anchored"):
            tiny(model="early-fusion", anchor=str(tmp_path / "mi"))

    def test_early_fusion_trains_and_predicts_any_subset(self, prepared_small, tmp_path):
        from cordfuse.inference import load_model, predict_prepared
        from cordfuse.preprocess.pipeline import PreparedSubject

        config = tiny(model="early-fusion", sequence_dropout=0.5, epochs=1)
        train(prepared_small, tmp_path / "ef", config, progress=False)
        model = load_model(tmp_path / "ef", torch.device("cpu"))
        assert model.net.coverage_input and model.accepts_missing
        _, paths = load_prepared_dataset(prepared_small)
        prepared = PreparedSubject.load(paths[0], native=True)
        alone = predict_prepared(prepared, [model], sequences=["T2Sag"])
        every = predict_prepared(prepared, [model])
        assert alone.sequences == ["T2Sag"] and len(every.sequences) > 1
        assert not np.array_equal(alone.probabilities, every.probabilities)


def test_validation_dice_is_pooled_so_predicting_nothing_scores_zero():
    """A lesion-free validation subject scores 1 for an empty prediction; averaged per subject,
    a model that predicts nothing (the first epochs' plateau) looked like a good checkpoint."""
    from cordfuse.nn.networks import NET_PRESETS, CordNet
    from cordfuse.training.data import SubjectArrays

    net = CordNet(NET_PRESETS["small"], ["T2Sag"])
    for head in net.decoder.seg_layers[net.unused_heads :]:
        torch.nn.init.zeros_(head.weight)
        head.bias.data = torch.tensor([10.0, -10.0])  # background everywhere
    images = np.zeros((2, 24, 24, 64), np.float32)
    images[1] = 1.0
    lesion = np.zeros((24, 24, 64), np.uint8)
    lesion[10:13, 10:13, 30:34] = 1
    subjects = [
        SubjectArrays(name, None, images, np.array([True]), label, np.argwhere(label))
        for name, label in (("with", lesion), ("without", np.zeros_like(lesion)))
    ]
    config = tiny()
    assert validate(net, subjects, config, "cpu", None) == 0.0
    head = net.decoder.seg_layers[-1]
    head.bias.data = torch.tensor([-10.0, 10.0])  # lesion everywhere
    expected = 2 * lesion.sum() / (2 * lesion.size + lesion.sum())
    assert validate(net, subjects, config, "cpu", None) == pytest.approx(expected)


def test_resumed_adamw_moments_follow_their_weights_layout():
    """A run's contiguous AdamW state (a GPU run) resumed into channels-last weights (a CPU run):
    the fused kernel must get each moment in its weight's layout, or it updates the weights with
    each other's moments without an error."""
    from cordfuse.training.trainer import match_state_layout

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, 6)

    def steps(conv, optimizer, n):
        for _ in range(n):
            optimizer.zero_grad()
            (conv(x) ** 2).mean().backward()
            optimizer.step()

    first = torch.nn.Conv3d(3, 4, 3)
    optimizer = torch.optim.AdamW(first.parameters(), lr=0.01, fused=True)
    steps(first, optimizer, 3)
    saved_weights = copy.deepcopy(first.state_dict())
    saved_state = copy.deepcopy(optimizer.state_dict())
    steps(first, optimizer, 2)  # the run without interruption

    results = {}
    for matched in (False, True):
        resumed = torch.nn.Conv3d(3, 4, 3)
        resumed.load_state_dict(saved_weights)
        resumed.to(memory_format=torch.channels_last_3d)
        again = torch.optim.AdamW(resumed.parameters(), lr=0.01, fused=True)
        again.load_state_dict(copy.deepcopy(saved_state))  # loading may alias the tensors
        if matched:
            match_state_layout(again)
        steps(resumed, again, 2)
        results[matched] = (resumed.weight - first.weight).abs().max().item()
    assert results[True] < 1e-6
    assert results[False] > 1e-4  # what the resumed run did before
