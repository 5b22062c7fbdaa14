"""The procedural morphable head: template, and one head per (identity, expression).

    template = build_template()                       # once
    head = make_head(template, identity, EXPRESSIONS["jaw_open"])
    head.verts      # [V, 3] canonical space (+y up, +z out of the face, +x head's left)
    head.albedo     # [V, 3] RGB in [0, 1]
    head.landmarks  # [68, 3] iBUG landmarks (= head.verts[template.landmark_indices])

The template is one geodesic sphere (closed, genus 0) pushed out along its directions
onto a smooth head blob, with local features added as displacement fields; vertices
are concentrated on the face (``focus``). Every head shares the template's faces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from gphm.data.synthetic.anatomy import base_surface, feature_displacements
from gphm.data.synthetic.colors import vertex_albedo
from gphm.data.synthetic.deform import expression_vertices, identity_vertices
from gphm.data.synthetic.landmarks import select_landmark_vertices
from gphm.data.synthetic.params import ExpressionParams, IdentityParams
from gphm.data.synthetic.sphere import focus_warp, geodesic_sphere
from gphm.geometry.mesh import vertex_normals as _vertex_normals_torch

__all__ = [
    "DEFAULT_FREQUENCY",
    "HeadTemplate",
    "HeadMesh",
    "build_template",
    "make_head",
    "vertex_normals",
]

#: Geodesic frequency of the default template: 10·40² + 2 = 16002 vertices.
DEFAULT_FREQUENCY = 40
#: Default vertex concentration towards the face (see ``sphere.focus_warp``): about
#: 3× the vertex density of the back of the head on the mouth and eyes.
DEFAULT_FOCUS = 0.6
#: Direction the vertices are concentrated around: the face, between eyes and mouth.
FOCUS_AXIS = (0.0, -0.15, 1.0)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:  # [V, 3]
    """Area-weighted unit vertex normals (numpy wrapper of ``gphm.geometry.mesh``)."""
    v = torch.from_numpy(np.array(verts, dtype=np.float64))
    return _vertex_normals_torch(v, torch.from_numpy(np.array(faces, dtype=np.int64))).numpy()


@dataclass(frozen=True)
class HeadTemplate:
    """Topology and mean shape shared by all synthetic heads (arrays are read-only)."""

    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    base: np.ndarray  # [V, 3] smooth head blob (no features)
    base_normals: np.ndarray  # [V, 3]
    features: dict[str, np.ndarray]  # name -> [V, 3] displacement at gain 1
    rest: np.ndarray  # [V, 3] mean neutral head = base + Σ features
    rest_normals: np.ndarray  # [V, 3]
    landmark_indices: np.ndarray  # [68] int64 vertex indices, iBUG order
    frequency: int
    focus: float

    @property
    def num_vertices(self) -> int:
        return int(self.rest.shape[0])

    def describe(self) -> dict:
        """The template's record in a dataset's ``meta.json`` (``generator.mesh``)."""
        return {
            "frequency": self.frequency,
            "focus": self.focus,
            "num_vertices": self.num_vertices,
            "num_faces": int(self.faces.shape[0]),
            "landmark_vertices": self.landmark_indices.tolist(),
        }


@dataclass(frozen=True)
class HeadMesh:
    """One synthetic head in canonical space (shares ``template.faces``)."""

    verts: np.ndarray  # [V, 3]
    albedo: np.ndarray  # [V, 3] RGB in [0, 1]
    landmarks: np.ndarray  # [68, 3]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=4)
def build_template(
    frequency: int = DEFAULT_FREQUENCY, focus: float = DEFAULT_FOCUS
) -> HeadTemplate:
    """Build (and cache) the head template for a geodesic ``frequency``."""
    dirs, faces = geodesic_sphere(frequency)
    axis = np.asarray(FOCUS_AXIS) / np.linalg.norm(FOCUS_AXIS)
    dirs = focus_warp(dirs, axis, focus)
    base = base_surface(dirs)
    base_normals = vertex_normals(base, faces)
    features = feature_displacements(base, base_normals)
    rest = base + sum(features.values())
    rest_normals = vertex_normals(rest, faces)
    return HeadTemplate(
        faces=_readonly(faces),
        base=_readonly(base),
        base_normals=_readonly(base_normals),
        features={k: _readonly(v) for k, v in features.items()},
        rest=_readonly(rest),
        rest_normals=_readonly(rest_normals),
        landmark_indices=_readonly(select_landmark_vertices(rest, rest_normals)),
        frequency=frequency,
        focus=focus,
    )


def make_head(
    template: HeadTemplate,
    identity: IdentityParams,
    expression: ExpressionParams,
    neutral: np.ndarray | None = None,  # [V, 3] identity_vertices(template, identity), reused
) -> HeadMesh:
    """The head of ``identity`` showing ``expression``, in canonical space."""
    if neutral is None:
        neutral = identity_vertices(template, identity)
    verts = expression_vertices(template, neutral, expression)
    albedo = vertex_albedo(template, identity, expression)
    return HeadMesh(verts=verts, albedo=albedo, landmarks=verts[template.landmark_indices].copy())
