"""gphm.fitting.edit: the keyframe blend of the drive video."""

import pytest
import torch

from gphm.fitting.edit import blend_keyframes


def test_blend_keyframes_passes_every_stop_once():
    stops = [torch.zeros(3), torch.ones(3), torch.full((3,), 3.0)]
    seq = blend_keyframes(stops, 4)
    assert seq.shape == (9, 3)  # 4 steps per segment, the last stop included
    assert torch.equal(seq[0], stops[0]) and torch.equal(seq[4], stops[1])
    assert torch.equal(seq[-1], stops[2]) and torch.allclose(seq[6], torch.full((3,), 2.0))
    assert blend_keyframes(stops[:1], 3).shape == (1, 3)
    with pytest.raises(ValueError, match="steps_between >= 1"):
        blend_keyframes(stops, 0)
