"""CUDA tests of the mesh renderer: the torch backend on the GPU, and nvdiffrast against
the torch reference (skipped without CUDA or nvdiffrast)."""

from __future__ import annotations

import pytest
import torch

from gphm.render.mesh import render_mesh
from tests.render.test_mesh import camera, uv_sphere

pytestmark = pytest.mark.cuda


def _scene(device: str, B: int = 2, size: int = 96):
    verts, faces = uv_sphere(48, 24, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    verts = verts[None] * (1 + 0.1 * torch.rand(B, 1, 3, generator=g))
    feats = torch.rand(B, verts.shape[1], 5, generator=g)
    cams = [camera((0.4 * i - 0.2, 0.3, 3.0), size, dtype=torch.float32) for i in range(B)]
    viewmats = torch.stack([c[0] for c in cams])
    Ks = torch.stack([c[1] for c in cams])
    Ks[:, 0, 2] += 3.0  # off-centre principal point: catches a wrong NDC mapping
    Ks[:, 1, 1] *= 1.1  # and non-square pixels
    to = dict(device=device)
    return verts.to(**to), faces.to(**to), viewmats.to(**to), Ks.to(**to), feats.to(**to)


def test_torch_backend_on_cuda_matches_cpu():
    verts, faces, viewmats, Ks, feats = _scene("cpu")
    cpu = render_mesh(verts, faces, viewmats, Ks, 96, 80, feats, backend="torch")
    gpu = render_mesh(
        *(x.cuda() for x in (verts, faces, viewmats, Ks)), 96, 80, feats.cuda(), backend="torch"
    )
    assert gpu.mask.device.type == "cuda"
    same = gpu.face_ids.cpu() == cpu.face_ids
    assert same.float().mean() > 0.999  # fused multiply-adds may flip exact ties
    covered = same & (cpu.face_ids >= 0)
    torch.testing.assert_close(gpu.features.cpu()[covered], cpu.features[covered])
    torch.testing.assert_close(gpu.depth.cpu()[covered], cpu.depth[covered])
    torch.testing.assert_close(gpu.mask.sum().cpu(), cpu.mask.sum(), rtol=1e-3, atol=0)


def test_nvdiffrast_matches_torch_reference():
    pytest.importorskip("nvdiffrast.torch")
    verts, faces, viewmats, Ks, feats = _scene("cuda")
    verts_t = verts.clone().requires_grad_(True)
    verts_n = verts.clone().requires_grad_(True)
    feats_t = feats.clone().requires_grad_(True)
    feats_n = feats.clone().requires_grad_(True)
    ref = render_mesh(verts_t, faces, viewmats, Ks, 96, 80, feats_t, backend="torch")
    out = render_mesh(verts_n, faces, viewmats, Ks, 96, 80, feats_n, backend="nvdiffrast")
    auto = render_mesh(verts, faces, viewmats, Ks, 96, 80, feats, backend="auto")
    assert torch.equal(auto.face_ids, out.face_ids)  # auto picks nvdiffrast on CUDA

    same = out.face_ids == ref.face_ids
    assert same.float().mean() > 0.99  # ties on shared edges may differ
    covered = same & (ref.face_ids >= 0)
    assert covered.sum() > 1000
    torch.testing.assert_close(out.depth[covered], ref.depth[covered], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.features[covered], ref.features[covered], rtol=1e-3, atol=1e-3)
    # different antialiasing schemes: compare the covered area and the silhouette band
    area_ref, area = ref.mask.sum((1, 2, 3)), out.mask.sum((1, 2, 3))
    torch.testing.assert_close(area, area_ref, rtol=0.02, atol=0)
    # gradients: features exactly linear, vertex gradient of the area has the same sign
    w = torch.rand_like(ref.features)
    (ref.features * w).sum().backward()
    (out.features * w).sum().backward()
    torch.testing.assert_close(feats_n.grad, feats_t.grad, rtol=0.05, atol=0.05)
    verts_t.grad = verts_n.grad = None
    ref.mask.sum().backward()
    out.mask.sum().backward()
    # d(area)/d(scale): both renderers grow the silhouette when the sphere grows
    grow_ref = (verts_t.grad * verts).sum()
    grow = (verts_n.grad * verts).sum()
    assert grow_ref > 0 and grow > 0
    torch.testing.assert_close(grow, grow_ref, rtol=0.3, atol=0)


def test_nvdiffrast_backend_names_and_empty_mesh():
    pytest.importorskip("nvdiffrast.torch")
    verts, faces, viewmats, Ks, feats = _scene("cuda", B=1, size=32)
    empty = render_mesh(verts, faces[:0], viewmats, Ks, 32, 32, feats, backend="nvdiffrast")
    assert (empty.face_ids == -1).all() and (empty.mask == 0).all()
    out64 = render_mesh(
        verts.double(), faces, viewmats.double(), Ks.double(), 32, 32, feats.double(),
        backend="nvdiffrast",
    )  # fmt: skip
    assert out64.features.dtype == torch.float64 and out64.face_ids.dtype == torch.int64
