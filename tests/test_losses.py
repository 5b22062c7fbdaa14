import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gphm import losses


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    a = rng.random((40, 48, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0,
    )  # fmt: skip
    ours = losses.ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert abs(float(ours) - ref) < 2e-3
    assert float(losses.dssim(torch.from_numpy(a)[None], torch.from_numpy(a)[None])) < 1e-6


def test_silhouette_iou_is_per_row_mean():
    full = torch.ones(1, 4, 4, 1)
    half = torch.zeros(1, 4, 4, 1)
    half[:, :2] = 1
    both = losses.silhouette_iou(torch.cat([full, half]), torch.cat([full, full]))
    assert abs(float(both) - 0.25) < 1e-5  # rows: 1 - 1 = 0 and 1 - 0.5 = 0.5


def test_landmark_mse_ignores_nan_targets():
    pred = torch.zeros(1, 3, 3)
    target = torch.tensor([[[1.0, 0, 0], [float("nan"), 0, 0], [0, 2.0, 0]]])
    assert float(losses.landmark_mse(pred, target)) == pytest.approx(2.5)


def test_sdf_sphere_zero_for_exact_sdf():
    x = torch.randn(100, 3)
    assert float(losses.sdf_sphere(x.norm(dim=-1) - 0.5, x, 0.5)) < 1e-12


def test_group_consistency_is_spread_around_group_means():
    codes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [1.0, 1.0], [9.0, 9.0]])
    groups = torch.tensor([0, 0, -1, 1, -1])  # rows 2 and 4 are left out
    # group 0: mean (1, 0), both rows at squared distance 1; group 1: a single row, 0
    assert float(losses.group_consistency(codes, groups)) == pytest.approx(2 / 3)
    # gradient pulls the two group-0 codes towards each other; left-out rows get none
    codes.requires_grad_(True)
    losses.group_consistency(codes, groups).backward()
    assert codes.grad[0, 0] < 0 < codes.grad[1, 0]
    assert torch.all(codes.grad[[2, 4]] == 0)
    none = losses.group_consistency(codes, torch.full((5,), -1))
    assert float(none.detach()) == 0.0


def test_expression_groups_label_training_frames_only():
    from gphm.training.trainer import expression_groups

    frames = [{"expression": "smile"}, {"expression": "neutral"}, {"expression": "smile"},
              {"subject": 0}, {"expression": "jaw"}]  # fmt: skip
    groups = expression_groups(frames, train_frames=[0, 1, 2, 3])  # frame 4 held out
    assert groups.tolist() == [1, 0, 1, -1, -1]  # labels sorted: neutral 0, smile 1


def test_expression_groups_leave_mixed_expressions_ungrouped():
    """Two mixture frames share no expression: the consistency term must not tie them."""
    from gphm.data.format import MIXED_EXPRESSION
    from gphm.training.trainer import expression_groups

    frames = [{"expression": MIXED_EXPRESSION}, {"expression": "smile"},
              {"expression": MIXED_EXPRESSION}]  # fmt: skip
    assert expression_groups(frames, train_frames=[0, 1, 2]).tolist() == [-1, 0, -1]


def test_mse_minimiser_is_the_mean_where_l1_picks_the_median():
    # One pixel seen against three targets (an outline whose position is uncertain):
    # the MSE term blends to the mean, L1 snaps to the median.
    target = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1)
    grid = torch.linspace(0, 1, 101)
    mse = torch.stack([losses.mse(v.expand(3, 1, 1, 1), target) for v in grid])
    l1 = torch.stack([losses.l1(v.expand(3, 1, 1, 1), target) for v in grid])
    assert float(grid[mse.argmin()]) == pytest.approx(1 / 3, abs=0.01)
    assert float(grid[l1.argmin()]) == pytest.approx(0.0)
    assert float(losses.mse(torch.full((1, 2, 2, 3), 0.5), torch.zeros(1, 2, 2, 3))) == 0.25
    with pytest.raises(ValueError, match="mse: pred"):
        losses.mse(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 1))


def test_anchored_landmarks_follow_the_surface_offsets_not_their_own():
    """``loss.landmark_anchor``'s landmarks move with the offsets of the surface around
    them (identity + expression), take no gradient into P0, and are exactly P0 when the
    surface does not move."""
    from gphm.models.guidance import Deformation
    from gphm.training.trainer import anchored_landmarks

    anchors = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [1.0, 0, 0], [1.1, 0, 0]])
    p0 = torch.tensor([[0.05, 0, 0], [1.05, 0, 0]], requires_grad=True)
    zero = torch.zeros(2, 4, 3)
    d = Deformation(points=anchors.expand(2, 4, 3), delta_id=zero, delta_exp=zero.clone(),
                    colors=zero, hidden=zero)  # fmt: skip
    torch.testing.assert_close(anchored_landmarks(p0, anchors, d, k=2), p0.detach().expand(2, 2, 3))
    # the expression lifts the first pair of anchors by +y in batch row 1 only
    d.delta_exp = zero.clone().requires_grad_(True)
    lift = torch.zeros(2, 4, 3)
    lift[1, :2, 1] = 0.2
    d.delta_id = lift
    out = anchored_landmarks(p0, anchors, d, k=2)
    torch.testing.assert_close(out[1, 0], torch.tensor([0.05, 0.2, 0.0]))
    torch.testing.assert_close(out[1, 1], p0[1].detach())
    torch.testing.assert_close(out[0], p0.detach())
    out.sum().backward()
    assert p0.grad is None and d.delta_exp.grad.abs().sum() > 0


def test_landmark_distance_is_the_mean_euclidean_distance_with_unit_gradient():
    pred = torch.zeros(2, 3, 3, requires_grad=True)
    target = torch.zeros(2, 3, 3)
    target[0, 0] = torch.tensor([3.0, 4.0, 0.0])  # distance 5
    target[1, 2] = torch.tensor([0.0, 0.0, 0.01])  # a small error: gradient stays unit-sized
    target[1, 1] = float("nan")  # ignored
    loss = losses.landmark_distance(pred, target)
    torch.testing.assert_close(loss, torch.tensor((5.0 + 0.01) / 5), atol=1e-3, rtol=0)
    loss.backward()
    torch.testing.assert_close(pred.grad[1, 2], torch.tensor([0.0, 0.0, -1.0 / 5]), atol=1e-5, rtol=0)
    assert pred.grad[1, 1].abs().sum() == 0
    assert torch.isfinite(losses.landmark_distance(target.nan_to_num(), target.nan_to_num()))


def test_masked_mse_by_hand():
    pred, target = torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3)
    pred[0, 0, 0] = 1.0  # error 1 on 3 channels of pixel (0, 0)
    pred[0, 1, 1, 0] = 2.0  # error 4 on one channel of pixel (1, 1)
    w = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert float(losses.masked_mse(pred, target, w)) == pytest.approx(1.0)
    w[0, 1, 1] = 1.0  # (3 + 4) / (2 pixels x 3 channels)
    assert float(losses.masked_mse(pred, target, w)) == pytest.approx(7 / 6)
    assert float(losses.masked_mse(pred, target, torch.zeros(1, 2, 2))) == 0
    with pytest.raises(ValueError, match="weight"):
        losses.masked_mse(pred, target, torch.ones(1, 2, 3))


def test_knn_laplacian_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    nbrs = torch.tensor([[1, 2], [0, 2], [0, 1]])
    # row minus neighbours' mean: (-1, -2), (2, -2), (-1, 4) -> squared norms 5, 8, 17
    assert float(losses.knn_laplacian(x, nbrs)) == pytest.approx(10.0)
    assert float(losses.knn_laplacian(x, torch.zeros(3, 0, dtype=torch.long))) == 0
