"""The one input record of fitting and tracking, and its stacked, device-side form.

Conventions: an image ``[S, S, 3]`` in [0, 1] framed like the training data at the
model's output size ``S`` and composited on white with its mask ``[S, S, 1]``; ``K``
``[3, 3]`` intrinsics in pixels of the image; landmarks ``[L, 2]`` pixels of the image
(rows with NaN are ignored; ``None``: no face, e.g. a video frame without detection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gphm.geometry.cameras import rescale_K
from gphm.io.images import box_downsample

__all__ = ["Target", "TargetBatch"]


@dataclass
class Target:
    """One image framed like the training data, at the model's output size ``S``
    (``FitTarget`` and ``TrackFrame`` are this class)."""

    image: Tensor  # [S, S, 3] in [0, 1], composited on white with `mask`
    mask: Tensor  # [S, S, 1] in [0, 1]
    K: Tensor  # [3, 3] intrinsics in pixels of `image`
    landmarks: Tensor | None  # [L, 2] pixels of `image` (NaN rows ignored); None: no face
    camera: Tensor | None = None
    """[4, 4] world -> this image's camera, when the images come from one calibrated rig
    at one instant: given for every target, the fit has **one** head pose (in world) and
    one expression for all of them, so the views fix the head's scale and depth together.
    None (every target): an independent pose and expression per image (separate photos)."""
    head_center: Tensor | None = None
    """[3] where the head's origin is expected in this image's camera frame, e.g. the point
    a calibrated rig is aimed at (:func:`~gphm.geometry.cameras.rig_center`). One image
    cannot tell a small near head from a large far one; with a centre, the fit picks its
    size from it and the size prior (``FitConfig.head_center_sigma`` / ``head_size_sigma``).
    None: the canonical size. Ignored when the views of a rig fix the size themselves."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (a video frame's file, dataset frame, ...)."""

    @classmethod
    def from_prepared(cls, prepared: Any) -> Target:
        """The target of a :class:`gphm.data.preprocess.single_image.PreparedImage`
        (numpy image, mask, K and landmarks of the aligned crop)."""
        return cls(
            image=torch.from_numpy(prepared.image).float(),
            mask=torch.from_numpy(prepared.mask).float(),
            K=torch.from_numpy(prepared.K).float(),
            landmarks=torch.from_numpy(prepared.landmarks).float(),
        )


@dataclass
class TargetBatch:
    """``B`` targets stacked on a device, at the render size ``s`` (``S`` or smaller)."""

    image: Tensor  # [B, s, s, 3]
    mask: Tensor  # [B, s, s, 1] (at the render size; fitting: the full size S)
    mask_lr: Tensor  # [B, s/f, s/f, 1] at the rasteriser's size (f: upsampling factor)
    K: Tensor  # [B, 3, 3] at S: the landmarks' camera
    K_render: Tensor  # [B, 3, 3] at s
    landmarks: Tensor  # [B, L, 2] pixels of S, NaN rows set to 0
    valid: Tensor  # [B, L] bool: the landmark rows that count
    size: int  # S, the landmark term's unit
    render_size: int  # s

    @classmethod
    def of(
        cls, targets: list[Target], factor: int, device: torch.device | str,
        render_size: int | None = None,
    ) -> TargetBatch:  # fmt: skip
        """Stack ``targets`` (same size ``S``, landmarks given). ``render_size``: None
        keeps the images at ``S``; a size box-downsamples them (tracking)."""
        S = targets[0].image.shape[0]
        K = torch.stack([t.K for t in targets]).to(device).float()
        if render_size is None:
            s = S
            image = torch.stack([t.image for t in targets]).to(device).float()
            mask = torch.stack([t.mask for t in targets]).to(device).float()
            mask_lr = torch.stack([box_downsample(m, (S // factor, S // factor)) for m in mask])
            K_render = K
        else:
            s = render_size
            image = torch.stack([box_downsample(t.image.to(device), (s, s)) for t in targets])
            mask = torch.stack([box_downsample(t.mask.to(device), (s, s)) for t in targets])
            lr = (s // factor, s // factor)
            mask_lr = torch.stack([box_downsample(t.mask.to(device), lr) for t in targets])
            K_render = torch.stack([rescale_K(k, s / S) for k in K])
        lmk = torch.stack([t.landmarks for t in targets]).to(device).float()  # type: ignore[misc]
        valid = torch.isfinite(lmk).all(-1)
        return cls(image=image, mask=mask, mask_lr=mask_lr, K=K, K_render=K_render,
                   landmarks=torch.nan_to_num(lmk), valid=valid, size=S, render_size=s)  # fmt: skip
