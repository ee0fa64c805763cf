"""Synthetic multi-sequence subjects and cohorts, written as a BIDS dataset with ground truth.

Every subject draws its own random stream from ``SeedSequence([seed, index])``, so subject 7 is the
same whether the cohort has 10 or 100 subjects, and the same seed gives the same bytes.

Layout written by :func:`write_cohort`::

    OUT/dataset_description.json, README, participants.tsv (participant_id, cohort) and its
        data dictionary participants.json
    OUT/sub-001/anat/sub-001_acq-sag_chunk-1_T2w.nii.gz, sub-001_acq-stir_T2w.nii.gz ...
    OUT/derivatives/labels/sub-001/anat/<image stem>_seg-manual.nii.gz     (cord, every scan)
    OUT/derivatives/labels/sub-001/anat/<T2Sag stem>_lesion-manual.nii.gz  (lesions, T2Sag slabs)
    OUT/derivatives/synth/sub-001_truth.json  (true centrelines in world mm, generation parameters)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cordfuse import __version__
from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_text, make_nifti, save_nifti
from cordfuse.sequences import SEQUENCES
from cordfuse.synth.acquire import Acquired, Displacement, acquire, build_affine, rotation_matrix
from cordfuse.synth.anatomy import Anatomy, draw_anatomy
from cordfuse.synth.protocol import CONTRASTS, PROTOCOLS, CohortProfile, cohort_profile
from cordfuse.synth.randomise import Randomisation

GENERATOR = "cordfuse-synth-1"

#: The data dictionary of ``participants.tsv`` (BIDS: a description of every column).
PARTICIPANTS = {
    "participant_id": {"Description": "the subject (BIDS sub- label)"},
    "cohort": {
        "Description": "the synthetic cohort: its profile of sequence availability, scanner and "
        "resolution (cordfuse.synth.protocol)"
    },
}

README = """\
A synthetic multi-sequence spinal cord MRI cohort with MS-like lesions, written by cordfuse synth
({subjects} subjects, seed {seed}): sagittal T2 (acq-sag, one or two slabs as chunk-N), sagittal
STIR (acq-stir_T2w), axial T2* (acq-ax_T2starw), axial T2 (acq-ax_T2w), sagittal T1 (acq-sag_T1w)
and MP2RAGE (UNIT1), each subject with its own subset.

derivatives/labels: cord masks of every scan (_seg-manual) and lesion masks of the T2Sag slabs
(_lesion-manual), exact by construction. derivatives/synth: the generator's truth of every
subject (centrelines, lesions and their visibility on each sequence).
"""


@dataclass
class ScanPlan:
    """Everything needed to acquire one scan."""

    sequence: str
    chunk: int | None
    affine: np.ndarray
    shape: tuple[int, int, int]
    motion: np.ndarray  # scanner world -> anatomy coordinates
    displacement: Displacement
    scanner: dict

    @property
    def suffix(self) -> str:
        """The BIDS entities and suffix of the scan's file name after ``sub-XXX_``.

        Example:
            >>> ScanPlan("T2Sag", 2, np.eye(4), (1, 1, 1), np.eye(4), None, {}).suffix
            'acq-sag_chunk-2_T2w'
        """
        acq = {
            "T2Sag": "acq-sag_",
            "STIR": "acq-stir_",  # a T2-weighted inversion recovery: BIDS has no STIR suffix
            "T1Sag": "acq-sag_",
            "T2starAx": "acq-ax_",
            "T2Ax": "acq-ax_",
            "MP2RAGE": "",
        }[self.sequence]
        chunk = f"chunk-{self.chunk}_" if self.chunk is not None else ""
        kind = {
            "T2Sag": "T2w",
            "STIR": "T2w",
            "T1Sag": "T1w",
            "T2starAx": "T2starw",
            "T2Ax": "T2w",
            "MP2RAGE": "UNIT1",
        }[self.sequence]
        return f"{acq}{chunk}{kind}"


@dataclass
class SyntheticSubject:
    """A generated subject: its anatomy, the acquired scans (by BIDS stem) and their plans.

    ``randomised`` holds the draws of a randomised subject (``synth --randomise``), else None.
    """

    subject_id: str
    cohort: str
    anatomy: Anatomy
    plans: dict[str, ScanPlan]
    scans: dict[str, Acquired] = field(default_factory=dict)
    randomised: Randomisation | None = None

    def stems(self, sequence: str) -> list[str]:
        """The BIDS stems of the subject's scans of one sequence (slabs in order).

        Args:
            sequence: A sequence name.

        Returns:
            The stems (none when the subject lacks it).
        """
        return [stem for stem, plan in self.plans.items() if plan.sequence == sequence]


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of one subject: independent of the other subjects' draws.

    Args:
        seed: The cohort's seed.
        index: The subject's number (1-based).

    Returns:
        A generator seeded by ``(seed, index)``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def subject_id_of(index: int) -> str:
    """The BIDS subject id of the ``index``-th synthetic subject (``sub-001`` for 1).

    Args:
        index: The subject's number (1-based).

    Returns:
        The id.

    Example:
        >>> subject_id_of(12)
        'sub-012'
    """
    return f"sub-{index:03d}"


def generate_subject(
    seed: int, index: int, cohort: str, *, randomise: bool = False
) -> SyntheticSubject:
    """Draw and acquire subject number ``index`` (1-based) of the cohort with ``seed``.

    Args:
        seed: The cohort's seed.
        index: The subject's number (1-based).
        cohort: The cohort's name (its profile: sequence availability, scanner, resolution).
        randomise: Draw the cord and canal size, every scan's grid and its whole appearance at
            random (:mod:`cordfuse.synth.randomise`), from streams of their own: the subject's
            generator makes the same draws as without.

    Returns:
        The subject with its acquired scans (not written).
    """
    rng = subject_rng(seed, index)
    profile = cohort_profile(cohort)
    randomised = Randomisation.draw(seed, index) if randomise else None
    scales = randomised.anatomy_scales if randomised is not None else {}
    anatomy = draw_anatomy(rng, n_lesions=int(rng.integers(0, 9)), sequences=SEQUENCES, **scales)
    subject_id = subject_id_of(index)
    plans = {f"{subject_id}_{plan.suffix}": plan for plan in plan_scans(anatomy, profile, rng)}
    if randomised is not None:
        plans = randomised.apply(anatomy, plans)
    subject = SyntheticSubject(subject_id, cohort, anatomy, plans, randomised=randomised)
    for stem, plan in plans.items():
        subject.scans[stem] = acquire(
            anatomy,
            plan.affine,
            plan.shape,
            CONTRASTS[plan.sequence],
            sequence=plan.sequence,
            motion=plan.motion,
            displacement=plan.displacement,
            scanner=plan.scanner,
            rng=np.random.default_rng(rng.integers(2**63)),
            appearance=randomised.scans[stem] if randomised is not None else None,
        )
    return subject


def plan_scans(anatomy: Anatomy, profile: CohortProfile, rng) -> list[ScanPlan]:
    """Decide which sequences a subject has and where each scan lies (clinical protocols).

    Args:
        anatomy: The subject's anatomy.
        profile: Its cohort's profile.
        rng: The subject's random generator.

    Returns:
        One plan per scan; T2Sag (one or two slabs) first.
    """
    avail = profile.availability
    # Draw every decision even when unused so that availability does not shift other draws.
    present = {seq: rng.random() < avail.get(seq, 0.0) for seq in SEQUENCES[1:]}
    lower_slab = rng.random() < avail.get("T2Sag_lower", 0.0)
    displacements = {seq: _draw_displacement(rng, zero=seq == "T2Sag") for seq in SEQUENCES}

    def scanner() -> dict:
        return dict(
            gain=profile.gain * rng.uniform(0.9, 1.1),
            gamma=profile.gamma * rng.uniform(0.97, 1.03),
            noise=profile.noise * rng.uniform(0.8, 1.2),
            bias=rng.normal(0.0, 0.08, size=5).tolist(),
        )

    identity = np.eye(4)
    plans: list[ScanPlan] = []
    top = anatomy.cord_top - rng.uniform(2.0, 8.0)
    upper_bottom = anatomy.level_z("T4", "top") + rng.uniform(-10.0, 10.0)
    t2 = displacements["T2Sag"]
    if lower_slab:
        overlap = rng.uniform(30.0, 50.0)
        lower_top = upper_bottom + overlap
        lower_bottom = anatomy.level_z("L2", "mid")
        motion = rigid_motion(
            rng, center=anatomy.centerline([upper_bottom + overlap / 2])[0], max_deg=2.0, max_mm=3.0
        )
        plans.append(
            _sagittal(anatomy, profile, "T2Sag", 1, top, upper_bottom, identity, t2, scanner(), rng)
        )
        plans.append(
            _sagittal(
                anatomy, profile, "T2Sag", 2, lower_top, lower_bottom, motion, t2, scanner(), rng
            )
        )
    else:
        plans.append(
            _sagittal(
                anatomy, profile, "T2Sag", None, top, upper_bottom, identity, t2, scanner(), rng
            )
        )
    for seq in ("STIR", "T1Sag"):
        if present[seq]:
            bottom = anatomy.level_z("T2", "bottom") + rng.uniform(-8.0, 8.0)
            plans.append(
                _sagittal(
                    anatomy,
                    profile,
                    seq,
                    None,
                    top + rng.uniform(-3, 3),
                    bottom,
                    identity,
                    displacements[seq],
                    scanner(),
                    rng,
                )
            )
    if present["MP2RAGE"]:
        bottom = anatomy.level_z("C7", "bottom") - rng.uniform(0.0, 10.0)
        plans.append(
            _sagittal(
                anatomy,
                profile,
                "MP2RAGE",
                None,
                top,
                bottom,
                identity,
                displacements["MP2RAGE"],
                scanner(),
                rng,
            )
        )
    if present["T2starAx"]:
        # Two chunks without overlap: C1-C3 and C4-C7; the stack never reaches below C7.
        plans += _axial_stack(
            anatomy,
            profile,
            "T2starAx",
            [("C1", "C3"), ("C4", "C7")],
            displacements["T2starAx"],
            scanner(),
            rng,
        )
    if present["T2Ax"]:
        plans += _axial_stack(
            anatomy, profile, "T2Ax", [("C1", "T1")], displacements["T2Ax"], scanner(), rng
        )
    order = {seq: i for i, seq in enumerate(SEQUENCES)}
    return sorted(plans, key=lambda p: (order[p.sequence], p.chunk or 0))


def _draw_displacement(rng, *, zero: bool) -> Displacement:
    magnitude = rng.uniform(0.5, 2.0)
    angle = rng.uniform(0, 2 * np.pi)
    wavelength = (rng.uniform(120, 300), rng.uniform(120, 300))
    phase = (rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi))
    if zero:  # T2Sag is the reference: its cord is where the anatomy says
        magnitude = 0.0
    amp = (magnitude * math.cos(angle), magnitude * math.sin(angle))
    return Displacement(amp, wavelength, phase)


def rigid_motion(rng, *, center, max_deg: float, max_mm: float) -> np.ndarray:
    """A random rigid transform about ``center`` with rotation <= max_deg and shift <= max_mm.

    Args:
        rng: A random generator.
        center: The rotation's centre (mm).
        max_deg: The largest rotation, in degrees.
        max_mm: The largest shift, in mm.

    Returns:
        The 4x4 transform.
    """
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0.3, 1.0) * max_deg
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.3, 1.0) * max_mm / np.linalg.norm(shift)
    return rigid_matrix(axis * angle, shift, center)


def rigid_matrix(rotvec_deg, shift_mm, center) -> np.ndarray:
    """4x4 ``p -> R (p - c) + c + t`` for a rotation vector (degrees) about ``center``.

    Args:
        rotvec_deg: The rotation vector (axis times angle, degrees).
        shift_mm: The translation ``t`` (mm).
        center: The rotation's centre ``c`` (mm).

    Returns:
        The 4x4 transform.

    Example:
        >>> matrix = rigid_matrix([0, 0, 90], [0, 0, 1], center=[1, 0, 0])
        >>> (matrix @ [1.0, 0.0, 0.0, 1.0]).round(6).tolist()   # the centre only moves by t
        [1.0, 0.0, 1.0, 1.0]
    """
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec(np.deg2rad(np.asarray(rotvec_deg, float))).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rot
    center = np.asarray(center, float)
    matrix[:3, 3] = center - rot @ center + np.asarray(shift_mm, float)
    return matrix


def _sagittal(
    anatomy, profile, seq, chunk, z_top, z_bottom, motion, disp, scanner, rng
) -> ScanPlan:
    proto = PROTOCOLS[seq]
    if proto.slices is None:
        raise ValueError(f"{seq}: a sagittal or isotropic protocol needs its number of slices")
    res = proto.inplane * profile.resolution * rng.uniform(0.97, 1.03)
    if proto.thickness == proto.inplane:  # isotropic 3D acquisition
        res_slice = res
    else:
        res_slice = proto.thickness
    z_mid = 0.5 * (z_top + z_bottom)
    n_si = math.ceil((z_top - z_bottom) / res)
    n_ap = round(proto.fov_inplane[0] / res)
    shape = (n_ap, n_si, proto.slices)
    cx, cy, _ = anatomy.centerline([z_mid])[0]
    center = (cx + rng.uniform(-2, 2), cy + 12.0 + rng.uniform(-3, 3), z_mid)
    rotation = rotation_matrix([rng.uniform(-4, 4), rng.uniform(-2, 2), rng.uniform(-2, 2)])
    affine = build_affine(proto.axcodes, (res, res, res_slice), shape, center, rotation)
    return ScanPlan(seq, chunk, affine, shape, motion, disp, scanner)


def _axial_stack(anatomy, profile, seq, chunks, disp, scanner, rng) -> list[ScanPlan]:
    proto = PROTOCOLS[seq]
    res = proto.inplane * profile.resolution * rng.uniform(0.97, 1.03)
    n_inplane = round(proto.fov_inplane[0] / res)
    rotation = rotation_matrix([rng.uniform(-5, 5), rng.uniform(-3, 3), rng.uniform(-3, 3)])
    normal = rotation @ np.array([0.0, 0.0, 1.0])
    cos_tilt = normal[2]
    z_start = anatomy.level_z(chunks[0][0], "top") + rng.uniform(0.0, 3.0)
    origin = anatomy.centerline([z_start])[0]
    plans = []
    depth = 0.0  # distance travelled down the stack along the slice normal
    for i, (first, last) in enumerate(chunks):
        z_end = anatomy.level_z(last, "bottom")
        z_from = z_start if i == 0 else anatomy.level_z(first, "top")
        depth = max(depth, (z_start - z_from) * cos_tilt)
        # Vertical extent of n slices at the cord is n * thickness / cos(tilt): stay above z_end.
        n_slices = max(1, math.floor(((z_start - z_end) * cos_tilt - depth) / proto.thickness))
        mid_depth = depth + n_slices * proto.thickness / 2
        z_mid = z_start - mid_depth / cos_tilt
        cx, cy, _ = anatomy.centerline([z_mid])[0]
        center = np.array([cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2), z_mid])
        center += normal * (-mid_depth - np.dot(center - origin, normal))
        shape = (n_inplane, n_inplane, n_slices)
        affine = build_affine(proto.axcodes, (res, res, proto.thickness), shape, center, rotation)
        chunk = i + 1 if len(chunks) > 1 else None
        plans.append(ScanPlan(seq, chunk, affine, shape, np.eye(4), disp, scanner))
        depth += n_slices * proto.thickness
    return plans


# ---------------------------------------------------------------------------------------------
# Ground truth and writing


def scan_centerline(subject: SyntheticSubject, stem: str, step_mm: float = 2.0) -> np.ndarray:
    """True cord centreline seen by one scan, in its scanner world coordinates, inside its FOV.

    Args:
        subject: A generated subject.
        stem: One of its scans.
        step_mm: The S-I step between points.

    Returns:
        ``(N, 3)`` world points (mm).
    """
    plan = subject.plans[stem]
    anatomy = subject.anatomy
    z = np.arange(anatomy.conus_tip + 5.0, anatomy.cord_top, step_mm)
    line = anatomy.centerline(z)
    dx, dy = plan.displacement(z)
    line[:, 0] += dx
    line[:, 1] += dy
    world = (np.linalg.inv(plan.motion) @ np.c_[line, np.ones(len(z))].T).T[:, :3]
    vox = (np.linalg.inv(plan.affine) @ np.c_[world, np.ones(len(z))].T).T[:, :3]
    inside = np.all((vox > -0.5) & (vox < np.asarray(plan.shape) - 0.5), axis=1)
    return world[inside]


def truth_document(subject: SyntheticSubject, seed: int) -> dict:
    """The generator's truth of a subject as plain JSON (``derivatives/synth/<id>_truth.json``).

    Args:
        subject: A generated subject.
        seed: The cohort's seed.

    Returns:
        Its levels, cord extent and centreline, its lesions (centre, radii, visibility per
        sequence) and every scan's motion, displacement, scanner and centreline; a randomised
        subject's draws under ``randomised``.
    """
    anatomy = subject.anatomy
    z = np.arange(math.ceil(anatomy.conus_tip), anatomy.cord_top, 1.0)
    lesions = []
    for lesion in anatomy.lesions:
        u0, v0, z0 = lesion.center
        cx, cy, _ = anatomy.centerline([z0])[0]
        lesions.append(
            {
                "center_world_mm": [round(cx + u0, 3), round(cy + v0, 3), round(z0, 3)],
                "center_cord_frame_mm": [round(c, 3) for c in lesion.center],
                "radii_mm": [round(r, 3) for r in lesion.radii],
                "visibility": {k: round(v, 3) for k, v in lesion.visibility.items()},
            }
        )
    scans = {}
    for stem, plan in subject.plans.items():
        scans[stem] = {
            "sequence": plan.sequence,
            "chunk": plan.chunk,
            "motion_world_to_anatomy": np.round(plan.motion, 6).tolist(),
            "displacement": {
                "amplitude_mm": list(plan.displacement.amplitude),
                "wavelength_mm": list(plan.displacement.wavelength),
                "phase_rad": list(plan.displacement.phase),
            },
            "scanner": {k: v for k, v in plan.scanner.items()},
            "centerline_world_mm": np.round(scan_centerline(subject, stem), 3).tolist(),
        }
    document = {
        "subject": subject.subject_id,
        "cohort": subject.cohort,
        "seed": seed,
        "generator": GENERATOR,
        "cordfuse_version": __version__,
        "coordinates": "world RAS+ mm (nibabel convention)",
        "levels_z_mm": {k: [round(t, 3), round(b, 3)] for k, (t, b) in anatomy.levels.items()},
        "cord_extent_z_mm": [round(anatomy.conus_tip, 3), anatomy.cord_top],
        "centerline_world_mm": np.round(anatomy.centerline(z), 3).tolist(),
        "lesions": lesions,
        "scans": scans,
    }
    if subject.randomised is not None:
        document["randomised"] = subject.randomised.record()
    return document


def write_subject(subject: SyntheticSubject, root: Path, seed: int) -> None:
    """Write one subject's images, labels and truth JSON under the BIDS ``root``.

    Args:
        subject: A generated subject.
        root: The BIDS dataset folder.
        seed: The cohort's seed (recorded in the truth).
    """
    anat = root / subject.subject_id / "anat"
    labels = root / "derivatives" / "labels" / subject.subject_id / "anat"
    for stem, scan in subject.scans.items():
        save_nifti(make_nifti(scan.image, scan.affine), anat / f"{stem}.nii.gz")
        save_nifti(make_nifti(scan.cord_mask, scan.affine), labels / f"{stem}_seg-manual.nii.gz")
        if subject.plans[stem].sequence == "T2Sag":
            save_nifti(
                make_nifti(scan.lesion_mask, scan.affine), labels / f"{stem}_lesion-manual.nii.gz"
            )
    truth = root / "derivatives" / "synth" / f"{subject.subject_id}_truth.json"
    atomic_write_text(truth, json.dumps(truth_document(subject, seed), indent=1))


def cohort_of(index: int, cohorts: Sequence[str]) -> str:
    """The cohort of subject number ``index``: cohorts are assigned in turn.

    Args:
        index: The subject's number (1-based).
        cohorts: The cohort names.

    Returns:
        The cohort.

    Example:
        >>> [cohort_of(index, ("A", "B", "C")) for index in range(1, 5)]
        ['A', 'B', 'C', 'A']
    """
    return cohorts[(index - 1) % len(cohorts)]


def write_cohort(
    out: str | Path,
    *,
    subjects: int,
    seed: int,
    cohorts: Sequence[str] = ("A", "B", "C"),
    qc: bool = False,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    randomise: bool = False,
) -> Path:
    """Generate ``subjects`` subjects (cohorts assigned in turn) and write them as BIDS.

    Args:
        out: The dataset folder: new, empty, or an earlier ``synth`` output
            (:func:`cordfuse.ownership.claim`).
        subjects: How many subjects.
        seed: Random seed; equal seeds give byte-identical datasets.
        cohorts: Cohort names, assigned in turn.
        qc: Also write a QC picture per subject.
        progress: Called with each subject id once written.
        overwrite: Replace an earlier synthetic dataset in ``out`` (only what synth wrote).
        randomise: Randomise every subject's appearance, grids and cord size
            (:func:`generate_subject`); without it the bytes are those of the default cohort.

    Returns:
        The dataset root.

    Raises:
        CordfuseError: ``out`` holds files synth did not write, or a synthetic dataset already
            (without ``overwrite``).
    """
    from cordfuse.ownership import claim
    from cordfuse.synth.qc import write_subject_qc

    root = Path(out)
    claim(root, "synth")  # refuses a folder synth did not make, before anything is removed
    if (root / "dataset_description.json").exists() and not overwrite:
        raise CordfuseError(
            f"{root}: holds a synthetic dataset already (use --overwrite to replace it)"
        )
    # A dataset without its description was interrupted: what synth wrote is redone.
    folder = claim(root, "synth", overwrite=True)
    folder.own(
        "dataset_description.json",
        "README",
        "participants.tsv",
        "participants.json",
        "derivatives",
        *(subject_id_of(index) for index in range(1, subjects + 1)),
    )
    description = {
        "Name": "cordfuse synthetic multi-sequence spinal cord cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [
            {
                "Name": "cordfuse synth",
                "Version": __version__,
                "Description": f"{GENERATOR}, seed {seed}" + (", randomised" if randomise else ""),
            }
        ],
    }
    derivative = {
        "Name": "cordfuse synthetic ground truth",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cordfuse synth"}],
    }
    atomic_write_text(
        root / "derivatives" / "labels" / "dataset_description.json",
        json.dumps(derivative, indent=2) + "\n",
    )
    rows = ["participant_id\tcohort"]
    for index in range(1, subjects + 1):
        cohort = cohort_of(index, cohorts)
        subject = generate_subject(seed, index, cohort, randomise=randomise)
        write_subject(subject, root, seed)
        if qc:
            write_subject_qc(
                subject, root / "derivatives" / "synth" / "qc" / f"{subject.subject_id}.png"
            )
        rows.append(f"{subject.subject_id}\t{cohort}")
        if progress is not None:
            progress(subject.subject_id)
    atomic_write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    atomic_write_text(root / "participants.json", json.dumps(PARTICIPANTS, indent=2) + "\n")
    atomic_write_text(root / "README", README.format(subjects=subjects, seed=seed))
    # Written last: its presence marks a finished dataset (an interrupted one is redone).
    atomic_write_text(root / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    return root
