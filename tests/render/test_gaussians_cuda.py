"""CUDA tests of the Gaussian rasterizer: gsplat against the torch backend, forward and
backward, and the torch backend on the GPU against itself on the CPU.

Tolerances, and why:

* Opacities: low ([0.05, 0.35]) and high ([0.6, 1], with some exactly 0.999 and 1 and
  some below 1/255). The default ``semantics="gsplat15"`` is gsplat ≥ 1.5's rule (α clamp
  0.999, opacity-aware tile boxes, o < 1/255 culled), so both regimes must agree; the
  ``"legacy"`` rule (0.99, 3σ of λ_max) is not gsplat's and is rendered by torch only.
* Forward, float32: mean |Δ| ≤ 1e-5 and max |Δ| ≤ 5e-3. The max allows a few α that
  float32 rounding (gsplat's ``__expf``, our expanded quadratic) puts on the other side of
  1/255: that changes one pixel by at most ~0.004·|f|.
* Backward: relative L2 error ≤ 1e-2 per gradient (float32 atomics in gsplat, other
  summation orders here, and the rare threshold flips above).
"""

import pytest
import torch

from gphm.geometry import intrinsics, look_at
from gphm.render import rasterize_gaussians

pytestmark = pytest.mark.cuda


def _scene(N=2000, C=2, D=32, W=128, H=96, device="cuda", seed=0, high=False):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(N, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True) * (0.7 + 0.3 * torch.rand(N, 1, generator=g))
    quats = torch.randn(N, 4, generator=g)
    scales = 0.01 + 0.04 * torch.rand(N, 3, generator=g)
    if high:  # where gsplat 1.4's boxes or a 0.99 clamp would differ
        opac = 0.6 + 0.4 * torch.rand(N, generator=g)
        opac[:40] = torch.tensor([1.0, 0.999, 0.5 / 255, 0.9 / 255]).repeat(10)
    else:
        opac = 0.05 + 0.3 * torch.rand(N, generator=g)
    feats = torch.rand(C, N, D, generator=g)
    eye = torch.tensor([[0.0, 0.0, 3.0], [1.5, 0.5, 2.5]])[:C]
    viewmats = look_at(eye, torch.zeros(3))
    Ks = intrinsics(1.2 * W, 1.2 * W, W / 2, H / 2).expand(C, 3, 3).clone()
    bg = torch.rand(C, D, generator=g)
    tensors = (means, quats, scales, opac, feats, viewmats, Ks, bg)
    return [t.to(device) for t in tensors], W, H


def _render_and_grads(backend, tensors, W, H, eps2d=0.3, antialiased=False):
    means, quats, scales, opac, feats, viewmats, Ks, bg = tensors
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, feats)]
    render, alpha = rasterize_gaussians(
        *inputs, viewmats, Ks, W, H, bg, backend=backend, eps2d=eps2d, antialiased=antialiased
    )
    g = torch.Generator().manual_seed(1)  # on the CPU: the same weights on every device
    w_r = torch.randn(render.shape, generator=g).to(render)
    w_a = torch.randn(alpha.shape, generator=g).to(alpha)
    grads = torch.autograd.grad((render * w_r).sum() + (alpha * w_a).sum(), inputs)
    return render.detach(), alpha.detach(), grads


@pytest.mark.parametrize(
    ("D", "eps2d", "antialiased", "high"),
    [(3, 0.3, False, False), (32, 0.3, False, False), (32, 0.1, True, False),
     (3, 0.3, False, True), (32, 0.3, False, True), (32, 0.1, True, True)],
)  # fmt: skip
def test_gsplat_matches_torch_backend(D, eps2d, antialiased, high):
    pytest.importorskip("gsplat")
    tensors, W, H = _scene(D=D, high=high)
    r_gs, a_gs, g_gs = _render_and_grads("gsplat", tensors, W, H, eps2d, antialiased)
    r_t, a_t, g_t = _render_and_grads("torch", tensors, W, H, eps2d, antialiased)
    assert (a_t > 0.3).float().mean() > 0.2  # the scene covers the image
    if high:
        assert (a_t > 0.999).float().mean() > 0.05  # opaque: clamp and stop matter
    for x, y in ((r_gs, r_t), (a_gs, a_t)):
        diff = (x - y).abs()
        assert diff.mean() <= 1e-5 and diff.max() <= 5e-3, (diff.mean(), diff.max())
    for name, x, y in zip(["means", "quats", "scales", "opacities", "features"], g_gs, g_t):
        rel = (x - y).norm() / y.norm()
        assert rel <= 1e-2, (name, rel.item())


def test_auto_backend_uses_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    tensors, W, H = _scene(N=200, D=3)
    means, quats, scales, opac, feats, viewmats, Ks, bg = tensors
    auto = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    gs = rasterize_gaussians(
        means, quats, scales, opac, feats, viewmats, Ks, W, H, bg, backend="gsplat"
    )
    torch.testing.assert_close(auto, gs, atol=0, rtol=0)


def test_legacy_semantics_render_with_torch_on_cuda_and_gsplat_refuses_them():
    pytest.importorskip("gsplat")
    tensors, W, H = _scene(N=200, D=3, high=True)
    means, quats, scales, opac, feats, viewmats, Ks, bg = tensors
    args = (means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    auto = rasterize_gaussians(*args, semantics="legacy")
    torch_ = rasterize_gaussians(*args, backend="torch", semantics="legacy")
    torch.testing.assert_close(auto, torch_, atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot render semantics='legacy'"):
        rasterize_gaussians(*args, backend="gsplat", semantics="legacy")
    gs = rasterize_gaussians(*args, backend="gsplat")
    assert (gs[1] - auto[1]).abs().max() > 1e-3  # the rules differ at high opacity


@pytest.mark.parametrize("high", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_backend_on_cuda_matches_cpu(dtype, high):
    tensors, W, H = _scene(N=500, D=8, high=high)
    cuda = [t.to(dtype) for t in tensors]
    cpu = [t.cpu() for t in cuda]
    r_cuda, a_cuda, g_cuda = _render_and_grads("torch", cuda, W, H)
    r_cpu, a_cpu, g_cpu = _render_and_grads("torch", cpu, W, H)
    assert r_cuda.device.type == "cuda" and r_cuda.dtype == dtype
    # float32: as for gsplat, a rare α may round across 1/255 differently on the GPU.
    mean_tol, max_tol, grad_tol = (1e-6, 5e-3, 1e-3) if dtype == torch.float32 else (1e-12,) * 3
    for x, y in ((r_cuda, r_cpu), (a_cuda, a_cpu)):
        diff = (x.cpu() - y).abs()
        assert diff.mean() <= mean_tol and diff.max() <= max_tol
    for x, y in zip(g_cuda, g_cpu):
        assert (x.cpu() - y).norm() <= grad_tol * y.norm()
