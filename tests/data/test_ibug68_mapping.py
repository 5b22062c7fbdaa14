"""MediaPipe mesh -> iBUG-68 jaw on the visible outline (gphm.data.preprocess.contour).

The meshes are synthetic: MediaPipe's tessellation embedded in the plane (Tutte: every
inner vertex the mean of its neighbours, the face oval on a circle) and lifted onto a
hemisphere facing the camera (-z), so the silhouette of a turned head is known exactly:
the unit circle.
"""

import importlib.util

import numpy as np
import pytest

from gphm.data.preprocess import contour
from gphm.data.preprocess.detectors import (
    _OVAL,
    JAW_LEVEL,
    JAW_PUSH,
    MEDIAPIPE_TO_IBUG68,
    MOUTH_DROP,
    mediapipe_to_ibug68,
)

#: The mesh's outer boundary (MediaPipe's FACEMESH_FACE_OVAL as a loop), forehead first,
#: then the subject's left (image right), the chin 152, the subject's right.
BOUNDARY = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
            400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
            54, 103, 67, 109)  # fmt: skip


@pytest.fixture(scope="module")
def frontal() -> np.ndarray:
    """[468, 3] a hemisphere of radius 1 facing the camera, MediaPipe's topology."""
    edges = contour.FACEMESH_EDGES
    pairs = {tuple(e) for e in edges.tolist()}
    for a, b in zip(BOUNDARY, BOUNDARY[1:] + BOUNDARY[:1]):
        assert (min(a, b), max(a, b)) in pairs
    n = 468
    A = np.zeros((n, n))
    A[edges[:, 0], edges[:, 1]] = A[edges[:, 1], edges[:, 0]] = 1.0
    L = np.diag(A.sum(1)) - A
    ang = -np.pi / 2 + 2 * np.pi * np.arange(len(BOUNDARY)) / len(BOUNDARY)  # image y down
    fixed = np.array(BOUNDARY)
    free = np.setdiff1d(np.arange(n), fixed)
    xy = np.zeros((n, 2))
    xy[fixed] = np.stack([np.cos(ang), np.sin(ang)], 1)
    xy[free] = np.linalg.solve(L[np.ix_(free, free)], -L[np.ix_(free, fixed)] @ xy[fixed])
    r2 = (xy**2).sum(1)
    assert r2.max() <= 1 + 1e-9
    return np.concatenate([xy, -np.sqrt(np.clip(1 - r2, 0, None))[:, None]], 1)


def yawed(mesh: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the image's vertical axis; +degrees turns the face to the image left."""
    t = np.radians(degrees)
    x, y, z = mesh.T
    return np.stack([x * np.cos(t) + z * np.sin(t), y, -x * np.sin(t) + z * np.cos(t)], 1)


def iod(lmk: np.ndarray) -> float:
    return float(np.linalg.norm(lmk[45, :2] - lmk[36, :2]))


def test_edges_are_mediapipes_tessellation():
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe not installed")
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    theirs = sorted({tuple(sorted(e)) for e in FACEMESH_TESSELATION})
    assert [tuple(e) for e in contour.FACEMESH_EDGES.tolist()] == theirs


def test_frontal_jaw_is_the_pushed_oval(frontal):
    lmk = mediapipe_to_ibug68(frontal)
    jaw = lmk[:17, :2]
    radius = np.linalg.norm(jaw, axis=1)
    # the oval is the outline: the points stay on it, pushed out by JAW_PUSH * IOD
    np.testing.assert_allclose(radius, 1 + JAW_PUSH * iod(lmk), atol=0.01)
    assert jaw[8, 1] == jaw[:, 1].max() and abs(jaw[8, 0]) < 1e-3  # the chin, at the bottom
    assert (np.diff(np.unwrap(np.arctan2(jaw[:, 1], jaw[:, 0]))) < 0).all()  # image left -> right
    np.testing.assert_allclose(jaw[::-1] * [-1, 1], jaw, atol=0.02)  # ~mirror symmetric
    # ends at JAW_LEVEL of the way from the eye line down to the chin (no roll: y is down)
    eye_y = (lmk[36, 1] + lmk[45, 1]) / 2
    level = eye_y + JAW_LEVEL * (frontal[152, 1] - eye_y)
    push_y = jaw[[0, 16], 1] - level  # the push moves the ends a little off the level
    assert np.abs(push_y).max() < 2 * JAW_PUSH * iod(lmk)


@pytest.mark.parametrize("sign", [1, -1])
def test_turned_head_far_side_jaw_is_on_the_silhouette(frontal, sign):
    mesh = yawed(frontal, 40 * sign)
    lmk, linear = mediapipe_to_ibug68(mesh), mediapipe_to_ibug68(mesh, refine=False)
    far = [1, 2, 3, 4, 5] if sign > 0 else [15, 14, 13, 12, 11]  # image left / right
    near = [15, 14, 13, 12, 11] if sign > 0 else [1, 2, 3, 4, 5]
    r_new = np.linalg.norm(lmk[:17, :2], axis=1)
    r_oval = np.linalg.norm(linear[:17, :2], axis=1)
    push = JAW_PUSH * iod(lmk)
    # the far side's oval runs behind the cheek, inside the silhouette (the unit circle);
    # the jaw moves out to it
    assert r_oval[far].max() < 0.91
    np.testing.assert_allclose(r_new[far], 1 + push, atol=0.03)
    # the near side's oval is the outline (the hemisphere's rim): it stays there
    assert (r_new[near] < r_oval[near].max() + push + 0.01).all()
    assert (np.sign(lmk[far, 0]) == -sign).all()


@pytest.mark.parametrize("turn", [0.0, np.pi])  # upright, upside down
def test_mouth_is_lowered_toward_the_chin(frontal, turn):
    c, s = np.cos(turn), np.sin(turn)
    mesh = frontal[:, :2] @ np.array([[c, -s], [s, c]]).T
    lmk, linear = mediapipe_to_ibug68(mesh), mediapipe_to_ibug68(mesh, refine=False)
    moved = lmk[48:68] - linear[48:68]
    down = mesh[152] / np.linalg.norm(mesh[152])  # from the centre toward the chin
    expected = MOUTH_DROP * iod(lmk) * down
    np.testing.assert_allclose(moved, np.broadcast_to(expected, moved.shape), atol=1e-3 * iod(lmk))
    np.testing.assert_array_equal(lmk[17:48], linear[17:48])  # brows, nose, eyes: linear


def test_two_d_mesh_gives_the_same_points(frontal):
    mesh = yawed(frontal, 30) * 120 + [320, 240, 0]
    np.testing.assert_allclose(mediapipe_to_ibug68(mesh[:, :2]), mediapipe_to_ibug68(mesh)[:, :2])
    padded = np.concatenate([mesh, np.zeros((10, 3))])  # 478 refined points: iris ignored
    np.testing.assert_allclose(mediapipe_to_ibug68(padded), mediapipe_to_ibug68(mesh))


def test_equivariant_to_image_plane_similarity(frontal):
    mesh = yawed(frontal, 25)[:, :2]
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[c, -s], [s, c]])
    moved = 250 * mesh @ R.T + [400, 300]
    expected = 250 * mediapipe_to_ibug68(mesh) @ R.T + [400, 300]
    np.testing.assert_allclose(mediapipe_to_ibug68(moved), expected, atol=1e-6)
    np.testing.assert_array_equal(mediapipe_to_ibug68(moved), mediapipe_to_ibug68(moved.copy()))


def test_points_are_spread_by_arc_length(frontal):
    mesh = yawed(frontal, 35)[:, :2]
    lin = MEDIAPIPE_TO_IBUG68 @ mesh
    jaw = contour.visible_jaw(mesh, _OVAL, 11, (lin[36], lin[45]), push=0.0)
    gaps = np.linalg.norm(np.diff(jaw, axis=0), axis=1)
    # chords of equal arcs on a smooth outline: equal to within the outline's bends
    np.testing.assert_allclose(gaps[:8], gaps[:8].mean(), rtol=0.05)
    np.testing.assert_allclose(gaps[8:], gaps[8:].mean(), rtol=0.05)
    assert abs(gaps[:8].mean() - gaps[8:].mean()) > 0.05 * gaps.mean()  # sides differ


def test_degenerate_mesh_keeps_the_linear_jaw(frontal):
    mesh = frontal.copy()
    mesh[[33, 263]] = 0.0  # coincident outer eye corners: no inter-ocular distance
    np.testing.assert_array_equal(
        mediapipe_to_ibug68(mesh), mediapipe_to_ibug68(mesh, refine=False)
    )
    assert (
        contour.visible_jaw(np.full((468, 2), np.nan), _OVAL, 11, (np.zeros(2), np.ones(2))) is None
    )


def test_bad_mesh_shape_is_a_clear_error(frontal):
    with pytest.raises(ValueError, match=r"\[468 or 478, 2 or 3\], got \(468, 4\)"):
        mediapipe_to_ibug68(np.zeros((468, 4)))
