"""The rasterizer backend registries: the built-in names, one-line errors for unknown
ones, dispatch to a registered backend (by name and by "auto") and registration rules."""

from __future__ import annotations

import pytest
import torch

from gphm.render import rasterize_gaussians, register_backend, registry, render_mesh
from gphm.render._gaussians_torch import rasterize_torch
from gphm.render.gaussians import backend_names, select_backend
from gphm.render.mesh import select_mesh_backend
from tests.render.test_gaussians import _valid_args
from tests.render.test_mesh import camera, cube

CPU = torch.device("cpu")


@pytest.fixture
def dummy():
    """Registers ``dummy`` backends for both primitives (removed afterwards); ``calls``
    records what each received."""
    calls: dict[str, dict] = {}

    def gaussians(means, quats, scales, opacities, features, viewmats, Ks, width, height,
                  backgrounds, *, eps2d, antialiased, semantics):  # fmt: skip
        calls["gaussians"] = dict(N=means.shape[0], C=viewmats.shape[0], eps2d=eps2d,
                                  antialiased=antialiased, semantics=semantics)  # fmt: skip
        C, D = viewmats.shape[0], features.shape[-1]
        return torch.full((C, height, width, D), 7.0), torch.full((C, height, width, 1), 0.25)

    def mesh(verts, faces, viewmats, Ks, width, height, vertex_features, near):
        calls["mesh"] = dict(B=verts.shape[0], near=near)
        B = verts.shape[0]
        return (torch.zeros(B, height, width, 0), torch.full((B, height, width, 1), 0.5),
                torch.full((B, height, width, 1), 2.0),
                torch.full((B, height, width), 3, dtype=torch.int64))  # fmt: skip

    register_backend("gaussians", "dummy", gaussians)
    register_backend("mesh", "dummy", mesh)
    yield calls
    registry("gaussians").unregister("dummy")
    registry("mesh").unregister("dummy")


def _mesh_args():
    verts, faces = cube()
    vm, K = camera((0.5, 0.4, 4.0), 12)
    return verts[None], faces, vm[None], K[None], 12, 12


def test_the_registries_list_the_built_in_backends():
    assert registry("gaussians").names() == ("auto", "torch", "gsplat") == backend_names()
    assert registry("mesh").names() == ("auto", "torch", "nvdiffrast")
    gaussians = registry("gaussians")
    assert gaussians.get("gsplat").priority > gaussians.get("torch").priority
    with pytest.raises(ValueError, match=r"primitive must be one of \['gaussians', 'mesh'\]"):
        registry("points")


def test_an_unknown_backend_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        rasterize_gaussians(**_valid_args(), backend="cuda")
    assert str(err.value) == "backend must be one of ('auto', 'torch', 'gsplat'), got 'cuda'"
    with pytest.raises(ValueError) as err:
        render_mesh(*_mesh_args(), backend="pytorch3d")
    assert str(err.value) == (
        "backend must be one of ('auto', 'torch', 'nvdiffrast'), got 'pytorch3d'"
    )
    with pytest.raises(ValueError, match=r"got None"):
        select_backend(None, CPU, torch.float32)


def test_a_registered_backend_is_dispatched_to_by_name(dummy):
    args = _valid_args()
    render, alpha = rasterize_gaussians(**args, backend="dummy", eps2d=0.1, antialiased=True)
    assert dummy["gaussians"] == dict(N=3, C=2, eps2d=0.1, antialiased=True, semantics="gsplat15")
    assert torch.equal(render, torch.full((2, 16, 16, 3), 7.0)) and float(alpha.mean()) == 0.25
    # the built-ins are untouched: "torch" is still the reference rasterizer
    ref = rasterize_torch(*args.values(), eps2d=0.3, antialiased=False, semantics="gsplat15")
    torch.testing.assert_close(rasterize_gaussians(**args, backend="torch")[0], ref[0])
    out = render_mesh(*_mesh_args(), backend="dummy", near=0.5)
    assert dummy["mesh"] == dict(B=1, near=0.5)
    assert float(out.mask.mean()) == 0.5 and int(out.face_ids[0, 0, 0]) == 3
    assert "dummy" in registry("gaussians").names()
    with pytest.raises(ValueError, match=r"one of \('auto', 'torch', 'gsplat', 'dummy'\)"):
        select_backend("dumy", CPU, torch.float32)


def test_auto_picks_the_highest_priority_backend_that_accepts(dummy):
    reg = registry("gaussians")
    assert select_backend("auto", CPU, torch.float64) == "torch"  # dummy: auto=False
    register_backend("gaussians", "dummy", reg.get("dummy").rasterize, priority=20,
                     auto=lambda device, dtype, semantics: dtype == torch.float64,
                     replace=True)  # fmt: skip
    assert select_backend("auto", CPU, torch.float64) == "dummy"
    assert select_backend("auto", CPU, torch.float32) == "torch"
    assert select_backend("torch", CPU, torch.float64) == "torch"
    assert select_mesh_backend("auto", CPU) == "torch"  # the mesh dummy never auto-picks


def test_require_refusals_and_registration_rules(dummy):
    def no_cpu(device, dtype, semantics):
        if device.type == "cpu":
            raise RuntimeError("backend='picky' needs a GPU")

    register_backend("gaussians", "picky", lambda *a, **k: None, require=no_cpu)
    try:
        with pytest.raises(RuntimeError, match="backend='picky' needs a GPU"):
            rasterize_gaussians(**_valid_args(), backend="picky")
    finally:
        registry("gaussians").unregister("picky")
    with pytest.raises(ValueError, match="'dummy' is already registered"):
        register_backend("gaussians", "dummy", lambda *a, **k: None)
    with pytest.raises(ValueError, match="needs a name other than 'auto'"):
        register_backend("mesh", "auto", lambda *a, **k: None)
    # gsplat asked for by name on the CPU still says how to get it
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*pip install gphm\[gpu\]"):
        select_backend("gsplat", CPU, torch.float32)
