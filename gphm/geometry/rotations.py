"""Rotation representations and conversions.

Conventions (docs/architecture.md §4):

* quaternions are ``wxyz`` (scalar first) and need not be normalised on input; every
  function that consumes a quaternion normalises it first;
* rotation matrices act on column vectors, ``x' = R @ x``;
* axis-angle vectors ``aa`` have direction = unit axis and norm = angle in radians
  (right-hand rule);
* all functions accept arbitrary leading batch dimensions ``[...]``.

Gradients are kept finite at the two singular places of these maps: at angle 0
(``sin(θ)/θ`` terms use a Taylor expansion) and at angle π (matrix → quaternion picks
the best-conditioned of four candidate formulas).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "quat_normalize",
    "quat_multiply",
    "quat_conjugate",
    "quat_rotate",
    "quat_to_matrix",
    "matrix_to_quat",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
]

# Below this angle (radians) the Taylor expansions are used. At 1e-3 the next omitted
# term is ~θ⁴/5040 ≈ 2e-16, below float64 resolution.
_SMALL_ANGLE = 1e-3


def _check_last(x: Tensor, size: int, name: str) -> None:
    if x.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}], got {tuple(x.shape)}")


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Normalise quaternions ``q`` [..., 4] (wxyz) to unit length."""
    _check_last(q, 4, "q")
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_conjugate(q: Tensor) -> Tensor:
    """Conjugate ``(w, -x, -y, -z)`` of ``q`` [..., 4]; the inverse for unit quaternions."""
    _check_last(q, 4, "q")
    return torch.cat([q[..., :1], -q[..., 1:]], dim=-1)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a ⊗ b`` of quaternions [..., 4] (wxyz), broadcasting.

    As rotations, ``quat_to_matrix(a ⊗ b) == quat_to_matrix(a) @ quat_to_matrix(b)``:
    ``b`` is applied first.
    """
    _check_last(a, 4, "a")
    _check_last(b, 4, "b")
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions ``q`` [..., 4] (wxyz, any norm)."""
    _check_last(q, 4, "q")
    w, x, y, z = quat_normalize(q).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors ``v`` [..., 3] by quaternions ``q`` [..., 4] (broadcasting)."""
    _check_last(v, 3, "v")
    return (quat_to_matrix(q) @ v.unsqueeze(-1)).squeeze(-1)


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (wxyz, ``w >= 0``) from rotation matrices ``R`` [..., 3, 3].

    Uses the candidate with the largest denominator among the four classic formulas
    (Shepperd's method), so the result and its gradient stay accurate at 180°.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {tuple(R.shape)}")
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4·q_i² for i = w, x, y, z.
    four_sq = torch.stack(
        [
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ],
        dim=-1,
    )
    # Each row is 4·q_i·q, i.e. the quaternion scaled by 4·q_i, for one choice of i.
    candidates = torch.stack(
        [
            torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # [..., 4, 4]
    best = four_sq.argmax(dim=-1, keepdim=True)  # [..., 1]
    q = torch.gather(candidates, -2, best[..., None].expand(best.shape[:-1] + (1, 4)))
    q = quat_normalize(q.squeeze(-2))
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Rodrigues' formula: rotation matrices [..., 3, 3] from axis-angle ``aa`` [..., 3]."""
    _check_last(aa, 3, "aa")
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < _SMALL_ANGLE**2
    # Keep θ² away from 0 on the branch that is discarded (in the sqrt and in the
    # divisions), so its gradient is never NaN: torch.where multiplies the discarded
    # branch's gradient by 0, and 0·inf = NaN.
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(theta) / theta)
    b = torch.where(
        small, 0.5 - theta2 / 24 + theta2**2 / 720, (1 - torch.cos(theta)) / theta2_safe
    )
    K = _skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def axis_angle_to_quat(aa: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (wxyz) from axis-angle ``aa`` [..., 3]."""
    _check_last(aa, 3, "aa")
    theta2 = (aa * aa).sum(-1, keepdim=True)
    small = theta2 < _SMALL_ANGLE**2
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    # sin(θ/2)/θ and cos(θ/2) with their series near 0.
    k = torch.where(small, 0.5 - theta2 / 48, torch.sin(theta / 2) / theta)
    w = torch.where(small, 1 - theta2 / 8, torch.cos(theta / 2))
    return torch.cat([w, k * aa], dim=-1)


def quat_to_axis_angle(q: Tensor) -> Tensor:
    """Axis-angle [..., 3] (angle in [0, π]) from quaternions ``q`` [..., 4] (any norm)."""
    q = quat_normalize(q)
    q = torch.where(q[..., :1] < 0, -q, q)  # angle in [0, π]
    w, v = q[..., :1], q[..., 1:]
    s2 = (v * v).sum(-1, keepdim=True)
    small = s2 < _SMALL_ANGLE**2
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    # θ = 2·atan2(|v|, w); θ/|v| → 2/w·(1 - |v|²/(3w²)) as |v| → 0, where w ≈ 1. The
    # series is evaluated with w replaced by 1 off its branch: at 180° w = 0 exactly and
    # 2/w would turn the (discarded) gradient into NaN.
    w_series = torch.where(small, w, torch.ones_like(w))
    series = 2 / w_series * (1 - s2 / (3 * w_series * w_series))
    scale = torch.where(small, series, 2 * torch.atan2(s, w) / s)
    return scale * v


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Axis-angle [..., 3] (angle in [0, π]) from rotation matrices ``R`` [..., 3, 3]."""
    return quat_to_axis_angle(matrix_to_quat(R))


def _skew(v: Tensor) -> Tensor:
    """Cross-product matrices [..., 3, 3] with ``_skew(v) @ u == v × u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))
