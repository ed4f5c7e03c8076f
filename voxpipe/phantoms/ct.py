"""Synthetic CT phantoms with labels, written as MSD-style datasets.

Why our own: MONAI's ``create_test_image_3d`` draws random spheres on a flat background; a network
trained on it learns nothing about CT. These phantoms are small (CPU-sized) but have the things a
liver or lung model must cope with: Hounsfield units per tissue, a body in air, fat and muscle walls,
bone, organs of liver-like density next to the liver (spleen, IVC), hypodense tumours, lung bases,
noise and blur, per-case smooth shape deformations, anisotropic spacing, and affines that are not
identity (stored with axis flips, LPS-style). Labels follow the Medical Segmentation Decathlon:
Task03 liver (0 background, 1 liver, 2 tumour) and Task06 lung (0 background, 1 tumour), with the
lung masks (1 right lung, 2 left lung) as a second label map.

Anatomy is modelled in world millimetres on a canonical grid whose voxel axes point to the patient's
Right, Anterior and Superior (RAS+, the nibabel convention: x grows towards the patient's right, so
the liver sits at positive x and the spine at negative y). The stored array is then flipped per case
and the affine adjusted, so world positions (and what a viewer shows) are unchanged.

Everything is deterministic for a seed: case ``i`` of a dataset with seed ``s`` uses
``numpy.random.default_rng([s, i])``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from voxpipe import __version__
from voxpipe.errors import InputError
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import save_nifti

logger = logging.getLogger(__name__)

LIVER_LABELS = {"0": "background", "1": "liver", "2": "tumour"}
LUNG_LABELS = {"0": "background", "1": "tumour"}
LUNG_MASK_LABELS = {"0": "background", "1": "right lung", "2": "left lung"}

# Storage orientations: which canonical (R, A, S) voxel axes are flipped on disk.
ORIENTATIONS = {
    "RAS": (False, False, False),
    "LPS": (True, True, False),
    "LAS": (True, False, False),
    "LPI": (True, True, True),
}


@dataclass(frozen=True)
class Phantom:
    """One synthetic case.

    Attributes:
        image: CT in HU, int16, indexed (x, y, z) as stored on disk.
        label: uint8 label map on the same grid.
        affine: 4×4 voxel-to-RAS-world affine in mm.
        extra_labels: further label maps on the same grid (e.g. ``"lungs"``).
        orientation: the storage orientation code (``"RAS"``, ``"LPS"``, ...).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)
    orientation: str = "RAS"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the stored axes."""
        sx, sy, sz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(sx), float(sy), float(sz)


@dataclass(frozen=True)
class _Grid:
    """Canonical RAS grid: world coordinates (mm) of every voxel, centred on the volume."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def fov(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing, strict=True))  # type: ignore[return-value]


def _make_grid(
    rng: np.random.Generator,
    *,
    in_plane: tuple[int, int],
    slices: tuple[int, int],
    spacing_xy: tuple[float, float],
    spacing_z: tuple[float, float],
) -> _Grid:
    nx = int(rng.integers(in_plane[0], in_plane[1] + 1))
    ny = int(rng.integers(in_plane[0], in_plane[1] + 1))
    nz = int(rng.integers(slices[0], slices[1] + 1))
    sxy = round(float(rng.uniform(*spacing_xy)), 3)
    sz = round(float(rng.uniform(*spacing_z)), 2)
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in ((nx, sxy), (ny, sxy), (nz, sz))]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return _Grid((nx, ny, nz), (sxy, sxy, sz), x, y, z)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """Smooth random field of roughly unit amplitude.

    Coarse Gaussian noise is interpolated to ``shape`` with separable Gaussian weights (one small
    matrix per axis), which is ~50× faster than ``ndimage.zoom`` with cubic splines at these sizes.
    """
    field_ = rng.standard_normal(coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse, strict=True)):
        t = (np.arange(n, dtype=np.float32) + 0.5) * c / n - 0.5  # fine voxel centres in coarse units
        weights = np.exp(-0.5 * ((t[:, None] - np.arange(c, dtype=np.float32)[None, :]) / 0.6) ** 2)
        weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))  # keep the variance ~1
        field_ = np.moveaxis(np.tensordot(weights, field_, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(field_, dtype=np.float32)


def _deformed_coordinates(
    rng: np.random.Generator, grid: _Grid, *, amplitude_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates displaced by one smooth random field (posture, body habitus): a few mm.

    Shapes drawn in these coordinates deform together, so organs keep their relative positions.
    """
    amplitude = float(rng.uniform(*amplitude_mm))
    return tuple(
        axis + amplitude * _smooth_noise(rng, grid.shape, (3, 3, 3)) for axis in (grid.x, grid.y, grid.z)
    )  # type: ignore[return-value]


def _ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
) -> np.ndarray:
    """Normalised squared radius: < 1 inside the axis-aligned ellipsoid."""
    return (
        ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2
    )


def _blob(
    rng: np.random.Generator,
    grid: _Grid,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    *,
    roughness: float,
) -> np.ndarray:
    """Irregular smooth blob: an ellipsoid whose implicit surface is perturbed by smooth noise."""
    r2 = _ellipsoid(*coords, centre, axes)
    noise = _smooth_noise(rng, grid.shape, (4, 4, 3))
    return r2 + roughness * noise < 1.0


def _tube(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    points_mm: np.ndarray,
    radii_mm: np.ndarray,
) -> np.ndarray:
    """Rasterise a tube: union of balls along a polyline (points in mm relative to voxel 0)."""
    mask = np.zeros(shape, dtype=bool)
    sp = np.asarray(spacing, dtype=np.float32)
    for point, radius in zip(points_mm, radii_mm, strict=True):
        centre = point / sp
        lo = np.maximum(np.floor(centre - radius / sp).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius / sp).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        ii, jj, kk = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        d2 = (
            ((ii - centre[0]) * sp[0]) ** 2
            + ((jj - centre[1]) * sp[1]) ** 2
            + ((kk - centre[2]) * sp[2]) ** 2
        )
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= d2 <= radius**2
    return mask


def _lesions(
    rng: np.random.Generator,
    grid: _Grid,
    organ: np.ndarray,
    *,
    count: int,
    radius_mm: tuple[float, float],
    min_depth: float,
    roughness: float,
) -> Iterator[np.ndarray]:
    """Yield up to ``count`` irregular lesion masks inside ``organ``.

    Each lesion's centre lies at least ``min_depth × radius`` mm inside the organ; a lesion that
    finds no such place is skipped. A generator, so the caller's own random draws per lesion (its
    HU) interleave with these in a fixed order and phantoms stay reproducible.
    """
    depth = ndimage.distance_transform_edt(organ, sampling=grid.spacing)
    for _ in range(count):
        radius = float(rng.uniform(*radius_mm))
        candidates = np.argwhere(depth > min_depth * radius)
        if len(candidates) == 0:
            continue
        i, j, k = candidates[rng.integers(len(candidates))]
        centre = (grid.x[i, j, k], grid.y[i, j, k], grid.z[i, j, k])
        axes = tuple(radius * rng.uniform(0.8, 1.2) for _ in range(3))
        yield _blob(rng, grid, (grid.x, grid.y, grid.z), centre, axes, roughness=roughness) & organ


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _finish(
    rng: np.random.Generator,
    hu: np.ndarray,
    grid: _Grid,
    *,
    noise_sigma: tuple[float, float] = (10.0, 16.0),
) -> np.ndarray:
    """Slight blur (scanner PSF) and Gaussian noise, then round to int16 HU."""
    sigma_vox = [0.6 * min(grid.spacing) / s for s in grid.spacing]
    blurred = ndimage.gaussian_filter(hu, sigma=sigma_vox)
    blurred += rng.normal(0.0, rng.uniform(*noise_sigma), size=hu.shape).astype(np.float32)
    return np.clip(np.rint(blurred), -1024, 3071).astype(np.int16)


def _store(
    rng: np.random.Generator,
    grid: _Grid,
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    orientation: str | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, str]:
    """Flip canonical arrays into a storage orientation and build the matching affine."""
    if orientation is None:
        orientation = str(rng.choice(list(ORIENTATIONS)))
    if orientation not in ORIENTATIONS:
        raise InputError(
            f"phantom orientation: expected one of {sorted(ORIENTATIONS)}, found {orientation!r}"
        )
    flips = ORIENTATIONS[orientation]
    # World position of canonical voxel 0, with the volume centred near a plausible table position.
    table_offset = np.array([0.0, 0.0, float(rng.uniform(-400.0, -100.0))])
    origin = np.array([grid.x[0, 0, 0], grid.y[0, 0, 0], grid.z[0, 0, 0]], dtype=float) + table_offset
    affine = np.eye(4)
    for axis, flipped in enumerate(flips):
        step = grid.spacing[axis]
        if flipped:
            affine[axis, axis] = -step
            affine[axis, 3] = origin[axis] + (grid.shape[axis] - 1) * step
        else:
            affine[axis, axis] = step
            affine[axis, 3] = origin[axis]
    flip_axes = tuple(a for a, f in enumerate(flips) if f)

    def stored(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(array, axis=flip_axes)) if flip_axes else array

    return stored(image), {k: stored(v) for k, v in labels.items()}, affine, orientation


def liver_phantom(
    seed: int | tuple[int, ...] = 0, *, orientation: str | None = None, size: str = "default"
) -> Phantom:
    """An abdominal CT phantom with liver and 0–4 hypodense tumours (MSD Task03 labels).

    Args:
        seed: seed (or seed tuple) of the case's random generator; same seed, same phantom.
        orientation: storage orientation (a key of :data:`ORIENTATIONS`); random when ``None``.
        size: ``"default"`` (96–128 in-plane, 32–56 slices) or ``"tiny"`` (48–56 in-plane,
            16–20 slices, for unit tests).

    Returns:
        A :class:`Phantom` whose label is 0 background, 1 liver, 2 tumour.
    """
    rng = np.random.default_rng(seed)
    grid = _make_grid(rng, **_SIZES[size])
    fx, fy, fz = grid.fov
    coords = x, y, z = _deformed_coordinates(rng, grid, amplitude_mm=(2.0, 5.0))

    a, b = 0.45 * fx * rng.uniform(0.92, 1.0), 0.40 * fy * rng.uniform(0.88, 1.0)  # body semi-axes
    fat_t, muscle_t = rng.uniform(4.0, 8.0), rng.uniform(3.0, 5.0)
    body = (x / a) ** 2 + (y / b) ** 2 < 1.0
    inside_fat = (x / (a - fat_t)) ** 2 + (y / (b - fat_t)) ** 2 < 1.0
    cavity = (x / (a - fat_t - muscle_t)) ** 2 + (y / (b - fat_t - muscle_t)) ** 2 < 1.0
    z_top, z_bottom = grid.z.max(), grid.z.min()

    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    label = np.zeros(grid.shape, dtype=np.uint8)
    hu[body] = rng.uniform(-110.0, -85.0)
    hu[inside_fat] = rng.uniform(35.0, 50.0)  # abdominal wall muscle
    # Abdominal cavity: mesenteric fat around bowel loops (soft-tissue wall, fluid content, some gas).
    hu[cavity] = rng.uniform(-100.0, -70.0)
    bowel_field = _smooth_noise(rng, grid.shape, (8, 8, 5))
    bowel = cavity & (bowel_field > -0.1)
    hu[bowel] = rng.uniform(30.0, 45.0)
    hu[bowel & (bowel_field > 0.3)] = rng.uniform(0.0, 20.0)
    hu[bowel & (bowel_field > 1.3)] = -1000.0

    def paint(mask: np.ndarray, value: float, texture: float = 4.0, new_label: int | None = 0) -> None:
        mask = mask & cavity
        hu[mask] = value + texture * _smooth_noise(rng, grid.shape, (6, 6, 4))[mask]
        if new_label is not None:
            label[mask] = new_label

    # Kidneys (enhancing cortex), spleen and stomach on the patient's left.
    for side in (+1, -1):
        kidney_centre = (side * 0.45 * a, -0.45 * b, z_bottom + rng.uniform(0.25, 0.4) * fz)
        kidney = _ellipsoid(*coords, kidney_centre, (0.15 * a, 0.2 * b, 0.2 * fz))
        paint(kidney < 1.0, rng.uniform(140.0, 180.0))
        paint(kidney < 0.35, rng.uniform(20.0, 35.0))
    spleen_centre = (-0.6 * a, -0.25 * b, z_top - rng.uniform(0.3, 0.4) * fz)
    spleen = _blob(rng, grid, coords, spleen_centre, (0.2 * a, 0.3 * b, 0.22 * fz), roughness=0.2)
    liver_hu = rng.uniform(55.0, 70.0)
    paint(spleen, liver_hu + rng.uniform(-8.0, 5.0))
    stomach_centre = (-0.3 * a, 0.15 * b, z_top - rng.uniform(0.3, 0.45) * fz)
    stomach = _blob(rng, grid, coords, stomach_centre, (0.25 * a, 0.22 * b, 0.2 * fz), roughness=0.2)
    paint(stomach, rng.uniform(5.0, 20.0))
    paint(stomach & (y > stomach_centre[1] + 0.08 * b), -1000.0, texture=0.0)

    # Vessels next to the liver: aorta (contrast) and IVC, of liver-like or brighter density, not liver.
    flat_z = np.zeros_like(z)
    aorta = _ellipsoid(x, y, flat_z, (-0.1 * a, -0.42 * b, 0.0), (0.07 * a, 0.07 * a, 1.0)) < 1.0
    ivc = _ellipsoid(x, y, flat_z, (0.12 * a, -0.32 * b, 0.0), (0.08 * a, 0.07 * a, 1.0)) < 1.0
    paint(aorta, rng.uniform(130.0, 200.0))
    paint(ivc, rng.uniform(80.0, 120.0))

    # Liver: right lobe + left lobe, irregular, below the right lung base, kept off the abdominal
    # wall by a thin properitoneal fat plane. Slivers left where the stomach and vessels cut into
    # it are opened away (they would be unlearnable partial-volume noise in the label), and only the
    # main piece is kept, before anything is painted, so image and label agree.
    az = rng.uniform(0.3, 0.36) * fz
    cz = z_top - 0.12 * fz - 0.8 * az
    right_lobe = _blob(rng, grid, coords, (0.38 * a, 0.02 * b, cz), (0.45 * a, 0.6 * b, az), roughness=0.25)
    left_lobe = _blob(
        rng, grid, coords, (-0.1 * a, 0.42 * b, cz + 0.2 * az), (0.38 * a, 0.2 * b, 0.55 * az), roughness=0.25
    )
    gap = rng.uniform(1.5, 3.0)
    inner = (x / (a - fat_t - muscle_t - gap)) ** 2 + (y / (b - fat_t - muscle_t - gap)) ** 2 < 1.0
    hu[(right_lobe | left_lobe) & cavity & ~inner & ~stomach] = rng.uniform(-100.0, -70.0)
    liver = (right_lobe | left_lobe) & inner & ~stomach & ~aorta & ~ivc
    opening_vox = [max(1, int(round(3.0 / s))) for s in grid.spacing]  # ~3 mm structuring element
    liver = ndimage.binary_opening(liver, structure=np.ones(opening_vox, dtype=bool))
    liver = _largest_component(liver)
    paint(liver, liver_hu, texture=5.0, new_label=1)

    # Tumours: hypodense, inside the liver, away from its border.
    liver_now = label == 1
    if liver_now.any():
        count = int(rng.integers(0, 5))
        for tumour in _lesions(
            rng, grid, liver_now, count=count, radius_mm=(3.0, 9.0), min_depth=0.8, roughness=0.15
        ):
            paint(tumour, rng.uniform(20.0, 35.0), texture=4.0, new_label=2)

    # Spine (cortex, cancellous bone, discs, canal) behind everything else in the cavity.
    spine_c = (0.0, -0.62 * b)
    r_vb = 0.14 * a
    vb = ((grid.x - spine_c[0]) ** 2 + (grid.y - spine_c[1]) ** 2) < r_vb**2
    cortex = vb & ~(((grid.x - spine_c[0]) ** 2 + (grid.y - spine_c[1]) ** 2) < (r_vb - 1.5) ** 2)
    disc_period = rng.uniform(22.0, 28.0)
    disc = np.abs(((grid.z - rng.uniform(0, disc_period)) % disc_period) - disc_period / 2) < 2.5
    hu[vb] = rng.uniform(220.0, 320.0)
    hu[cortex] = rng.uniform(600.0, 900.0)
    hu[vb & disc] = rng.uniform(70.0, 90.0)
    canal = ((grid.x) ** 2 + (grid.y - (spine_c[1] - r_vb - 0.05 * a)) ** 2) < (0.06 * a) ** 2
    hu[canal] = rng.uniform(5.0, 15.0)
    label[vb | canal] = 0

    # Lung bases above a domed diaphragm, higher on the right (above the liver).
    for side, x_centre in ((+1, 0.45 * a), (-1, -0.45 * a)):
        # The diaphragm bulges upwards in the middle; the lungs reach lowest at the periphery.
        dome = (
            z_top
            - (0.12 if side > 0 else 0.18) * fz
            - 0.25 * fz * (((grid.x - x_centre) / a) ** 2 + (grid.y / b) ** 2)
        )
        lung = cavity & (side * grid.x > 0.08 * a) & (grid.z > dome)
        diaphragm = cavity & (side * grid.x > 0.08 * a) & (grid.z > dome - 3.0) & ~lung
        hu[diaphragm] = rng.uniform(35.0, 50.0)
        hu[lung] = rng.uniform(-870.0, -820.0) + 20.0 * _smooth_noise(rng, grid.shape, (6, 6, 4))[lung]
        label[lung | diaphragm] = 0

    # Ribs: oblique tubes in the body wall, present laterally and posteriorly.
    wall = inside_fat & ~cavity
    theta = np.arctan2(grid.y / b, grid.x / a)
    rib_spacing = rng.uniform(14.0, 20.0)
    rib_z = (grid.z - 8.0 * np.sin(theta) - rng.uniform(0, rib_spacing)) % rib_spacing
    ribs = wall & (np.abs(rib_z - rib_spacing / 2) < rng.uniform(2.5, 3.5)) & (grid.y < 0.55 * b)
    hu[ribs] = rng.uniform(500.0, 900.0)

    image = _finish(rng, hu, grid)
    stored_image, stored_labels, affine, code = _store(rng, grid, image, {"label": label}, orientation)
    return Phantom(stored_image, stored_labels["label"], affine, {}, code)


def lung_phantom(
    seed: int | tuple[int, ...] = 0, *, orientation: str | None = None, size: str = "default"
) -> Phantom:
    """A chest CT phantom with lungs, vessels, airways and 0–3 solid tumours (MSD Task06 labels).

    Args:
        seed: seed of the case's random generator; same seed, same phantom.
        orientation: storage orientation (a key of :data:`ORIENTATIONS`); random when ``None``.
        size: ``"default"`` or ``"tiny"`` (see :func:`liver_phantom`).

    Returns:
        A :class:`Phantom` whose label is 0 background, 1 tumour; ``extra_labels["lungs"]`` holds
        1 right lung, 2 left lung (tumours inside a lung count as that lung).
    """
    rng = np.random.default_rng(seed)
    grid = _make_grid(rng, **_SIZES[size])
    fx, fy, fz = grid.fov
    coords = x, y, z = _deformed_coordinates(rng, grid, amplitude_mm=(2.0, 4.0))

    a, b = 0.46 * fx * rng.uniform(0.92, 1.0), 0.38 * fy * rng.uniform(0.88, 1.0)
    fat_t, muscle_t = rng.uniform(3.0, 7.0), rng.uniform(3.0, 5.0)
    body = (x / a) ** 2 + (y / b) ** 2 < 1.0
    inside_fat = (x / (a - fat_t)) ** 2 + (y / (b - fat_t)) ** 2 < 1.0
    cavity = (x / (a - fat_t - muscle_t)) ** 2 + (y / (b - fat_t - muscle_t)) ** 2 < 1.0

    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[body] = rng.uniform(-110.0, -85.0)
    hu[inside_fat] = rng.uniform(40.0, 55.0)
    hu[cavity] = rng.uniform(30.0, 45.0)  # mediastinum and chest wall soft tissue

    # Lungs: two deformed half-ellipsoids separated by the mediastinum, above a domed base.
    z_bottom = grid.z.min()
    lungs = np.zeros(grid.shape, dtype=np.uint8)
    for value, side in ((1, +1), (2, -1)):
        centre = (side * 0.48 * a, -0.05 * b, grid.z.mean() + 0.1 * fz)
        axes = (0.42 * a if side > 0 else 0.38 * a, 0.8 * b, 0.7 * fz)
        base = (
            z_bottom
            + rng.uniform(0.05, 0.15) * fz
            + 0.3 * fz * (((grid.x - centre[0]) / a) ** 2 + (grid.y / b) ** 2)
        )
        lung = (
            _blob(rng, grid, coords, centre, axes, roughness=0.15)
            & cavity
            & (side * x > 0.17 * a)
            & (grid.z > base)
        )
        lungs[lung] = value
    hu[lungs > 0] = rng.uniform(-870.0, -820.0)
    hu += np.where(lungs > 0, 20.0 * _smooth_noise(rng, grid.shape, (6, 6, 4)), 0.0).astype(np.float32)

    # Heart and descending aorta in the mediastinum.
    heart = (
        _ellipsoid(*coords, (-0.08 * a, 0.3 * b, grid.z.min() + 0.3 * fz), (0.3 * a, 0.35 * b, 0.35 * fz))
        < 1.0
    )
    hu[heart & cavity & (lungs == 0)] = rng.uniform(35.0, 50.0)
    aorta = (x + 0.12 * a) ** 2 + (y + 0.45 * b) ** 2 < (0.08 * a) ** 2
    hu[aorta & cavity & (lungs == 0)] = rng.uniform(120.0, 200.0)

    origin_mm = np.array([grid.x[0, 0, 0], grid.y[0, 0, 0], grid.z[0, 0, 0]], dtype=np.float32)

    def polyline(start: np.ndarray, direction: np.ndarray, length: float, steps: int) -> np.ndarray:
        points = [start]
        d = direction / np.linalg.norm(direction)
        for _ in range(steps - 1):
            d = d + 0.25 * rng.standard_normal(3)
            d /= np.linalg.norm(d)
            points.append(points[-1] + d * length / steps)
        return np.asarray(points, dtype=np.float32) - origin_mm

    # Vessels branch out from each hilum into the lung (blood density, ~40 HU).
    vessel_hu = rng.uniform(30.0, 60.0)
    for side in (+1, -1):
        hilum = np.array([side * 0.22 * a, 0.0, grid.z.mean()])
        for _ in range(int(rng.integers(10, 16))):
            direction = np.array([side * 1.0, rng.uniform(-1, 1), rng.uniform(-1, 1)])
            points = polyline(hilum, direction, rng.uniform(0.5, 0.9) * a, 24)
            radii = np.linspace(rng.uniform(1.5, 2.5), 0.6, len(points))
            vessel = _tube(grid.shape, grid.spacing, points, radii) & (lungs > 0)
            hu[vessel] = vessel_hu

    # Airways: trachea down to the carina, main bronchi to each hilum; air lumen with a soft wall.
    carina = np.array([0.0, 0.05 * b, grid.z.mean() + 0.15 * fz])
    trachea = np.linspace(carina + [0, 0, fz], carina, 16) - origin_mm
    airway_paths = [(trachea, 0.12 * a)]
    for side in (+1, -1):
        bronchus = np.linspace(carina, carina + [side * 0.3 * a, -0.05 * b, -0.15 * fz], 12) - origin_mm
        airway_paths.append((bronchus, 0.07 * a))
    for points, radius in airway_paths:
        wall = _tube(grid.shape, grid.spacing, points, np.full(len(points), radius + 1.2))
        lumen = _tube(grid.shape, grid.spacing, points, np.full(len(points), radius))
        hu[wall & body] = rng.uniform(-100.0, 0.0)
        hu[lumen & body] = -1000.0

    # Spine and ribs.
    spine_y = -0.68 * b
    r_vb = 0.13 * a
    vb = grid.x**2 + (grid.y - spine_y) ** 2 < r_vb**2
    hu[vb & (lungs == 0)] = rng.uniform(220.0, 320.0)
    cortex = vb & ~(grid.x**2 + (grid.y - spine_y) ** 2 < (r_vb - 1.5) ** 2)
    hu[cortex & (lungs == 0)] = rng.uniform(600.0, 900.0)
    wall = inside_fat & ~cavity
    theta = np.arctan2(grid.y / b, grid.x / a)
    rib_spacing = rng.uniform(12.0, 18.0)
    rib_z = (grid.z - 10.0 * np.sin(theta) - rng.uniform(0, rib_spacing)) % rib_spacing
    hu[wall & (np.abs(rib_z - rib_spacing / 2) < rng.uniform(2.5, 3.5))] = rng.uniform(500.0, 900.0)

    # Tumours: solid, lobulated, inside a lung (0–60 HU).
    label = np.zeros(grid.shape, dtype=np.uint8)
    in_lung = lungs > 0
    if in_lung.any():
        count = int(rng.integers(0, 4))
        for tumour in _lesions(
            rng, grid, in_lung, count=count, radius_mm=(3.0, 12.0), min_depth=0.6, roughness=0.3
        ):
            hu[tumour] = rng.uniform(0.0, 60.0)
            label[tumour] = 1

    image = _finish(rng, hu, grid)
    stored_image, stored, affine, code = _store(
        rng, grid, image, {"label": label, "lungs": lungs}, orientation
    )
    return Phantom(stored_image, stored["label"], affine, {"lungs": stored["lungs"]}, code)


_SIZES = {
    "default": {
        "in_plane": (96, 128),
        "slices": (32, 56),
        "spacing_xy": (0.75, 0.95),
        "spacing_z": (2.0, 3.0),
    },
    "tiny": {"in_plane": (48, 56), "slices": (16, 20), "spacing_xy": (1.4, 1.8), "spacing_z": (3.0, 4.0)},
}

TASKS: dict[str, tuple[Callable[..., Phantom], str, dict[str, str]]] = {
    "liver": (liver_phantom, "Liver", LIVER_LABELS),
    "lung": (lung_phantom, "Lung", LUNG_LABELS),
}


def write_msd_dataset(
    output_dir: str | os.PathLike[str],
    *,
    task: str = "liver",
    n_train: int = 16,
    n_test: int = 4,
    seed: int = 0,
    size: str = "default",
    test_labels: bool = True,
    progress: bool = False,
    fov: str = "phantom",
) -> Path:
    """Write a phantom dataset in the Medical Segmentation Decathlon layout.

    ``fov="clinical"`` puts each phantom into clinical CT geometry (512 × 512, table, circular field
    of view, 100–600 slices: :mod:`voxpipe.phantoms.clinical`); ``"phantom"`` keeps its own small grid.

    Layout: ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` and ``dataset.json`` (name, modality
    ``{"0": "CT"}``, labels, ``training`` and ``test`` lists), all NIfTI ``.nii.gz``. Because phantoms
    have a known truth, the test labels are also written to ``labelsTs/`` (not part of MSD) when
    ``test_labels``. The lung task writes the lung masks to ``lungsTr/`` / ``lungsTs/``. Case ``i``
    uses seed ``(seed, i)``, so each case is reproducible on its own.

    Returns:
        Path of the written ``dataset.json``.
    """
    if task not in TASKS:
        raise InputError(f"phantom task: expected one of {sorted(TASKS)}, found {task!r}")
    if size not in _SIZES:
        raise InputError(f"phantom size: expected one of {sorted(_SIZES)}, found {size!r}")
    if fov not in ("phantom", "clinical"):
        raise InputError(f"phantom field of view: expected phantom or clinical, found {fov!r}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise InputError(
            f"phantom counts: expected n_train, n_test >= 0 and not both 0, found {n_train}, {n_test}"
        )
    make, name, labels = TASKS[task]
    root = Path(output_dir)
    training, test = [], []
    cases = [(i, i < n_train) for i in range(n_train + n_test)]
    for index, is_train in tqdm(cases, desc=f"phantoms ({task})", disable=not progress, unit="case"):
        phantom = make((seed, index), size=size)
        if fov == "clinical":
            from voxpipe.phantoms.clinical import clinical_ct

            phantom = clinical_ct(phantom, np.random.default_rng((seed, index, 512)))
        case = f"{task}_{index:03d}.nii.gz"
        split = "Tr" if is_train else "Ts"
        save_nifti(phantom.image, phantom.affine, root / f"images{split}" / case)
        if is_train or test_labels:
            save_nifti(phantom.label, phantom.affine, root / f"labels{split}" / case)
        for extra, array in phantom.extra_labels.items():
            save_nifti(array, phantom.affine, root / f"{extra}{split}" / case)
        if is_train:
            training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
        else:
            test.append(f"./imagesTs/{case}")
    dataset = {
        "name": f"{name} (voxpipe synthetic phantoms)",
        "description": f"Synthetic {task} CT phantoms made by voxpipe {__version__}, seed {seed}",
        "reference": "voxpipe.phantoms.ct",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    if task == "lung":
        dataset["lung_labels"] = LUNG_MASK_LABELS
    path = write_text_atomic(root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    logger.info("wrote %d training and %d test phantoms to %s", len(training), len(test), root)
    return path
