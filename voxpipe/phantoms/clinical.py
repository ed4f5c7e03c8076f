"""Phantoms at clinical CT geometry: 512 × 512 slices, a patient on a table, padding outside a circular field of view.

The liver and lung phantoms fill their whole small field of view, so the body mask and the
window skipping of fast inference save nothing on them. Clinical CT is not like that. A 512 × 512
slice at 0.6–0.98 mm holds the patient (50–70 % of the field of view), the table, sometimes the arms
and air, and scanners write −1024 or −2048 outside the reconstruction circle. :func:`clinical_ct` puts a
phantom into that geometry:

* the anatomy is scaled in-plane so the body covers ``body_fraction`` (50–70 %) of the field of view,
  the reconstruction circle. It is also
  stretched along z to 200–450 mm and sampled at the target spacing. The image is linear, the labels
  nearest-neighbour, both slice by slice: the full grid never exists as coordinates;
* a curved table (carbon-fibre shell, foam core) lies 5–15 mm below the back;
* optionally two arms (soft tissue with a humerus) beside the body;
* air elsewhere inside the circle, and the padding value outside it;
* noise like the phantom's on everything added.

Spacing and size are drawn per case: in-plane 0.6–0.98 mm; slices of 1, 1.25, 1.5, 2, 2.5, 3 or
5 mm; 100–600 slices. Stored in LPS orientation, as scanners write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from voxpipe.phantoms.ct import Phantom

SLICE_SPACINGS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
MATRIX = 512


@dataclass(frozen=True)
class ClinicalGeometry:
    spacing_xy: float
    spacing_z: float
    slices: int
    body_fraction: float
    arms: bool
    padding: int


def draw_geometry(
    rng: np.random.Generator, *, slices: int | None = None, arms: bool | None = None
) -> ClinicalGeometry:
    """Spacing, slice count, body fraction, arms and padding value of one clinical-size case."""
    spacing_z = float(rng.choice(SLICE_SPACINGS))
    if slices is None:
        slices = int(np.clip(round(rng.uniform(200.0, 450.0) / spacing_z), 100, 600))
    return ClinicalGeometry(
        float(rng.uniform(0.6, 0.98)),
        spacing_z,
        int(slices),
        float(rng.uniform(0.5, 0.7)),
        bool(rng.random() < 0.4) if arms is None else arms,
        int(rng.choice([-1024, -2048])),
    )


def clinical_ct(
    phantom: Phantom, rng: np.random.Generator, *, geometry: ClinicalGeometry | None = None
) -> Phantom:
    """``phantom`` (any orientation) resampled into a clinical-size CT with a table (module docstring).

    Returns:
        A :class:`Phantom` (int16 HU, uint8 labels, extra label maps) at 512 × 512 × ``slices``, LPS storage.
    """
    import nibabel as nib

    geometry = geometry or draw_geometry(rng)
    orientation = nib.io_orientation(phantom.affine)  # storage → RAS
    image = nib.apply_orientation(phantom.image, orientation).astype(np.float32)
    labels = {"label": nib.apply_orientation(phantom.label, orientation)}
    labels.update({k: nib.apply_orientation(v, orientation) for k, v in phantom.extra_labels.items()})
    source_spacing = np.empty(3)
    for axis, (ras_axis, _) in enumerate(orientation):  # spacing along the RAS-ordered axes
        source_spacing[int(ras_axis)] = np.linalg.norm(phantom.affine[:3, axis])
    body = image > -500
    area = float(body.sum(axis=(0, 1)).mean()) * source_spacing[0] * source_spacing[1]  # mm² per slice
    fov = MATRIX * geometry.spacing_xy
    # In-plane magnification: the body covers ``body_fraction`` of the reconstruction circle.
    scale = float(np.sqrt(geometry.body_fraction * np.pi * (fov / 2.0) ** 2 / max(area, 1.0)))
    extent = geometry.slices * geometry.spacing_z
    scale_z = extent / (image.shape[2] * source_spacing[2])
    # Target voxel (i, j) → source voxel (i', j') = step * (i, j) + offset: the phantom's centre lands
    # ``lift`` voxels anterior of the image centre, so the table fits behind the back.
    centre_source = (np.array(image.shape[:2]) - 1) / 2.0
    ys = np.nonzero(body.any(axis=(0, 2)))[0]
    lift = MATRIX * 0.06
    step = geometry.spacing_xy / (scale * source_spacing[:2])  # source voxels per target voxel
    offset = centre_source - step * np.array([(MATRIX - 1) / 2.0, (MATRIX - 1) / 2.0 + lift])
    out_image = np.empty((MATRIX, MATRIX, geometry.slices), dtype=np.int16)
    out_labels = {k: np.empty((MATRIX, MATRIX, geometry.slices), dtype=v.dtype) for k, v in labels.items()}
    z_source = (np.arange(geometry.slices) + 0.5) * geometry.spacing_z / (scale_z * source_spacing[2]) - 0.5
    noise_sigma = float(rng.uniform(10.0, 16.0))
    # The table and arms in the target plane (the same on every slice, as on a scanner).
    jj, ii = np.meshgrid(np.arange(MATRIX), np.arange(MATRIX))
    x_mm = (ii - (MATRIX - 1) / 2.0) * geometry.spacing_xy
    y_mm = (jj - (MATRIX - 1) / 2.0) * geometry.spacing_xy
    back = (
        (ys.min() - offset[1]) / step[1] - (MATRIX - 1) / 2.0
    ) * geometry.spacing_xy  # the body's back (y, mm)
    gap, thickness = rng.uniform(5.0, 15.0), rng.uniform(8.0, 15.0)
    curve = 0.0009 * x_mm**2  # a shallow cradle
    top = back - gap + curve
    table = (y_mm <= top) & (y_mm >= top - thickness) & (np.abs(x_mm) < 0.42 * fov)
    shell = table & ((y_mm >= top - 1.5) | (y_mm <= top - thickness + 1.5))
    circle = x_mm**2 + y_mm**2 > (fov / 2.0) ** 2
    arm_mask = np.zeros_like(table)
    bone = np.zeros_like(table)
    if geometry.arms:
        half_width = (np.ptp(np.nonzero(body.any(axis=(1, 2)))[0]) / 2.0) / step[0] * geometry.spacing_xy
        for side in (-1, 1):
            cx, cy = side * (half_width + rng.uniform(25.0, 45.0)), rng.uniform(-20.0, 20.0)
            rx, ry = rng.uniform(35.0, 45.0), rng.uniform(40.0, 55.0)
            arm = ((x_mm - cx) / rx) ** 2 + ((y_mm - cy) / ry) ** 2 < 1.0
            arm_mask |= arm & ~circle
            bone |= ((x_mm - cx) / (0.3 * rx)) ** 2 + ((y_mm - cy) / (0.3 * ry)) ** 2 < 1.0
    table_hu = np.where(shell, rng.uniform(150.0, 300.0), rng.uniform(-450.0, -250.0)).astype(np.float32)
    for k, zs in enumerate(z_source):
        z0 = int(np.clip(np.floor(zs), 0, image.shape[2] - 1))
        z1 = min(z0 + 1, image.shape[2] - 1)
        w = float(np.clip(zs - z0, 0.0, 1.0))
        plane = (1 - w) * image[:, :, z0] + w * image[:, :, z1]
        matrix = np.diag(step)
        hu = ndimage.affine_transform(
            plane,
            matrix,
            offset=offset,
            output_shape=(MATRIX, MATRIX),
            order=1,
            cval=-1000.0,
            mode="constant",
        )
        hu[table & (hu < -500)] = table_hu[table & (hu < -500)]
        hu[arm_mask & (hu < -500)] = rng.uniform(30.0, 50.0)
        hu[bone & arm_mask] = rng.uniform(500.0, 800.0)
        added = (hu == -1000.0) | table | arm_mask  # air and everything the phantom did not have
        hu = np.where(added, hu + rng.normal(0.0, noise_sigma, hu.shape).astype(np.float32), hu)
        hu[circle] = geometry.padding
        out_image[:, :, k] = np.clip(np.rint(hu), -3024, 3071).astype(np.int16)
        nearest = int(np.clip(np.rint(zs), 0, image.shape[2] - 1))
        for name, volume in labels.items():
            out_labels[name][:, :, k] = ndimage.affine_transform(
                volume[:, :, nearest], matrix, offset=offset, output_shape=(MATRIX, MATRIX), order=0, cval=0
            )
    # LPS storage (x and y flipped), as scanners write; the world origin centres the patient.
    affine = np.diag([-geometry.spacing_xy, -geometry.spacing_xy, geometry.spacing_z, 1.0])
    affine[:3, 3] = [
        (MATRIX - 1) / 2.0 * geometry.spacing_xy,
        (MATRIX - 1) / 2.0 * geometry.spacing_xy,
        float(rng.uniform(-400.0, -100.0)),
    ]
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))
    stored = {k: np.ascontiguousarray(v[flip]) for k, v in out_labels.items()}
    return Phantom(np.ascontiguousarray(out_image[flip]), stored.pop("label"), affine, stored, "LPS")
