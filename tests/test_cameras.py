"""The camera-layout module: the conventions every stage shares (spec dataset-format §3.1, §4.1, §4.2)."""

import math

import numpy as np
import pytest

from mvtune import cameras

# spec §4.1: user azimuth/elevation -> camera position direction, image right, image up
TABLE = [
    ((0, 0), (0, -1, 0), (1, 0, 0), (0, 0, 1)),
    ((90, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)),
    ((180, 0), (0, 1, 0), (-1, 0, 0), (0, 0, 1)),
    ((270, 0), (-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    ((180, 89.99), (0, 0, 1), (-1, 0, 0), (0, -1, 0)),
    ((180, -89.99), (0, 0, -1), (-1, 0, 0), (0, 1, 0)),
]


@pytest.mark.parametrize("pose,position,right,up", TABLE)
def test_c2w_matches_the_reference_table(pose, position, right, up):
    c2w = cameras.View("x", *pose).c2w
    assert np.allclose(c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]), position, atol=1e-3)
    assert np.allclose(c2w[:3, 0], right, atol=1e-3)
    assert np.allclose(c2w[:3, 1], up, atol=1e-3)
    # back axis points from the origin to the camera; the rotation is proper
    assert np.allclose(c2w[:3, 2], c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]), atol=1e-9)
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)


def test_ortho10_indices_and_azimuth_shift():
    views = cameras.ortho10()
    assert [v.index for v in views] == [f"{i:04d}" for i in range(10)]
    assert [(v.azimuth, v.elevation) for v in views[:6]] == [(0, 0), (90, 0), (180, 0), (270, 0), (45, 0), (315, 0)]
    assert (views[8].azimuth, views[8].elevation) == (180, 89.99)
    assert (views[9].azimuth, views[9].elevation) == (180, -89.99)
    assert views[0].world_azimuth == pytest.approx(-math.pi / 2)
    assert all(v.projection == "ORTHO" and v.ortho_scale == 1.1 for v in views)


def test_variant_indices_have_the_variant_poses():
    by_index = {v.index: v for v in cameras.ortho10()}
    for name, spec in cameras.VARIANTS.items():
        for index, pose in zip(spec.ortho10_indices, spec.poses):
            view = by_index[index]
            assert cameras.poses_match((view.azimuth, view.elevation), pose), (name, index)


def test_pose_round_trip_through_c2w():
    for view in cameras.ortho10() + cameras.rand6(seed=3):
        az, el = cameras.pose_from_c2w(view.c2w)
        assert cameras.poses_match((az, el), (view.azimuth % 360, view.elevation), tol=1e-6)


def test_rand6_is_seeded_and_perspective():
    assert cameras.rand6(1) == cameras.rand6(1)
    assert cameras.rand6(1) != cameras.rand6(2)
    assert all(v.projection == "PERSP" for v in cameras.rand6(1))


def test_custom_layouts_and_errors():
    views = cameras.layout("0:0,90:30:PERSP,10:90")
    assert [(v.azimuth, v.elevation, v.projection) for v in views] == [
        (0, 0, "ORTHO"), (90, 30, "PERSP"), (10, 89.99, "ORTHO")
    ]
    with pytest.raises(ValueError, match="unknown layout"):
        cameras.layout("ortho11")
    with pytest.raises(ValueError, match="projection"):
        cameras.layout("0:0:FISHEYE")
    with pytest.raises(ValueError, match="outside"):
        cameras.layout("0:100")
    with pytest.raises(ValueError, match="azimuth:elevation"):
        cameras.layout("0:1:2:3")


def test_pose_match_keeps_azimuth_at_the_poles():
    assert not cameras.poses_match((0, 89.99), (180, 89.99))
    assert cameras.poses_match((359.9, 0), (0.1, 0))
