"""Per-frame expression and head-pose tracking of a face video with a trained model.

The person is fitted once, from the first frame with a face, by single-image fitting
(:func:`gphm.fitting.fit.fit_image`: identity code, expression code, head pose, then the
personalised colour MLP and per-Gaussian offsets). Every later frame then optimises only
its expression code ``z_exp`` and head pose, **warm-started from the previous frame**
(the parameters and one Adam state carry over), for a few steps of

    rgb·L1 + dssim·D-SSIM + mask·(1 − IoU) + landmark·||uv − uv*||²/S²
    + code·prior(z_exp) + smooth·||(z_exp − z_prev)/σ||² + pose_smooth·||pose − pose_prev||²

(σ: the trained expression codes' std per dimension: the code is optimised as
``z = μ + σ·u``; the pose is an axis-angle and translation
increment on the identity frame's pose, radians and canonical units).

Per frame: ``landmark_steps`` cheap steps on the landmark, prior and temporal terms
(no rendering), then ``steps`` steps of everything, rendered at ``render_size`` (the
frame box-downsampled to it). On 2 CPU cores (``model=tiny``, 8266 Gaussians, measured
under contention) a render step (forward and backward) costs ~0.15 s at 64 px and
~0.25 s at 128 px, a landmark step ~0.5-1 ms; the defaults track at ~0.3-0.6 s/frame.
The identity path ``H = f_inj(Γ0, z_id)`` is not cached across frames: it is ~2 ms of
a render step's forward (the rasteriser and Ψ dominate), so caching it would not pay.

The defaults were chosen on a validation sequence (``make_synthetic.py mode=sequence
seed=16``, ``model=tiny``): the landmark steps carry the expression (the photometric
steps mostly refine the pose: more of them, or at 128 px, did not raise the
cross-reenactment gain), and a weak code prior without temporal smoothing of ``z_exp``
doubled the gain over the neutral baseline of the earlier ``code=1e-2, smooth=0.05,
landmark_steps=30`` while the landmark jitter stayed at the sequence's own.

Frames without a detectable face (``TrackFrame.landmarks is None``) keep the previous
frame's codes and pose and are flagged ``carried``; leading frames before the first face
take the first tracked frame's. Tracking never fails on such a frame.

Tracking is a configuration of the inversion engine (:mod:`gphm.inversion`): a frame
is a :class:`~gphm.inversion.target.Target` (``TrackFrame``), its two stretches of steps
are the phases of :class:`_Tracker` sharing one Adam. **A new loss term** goes into
``gphm/inversion/terms.py``, gets a weight of its name in :class:`TrackConfig` and is
computed in ``_Tracker.landmark_terms`` / ``photometric_terms``. A loss or gradient that
turns NaN/inf stops the tracking with :class:`~gphm.inversion.engine.NonFiniteError`
(exit status 2) naming the option likely responsible; ``Tracking.info["coverage"]`` is
each frame's render coverage of its mask (frames under ``fit.min_coverage`` are listed
in ``info["low_coverage_frames"]``).

Conventions: each frame's camera is the world origin (viewmat = I) with intrinsics
``TrackFrame.K`` at the model's output size ``S``; ``head_R``/``head_T`` map canonical to
that camera (``x = s·R·x_c + T``, ``s`` the identity fit's head scale). Landmarks are
pixels of the ``S × S`` frame.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import (
    FitConfig,
    FitTarget,
    Model,
    TrainedRows,
    fit_image,
    render_avatar,
)
from gphm.geometry.cameras import project_points
from gphm.geometry.pose import apply_head_pose
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.inversion import terms as T
from gphm.inversion.engine import make_optimizer, run_phase
from gphm.inversion.guard import coverage
from gphm.inversion.phases import ParamGroup, Phase
from gphm.inversion.target import Target, TargetBatch
from gphm.io.atomic import atomic_directory
from gphm.models.runs import TrainedRun

__all__ = [
    "TrackConfig",
    "TrackFrame",
    "Tracking",
    "track_frames",
    "render_tracking",
    "landmark_jitter",
    "is_tracking_dir",
]

TRACKING_JSON = "tracking.json"
TRACKING_WEIGHTS = "tracking.safetensors"
FORMAT_VERSION = 1


@dataclass
class TrackConfig:
    """Per-frame tracking hyper-parameters (``track.*`` on the command line)."""

    landmark_steps: int = 80
    """Cheap steps per frame on the landmark, prior and temporal terms only (no
    rendering: 68 points through the deformation MLPs, ~0.5-1 ms each). They carry the
    expression: on the validation sequence 50-80 of them doubled the cross-reenactment
    gain of 30."""
    steps: int = 2
    """Then photometric steps per frame (every term; each renders the head)."""
    render_size: int = 64
    """Size the photometric steps render at (the frame is box-downsampled to it; rounded
    down to a multiple of the upsampling factor, at most the frame size; 0 = the frame
    size). Rendering cost grows with the pixels; at ``model=tiny`` 64 px is ~1.7x
    cheaper than 128 px, and 128 px (with 6 steps) did not track better."""
    lr: float = 0.1
    """Adam learning rate of z_exp in units of the trained codes' std per dimension (the
    code is optimised as ``mean + std·u``, so one rate suits any model's code scale)."""
    pose_lr: float = 2e-3
    """Adam learning rate of the pose increments (radians / canonical units)."""
    rgb: float = 1.0
    dssim: float = 0.0
    """D-SSIM weight (0: skipped, it costs as much as the rest of a step on a CPU)."""
    mask: float = 1.0
    landmark: float = 100.0
    code: float = 1e-3
    """Prior of the trained expression codes (as in fitting, ``mean(u²)``). Weak: the
    earlier 1e-2 held the codes near the codebook mean and halved the expression
    transferred."""
    smooth: float = 0.0
    """Temporal term on z_exp: squared change from the previous frame in units of the
    trained codes' std, averaged over dimensions. Off by default: the warm start
    already keeps consecutive codes close (jitter at the sequence's own), and 0.05
    lagged behind fast expression changes."""
    pose_smooth: float = 1.0
    """Temporal term on the pose: squared change of the axis-angle (rad) and translation."""
    fit_pose: bool = True
    fit: FitConfig = field(default_factory=FitConfig)
    """Identity fit of the first frame with a face (fit.phase1_steps=...)."""

    def __post_init__(self) -> None:
        for name in ("steps", "landmark_steps", "render_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"track.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("rgb", "dssim", "mask", "landmark", "code", "smooth", "pose_smooth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"track.{name} must be a finite number >= 0, got {value}")
        for name in ("lr", "pose_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"track.{name} must be a finite number > 0, got {value}")


TrackFrame = Target
"""A tracking frame: :class:`gphm.inversion.target.Target` (``landmarks`` None: no face
detected; ``info``: e.g. ``{"file": ...}``)."""


@dataclass
class Tracking:
    """Per-frame codes and poses of a tracked video, and the avatar they drive."""

    avatar: Avatar  # identity (z_id, personalised f_col / offsets) of the tracked person
    z_exp: Tensor  # [T, Dexp]
    head_R: Tensor  # [T, 3, 3] canonical -> frame camera
    head_T: Tensor  # [T, 3]
    K: Tensor  # [T, 3, 3] frame intrinsics at image_size
    landmarks: Tensor  # [T, L, 2] tracked landmarks projected into each frame
    input_landmarks: Tensor  # [T, L, 2] the frames' landmarks (NaN where no face)
    carried: list[bool]  # [T] no face: codes and pose carried over
    seconds: list[float]  # [T] wall time per frame (the identity frame includes the fit)
    identity_frame: int  # the frame the identity was fitted on
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.z_exp.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.avatar.image_size)

    def landmark_errors(self) -> list[float | None]:
        """[T] mean distance (px) between tracked and input landmarks; None where carried."""
        d = (self.landmarks - self.input_landmarks).norm(dim=-1)  # [T, L]
        out: list[float | None] = []
        for t in range(self.num_frames):
            ok = torch.isfinite(d[t])
            out.append(None if self.carried[t] or not ok.any() else float(d[t][ok].mean()))
        return out

    def seconds_per_frame(self) -> float | None:
        """Mean wall time of the frames after the identity frame (tracking only)."""
        s = [x for t, x in enumerate(self.seconds) if t != self.identity_frame]
        return float(np.mean(s)) if s else None

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path, overwrite: bool = False, extra: Any = None) -> Path:
        """Write ``tracking.safetensors``, ``tracking.json`` and ``avatar/`` atomically.
        ``extra(tmp)``: a callback writing more files into the directory being built. The
        directory is replaced as a whole, so only an empty one or an earlier tracking
        (``overwrite``) is, never a folder of other files (``FileExistsError``)."""
        d = Path(directory)
        if d.is_dir() and any(d.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{d} is not empty; pass overwrite=true to replace it")
            if not is_tracking_dir(d):  # never swap away a folder of someone's files
                raise FileExistsError(
                    f"{d} is a non-empty folder that is not a tracking ({TRACKING_JSON}); not "
                    "replacing it even with overwrite=true: choose another out"
                )
        tensors = {
            "z_exp": self.z_exp, "head_R": self.head_R, "head_T": self.head_T, "K": self.K,
            "landmarks": self.landmarks, "input_landmarks": self.input_landmarks,
            "carried": torch.tensor(self.carried, dtype=torch.float32),
        }  # fmt: skip
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "class": "Tracking",
            "format_version": FORMAT_VERSION,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "identity_frame": self.identity_frame,
            "avatar": "avatar",
            "checkpoint": str(Path(self.avatar.checkpoint).resolve()),
            "carried": [t for t, c in enumerate(self.carried) if c],
            "seconds": [round(s, 4) for s in self.seconds],
            "info": self.info,
            "z_exp": "tracking.safetensors: z_exp [T, Dexp]",
            "head_pose": "tracking.safetensors: head_R [T, 3, 3], head_T [T, 3] canonical -> "
            "frame camera (viewmat = I), head_scale = avatar head_scale",
            "landmarks": "tracking.safetensors: landmarks / input_landmarks [T, L, 2] pixels",
        }
        with atomic_directory(
            d, overwrite=overwrite or (d.is_dir() and not any(d.iterdir()))
        ) as tmp:
            save_file(tensors, str(tmp / TRACKING_WEIGHTS))
            (tmp / TRACKING_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            self.avatar.save(tmp / "avatar", overwrite=True)
            if extra is not None:
                extra(tmp)
        return d

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None) -> Tracking:
        """Read a tracking directory; ``ValueError`` naming the file and field if damaged."""
        d = Path(directory)
        jpath, wpath = d / TRACKING_JSON, d / TRACKING_WEIGHTS
        if not jpath.is_file() or not wpath.is_file():
            raise FileNotFoundError(
                f"{d}: not a tracking (expected {TRACKING_JSON} and {TRACKING_WEIGHTS}; "
                "write one with scripts/track_video.py)"
            )
        try:
            meta = json.loads(jpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{jpath}: invalid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("class") != "Tracking":
            raise ValueError(f"{jpath}: not a tracking file (class 'Tracking' expected)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{jpath}: field 'format_version' must be {FORMAT_VERSION}")
        try:
            t = load_file(str(wpath))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{wpath}: unreadable safetensors file ({err})") from None
        n = meta.get("num_frames")
        shapes = {"z_exp": 2, "head_R": 3, "head_T": 2, "K": 3, "landmarks": 3,
                  "input_landmarks": 3, "carried": 1}  # fmt: skip
        for k, dim in shapes.items():
            if k not in t:
                raise ValueError(f"{wpath}: missing tensor {k!r}")
            if t[k].dim() != dim or t[k].shape[0] != n:
                raise ValueError(
                    f"{wpath}: field {k!r} has shape {list(t[k].shape)}, expected {dim} dims "
                    f"with num_frames={n} first"
                )
        for k in ("z_exp", "head_R", "head_T", "K", "landmarks"):
            if not bool(torch.isfinite(t[k]).all()):
                raise ValueError(f"{wpath}: field {k!r} holds non-finite values")
        avatar = Avatar.load(d / str(meta.get("avatar", "avatar")), model)
        if model is not None and t["z_exp"].shape[1] != model.expression_codes.config.dim:
            raise ValueError(
                f"{wpath}: field 'z_exp' has {t['z_exp'].shape[1]} dims, the model's "
                f"expression codes have {model.expression_codes.config.dim}"
            )
        return cls(
            avatar=avatar, z_exp=t["z_exp"], head_R=t["head_R"], head_T=t["head_T"], K=t["K"],
            landmarks=t["landmarks"], input_landmarks=t["input_landmarks"],
            carried=[bool(c) for c in t["carried"].tolist()],
            seconds=[float(s) for s in meta.get("seconds", [0.0] * n)],
            identity_frame=int(meta.get("identity_frame", 0)), info=meta.get("info", {}),
        )  # fmt: skip


def is_tracking_dir(path: str | Path) -> bool:
    return (Path(path) / TRACKING_JSON).is_file()


def landmark_jitter(landmarks: Tensor) -> float | None:  # [T, L, 2] -> px
    """Mean frame-to-frame landmark acceleration ``||p[t+1] - 2p[t] + p[t-1]||`` in px over
    frames and landmarks (finite entries); None for fewer than 3 frames."""
    if landmarks.shape[0] < 3:
        return None
    acc = (landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2]).norm(dim=-1)
    ok = torch.isfinite(acc)
    return float(acc[ok].mean()) if ok.any() else None


def _target(frame: TrackFrame) -> FitTarget:
    assert frame.landmarks is not None
    return FitTarget(image=frame.image, mask=frame.mask, K=frame.K, landmarks=frame.landmarks,
                     head_center=frame.head_center)  # fmt: skip


def track_frames(
    run: TrainedRun,
    frames: list[TrackFrame],
    config: TrackConfig | None = None,
    progress: bool = False,
    avatar: Avatar | None = None,
) -> Tracking:
    """Track ``frames`` (module docstring) with ``run``'s model (left unchanged).

    ``avatar``: the person's identity when already fitted (skips the identity fit; its
    ``z_exp`` and pose start the first face frame). Raises ``ValueError`` when no frame
    has a face or the frames' sizes differ from each other, and a ``UserError``
    (:class:`~gphm.inversion.engine.NonFiniteError`) when the tracking diverges.
    """
    cfg = config or TrackConfig()
    if not frames:
        raise ValueError("no frames to track")
    S = frames[0].image.shape[0]
    for t, f in enumerate(frames):
        if f.image.shape != (S, S, 3) or f.mask.shape != (S, S, 1):
            raise ValueError(
                f"frame {t}: image {list(f.image.shape)} / mask {list(f.mask.shape)}, expected "
                f"[{S}, {S}, 3] / [{S}, {S}, 1] like frame 0"
            )
    faces = [t for t, f in enumerate(frames) if f.landmarks is not None]
    if not faces:
        raise ValueError(f"no face found in any of the {len(frames)} frames; nothing to track")
    model = run.model
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        return _track(run, frames, faces, cfg, progress, avatar)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


_DEFAULTS = TrackConfig()
_WEIGHTS = ("rgb", "dssim", "mask", "landmark", "code", "smooth", "pose_smooth")


class _Tracker:
    """The per-frame state of tracking (module docstring): ``z_exp = mean + std·u`` and
    the pose increments, one Adam carried across frames, and its two phases per frame
    (landmark steps, then photometric steps) as :class:`~gphm.inversion.phases.Phase`."""

    def __init__(self, run: TrainedRun, avatar: Avatar, cfg: TrackConfig, S: int) -> None:
        model = self.model = run.model
        self.cfg, self.S = cfg, S
        self.device = device = next(model.parameters()).device
        self.net = net = avatar.personalised(model).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.factor = factor = net.upsampler.config.factor
        self.size = min(S, cfg.render_size or S) // factor * factor
        if self.size < factor:
            raise ValueError(f"track.render_size={cfg.render_size} is below the upsampling factor")
        self.offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
        self.z_id = avatar.z_id[None].to(device)
        rows = TrainedRows.of_run(run)
        self.exp_mean = model.expression_codes.mean(rows.expression).detach()
        self.exp_std = model.expression_codes.std(rows.expression).detach()
        self.R0, self.T0 = avatar.head_R.to(device)[None], avatar.head_T.to(device)[None]
        self.scale = torch.full((1,), float(avatar.head_scale), device=device)
        self.eye4 = torch.eye(4, device=device)[None]
        self.context = net.render_context()
        # z_exp = mean + std·u: learning rate, prior and smoothness in units of the codebook.
        z0 = avatar.z_exp[None].to(device)
        self.u = ((z0 - self.exp_mean) / self.exp_std).clone().requires_grad_(True)
        self.rot = torch.zeros(1, 3, device=device, requires_grad=cfg.fit_pose)
        self.trans = torch.zeros(1, 3, device=device, requires_grad=cfg.fit_pose)
        groups = [ParamGroup([self.u], cfg.lr, "track.lr", _DEFAULTS.lr)]
        if cfg.fit_pose:
            groups.append(ParamGroup([self.rot, self.trans], cfg.pose_lr, "track.pose_lr",
                                     _DEFAULTS.pose_lr))  # fmt: skip
        weights = {k: getattr(cfg, k) for k in _WEIGHTS if k != "dssim" or cfg.dssim}
        defaults = {k: getattr(_DEFAULTS, k) for k in _WEIGHTS}
        self.landmark_phase = Phase("track landmark steps", cfg.landmark_steps, groups,
                                    {k: weights[k] for k in ("landmark", "code", "smooth",
                                                             "pose_smooth")},
                                    prefix="track", defaults=defaults)  # fmt: skip
        self.photometric_phase = Phase("track photometric steps", cfg.steps, groups, weights,
                                       prefix="track", defaults=defaults)  # fmt: skip
        self.optimizer = make_optimizer(self.photometric_phase)

    def pose(self) -> tuple[Tensor, Tensor]:  # [1, 3, 3], [1, 3]: canonical -> frame camera
        return axis_angle_to_matrix(self.rot) @ self.R0, self.T0 + self.trans

    def code(self) -> Tensor:  # [1, Dexp]
        return self.exp_mean + self.exp_std * self.u

    def priors(self, prev: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        """Code prior and temporal terms against the previous frame's state."""
        return {"code": T.standard_prior(self.u),  # = code_prior(z_exp, mean, std)
                "smooth": T.code_change(self.u, prev[0]),
                "pose_smooth": T.pose_change(self.rot, self.trans, prev[1], prev[2])}  # fmt: skip

    def landmark_terms(self, b: TargetBatch, prev) -> dict[str, Tensor]:
        """Landmark reprojection (no rendering) and the priors."""
        R, Tr = self.pose()
        lmk = self.model.canonical_landmarks(self.z_id, self.code(), self.offsets)
        uv, _ = project_points(apply_head_pose(lmk, R, Tr, self.scale), self.eye4, b.K)
        lm = T.landmark_reprojection(uv, b.landmarks, b.valid, self.S)
        return {"landmark": lm} | self.priors(prev)

    def photometric_terms(self, b: TargetBatch, prev, seen: dict[str, Any]) -> dict[str, Tensor]:
        """Every term at the render size; ``seen["out"]``: the render (its coverage)."""
        R, Tr = self.pose()
        out = render_avatar(self.net, self.z_id, self.code(), R, Tr, self.scale, self.eye4,
                            b.K_render, self.size, self.offsets, self.context)  # fmt: skip
        seen["out"] = out
        uv, _ = project_points(out.landmarks, self.eye4, b.K)
        terms = {"rgb": T.photometric_l1(out.rgb, b.image)}
        if self.cfg.dssim:
            terms["dssim"] = T.dssim(out.rgb, b.image)
        terms["mask"] = T.silhouette(out.mask, b.mask_lr)
        terms["landmark"] = T.landmark_reprojection(uv, b.landmarks, b.valid, self.S)
        return terms | self.priors(prev)

    def step(self, frame: TrackFrame) -> float | None:
        """Track one face frame from the current state; returns the coverage of the
        frame's mask by the last photometric step's render (None: no such step)."""
        b = TargetBatch.of([frame], self.factor, self.device, render_size=self.size)
        prev = (self.u.detach().clone(), self.rot.detach().clone(), self.trans.detach().clone())
        seen: dict[str, Any] = {}
        with torch.enable_grad():
            run_phase(self.landmark_phase, lambda i: self.landmark_terms(b, prev),
                      optimizer=self.optimizer)  # fmt: skip
            run_phase(self.photometric_phase, lambda i: self.photometric_terms(b, prev, seen),
                      optimizer=self.optimizer)  # fmt: skip
        if "out" not in seen:
            return None
        return round(float(coverage(seen["out"].mask.detach(), b.mask_lr)[0]), 4)

    @torch.no_grad()
    def record(self, K: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The current z_exp [Dexp], head_R [3, 3], head_T [3] and landmarks [L, 2]."""
        R, Tr = self.pose()
        z_exp = self.code()
        lmk = self.model.canonical_landmarks(self.z_id, z_exp, self.offsets)
        uv, _ = project_points(apply_head_pose(lmk, R, Tr, self.scale), self.eye4, K[None])
        return z_exp[0].detach().clone(), R[0].clone(), Tr[0].clone(), uv[0].clone()


def _track(run, frames, faces, cfg: TrackConfig, progress: bool, avatar: Avatar | None):
    model = run.model
    first = faces[0]
    t0 = time.perf_counter()
    if avatar is None:
        fitted = fit_image(model, _target(frames[first]), cfg.fit, str(run.path),
                           rows=TrainedRows.of_run(run))  # fmt: skip
        avatar = fitted.avatar
    fit_seconds = time.perf_counter() - t0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tracker = _Tracker(run, avatar, cfg, frames[0].image.shape[0])
    n = len(frames)
    states: list[tuple[Tensor, Tensor, Tensor, Tensor] | None] = [None] * n
    seconds, covered = [0.0] * n, [None] * n
    for t in tqdm(range(first, n), desc="track", disable=not progress, leave=False):
        ts = time.perf_counter()
        frame = frames[t]
        K = frame.K.to(tracker.device).float()
        if t != first and frame.landmarks is not None:
            covered[t] = tracker.step(frame)
        # else: the identity fit's codes, or the previous frame's (carried)
        states[t] = tracker.record(K)
        seconds[t] = time.perf_counter() - ts + (fit_seconds if t == first else 0.0)
    for t in range(first):  # before the first face: the first tracked frame's state
        states[t] = states[first]
    info = {"identity_fit_seconds": round(fit_seconds, 3), "steps_per_frame": cfg.steps,
            "landmark_steps_per_frame": cfg.landmark_steps, "render_size": tracker.size,
            "coverage": covered}  # fmt: skip
    low = [t for t, c in enumerate(covered) if c is not None and c < cfg.fit.min_coverage]
    if low:  # reported, not hidden: the render lost the head on these frames
        info["low_coverage_frames"] = low
    return _tracking(avatar, frames, states, seconds, first, info)  # type: ignore[arg-type]


def _tracking(avatar, frames, states, seconds, first, info) -> Tracking:
    L = states[first][3].shape[0]
    nan = torch.full((L, 2), math.nan)
    inputs = torch.stack(
        [nan if f.landmarks is None else f.landmarks.float().cpu() for f in frames]
    )
    z, R, T_, uv = (torch.stack([s[i] for s in states]).cpu() for i in range(4))
    return Tracking(
        avatar=avatar, z_exp=z, head_R=R, head_T=T_,
        K=torch.stack([f.K.float().cpu() for f in frames]), landmarks=uv,
        input_landmarks=inputs, carried=[f.landmarks is None for f in frames],
        seconds=seconds, identity_frame=first, info=info,
    )  # fmt: skip


@torch.no_grad()
def render_tracking(
    net: Model,  # the avatar's personalised model (Avatar.personalised)
    avatar: Avatar,
    z_exp: Tensor,  # [B, Dexp]
    head_R: Tensor,  # [B, 3, 3] canonical -> camera c
    head_T: Tensor,  # [B, 3]
    head_scale: Tensor | float,  # [B] or a scalar
    viewmats: Tensor,  # [B, 4, 4] head-pose frame -> camera
    K: Tensor,  # [B, 3, 3] at `size`
    size: int,
    chunk: int = 4,
) -> Tensor:  # [B, size, size, 3] in [0, 1], CPU
    """Render ``avatar``'s identity with per-row expression codes, poses and cameras."""
    device = next(net.parameters()).device
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    B = z_exp.shape[0]
    scale = torch.as_tensor(head_scale, dtype=torch.float32)
    if scale.dim() == 0:
        scale = scale.expand(B)
    z_id = avatar.z_id[None].to(device)
    context = net.render_context()
    out = []
    for s in range(0, B, chunk):
        sl = slice(s, min(B, s + chunk))
        n = sl.stop - sl.start
        r = render_avatar(
            net, z_id.expand(n, -1), z_exp[sl].to(device), head_R[sl].to(device),
            head_T[sl].to(device), scale[sl].to(device), viewmats[sl].to(device),
            K[sl].to(device), size, offsets, context,
        )  # fmt: skip
        out.append(r.rgb.clamp(0, 1).cpu())
    return torch.cat(out)
