"""Stage-2 (Gaussian head) timings: creation, one training step, single-image fitting.

``python scripts/bench.py stage2`` calls :func:`run`. Threads: ``torch.set_num_threads``
from ``GPHM_BENCH_THREADS`` or ``OMP_NUM_THREADS`` when set (else torch's default).

Model: the ``tiny`` preset on the CPU; with ``quick=False`` also the ``paper`` preset on
CUDA when a GPU is present (``"paper": {"skipped": "no CUDA"}`` otherwise, ``"quick"``
with ``quick=True``). A
:class:`GuidanceModel` with 8 subjects / 64 frames has its f_mean SDF pre-fitted to a
sphere of radius 0.7 (Adam, lr 1e-2, 100 steps; 30 with ``quick``), as
``GuidanceTrainer.prefit_sdf`` does, so ``mean_mesh()`` has a surface. Its codes are
drawn from N(0, 0.5²) and its canonical landmarks are spread over the front (+z)
hemisphere of that sphere, so renders and the PnP pose of fitting are well defined.
Set-up, not a benchmark: ``sdf_prefit_s`` (model construction + pre-fit, one run).

* ``create_from_s``: median wall time of ``GaussianHead.create_from`` (DMTet extraction,
  optional subdivision to ``num_points``, k-NN scales); ``num_gaussians`` is the result.
* ``train_step_s``: median wall time of one stage-2 step: forward of B = 4 rows (random
  subject / frame indices, identity head pose, cameras from ``look_at`` at distance 3
  around the front looking at the origin, K = (f, f, lr/2, lr/2) with f = 1.05·lr), L1
  of the hr RGB against a random target, ``backward`` and an Adam step over all
  parameters. ``train_step_peak_mem_mb``: growth of the peak memory during one step
  after the warm-up (Adam state exists), measured as in the mesh suite (CPU: peak RSS
  via ``/proc``; CUDA: ``max_memory_allocated``).
* ``fit_s``: wall time (``FitResult.seconds``) of ``fit_image`` with the default
  :class:`FitConfig` (``quick``: 5 + 2 steps) on a synthetic target: the head itself,
  rendered at hr with subject 1 / frame 2 codes at the pose R = diag(1, −1, −1) (face
  toward the camera), T = (0, 0, 3) in front of the identity camera, K = (f, f, S/2,
  S/2) with f = 1.05·S; mask = the rendered alpha upsampled bilinearly to hr; landmarks =
  the projected posed canonical landmarks. ``fit_s_per_step`` divides by the total step
  count; ``fit_psnr`` / ``fit_landmark_error_px`` are sanity checks of the run.
"""

from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F

from benchmarks._timing import bench_threads, median_time
from benchmarks.mesh import _peak_mem_mb
from gphm import losses
from gphm.fitting.fit import FitConfig, FitTarget, fit_image, render_avatar
from gphm.geometry.cameras import intrinsics, look_at, project_points
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel
from gphm.training.config import ModelConfig, paper_model, tiny_model

NUM_SUBJECTS = 8
NUM_FRAMES = 64
BATCH = 4
DISTANCE = 3.0
FOCAL_FACTOR = 0.35 * DISTANCE  # f = FOCAL_FACTOR · image size
SPHERE_RADIUS = 0.7
PREFIT_LR = 1e-2


def prefit_guidance(cfg: ModelConfig, device: torch.device, steps: int, seed: int = 0):
    """A guidance model whose SDF is fitted to a sphere; returns (model, final loss)."""
    torch.manual_seed(seed)
    model = GuidanceModel(cfg.guidance, NUM_SUBJECTS, NUM_FRAMES).to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.f_mean.parameters(), lr=PREFIT_LR)
    bound = cfg.guidance.grid_bound
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x = ((torch.rand(2048, 3, generator=g) * 2 - 1) * bound).to(device)
        loss = losses.sdf_sphere(model.mean_field(x).sdf, x, SPHERE_RADIUS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.identity_codes.codes.weight.normal_(0, 0.5)
        model.expression_codes.codes.weight.normal_(0, 0.5)
        d = torch.randn(cfg.guidance.num_landmarks, 3, generator=g)
        d[:, 2] = d[:, 2].abs() + 0.3  # front hemisphere, away from the silhouette
        model.landmarks_canonical.copy_(d / d.norm(dim=-1, keepdim=True) * SPHERE_RADIUS)
    return model, float(loss.detach())


def _cameras(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    azim = torch.linspace(-0.6, 0.6, batch)
    eyes = DISTANCE * torch.stack([azim.sin(), torch.full_like(azim, 0.1), azim.cos()], -1)
    viewmats = look_at(eyes, torch.zeros(3)).to(device)
    f = FOCAL_FACTOR * size
    Ks = intrinsics(f, f, size / 2, size / 2, device=device)[None].expand(batch, 3, 3)
    return viewmats, Ks.contiguous()


def _bench_train_step(head: GaussianHead, lr: int, device: torch.device, repeats: int, sync):
    g = torch.Generator().manual_seed(1)
    factor = head.upsampler.config.factor
    viewmats, Ks = _cameras(BATCH, lr, device)
    eye3 = torch.eye(3, device=device).expand(BATCH, 3, 3)
    zeros = torch.zeros(BATCH, 3, device=device)
    ones = torch.ones(BATCH, device=device)
    target = torch.rand(BATCH, lr * factor, lr * factor, 3, generator=g).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    head.train()

    def step() -> None:
        subject = torch.randint(0, NUM_SUBJECTS, (BATCH,), generator=g).to(device)
        frame = torch.randint(0, NUM_FRAMES, (BATCH,), generator=g).to(device)
        out = head(subject, frame, eye3, zeros, ones, viewmats, Ks, lr, lr)
        loss = losses.l1(out.rgb, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_time(step, repeats, sync=sync)
    return seconds, _peak_mem_mb(step, device)


def _synthetic_target(head: GaussianHead, size: int, device: torch.device) -> FitTarget:
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=device))[None]
    T = torch.tensor([[0.0, 0.0, DISTANCE]], device=device)
    one = torch.ones(1, device=device)
    eye4 = torch.eye(4, device=device)[None]
    f = FOCAL_FACTOR * size
    K = intrinsics(f, f, size / 2, size / 2, device=device)[None]
    with torch.no_grad():
        z_id = head.identity_codes(torch.tensor([1], device=device))
        z_exp = head.expression_codes(torch.tensor([2], device=device))
        out = render_avatar(head, z_id, z_exp, R, T, one, eye4, K, size)
        mask = F.interpolate(out.mask.permute(0, 3, 1, 2), size=(size, size), mode="bilinear")
        lmk = head.canonical_landmarks(z_id, z_exp)
        lmk = lmk @ R.transpose(-1, -2) + T[:, None]
        uv, _ = project_points(lmk, eye4, K)
    return FitTarget(
        image=out.rgb[0].clamp(0, 1).cpu(),
        mask=mask[0].permute(1, 2, 0).clamp(0, 1).cpu(),
        K=K[0].cpu(),
        landmarks=uv[0].cpu(),
    )


def _bench_preset(cfg: ModelConfig, device: torch.device, quick: bool) -> dict:
    repeats = 3 if quick else 7
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    prefit_steps = 30 if quick else 100
    t0 = time.perf_counter()
    guidance, prefit_loss = prefit_guidance(cfg, device, prefit_steps)
    prefit_s = time.perf_counter() - t0
    mesh_faces = int(guidance.mean_mesh().faces.shape[0])

    head = None

    def create() -> None:
        nonlocal head
        head = GaussianHead.create_from(guidance, cfg.gaussian)

    create_s = median_time(create, 1 if quick else 3, sync=sync)
    assert head is not None
    train_s, train_mem = _bench_train_step(head, cfg.lr_size, device, repeats, sync)

    fit_cfg = FitConfig(phase1_steps=5, phase2_steps=2) if quick else FitConfig()
    target = _synthetic_target(head, cfg.hr_size, device)
    result = fit_image(head, target, fit_cfg)
    steps = fit_cfg.phase1_steps + fit_cfg.phase2_steps
    return {
        "device": str(device),
        "lr_size": cfg.lr_size,
        "hr_size": cfg.hr_size,
        "tet_resolution": cfg.guidance.tet_resolution,
        "sdf_prefit_steps": prefit_steps,
        "sdf_prefit_loss": prefit_loss,
        "sdf_prefit_s": prefit_s,
        "mean_mesh_faces": mesh_faces,
        "num_gaussians": head.num_points,
        "create_from_s": create_s,
        "batch": BATCH,
        "train_step_s": train_s,
        "train_step_peak_mem_mb": train_mem,
        "fit_phase1_steps": fit_cfg.phase1_steps,
        "fit_phase2_steps": fit_cfg.phase2_steps,
        "fit_steps": steps,
        "fit_s": result.seconds,
        "fit_s_per_step": result.seconds / max(steps, 1),
        "fit_psnr": result.psnr,
        "fit_landmark_error_px": result.landmark_error_px,
    }


def run(quick: bool = False) -> dict:
    """Time stage-2 creation, training and fitting; returns a JSON-able dict (s, MiB)."""
    threads = bench_threads()
    out: dict = {
        "suite": "stage2",
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "quick": quick,
        "method": "median of repeats after a warm-up (fit: one run); see module docstring",
        "tiny": _bench_preset(tiny_model(), torch.device("cpu"), quick),
    }
    if quick:
        out["paper"] = {"skipped": "quick"}
    else:
        if torch.cuda.is_available():
            out["paper"] = _bench_preset(paper_model(), torch.device("cuda"), quick)
        else:
            out["paper"] = {"skipped": "no CUDA"}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
