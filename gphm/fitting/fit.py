"""Single-image fitting (DESIGN.md §2): a new person from one photo.

The input camera is the world origin (viewmat = I) with intrinsics ``K``. The head pose
is initialised by PnP of the model's mean canonical landmarks against the 2D landmarks,
then

* phase 1 optimises ``z_id``, ``z_exp`` (from the codebook means) and the head pose
  (axis-angle and translation increments),
* phase 2 freezes them and fine-tunes a copy of ``f_col`` and per-Gaussian canonical
  offsets (Gaussian heads only),

with photometric (L1 + D-SSIM), silhouette (1 − IoU of the rendered alpha) and landmark
reprojection terms plus code / offset regularisers. The result is an :class:`Avatar`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm import losses, metrics
from gphm.data.loaders import box_downsample
from gphm.fitting.avatar import Avatar
from gphm.geometry.cameras import project_points, rescale_K
from gphm.geometry.pose import solve_pnp
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel
from gphm.models.runs import TrainedRun

__all__ = ["FitConfig", "FitTarget", "FitResult", "TrainedRows", "fit_image", "code_prior",
           "initial_pose", "render_avatar"]  # fmt: skip

Model = GuidanceModel | GaussianHead


@dataclass
class FitConfig:
    phase1_steps: int = 150
    """Optimise codes and pose."""
    phase1_lr: float = 2e-2
    """Adam learning rate of the codes in phase 1."""
    pose_lr: float = 2e-3
    """Adam learning rate of the pose increments (radians / canonical units)."""
    phase2_steps: int = 60
    """Fine-tune f_col and per-Gaussian offsets with the codes frozen."""
    phase2_lr: float = 1e-3
    """Adam learning rate of f_col in phase 2."""
    offset_lr: float = 1e-3
    """Adam learning rate of the per-Gaussian canonical offsets in phase 2."""
    rgb: float = 1.0
    dssim: float = 0.2
    mask: float = 1.0
    landmark: float = 100.0
    """Squared landmark reprojection error in units of the image size."""
    code: float = 1e-2
    """Diagonal Gaussian prior of the trained codebooks (:func:`code_prior`): keeps the
    codes of an identity seen from one side where the model's identity space is."""
    offset: float = 10.0
    """||offsets||² (canonical units) — keeps phase 2 from tearing the surface."""
    fit_pose: bool = True

    def __post_init__(self) -> None:
        for name in ("phase1_steps", "phase2_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"fit.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("phase1_lr", "pose_lr", "phase2_lr", "offset_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"fit.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class FitTarget:
    """One image framed like the training data, at the model's output size ``S``."""

    image: Tensor  # [S, S, 3] in [0, 1], composited on white with `mask`
    mask: Tensor  # [S, S, 1] in [0, 1]
    K: Tensor  # [3, 3] intrinsics in pixels of `image`
    landmarks: Tensor  # [L, 2] pixels of `image` (rows with NaN are ignored)


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
class FitResult:
    avatar: Avatar
    render: Tensor  # [S, S, 3] the fitted render of the input view
    landmarks: Tensor  # [L, 2] projected fitted landmarks, pixels of the target
    landmark_error_px: float
    psnr: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


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


def fit_image(
    model: Model,
    target: FitTarget,
    config: FitConfig | None = None,
    checkpoint: str = "",
    progress: bool = False,
    rows: TrainedRows | None = None,
) -> FitResult:
    """Fit ``model`` (left unchanged) to one image; see the module docstring. ``rows``:
    the trained codebook rows (:meth:`TrainedRows.of_run`); the codes start at their mean
    and the prior is their diagonal Gaussian. Default: every row (a bare model does not
    know which rows were trained)."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        return _fit(model, target, config or FitConfig(), checkpoint, progress,
                    rows or TrainedRows())  # fmt: skip
    finally:  # leave the model as it was
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def _fit(
    model: Model, target: FitTarget, cfg: FitConfig, checkpoint: str, progress: bool,
    rows: TrainedRows,
):  # fmt: skip
    t0 = time.perf_counter()
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    S = target.image.shape[0]
    factor = model.upsampler.config.factor
    if target.image.shape != (S, S, 3) or S % factor:
        raise ValueError(
            f"the target image must be square [S, S, 3] with S a multiple of {factor}, got "
            f"{list(target.image.shape)}"
        )
    image, mask = target.image.to(device), target.mask.to(device)
    K = target.K.to(device).float()[None]
    lmk2d = target.landmarks.to(device).float()
    valid = torch.isfinite(lmk2d).all(-1)
    lmk2d = torch.nan_to_num(lmk2d)
    mask_lr = box_downsample(mask, (S // factor, S // factor))
    R0, T0 = (x.to(device) for x in initial_pose(model, target, rows))
    ids, exps = model.identity_codes, model.expression_codes

    z_id = ids.mean(rows.identity).detach().clone()[None].requires_grad_(True)
    z_exp = exps.mean(rows.expression).detach().clone()[None].requires_grad_(True)
    rot = torch.zeros(1, 3, device=device, requires_grad=cfg.fit_pose)
    trans = torch.zeros(1, 3, device=device, requires_grad=cfg.fit_pose)
    with torch.no_grad():
        id_prior = (ids.mean(rows.identity), ids.std(rows.identity))
        exp_prior = (exps.mean(rows.expression), exps.std(rows.expression))
        context = model.render_context()  # nothing it holds (f_mean) is ever fitted
    eye4 = torch.eye(4, device=device)[None]
    one = torch.ones(1, device=device)
    history: list[dict[str, float]] = []

    def pose() -> tuple[Tensor, Tensor]:
        return axis_angle_to_matrix(rot) @ R0[None], T0[None] + trans

    def step_losses(net: Model, offsets: Tensor | None):
        R, T = pose()
        out = render_avatar(net, z_id, z_exp, R, T, one, eye4, K, S, offsets, context)
        uv, _ = project_points(out.landmarks, eye4, K)
        d2 = (((uv[0] - lmk2d) / S) ** 2).sum(-1)
        terms = {
            "rgb": losses.l1(out.rgb, image[None]),
            "dssim": losses.dssim(out.rgb, image[None]),
            "mask": losses.silhouette_iou(out.mask, mask_lr[None]),
            "landmark": (d2 * valid).sum() / valid.sum().clamp_min(1),
            "code": code_prior(z_id, *id_prior) + code_prior(z_exp, *exp_prior),
        }
        if offsets is not None:
            terms["offset"] = (offsets**2).sum(-1).mean()
        terms["total"] = sum(getattr(cfg, k) * v for k, v in terms.items())
        return terms, out, uv[0]

    def run(phase: int, steps: int, net: Model, params: list[dict], offsets=None) -> None:
        if steps == 0:
            return
        opt = torch.optim.Adam(params)
        bar = tqdm(range(steps), desc=f"fit phase {phase}", disable=not progress, leave=False)
        for i in bar:
            terms, _, _ = step_losses(net, offsets)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            if i % 10 == 0 or i == steps - 1:
                values = {k: round(float(v.detach()), 6) for k, v in terms.items()}
                history.append({"phase": phase, "step": i} | values)

    groups = [{"params": [z_id, z_exp], "lr": cfg.phase1_lr}]
    if cfg.fit_pose:
        groups.append({"params": [rot, trans], "lr": cfg.pose_lr})
    with torch.enable_grad():
        run(1, cfg.phase1_steps, model, groups)
        z_id.requires_grad_(False)
        z_exp.requires_grad_(False)
        rot.requires_grad_(False)
        trans.requires_grad_(False)
        net, offsets, f_col = model, None, None
        if cfg.phase2_steps:
            net = copy.deepcopy(model)
            for p in net.f_col.parameters():
                p.requires_grad_(True)
            groups = [{"params": list(net.f_col.parameters()), "lr": cfg.phase2_lr}]
            if isinstance(net, GaussianHead):
                offsets = torch.zeros(net.num_points, 3, device=device, requires_grad=True)
                groups.append({"params": [offsets], "lr": cfg.offset_lr})
            run(2, cfg.phase2_steps, net, groups, offsets)
            f_col = {k: v.detach().cpu() for k, v in net.f_col.state_dict().items()}
    with torch.no_grad():
        terms, out, uv = step_losses(net, offsets)
        err = ((uv - lmk2d).norm(dim=-1) * valid).sum() / valid.sum().clamp_min(1)
        psnr = float(metrics.psnr(out.rgb.clamp(0, 1), image[None])[0])
        R, T = pose()
    seconds = time.perf_counter() - t0
    avatar = Avatar(
        checkpoint=checkpoint, model_class=type(model).__name__, z_id=z_id[0].detach().cpu(),
        z_exp=z_exp[0].detach().cpu(), head_R=R[0].cpu(), head_T=T[0].cpu(), head_scale=1.0,
        K=K[0].cpu(), image_size=S,
        point_offsets=None if offsets is None else offsets.detach().cpu(), f_col=f_col,
    )  # fmt: skip
    return FitResult(
        avatar=avatar, render=out.rgb[0].clamp(0, 1).cpu(), landmarks=uv.cpu(),
        landmark_error_px=float(err), psnr=psnr, seconds=seconds, history=history,
    )  # fmt: skip
