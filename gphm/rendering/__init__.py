"""Rendering a trained model at cameras: the one home for the API, the commands, fitting,
tracking, export and the viewer.

* :mod:`~gphm.rendering.protocols` — :class:`HeadModel`, what both stages
  (``GuidanceModel``, ``GaussianHead``) provide to renderers and fitting;
* :mod:`~gphm.rendering.rigs` — orbit cameras: :func:`orbit_rig` (many cameras, one
  intrinsics), :func:`orbit_view` (one camera at a yaw/pitch), yaws of videos, sizes;
* :mod:`~gphm.rendering.views` — :func:`render_views` (a camera per row) and
  :func:`render_codes` (every code pair from every camera of a rig);
* :mod:`~gphm.rendering.compose` — turntables, identity × expression grids and identity
  morphs of a trained run.

The rasterizers themselves (Gaussian splatting, meshes) are :mod:`gphm.render`.
"""

from gphm.rendering.compose import Orbit, grid, lerp_codes, morph, render_orbit, turntable
from gphm.rendering.protocols import HeadModel, HeadRender
from gphm.rendering.rigs import (
    DEFAULT_DISTANCE,
    ViewRig,
    check_size,
    lr_intrinsics,
    orbit_rig,
    orbit_view,
    orbit_views,
    orbit_yaws,
)
from gphm.rendering.views import ViewBatch, render_codes, render_views

__all__ = ["DEFAULT_DISTANCE", "HeadModel", "HeadRender", "Orbit", "ViewBatch", "ViewRig",
           "check_size", "grid", "lerp_codes", "lr_intrinsics", "morph", "orbit_rig",
           "orbit_view", "orbit_views", "orbit_yaws", "render_codes", "render_orbit",
           "render_views", "turntable"]  # fmt: skip
