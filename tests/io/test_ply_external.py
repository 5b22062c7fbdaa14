"""Our splat PLYs read by readers nobody here wrote.

* The reference 3DGS loader's logic (``GaussianModel.load_ply`` of graphdeco-inria's
  gaussian-splatting, re-implemented here with numpy only, without our reader): it
  *asserts* ``3·((D+1)² - 1)`` ``f_rest_*`` properties for its SH degree D (3 by
  default) and reshapes them to [N, 3, (D+1)² - 1] (channel-major).
* ``plyfile`` (the PLY library that loader uses), when installed.
* PlayCanvas' ``splat-transform`` command-line tool (npm ``@playcanvas/splat-transform``)
  when found: ``$GPHM_SPLAT_TRANSFORM`` (path to its executable, e.g.
  ``/opt/tools/node_modules/.bin/splat-transform``) or ``splat-transform`` on the PATH
  (``npm install -g @playcanvas/splat-transform``). Skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from gphm.io.ply import SH_C0, save_gaussian_ply

INRIA = [
    *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
    *(f"f_rest_{i}" for i in range(45)),
    *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
]


def _gaussians(n: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        means=torch.randn(n, 3, generator=g) * 0.5,
        log_scales=torch.randn(n, 3, generator=g) * 0.3 - 3.5,
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g) * 2,
        rgb=torch.rand(n, 3, generator=g),
    )


# ----------------------------------------------------------------- the reference loader


def _read_vertex_numpy(path) -> np.ndarray:
    """The vertex element of a binary little-endian PLY as a numpy structured array
    (float/double/uchar scalar properties only), parsed here from scratch."""
    raw = open(path, "rb").read()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4"}
    fields, count, in_vertex = [], None, False
    for line in raw[:end].decode("ascii").splitlines():
        words = line.split()
        if words[:1] == ["format"]:
            assert words[1] == "binary_little_endian", line
        elif words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
        elif words[:1] == ["property"] and in_vertex:
            fields.append((words[2], types[words[1]]))
    return np.frombuffer(raw, dtype=fields, count=count, offset=end)


def reference_3dgs_load(path, max_sh_degree: int = 3) -> dict[str, np.ndarray]:
    """What graphdeco-inria's ``GaussianModel.load_ply`` does with a file (its logic:
    properties by name, f_rest_* sorted by index and counted, reshaped channel-major;
    rot_*/scale_* gathered by prefix in index order; values kept raw)."""
    v = _read_vertex_numpy(path)
    names = v.dtype.names
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    opacities = np.asarray(v["opacity"])[..., None]
    features_dc = np.zeros((xyz.shape[0], 3, 1))
    for c in range(3):
        features_dc[:, c, 0] = v[f"f_dc_{c}"]
    extra = sorted(
        (p for p in names if p.startswith("f_rest_")), key=lambda p: int(p.split("_")[-1])
    )
    assert len(extra) == 3 * (max_sh_degree + 1) ** 2 - 3  # the reference loader's assert
    features_extra = np.zeros((xyz.shape[0], len(extra)))
    for i, p in enumerate(extra):
        features_extra[:, i] = v[p]
    features_extra = features_extra.reshape(xyz.shape[0], 3, (max_sh_degree + 1) ** 2 - 1)

    def gather(prefix):
        cols = sorted(
            (p for p in names if p.startswith(prefix)), key=lambda p: int(p.split("_")[-1])
        )
        return np.stack([v[p] for p in cols], axis=1)

    return dict(xyz=xyz, opacity=opacities, features_dc=features_dc, features_rest=features_extra,
                scaling=gather("scale_"), rotation=gather("rot"))  # fmt: skip


def test_reference_loader_reads_the_default_file_and_refuses_degree_0(tmp_path):
    d = _gaussians()
    p3 = save_gaussian_ply(tmp_path / "d3.ply", **d)
    g = reference_3dgs_load(p3)  # its default, max_sh_degree=3
    np.testing.assert_array_equal(g["xyz"], d["means"].numpy())
    np.testing.assert_array_equal(g["opacity"][:, 0], d["opacity_logits"].numpy())
    np.testing.assert_array_equal(g["scaling"], d["log_scales"].numpy())
    q = (d["quats"] / d["quats"].norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(g["rotation"], q, atol=1e-6)  # rot_0 = w
    np.testing.assert_allclose(0.5 + SH_C0 * g["features_dc"][:, :, 0], d["rgb"].numpy(), atol=1e-6)
    assert g["features_rest"].shape == (64, 3, 15) and not g["features_rest"].any()
    p0 = save_gaussian_ply(tmp_path / "d0.ply", **d, sh_degree=0)
    with pytest.raises(AssertionError):  # what made today's degree-0 files unusable there
        reference_3dgs_load(p0)
    np.testing.assert_array_equal(reference_3dgs_load(p0, max_sh_degree=0)["xyz"], g["xyz"])


def test_reference_loader_reshape_recovers_channel_major_coefficients(tmp_path):
    d = _gaussians(8)
    coeffs = torch.randn(8, 3, 15)  # [N, channel, coefficient]
    p = save_gaussian_ply(tmp_path / "sh.ply", **d, sh_rest=coeffs.reshape(8, 45))
    rest = reference_3dgs_load(p)["features_rest"]
    np.testing.assert_array_equal(rest, coeffs.numpy())
    coeffs1 = torch.randn(8, 3, 3)
    p1 = save_gaussian_ply(tmp_path / "sh1.ply", **d, sh_rest=coeffs1.reshape(8, 9))
    np.testing.assert_array_equal(reference_3dgs_load(p1, 1)["features_rest"], coeffs1.numpy())


def test_plyfile_reads_the_inria_layout(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    d = _gaussians()
    ply = plyfile.PlyData.read(str(save_gaussian_ply(tmp_path / "g.ply", **d)))
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == INRIA
    assert all(p.val_dtype in ("f4", "<f4", "float32") for p in vertex.properties)
    np.testing.assert_array_equal(vertex["opacity"], d["opacity_logits"].numpy())
    np.testing.assert_array_equal(vertex["y"], d["means"][:, 1].numpy())


# ----------------------------------------------------------------- splat-transform


def _splat_transform() -> str | None:
    exe = os.environ.get("GPHM_SPLAT_TRANSFORM") or shutil.which("splat-transform")
    if not exe or shutil.which("node") is None:
        return None
    return exe if os.path.isfile(exe) or shutil.which(exe) else None


SPLAT_TRANSFORM = _splat_transform()
needs_tool = pytest.mark.skipif(
    SPLAT_TRANSFORM is None,
    reason="splat-transform not found (set GPHM_SPLAT_TRANSFORM or put it on the PATH; "
    "npm install @playcanvas/splat-transform)",
)


def _convert(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([SPLAT_TRANSFORM, "-w", *map(str, args)], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    return r


@needs_tool
@pytest.mark.parametrize("degree", [3, 0])
def test_splat_transform_reads_and_rewrites_our_ply_exactly(tmp_path, degree):
    d = _gaussians()
    src = save_gaussian_ply(tmp_path / "ours.ply", **d, sh_degree=degree)
    info = _convert(src, "null")
    assert f"64 gaussians · {degree} SH bands" in info.stdout + info.stderr
    _convert(src, tmp_path / "theirs.ply")
    a, b = _read_vertex_numpy(src), _read_vertex_numpy(tmp_path / "theirs.ply")
    assert set(b.dtype.names) == set(a.dtype.names)  # same properties ...
    for name in a.dtype.names:  # ... and the same float32 values
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    if degree == 3:
        reference_3dgs_load(tmp_path / "theirs.ply")  # still what the reference loader wants
    _convert(src, tmp_path / "theirs.csv")
    c = np.genfromtxt(tmp_path / "theirs.csv", delimiter=",", names=True)
    for name in ("x", "z", "opacity", "scale_2", "rot_1", "f_dc_0"):
        np.testing.assert_allclose(c[name], a[name], rtol=1e-6, atol=1e-7, err_msg=name)


@needs_tool
def test_splat_transform_spz_round_trip_keeps_the_gaussians(tmp_path):
    """Through its compressed SPZ format and back: quantised, so values survive within
    the format's precision (positions 1e-3, alpha 0.01, rotations up to sign)."""
    d = _gaussians()
    src = save_gaussian_ply(tmp_path / "ours.ply", **d)
    _convert(src, tmp_path / "g.spz")
    _convert(tmp_path / "g.spz", tmp_path / "back.ply")
    a, b = _read_vertex_numpy(src), _read_vertex_numpy(tmp_path / "back.ply")
    assert len(b) == 64

    def cols(v, names):
        return np.stack([v[n].astype(np.float64) for n in names], axis=1)

    np.testing.assert_allclose(cols(b, "xyz"), cols(a, "xyz"), atol=1e-3)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(sig(b["opacity"]), sig(a["opacity"]), atol=0.01)
    np.testing.assert_allclose(cols(b, ["scale_0", "scale_1"]), cols(a, ["scale_0", "scale_1"]),
                               atol=0.05)  # fmt: skip
    qa, qb = cols(a, [f"rot_{i}" for i in range(4)]), cols(b, [f"rot_{i}" for i in range(4)])
    qb /= np.linalg.norm(qb, axis=1, keepdims=True)
    assert np.abs(np.abs((qa * qb).sum(1)) - 1).max() < 1e-3
