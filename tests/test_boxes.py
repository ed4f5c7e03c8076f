"""Boxes: voxel ↔ world on flipped and oblique grids, against SimpleITK and by round trip; box files name their convention."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from voxpipe.errors import InputError
from voxpipe.phantoms.dicom import oblique_affine
from voxpipe.transforms.boxes import (
    boxes_from_instances,
    convert_mode,
    points_to_voxel,
    points_to_world,
    read_boxes_json,
    voxel_boxes_to_world,
    world_boxes_to_voxel,
    write_boxes_json,
)
from voxpipe.transforms.io import LPS_TO_RAS, write_volume

FLIPPED = np.array([[-0.7, 0, 0, 120.0], [0, 0.7, 0, -80.0], [0, 0, -2.5, 40.0], [0, 0, 0, 1]])
OBLIQUE = oblique_affine((0.8, 0.9, 2.0), degrees=25.0)


@pytest.mark.parametrize("affine", [FLIPPED, OBLIQUE], ids=["flipped", "oblique"])
def test_points_match_simpleitk_and_round_trip(tmp_path, affine):
    path = write_volume(np.zeros((20, 18, 12), np.int16), affine, tmp_path / "image.mha")
    image = sitk.ReadImage(str(path))
    index = np.array([[3.0, 4.5, 7.25], [0, 0, 0], [19, 17, 11]])
    world = points_to_world(index, affine, space="world_lps")
    for point, expected in zip(index, world, strict=True):
        assert np.allclose(image.TransformContinuousIndexToPhysicalPoint(point.tolist()), expected, atol=1e-4)
    assert np.allclose(points_to_world(index, affine, space="world_ras"), (LPS_TO_RAS[:3, :3] @ world.T).T)
    assert np.allclose(points_to_voxel(world, affine), index)


def test_voxel_boxes_round_trip_exactly_on_flipped_grids_and_enclose_on_oblique_ones():
    boxes = np.array([[2, 3, 1, 6, 9, 4], [0, 0, 0, 1, 1, 1]], dtype=float)
    assert np.allclose(world_boxes_to_voxel(voxel_boxes_to_world(boxes, FLIPPED), FLIPPED), boxes)
    world = voxel_boxes_to_world(boxes, FLIPPED)
    assert np.allclose(world[0, 3:] - world[0, :3], [4 * 0.7, 6 * 0.7, 3 * 2.5])  # the box's size in mm
    # Oblique: the world box encloses the rotated box; its centre is the box centre exactly.
    world = voxel_boxes_to_world(boxes, OBLIQUE)
    centre = points_to_world(((boxes[:, :3] + boxes[:, 3:]) / 2 - 0.5), OBLIQUE)
    assert np.allclose((world[:, :3] + world[:, 3:]) / 2, centre)
    back = world_boxes_to_voxel(world, OBLIQUE)
    assert np.all(back[:, :3] <= boxes[:, :3] + 1e-9) and np.all(back[:, 3:] >= boxes[:, 3:] - 1e-9)


def test_instance_boxes_follow_monais_convention():
    from monai.apps.detection.transforms.box_ops import convert_mask_to_box

    instances = np.zeros((10, 12, 8), np.uint8)
    instances[2:5, 3:4, 1:7] = 1
    instances[7, 8:11, 0:2] = 3
    boxes, values = boxes_from_instances(instances)
    assert values.tolist() == [1, 3]
    masks = np.stack([np.where(instances == v, 0, -1) for v in (1, 3)])  # MONAI: label per box, -1 background
    theirs, _ = convert_mask_to_box(masks, bg_label=-1)
    assert np.allclose(boxes, np.asarray(theirs))


def test_box_files_name_their_space_and_mode(tmp_path):
    boxes = np.array([[0, 0, 0, 2, 4, 6], [1, 1, 1, 2, 2, 2]], dtype=float)
    path = write_boxes_json(
        tmp_path / "b.json", boxes, space="world_lps", mode="cccwhd", labels=[1, 2], scores=[0.9, 0.5]
    )
    document = json.loads(path.read_text())
    assert (
        document["space"] == "world_lps"
        and document["mode"] == "cccwhd"
        and document["boxes"][0]["box"] == [1, 2, 3, 2, 4, 6]
    )
    back, space, items = read_boxes_json(path)
    assert space == "world_lps" and np.allclose(back, boxes) and items[1]["score"] == 0.5
    assert np.allclose(convert_mode(boxes, "xyzxyz", "xyzwhd")[0], [0, 0, 0, 2, 4, 6])
    for bad, message in (
        ({"mode": "cccwhd", "boxes": []}, "'space'"),
        ({"space": "world_lps", "mode": "xyz", "boxes": []}, "'mode'"),
        ({"space": "voxel", "mode": "xyzxyz", "boxes": [{"box": [1, 2, 3]}]}, "boxes\\[0\\]"),
        ({"space": "voxel", "mode": "xyzxyz", "boxes": [{"box": [3, 3, 3, 1, 1, 1]}]}, "positive size"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            read_boxes_json(tmp_path / "bad.json")
