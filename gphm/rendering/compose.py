"""Compositions of many views of a trained run: turntables, identity × expression grids
and identity morphs (what ``gphm-render mode=turntable|grid|interpolate`` writes).

Each function resolves its subjects and trained frames first (:class:`TrainedRun`), then
renders; nothing here writes files, so a bad name or option fails before any output
exists. Frames are float ``[S, S, 3]`` in [0, 1] on the CPU, composited on white; the
cameras are :func:`gphm.rendering.rigs.orbit_views` at ``Orbit.elevation`` and
``Orbit.distance`` (``Head.render`` with the same yaw and pitch gives the same pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gphm.io.images import image_grid
from gphm.models.runs import ResolvedFrame, TrainedRun
from gphm.rendering.rigs import (
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    check_size,
    orbit_views,
    orbit_yaws,
)
from gphm.rendering.views import render_views

__all__ = ["Grid", "Morph", "Orbit", "Turntable", "grid", "lerp_codes", "morph",
           "render_orbit", "turntable"]  # fmt: skip

MAX_DISTANCE = 1000.0
"""Orbit radii beyond this are refused (the focal length grows with it)."""


@dataclass(frozen=True)
class Orbit:
    """The camera path of a composition (angles in degrees, :mod:`gphm.rendering.rigs`)."""

    size: int
    """Output height/width in pixels (a multiple of the model's upsampling factor)."""
    frames: int = 48
    """Video length: yaws of the turntable / the sway."""
    elevation: float = DEFAULT_ELEVATION
    """Camera pitch; ``|elevation| < 90``."""
    distance: float = DEFAULT_DISTANCE
    """Orbit radius in canonical units, ``0 < distance <= MAX_DISTANCE``."""
    sway: float = 30.0
    """grid / morph: the camera yaws over ``-sway..+sway``; ``0 <= sway <= 180``."""

    def check(self) -> None:
        """``ValueError`` naming the first bad option (the factor is checked at render)."""
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ValueError(f"size must be an integer >= 2, got {self.size!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 2:
            raise ValueError(f"frames must be an integer >= 2, got {self.frames!r}")
        checks = (
            ("elevation", self.elevation, lambda v: abs(v) < 90,
             "strictly between -90 and 90 degrees"),
            ("distance", self.distance, lambda v: 0 < v <= MAX_DISTANCE,
             f"> 0 and <= {MAX_DISTANCE:g} (canonical units)"),
            ("sway", self.sway, lambda v: 0 <= v <= 180, "between 0 and 180 degrees"),
        )  # fmt: skip
        for name, value, ok, expected in checks:
            v = float(value)
            if not math.isfinite(v) or not ok(v):
                raise ValueError(f"{name} must be finite and {expected}, got {value!r}")


def lerp_codes(a: Tensor, b: Tensor, steps: int) -> Tensor:  # [D], [D] -> [steps, D]
    """Linear interpolation from ``a`` to ``b`` inclusive (codes live in a Gaussian-
    regularised latent space, where straight lines stay in-distribution)."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    return (1 - t) * a + t * b


def render_orbit(
    run: TrainedRun,
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    yaws: list[float],  # B (one per row) or Y (every row from every yaw)
    orbit: Orbit,
    per_row: bool = False,
) -> Tensor:  # [B·Y, S, S, 3] code-pair-major, or [B, S, S, 3] when per_row
    """Render ``run.model`` at the canonical pose from orbit cameras at ``orbit``'s
    elevation and distance: every code pair from every yaw, or (``per_row``) row ``b``
    from ``yaws[b]``."""
    model = run.model
    factor = int(model.upsampler.config.factor)
    lr = check_size(orbit.size, factor)
    yaws = [float(y) for y in yaws]
    if not per_row:
        B, Y = len(z_id), len(yaws)
        z_id, z_exp = z_id.repeat_interleave(Y, 0), z_exp.repeat_interleave(Y, 0)
        yaws = yaws * B
    elif len(yaws) != len(z_id):
        raise ValueError(f"per_row: expected {len(z_id)} yaws, got {len(yaws)}")
    viewmats, Ks_lr = orbit_views(yaws, orbit.elevation, orbit.size, factor, orbit.distance)
    z_id = z_id.to(torch.float32)
    z_exp = z_exp.to(torch.float32)
    return render_views(model, z_id, z_exp, viewmats, Ks_lr, lr).rgb


def _codes(run: TrainedRun, subjects: list[int], frames: list[int]) -> tuple[Tensor, Tensor]:
    """Identity and expression codes [B, D] of (subject, frame) rows."""
    model = run.model
    return (model.identity_codes.codes.weight[subjects].detach(),
            model.expression_codes.codes.weight[frames].detach())  # fmt: skip


def _strip(images: Tensor, num: int = 8) -> Tensor:
    """Up to ``num`` evenly spaced images of ``images`` [F, S, S, 3] in one row."""
    return image_grid(list(images[:: max(1, len(images) // num)][:num]), num)


@dataclass
class Turntable:
    subject: int
    frame: ResolvedFrame
    z_id: Tensor  # [Did]
    z_exp: Tensor  # [Dexp]
    frames: Tensor  # [F, S, S, 3] a full turn from the front, looping
    strip: Tensor  # one row of 8 of the frames


def turntable(
    run: TrainedRun, subject: str | int, orbit: Orbit, frame: int | None = None,
    expression: str | None = None,
) -> Turntable:  # fmt: skip
    """One (subject, trained frame) orbiting 360° (``frame``/``expression`` resolved by
    :meth:`TrainedRun.resolve_frame`)."""
    orbit.check()
    s = run.subject_index(subject)
    r = run.resolve_frame(s, frame, expression)
    z_id, z_exp = _codes(run, [s], [r.frame])
    frames = render_orbit(run, z_id, z_exp, orbit_yaws(orbit.frames), orbit)
    return Turntable(s, r, z_id[0], z_exp[0], frames, _strip(frames))


@dataclass
class Grid:
    subjects: list[int]  # rows
    labels: list[str]  # columns
    cells: list[tuple[int, ResolvedFrame]]  # row-major (subject, trained frame)
    image: Tensor  # the grid from the front
    video: list[Tensor]  # the grid swaying forth and back (loops)


def grid(
    run: TrainedRun, orbit: Orbit, subjects: list[str] | None = None,
    labels: list[str] | None = None,
) -> Grid:  # fmt: skip
    """Rows = ``subjects`` (default all, up to 8), columns = expression ``labels``
    (default all trained, up to 8); each cell the subject's identity with the expression
    code of a trained frame with that label (:meth:`TrainedRun.trained_frame`)."""
    orbit.check()
    rows = [run.subject_index(s) for s in subjects or []] or list(range(len(run.subjects)))[:8]
    labels = list(labels or []) or run.trained_labels()[:8]
    cells = [(s, run.trained_frame(s, e)) for s in rows for e in labels]
    z_id, z_exp = _codes(run, [s for s, _ in cells], [r.frame for _, r in cells])
    front = render_orbit(run, z_id, z_exp, [0.0], orbit)
    views = render_orbit(run, z_id, z_exp, orbit_yaws(orbit.frames, orbit.sway), orbit)
    views = views.reshape(len(cells), orbit.frames, *views.shape[1:])
    # Sway forth and back so the video loops.
    order = list(range(orbit.frames)) + list(range(orbit.frames - 2, 0, -1))
    video = [image_grid(list(views[:, t]), ncols=len(labels)) for t in order]
    return Grid(rows, labels, cells, image_grid(list(front), ncols=len(labels)), video)


@dataclass
class Morph:
    start: int  # subject
    end: int  # subject
    frame: ResolvedFrame  # the expression (start subject's)
    frames: Tensor  # [F, S, S, 3] frame t: the t-th identity code from the t-th yaw
    strip: Tensor  # 8 steps of the morph from the front, one row


def morph(
    run: TrainedRun, start: str | int, end: str | int, orbit: Orbit, frame: int | None = None,
    expression: str | None = None,
) -> Morph:  # fmt: skip
    """Identity codes morphed linearly from ``start`` to ``end`` with the start subject's
    expression (``frame``/``expression``) while the camera sweeps once over the sway."""
    orbit.check()
    a, b = run.subject_index(start), run.subject_index(end)
    r = run.resolve_frame(a, frame, expression)
    codes, z_exp = _codes(run, [a, b], [r.frame])
    z_id = lerp_codes(codes[0], codes[1], orbit.frames)
    yaws = orbit_yaws(orbit.frames, orbit.sway)
    frames = render_orbit(run, z_id, z_exp.expand(len(z_id), -1), yaws, orbit, per_row=True)
    steps = lerp_codes(codes[0], codes[1], 8)
    strip = render_orbit(run, steps, z_exp.expand(8, -1), [0.0] * 8, orbit, per_row=True)
    return Morph(a, b, r, frames, image_grid(list(strip), ncols=8))
