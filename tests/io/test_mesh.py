"""gphm.io.mesh (kept next to the geometry tests that produce the meshes it writes)."""

import numpy as np
import pytest
import torch
import trimesh

from gphm.io.mesh import load_mesh, save_mesh


def _mesh():
    m = trimesh.creation.icosphere(subdivisions=1)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces)


@pytest.mark.parametrize("ext", [".ply", ".obj", ".PLY"])
def test_round_trip_keeps_vertex_order_and_faces(tmp_path, ext):
    verts, faces = _mesh()
    path = save_mesh(tmp_path / "sub" / f"mesh{ext}", verts, faces)
    assert path.is_file()
    v2, f2 = load_mesh(path)
    assert v2.dtype == torch.float32 and f2.dtype == torch.int64
    assert torch.allclose(v2, verts, atol=1e-6)
    assert torch.equal(f2, faces)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files


@pytest.mark.parametrize("colors", ["float", "uint8"])
def test_vertex_colors_written_to_ply(tmp_path, colors):
    verts, faces = _mesh()
    rgb = torch.rand(verts.shape[0], 3)
    arg = rgb if colors == "float" else (rgb * 255).round().to(torch.uint8)
    path = save_mesh(tmp_path / "c.ply", verts, faces, vertex_colors=arg)
    loaded = trimesh.load(path, process=False)
    expected = np.round(rgb.numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], expected)


def test_overwrite_replaces_existing_file(tmp_path):
    verts, faces = _mesh()
    path = tmp_path / "m.ply"
    save_mesh(path, verts, faces)
    save_mesh(path, verts[:3], torch.tensor([[0, 1, 2]]))
    assert load_mesh(path)[1].shape == (1, 3)


def test_errors(tmp_path):
    verts, faces = _mesh()
    with pytest.raises(ValueError, match=r"unsupported mesh extension '\.stl'"):
        save_mesh(tmp_path / "m.stl", verts, faces)
    with pytest.raises(ValueError, match=r"verts must have shape \[V, 3\]"):
        save_mesh(tmp_path / "m.ply", verts[:, :2], faces)
    with pytest.raises(ValueError, match="vertex_colors"):
        save_mesh(tmp_path / "m.ply", verts, faces, vertex_colors=torch.zeros(2, 3))
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_mesh(tmp_path / "missing.obj")
    assert not any(tmp_path.iterdir())  # failed saves leave nothing behind
