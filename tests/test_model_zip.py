"""Model zips: export -> install -> list -> predict gives the training folder's masks bit for bit;
a zip tampered with is refused in one line before any checkpoint is read, and never runs code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shlex
import zipfile
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cordfuse import __version__
from cordfuse.checkpoint import Checkpoint, initial_network
from cordfuse.cli import main
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.metrics import lesions
from cordfuse.inference import load_models, model_identity
from cordfuse.io import voxel_sizes
from cordfuse.models import HOME_VARIABLE, export_model, resolve_model
from cordfuse.nn.networks import NET_PRESETS
from cordfuse.preprocess.batch import load_prepared_dataset
from cordfuse.preprocess.pipeline import PrepConfig, load_native
from cordfuse.training.config import TrainConfig

CHECKPOINT = "checkpoints/model-1.pt"
SPLIT = {"train": ["sub-001", "sub-002"], "val": ["sub-003"]}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """The data directory, private to the test (never the user's)."""
    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def untrained(tmp_path) -> Path:
    """A training folder holding an untrained small baseline: a real model, made in a second."""
    config = TrainConfig(model="baseline", preset="small")
    weights = initial_network(config, config.net, ["T2Sag"]).state_dict()
    run = tmp_path / "untrained"
    checkpoint = Checkpoint(
        weights, config, NET_PRESETS["small"], ["T2Sag"], PrepConfig(), split=SPLIT, epoch=0
    )
    checkpoint.save(run / "checkpoint_best.pt")
    return run


@pytest.fixture()
def package(untrained, tmp_path) -> Path:
    """The untrained baseline exported as ``demo.zip``."""
    assert main(["export-model", str(untrained), "-o", str(tmp_path / "demo.zip")]) == 0
    return tmp_path / "demo.zip"


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, files: dict[str, bytes], *, forge_manifest: bool = False) -> Path:
    """A zip of ``files``; ``forge_manifest`` rewrites the manifest to match them all, as a
    forger who knows the format would."""
    if forge_manifest:
        listed = {
            n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "manifest.json"
        }
        manifest = {"format": "cordfuse-model", "format_version": 1, "files": listed}
        files = {**files, "manifest.json": json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def flipped(data: bytes) -> bytes:
    """``data`` with its middle byte changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def record(out: Path, subject: str) -> dict:
    """The record ``predict`` wrote for a subject (what it was made with, the files written)."""
    (path,) = out.rglob(f"{subject}_prediction.json")
    return json.loads(path.read_text())


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``cordfuse argv``, which must fail with one line; that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cordfuse: error: "), err
    return err


def no_checkpoint_read(monkeypatch) -> None:
    """Fail the test if anything reads a checkpoint from now on."""

    def load(*args, **kwargs):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(torch, "load", load)


def entries(folder: Path) -> list[str]:
    """What a folder holds, hidden entries included (none when it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class RunsCode:
    """Unpickled by a reader that trusts pickles, this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class TestExport:
    def test_the_zip_holds_the_weights_only_checkpoint_card_and_manifest(self, package, untrained):
        files = read_zip(package)
        assert sorted(files) == ["MODEL.md", CHECKPOINT, "manifest.json", "model.json"]
        manifest = json.loads(files["manifest.json"])
        assert manifest["files"] == {
            name: hashlib.sha256(data).hexdigest()
            for name, data in files.items()
            if name != "manifest.json"
        }
        card = json.loads(files["model.json"])
        assert card["name"] == "demo" and card["licence"] == "unspecified"
        assert card["cordfuse_version"] == __version__ and card["sequences"] == ["T2Sag"]
        assert card["trained_on"] == "unknown" and card["test_metrics"] == "unknown"
        (member,) = card["members"]
        assert member["checkpoint"] == CHECKPOINT
        assert (member["model"], member["preset"], member["seed"]) == ("baseline", "small", 0)
        assert member["training_budget"]["epochs"] == Checkpoint.load(untrained).config.epochs
        assert member["subjects"] == {"train": 2, "validation": 1}
        assert member["best_validation_dice"] == "unknown"
        assert member["prep"] == json.loads(json.dumps(asdict(PrepConfig())))
        assert card["summary"] in files["MODEL.md"].decode()
        stored = torch.load(io.BytesIO(files[CHECKPOINT]), weights_only=True)
        # the training state and the subject ids stay home; the weights are the run's
        assert [stored[k] for k in ("optimizer", "scheduler", "scaler", "rng", "split")] == [
            None
        ] * 5
        original = Checkpoint.load(untrained).model
        assert all(torch.equal(stored["model"][k], original[k]) for k in original)

    def test_the_same_runs_export_the_same_bytes(self, untrained, tmp_path):
        first = export_model([untrained], tmp_path / "a" / "m.zip")
        second = export_model([untrained], tmp_path / "b" / "m.zip")
        assert first.sha256 == second.sha256
        assert first.path.read_bytes() == second.path.read_bytes()

    def test_an_ensemble_keeps_its_members_in_order(self, untrained, tmp_path):
        other = tmp_path / "other.pt"
        checkpoint = Checkpoint.load(untrained)
        config = TrainConfig(model="baseline", preset="small", seed=1)
        weights = initial_network(config, config.net, ["T2Sag"]).state_dict()
        Checkpoint(weights, config, checkpoint.net, ["T2Sag"], checkpoint.prep).save(other)
        package = export_model([untrained, other], tmp_path / "ensemble.zip", licence="CC-BY-4.0")
        assert package.checkpoints == [CHECKPOINT, "checkpoints/model-2.pt"]
        assert [m["seed"] for m in package.card["members"]] == [0, 1]
        assert package.card["summary"].startswith("ensemble of 2 baseline models")
        source = resolve_model(package.path)
        models = load_models([source], torch.device("cpu"))
        assert [m.config.seed for m in models] == [0, 1]
        assert pickle.loads(pickle.dumps(source)) == source  # --jobs sends it to workers

    def test_what_cannot_be_exported_is_refused_in_one_line(
        self, untrained, package, tmp_path, capsys
    ):
        out = str(package)
        assert "exists already" in one_line_error(
            ["export-model", str(untrained), "-o", out], capsys
        )
        assert main(["export-model", str(untrained), "-o", out, "--overwrite"]) == 0
        capsys.readouterr()
        assert "ends in .zip" in one_line_error(
            ["export-model", str(untrained), "-o", str(tmp_path / "m.tar")], capsys
        )
        assert "a model name" in one_line_error(
            ["export-model", str(untrained), "-o", str(tmp_path / "n.zip"), "--name", "../up"],
            capsys,
        )
        assert "unreadable checkpoint" in one_line_error(
            ["export-model", str(tmp_path / "nowhere"), "-o", str(tmp_path / "n.zip")], capsys
        )
        mismatch = Checkpoint.load(untrained)
        mismatch.prep = PrepConfig(crop_size=mismatch.prep.crop_size + 8)
        mismatch.save(tmp_path / "mismatch.pt")
        assert "an ensemble needs" in one_line_error(
            ["export-model", str(untrained), str(tmp_path / "mismatch.pt"), "-o", out + "2.zip"],
            capsys,
        )

    def test_the_card_counts_subjects_and_lesions_per_cohort(
        self, tiny_baseline, prepared_small, tmp_path
    ):
        metrics = tmp_path / "metrics.json"
        summary = {"all": {"dice": {"mean": 0.5, "median": 0.4, "n": 2, "n_undefined": 0}}}
        metrics.write_text(json.dumps({"images": [], "summary": summary}))
        package = export_model(
            [tiny_baseline],
            tmp_path / "tiny.zip",
            prepared=prepared_small,
            test_metrics=metrics,
        )
        card = package.card
        checkpoint = Checkpoint.load(tiny_baseline)
        ids = [*checkpoint.split["train"], *checkpoint.split["val"]]
        document, _ = load_prepared_dataset(prepared_small)
        cohorts = {s["id"]: s["cohort"] for s in document["subjects"]}
        expected: dict[str, dict[str, int]] = {}
        for subject in ids:
            native = load_native(prepared_small / subject)
            volume = float(np.prod(voxel_sizes(native.affine)))
            counts = expected.setdefault(cohorts[subject], {"subjects": 0, "lesions": 0})
            counts["subjects"] += 1
            counts["lesions"] += lesions(native.lesion, voxel_volume_mm3=volume)[1]
        assert card["trained_on"]["cohorts"] == expected
        assert card["trained_on"]["subjects"] == len(ids)
        assert card["test_metrics"] == summary
        assert card["validation_dice"] == pytest.approx(checkpoint.best_val_dice)
        (member,) = card["members"]
        assert member["training_budget"]["epochs"] == 1
        assert member["training_budget"]["iterations"] == 2
        assert isinstance(member["training_budget"]["seconds"], float)  # from summary.json
        assert f"trained on {len(ids)} subjects" in card["summary"]
        assert "test Dice 0.500" in card["summary"]


class TestInstallAndList:
    def test_install_then_list(self, package, home, capsys):
        assert main(["model", "list"]) == 0
        assert "no model installed" in capsys.readouterr().out
        assert main(["model", "install", str(package)]) == 0
        assert "installed demo" in capsys.readouterr().out
        folder = home / "models" / "demo"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
            "MODEL.md",
            "checkpoints",
            CHECKPOINT,
            "manifest.json",
            "model.json",
        ]
        assert "installed already" in one_line_error(["model", "install", str(package)], capsys)
        assert main(["model", "install", str(package), "--overwrite"]) == 0
        assert main(["model", "install", str(package), "--name", "second"]) == 0
        capsys.readouterr()
        assert main(["model", "list"]) == 0
        listed = capsys.readouterr().out.splitlines()[1:]
        assert [line.split(":")[0] for line in listed] == ["demo", "second"]
        assert "baseline model (small preset); reads T2Sag" in listed[0]
        assert entries(home / "models") == ["demo", "second"]  # nothing left half-installed

    def test_an_installed_model_changed_afterwards_is_refused(
        self, package, home, synth_root, tmp_path, capsys, monkeypatch
    ):
        assert main(["model", "install", str(package)]) == 0
        weights = home / "models" / "demo" / CHECKPOINT
        weights.write_bytes(flipped(weights.read_bytes()))
        capsys.readouterr()
        assert main(["model", "list"]) == 1
        assert "demo: DAMAGED" in capsys.readouterr().out
        no_checkpoint_read(monkeypatch)
        err = one_line_error(
            ["predict", "-m", "demo", "-i", str(synth_root), "-o", str(tmp_path / "out")], capsys
        )
        assert f"{CHECKPOINT} does not match its SHA-256" in err
        assert not (tmp_path / "out").exists()

    def test_unknown_names_and_no_model(self, synth_root, tmp_path, capsys):
        out = str(tmp_path / "out")
        err = one_line_error(["predict", "-m", "nosuch", "-i", str(synth_root), "-o", out], capsys)
        assert "nosuch: no such training folder, checkpoint, model zip or installed model" in err
        assert "no model" in one_line_error(["predict", "-i", str(synth_root), "-o", out], capsys)
        with pytest.raises(CordfuseError, match="refused"):
            resolve_model(write_zip(tmp_path / "x.zip", {"manifest.json": b"[]"}))


def tampered(package: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """``package`` tampered with ``how``; the zip and the reason it must be refused for."""
    files = read_zip(package)
    bad = tmp_path / f"{how}.zip"
    if how == "weight-byte":
        write_zip(bad, {**files, CHECKPOINT: flipped(files[CHECKPOINT])})
        return bad, f"{CHECKPOINT} does not match its SHA-256 in manifest.json"
    if how == "zip-byte":  # the checkpoint is stored: the middle of the zip is its weights
        bad.write_bytes(flipped(package.read_bytes()))
        return bad, f"{CHECKPOINT} is damaged"
    if how == "manifest-byte":  # the manifest's compressed bytes damaged: a bad CRC
        data = bytearray(package.read_bytes())
        with zipfile.ZipFile(package) as archive:
            start = archive.getinfo("manifest.json").header_offset
        names, extra = (
            int.from_bytes(data[start + 26 : start + 28], "little"),
            int.from_bytes(data[start + 28 : start + 30], "little"),
        )
        data[start + 30 + names + extra + 4] ^= 0xFF
        bad.write_bytes(bytes(data))
        return bad, "manifest.json is damaged"
    if how == "extra-file":
        write_zip(bad, {**files, "run_me.py": b"print('hello')"})
        return bad, "unexpected file run_me.py"
    if how == "extra-file-in-manifest":
        write_zip(bad, {**files, "run_me.py": b"print('hello')"}, forge_manifest=True)
        return bad, "unexpected file run_me.py in manifest.json"
    if how == "path-out":
        write_zip(bad, {**files, "../escaped.txt": b"x"}, forge_manifest=True)
        return bad, "unexpected file ../escaped.txt in manifest.json"
    if how == "missing-file":
        write_zip(bad, {n: d for n, d in files.items() if n != "MODEL.md"})
        return bad, "MODEL.md is missing"
    if how == "extra-folder":
        write_zip(bad, {**files, "extra/": b""})
        return bad, "unexpected folder extra/"
    if how == "link":
        write_zip(bad, files)
        with zipfile.ZipFile(bad, "a") as archive:
            link = zipfile.ZipInfo("notes")
            link.external_attr = 0o120777 << 16
            archive.writestr(link, "/etc/passwd")
        return bad, "notes is a link"
    if how == "no-manifest":
        write_zip(bad, {n: d for n, d in files.items() if n != "manifest.json"})
        return bad, "not a cordfuse model (no manifest.json)"
    assert how == "not-a-zip"
    bad.write_bytes(b"PK but not really a zip")
    return bad, "not a cordfuse model zip"


TAMPERING = (
    "weight-byte",
    "zip-byte",
    "manifest-byte",
    "extra-file",
    "extra-file-in-manifest",
    "path-out",
    "missing-file",
    "extra-folder",
    "link",
    "no-manifest",
    "not-a-zip",
)


class TestRefused:
    @pytest.mark.parametrize("how", TAMPERING)
    def test_a_tampered_zip_is_refused_before_any_checkpoint_is_read(
        self, how, package, home, synth_root, tmp_path, capsys, monkeypatch
    ):
        bad, reason = tampered(package, tmp_path, how)
        no_checkpoint_read(monkeypatch)
        assert reason in one_line_error(["model", "install", str(bad)], capsys)
        assert entries(home / "models") == []  # nothing installed, nothing half-unpacked
        out = tmp_path / "out"
        predict = ["predict", "-i", str(synth_root), "-o", str(out)]
        assert reason in one_line_error([*predict, "-m", str(bad)], capsys)
        assert reason in one_line_error([predict[0], str(bad), *predict[1:]], capsys)
        assert entries(home / "cache") == [] and not out.exists()
        assert not (tmp_path / "escaped.txt").exists()

    def test_a_crafted_pickle_with_a_matching_manifest_runs_nothing(
        self, package, home, synth_root, tmp_path, capsys
    ):
        marker = tmp_path / "MARKER"
        crafted = io.BytesIO()
        torch.save({"model": RunsCode(marker), "cordfuse_version": __version__}, crafted)
        files = {**read_zip(package), CHECKPOINT: crafted.getvalue()}
        bad = write_zip(tmp_path / "crafted.zip", files, forge_manifest=True)
        err = one_line_error(["model", "install", str(bad)], capsys)
        assert "not a cordfuse checkpoint" in err
        assert entries(home / "models") == []
        err = one_line_error(
            ["predict", "-m", str(bad), "-i", str(synth_root), "-o", str(tmp_path / "out")],
            capsys,
        )
        assert "not a cordfuse checkpoint" in err
        assert not marker.exists()


@pytest.mark.slow
def test_export_install_list_predict_gives_the_training_folders_masks(
    tiny_baseline, prepared_small, synth_root, tmp_path, capsys
):
    zip_path = tmp_path / "tiny.zip"
    assert (
        main(
            [
                "export-model",
                str(tiny_baseline),
                "-o",
                str(zip_path),
                "--prepared",
                str(prepared_small),
                "--licence",
                "MIT",
            ]
        )
        == 0
    )
    assert main(["model", "install", str(zip_path)]) == 0
    assert main(["model", "list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny: baseline model (small preset)" in listed and "licence MIT" in listed
    subject = synth_root / "sub-001"
    runs = {
        "run": [str(tiny_baseline)],
        "installed": ["-m", "tiny"],
        "zip": ["-m", str(zip_path)],
    }
    masks, records = {}, {}
    for how, model in runs.items():
        out = tmp_path / how
        assert main(["predict", *model, "-i", str(subject), "-o", str(out)]) == 0
        records[how] = record(out, "sub-001")
        image = nib.load(out / records[how]["files"][0])  # the mask comes first
        masks[how] = (np.asarray(image.dataobj), image.affine)
    for how in ("installed", "zip"):
        assert np.array_equal(masks[how][0], masks["run"][0]), how
        assert np.array_equal(masks[how][1], masks["run"][1]), how
    # the record names the model and its SHA-256, so a rerun skips what it did
    package = resolve_model("tiny")
    assert package.name == "tiny" and len(package.paths) == 1
    assert records["installed"]["models"] == [{"model": "tiny", "sha256": package.sha256}]
    assert records["zip"]["models"] == records["installed"]["models"]  # the card's name
    assert model_identity([zip_path]) == records["installed"]["models"]
    capsys.readouterr()
    out = str(tmp_path / "installed")
    assert main(["predict", "-m", "tiny", "-i", str(subject), "-o", out]) == 0
    assert "0 predicted, 0 failed, 1 skipped" in capsys.readouterr().out
