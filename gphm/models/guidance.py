"""Stage 1: the guiding geometry model (docs/architecture.md §3.2).

::

    f_mean(PE(x))         -> sdf(x), dmtet_offset(x), Γ(x)
    DMTet(tet grid, sdf)  -> mean mesh V0 [M, 3], faces F, per-vertex Γ [M, G]
    H      = f_inj(Γ, z_id)                         [B, M, H]
    V_can  = V0 + f_id(H) + f_exp(H, z_exp)         identity and expression offsets
    C      = sigmoid(f_col(H, z_exp))               [B, M, 32]
    V      = s·R·V_can + T                          head pose of the frame
    render_mesh(V, F, C) at lr -> features + soft mask -> Ψ -> RGB at hr

Landmarks: learnable canonical ``P0`` [L, 3] take the same path (Γ from f_mean at P0).

Shapes: ``B`` batch of (frame, camera) rows, ``M`` mesh vertices, ``L`` landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gphm.geometry.marching_tets import marching_tets
from gphm.geometry.pose import apply_head_pose
from gphm.geometry.tets import tet_grid
from gphm.models.base import SerializableModule
from gphm.models.embeddings import Codebook, CodebookConfig
from gphm.models.mlp import MLP, MLPConfig, PositionalEncoding, PositionalEncodingConfig
from gphm.models.upsampler import Upsampler, UpsamplerConfig
from gphm.render import render_mesh

__all__ = [
    "GuidanceConfig",
    "GuidanceModel",
    "MeanField",
    "MeanMesh",
    "Deformation",
    "GuidanceOutput",
    "conditioned_deformation",
    "RendersTrainingRows",
]


@dataclass
class GuidanceConfig:
    tet_resolution: int = 32
    """Cells per axis of the DMTet grid over [-grid_bound, grid_bound]³."""
    grid_bound: float = 1.0
    """Half-size of the canonical cube holding the grid."""
    max_grid_offset: float = 0.5
    """Largest learnable DMTet vertex offset, in grid cells (tanh-bounded)."""
    positional_encoding: PositionalEncodingConfig = field(
        default_factory=lambda: PositionalEncodingConfig(num_frequencies=6)
    )
    f_mean: MLPConfig = field(
        default_factory=lambda: MLPConfig(width=128, depth=4, skips=(2,), activation="softplus")
    )
    mean_feature_dim: int = 32
    """Channels of Γ, the per-point mean-head feature."""
    identity_code: CodebookConfig = field(default_factory=lambda: CodebookConfig(dim=32))
    expression_code: CodebookConfig = field(default_factory=lambda: CodebookConfig(dim=32))
    injected_dim: int = 64
    """Channels of H = f_inj(Γ, z_id)."""
    f_inj: MLPConfig = field(default_factory=lambda: MLPConfig(width=128, depth=2))
    f_id: MLPConfig = field(
        default_factory=lambda: MLPConfig(width=128, depth=2, zero_init_last=True)
    )
    f_exp: MLPConfig = field(
        default_factory=lambda: MLPConfig(width=128, depth=2, zero_init_last=True)
    )
    f_col: MLPConfig = field(default_factory=lambda: MLPConfig(width=128, depth=2))
    color_channels: int = 32
    """Channels of the per-vertex colour/feature C; the first 3 are supervised as RGB."""
    num_landmarks: int = 68
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    sdf_chunk: int = 262144
    """Grid points per f_mean call when evaluating the whole grid (bounds memory)."""

    def __post_init__(self) -> None:
        if self.tet_resolution < 4:
            raise ValueError(f"tet_resolution must be >= 4, got {self.tet_resolution}")
        if self.color_channels < 3:
            raise ValueError(f"color_channels must be >= 3 (RGB first), got {self.color_channels}")
        for name in ("mean_feature_dim", "injected_dim", "num_landmarks", "sdf_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_grid_offset < 1:
            raise ValueError(f"max_grid_offset must be in [0, 1) cells, got {self.max_grid_offset}")


@dataclass
class MeanField:
    """f_mean evaluated at points ``x`` [..., 3]."""

    sdf: Tensor  # [...] signed distance, < 0 inside
    offset: Tensor  # [..., 3] DMTet grid-vertex offset
    features: Tensor  # [..., G] Γ


@dataclass
class MeanMesh:
    """The identity- and expression-free mean surface extracted by DMTet."""

    verts: Tensor  # [M, 3] canonical
    faces: Tensor  # [F, 3] int64, outward
    features: Tensor  # [M, G] Γ at the vertices


@dataclass
class Deformation:
    """Identity/expression-conditioned canonical geometry and colour of points."""

    points: Tensor  # [B, M, 3] canonical: X0 + delta_id + delta_exp
    delta_id: Tensor  # [B, M, 3]
    delta_exp: Tensor  # [B, M, 3]
    colors: Tensor  # [B, M, C] in (0, 1)
    hidden: Tensor  # [B, M, injected_dim] H = f_inj(Γ, z_id)


@dataclass
class GuidanceOutput:
    rgb: Tensor  # [B, h·f, w·f, 3] high-resolution RGB from Ψ (white background)
    features: Tensor  # [B, h, w, C] low-resolution rendered features, white background
    mask: Tensor  # [B, h, w, 1] soft silhouette
    landmarks: Tensor  # [B, L, 3] world
    verts: Tensor  # [B, M, 3] world
    faces: Tensor  # [F, 3]
    deformation: Deformation  # canonical offsets (for regularisers)
    mean_mesh: MeanMesh


def conditioned_deformation(
    nets: nn.Module,  # has f_inj, f_id, f_exp, f_col (GuidanceModel or GaussianHead)
    points: Tensor,  # [M, 3] canonical mean positions X0
    features: Tensor,  # [M, G] Γ at those points
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    color_logit_offsets: Tensor | None = None,  # [B, M, C] added to f_col's output
) -> tuple[Deformation, Tensor]:  # deformation, (H, z_exp) [B, M, H + Dexp]
    """The identity/expression path shared by both stages::

    H = f_inj(Γ, z_id);  X = X0 + f_id(H) + f_exp(H, z_exp);  C = sigmoid(f_col(H, z_exp) + c)

    with ``c = color_logit_offsets`` (0 when None; stage 2's colour bases).
    """
    B, M = z_id.shape[0], points.shape[0]
    gamma = features.unsqueeze(0).expand(B, M, -1)
    hidden = nets.f_inj(torch.cat([gamma, z_id[:, None].expand(B, M, -1)], -1))
    h_exp = torch.cat([hidden, z_exp[:, None].expand(B, M, -1)], -1)
    delta_id = nets.f_id(hidden)
    delta_exp = nets.f_exp(h_exp)
    logits = nets.f_col(h_exp)
    deform = Deformation(
        points=points + delta_id + delta_exp,
        delta_id=delta_id,
        delta_exp=delta_exp,
        colors=torch.sigmoid(logits + (0 if color_logit_offsets is None else color_logit_offsets)),
        hidden=hidden,
    )
    return deform, h_exp


class RendersTrainingRows:
    """``forward`` of both head models: training rows by their code indices.

    The class supplies ``identity_codes``, ``expression_codes`` (:class:`Codebook`) and
    ``render(z_id, z_exp, head_R, head_T, head_scale, viewmats, Ks_lr, width_lr,
    height_lr)``; listed before the ``nn.Module`` base so that this ``forward`` is used.
    """

    def forward(
        self,
        subject: Tensor,  # [B] int64 identity-code indices
        frame: Tensor,  # [B] int64 expression-code indices
        head_R: Tensor,  # [B, 3, 3]
        head_T: Tensor,  # [B, 3]
        head_scale: Tensor,  # [B]
        viewmats: Tensor,  # [B, 4, 4]
        Ks_lr: Tensor,  # [B, 3, 3]
        width_lr: int,
        height_lr: int,
    ):
        """Render training rows by their subject and frame indices (the model's output)."""
        return self.render(
            self.identity_codes(subject), self.expression_codes(frame), head_R, head_T,
            head_scale, viewmats, Ks_lr, width_lr, height_lr,
        )  # fmt: skip


class GuidanceModel(RendersTrainingRows, SerializableModule):
    """Stage-1 multi-identity mesh head model (see the module docstring).

    Args:
        config: architecture.
        num_subjects: identity codes (one per training subject).
        num_frames: expression codes (one per training frame, the dataset's global
            frame index).
    """

    config_class = GuidanceConfig

    def __init__(self, config: GuidanceConfig, num_subjects: int, num_frames: int):
        super().__init__()
        self._record_init(config, num_subjects=num_subjects, num_frames=num_frames)
        cfg = config
        self.pe = PositionalEncoding(3, cfg.positional_encoding)
        self.f_mean = MLP(self.pe.out_dim, 1 + 3 + cfg.mean_feature_dim, cfg.f_mean)
        self.identity_codes = Codebook(num_subjects, cfg.identity_code, name="identity")
        self.expression_codes = Codebook(num_frames, cfg.expression_code, name="expression")
        id_dim, exp_dim = cfg.identity_code.dim, cfg.expression_code.dim
        self.f_inj = MLP(cfg.mean_feature_dim + id_dim, cfg.injected_dim, cfg.f_inj)
        self.f_id = MLP(cfg.injected_dim, 3, cfg.f_id)
        self.f_exp = MLP(cfg.injected_dim + exp_dim, 3, cfg.f_exp)
        self.f_col = MLP(cfg.injected_dim + exp_dim, cfg.color_channels, cfg.f_col)
        self.landmarks_canonical = nn.Parameter(torch.zeros(cfg.num_landmarks, 3))
        self.upsampler = Upsampler(cfg.color_channels, cfg.upsampler)
        grid_verts, tets = tet_grid(cfg.tet_resolution, cfg.grid_bound)
        # Rebuilt from the config, so not part of the checkpoint.
        self.register_buffer("grid_verts", grid_verts, persistent=False)
        self.register_buffer("tets", tets, persistent=False)

    # ------------------------------------------------------------------ mean head
    def mean_field(self, x: Tensor) -> MeanField:  # x [..., 3] canonical
        out = self.f_mean(self.pe(x))
        cell = 2 * self.config.grid_bound / self.config.tet_resolution
        return MeanField(
            sdf=out[..., 0],
            offset=torch.tanh(out[..., 1:4]) * (self.config.max_grid_offset * cell),
            features=out[..., 4:],
        )

    @torch.no_grad()
    def grid_sdf(self) -> Tensor:  # [V] SDF at every grid vertex, no gradient
        x = self.grid_verts
        chunks = [self.mean_field(c).sdf for c in x.split(self.config.sdf_chunk)]
        return torch.cat(chunks)

    def render_context(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`render` that many renders with unchanged weights can
        share: the DMTet mean mesh, extracted once instead of per call."""
        return {"mean_mesh": self.mean_mesh()}

    def mean_mesh(self) -> MeanMesh:
        """DMTet surface of f_mean's SDF, differentiable w.r.t. f_mean's parameters.

        f_mean runs without gradient on the whole grid to find the tetrahedra the surface
        crosses, then with gradient only on their vertices. Raises ``RuntimeError`` when
        the SDF has no zero crossing (pre-fit the SDF first, see ``losses.sdf_sphere``).
        """
        sdf_all = self.grid_sdf()
        inside = (sdf_all < 0)[self.tets]  # [T, 4]
        n_in = inside.sum(-1)
        crossing = self.tets[(n_in > 0) & (n_in < 4)]
        if crossing.shape[0] == 0:
            raise RuntimeError(
                "the mean SDF has no zero crossing inside the grid (the head vanished or "
                "fills the cube); pre-fit it to a sphere or lower the learning rate"
            )
        used, local = torch.unique(crossing, return_inverse=True)
        x = self.grid_verts[used]
        mf = self.mean_field(x)
        verts, faces, feats = marching_tets(x + mf.offset, mf.sdf, local, mf.features)
        return MeanMesh(verts=verts, faces=faces, features=feats)

    # ------------------------------------------------------------------ deformation
    def deform(
        self,
        points: Tensor,  # [M, 3] canonical mean positions X0
        features: Tensor,  # [M, G] Γ at those points
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
    ) -> Deformation:
        return conditioned_deformation(self, points, features, z_id, z_exp)[0]

    def canonical_landmarks(
        self, z_id: Tensor, z_exp: Tensor, point_offsets: Tensor | None = None
    ) -> Tensor:  # [B, Did], [B, Dexp] -> [B, L, 3]
        """P0 through the same identity/expression offsets as the mesh (canonical).
        ``point_offsets`` (a Gaussian-head fit's per-Gaussian offsets) must be None: a
        mesh model has no such offsets."""
        if point_offsets is not None:
            raise ValueError("point_offsets are per-Gaussian fit offsets; a GuidanceModel has none")
        p0 = self.landmarks_canonical
        return self.deform(p0, self.mean_field(p0).features, z_id, z_exp).points

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
        head_R: Tensor,  # [B, 3, 3]
        head_T: Tensor,  # [B, 3]
        head_scale: Tensor,  # [B]
        viewmats: Tensor,  # [B, 4, 4]
        Ks_lr: Tensor,  # [B, 3, 3] intrinsics of the low-resolution image
        width_lr: int,
        height_lr: int,
        mean_mesh: MeanMesh | None = None,
    ) -> GuidanceOutput:
        """Render B (identity, expression, pose, camera) combinations.

        ``mean_mesh`` may be passed to reuse one DMTet extraction across calls (it only
        depends on f_mean). Output RGB is ``upsampler.factor`` times the lr size.
        """
        mm = self.mean_mesh() if mean_mesh is None else mean_mesh
        deform = self.deform(mm.verts, mm.features, z_id, z_exp)
        verts = apply_head_pose(deform.points, head_R, head_T, head_scale)
        r = render_mesh(verts, mm.faces, viewmats, Ks_lr, width_lr, height_lr, deform.colors)
        # Composite on white: empty pixels read 1 in every channel, matching the
        # white-background ground truth in the first three.
        features = r.features * r.mask + (1.0 - r.mask)
        rgb = self.upsampler(features)
        lmk = self.canonical_landmarks(z_id, z_exp)
        landmarks = apply_head_pose(lmk, head_R, head_T, head_scale)
        return GuidanceOutput(
            rgb=rgb,
            features=features,
            mask=r.mask,
            landmarks=landmarks,
            verts=verts,
            faces=mm.faces,
            deformation=deform,
            mean_mesh=mm,
        )
