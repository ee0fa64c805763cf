"""A subject's spinal anatomy as continuous functions of world position (RAS+, millimetres).

The cord follows a curved centreline ``(cx(z), cy(z))`` from the medulla to the conus; every other
structure (grey matter, CSF sac, vertebral bodies, discs, posterior elements, airway) is placed in
the cord's local frame ``u = x - cx(z)``, ``v = y - cy(z)`` so that the whole spine bends with it.
Profiles along S-I are tabulated every 0.2 mm so a point costs a table look-up, not a formula.

:func:`tissue_fractions` returns, for arrays of points, the fraction of a small box around each
point (given by its three edge vectors) that lies inside each structure. It is the partial-volume
kernel of :mod:`cordfuse.synth.acquire`: the fraction of an edge inside a box is approximated by a
linear ramp over the box's extent along the edge normal, which is exact for a planar edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

LEVEL_NAMES: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
)

# Height (body + disc, mm) of each level for an average adult.
_LEVEL_HEIGHTS = np.array(
    [12.0, 20.0, 15.0, 15.0, 15.0, 15.0, 15.0] + list(np.linspace(19.0, 27.0, 12)) + [33.0] * 5
)

Z_TABLE_START = -700.0
Z_TABLE_STEP = 0.2
Z_TABLE_SIZE = 4000  # covers -700 mm .. +100 mm


@dataclass(frozen=True)
class Lesion:
    """An MS lesion: an ellipsoid in the cord frame, clipped to the cord.

    ``center`` is ``(u0, v0, z0)``: in-plane offset from the centreline and S-I position (mm);
    ``radii`` the semi-axes (LR, AP, SI); ``visibility`` the fraction of the full lesion contrast
    each sequence shows (0 invisible, 1 full).
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    visibility: dict[str, float]


@dataclass
class Anatomy:
    """Tabulated anatomy of one subject. Build it with :func:`draw_anatomy`."""

    levels: dict[str, tuple[float, float]]  # name -> (z_top, z_bottom)
    cord_top: float
    conus_tip: float
    tables: dict[str, np.ndarray]  # per-z profiles (see draw_anatomy)
    lesions: list[Lesion] = field(default_factory=list)

    def lookup(self, z: np.ndarray) -> np.ndarray:
        """Indices into the z tables for world S-I positions ``z``.

        Args:
            z: S-I positions, in anatomy mm.

        Returns:
            int32 indices, clipped to the tables.
        """
        idx = ((z - Z_TABLE_START) * (1.0 / Z_TABLE_STEP) + 0.5).astype(np.int32)
        return np.clip(idx, 0, Z_TABLE_SIZE - 1)

    def centerline(self, z: npt.ArrayLike) -> np.ndarray:
        """True cord centreline points ``(N, 3)`` at the S-I positions ``z``.

        Args:
            z: S-I positions, in anatomy mm.

        Returns:
            The ``(x, y, z)`` centreline points.
        """
        si = np.asarray(z, dtype=float)
        zt = self.z_table
        return np.stack(
            [np.interp(si, zt, self.tables["cx"]), np.interp(si, zt, self.tables["cy"]), si], axis=1
        )

    @property
    def z_table(self) -> np.ndarray:
        """The S-I position (mm) of each row of the per-z tables."""
        return Z_TABLE_START + Z_TABLE_STEP * np.arange(Z_TABLE_SIZE)

    def level_z(self, name: str, where: str = "top") -> float:
        """The S-I position of a vertebral level.

        Args:
            name: The level (``C1`` ... ``L5``).
            where: ``top``, ``bottom`` or ``mid``.

        Returns:
            The position, in anatomy mm.
        """
        top, bottom = self.levels[name]
        return {"top": top, "bottom": bottom, "mid": 0.5 * (top + bottom)}[where]


def _bump(z: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-(((z - center) / width) ** 2))


def draw_anatomy(
    rng: np.random.Generator,
    *,
    n_lesions: int,
    sequences,
    cord_scale: float = 1.0,
    canal_scale: float = 1.0,
) -> Anatomy:
    """Draw a random adult spine: levels, curved cord, cross-sections, CSF, bones, lesions.

    Args:
        rng: The subject's random generator.
        n_lesions: How many lesions to draw.
        sequences: The sequences each lesion gets a visibility on.
        cord_scale: Scales the cord's cross-section (and the canal's minimum size) on top of
            the drawn size; lesions are placed in the scaled cord. Not drawn from ``rng``, so a
            randomised subject keeps every other draw of the default one.
        canal_scale: Scales the CSF margin between the cord and the canal wall.

    Returns:
        The anatomy.
    """
    scale = rng.uniform(0.92, 1.08)
    heights = _LEVEL_HEIGHTS * scale * rng.uniform(0.96, 1.04, size=_LEVEL_HEIGHTS.size)
    tops = -np.concatenate([[0.0], np.cumsum(heights)[:-1]])
    levels = {
        name: (float(top), float(top - h))
        for name, top, h in zip(LEVEL_NAMES, tops, heights, strict=True)
    }
    mid = {name: 0.5 * (t + b) for name, (t, b) in levels.items()}
    z = Z_TABLE_START + Z_TABLE_STEP * np.arange(Z_TABLE_SIZE)

    # Centreline: cervical lordosis (anterior bow), thoracic kyphosis (posterior bow), mild
    # left-right drift (scoliosis).
    lordosis = rng.uniform(4.0, 10.0) * _bump(z, mid["C4"], rng.uniform(35.0, 50.0))
    kyphosis = -rng.uniform(6.0, 14.0) * _bump(z, mid["T6"], rng.uniform(80.0, 110.0))
    lumbar = rng.uniform(3.0, 8.0) * _bump(z, mid["L3"], 60.0)
    cy = lordosis + kyphosis + lumbar + rng.uniform(-3.0, 3.0)
    cx = rng.uniform(-3.0, 3.0) + sum(
        rng.uniform(0.4, 2.0)
        * np.sin(2 * np.pi * z / rng.uniform(150.0, 400.0) + rng.uniform(0, 6.3))
        for _ in range(2)
    )

    # Cord cross-section: cervical and lumbar enlargements, medulla widening above C1, conus taper.
    size = rng.uniform(0.9, 1.1)
    cord_top = 45.0
    conus_tip = levels["L1"][1] + rng.uniform(-10.0, 10.0)
    c56 = levels["C5"][1]
    a = (
        4.0
        + 2.2 * _bump(z, c56, 22.0)
        + 0.9 * _bump(z, mid["T12"], 20.0)
        + 0.05 * np.clip(z, 0, None)
    )
    b = (
        3.1
        + 0.7 * _bump(z, c56, 22.0)
        + 0.5 * _bump(z, mid["T12"], 20.0)
        + 0.05 * np.clip(z, 0, None)
    )
    taper = np.sqrt(np.clip((z - conus_tip) / 25.0, 0.0, 1.0))
    a, b = a * size * taper * cord_scale, b * size * taper * cord_scale

    # CSF sac: wider than the cord, continues below the conus (cauda equina) down to L5.
    margin_lr, margin_ap = rng.uniform(2.5, 4.0), rng.uniform(2.5, 4.0)
    canal_a = np.maximum(a, 3.5 * cord_scale) + margin_lr * canal_scale
    canal_b = np.maximum(b, 3.0 * cord_scale) + margin_ap * canal_scale
    canal_dy = rng.uniform(-0.8, 0.8)

    # Bones: body size grows down the spine; disc and posterior elements by position within level.
    level_idx = np.searchsorted(-tops, -z, side="right") - 1
    level_idx = np.clip(level_idx, 0, len(LEVEL_NAMES) - 1)
    region = np.interp(level_idx, [0, 7, 19, 23], [0.0, 1.0, 2.0, 2.3])
    body_lr = np.interp(region, [0, 1, 2, 2.3], [8.5, 12.5, 17.0, 18.0]) * scale
    body_ap = np.interp(region, [0, 1, 2, 2.3], [7.5, 10.5, 14.0, 15.0]) * scale
    disc_th = np.interp(region, [0, 1, 2, 2.3], [4.5, 5.0, 9.0, 10.0])
    depth = tops[level_idx] - z  # distance below the top of its level
    height = heights[level_idx]
    # Signed distance to the nearest disc boundary (negative inside): the disc is the bottom slab
    # of each level, between this level's body and the next one's.
    top_edge = height - disc_th
    to_disc = np.where(
        depth < top_edge,
        np.minimum(top_edge - depth, np.where(level_idx == 0, np.inf, depth)),
        -np.minimum(depth - top_edge, height - depth),
    )
    to_disc[z > 0] = 10.0  # above C1: skull base, no disc
    # Posterior arch present over the middle of each level.
    frac = depth / height
    to_post = np.minimum(frac - 0.15, 0.75 - frac) * height
    to_post[z > 0] = -5.0
    airway = (z < levels["C2"][0]) & (z > levels["T1"][1])
    has_bone = (z <= 0.0).astype(np.float64)

    tables = {
        "cx": cx,
        "cy": cy,
        "a": a,
        "b": b,
        "canal_a": canal_a,
        "canal_b": canal_b,
        "body_lr": body_lr,
        "body_ap": body_ap,
        "to_disc": to_disc,
        "to_post": to_post,
        "airway": airway.astype(np.float64),
        "has_bone": has_bone,
    }
    tables = {k: v.astype(np.float32) for k, v in tables.items()}
    anatomy = Anatomy(levels=levels, cord_top=cord_top, conus_tip=float(conus_tip), tables=tables)
    anatomy.tables["canal_dy"] = np.full(Z_TABLE_SIZE, canal_dy, dtype=np.float32)
    anatomy.lesions = [_draw_lesion(rng, anatomy, sequences) for _ in range(n_lesions)]
    return anatomy


def _draw_lesion(rng: np.random.Generator, anatomy: Anatomy, sequences) -> Lesion:
    # MS cord lesions are most frequent in the cervical cord.
    if rng.random() < 0.75:
        z0 = rng.uniform(anatomy.level_z("C7", "bottom"), anatomy.level_z("C1", "top") - 5.0)
    else:
        z0 = rng.uniform(anatomy.level_z("T3", "bottom"), anatomy.level_z("T1", "top"))
    idx = anatomy.lookup(np.array([z0]))[0]
    a, b = float(anatomy.tables["a"][idx]), float(anatomy.tables["b"][idx])
    # Mostly in the white-matter periphery (outside the central grey matter).
    theta = rng.uniform(0, 2 * np.pi)
    rho = rng.uniform(0.35, 0.8)
    u0, v0 = rho * a * np.cos(theta), rho * b * np.sin(theta)
    width = rng.uniform(1.5, 6.0)
    length = rng.uniform(max(3.0, 1.2 * width), 20.0)  # elongated along S-I
    radii = (width / 2, width / 2 * rng.uniform(0.7, 1.0), length / 2)
    faint_on_t2sag = rng.random() < 0.3
    visibility = {}
    for seq in sequences:
        if seq == "T2Sag" and faint_on_t2sag:
            visibility[seq] = rng.uniform(0.25, 0.45)
        elif faint_on_t2sag and seq in ("STIR", "T2starAx"):
            visibility[seq] = rng.uniform(0.8, 1.0)
        else:
            visibility[seq] = rng.uniform(0.45, 1.0)
    return Lesion(center=(float(u0), float(v0), float(z0)), radii=radii, visibility=visibility)


# ---------------------------------------------------------------------------------------------
# Partial-volume kernel


def _ramp(signed_dist: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Fraction of a box inside a region, given the signed distance of its centre to the edge."""
    return np.clip(0.5 - signed_dist / width, 0.0, 1.0)


def _ellipse_fraction(u, v, ra, rb, edges) -> np.ndarray:
    """Box fraction inside the ellipse ``(u/ra)^2 + (v/rb)^2 <= 1`` (in-plane normal)."""
    ra = np.maximum(ra, 1e-3)
    rb = np.maximum(rb, 1e-3)
    gu, gv = u / (ra * ra), v / (rb * rb)
    g = np.sqrt(gu * gu + gv * gv)
    r = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    safe = g > 1e-6
    scale = np.where(safe, r / np.where(safe, g, 1.0), np.minimum(ra, rb))
    sd = (r - 1.0) * scale
    inv = np.where(safe, 1.0 / np.where(safe, g, 1.0), 0.0)
    nu, nv = gu * inv, gv * inv
    width = sum(np.abs(nu * e[0] + nv * e[1]) for e in edges)
    return _ramp(sd, np.maximum(width, 0.05))


def _slab_fraction(signed_dist, edges) -> np.ndarray:
    """Box fraction on the negative side of a horizontal (S-I) boundary."""
    width = sum(abs(e[2]) for e in edges)
    return _ramp(signed_dist, max(width, 0.05))


@dataclass
class Fractions:
    """Partial-volume fractions of each structure for a set of points."""

    canal: np.ndarray
    cord: np.ndarray
    gm: np.ndarray
    body: np.ndarray
    disc: np.ndarray
    posterior: np.ndarray
    airway: np.ndarray
    fat: np.ndarray
    texture: np.ndarray
    lesions: list[tuple[int, np.ndarray]]  # (lesion index, fraction clipped to the cord)


def tissue_fractions(anatomy: Anatomy, x, y, z, edges) -> Fractions:
    """Structure fractions of boxes centred on ``(x, y, z)`` with edge vectors ``edges`` (mm).

    Args:
        anatomy: The anatomy.
        x: The boxes' x centres (anatomy mm).
        y: Their y centres.
        z: Their z centres.
        edges: The box's edge vectors (mm), over which each boundary is integrated.

    Returns:
        The fraction of each box in each structure and each lesion.
    """
    t = anatomy.tables
    idx = anatomy.lookup(z)
    u = x - t["cx"][idx]
    v = y - t["cy"][idx]
    a, b = t["a"][idx], t["b"][idx]
    canal_v = v - t["canal_dy"][idx]
    canal = _ellipse_fraction(u, canal_v, t["canal_a"][idx], t["canal_b"][idx], edges)
    cord = np.minimum(_ellipse_fraction(u, v, a, b, edges), canal)
    gm = np.minimum(_ellipse_fraction(u, v, 0.5 * a, 0.55 * b, edges), cord)

    body_v = canal_v - (t["canal_b"][idx] + 2.0 + t["body_ap"][idx])
    in_body = _ellipse_fraction(u, body_v, t["body_lr"][idx], t["body_ap"][idx], edges)
    in_body *= t["has_bone"][idx]
    disc_part = _slab_fraction(t["to_disc"][idx], edges)
    body = in_body * (1.0 - disc_part)
    disc = in_body * disc_part
    post_v = canal_v + t["canal_b"][idx] + 9.0
    posterior = _ellipse_fraction(u, post_v, 10.0, 7.0, edges) * _slab_fraction(
        -t["to_post"][idx], edges
    )
    air_v = body_v - t["body_ap"][idx] - 16.0
    airway = _ellipse_fraction(u, air_v, 8.0, 6.0, edges) * t["airway"][idx]
    fat = _ramp(v + 45.0, 3.0)
    texture = 1.0 + 0.08 * np.sin(x * 0.15) * np.sin(z * 0.09 + y * 0.05)

    lesions = []
    for i, lesion in enumerate(anatomy.lesions):
        u0, v0, z0 = lesion.center
        rx, ry, rz = lesion.radii
        near = (
            (np.abs(z - z0) < rz + 3.0) & (np.abs(u - u0) < rx + 3.0) & (np.abs(v - v0) < ry + 3.0)
        )
        if not near.any():
            continue
        frac = np.zeros_like(cord)
        du, dv, dz = (u[near] - u0) / rx, (v[near] - v0) / ry, (z[near] - z0) / rz
        gu, gv, gz = du / rx, dv / ry, dz / rz
        g = np.sqrt(gu * gu + gv * gv + gz * gz)
        r = np.sqrt(du * du + dv * dv + dz * dz)
        safe = g > 1e-6
        inv = np.where(safe, 1.0 / np.where(safe, g, 1.0), 0.0)
        sd = (r - 1.0) * np.where(safe, r * inv, min(rx, ry, rz))
        width = sum(np.abs((gu * e[0] + gv * e[1] + gz * e[2]) * inv) for e in edges)
        frac[near] = _ramp(sd, np.maximum(width, 0.05))
        lesions.append((i, np.minimum(frac, cord)))
    return Fractions(canal, cord, gm, body, disc, posterior, airway, fat, texture, lesions)
