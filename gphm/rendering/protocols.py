"""What renderers, fitting, tracking, export and the viewer need of a trained head model.

Both stages provide it: :class:`gphm.models.guidance.GuidanceModel` (a mesh) and
:class:`gphm.models.gaussian_head.GaussianHead` (Gaussians), and the fitting wrappers
around them (``PersonalisedGaussianHead``). Code that only renders, fits codes or reads
landmarks takes a :class:`HeadModel` and never asks which stage it has; code that needs
one stage's internals (``attributes``/``splat`` of Gaussians, ``mean_mesh``/``deform`` of
a mesh) checks ``isinstance`` against the concrete class instead.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["HeadModel", "HeadRender"]


@runtime_checkable
class HeadRender(Protocol):
    """The output of :meth:`HeadModel.render` (``GuidanceOutput`` / ``GaussianOutput``)."""

    rgb: Tensor  # [B, h·f, w·f, 3] high-resolution RGB from the upsampler, white background
    features: Tensor  # [B, h, w, C] low-resolution rendered features, white background
    mask: Tensor  # [B, h, w, 1] soft silhouette / accumulated alpha of the lr render
    landmarks: Tensor  # [B, L, 3] the posed landmarks, world coordinates


@runtime_checkable
class HeadModel(Protocol):
    """A trained multi-identity head model (an ``nn.Module``).

    Codes: ``identity_codes`` / ``expression_codes`` are :class:`gphm.models.embeddings.
    Codebook` s (``.codes.weight`` [num_subjects, Did] / [num_frames, Dexp],
    ``.config.dim``); ``upsampler.config.factor`` is the output-to-render pixel ratio;
    ``f_col`` the colour MLP that fitting fine-tunes. The head pose is ``(head_R
    [B, 3, 3], head_T [B, 3], head_scale [B])`` applied to canonical points as
    ``scale · R x + T``; cameras are OpenCV world→camera ``viewmats`` [B, 4, 4] with
    ``Ks_lr`` [B, 3, 3] in pixels of the ``width_lr × height_lr`` render.
    """

    identity_codes: nn.Module
    expression_codes: nn.Module
    upsampler: nn.Module
    f_col: nn.Module

    def parameters(self, recurse: bool = True) -> Any: ...

    def render_context(self) -> dict[str, Any]:
        """Keyword arguments to pass to every :meth:`render` of one batch of calls (the
        mesh model's extracted mean mesh; nothing for Gaussians)."""
        ...

    def render(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
        head_R: Tensor,  # [B, 3, 3]
        head_T: Tensor,  # [B, 3]
        head_scale: Tensor,  # [B]
        viewmats: Tensor,  # [B, 4, 4]
        Ks_lr: Tensor,  # [B, 3, 3]
        width_lr: int,
        height_lr: int,
        **context: Any,  # render_context(); GaussianHead also takes point_offsets [N, 3]
    ) -> HeadRender:
        """Render B (identity, expression, pose, camera) rows; RGB is ``factor`` times
        the lr size. Differentiable in codes, pose, cameras and parameters."""
        ...

    def canonical_landmarks(
        self, z_id: Tensor, z_exp: Tensor, point_offsets: Tensor | None = None
    ) -> Tensor:  # [B, Did], [B, Dexp] -> [B, L, 3] canonical
        """The model's landmarks through the identity/expression offsets (canonical
        space); ``point_offsets`` [N, 3] only for a Gaussian head."""
        ...
