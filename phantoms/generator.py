"""Synthetic abdominal CT phantoms with FLARE-23 labels, for training and end-to-end tests.

No trained weights exist publicly, so the tiny network learns from these. The anatomy is built in
a *design frame* (patient RAS+ mm: +x toward the patient's RIGHT, +y anterior, +z superior; origin at
the body centre, sized for an adult with a 260 x 200 mm body) and placed in the world by one uniform
scale (a small adult, 0.86 x jitter) and a translation. Every voxel is evaluated at its own world
position, so the same seed stored RAS, LPS or oblique contains the same anatomy in world space;
only the sampling grid differs.

Everything random about the anatomy is drawn from ``default_rng(seed)`` before the grid exists, so
the anatomy never depends on the grid; image noise uses a second stream.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from nibabel.orientations import axcodes2ornt
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

from service.errors import InvalidInputError
from service.volume import Volume

logger = logging.getLogger(__name__)

DEFAULT_SPACING: tuple[float, float, float] = (1.6, 1.6, 2.5)
"""Voxel size (mm) of a default phantom: cheap, and still >= 4 voxels across the adrenals."""

# Nominal organ HU (portal-venous phase) by FLARE-23 label; the phantom jitters them by a few HU per
# seed. Kidneys are a brighter cortex over a darker medulla, so their median sits a little lower.
NOMINAL_HU: dict[int, float] = {
    1: 110.0,  # liver
    2: 160.0,  # right kidney (cortex 175, medulla 145)
    3: 120.0,  # spleen
    4: 100.0,  # pancreas
    5: 180.0,  # aorta
    6: 140.0,  # inferior vena cava
    7: 60.0,  # right adrenal
    8: 60.0,  # left adrenal
    9: 10.0,  # gallbladder (bile)
    10: 40.0,  # esophagus
    11: 30.0,  # stomach (wall 45, fluid 20, optional gas anteriorly)
    12: 50.0,  # duodenum
    13: 160.0,  # left kidney
    14: 60.0,  # tumour (hypodense)
}

_DESIGN_TO_MM = 0.86  # design frame (adult) -> phantom mm: a small adult keeps the demo cheap
_HALF_Z = 90.0  # design-frame half height of the field of view (mm)
_AIR, _FAT, _MUSCLE, _LUNG = -1000.0, -100.0, 50.0, -850.0
_PARTIAL_VOLUME_SIGMA_MM = 0.8  # blur of the HU map: edges look like a real scanner's PSF
_SLAB_VOXELS = 4_000_000  # voxels per slab of whole-grid work (bounds the float32 temporaries)

Array = np.ndarray
Coords = tuple[Array, Array, Array]


# ----------------------------------------------------------------------------------------------
# Smooth random fields and shapes (all functions of design-frame position, never of voxel index)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """Smooth random scalar field of position: a sum of plane waves, unit std, bounded by +-2.

    Wavelengths of tens of mm give the low-frequency deformations and textures of the phantom.
    """

    k: Array  # (n, 3) wave vectors, rad/mm
    phase: Array  # (n,) rad

    @classmethod
    def sample(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float] = (40.0, 120.0), n: int = 6):
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n)
        return cls(k=dirs * (2 * math.pi / wavelengths)[:, None], phase=rng.uniform(0, 2 * math.pi, n))

    def __call__(self, x: Array, y: Array, z: Array) -> Array:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase, strict=True):
            out += np.cos(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(ph))
        # A sum of n unit cosines has std sqrt(n/2); clipping keeps deformations bounded.
        return np.clip(out * np.float32(math.sqrt(2.0 / len(self.phase))), -2.0, 2.0)


def _rotation(z_deg: float = 0.0, y_deg: float = 0.0, x_deg: float = 0.0) -> Array:
    """Rotation matrix Rz @ Ry @ Rx (angles in degrees); columns are the local axes in the frame."""
    cz, sz = math.cos(math.radians(z_deg)), math.sin(math.radians(z_deg))
    cy, sy = math.cos(math.radians(y_deg)), math.sin(math.radians(y_deg))
    cx, sx = math.cos(math.radians(x_deg)), math.sin(math.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Blob:
    """A tapered superellipsoid whose surface is pushed in/out by a smooth field.

    ``semi`` are the semi-axes (mm) along the local axes (columns of ``rot``); ``taper`` (ty, tz)
    scales the local y and z semi-axes by ``1 + t * qx`` so one end is thicker (the liver's right lobe).
    ``wobble`` is the relative amplitude of the surface deformation.
    """

    centre: Array
    semi: Array
    rot: Array = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0
    taper: tuple[float, float] = (0.0, 0.0)
    wobble: float = 0.0
    deform: _Field | None = None

    def bounds(self) -> tuple[Array, Array]:
        grow = (1 + 2 * self.wobble) * (1 + max(abs(self.taper[0]), abs(self.taper[1])))
        half = np.abs(self.rot) @ (self.semi * grow)
        return self.centre - half, self.centre + half

    def inside(self, x: Array, y: Array, z: Array, shrink_mm: float = 0.0) -> Array:
        dx, dy, dz = x - np.float32(self.centre[0]), y - np.float32(self.centre[1]), z - np.float32(self.centre[2])
        semi = np.maximum(self.semi - shrink_mm, 0.5)
        r = self.rot.astype(np.float32)
        q = [(r[0, a] * dx + r[1, a] * dy + r[2, a] * dz) / np.float32(semi[a]) for a in range(3)]
        if self.taper != (0.0, 0.0):
            # Thicker toward local +x: divide y/z by a factor that grows along x (kept positive).
            t_y = np.maximum(1 + np.float32(self.taper[0]) * q[0], 0.25)
            t_z = np.maximum(1 + np.float32(self.taper[1]) * q[0], 0.25)
            q[1], q[2] = q[1] / t_y, q[2] / t_z
        e = np.float32(self.exponent)
        radius = np.abs(q[0]) ** e + np.abs(q[1]) ** e + np.abs(q[2]) ** e
        limit = np.float32(1.0)
        if self.deform is not None and self.wobble:
            limit = (1 + np.float32(self.wobble) * self.deform(x, y, z)) ** e
        return radius < limit


class _Tube:
    """A tube of varying radius around a smooth centreline (cubic spline through control points).

    Membership is the distance to the densely sampled centreline (a KD-tree query bounded by the
    largest radius), so tubes may curve freely (the duodenal C, the stomach's J).
    """

    def __init__(self, points: Sequence[Sequence[float]], radii: Sequence[float], *, wobble: float = 0.0,
                 deform: _Field | None = None) -> None:
        ctrl = np.asarray(points, dtype=np.float64)
        chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
        samples = np.linspace(0.0, chord[-1], max(int(chord[-1] / 0.5), 2) + 1)
        self.points = CubicSpline(chord, ctrl, bc_type="natural")(samples)
        self.radii = np.interp(samples, chord, np.asarray(radii, dtype=np.float64))
        self.wobble = wobble
        self.deform = deform
        self._tree = cKDTree(self.points)

    def bounds(self) -> tuple[Array, Array]:
        reach = self.radii.max() * (1 + 2 * self.wobble)
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach

    def inside(self, x: Array, y: Array, z: Array, shrink_mm: float = 0.0) -> Array:
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        pts = np.stack([np.broadcast_to(c, shape).ravel() for c in (x, y, z)], axis=1)
        reach = self.radii.max() * (1 + 2 * self.wobble) + 1.0
        dist, idx = self._tree.query(pts, distance_upper_bound=reach)
        near = np.isfinite(dist)
        radius = np.zeros(dist.shape, dtype=np.float64)
        radius[near] = self.radii[idx[near]]
        radius = radius.reshape(shape)
        if self.deform is not None and self.wobble:
            radius = radius * (1 + self.wobble * self.deform(x, y, z))
        return (dist.reshape(shape) < radius - shrink_mm) & near.reshape(shape)


# ----------------------------------------------------------------------------------------------
# The anatomy: parameters drawn once per seed
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Organ:
    """One labelled structure: its shape, how it is coloured, and where it may exist.

    ``kind`` "abdominal" organs stay in the abdominal cavity below the diaphragm and out of the psoas;
    "vessel" ones (aorta, IVC, esophagus) only stay inside the body cavity and cross the diaphragm.
    A ``shell_mm`` wall gets ``shell_hu`` and the core ``hu`` (kidney cortex, stomach wall); in the
    stomach, core voxels anterior to ``gas_above_y`` are gas (supine patient: gas rises anteriorly).
    """

    label: int
    shape: _Blob | _Tube
    hu: float
    kind: str = "abdominal"
    shell_mm: float = 0.0
    shell_hu: float = 0.0
    gas_above_y: float | None = None
    texture: _Field | None = None
    texture_hu: float = 4.0


@dataclass(frozen=True)
class _Anatomy:
    """Everything random about one phantom, in the design frame (mm)."""

    to_world_scale: float
    to_world_offset: Array
    body_a: float  # body semi-axis along x (left-right)
    body_b: float  # body semi-axis along y (antero-posterior)
    fat_mm: float
    muscle_mm: float
    body_field: _Field
    fat_texture: _Field
    spine_y: float  # y of the vertebral bodies' centre
    vert_semi: tuple[float, float]
    vert_period: float
    vert_phase: float
    dome: tuple[tuple[float, float, float], tuple[float, float, float]]  # (x, y, top z) right, left
    dome_radius: float
    heart: _Blob
    bowel: tuple[tuple[_Blob, bool], ...]  # (blob, has a gas core)
    organs: tuple[_Organ, ...]  # in paint order: later ones win
    tumour: tuple[int, _Blob] | None  # (host label, sphere)
    rib_levels: tuple[tuple[float, float], ...]  # (posterior z, max angle from the back, rad)
    table_top_y: float
    noise_hu: float

    def fov_box(self) -> tuple[Array, Array]:
        """Design-frame box the default field of view covers: body, air margin and the table."""
        lo = np.array([-(self.body_a * 1.08 + 6.0), self.table_top_y - 20.0, -_HALF_Z])
        hi = np.array([self.body_a * 1.08 + 6.0, self.body_b * 1.05 + 6.0, _HALF_Z])
        return lo, hi


def _jit(rng: np.random.Generator, value: float, rel: float) -> float:
    """``value`` scaled by a uniform factor in [1 - rel, 1 + rel]."""
    return float(value * (1 + rng.uniform(-rel, rel)))


def _move(rng: np.random.Generator, point: Sequence[float], mm: float) -> Array:
    """``point`` moved by up to ``mm`` along each axis."""
    return np.asarray(point, dtype=np.float64) + rng.uniform(-mm, mm, 3)


def _tube(rng: np.random.Generator, points: Sequence[Sequence[float]], radii: Sequence[float], *,
          move_mm: float, rel: float, wobble: float) -> _Tube:
    """A tube through jittered control points with jittered radii and a fresh deformation field."""
    shift = rng.uniform(-move_mm, move_mm, 3)  # the whole structure moves, then each point a little
    pts = [np.asarray(p) + shift + rng.uniform(-move_mm / 3, move_mm / 3, 3) for p in points]
    scale = 1 + rng.uniform(-rel, rel)
    return _Tube(pts, [r * scale for r in radii], wobble=wobble, deform=_Field.sample(rng, (30.0, 80.0)))


def _blob(rng: np.random.Generator, centre: Sequence[float], semi: Sequence[float], *, move_mm: float,
          rel: float, wobble: float, rot: Array | None = None, **kw) -> _Blob:
    """A blob with a jittered centre and semi-axes and a fresh deformation field."""
    semi_j = np.asarray(semi, dtype=np.float64) * (1 + rng.uniform(-rel, rel, 3))
    return _Blob(centre=_move(rng, centre, move_mm), semi=semi_j, rot=np.eye(3) if rot is None else rot,
                 wobble=wobble, deform=_Field.sample(rng, (35.0, 100.0)), **kw)


def _sample_organs(rng: np.random.Generator, hu: Callable[[int], float]) -> tuple[_Organ, ...]:
    """The 13 labelled organs in paint order (later ones win where shapes touch)."""
    liver = _blob(rng, (40, 8, 22), (78, 60, 56), move_mm=5, rel=0.08, wobble=0.06, exponent=2.3,
                  taper=(0.35, 0.45), rot=_rotation(z_deg=rng.uniform(-8, 8)))
    stomach = _tube(rng, [(-45, 5, 50), (-50, 28, 26), (-38, 44, 4), (-16, 48, -6), (8, 40, -2)],
                    [26, 23, 20, 16, 11], move_mm=5, rel=0.1, wobble=0.08)
    spleen = _blob(rng, (-74, -20, 30), (24, 50, 50), move_mm=5, rel=0.1, wobble=0.07,
                   rot=_rotation(z_deg=35 + rng.uniform(-8, 8), x_deg=rng.uniform(-10, 10)))
    pancreas = _tube(rng, [(14, 14, -16), (2, 24, -6), (-22, 22, 2), (-48, 6, 4), (-64, -8, 10)],
                     [14, 10, 10, 9, 7], move_mm=4, rel=0.1, wobble=0.12)
    duodenum = _tube(rng, [(10, 40, -2), (28, 30, -4), (36, 16, -14), (36, 14, -40), (26, 14, -54),
                           (0, 16, -58), (-16, 16, -52), (-22, 18, -36)],
                     [11, 11, 11, 10, 10, 10, 10, 9], move_mm=4, rel=0.08, wobble=0.08)
    gallbladder = _blob(rng, (52, 42, -14), (16, 15, 28), move_mm=5, rel=0.15, wobble=0.05,
                        rot=_rotation(x_deg=25 + rng.uniform(-10, 10), z_deg=rng.uniform(-15, 15)))
    kidneys = {
        side: _blob(rng, (60 * sign, -42, -28 if sign > 0 else -20), (27, 24, 50), move_mm=4, rel=0.08,
                    wobble=0.04, rot=_rotation(y_deg=-12 * sign + rng.uniform(-4, 4), z_deg=20 * sign))
        for side, sign in (("right", 1.0), ("left", -1.0))
    }
    adrenals = {
        side: _blob(rng, centre, (5.5, 11, 16), move_mm=3, rel=0.1, wobble=0.05,
                    rot=_rotation(z_deg=30 * sign + rng.uniform(-10, 10)))
        for side, sign, centre in (("right", 1.0, (33, -30, 28)), ("left", -1.0, (-37, -28, 32)))
    }
    esophagus = _tube(rng, [(-4, -14, 95), (-8, -12, 70), (-16, -4, 52), (-28, 4, 44), (-38, 8, 40)],
                      [9, 9, 9, 9, 9], move_mm=3, rel=0.05, wobble=0.05)
    ivc = _tube(rng, [(18, 5, 95), (20, -2, 50), (20, -12, 0), (16, -14, -95)], [10, 10, 10, 10],
                move_mm=3, rel=0.08, wobble=0.05)
    aorta = _tube(rng, [(-26, -32, 95), (-18, -24, 50), (-13, -17, 0), (-10, -14, -95)], [11, 11, 10.5, 10],
                  move_mm=2, rel=0.08, wobble=0.03)

    def organ(label: int, shape: _Blob | _Tube, core_offset_hu: float = 0.0, **kw) -> _Organ:
        texture = _Field.sample(rng, (25.0, 70.0))
        return _Organ(label=label, shape=shape, hu=hu(label) + core_offset_hu, texture=texture, **kw)

    gas = float(rng.uniform(44, 52)) if rng.random() < 0.7 else None
    return (
        organ(1, liver),
        organ(11, stomach, shell_mm=4.0, shell_hu=hu(11) + 15, gas_above_y=gas, core_offset_hu=-10),
        organ(3, spleen),
        organ(4, pancreas, texture_hu=8.0),
        organ(12, duodenum),
        organ(9, gallbladder),
        organ(2, kidneys["right"], shell_mm=5.0, shell_hu=hu(2) + 15, core_offset_hu=-15),
        organ(13, kidneys["left"], shell_mm=5.0, shell_hu=hu(13) + 15, core_offset_hu=-15),
        organ(7, adrenals["right"]),
        organ(8, adrenals["left"]),
        organ(10, esophagus, kind="vessel"),
        organ(6, ivc, kind="vessel"),
        organ(5, aorta, kind="vessel"),
    )


def _organ_hu_sampler(rng: np.random.Generator) -> Callable[[int], float]:
    """Per-seed organ HU: one contrast-timing factor for enhancing organs plus a small organ jitter."""
    contrast = rng.uniform(0.9, 1.1)
    jitter = {label: rng.uniform(-5, 5) for label in NOMINAL_HU}

    def hu(label: int) -> float:
        nominal = NOMINAL_HU[label]
        # Enhancement is what contrast timing changes; ~40 HU is the unenhanced soft-tissue base.
        return float(40 + (nominal - 40) * contrast + jitter[label]) if nominal > 40 else nominal + jitter[label]

    return hu


def _sample_tumour(rng: np.random.Generator, organs: tuple[_Organ, ...]) -> tuple[int, _Blob] | None:
    """A small hypodense sphere inside the liver (most seeds), a kidney (some), or none."""
    draw = rng.random()
    host_label = 1 if draw < 0.65 else (2 if draw < 0.78 else (13 if draw < 0.9 else None))
    # Drawn even when there is no tumour, so every seed consumes the same random stream.
    radius = rng.uniform(7, 14)
    offset = rng.normal(size=3)
    offset *= rng.uniform(0.0, 0.45) / np.linalg.norm(offset)
    if host_label is None:
        return None
    host = next(o.shape for o in organs if o.label == host_label)
    if not isinstance(host, _Blob):  # liver and kidneys are blobs; keep the typing honest
        return None
    centre = host.centre + host.rot @ (host.semi * offset)
    return host_label, _Blob(centre=centre, semi=np.full(3, radius), wobble=0.08,
                             deform=_Field.sample(rng, (15.0, 40.0)))


def _sample_anatomy(seed: int) -> _Anatomy:
    """Draw every anatomical parameter for ``seed`` (design frame, mm) in a fixed order."""
    rng = np.random.default_rng(seed)
    body_a, body_b = _jit(rng, 130.0, 0.05), _jit(rng, 100.0, 0.05)
    hu = _organ_hu_sampler(rng)
    organs = _sample_organs(rng, hu)
    bowel = tuple(
        (_blob(rng, (rng.uniform(-75, 75), rng.uniform(5, 55), rng.uniform(-85, -40)), [rng.uniform(10, 18)] * 3,
               move_mm=0, rel=0.2, wobble=0.1), bool(rng.random() < 0.4))
        for _ in range(int(rng.integers(5, 10)))
    )
    return _Anatomy(
        to_world_scale=_DESIGN_TO_MM * rng.uniform(0.94, 1.06),
        to_world_offset=rng.uniform(-40, 40, 3),
        body_a=body_a,
        body_b=body_b,
        fat_mm=rng.uniform(12, 20),
        muscle_mm=rng.uniform(8, 11),
        body_field=_Field.sample(rng, (80.0, 200.0)),
        fat_texture=_Field.sample(rng, (20.0, 60.0)),
        spine_y=-45 + rng.uniform(-3, 3),
        vert_semi=(_jit(rng, 20, 0.08), _jit(rng, 16, 0.08)),
        vert_period=_jit(rng, 30, 0.05),
        vert_phase=rng.uniform(0, 30),
        dome=((45 + rng.uniform(-5, 5), rng.uniform(-5, 5), 64 + rng.uniform(-6, 6)),
              (-50 + rng.uniform(-5, 5), -5 + rng.uniform(-5, 5), 58 + rng.uniform(-6, 6))),
        dome_radius=_jit(rng, 110, 0.1),
        heart=_blob(rng, (-10, 30, 110), (60, 50, 55), move_mm=5, rel=0.08, wobble=0.05),
        bowel=bowel,
        organs=organs,
        tumour=_sample_tumour(rng, organs),
        rib_levels=tuple((z0, math.pi * (0.42 + 0.43 * n / 7)) for n, z0 in
                         enumerate(np.arange(-30, 150, 24) + rng.uniform(-6, 6))),
        table_top_y=-(body_b * 1.05 + rng.uniform(6, 12)),
        noise_hu=rng.uniform(10, 15),
    )


# ----------------------------------------------------------------------------------------------
# Regions of the anatomy (functions of design-frame coordinates)
# ----------------------------------------------------------------------------------------------


def _body_bump(an: _Anatomy, x: Array, y: Array, z: Array) -> Array:
    """Smooth factor (~1 +- 5 %) by which the body outline and its layers bulge in or out."""
    return 1 + np.float32(0.025) * an.body_field(x, y, z)


def _body_radius(an: _Anatomy, x: Array, y: Array, z: Array, inset_mm: float, bump: Array | None = None) -> Array:
    """Normalised elliptic radius (< 1 inside) of the body outline moved inward by ``inset_mm``.

    ``bump`` is ``_body_bump`` at the same points, passed in when already computed (it is the costly part).
    """
    a = np.float32(an.body_a) * (1 + np.float32(0.03 / _HALF_Z) * z) - np.float32(inset_mm)
    b = np.float32(an.body_b - inset_mm)
    if bump is None:
        bump = _body_bump(an, x, y, z)
    return np.sqrt((x / a) ** 2 + (y / b) ** 2) / bump


def _spine_block(an: _Anatomy, x: Array, y: Array) -> Array:
    """Vertebral bodies, the arch behind them and a 3 mm margin: no organ may sit here."""
    ax, ay = an.vert_semi[0] + 3, an.vert_semi[1] + 3
    dy = y - np.float32(an.spine_y)
    return ((x / ax) ** 2 + (dy / ay) ** 2 < 1) | ((dy < 0) & (np.abs(x) < ax))


def _paraspinal(an: _Anatomy, x: Array, y: Array) -> Array:
    """The erector spinae: two ellipses either side of the spinous processes."""
    cy = np.float32(an.spine_y - 30)
    return (((np.abs(x) - 28) / 24) ** 2 + ((y - cy) / 17) ** 2) < 1


def _psoas(an: _Anatomy, x: Array, y: Array, z: Array) -> Array:
    """The psoas muscles: grow from nothing at z = 20 mm to 14 mm radius beside the lower spine."""
    r = np.clip(0.15 * (20 - z), 0, 14).astype(np.float32)
    cx, cy = np.float32(an.vert_semi[0] + 14), np.float32(an.spine_y + 2)
    return (np.abs(x) - cx) ** 2 + (y - cy) ** 2 < r**2


def _cavity(an: _Anatomy, x: Array, y: Array, z: Array, bump: Array | None = None) -> Array:
    """Inside the muscle wall, outside the spine and the back muscles."""
    inner = _body_radius(an, x, y, z, an.fat_mm + an.muscle_mm, bump) < 1
    return inner & ~_spine_block(an, x, y) & ~_paraspinal(an, x, y)


def _dome_z(an: _Anatomy, x: Array, y: Array) -> Array:
    """Height (mm) of the diaphragm: the higher of two paraboloid domes, right one higher."""
    heights = [np.float32(zt) - ((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2) / np.float32(2 * an.dome_radius)
               for cx, cy, zt in an.dome]
    return np.maximum(*heights)


def _allowed(an: _Anatomy, kind: str, x: Array, y: Array, z: Array) -> Array:
    """Where an organ of ``kind`` may exist (see ``_Organ``)."""
    region = _cavity(an, x, y, z)
    if kind == "abdominal":
        region &= (z < _dome_z(an, x, y) - 1.5) & ~_psoas(an, x, y, z)
    return region


# ----------------------------------------------------------------------------------------------
# The sampling grid
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel grid with an affine to the design frame (mm); evaluates coordinates per box."""

    affine: Array  # voxel index -> design-frame mm
    shape: tuple[int, int, int]

    def slices(self, lo: Array, hi: Array) -> tuple[slice, slice, slice] | None:
        """Index box (one voxel of margin) covering the design-frame box [lo, hi]; None if outside."""
        corners = np.array([[c[0], c[1], c[2], 1.0] for c in _box_corners(lo, hi)]).T
        ijk = (np.linalg.inv(self.affine) @ corners)[:3]
        start = np.maximum(np.floor(ijk.min(axis=1)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 2, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> Coords:
        """Design-frame x, y, z (float32, broadcast to the box) of the voxel centres in ``sl``."""
        i = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None, None]
        j = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :, None]
        k = np.arange(sl[2].start, sl[2].stop, dtype=np.float32)[None, None, :]
        m = self.affine.astype(np.float32)
        return tuple(m[r, 0] * i + m[r, 1] * j + m[r, 2] * k + m[r, 3] for r in range(3))  # type: ignore[return-value]


def _box_corners(lo: Array, hi: Array) -> list[tuple[float, float, float]]:
    return [(a, b, c) for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]


def _direction(orientation: str) -> Array:
    """3x3 matrix whose columns are the RAS+ unit vectors of the voxel axes for an axcode like "LPS"."""
    code = orientation.upper() if isinstance(orientation, str) else ""
    try:
        ornt = axcodes2ornt(tuple(code)) if len(code) == 3 else None
    except ValueError:
        ornt = None
    if ornt is None or np.isnan(ornt).any() or sorted(ornt[:, 0].astype(int)) != [0, 1, 2]:
        raise InvalidInputError(
            f"orientation must be a 3-letter axis code with one of R/L, A/P, S/I each (e.g. RAS, LPS), got {orientation!r}"
        )
    direction = np.zeros((3, 3))
    for voxel_axis, (world_axis, sign) in enumerate(ornt):
        direction[int(world_axis), voxel_axis] = sign
    return direction


def _check_args(shape: Sequence[int] | None, spacing: Sequence[float], oblique_deg: float
                ) -> tuple[tuple[int, int, int] | None, Array]:
    """Validate the grid arguments; return (shape or None, spacing as an array)."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
        raise InvalidInputError(f"spacing must be three positive mm values, got {spacing!r}")
    if not math.isfinite(oblique_deg) or abs(oblique_deg) > 45:
        raise InvalidInputError(f"oblique_deg must be a finite angle within +-45 degrees, got {oblique_deg!r}")
    if shape is None:
        return None, spacing_arr
    if len(shape) != 3 or any(int(n) != n or n < 2 for n in shape):
        raise InvalidInputError(f"shape must be three integers >= 2, got {shape!r}")
    return tuple(int(n) for n in shape), spacing_arr  # type: ignore[return-value]


def _world_affine(an: _Anatomy, shape: tuple[int, int, int] | None, spacing: Array, orientation: str,
                  oblique_deg: float) -> tuple[Array, tuple[int, int, int]]:
    """Voxel -> world affine and grid shape: the field of view centred on the anatomy's box."""
    rot = _rotation(z_deg=oblique_deg, x_deg=oblique_deg)
    axes = rot @ _direction(orientation)  # unit voxel axes in world
    lo, hi = an.fov_box()
    centre = an.to_world_offset + an.to_world_scale * (lo + hi) / 2
    extent = an.to_world_scale * (hi - lo)
    if shape is None:
        # The rotated grid must cover the whole world box: its width along each voxel axis.
        width = np.abs(axes.T) @ extent
        shape = tuple(int(math.ceil(w / s)) for w, s in zip(width, spacing, strict=True))  # type: ignore[assignment]
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Painting
# ----------------------------------------------------------------------------------------------


def _slabs(grid: _Grid) -> Iterator[tuple[slice, slice, slice]]:
    """Whole-grid work goes slab by slab along k, so memory stays ~100 MB even for 512^2 x 500 grids."""
    ni, nj, nk = grid.shape
    step = max(1, _SLAB_VOXELS // (ni * nj))
    for k0 in range(0, nk, step):
        yield slice(0, ni), slice(0, nj), slice(k0, min(nk, k0 + step))


def _paint_body(an: _Anatomy, grid: _Grid, hu: Array) -> None:
    """Table, body layers, intra-abdominal fat and lungs (slab by slab), then the heart and bowel."""
    for sl in _slabs(grid):
        x, y, z = grid.coords(sl)
        _paint_layers(an, x, y, z, hu[sl])
    _paint_heart_and_bowel(an, grid, hu)


def _paint_layers(an: _Anatomy, x: Array, y: Array, z: Array, hu: Array) -> None:
    """Table, fat, muscle wall, back muscles, psoas, intra-abdominal fat and lungs into ``hu`` (at x, y, z)."""
    _paint_table(an, x, y, hu)
    bump = _body_bump(an, x, y, z)
    outer = _body_radius(an, x, y, z, 0.0, bump) < 1
    wall = _body_radius(an, x, y, z, an.fat_mm, bump) < 1
    inner = _body_radius(an, x, y, z, an.fat_mm + an.muscle_mm, bump) < 1
    texture = an.fat_texture(x, y, z)
    hu[outer] = _FAT + 8 * texture[outer]
    hu[wall & ~inner] = _MUSCLE
    psoas = _psoas(an, x, y, z)
    hu[(_paraspinal(an, x, y) | psoas) & wall] = _MUSCLE
    cavity = _cavity(an, x, y, z, bump) & ~psoas
    hu[cavity] = -90 + 10 * texture[cavity]
    mediastinum = (np.abs(x + 5) < 22) & (y > an.spine_y)
    lung = cavity & (z > _dome_z(an, x, y)) & ~mediastinum
    hu[lung] = _LUNG + 30 * texture[lung]


def _paint_heart_and_bowel(an: _Anatomy, grid: _Grid, hu: Array) -> None:
    """Unlabelled soft tissue the network must learn to ignore: the heart above the diaphragm, bowel below."""
    def region(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        cavity = _cavity(an, x, y, z) & ~_psoas(an, x, y, z)
        above = z > _dome_z(an, x, y)
        return cavity & above, cavity & ~above

    sl = grid.slices(*an.heart.bounds())
    if sl is not None:
        x, y, z = grid.coords(sl)
        hu[sl][an.heart.inside(x, y, z) & region(x, y, z)[0]] = 130.0
    for blob, gas in an.bowel:
        sl = grid.slices(*blob.bounds())
        if sl is None:
            continue
        x, y, z = grid.coords(sl)
        loop = blob.inside(x, y, z) & region(x, y, z)[1]
        hu[sl][loop] = 30.0
        if gas:
            hu[sl][loop & blob.inside(x, y, z, shrink_mm=float(blob.semi[0]) * 0.55)] = -800.0


def _paint_table(an: _Anatomy, x: Array, y: Array, hu: Array) -> None:
    """A curved pad (4 mm) and a flat slab (6 mm) below the patient, separated from the body by air."""
    pad_top = np.float32(an.table_top_y) + x**2 / np.float32(2 * 420.0)
    pad = (y < pad_top) & (y > pad_top - 4) & (np.abs(x) < 0.85 * an.body_a)
    slab = (y < an.table_top_y - 10) & (y > an.table_top_y - 16)
    hu[np.broadcast_to(pad | slab, hu.shape)] = 300.0


def _paint_organs(an: _Anatomy, grid: _Grid, hu: Array, labels: Array) -> None:
    """Every labelled organ in paint order, then the tumour inside its host."""
    for organ in an.organs:
        sl = grid.slices(*organ.shape.bounds())
        if sl is None:
            continue
        x, y, z = grid.coords(sl)
        mask = organ.shape.inside(x, y, z) & _allowed(an, organ.kind, x, y, z)
        if not mask.any():
            continue
        values = np.full(mask.shape, organ.hu, dtype=np.float32)
        if organ.shell_mm:
            core = organ.shape.inside(x, y, z, shrink_mm=organ.shell_mm)
            values[~core] = organ.shell_hu
            if organ.gas_above_y is not None:
                values[core & (y > organ.gas_above_y)] = -900.0
        if organ.texture is not None:
            values += np.float32(organ.texture_hu) * organ.texture(x, y, z)
        labels[sl][mask] = organ.label
        hu[sl][mask] = values[mask]
    if an.tumour is not None:
        host, sphere = an.tumour
        sl = grid.slices(*sphere.bounds())
        if sl is not None:
            x, y, z = grid.coords(sl)
            mask = sphere.inside(x, y, z) & (labels[sl] == host)
            labels[sl][mask] = 14
            hu[sl][mask] = NOMINAL_HU[14]


def _paint_bones(an: _Anatomy, grid: _Grid, hu: Array, labels: Array) -> None:
    """Spine (vertebral bodies, discs, arch; the whole height of the grid) and ribs; bone is never labelled."""
    ay = an.vert_semi[1]
    sl = grid.slices(np.array([-45.0, an.spine_y - 60, -1e4]), np.array([45.0, an.spine_y + ay + 5, 1e4]))
    if sl is not None:
        x, y, z = grid.coords(sl)
        bone = _spine_hu(an, x, y, z)
        sub_hu, sub_lab = hu[sl], labels[sl]
        hit = np.isfinite(bone)
        sub_hu[hit] = bone[hit]
        sub_lab[hit & (bone > 200)] = 0
    for sl in _slabs(grid):
        x, y, z = grid.coords(sl)
        rib = _ribs(an, x, y, z, _body_bump(an, x, y, z))
        hu[sl][rib] = 500.0
        labels[sl][rib] = 0


def _spine_hu(an: _Anatomy, x: Array, y: Array, z: Array) -> Array:
    """HU of the spine's parts (NaN where there is no spine): cortex 700, cancellous 400, discs 90."""
    ax, ay = an.vert_semi
    dy = y - np.float32(an.spine_y)
    out = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.nan, dtype=np.float32)
    body_r = np.sqrt((x / ax) ** 2 + (dy / ay) ** 2)
    level = np.mod(z - np.float32(an.vert_phase), np.float32(an.vert_period))
    disc = level < 5.0
    vertebra = np.broadcast_to(body_r < 1, out.shape)
    out[vertebra] = np.where(np.broadcast_to(body_r > 1 - 2.5 / ay, out.shape), 700.0, 400.0)[vertebra]
    out[vertebra & np.broadcast_to(disc, out.shape)] = 90.0
    # Posterior arch: a ring around the canal, the spinous process and the transverse processes.
    canal_r = np.sqrt(x**2 + (dy + 25) ** 2)
    arch = ((canal_r > 8) & (canal_r < 14) & (dy < -ay + 4)) | ((np.abs(x) < 4) & (dy < -35) & (dy > -52))
    transverse = (np.abs(x) > 12) & (np.abs(x) < 40) & (np.abs(dy + 25) < 4) & (np.abs(level - 17) < 6)
    bone = np.broadcast_to(arch | transverse, out.shape) & ~vertebra
    out[bone] = 600.0
    out[np.broadcast_to(canal_r <= 8, out.shape)] = 30.0  # cord / CSF
    return out


def _ribs(an: _Anatomy, x: Array, y: Array, z: Array, bump: Array) -> Array:
    """Ribs: bands in the muscle wall that start at the spine and descend ~55 mm toward the front."""
    inset = an.fat_mm + an.muscle_mm / 2
    rho = _body_radius(an, x, y, z, inset, bump)
    angle = np.abs(np.arctan2(x, -y))  # 0 at the back, pi at the front
    radial_mm = (rho - 1) * np.sqrt(x**2 + y**2) / np.maximum(rho, 1e-3)
    in_wall = np.abs(radial_mm) < 4.5
    out = np.zeros(rho.shape, dtype=bool)
    for z0, max_angle in an.rib_levels:
        rib_z = np.float32(z0) - np.float32(27.5) * (1 - np.cos(angle))
        out |= in_wall & (np.abs(z - rib_z) < 4.5) & (angle > 0.38) & (angle < max_angle)
    return out


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def make_phantom(
    *,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    orientation: str = "RAS",
    oblique_deg: float = 0.0,
) -> tuple[Volume, Volume]:
    """Synthetic abdominal CT and its FLARE-23 labels for ``seed``.

    Args:
        seed: anatomy and noise are a pure function of it (sizes/positions vary by ~10-15 %).
        shape: voxels along (i, j, k); None derives it from the field of view (about
            250 x 210 x 155 mm, varying with the seed) so the grid covers it whatever the rotation.
            A given shape is centred on the same field of view.
        spacing: voxel size in mm along (i, j, k).
        orientation: nibabel axis code of the voxel axes ("RAS", "LPS", "PIR", ...).
        oblique_deg: rotation (degrees, |angle| <= 45) of the voxel axes about world z then x.

    Returns:
        ``(ct, labels)``: CT in int16 HU and labels in uint8 (0 background, 1..13 organs,
        14 tumour) on the same grid; the affine maps voxels to RAS+ world mm.
    """
    start = time.perf_counter()
    shape, spacing_arr = _check_args(shape, spacing, oblique_deg)
    an = _sample_anatomy(int(seed))
    affine, shape = _world_affine(an, shape, spacing_arr, orientation, float(oblique_deg))
    world_to_design = np.eye(4)
    world_to_design[:3, :3] /= an.to_world_scale
    world_to_design[:3, 3] = -an.to_world_offset / an.to_world_scale
    grid = _Grid(affine=world_to_design @ affine, shape=shape)

    hu = np.full(shape, _AIR, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    _paint_body(an, grid, hu)
    _paint_organs(an, grid, hu, labels)
    _paint_bones(an, grid, hu, labels)

    # Partial volume: blur by a scanner-like PSF (mm -> voxels of this grid), then quantum noise.
    hu = ndimage.gaussian_filter(hu, sigma=_PARTIAL_VOLUME_SIGMA_MM / spacing_arr, mode="nearest")
    noise_rng = np.random.default_rng([int(seed), 0x5EED])
    ct = np.empty(shape, dtype=np.int16)
    for sl in _slabs(grid):
        slab = hu[sl] + noise_rng.standard_normal(hu[sl].shape, dtype=np.float32) * np.float32(an.noise_hu)
        ct[sl] = np.clip(np.rint(slab), -1024, 3071)

    meta = {"source": "phantom", "seed": int(seed), "orientation": orientation.upper(), "oblique_deg": float(oblique_deg)}
    logger.debug("phantom seed=%d shape=%s in %.2f s", seed, shape, time.perf_counter() - start)
    ct_volume = Volume(array=ct, affine=affine, meta=dict(meta))
    return ct_volume, ct_volume.with_array(labels)
