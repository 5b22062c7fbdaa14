import math

import pytest
import torch

from gphm.geometry.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_quat,
    matrix_to_axis_angle,
    matrix_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_rotate,
    quat_to_axis_angle,
    quat_to_matrix,
)

BATCH_SHAPES = [(), (7,), (2, 3)]
F64 = torch.float64


def random_aa(shape, max_angle=math.pi - 1e-3):
    axis = torch.nn.functional.normalize(torch.randn(shape + (3,), dtype=F64), dim=-1)
    angle = torch.rand(shape + (1,), dtype=F64) * max_angle
    return axis * angle


def random_quat(shape):
    return quat_normalize(torch.randn(shape + (4,), dtype=F64))


def assert_rotation(R):
    eye = torch.eye(3, dtype=R.dtype).expand(R.shape)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype))


def same_quat(a, b, atol=1e-10):
    """Equal up to the global sign (q and -q are the same rotation)."""
    return torch.minimum((a - b).abs().amax(-1), (a + b).abs().amax(-1)).max() < atol


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_round_trips(shape):
    aa = random_aa(shape)
    R = axis_angle_to_matrix(aa)
    assert R.shape == shape + (3, 3)
    assert_rotation(R)
    assert torch.allclose(matrix_to_axis_angle(R), aa, atol=1e-9)
    assert torch.allclose(quat_to_axis_angle(axis_angle_to_quat(aa)), aa, atol=1e-10)
    q = random_quat(shape)
    assert same_quat(matrix_to_quat(quat_to_matrix(q)), q)
    assert torch.allclose(quat_to_matrix(axis_angle_to_quat(aa)), R, atol=1e-12)
    assert torch.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12)
    assert (matrix_to_quat(R)[..., 0] >= 0).all()


def test_180_degrees_about_arbitrary_axes():
    axes = torch.nn.functional.normalize(torch.randn(50, 3, dtype=F64), dim=-1)
    axes = torch.cat([axes, torch.eye(3, dtype=F64), -torch.eye(3, dtype=F64)])
    aa = math.pi * axes
    R = axis_angle_to_matrix(aa)
    assert_rotation(R)
    assert torch.allclose(R @ axes[..., None], axes[..., None], atol=1e-12)  # axis fixed
    assert torch.allclose(R @ R, torch.eye(3, dtype=F64).expand_as(R), atol=1e-12)
    back = matrix_to_axis_angle(R)
    assert torch.allclose(back.norm(dim=-1), torch.full((aa.shape[0],), math.pi, dtype=F64))
    # At π the axis sign is ambiguous; both give the same rotation.
    assert torch.allclose(back.abs(), aa.abs(), atol=1e-7)
    assert torch.allclose(axis_angle_to_matrix(back), R, atol=1e-12)
    assert torch.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-5, 1e-3 * (1 - 1e-9), 1e-3, 2e-3])
def test_tiny_angles(angle):
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, 0.9], dtype=F64), dim=0)
    aa = angle * axis
    R = axis_angle_to_matrix(aa)
    x, y, z = aa.tolist()
    K = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=F64)
    expected = torch.linalg.matrix_exp(K)
    assert torch.allclose(R, expected, atol=1e-15)
    assert torch.allclose(matrix_to_axis_angle(R), aa, atol=1e-15, rtol=1e-6)
    assert torch.allclose(quat_to_axis_angle(axis_angle_to_quat(aa)), aa, atol=1e-16, rtol=1e-10)
    expected_q = torch.cat(
        [torch.tensor([math.cos(angle / 2)], dtype=F64), math.sin(angle / 2) * axis]
    )
    assert torch.allclose(axis_angle_to_quat(aa), expected_q, atol=1e-16, rtol=1e-12)


def test_quat_multiply_matches_matrix_product_and_sign_convention():
    a, b = random_quat((10,)), random_quat((10,))
    assert torch.allclose(
        quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12
    )
    # 90° about z maps x to y (right-hand rule); composing two gives 180°.
    qz = axis_angle_to_quat(torch.tensor([0, 0, math.pi / 2], dtype=F64))
    ex, ey = torch.eye(3, dtype=F64)[:2]
    assert torch.allclose(quat_rotate(qz, ex), ey, atol=1e-15)
    assert torch.allclose(
        axis_angle_to_matrix(torch.tensor([0, 0, math.pi / 2])) @ ex.float(), ey.float(), atol=1e-7
    )
    assert torch.allclose(quat_rotate(quat_multiply(qz, qz), ex), -ex, atol=1e-15)
    # b is applied first: rotate x by 90° about z, then 90° about x: x -> y -> z.
    qx = axis_angle_to_quat(torch.tensor([math.pi / 2, 0, 0], dtype=F64))
    assert torch.allclose(
        quat_rotate(quat_multiply(qx, qz), ex), torch.eye(3, dtype=F64)[2], atol=1e-15
    )
    # Conjugate inverts; broadcasting.
    ident = quat_multiply(a, quat_conjugate(a))
    assert torch.allclose(
        ident, torch.tensor([1.0, 0, 0, 0], dtype=F64).expand_as(ident), atol=1e-15
    )
    assert quat_multiply(a[:, None], b[None]).shape == (10, 10, 4)


def test_unnormalised_quaternions_are_accepted():
    q = random_quat((5,))
    assert torch.allclose(quat_to_matrix(3.0 * q), quat_to_matrix(q), atol=1e-15)
    assert torch.allclose(quat_to_axis_angle(0.2 * q), quat_to_axis_angle(q), atol=1e-12)


def test_gradcheck_away_from_singular_set():
    aa = random_aa((4,), max_angle=3.0).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    assert torch.autograd.gradcheck(axis_angle_to_quat, (aa,))
    assert torch.autograd.gradcheck(lambda v: matrix_to_axis_angle(axis_angle_to_matrix(v)), (aa,))
    q = random_quat((4,)).requires_grad_()
    assert torch.autograd.gradcheck(quat_to_matrix, (q,))
    assert torch.autograd.gradcheck(quat_to_axis_angle, (q,))
    R = axis_angle_to_matrix(random_aa((4,))).detach().requires_grad_()
    assert torch.autograd.gradcheck(matrix_to_quat, (R,))
    # Tiny angles use the series branch: its gradient must match too.
    small = (1e-4 * torch.randn(3, 3, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (small,), eps=1e-7)
    assert torch.autograd.gradcheck(axis_angle_to_quat, (small,), eps=1e-7)


def test_gradients_finite_at_zero_and_pi():
    for aa0 in (torch.zeros(3, dtype=F64), math.pi * torch.tensor([0.0, 0.6, 0.8], dtype=F64)):
        for fn in (axis_angle_to_matrix, axis_angle_to_quat):
            aa = aa0.clone().requires_grad_()
            (fn(aa) * torch.randn_like(fn(aa))).sum().backward()
            assert torch.isfinite(aa.grad).all()
        R = axis_angle_to_matrix(aa0).requires_grad_()
        matrix_to_axis_angle(R).sum().backward()
        assert torch.isfinite(R.grad).all()
        q = axis_angle_to_quat(aa0).requires_grad_()
        quat_to_axis_angle(q).sum().backward()
        assert torch.isfinite(q.grad).all()
    # Exactly 180° (w = 0 exactly, e.g. diag(1, -1, -1)) and exactly the identity.
    n = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, -2.0], dtype=F64), dim=0)
    exact = [torch.diag(torch.tensor(d, dtype=F64)) for d in ([1, -1, -1], [-1, 1, -1], [1, 1, 1])]
    exact.append(2 * torch.outer(n, n) - torch.eye(3, dtype=F64))
    for R0 in exact:
        R = R0.clone().requires_grad_()
        matrix_to_axis_angle(R).sum().backward()
        assert torch.isfinite(R.grad).all()
        q = matrix_to_quat(R0).requires_grad_()
        quat_to_axis_angle(q).sum().backward()
        assert torch.isfinite(q.grad).all()
    # At 0 the derivative of exp(K(aa)) is K(e_k) exactly.
    J = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.zeros(3, dtype=F64))
    ex = torch.tensor([[0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=F64)
    assert torch.allclose(J[..., 0], ex)
    # And matrix -> axis-angle inverts it to first order: d aa / d R at I.
    Jinv = torch.autograd.functional.jacobian(matrix_to_axis_angle, torch.eye(3, dtype=F64))
    assert torch.allclose((Jinv * ex).sum((-1, -2)), torch.tensor([1.0, 0, 0], dtype=F64))


@pytest.mark.parametrize(
    "fn, arg, name",
    [
        (quat_to_matrix, torch.zeros(3), "q"),
        (quat_multiply, torch.zeros(2, 3), "a"),
        (axis_angle_to_matrix, torch.zeros(4), "aa"),
        (matrix_to_quat, torch.zeros(3, 4), "R"),
    ],
)
def test_bad_shapes(fn, arg, name):
    args = (arg, arg) if fn is quat_multiply else (arg,)
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        fn(*args)
