"""A tiny multi-view head dataset for training tests: per subject an ellipsoid of its
own proportions, coloured by position, rendered with render_mesh from 3 cameras."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gphm.data.format import write_dataset
from gphm.geometry import intrinsics, look_at
from gphm.geometry.marching_tets import marching_tets
from gphm.geometry.tets import tet_grid
from gphm.render import render_mesh

HR = 32
SUBJECTS = ["a", "b"]
EXPRESSIONS = ["neutral", "open"]
CAMERAS = ["c0", "c1", "c2"]
L = 68

# Small enough for a CPU test step, large enough to have a surface.
TINY_OVERRIDES = [
    "model.lr_size=16",
    "model.guidance.upsampler.factor=2",
    "model.guidance.tet_resolution=10",
    "model.guidance.f_mean.width=16",
    "model.guidance.f_inj.width=16",
    "model.guidance.f_id.width=16",
    "model.guidance.f_exp.width=16",
    "model.guidance.f_col.width=16",
    "model.guidance.mean_feature_dim=8",
    "model.guidance.injected_dim=8",
    "model.guidance.color_channels=8",
    "model.guidance.upsampler.width=8",
    "train.sdf_prefit_steps=30",
    "train.log_every=1",
    # model=tiny's 2000 face points would subdivide every edge of this ~300-vertex mesh;
    # a few keep the default's code path in every test run.
    "model.gaussian.face_points=40",
]


def _fibonacci(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([phi.sin() * theta.cos(), phi.cos(), phi.sin() * theta.sin()], -1)


def _split(name: str, expr: str, cam: str, combo, val_combo, val_camera) -> str:
    if (name, expr) == combo:
        return "heldout_combo"
    if (name, expr) == val_combo:
        return "val_combo"
    if cam == "c2":
        return "heldout_view"
    return "val_view" if cam == val_camera else "train"


def _rows(combo=None, val_combo=None, val_camera=None):
    verts, tets = tet_grid(24)
    K = intrinsics(1.2 * HR, 1.2 * HR, HR / 2, HR / 2)
    eyes = torch.tensor([[-1.5, 0.3, 2.6], [0.0, 0.0, 3.0], [1.5, -0.3, 2.6]])
    viewmats = look_at(eyes, torch.zeros(3, 3))
    lmk_dirs = _fibonacci(L).float()
    frame = 0
    for s, name in enumerate(SUBJECTS):
        radii = torch.tensor([0.55 + 0.1 * s, 0.7, 0.6])
        for e, expr in enumerate(EXPRESSIONS):
            r = radii * torch.tensor([1.0, 1.0 + 0.15 * e, 1.0])
            sdf = ((verts / r).norm(dim=-1) - 1) * r.min()
            v, f, _ = marching_tets(verts, sdf, tets)
            colors = (v / r * 0.5 + 0.5).clamp(0, 1)
            R = torch.eye(3)
            T = torch.tensor([0.0, 0.05 * e, 0.0])
            world = v + T
            out = render_mesh(
                world.expand(3, -1, -1), f, viewmats, K.expand(3, 3, 3), HR, HR,
                colors.expand(3, -1, -1),
            )  # fmt: skip
            lmk = lmk_dirs * r + T
            for c, cam in enumerate(CAMERAS):
                m = out.mask[c]
                img = out.features[c] * m + (1 - m)
                yield {
                    "subject": s,
                    "subject_name": name,
                    "frame": frame,
                    "expression": expr,
                    "camera": cam,
                    "image": (img.numpy() * 255).round().astype(np.uint8),
                    "mask": (m[..., 0].numpy() * 255).round().astype(np.uint8),
                    "K": K.numpy(),
                    "viewmat": viewmats[c].numpy(),
                    "head_R": R.numpy(),
                    "head_T": T.numpy(),
                    "head_scale": 1.0,
                    "landmarks_3d": lmk.numpy(),
                    "split": _split(name, expr, cam, combo, val_combo, val_camera),
                }
            frame += 1


def _write(out, combo=None, val_combo=None, val_camera=None):
    meta = {
        "subjects": SUBJECTS,
        "expressions": EXPRESSIONS,
        "cameras": CAMERAS,
        "num_frames": 4,
        "frames": [{"subject": s, "expression": e} for s in range(2) for e in EXPRESSIONS],
        "landmark_convention": "fibonacci68",
        "image_size": [HR, HR],
        "canonical_transform": {"scale": 1.0, "R": np.eye(3).tolist(), "T": [0.0, 0.0, 0.0]},
        "generator": {"kind": "tests/training/conftest.py"},
    }
    write_dataset(out, _rows(combo, val_combo, val_camera), meta)
    return out


@pytest.fixture(scope="session")
def tiny_head_dataset(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("data") / "tiny_heads")


@pytest.fixture(scope="session")
def tiny_combo_dataset(tmp_path_factory):
    """Like ``tiny_head_dataset`` but (b, the second expression) is a held-out combo."""
    return _write(
        tmp_path_factory.mktemp("data") / "tiny_combo", combo=(SUBJECTS[1], EXPRESSIONS[1])
    )


@pytest.fixture(scope="session")
def tiny_val_dataset(tmp_path_factory):
    """Validation splits: camera c1 is ``val_view``, (b, the second expression) is
    ``val_combo``; c2 stays ``heldout_view``. Training keeps c0 of the other frames."""
    return _write(
        tmp_path_factory.mktemp("data") / "tiny_val",
        val_combo=(SUBJECTS[1], EXPRESSIONS[1]),
        val_camera=CAMERAS[1],
    )
