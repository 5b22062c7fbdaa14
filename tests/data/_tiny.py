"""Tiny gphm datasets built directly from numpy for the data tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gphm.geometry.cameras import look_at

H, W = 8, 12  # non-square on purpose
CAMERAS = ["cam_a", "cam_b", "cam_c"]
SUBJECTS = ["alice", "bob"]
EXPRESSIONS = ["neutral", "smile"]
# frame -> (subject id, expression)
FRAMES = [(0, "neutral"), (0, "smile"), (1, "neutral"), (1, "smile")]
NUM_LANDMARKS = 5


def tiny_meta(**overrides: Any) -> dict[str, Any]:
    meta = {
        "format_version": 1,
        "subjects": list(SUBJECTS),
        "expressions": list(EXPRESSIONS),
        "cameras": list(CAMERAS),
        "num_frames": len(FRAMES),
        "frames": [{"subject": s, "expression": e} for s, e in FRAMES],
        "landmark_convention": "test5",
        "image_size": [H, W],
        "canonical_transform": {"scale": 1.0, "R": np.eye(3), "T": [0.0, 0.0, 0.0]},
        "generator": {"kind": "tiny", "seed": 0},
    }
    meta.update(overrides)
    return meta


def viewmats() -> np.ndarray:  # [C, 4, 4] cameras on a circle looking at the origin
    angles = torch.tensor([-0.5, 0.0, 0.5])
    eye = torch.stack([3 * angles.sin(), 0.2 * torch.ones(3), 3 * angles.cos()], -1)
    return look_at(eye, torch.zeros(3)).numpy()


def tiny_rows(seed: int = 0, fail_at: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows of every (frame, camera); the last camera is held out. ``fail_at``: raise
    RuntimeError before yielding that row (a broken generator)."""
    rng = np.random.default_rng(seed)
    V = viewmats()
    K = np.array([[10.0, 0.0, W / 2], [0.0, 10.0, H / 2], [0.0, 0.0, 1.0]])
    i = 0
    for f, (s, e) in enumerate(FRAMES):
        lmk = rng.uniform(-0.5, 0.5, (NUM_LANDMARKS, 3))
        for c, cam in enumerate(CAMERAS):
            if fail_at is not None and i == fail_at:
                raise RuntimeError("generator failed")
            i += 1
            yield {
                "subject": s,
                "subject_name": SUBJECTS[s],
                "frame": f,
                "expression": e,
                "camera": cam,
                "image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                "mask": (rng.random((H, W)) > 0.3).astype(np.uint8) * 255,
                "K": K,
                "viewmat": V[c],
                "head_R": np.eye(3),
                "head_T": rng.normal(size=3) * 0.01,
                "head_scale": 1.0,
                "landmarks_3d": lmk,
                "split": "heldout_view" if c == len(CAMERAS) - 1 else "train",
            }
