"""What the viewer shows: a trained model, the names it can be asked for, and a renderer
that keeps the conditioned Gaussians of recent (identity, expression) pairs.

A view is a :class:`ViewRequest`: an identity (a training subject or a fitted avatar),
optionally blended towards a second one, an expression (a trained label or an avatar's
fitted expression), optionally blended towards a second one, and a camera on an orbit
around the canonical head (``yaw``/``pitch`` in degrees, ``zoom`` a focal-length
factor). Camera convention (``gphm.geometry.orbit_cameras``): distance 3 from the
origin, yaw 0 in front of the face (+z), positive yaw towards +x (the head's left),
positive pitch from above; at zoom 1 the ±1 canonical cube fills ~70 % of the image:
``gphm.rendering.orbit_view``, so a view at zoom 1 is exactly ``head.render(identity,
expression, yaw, pitch, size)`` of the Python API (``gphm.load``).

The networks depend only on the codes, so orbiting and zooming reuse the cached
canonical Gaussians and only re-splat and run the upsampler Ψ (the full model output).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gphm.fitting.avatar import Avatar, is_avatar_dir
from gphm.models.gaussian_head import GaussianAttributes, GaussianHead
from gphm.models.runs import TrainedRun, load_run
from gphm.rendering import DEFAULT_DISTANCE, lr_intrinsics, orbit_view

__all__ = ["BadRequest", "Scene", "ViewRequest", "find_avatars"]

MAX_SIZE = 2048
ZOOM_RANGE = (0.25, 8.0)
PITCH_LIMIT = 89.0
"""|pitch| < 90: the orbit camera's up vector stays defined."""
CACHE_SIZE = 16
"""Conditioned Gaussians kept: enough for dragging a blend slider back and forth."""
MAX_AVATAR_SEARCH = 10_000
"""Directories visited per avatar root before giving up (a typo like ``avatars=[/]``)."""


class BadRequest(ValueError):
    """A view request the scene cannot serve: the message says what was expected."""


@dataclass(frozen=True)
class ViewRequest:
    """One picture. Names are those of :attr:`Scene.identities` / :attr:`Scene.expressions`;
    ``identity_mix`` in [0, 1] moves from ``identity`` (0) to ``identity_b`` (1)."""

    identity: str
    expression: str
    identity_b: str | None = None
    identity_mix: float = 0.0
    expression_b: str | None = None
    expression_mix: float = 0.0
    yaw: float = 0.0
    """Degrees around the vertical axis; 0 = frontal."""
    pitch: float = 0.0
    """Degrees of elevation, |pitch| <= 89."""
    zoom: float = 1.0
    """Focal-length factor (> 1 magnifies), in [0.25, 8]."""
    size: int = 0
    """Output height = width in pixels; 0 = the model's training (hr) size."""

    @property
    def codes_key(self) -> tuple:
        """What the networks depend on (the cache key): everything but the camera."""
        id_b = self.identity_b if self.identity_mix else None
        exp_b = self.expression_b if self.expression_mix else None
        return (self.identity, id_b, self.identity_mix, self.expression, exp_b,
                self.expression_mix)  # fmt: skip

    def query(self) -> dict[str, str]:
        """The URL query that reproduces this view (defaults left out)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v != f.default:
                out[f.name] = f"{v:g}" if isinstance(v, float) else str(v)
        return out


QUERY_KEYS = tuple(f.name for f in fields(ViewRequest))


def find_avatars(roots: Iterable[str | Path]) -> dict[str, Path]:
    """Fitted avatar directories (holding ``avatar.json``) under ``roots`` (a root may be an
    avatar itself), named by their folder, or by the folder above for the ``OUT/avatar``
    that ``gphm-fit`` writes; a clash gets the folder above in front (``photos/me``).
    ``FileNotFoundError`` for a missing root."""
    found: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"avatars: {root} is not a directory")
        stack, seen = [root], 0
        while stack and seen < MAX_AVATAR_SEARCH:
            d = stack.pop()
            seen += 1
            if is_avatar_dir(d):
                found.append(d)
                continue
            try:
                stack += sorted((p for p in d.iterdir() if p.is_dir() and not p.is_symlink()),
                                reverse=True)  # fmt: skip
            except OSError:  # unreadable folder: skip it, the others still count
                continue
    names: dict[str, Path] = {}
    for d in dict.fromkeys(p.resolve() for p in found):
        own = d.parent if d.name == "avatar" else d
        name = own.name if own.name not in names else f"{own.parent.name}/{own.name}"
        if name in names:
            raise ValueError(f"avatars: two avatars are both named {name!r} ({names[name]}, {d})")
        names[name] = d
    return names


def _finite(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{name}: expected a number in [{lo:g}, {hi:g}], got {raw!r}")
    return v


class Scene:
    """A trained run plus fitted avatars, rendering :class:`ViewRequest` s.

    Thread safety: :meth:`render` may be called from several threads; the server
    serialises renders anyway (one at a time), the cache has its own lock.
    """

    def __init__(self, run: TrainedRun, avatars: Mapping[str, Path] | None = None):
        self.run = run
        self.model = run.model
        self.factor = int(self.model.upsampler.config.factor)
        # the training (hr) resolution, as gphm.load's Head.size
        self.size = int(run.extra.get("hr_size") or int(run.extra.get("lr_size") or 64)
                        * self.factor)  # fmt: skip
        # only trained subjects and labels: other codes were never optimised
        self.subjects = [run.subjects[s] for s in run.trained_subjects]
        self.labels = run.trained_labels()
        if not self.subjects or not self.labels:
            raise ValueError(f"{run.path}: the run records no trained frames; nothing to view")
        self.avatars: dict[str, Avatar] = {}
        for name, path in (avatars or {}).items():
            if name in run.subjects or name in self.labels:
                what = "training subject" if name in run.subjects else "trained expression"
                raise ValueError(f"avatars: {path} is named {name!r} like a {what}; rename "
                                 "its folder")  # fmt: skip
            self.avatars[name] = Avatar.load(path, self.model)
        self._personalised: dict[str, Any] = {}
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.device = next(self.model.parameters()).device

    @classmethod
    def open(
        cls, checkpoint: str | Path, avatar_dirs: Iterable[str | Path] = (),
        device: str | torch.device = "cpu",
    ) -> Scene:  # fmt: skip
        return cls(load_run(checkpoint, device=device), find_avatars(avatar_dirs))

    # ------------------------------------------------------------------ names
    @property
    def identities(self) -> list[str]:
        return [*self.subjects, *self.avatars]

    @property
    def expressions(self) -> list[str]:
        """Trained labels, then the fitted expression of each avatar (by its name)."""
        return [*self.labels, *self.avatars]

    def options(self) -> dict[str, Any]:
        """What the page offers (``GET /api/options``)."""
        default = self.default_request()
        return {
            "subjects": self.subjects,
            "avatars": list(self.avatars),
            "labels": self.labels,
            "size": self.size,
            "factor": self.factor,
            "max_size": MAX_SIZE,
            "zoom_range": list(ZOOM_RANGE),
            "pitch_limit": PITCH_LIMIT,
            "model": type(self.model).__name__,
            "gaussians": isinstance(self.model, GaussianHead),
            "distance": DEFAULT_DISTANCE,
            "default": {"identity": default.identity, "expression": default.expression},
        }

    def default_request(self) -> ViewRequest:
        """The first identity with ``neutral`` when trained (as ``gphm.load``'s heads)."""
        expression = "neutral" if "neutral" in self.labels else self.expressions[0]
        return ViewRequest(identity=self.identities[0], expression=expression)

    def parse(self, query: Mapping[str, str]) -> ViewRequest:
        """A checked :class:`ViewRequest` from URL query values; :class:`BadRequest` names
        the field and what was expected (unknown names list the valid ones)."""
        unknown = sorted(set(query) - set(QUERY_KEYS))
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; expected {list(QUERY_KEYS)}")
        req = self.default_request()
        values: dict[str, Any] = {}
        for key, choices in (("identity", self.identities), ("identity_b", self.identities),
                             ("expression", self.expressions),
                             ("expression_b", self.expressions)):  # fmt: skip
            if key in query and query[key] != "":
                if query[key] not in choices:
                    raise BadRequest(f"{key}: unknown name {query[key]!r}; valid: {choices}")
                values[key] = query[key]
        for key, lo, hi in (("identity_mix", 0.0, 1.0), ("expression_mix", 0.0, 1.0),
                            ("yaw", -360.0, 360.0), ("pitch", -PITCH_LIMIT, PITCH_LIMIT),
                            ("zoom", *ZOOM_RANGE)):  # fmt: skip
            if key in query:
                values[key] = _finite(key, query[key], lo, hi)
        if "size" in query:
            raw = query["size"]
            try:
                size = int(raw)
            except ValueError:
                raise BadRequest(f"size: expected an integer, got {raw!r}") from None
            if not 8 * self.factor <= size <= MAX_SIZE or size % self.factor:
                raise BadRequest(
                    f"size: expected a multiple of {self.factor} (the upsampling factor) in "
                    f"[{8 * self.factor}, {MAX_SIZE}], got {raw!r}"
                )
            values["size"] = size
        req = replace(req, **values)
        for key in ("identity", "expression"):
            if getattr(req, f"{key}_mix") and getattr(req, f"{key}_b") is None:
                raise BadRequest(f"{key}_mix needs {key}_b (the {key} to blend towards)")
        return req

    # ------------------------------------------------------------------ codes
    def _identity(self, name: str) -> tuple[Tensor, Tensor | None]:
        """``z_id`` [Did] and per-Gaussian offsets [N, 3] (a fitted avatar's) or None."""
        if name in self.avatars:
            a = self.avatars[name]
            return a.z_id.to(self.device), _to(a.point_offsets, self.device)
        index = torch.tensor([self.run.subject_index(name)], device=self.device)
        return self.model.identity_codes(index)[0], None

    def _expression(self, name: str, identity: str) -> Tensor:  # [Dexp]
        """A trained label: the identity's own trained frame with it, else another
        subject's (``TrainedRun.trained_frame``); an avatar name: its fitted code."""
        if name in self.avatars:
            return self.avatars[name].z_exp.to(self.device)
        subject = None if identity in self.avatars else self.run.subject_index(identity)
        frame = self.run.trained_frame(subject, name).frame
        return self.model.expression_codes(torch.tensor([frame], device=self.device))[0]

    def _model_for(self, identity: str):
        """The model with ``identity``'s fine-tuned colour MLP (fitted avatars)."""
        if identity not in self.avatars:
            return self.model
        if identity not in self._personalised:
            model = self.avatars[identity].personalised(self.model)
            self._personalised[identity] = model.to(self.device).eval()
        return self._personalised[identity]

    def codes(self, req: ViewRequest) -> tuple[Tensor, Tensor, Tensor | None]:
        """``z_id`` [1, Did], ``z_exp`` [1, Dexp], offsets [N, 3] | None of a request.
        Blends are linear in code space (and in an avatar's per-Gaussian offsets); a
        trained label's code is that of the identity's own frame with it (another
        subject's when it has none, see :meth:`_expression`)."""
        z_id, off = self._identity(req.identity)
        z_exp = self._label_code(req, req.expression)
        if req.identity_mix and req.identity_b is not None:
            t = req.identity_mix
            z_b, off_b = self._identity(req.identity_b)
            z_id = (1 - t) * z_id + t * z_b
            if off is not None or off_b is not None:
                off = (1 - t) * _or_zero(off, off_b) + t * _or_zero(off_b, off)
        if req.expression_mix and req.expression_b is not None:
            t = req.expression_mix
            z_exp = (1 - t) * z_exp + t * self._label_code(req, req.expression_b)
        return z_id[None], z_exp[None], off

    def _label_code(self, req: ViewRequest, expression: str) -> Tensor:  # [Dexp]
        """An expression's code for the request's identity; while blending identities, the
        blend of each identity's own code for it (so mix 1 is identity B exactly)."""
        z = self._expression(expression, req.identity)
        if req.identity_mix and req.identity_b is not None:
            t = req.identity_mix
            z = (1 - t) * z + t * self._expression(expression, req.identity_b)
        return z

    def colour_identity(self, req: ViewRequest) -> str:
        """Whose fine-tuned networks and per-Gaussian colour/opacity offsets (a fitted
        avatar's) a blend uses: the nearer identity's (networks do not blend linearly; a
        training subject has none)."""
        if req.identity_b is not None and req.identity_mix > 0.5:
            return req.identity_b
        return req.identity

    @torch.inference_mode()
    def conditioned(self, req: ViewRequest) -> GaussianAttributes:
        """The canonical Gaussians of the request's codes (B = 1), cached by codes."""
        key = req.codes_key
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        z_id, z_exp, off = self.codes(req)
        att = self._model_for(self.colour_identity(req)).attributes(z_id, z_exp, off)
        with self._lock:
            self._cache[key] = att
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return att

    @torch.inference_mode()
    def preview_gaussians(self, req: ViewRequest) -> Tensor:  # [N, 14] float32, CPU
        """The request's Gaussians for the page's client-side splat preview, one row each:
        canonical = world mean (3), unit quaternion wxyz (4), linear scales (3), opacity
        in [0, 1] (1) and RGB (3): the first three of the splatted feature channels, which
        Ψ turns into the final image (so the preview's colours are approximate).
        ``BadRequest`` for a stage-1 (mesh) run."""
        if not isinstance(self.model, GaussianHead):
            raise BadRequest(f"a {type(self.model).__name__} (stage 1) has no Gaussians")
        att = self.conditioned(req)
        quats = att.quats[0] / att.quats[0].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rows = [
            att.means[0],
            quats,
            att.log_scales[0].exp(),
            torch.sigmoid(att.opacity_logits[0])[:, None],
            att.colors[0, :, :3].clamp(0, 1),
        ]
        return torch.cat(rows, dim=-1).float().cpu().contiguous()  # fmt: skip

    # ------------------------------------------------------------------ rendering
    def camera(self, req: ViewRequest) -> tuple[Tensor, Tensor, int]:
        """``viewmat`` [1, 4, 4], ``K`` [1, 3, 3] of the low-resolution render, lr size:
        ``gphm.rendering.orbit_view`` (what ``head.render(yaw=, pitch=)`` uses) with its
        focal length times ``zoom``."""
        size = req.size or self.size
        viewmat, K = orbit_view(req.yaw, req.pitch, size, self.factor, DEFAULT_DISTANCE)
        K_lr = lr_intrinsics(K, self.factor)
        K_lr[:2, :2] *= req.zoom  # the principal point stays at the centre
        return viewmat[None].to(self.device), K_lr[None].to(self.device), size // self.factor

    @torch.inference_mode()
    def render(self, req: ViewRequest) -> Tensor:  # [S, S, 3] float in [0, 1], CPU
        """The full model output (splat + Ψ; mesh + Ψ for a stage-1 model) of a view."""
        viewmat, K, lr = self.camera(req)
        eye = torch.eye(3, device=self.device)[None]
        zero, one = torch.zeros(1, 3, device=self.device), torch.ones(1, device=self.device)
        # an avatar's personalised copy: it may carry fine-tuned Ψ entries too
        model = self._model_for(self.colour_identity(req))
        if isinstance(self.model, GaussianHead):
            att = self.conditioned(req)
            features, _ = model.splat(att, eye, zero, one, viewmat, K, lr, lr)
            rgb = model.upsampler(features)
        else:  # stage-1 run: the mesh path has no per-code state worth caching
            z_id, z_exp, _ = self.codes(req)
            rgb = model.render(z_id, z_exp, eye, zero, one, viewmat, K, lr, lr,
                               **model.render_context()).rgb  # fmt: skip
        return rgb[0].clamp(0, 1).float().cpu()


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _or_zero(t: Tensor | None, like: Tensor | None) -> Tensor:
    return t if t is not None else torch.zeros_like(like)
