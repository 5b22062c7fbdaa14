"""A tiny Gaussian head whose expressions move every attribute, saved as a run.

No training: the networks are randomised (the zero-initialised last layers of f_id, f_exp
and f_att included) so that identity and expression codes change positions, colours,
scales, rotations and opacities. Two subjects x three labels; (b, open) is held out, so b's
``open`` is borrowed from a.
"""

from __future__ import annotations

import math

import pytest
import torch

from gphm.models.gaussian_head import GaussianHead, GaussianHeadConfig
from gphm.models.guidance import GuidanceConfig
from gphm.models.mlp import MLPConfig
from gphm.models.runs import load_run
from gphm.models.upsampler import UpsamplerConfig

SUBJECTS = ["a", "b"]
LABELS = ["neutral", "smile", "open"]
FRAMES = [{"subject": s, "expression": e} for s in range(2) for e in LABELS]
TRAIN_FRAMES = [0, 1, 2, 3, 4]  # frame 5 = (b, open) never trained
HR = 16


def tiny_head(num_points: int = 150, seed: int = 0, num_frames: int = len(FRAMES)) -> GaussianHead:
    g = torch.Generator().manual_seed(seed)
    small = MLPConfig(width=16, depth=2)
    cfg = GuidanceConfig(
        tet_resolution=4, f_mean=small, mean_feature_dim=4, injected_dim=8, f_inj=small,
        f_id=small, f_exp=small, f_col=small, color_channels=6, num_landmarks=3,
        upsampler=UpsamplerConfig(factor=2, width=4, blocks=0),
    )  # fmt: skip
    head = GaussianHead(GaussianHeadConfig(f_att=small), cfg, num_subjects=len(SUBJECTS),
                        num_frames=num_frames, num_points=num_points)  # fmt: skip
    with torch.no_grad():
        i = torch.arange(num_points, dtype=torch.float32) + 0.5
        phi, theta = torch.acos(1 - 2 * i / num_points), math.pi * (1 + 5**0.5) * i
        sphere = torch.stack([phi.sin() * theta.cos(), phi.cos(), phi.sin() * theta.sin()], -1)
        head.points.copy_(0.6 * sphere)
        head.point_features.normal_(0, 1, generator=g)
        head.log_scales.fill_(math.log(0.08))
        head.opacity_logits.fill_(2.0)
        # Hidden layers ~N(0, 0.4²); last layers small enough to keep a head: positions
        # move by a few hundredths, log-scales / quaternions / opacity logits by ~0.1-0.5.
        last = {"f_id": 0.005, "f_exp": 0.005, "f_col": 0.5, "f_att": 0.03}
        for name in ("f_inj", "f_id", "f_exp", "f_col", "f_att"):
            mlp = getattr(head, name)
            for p in mlp.parameters():
                p.normal_(0, 0.4, generator=g)
            if name in last:
                for p in mlp.out.parameters():
                    p.normal_(0, last[name], generator=g)
        for book in (head.identity_codes, head.expression_codes):
            book.codes.weight.normal_(0, 1.0, generator=g)
    return head.eval()


def save_run(head: GaussianHead, run_dir, frames=FRAMES, train_frames=TRAIN_FRAMES, labels=LABELS):
    extra = {"stage": "gaussian", "lr_size": HR // 2, "hr_size": HR, "subjects": SUBJECTS,
             "frames": frames, "train_frames": train_frames, "expressions": labels}  # fmt: skip
    head.save_pretrained(run_dir / "model", extra=extra)
    return run_dir


@pytest.fixture(scope="session")
def tiny_export_run(tmp_path_factory):
    """A saved run of :func:`tiny_head` (``load_run`` it for a fresh copy)."""
    return save_run(tiny_head(), tmp_path_factory.mktemp("export") / "run")


@pytest.fixture
def run(tiny_export_run):
    return load_run(tiny_export_run)
