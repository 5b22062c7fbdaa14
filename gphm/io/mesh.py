"""Triangle mesh files (.ply, .obj) through trimesh.

Meshes are written as given (no merging, no reordering, no normal fixing) and
atomically (:func:`gphm.io.atomic.atomic_write_bytes`: a temporary sibling file then
``os.replace``), so a crash never leaves a half-written mesh behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from gphm.io.atomic import atomic_write_bytes

__all__ = ["save_mesh", "load_mesh", "MESH_EXTENSIONS"]

MESH_EXTENSIONS = (".ply", ".obj")


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported mesh extension {ext!r}; use one of {', '.join(MESH_EXTENSIONS)}"
        )
    return ext


def _colors_u8(colors: Tensor | np.ndarray, V: int) -> np.ndarray:
    """RGB(A) uint8 [V, 3|4] from floats in [0, 1] or uint8."""
    c = colors.detach().cpu().numpy() if isinstance(colors, Tensor) else np.asarray(colors)
    if c.ndim != 2 or c.shape[0] != V or c.shape[1] not in (3, 4):
        raise ValueError(
            f"vertex_colors must have shape [V, 3] or [V, 4] with V={V}, got {c.shape}"
        )
    if c.dtype == np.uint8:
        return c
    if not np.issubdtype(c.dtype, np.floating):
        raise TypeError(f"vertex_colors must be float in [0, 1] or uint8, got dtype {c.dtype}")
    return np.round(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_mesh(
    path: str | os.PathLike,
    verts: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3] int, counter-clockwise seen from outside
    vertex_colors: Tensor | None = None,  # [V, 3|4] float in [0, 1] or uint8
) -> Path:
    """Write a triangle mesh to ``path`` (.ply binary or .obj), atomically.

    Parent directories are created. Returns the path written.
    """
    path = Path(path)
    ext = _extension(path)
    if verts.dim() != 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape [V, 3], got {list(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {list(faces.shape)}")
    V = verts.shape[0]
    mesh = trimesh.Trimesh(
        vertices=verts.detach().cpu().double().numpy(),
        faces=faces.detach().cpu().long().numpy(),
        vertex_colors=None if vertex_colors is None else _colors_u8(vertex_colors, V),
        process=False,
        validate=False,
    )
    data = mesh.export(file_type=ext[1:])
    if isinstance(data, str):
        data = data.encode("utf-8")
    return atomic_write_bytes(path, data)


def load_mesh(path: str | os.PathLike) -> tuple[Tensor, Tensor]:  # verts [V, 3], faces [F, 3]
    """Read a triangle mesh: ``verts`` [V, 3] float32 and ``faces`` [F, 3] int64.

    Vertices are kept in file order (no merging).
    """
    path = Path(path)
    _extension(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    mesh = trimesh.load(path, force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"{path}: no triangle mesh found in the file")
    verts = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64).reshape(-1, 3)
    return verts, faces
