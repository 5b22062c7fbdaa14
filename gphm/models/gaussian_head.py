"""Stage 2: the Gaussian parametric head model (docs/architecture.md §3.3).

::

    H          = f_inj(Γ0, z_id)                         [B, N, H]
    X_can      = X0 + f_id(H) + f_exp(H, z_exp)           [B, N, 3]
                 + E_id·z_id + E_exp·z_exp                (the optional bases, below)
    C          = sigmoid(f_col(H, z_exp)                  [B, N, 32]
                 + [C_id·z_id + C_exp·z_exp, 0])          (the optional colour bases)
    {S, Q, A}  = {S0, Q0, A0} + f_att(H, z_exp)           log-scale, quat, opacity logit
    X = s·R·X_can + T,   Q = R ⊗ Q_can,   scale = s·exp(S)         head pose of the frame
    splat C at lr (white background) -> Ψ -> RGB at hr

:meth:`GaussianHead.create_from` builds it from a trained :class:`GuidanceModel`:
f_inj, f_id, f_exp, f_col, Ψ, both codebooks and the canonical landmarks are copied;
X0 are the mean-mesh vertices (optionally subdivided to a target count) and Γ0 the
mean-field features there, both now free parameters; S0 from nearest-neighbour
distances, Q0 identity, A0 = logit(init_opacity); f_att is new with a zero-initialised
last layer, so right after creation the head is exactly the initial Gaussians.

``expression_basis`` / ``identity_basis``: each Gaussian also gets a free linear basis
E_exp [N, 3, Dexp] / E_id [N, 3, Did] (zero at creation), learned per-Gaussian
blendshapes of the codes added to f_exp's / f_id's offsets (``X_can += E_id·z_id +
E_exp·z_exp``). f_exp sees a Gaussian only through its 32 hidden channels, which resolve
a jaw but not a mouth corner or an eyelid (a smile moves ~1 % of the pixels, 0.07 head
units); E_exp resolves every Gaussian. E_id gives identity the same per-Gaussian reach:
without it the expression codes learn each subject's own shape details through E_exp
(every frame of a subject shares them), which a code swap then carries to another person.
The model's landmarks follow both at their nearest Gaussians
(:meth:`GaussianHead.canonical_landmarks`).

``color_basis_channels = K``: the same for colour, C_id [N, K, Did] / C_exp [N, K, Dexp]
added to f_col's logits of the first K of the 32 channels (the first 3 are the lr RGB).
The synthetic expressions change colour as well as shape (a smile and a puffed cheek
flush the cheek, a blink covers the eye's white with the lid), which f_col resolves no
better than f_exp resolves a mouth corner.

Shapes: ``B`` batch of (frame, camera) rows, ``N`` Gaussians, ``L`` landmarks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gphm.geometry.mesh import (
    anchored_offsets,
    knn_mean_distance,
    knn_weights,
    midpoints_near,
    midpoints_within,
    subdivide_to_count,
)
from gphm.geometry.pose import apply_head_pose
from gphm.geometry.rotations import matrix_to_quat, quat_multiply
from gphm.models.base import SerializableModule, dataclass_from_dict
from gphm.models.embeddings import Codebook
from gphm.models.guidance import (
    Deformation,
    GuidanceConfig,
    GuidanceModel,
    RendersTrainingRows,
    conditioned_deformation,
)
from gphm.models.mlp import MLP, MLPConfig
from gphm.models.upsampler import Upsampler
from gphm.render import rasterize_gaussians
from gphm.render._checks import check_eps2d, check_semantics

__all__ = [
    "EXPRESSION_PARTS",
    "GaussianHeadConfig",
    "GaussianHead",
    "GaussianAttributes",
    "GaussianOutput",
]

#: Modules copied verbatim from the guidance model by ``create_from``.
INHERITED = ("f_inj", "f_id", "f_exp", "f_col", "upsampler", "identity_codes", "expression_codes")


#: Gaussians a canonical landmark follows when a fit offsets them (``landmark_anchors``).
LANDMARK_ANCHORS = 8

#: The paths through which the expression code reaches a Gaussian, each of which can be
#: given its own code (``GaussianHead.attributes(exp_parts=...)``): ``networks`` (f_exp,
#: f_col and f_att, through ``(H, z_exp)``), ``position_basis`` (E_exp) and
#: ``color_basis`` (C_exp). Feeding one the neutral code shows what the others carry
#: (``gphm-evaluate split=expression_probe probe_parts=true``).
EXPRESSION_PARTS = ("networks", "position_basis", "color_basis")


def _part_codes(
    z_exp: Tensor,  # [B, Dexp]
    exp_parts: Mapping[str, Tensor] | None,  # part -> [B, Dexp]
) -> dict[str, Tensor]:  # every part -> its code [B, Dexp]
    """The code each of :data:`EXPRESSION_PARTS` sees: its ``exp_parts`` entry, else ``z_exp``."""
    exp_parts = dict(exp_parts or {})
    unknown = sorted(set(exp_parts) - set(EXPRESSION_PARTS))
    if unknown:
        raise ValueError(f"exp_parts: unknown part(s) {unknown}; the parts are "
                         f"{list(EXPRESSION_PARTS)}")  # fmt: skip
    for name, z in exp_parts.items():
        if z.shape != z_exp.shape:
            raise ValueError(f"exp_parts[{name!r}] must have z_exp's shape "
                             f"{list(z_exp.shape)}, got {list(z.shape)}")  # fmt: skip
    return {name: exp_parts.get(name, z_exp) for name in EXPRESSION_PARTS}


@dataclass
class GaussianHeadConfig:
    """Stage-2 options; the inherited networks keep the guidance model's architecture."""

    num_points: int = 0
    """Target Gaussian count for ``create_from``: the mean mesh is midpoint-subdivided
    until it has at least this many vertices, then subsampled to exactly this many
    (deterministically). 0 keeps the mean-mesh vertices."""
    face_points: int = 0
    """Extra Gaussians on the face, added after ``num_points``: the midpoints of the
    mean-mesh edges nearest the canonical landmarks
    (:func:`gphm.geometry.mesh.midpoints_near`), a local subdivision where expressions
    move the surface. The tiny preset's mean mesh puts only 3–5 Gaussians within ~2 px
    of a mouth corner, and splat density is what the smiles' capture lacks (README,
    "Expression metrics"). 0 adds none."""
    face_radius: float = 0.0
    """Where ``face_points`` go: 0 packs them against the landmarks (the nearest
    midpoints first); > 0 spreads them evenly, drawn at random (seeded) among the edges
    whose midpoints lie within ``face_radius`` canonical head units of a landmark
    (:func:`gphm.geometry.mesh.midpoints_within`), which also reaches the cheeks between
    the landmarks."""
    f_att: MLPConfig = field(
        default_factory=lambda: MLPConfig(width=64, depth=2, zero_init_last=True)
    )
    """Attribute offsets (Δlog-scale 3, Δquaternion 4, Δopacity-logit 1) from (H, z_exp)."""
    init_opacity: float = 0.1
    """A0 = logit(init_opacity), as in 3D Gaussian Splatting."""
    init_scale_factor: float = 1.0
    """S0 = log(factor × mean distance to the 3 nearest neighbours), isotropic."""
    eps2d: float = 0.3
    """Screen-space blur (pixels² of the lr render) added to every splat's 2D covariance
    (gsplat's ``eps2d``). It is also the softest a silhouette edge can be: 0.3 (the 3DGS
    default) blurs an lr edge with σ ≈ 0.55 px, twice the spread of a pixel's box filter,
    and Ψ cannot restore an hr edge from that. Small lr renders want less (the tiny preset
    uses 0.1)."""
    antialiased: bool = False
    """gsplat's ``rasterize_mode="antialiased"``: opacities scaled by
    ``sqrt(det Σ₂D / det(Σ₂D + eps2d))`` so the blur does not add weight. Off by default:
    on the demo set (eps2d 0.1) it scored 0.3 dB lower on held-out views."""
    semantics: str = "gsplat15"
    """The rasterization rule the model is trained and rendered with
    (``rasterize_gaussians(semantics=...)``): ``"gsplat15"`` is gsplat ≥ 1.5's (α clamp
    0.999, opacity-aware tile boxes), the same on CPU and GPU; ``"legacy"`` (α clamp 0.99,
    3σ-of-λ_max boxes, torch backend only) is the rule of models saved before this field
    existed, which :meth:`GaussianHead.read_description` gives to a ``config.json`` that
    lacks it so that old checkpoints render as trained."""

    expression_basis: bool = True
    """A per-Gaussian linear expression basis E_exp [N, 3, Dexp] (module docstring):
    offsets ``E_exp · z_exp`` beside f_exp's, trained at ``train.point_lr``. False (and a
    ``config.json`` from before the field) is the model without it. Decided on the demo
    set's val rows with ``identity_basis`` (README, "Expression metrics"): val_view /
    val_combo 29.27 / 29.62 -> 31.83 / 32.99 dB, expression capture on val_view 0.41 ->
    0.78 (smiles 0.02 -> 0.55, blink 0.0 -> 0.42), 9 % longer training."""
    identity_basis: bool = True
    """The same for identity: ``E_id · z_id`` [N, 3, Did] beside f_id's offsets. Without
    it the expression basis learns each subject's shape details in the expression codes
    (every frame of a subject shares them): val_combo (code swapping) fell to 23.63 dB."""

    color_basis_channels: int = 3
    """Per-Gaussian colour bases of both codes on the first K colour channels (module
    docstring), trained at ``train.point_lr``; 0 (and a ``config.json`` from before the
    field) is the model without them. 3 (the lr RGB) on the demo set's val rows, with
    ``loss.gaussian.basis_smooth=10``: val_view / val_combo 32.13 / 33.37 -> 32.26 / 33.68
    dB, expression gain on val_view 7.11 -> 7.39 dB (blink on the probe 5.3 -> 6.8 dB)."""

    def __post_init__(self) -> None:
        if self.color_basis_channels < 0:
            raise ValueError(f"color_basis_channels must be >= 0, got {self.color_basis_channels}")
        if self.num_points < 0:
            raise ValueError(f"num_points must be >= 0, got {self.num_points}")
        if self.face_points < 0:
            raise ValueError(f"face_points must be >= 0, got {self.face_points}")
        if not (math.isfinite(self.face_radius) and self.face_radius >= 0):
            raise ValueError(f"face_radius must be a finite number >= 0, got {self.face_radius}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if self.init_scale_factor <= 0:
            raise ValueError(f"init_scale_factor must be > 0, got {self.init_scale_factor}")
        check_eps2d(self.eps2d)
        check_semantics(self.semantics)


#: The rasterization rule of ``config.json`` files written before ``semantics`` existed.
LEGACY_SEMANTICS = "legacy"


@dataclass
class GaussianAttributes:
    """Per-Gaussian attributes of B (identity, expression) pairs, in canonical space."""

    means: Tensor  # [B, N, 3] X_can
    log_scales: Tensor  # [B, N, 3]
    quats: Tensor  # [B, N, 4] wxyz, not normalised
    opacity_logits: Tensor  # [B, N]
    colors: Tensor  # [B, N, C] in (0, 1); the first three are RGB
    deformation: Deformation  # delta_id / delta_exp / hidden, for regularisers

    def posed(
        self, head_R: Tensor, head_T: Tensor, head_scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """World ``means`` [B,N,3], ``quats`` [B,N,4] and linear ``scales`` [B,N,3]."""
        means = apply_head_pose(self.means, head_R, head_T, head_scale)
        quats = quat_multiply(matrix_to_quat(head_R)[:, None], self.quats)
        scales = head_scale[:, None, None] * self.log_scales.exp()
        return means, quats, scales


@dataclass
class GaussianOutput:
    rgb: Tensor  # [B, h·f, w·f, 3] high-resolution RGB from Ψ (white background)
    features: Tensor  # [B, h, w, C] splatted features composited on white
    mask: Tensor  # [B, h, w, 1] accumulated alpha
    landmarks: Tensor  # [B, L, 3] world
    attributes: GaussianAttributes


def _blend(
    bases: tuple[Tensor | None, Tensor | None],  # [N, K, Did], [N, K, Dexp] or None
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
) -> tuple[Tensor | None, Tensor | None]:  # [B, N, K] each, None where the basis is
    """Per-Gaussian linear bases applied to the codes: ``basis · z`` for each pair."""
    return tuple(
        None if e is None else torch.einsum("nkd,bd->bnk", e, z)
        for e, z in zip(bases, (z_id, z_exp))
    )  # type: ignore[return-value]


class GaussianHead(RendersTrainingRows, SerializableModule):
    """Stage-2 multi-identity Gaussian head model (see the module docstring).

    Args:
        config: stage-2 options.
        guidance: architecture of the inherited networks (a :class:`GuidanceConfig` or
            its dict form, as stored in ``config.json``).
        num_subjects, num_frames: codebook sizes.
        num_points: Gaussians N (fixed by ``create_from``).
    """

    config_class = GaussianHeadConfig

    @classmethod
    def read_description(cls, directory: Any) -> dict[str, Any]:
        """``config.json`` as saved; one that predates ``GaussianHeadConfig.semantics``
        gets the rule it was trained with (``"legacy"``), not today's default, and one that
        predates the bases the model without them."""
        desc = super().read_description(directory)
        if isinstance(desc.get("config"), dict):
            desc["config"].setdefault("semantics", LEGACY_SEMANTICS)
            desc["config"].setdefault("expression_basis", False)
            desc["config"].setdefault("identity_basis", False)
            desc["config"].setdefault("color_basis_channels", 0)
        return desc

    def __init__(
        self,
        config: GaussianHeadConfig,
        guidance: GuidanceConfig | dict[str, Any],
        num_subjects: int,
        num_frames: int,
        num_points: int,
    ):
        super().__init__()
        if isinstance(guidance, dict):
            guidance = dataclass_from_dict(GuidanceConfig, guidance, "GaussianHead guidance")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self._record_init(
            config,
            guidance=dataclasses.asdict(guidance),
            num_subjects=num_subjects,
            num_frames=num_frames,
            num_points=num_points,
        )
        self.guidance_config = g = guidance
        self.identity_codes = Codebook(num_subjects, g.identity_code, name="identity")
        self.expression_codes = Codebook(num_frames, g.expression_code, name="expression")
        id_dim, exp_dim = g.identity_code.dim, g.expression_code.dim
        self.f_inj = MLP(g.mean_feature_dim + id_dim, g.injected_dim, g.f_inj)
        self.f_id = MLP(g.injected_dim, 3, g.f_id)
        self.f_exp = MLP(g.injected_dim + exp_dim, 3, g.f_exp)
        self.f_col = MLP(g.injected_dim + exp_dim, g.color_channels, g.f_col)
        self.f_att = MLP(g.injected_dim + exp_dim, 3 + 4 + 1, config.f_att)
        self.upsampler = Upsampler(g.color_channels, g.upsampler)
        # Per-Gaussian free parameters (values are set by create_from or a checkpoint).
        self.points = nn.Parameter(torch.zeros(num_points, 3))  # X0
        self.point_features = nn.Parameter(torch.zeros(num_points, g.mean_feature_dim))  # Γ0
        self.log_scales = nn.Parameter(torch.full((num_points, 3), -4.0))  # S0
        self.quats = nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(num_points, 1))  # Q0
        logit = math.log(config.init_opacity / (1 - config.init_opacity))
        self.opacity_logits = nn.Parameter(torch.full((num_points,), logit))  # A0
        self.landmarks_canonical = nn.Parameter(torch.zeros(g.num_landmarks, 3))  # P0
        self.landmark_features = nn.Parameter(torch.zeros(g.num_landmarks, g.mean_feature_dim))
        # E_exp / E_id, zero: the head starts as the networks alone
        if config.expression_basis:
            self.expression_basis = nn.Parameter(torch.zeros(num_points, 3, exp_dim))
        if config.identity_basis:
            self.identity_basis = nn.Parameter(torch.zeros(num_points, 3, id_dim))
        k = config.color_basis_channels
        if k > g.color_channels:
            raise ValueError(
                f"model.gaussian.color_basis_channels={k} exceeds the {g.color_channels} "
                "colour channels of the guidance model"
            )
        if k:  # C_id / C_exp, zero as well
            self.identity_color_basis = nn.Parameter(torch.zeros(num_points, k, id_dim))
            self.expression_color_basis = nn.Parameter(torch.zeros(num_points, k, exp_dim))

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    @property
    def color_channels(self) -> int:
        return self.guidance_config.color_channels

    # ------------------------------------------------------------------ creation
    @classmethod
    @torch.no_grad()
    def create_from(
        cls, guidance: GuidanceModel, config: GaussianHeadConfig | None = None, seed: int = 0
    ) -> GaussianHead:
        """Initialise a Gaussian head from a trained guidance model (docs/architecture.md §3.3)."""
        config = config or GaussianHeadConfig()
        mm = guidance.mean_mesh()
        verts, feats = mm.verts, mm.features
        if config.num_points > verts.shape[0]:
            verts, _, feats = subdivide_to_count(verts, mm.faces, config.num_points, feats)
        if config.num_points and verts.shape[0] > config.num_points:
            g = torch.Generator().manual_seed(seed)
            keep = torch.randperm(verts.shape[0], generator=g)[: config.num_points].sort().values
            keep = keep.to(verts.device)
            verts, feats = verts[keep], feats[keep]
        if config.face_points:
            lmk = guidance.landmarks_canonical
            if config.face_radius > 0:
                e = midpoints_within(
                    mm.verts, mm.faces, lmk, config.face_radius, config.face_points, seed
                )
            else:
                e = midpoints_near(mm.verts, mm.faces, lmk, config.face_points)
            verts = torch.cat([verts, 0.5 * (mm.verts[e[:, 0]] + mm.verts[e[:, 1]])])
            feats = torch.cat([feats, 0.5 * (mm.features[e[:, 0]] + mm.features[e[:, 1]])])
        head = cls(
            config,
            guidance.config,
            num_subjects=guidance.identity_codes.num_codes,
            num_frames=guidance.expression_codes.num_codes,
            num_points=verts.shape[0],
        ).to(verts.device)
        for name in INHERITED:
            getattr(head, name).load_state_dict(getattr(guidance, name).state_dict())
        head.points.copy_(verts)
        head.point_features.copy_(feats)
        dist = knn_mean_distance(verts, k=3).clamp_min(1e-6) * config.init_scale_factor
        head.log_scales.copy_(dist.log()[:, None].expand(-1, 3))
        p0 = guidance.landmarks_canonical
        head.landmarks_canonical.copy_(p0)
        head.landmark_features.copy_(guidance.mean_field(p0).features)
        return head

    # ------------------------------------------------------------------ attributes
    def attributes(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
        point_offsets: Tensor | None = None,  # [N, 3] extra X_can offsets (fitting)
        exp_parts: Mapping[str, Tensor] | None = None,  # part -> [B, Dexp]
    ) -> GaussianAttributes:
        """Canonical Gaussians of B (identity, expression) pairs.

        ``exp_parts``: another code for some of :data:`EXPRESSION_PARTS` (the others see
        ``z_exp``), a diagnostic: with ``{"position_basis": z_neutral}`` the expression
        reaches the Gaussians through the networks and the colour basis only."""
        codes = _part_codes(z_exp, exp_parts)
        colors = self.color_basis_logits(z_id, codes["color_basis"])
        deform, h_exp = conditioned_deformation(
            self, self.points, self.point_features, z_id, codes["networks"], colors
        )
        b_id, b_exp = self.basis_offsets(z_id, codes["position_basis"])
        if b_id is not None:
            deform = dataclasses.replace(
                deform, points=deform.points + b_id, delta_id=deform.delta_id + b_id
            )
        if b_exp is not None:
            deform = dataclasses.replace(
                deform, points=deform.points + b_exp, delta_exp=deform.delta_exp + b_exp
            )
        att = self.f_att(h_exp)
        means = deform.points if point_offsets is None else deform.points + point_offsets
        return GaussianAttributes(
            means=means,
            log_scales=self.log_scales + att[..., 0:3],
            quats=self.quats + att[..., 3:7],
            opacity_logits=self.opacity_logits + att[..., 7],
            colors=deform.colors,
            deformation=deform,
        )

    def bases(self) -> tuple[Tensor | None, Tensor | None]:
        """E_id [N, 3, Did] and E_exp [N, 3, Dexp] (None where not configured)."""
        return getattr(self, "identity_basis", None), getattr(self, "expression_basis", None)

    def basis_offsets(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
    ) -> tuple[Tensor | None, Tensor | None]:  # [B, N, 3] each, None where not configured
        """The bases' canonical offsets ``E_id · z_id`` and ``E_exp · z_exp``."""
        return _blend(self.bases(), z_id, z_exp)

    def color_bases(self) -> tuple[Tensor | None, Tensor | None]:
        """C_id [N, K, Did] and C_exp [N, K, Dexp] (None without ``color_basis_channels``)."""
        return (getattr(self, "identity_color_basis", None),
                getattr(self, "expression_color_basis", None))  # fmt: skip

    def color_basis_logits(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
    ) -> Tensor | None:  # [B, N, C], None without colour bases
        """``C_id·z_id + C_exp·z_exp`` on the first K colour channels, zero on the others."""
        by_id, by_exp = _blend(self.color_bases(), z_id, z_exp)
        if by_id is None or by_exp is None:  # both or neither (color_basis_channels)
            return None
        return nn.functional.pad(by_id + by_exp, (0, self.color_channels - by_id.shape[-1]))

    def learned_bases(self) -> list[Tensor]:
        """Every configured per-Gaussian basis (E_id, E_exp, C_id, C_exp): the stage-2
        parameters trained at ``train.point_lr`` and smoothed by ``loss.gaussian.basis_smooth``."""
        return [e for e in (*self.bases(), *self.color_bases()) if e is not None]

    def render_context(self) -> dict[str, Any]:
        """As ``GuidanceModel.render_context``: Gaussians have nothing to share."""
        return {}

    def landmark_anchors(self, k: int = LANDMARK_ANCHORS) -> tuple[Tensor, Tensor]:
        """Each canonical landmark's ``k`` nearest canonical Gaussians and their
        inverse-distance weights (rows sum to 1): indices [L, k], weights [L, k]."""
        return knn_weights(self.landmarks_canonical, self.points, k)

    def canonical_landmarks(
        self,
        z_id: Tensor,  # [B, Did]
        z_exp: Tensor,  # [B, Dexp]
        point_offsets: Tensor | None = None,  # [N, 3] the Gaussians' extra offsets (fitting)
        exp_parts: Mapping[str, Tensor] | None = None,  # part -> [B, Dexp], as ``attributes``
    ) -> Tensor:  # [B, L, 3]
        """P0 through the same identity/expression offsets as the Gaussians. The per-Gaussian
        offsets that the landmarks' own path lacks, the bases' ``E_id·z_id + E_exp·z_exp`` and
        a fit's ``point_offsets``, reach each landmark from its nearest Gaussians (the
        inverse-distance mean of their offsets, :meth:`landmark_anchors`): a smile learned
        by E moves the mouth-corner landmarks, a fitted avatar's landmarks follow its
        personalised geometry, and a landmark term can shape both."""
        p0, g0 = self.landmarks_canonical, self.landmark_features
        codes = _part_codes(z_exp, exp_parts)
        points = conditioned_deformation(self, p0, g0, z_id, codes["networks"])[0].points
        bases = self.bases()
        if bases == (None, None) and point_offsets is None:
            return points
        idx, w = self.landmark_anchors()
        for e, z in zip(bases, (z_id, codes["position_basis"])):
            if e is not None:  # E at the anchors only: [L, 3, D]
                at = anchored_offsets(e.flatten(1), idx, w).unflatten(-1, e.shape[1:])
                points = points + torch.einsum("lkd,bd->blk", at, z)
        if point_offsets is not None:
            points = points + anchored_offsets(point_offsets, idx, w)
        return points

    # ------------------------------------------------------------------ rendering
    def splat(
        self,
        attributes: GaussianAttributes,
        head_R: Tensor,  # [B, 3, 3]
        head_T: Tensor,  # [B, 3]
        head_scale: Tensor,  # [B]
        viewmats: Tensor,  # [B, 4, 4]
        Ks_lr: Tensor,  # [B, 3, 3]
        width_lr: int,
        height_lr: int,
    ) -> tuple[Tensor, Tensor]:  # features [B, h, w, C] on white, alpha [B, h, w, 1]
        """Splat each row's Gaussians into its own camera."""
        means, quats, scales = attributes.posed(head_R, head_T, head_scale)
        opacities = torch.sigmoid(attributes.opacity_logits)
        white = torch.ones(1, self.color_channels, device=means.device, dtype=means.dtype)
        feats, alphas = [], []
        for b in range(means.shape[0]):
            f, a = rasterize_gaussians(
                means[b], quats[b], scales[b], opacities[b], attributes.colors[b],
                viewmats[b : b + 1], Ks_lr[b : b + 1], width_lr, height_lr, backgrounds=white,
                eps2d=self.config.eps2d, antialiased=self.config.antialiased,
                semantics=self.config.semantics,
            )  # fmt: skip
            feats.append(f)
            alphas.append(a)
        return torch.cat(feats), torch.cat(alphas)

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
        point_offsets: Tensor | None = None,  # [N, 3]
        exp_parts: Mapping[str, Tensor] | None = None,  # part -> [B, Dexp]
    ) -> GaussianOutput:
        """Render B (identity, expression, pose, camera) combinations; RGB is
        ``upsampler.factor`` times the lr size. ``exp_parts``: as :meth:`attributes`
        (the landmarks follow the same codes)."""
        att = self.attributes(z_id, z_exp, point_offsets, exp_parts)
        features, alpha = self.splat(
            att, head_R, head_T, head_scale, viewmats, Ks_lr, width_lr, height_lr
        )
        lmk = self.canonical_landmarks(z_id, z_exp, point_offsets, exp_parts)
        lmk = apply_head_pose(lmk, head_R, head_T, head_scale)
        return GaussianOutput(
            rgb=self.upsampler(features), features=features, mask=alpha, landmarks=lmk,
            attributes=att,
        )  # fmt: skip
