"""Landmark regions: the boxes of region masks, by hand."""

import pytest
import torch

from gphm.geometry.landmarks import EXPRESSIVE_REGIONS, IBUG68_REGIONS, region_box_mask


def test_region_box_mask_is_the_union_of_padded_boxes_by_hand():
    # 4 landmarks spanning a 10 x 10 face; region a = {0, 1}, b = {3}
    uv = torch.tensor([[2.0, 2.0], [4.0, 3.0], [12.0, 12.0], [9.0, 11.0]])
    m = region_box_mask(uv, {"a": [0, 1], "b": [3]}, height=16, width=20, pad=0.1)
    assert m.shape == (16, 20) and m.dtype == torch.float32
    # pad = 0.1 * 10 = 1 px: box a spans u in [1, 5], v in [1, 4]; box b u [8, 10], v [10, 12]
    # pixel (row v, col u) is inside when its centre (u + 0.5, v + 0.5) is
    want = torch.zeros(16, 20)
    want[1:4, 1:5] = 1  # centres 1.5..3.5 (v), 1.5..4.5 (u)
    want[10:12, 8:10] = 1
    assert torch.equal(m, want)
    # batched, and a region without finite landmarks has no box
    uv2 = torch.stack([uv, uv.clone().index_fill_(0, torch.tensor([3]), float("nan"))])
    mb = region_box_mask(uv2[None], {"a": [0, 1], "b": [3]}, 16, 20, 0.1)
    assert mb.shape == (1, 2, 16, 20)
    assert torch.equal(mb[0, 0], want) and mb[0, 1, 10:12, 8:10].sum() == 0
    assert torch.equal(mb[0, 1, 1:4, 1:5], torch.ones(3, 4))


def test_region_box_mask_follows_the_landmarks_and_refuses_bad_regions():
    uv = torch.rand(68, 2) * 50 + 30
    m = region_box_mask(uv, EXPRESSIVE_REGIONS, 128, 128, 0.0)
    shifted = region_box_mask(uv + torch.tensor([7.0, 0.0]), EXPRESSIVE_REGIONS, 128, 128, 0.0)
    assert m.sum() > 0 and torch.equal(shifted[:, 7:], m[:, :-7])  # moves with the face
    assert set(IBUG68_REGIONS) == {"jaw", "brows", "nose", "eyes", "mouth"}
    with pytest.raises(ValueError, match="region 'x'"):
        region_box_mask(uv, {"x": [70]}, 8, 8, 0.1)
    with pytest.raises(ValueError, match=r"\[\.\.\., L, 2\]"):
        region_box_mask(torch.zeros(68, 3), EXPRESSIVE_REGIONS, 8, 8, 0.1)
