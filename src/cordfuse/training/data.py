"""Training data: prepared subjects in memory, deterministic patches, augmentation.

* **Normalisation**: per sequence, z-score with the mean/std of the cord core (stored by
  ``prepare``); voxels outside a scan's coverage stay exactly zero, and missing sequences are
  zero and flagged unavailable.
* **Patches**: the full in-plane crop, a random window along S-I (padded when the cord is
  shorter); a third of patches are centred on a lesion voxel (nnU-Net's foreground
  oversampling).
* **Augmentation** (torchio): the same spatial transform for every sequence and the label (small
  rotation and scaling, left-right mirroring), intensity transforms drawn per available sequence
  (noise, blur), plus gamma and brightness/contrast on each available sequence.

Sample ``n`` of the run is drawn from ``SeedSequence([seed, n])`` only: any worker, any resume,
gets the same patch, which is what makes an interrupted run resume bit for bit.

**Sequence dropout** (option, Mean Imputation): each available non-T2Sag sequence of a sample is
hidden (zeroed, flagged unavailable) with probability ``sequence_dropout``, so the network trains
on every subset of a subject's sequences and cannot tie a lesion's evidence to one combination.

**Reference dropout** (option, all-level fusion): with probability ``reference_dropout`` T2Sag
itself is hidden, when the other available sequences cover at least :data:`REFERENCE_DROP_COVER`
of the patch and every lesion voxel in it, so that the other encoders learn to find lesions on
their own instead of leaving it to T2Sag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cordfuse.preprocess.pipeline import PreparedSubject

NORMALISATION = "z-score per sequence on the cord core (disk of 3 mm around the centreline)"
#: Share of a patch the other sequences must cover before T2Sag may be hidden (reference dropout).
REFERENCE_DROP_COVER = 0.8


@dataclass
class SubjectArrays:
    """One subject ready for training: ``images`` (K, X, Y, Z), ``available`` (K,), ``label``."""

    name: str
    cohort: str | None
    images: np.ndarray
    available: np.ndarray
    label: np.ndarray
    lesion_voxels: np.ndarray


def normalise(prepared: PreparedSubject, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Z-scored crops of ``sequences`` (zeros for missing ones) and their availability."""
    g = prepared.geometry
    images = np.zeros((len(sequences), g.size, g.size, g.nz), np.float32)
    available = np.zeros(len(sequences), bool)
    for i, seq in enumerate(sequences):
        if seq not in prepared.images:
            continue
        crop = prepared.images[seq]
        stats = prepared.stats[seq]
        scaled = (crop - stats["mean"]) / max(stats["std"], 1e-6)
        images[i] = np.where(crop != 0, scaled, 0.0)
        available[i] = True
    return images, available


def load_subjects(paths: list[Path], sequences: list[str]) -> list[SubjectArrays]:
    subjects = []
    for path in paths:
        prepared = PreparedSubject.load(path)
        images, available = normalise(prepared, sequences)
        label = prepared.label
        if label is None:
            label = np.zeros(images.shape[1:], np.uint8)
        subjects.append(SubjectArrays(prepared.subject, prepared.cohort, images, available,
                                      label.astype(np.uint8), np.argwhere(label > 0)))
    return subjects


class PatchDataset(torch.utils.data.Dataset):
    """Sample ``n`` is a deterministic function of ``(seed, n)``; ``len`` is unbounded in use."""

    def __init__(self, subjects, patch_size, *, seed: int, foreground_fraction: float,
                 augment: bool, sequence_dropout: float = 0.0, reference_dropout: float = 0.0,
                 rank: int = 0, world_size: int = 1):
        self.subjects = subjects
        self.patch_size = tuple(patch_size)
        self.seed = seed
        self.foreground_fraction = foreground_fraction
        self.augment = augment
        self.sequence_dropout = sequence_dropout
        self.reference_dropout = reference_dropout
        self.rank, self.world_size = rank, world_size
        self._transform = make_augmentation() if augment else None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, n: int):
        index = n * self.world_size + self.rank  # each DDP rank draws its own samples
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        subject = self.subjects[int(rng.integers(len(self.subjects)))]
        image, label = extract_patch(subject, self.patch_size, rng,
                                     foreground=rng.random() < self.foreground_fraction)
        available = subject.available.copy()
        if self.sequence_dropout:  # no draw at 0, so the paper's recipe keeps its samples
            hide = rng.random(len(available)) < self.sequence_dropout
            hide[0] = False  # T2Sag carries the skips and the label: never hidden
            available &= ~hide
            image[~available] = 0.0
        if self.reference_dropout and rng.random() < self.reference_dropout:
            others = (image[1:][available[1:]] != 0).any(axis=0)
            if others.mean() >= REFERENCE_DROP_COVER and others[label > 0].all():
                available[0] = False
                image[0] = 0.0
        if self._transform is not None:
            image, label = augment_patch(image, label, available, self._transform, rng)
        return (torch.from_numpy(np.ascontiguousarray(image)),
                torch.from_numpy(np.ascontiguousarray(label)).long(),
                torch.from_numpy(available))


def extract_patch(subject: SubjectArrays, patch_size, rng, *, foreground: bool):
    """Full in-plane patch along S-I; centred on a random lesion voxel when ``foreground``."""
    k, x, y, nz = subject.images.shape
    pz = patch_size[2]
    if x != patch_size[0] or y != patch_size[1]:
        raise ValueError(f"crop {x}x{y} does not match the patch {patch_size[:2]}")
    if foreground and len(subject.lesion_voxels):
        z = subject.lesion_voxels[rng.integers(len(subject.lesion_voxels))][2]
        start = int(z) - pz // 2 + int(rng.integers(-pz // 4, pz // 4 + 1))
    else:
        start = int(rng.integers(min(0, nz - pz), max(0, nz - pz) + 1))
    start = int(np.clip(start, min(0, nz - pz), max(0, nz - pz)))
    image = np.zeros((k, x, y, pz), np.float32)
    label = np.zeros((x, y, pz), np.uint8)
    lo, hi = max(start, 0), min(start + pz, nz)
    image[..., lo - start : hi - start] = subject.images[..., lo:hi]
    label[..., lo - start : hi - start] = subject.label[..., lo:hi]
    return image, label


def make_augmentation():
    """The spatial transform (shared by all sequences and the label)."""
    import torchio as tio

    return tio.Compose([
        tio.RandomAffine(scales=(0.9, 1.1), degrees=(10, 10, 10), default_pad_value=0.0, p=0.3),
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
    ])


def intensity_augmentation(names: list[str]):
    """Noise and blur, parameters drawn independently for each of the named sequences."""
    import torchio as tio

    return tio.Compose([
        tio.RandomNoise(std=(0.0, 0.1), p=0.15, include=names),
        tio.RandomBlur(std=(0.0, 0.5), p=0.2, include=names),
    ])


def augment_patch(image, label, available, spatial, rng):
    """Same spatial transform for every sequence and the label; intensity per sequence."""
    import torchio as tio

    names = [f"s{i}" for i in range(image.shape[0])]
    images = {n: tio.ScalarImage(tensor=torch.from_numpy(image[i : i + 1]))
              for i, n in enumerate(names)}
    label_map = tio.LabelMap(tensor=torch.from_numpy(label[None].astype(np.int64)))
    subject = tio.Subject(label=label_map, **images)
    present = [n for n, flag in zip(names, available, strict=True) if flag]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        subject = spatial(subject)
        subject = intensity_augmentation(present)(subject)
    out = np.stack([subject[n].data[0].numpy() for n in names]).astype(np.float32)
    for i, flag in enumerate(available):
        out[i] = _gamma_contrast(out[i], rng) if flag else 0.0  # missing sequences stay zero
    return out, subject["label"].data[0].numpy().astype(np.uint8)


def _gamma_contrast(channel: np.ndarray, rng) -> np.ndarray:
    """nnU-Net-style gamma (on the [0, 1] rescaled channel) and brightness/contrast."""
    covered = channel != 0
    if rng.random() < 0.3:
        lo, hi = channel.min(), channel.max()
        if hi > lo:
            gamma = float(np.exp(rng.uniform(-0.35, 0.4)))
            channel = ((channel - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    if rng.random() < 0.15:
        channel = channel * rng.uniform(0.75, 1.25)
    if rng.random() < 0.15:
        mean = channel[covered].mean() if covered.any() else 0.0
        channel = (channel - mean) * rng.uniform(0.75, 1.25) + mean
    return np.where(covered, channel, 0.0).astype(np.float32)
