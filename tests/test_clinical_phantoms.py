"""Clinical-size phantoms: 512 × 512 CT with a body covering 50–70 % of the field of view, a table, and padding outside it."""

from __future__ import annotations

import numpy as np

from voxpipe.phantoms.clinical import MATRIX, ClinicalGeometry, clinical_ct, draw_geometry
from voxpipe.phantoms.ct import liver_phantom


def test_geometry_draws_stay_in_the_clinical_ranges():
    for seed in range(40):
        g = draw_geometry(np.random.default_rng(seed))
        assert 0.6 <= g.spacing_xy <= 0.98 and 1.0 <= g.spacing_z <= 5.0 and 100 <= g.slices <= 600
        assert 0.5 <= g.body_fraction <= 0.7 and g.padding in (-1024, -2048)


def test_a_liver_phantom_at_clinical_geometry(tmp_path):
    rng = np.random.default_rng(3)
    geometry = ClinicalGeometry(
        spacing_xy=0.78, spacing_z=2.5, slices=100, body_fraction=0.6, arms=True, padding=-2048
    )
    phantom = liver_phantom(3, size="tiny")
    case = clinical_ct(phantom, rng, geometry=geometry)
    assert case.image.shape == (MATRIX, MATRIX, 100) and case.label.shape == case.image.shape
    assert (
        np.allclose(np.abs(np.diag(case.affine)[:3]), [0.78, 0.78, 2.5]) and case.affine[0, 0] < 0
    )  # LPS storage
    fov = MATRIX * 0.78
    i, j = np.meshgrid(np.arange(MATRIX), np.arange(MATRIX), indexing="ij")
    radius = np.hypot((i - (MATRIX - 1) / 2) * 0.78, (j - (MATRIX - 1) / 2) * 0.78)
    inside = radius < fov / 2 - 1
    middle = case.image[:, :, 50]
    assert np.all(middle[radius > fov / 2 + 1] == -2048)  # the scanner's padding outside the circle
    # The phantom's body covers about the asked share of the circle (the table and arms come on top).
    liver_slices = np.nonzero((case.label == 1).any(axis=(0, 1)))[0]
    z = int(np.median(liver_slices))
    tissue = (case.image[:, :, z] > -500) & inside
    assert 0.55 < tissue.sum() / inside.sum() < 0.85
    assert (case.label == 1).sum() > 0 and set(np.unique(case.label)) <= {0, 1, 2}
    # Labels lie on the image: liver voxels carry liver-like HU.
    assert 20 < np.median(case.image[case.label == 1]) < 120
    # Air around the body inside the circle, with noise like a scanner's.
    air = case.image[:, :, z][inside & (case.image[:, :, z] < -950)]
    assert air.size > 1000 and abs(np.median(air) + 1000) < 5 and np.unique(air).size > 20
