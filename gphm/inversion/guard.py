"""Catching a fit that renders (almost) nothing.

A fit can "succeed" with an empty render: the head fades out or leaves the view while
the photometric term on a white background still looks like progress (issue 28: a
grayscale photo on a small model ended at 10 dB with a pure white avatar and exit
status 0). :func:`coverage` measures how much of the target's head mask the rendered
alpha covers; fitting (:mod:`gphm.fitting.fit`) checks it after each phase, recovers
where that is cheap and raises :class:`FitCollapseError` where it is not.
"""

from __future__ import annotations

from torch import Tensor

from gphm.errors import UserError

__all__ = ["FitCollapseError", "coverage"]


class FitCollapseError(UserError):
    """The fit renders (almost) nothing of the input's head (exit status 2)."""


def coverage(alpha: Tensor, mask: Tensor) -> Tensor:  # [B, s, s, 1] x2 -> [B]
    """``Σ alpha·mask / Σ mask`` per image: the fraction of the target mask the render
    covers (1: all of it; 0: nothing; an empty mask counts as covered)."""
    area = mask.flatten(1).sum(-1)
    hit = (alpha.clamp(0, 1) * mask).flatten(1).sum(-1)
    return (hit / area.clamp_min(1e-6)).where(area > 0, hit.new_ones(()))
