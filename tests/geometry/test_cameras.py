import math

import pytest
import torch

from gphm.geometry.cameras import (
    camera_centers,
    focal_from_fov,
    intrinsics,
    invert_viewmat,
    look_at,
    project_points,
    rescale_K,
    rig_center,
    transform_points,
    world_to_camera,
)

BATCH_SHAPES = [(), (4,), (2, 3)]
F64 = torch.float64


def _eyes(shape):
    d = torch.nn.functional.normalize(torch.randn(shape + (3,), dtype=F64), dim=-1)
    d[..., 1] = d[..., 1].clamp(-0.8, 0.8)  # keep away from the up axis
    return 3.0 * torch.nn.functional.normalize(d, dim=-1)


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_look_at_centres_target_and_keeps_up_up(shape):
    eye = _eyes(shape)
    target = 0.1 * torch.randn(shape + (3,), dtype=F64)
    V = look_at(eye, target)
    assert V.shape == shape + (4, 4)
    R = V[..., :3, :3]
    assert torch.allclose(
        R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(R.shape), atol=1e-12
    )
    assert torch.allclose(torch.linalg.det(R), torch.ones(shape, dtype=F64))
    assert torch.allclose(camera_centers(V), eye, atol=1e-12)
    K = intrinsics(500.0, 500.0, 320.0, 240.0, dtype=F64)
    pts = torch.stack([target, target + torch.tensor([0, 0.1, 0], dtype=F64)], dim=-2)
    uv, depth = project_points(pts, V, K)
    assert torch.allclose(
        uv[..., 0, :], torch.tensor([320.0, 240.0], dtype=F64).expand(shape + (2,))
    )
    assert (depth > 0).all()
    assert (uv[..., 1, 1] < 240.0).all()  # world up is image up (smaller v)


def test_canonical_frontal_camera():
    """Camera on +z facing the face: the head's +x (its left) is on the image right."""
    V = look_at(torch.tensor([0.0, 0.0, 3.0]), torch.zeros(3))
    K = intrinsics(500.0, 500.0, 256.0, 256.0)
    uv, depth = project_points(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), V, K)
    assert uv[0, 0] > 256 and torch.isclose(uv[0, 1], torch.tensor(256.0))
    assert uv[1, 1] < 256
    assert torch.allclose(depth, torch.full((2,), 3.0))


def test_look_at_parallel_to_up_raises():
    with pytest.raises(ValueError, match="parallel to `up`"):
        look_at(torch.tensor([0.0, 3.0, 0.0]), torch.zeros(3))


@pytest.mark.parametrize("factor", [0.5, 2.0, (0.25, 0.5)])
def test_rescale_K_matches_resizing_the_image(factor):
    V = look_at(_eyes((3,)), torch.zeros(3, dtype=F64))
    K = intrinsics(600.0, 550.0, 256.0, 200.0, dtype=F64).expand(3, 3, 3)
    pts = 0.5 * torch.randn(3, 20, 3, dtype=F64)
    uv, _ = project_points(pts, V, K)
    uv2, _ = project_points(pts, V, rescale_K(K, factor))
    fu, fv = (factor, factor) if isinstance(factor, float) else factor
    assert torch.allclose(uv2, uv * torch.tensor([fu, fv], dtype=F64), atol=1e-9)
    # Pixel-centre convention: the image corner (0, 0) and the centre of pixel (i, j) at
    # (i + 0.5, j + 0.5) scale exactly, so a 2x upsample puts pixel 3's centre (3.5) at 7.
    assert torch.allclose(rescale_K(K, 2.0)[..., :2, 2], 2 * K[..., :2, 2])


def test_project_points_matches_manual_pinhole():
    V = look_at(torch.tensor([1.0, 0.5, 2.5], dtype=F64), torch.zeros(3, dtype=F64))
    K = intrinsics(700.0, 650.0, 300.0, 220.0, dtype=F64)
    K[0, 1] = 3.0  # skew
    pts = 0.3 * torch.randn(10, 3, dtype=F64)
    cam = pts @ V[:3, :3].T + V[:3, 3]
    hom = cam @ K.T
    uv, depth = project_points(pts, V, K)
    assert torch.allclose(uv, hom[:, :2] / hom[:, 2:], atol=1e-10)
    assert torch.allclose(depth, cam[:, 2])
    assert torch.allclose(world_to_camera(V, pts), cam)


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_invert_and_transform(shape):
    V = look_at(_eyes(shape), torch.zeros(shape + (3,), dtype=F64))
    inv = invert_viewmat(V)
    assert torch.allclose(inv @ V, torch.eye(4, dtype=F64).expand(V.shape), atol=1e-12)
    pts = torch.randn(shape + (5, 3), dtype=F64)
    assert torch.allclose(transform_points(inv, transform_points(V, pts)), pts, atol=1e-12)
    assert torch.allclose(transform_points(V[..., :3, :], pts), transform_points(V, pts))


def test_intrinsics_and_focal():
    assert math.isclose(focal_from_fov(90.0, 512), 256.0)
    K = intrinsics(torch.tensor([100.0, 200.0]), 100.0, 50.0, 60.0)
    assert K.shape == (2, 3, 3) and K[1, 0, 0] == 200.0 and K[0, 2, 2] == 1.0


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"Ks must have shape \[\.\.\., 3, 3\]"):
        rescale_K(torch.zeros(3, 4), 2.0)
    with pytest.raises(ValueError, match=r"points must have shape \[\.\.\., N, 3\]"):
        transform_points(torch.eye(4), torch.zeros(5, 2))


def test_orbit_cameras_face_the_target():
    from gphm.geometry.cameras import orbit_cameras

    vm = orbit_cameras(8, radius=2.0, elevation_degrees=20.0)
    K = intrinsics(50.0, 50.0, 32.0, 32.0).expand(8, 3, 3)
    uv, z = project_points(torch.zeros(8, 1, 3), vm, K)
    assert torch.allclose(uv, torch.full_like(uv, 32.0), atol=1e-4)
    assert torch.allclose(z, torch.full_like(z, 2.0), atol=1e-5)
    # azimuth 0 is in front of the face (+z), the next camera moves towards +x
    centers = camera_centers(vm)
    assert centers[0, 2] > 0 and abs(float(centers[0, 0])) < 1e-5 and centers[0, 1] > 0


def test_rig_center_is_where_the_cameras_look():
    target = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    eyes = target + _eyes((5,))
    vm = look_at(eyes, target.expand(5, 3))
    torch.testing.assert_close(rig_center(vm), target)
    # A rigid motion of the whole rig moves the centre with it (world -> world' = G).
    G = torch.eye(4, dtype=F64)
    a = torch.tensor(0.7, dtype=F64)
    G[:3, :3] = torch.tensor([[a.cos(), 0, a.sin()], [0, 1, 0], [-a.sin(), 0, a.cos()]])
    G[:3, 3] = torch.tensor([1.0, 2.0, -3.0], dtype=F64)
    moved = rig_center(vm @ invert_viewmat(G[None])[0])
    torch.testing.assert_close(moved, G[:3, :3] @ target + G[:3, 3])
    # Axes that miss each other: the least-squares point lies between them.
    two = look_at(torch.tensor([[3.0, 0.1, 0], [0, -0.1, 3.0]], dtype=F64),
                  torch.tensor([[0, 0.1, 0], [0, -0.1, 0]], dtype=F64))  # fmt: skip
    torch.testing.assert_close(rig_center(two), torch.zeros(3, dtype=F64), atol=1e-9, rtol=0)


def test_rig_center_is_none_where_no_point_is_aimed_at():
    target = torch.zeros(1, 3, dtype=F64)
    one = look_at(torch.tensor([[0.0, 0.0, 3.0]], dtype=F64), target)
    assert rig_center(one) is None  # one camera
    parallel = look_at(torch.tensor([[0.0, 0, 3], [0.5, 0, 3]], dtype=F64),
                       torch.tensor([[0.0, 0, 0], [0.5, 0, 0]], dtype=F64))  # fmt: skip
    assert rig_center(parallel) is None
    # Cameras facing away from each other: their axes cross behind them.
    outwards = look_at(torch.tensor([[3.0, 0, 0], [0, 0, 3.0]], dtype=F64),
                       torch.tensor([[6.0, 0, 0], [0, 0, 6.0]], dtype=F64))  # fmt: skip
    assert rig_center(outwards) is None
    with pytest.raises(ValueError, match=r"\[V, 4, 4\]"):
        rig_center(torch.eye(4))
