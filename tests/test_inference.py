"""Inference (issue 5): exact way back, sequence subsets, ensembles, TTA, outputs, bad input."""

from __future__ import annotations

import itertools
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from cordfuse.checkpoint import Checkpoint
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.derivatives import derivative_masks, find_prediction, find_slab_prediction
from cordfuse.errors import CordfuseError
from cordfuse.inference import (
    RESULT_OPTIONS,
    finish_prediction,
    finished,
    load_models,
    predict_dataset,
    predict_options,
    predict_prepared,
    predict_subject,
    record_path,
    restrict_subject,
)
from cordfuse.io import read_volume
from cordfuse.nn.networks import NET_PRESETS, CordNet
from cordfuse.nn.sliding import predict_probabilities
from cordfuse.preprocess.pipeline import PRESETS, load_sequence, prepare_subject
from cordfuse.training.config import TrainConfig
from cordfuse.training.trainer import train

CPU = torch.device("cpu")


def dice(a, b) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * (a & b).sum() / total


@pytest.fixture(scope="session")
def tiny_models(prepared_small, tmp_path_factory):
    """Briefly trained small-preset models: MI (two seeds), baseline, specific T2Sag+STIR."""
    root = tmp_path_factory.mktemp("tiny_models")
    prepared = prepared_small
    runs = {}
    for name, values in {
        "mi0": dict(model="mean-imputation", seed=0),
        "mi1": dict(model="mean-imputation", seed=1),
        "baseline": dict(model="baseline", seed=0),
        "specific": dict(model="specific", sequences=("T2Sag", "STIR"), seed=0),
    }.items():
        config = TrainConfig(preset="small", epochs=1, iterations=1, **values)
        train(prepared, root / name, config, progress=False)
        runs[name] = root / name
    return runs


@pytest.mark.slow
def test_oracle_round_trip_reproduces_native_truth(synth_root):
    """Feed the ground-truth crop as probabilities through predict's back-mapping."""
    for subject in discover(synth_root).subjects:
        prepared = prepare_subject(subject, PRESETS["paper"])
        oracle = finish_prediction(
            prepared, prepared.label.astype(np.float32), threshold=0.5, min_volume_mm3=0
        )
        truth, affine, _ = load_sequence(subject, "T2Sag", PRESETS["paper"])[0].render(
            what="lesion"
        )
        np.testing.assert_allclose(oracle.affine, affine, atol=1e-6)
        if (truth > 0.5).any():
            assert dice(oracle.mask, truth > 0.5) >= 0.95


class TestSequences:
    def test_mean_imputation_accepts_every_subset_with_t2sag(self, synth_root, tiny_models):
        subject = max(discover(synth_root).subjects, key=lambda s: len(s.sequences))
        others = [s for s in subject.sequences if s != "T2Sag"]
        assert len(others) >= 2
        models = load_models([tiny_models["mi0"]], CPU)
        # Prepared once, as predict_subject prepares every subset: with all the subject's
        # sequences, the others switched off (its result is checked against this below).
        prepared = prepare_subject(subject, models[0].prep)
        shapes = set()
        for r in range(len(others) + 1):
            for combo in itertools.combinations(others, r):
                wanted = ["T2Sag", *combo]
                prediction = predict_prepared(prepared, models, sequences=wanted, device=CPU)
                assert prediction.sequences == [s for s in subject.sequences if s in wanted]
                shapes.add(prediction.mask.shape)
        assert len(shapes) == 1
        from_raw = predict_subject(subject, models, sequences=wanted, device=CPU)
        assert from_raw.sequences == prediction.sequences
        np.testing.assert_allclose(from_raw.probabilities, prediction.probabilities, atol=1e-5)

    def test_models_refuse_what_they_cannot_use(self, synth_root, tiny_models):
        subjects = discover(synth_root).subjects
        without_stir = restrict_subject(subjects[0], ["T2Sag", "T2starAx", "T2Ax", "T1Sag"])
        specific = load_models([tiny_models["specific"]], CPU)
        with pytest.raises(CordfuseError, match="lacks STIR"):
            predict_subject(without_stir, specific, device=CPU)
        baseline = load_models([tiny_models["baseline"]], CPU)
        no_t2 = subjects[0].__class__(
            subjects[0].subject_id,
            None,
            None,
            {k: v for k, v in subjects[0].scans.items() if k != "T2Sag"},
        )
        with pytest.raises(CordfuseError, match="no T2Sag"):
            predict_subject(no_t2, baseline, device=CPU)


def test_a_model_normalised_otherwise_warns_in_each_prediction(synth_root, tiny_models, tmp_path):
    """A model trained on crops of an older layout still predicts, and says so every time."""
    from dataclasses import replace

    from cordfuse.checkpoint import checkpoint_file

    old = tmp_path / "old"
    shutil.copytree(tiny_models["baseline"], old)
    path = checkpoint_file(old)
    replace(Checkpoint.load(path), normalisation="z-score on the cord core, zeros counted").save(
        path
    )
    subject = discover(synth_root).subjects[0]
    current = predict_subject(subject, load_models([tiny_models["baseline"]], CPU), device=CPU)
    assert not any("normalised otherwise" in w for w in current.warnings)
    ensemble = load_models([tiny_models["baseline"], old], CPU)
    prediction = predict_subject(subject, ensemble, device=CPU)
    flagged = [w for w in prediction.warnings if "normalised otherwise" in w]
    assert len(flagged) == 1, "one warning per model trained otherwise, not per model"
    np.testing.assert_array_equal(prediction.probabilities, current.probabilities)


def test_a_subject_predicted_with_another_ensemble_rule_is_predicted_again(tmp_path):
    options = predict_options()
    record = {"models": [{"path": "m0"}, {"path": "m1"}]}
    record["options"] = {k: options[k] for k in RESULT_OPTIONS}
    (tmp_path / "sub-01_lesion.nii.gz").write_bytes(b"a mask")
    record_path(tmp_path, "sub-01").write_text(
        json.dumps({**record, "files": ["sub-01_lesion.nii.gz"]})
    )
    assert finished(tmp_path, "sub-01", record)
    other = {**options, "ensemble": "min"}
    assert not finished(
        tmp_path, "sub-01", {**record, "options": {k: other[k] for k in RESULT_OPTIONS}}
    )


@pytest.mark.parametrize("rule", ["max", ["min"]])
def test_an_unknown_ensemble_rule_stops_predict_before_anything_is_loaded_or_written(
    rule, tmp_path
):
    with pytest.raises(CordfuseError, match="ensemble must be one of mean, min, median"):
        predict_dataset([], (tmp_path / "no-model",), tmp_path / "out", {"ensemble": rule})
    assert not (tmp_path / "out").exists()


class TestEnsembleAndTta:
    def test_ensemble_is_the_mean_of_the_models(self, synth_root, tiny_models):
        subject = discover(synth_root).subjects[0]
        one = load_models([tiny_models["mi0"]], CPU)
        two = load_models([tiny_models["mi1"]], CPU)
        both = load_models([tiny_models["mi0"], tiny_models["mi1"]], CPU)
        prepared = prepare_subject(subject, one[0].prep)
        p1 = predict_prepared(prepared, one, device=CPU).probabilities
        p2 = predict_prepared(prepared, two, device=CPU).probabilities
        pe = predict_subject(subject, both, device=CPU).probabilities
        np.testing.assert_allclose(pe, (p1 + p2) / 2, atol=1e-6)
        assert not np.allclose(p1, p2)

    def test_min_ensemble_keeps_only_what_every_model_finds(self, synth_root, tiny_models):
        subject = discover(synth_root).subjects[0]
        paths = [tiny_models["mi0"], tiny_models["mi1"]]
        one, two = (load_models([path], CPU) for path in paths)
        prepared = prepare_subject(subject, one[0].prep)
        p1 = predict_prepared(prepared, one, device=CPU).probabilities
        p2 = predict_prepared(prepared, two, device=CPU).probabilities
        # a threshold between the two models' maps, so that the rules give different masks
        threshold = float(np.median(np.concatenate([p1.ravel(), p2.ravel()])))
        both = load_models(paths, CPU)
        low = predict_subject(subject, both, device=CPU, ensemble="min", threshold=threshold)
        mean = predict_subject(subject, both, device=CPU, threshold=threshold)
        # on the crop, a voxel is lesion only where each model alone puts it above the threshold
        np.testing.assert_allclose(low.probabilities, np.minimum(p1, p2), atol=1e-6)
        # the minimum is never above the mean, on the crop nor interpolated onto the native grid
        assert not (low.mask & ~mean.mask).any()
        assert 0 < low.mask.sum() < mean.mask.sum()
        # the median is a majority vote: of three models, the two that agree win; it is never
        # below the minimum
        vote = load_models([paths[0], paths[1], paths[0]], CPU)
        majority = predict_subject(
            subject, vote, device=CPU, ensemble="median", threshold=threshold
        )
        np.testing.assert_allclose(majority.probabilities, p1, atol=1e-6)
        alone = predict_subject(subject, one, device=CPU, threshold=threshold)
        assert np.array_equal(majority.mask, alone.mask)
        assert not (low.mask & ~majority.mask).any()
        with pytest.raises(CordfuseError, match="ensemble must be one of mean, min, median"):
            predict_prepared(prepared, both, device=CPU, ensemble="max")

    def test_mirroring_averages_the_flipped_prediction(self):
        torch.manual_seed(0)
        net = CordNet(NET_PRESETS["small"], ["T2Sag"]).eval()
        images = np.random.default_rng(0).normal(size=(2, 24, 24, 100)).astype(np.float32)
        images[1] = images[1] > 0  # its coverage mask: mirrored with the image
        available = np.array([True])
        plain = predict_probabilities(net, images, available, patch_z=64)
        flipped = predict_probabilities(net, images[:, ::-1].copy(), available, patch_z=64)
        tta = predict_probabilities(net, images, available, patch_z=64, mirror=True)
        np.testing.assert_allclose(tta, 0.5 * (plain + flipped[::-1]), atol=1e-5)
        assert not np.allclose(plain, flipped[::-1], atol=1e-3)


class TestCommandLine:
    def test_outputs_on_the_native_t2sag_grid(self, synth_root, tiny_models, tmp_path, capsys):
        out = tmp_path / "pred"
        assert (
            main(
                [
                    "predict",
                    str(tiny_models["mi0"]),
                    "-i",
                    str(synth_root),
                    "-o",
                    str(out),
                    "--per-slab",
                    "--save-probabilities",
                    "--qc",
                    "--tta",
                ]
            )
            == 0
        )
        for subject in discover(synth_root).subjects:  # a BIDS derivative dataset
            mask_path = find_prediction(out, subject.name)
            stem = mask_path.name.removesuffix("_mask.nii.gz")
            mask = nib.load(mask_path)
            assert mask.get_data_dtype() == np.uint8
            slabs = subject.scans["T2Sag"]
            if len(slabs) > 1:
                for number, scan in enumerate(slabs, start=1):
                    native = nib.load(scan.path)
                    slab_mask = nib.load(find_slab_prediction(out, subject.name, scan.path, number))
                    assert slab_mask.shape == native.shape
                    np.testing.assert_allclose(slab_mask.affine, native.affine, atol=1e-5)
            else:  # the fused grid is the slab's
                native = nib.load(slabs[0].path)
                assert mask.shape == native.shape
                np.testing.assert_allclose(mask.affine, native.affine, atol=1e-5)
            prob = nib.load(mask_path.with_name(f"{stem}_probseg.nii.gz"))
            assert prob.shape == mask.shape and np.asarray(prob.dataobj).max() <= 1.0
            header = mask_path.with_name(f"{stem}_stats.tsv").read_text().splitlines()[0]
            assert header.startswith("label\tvoxels\tvolume_mm3\tsi_min_mm\tsi_max_mm")
            picture = out / subject.subject_id / "figures" / f"{stem}_mask.png"
            assert picture.read_bytes()[:4] == b"\x89PNG"
        assert "4 predicted, 0 failed" in capsys.readouterr().out

    def test_the_ensemble_rule_reaches_the_masks_and_their_sidecars(
        self, synth_root, tiny_models, tmp_path
    ):
        subject = discover(synth_root).subjects[0]
        paths = [tiny_models["mi0"], tiny_models["mi1"]]
        models = load_models(paths, CPU)
        masks = {}
        for rule in ("mean", "min"):
            out = tmp_path / rule
            args = ["-i", str(synth_root), "--participant-label", subject.subject_id[4:]]
            assert (
                main(["predict", *map(str, paths), *args, "-o", str(out), "--ensemble", rule]) == 0
            )
            path = find_prediction(out, subject.name)
            masks[rule] = np.asarray(nib.load(path).dataobj)
            expected = predict_subject(subject, models, device=CPU, ensemble=rule).mask
            assert np.array_equal(masks[rule], expected), rule
            sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["Ensemble"] == rule
        assert not np.array_equal(masks["mean"], masks["min"])

    def test_explicit_files_and_one_subject_folder(self, synth_root, tiny_models, tmp_path):
        subject = discover(synth_root).subjects[0]
        files = ["--t2sag", *[str(s.path) for s in subject.scans["T2Sag"]]]
        assert (
            main(["predict", str(tiny_models["baseline"]), *files, "-o", str(tmp_path / "a")]) == 0
        )
        assert (tmp_path / "a" / "sub-001_lesion.nii.gz").exists()
        assert (
            main(
                [
                    "predict",
                    str(tiny_models["baseline"]),
                    "-i",
                    str(synth_root / "sub-002"),
                    "-o",
                    str(tmp_path / "b"),
                ]
            )
            == 0
        )
        assert list(derivative_masks(tmp_path / "b")) == ["sub-002"]

    def test_bad_inputs_one_line_each(self, synth_copy, tiny_models, tmp_path, capsys):
        subjects = {s.subject_id: s for s in discover(synth_copy).subjects}
        for scan in subjects["sub-001"].scans["T2Sag"]:
            scan.path.unlink()  # missing T2Sag
        other = next(s for s in subjects["sub-002"].sequences if s != "T2Sag")
        subjects["sub-002"].scans[other][0].path.write_bytes(b"garbage")  # unreadable
        blank = next(x for x in ("sub-003", "sub-004") if len(subjects[x].sequences) > 1)
        seq = next(s for s in subjects[blank].sequences if s != "T2Sag")
        for scan in subjects[blank].scans[seq]:  # a sequence where no cord can be found
            img = nib.load(scan.path)
            nib.save(nib.Nifti1Image(np.full(img.shape, 50, np.int16), img.affine), scan.path)
        status = main(
            ["predict", str(tiny_models["mi0"]), "-i", str(synth_copy), "-o", str(tmp_path / "out")]
        )
        captured = capsys.readouterr()
        assert status == 1
        failed = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 2, captured.err
        assert "sub-001" in failed[0] and "no T2Sag" in failed[0]
        assert "sub-002" in failed[1] and "unreadable" in failed[1]
        assert f"warning {blank}: {seq} dropped" in captured.out
        assert "2 predicted, 2 failed" in captured.out
        if seq == "STIR":  # the specific model cannot drop its STIR: that subject fails instead
            assert (
                main(
                    [
                        "predict",
                        str(tiny_models["specific"]),
                        "-i",
                        str(synth_copy / blank),
                        "-o",
                        str(tmp_path / "spec"),
                    ]
                )
                == 1
            )
            assert "lacks STIR" in capsys.readouterr().err
        bad_model = tmp_path / "bad.pt"
        bad_model.write_bytes(b"not a checkpoint")
        assert (
            main(["predict", str(bad_model), "-i", str(synth_copy), "-o", str(tmp_path / "o2")])
            == 2
        )
        assert "not a cordfuse checkpoint" in capsys.readouterr().err

    def test_centreline_from_cord_masks(self, synth_root, tiny_models, tmp_path):
        assert (
            main(
                [
                    "predict",
                    str(tiny_models["baseline"]),
                    "-i",
                    str(synth_root / "sub-001"),
                    "-o",
                    str(tmp_path),
                    "--centerline",
                    "mask",
                ]
            )
            == 0
        )
        subject = discover(synth_root).subjects[0]
        models = load_models([tiny_models["baseline"]], CPU)
        prediction = predict_subject(subject, models, device=CPU, centerline="mask")
        assert prediction.prepared.config.centerline == "mask"

    def test_weights_that_do_not_fit_their_configuration(
        self, tiny_models, tmp_path, capsys, synth_root
    ):
        checkpoint = Checkpoint.load(tiny_models["baseline"]).to_dict()
        checkpoint["net"]["features"] = (32, 64, 128, 256, 320)  # small weights, paper widths
        torch.save(checkpoint, tmp_path / "mismatch.pt")
        assert (
            main(
                [
                    "predict",
                    str(tmp_path / "mismatch.pt"),
                    "-i",
                    str(synth_root),
                    "-o",
                    str(tmp_path / "o"),
                ]
            )
            == 2
        )
        assert "does not match its configuration" in capsys.readouterr().err

    def test_checkpoint_of_another_major_version(self, tiny_models, tmp_path, synth_root, capsys):
        checkpoint = Checkpoint.load(tiny_models["baseline"]).to_dict()
        checkpoint["cordfuse_version"] = "9.0.0"
        torch.save(checkpoint, tmp_path / "future.pt")
        assert (
            main(
                [
                    "predict",
                    str(tmp_path / "future.pt"),
                    "-i",
                    str(synth_root),
                    "-o",
                    str(tmp_path / "o"),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "another major version" in err and err.count("\n") == 1


def test_trained_model_beats_chance(learned, tmp_path):
    """The briefly trained small model finds lesions on held-out subjects far better than chance."""
    val = learned["summary"]["val"]
    models = load_models([learned["run"]], CPU)
    subjects = [s for s in discover(learned["bids"]).subjects if s.subject_id in val]
    rng = np.random.default_rng(0)
    scores, chance = [], []
    for subject in subjects:
        prediction = predict_subject(subject, models, device=CPU)
        truth, _, _ = load_sequence(subject, "T2Sag", PRESETS["small"])[0].render(what="lesion")
        truth = truth > 0.5
        if not truth.any():
            continue
        scores.append(dice(prediction.mask, truth))
        # Chance: as many voxels as predicted, drawn uniformly inside the crop tube.
        tube = (
            prediction.probability_native > 0
            if (prediction.probability_native > 0).any()
            else np.ones_like(truth)
        )
        candidates = np.flatnonzero(tube)
        pick = rng.choice(
            candidates, size=min(len(candidates), max(1, prediction.mask.sum())), replace=False
        )
        random_mask = np.zeros(truth.size, bool)
        random_mask[pick] = True
        chance.append(dice(random_mask.reshape(truth.shape), truth))
    assert scores, "validation subjects need lesions"
    assert np.mean(scores) > np.mean(chance) + 0.15, (scores, chance)


def test_read_volume_of_prediction_is_binary(tmp_path, synth_root, tiny_models):
    out = tmp_path / "p"
    assert (
        main(
            [
                "predict",
                str(tiny_models["baseline"]),
                "-i",
                str(synth_root / "sub-003"),
                "-o",
                str(out),
                "--threshold",
                "0.0",
            ]
        )
        == 0
    )
    data, _ = read_volume(find_prediction(out, "sub-003"))
    assert set(np.unique(data)) <= {0.0, 1.0} and data.sum() > 0, "threshold 0 marks the tube"
    shutil.rmtree(out)


def test_parallel_subjects_give_the_same_predictions(synth_root, tiny_models, tmp_path):
    """--jobs 2 (spawned workers) predicts what one process does.

    Both runs use one thread per process: with other thread counts convolutions sum in another
    order, and the instance norms of this barely trained net amplify that float noise. The slab
    registration differs by ~1e-12 mm between processes; native voxels lying exactly on the
    crop's edge must not flip in or out of it for that (CI once saw 0.42 against 0.0)."""
    for jobs in ("1", "2"):
        assert (
            main(
                [
                    "predict",
                    str(tiny_models["baseline"]),
                    "-i",
                    str(synth_root),
                    "-o",
                    str(tmp_path / jobs),
                    "--jobs",
                    jobs,
                    "--amp",
                    "none",
                    "--save-probabilities",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
    ones = sorted((tmp_path / "1").glob("sub-*/anat/*_probseg.nii.gz"))
    assert len(ones) == 4 and len(list((tmp_path / "2").glob("sub-*/anat/*_probseg.nii.gz"))) == 4
    for one in ones:
        two = tmp_path / "2" / one.relative_to(tmp_path / "1")
        np.testing.assert_allclose(
            np.asarray(nib.load(one).dataobj), np.asarray(nib.load(two).dataobj), atol=1e-5
        )
        np.testing.assert_array_equal(
            np.asarray(nib.load(str(one).replace("_probseg", "_mask")).dataobj),
            np.asarray(nib.load(str(two).replace("_probseg", "_mask")).dataobj),
        )


def test_threads_option_is_checked_and_leaves_the_caller_as_it_was(
    synth_root, tiny_models, tmp_path, capsys
):
    import torch

    before = torch.get_num_threads()
    args = [
        "predict",
        str(tiny_models["baseline"]),
        "-i",
        str(synth_root / "sub-001"),
        "-o",
        str(tmp_path),
        "--amp",
        "none",
    ]
    assert main([*args, "--threads", "0"]) != 0
    err = capsys.readouterr().err
    assert "--threads must be at least 1" in err and "Traceback" not in err
    assert main([*args, "--threads", "1"]) == 0
    assert torch.get_num_threads() == before
    assert find_prediction(tmp_path, "sub-001") is not None
