from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import trimesh

from gphm.io.ply import (
    SH_C0,
    GaussianPly,
    load_gaussian_ply,
    save_gaussian_ply,
    sh_rest_count,
)

STANDARD = [
    *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
    *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
]
"""The degree-0 layout (``sh_degree=0``)."""
DEGREE3 = [*STANDARD[:9], *(f"f_rest_{i}" for i in range(45)), *STANDARD[9:]]
"""The default layout: the INRIA order with 45 higher-order SH coefficients."""


def _random(n: int = 100, k: int | None = None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = dict(
        means=torch.randn(n, 3, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 4.0,
        quats=torch.randn(n, 4, generator=g) * 3.0,
        opacity_logits=torch.randn(n, generator=g),
        rgb=torch.rand(n, 3, generator=g),
    )
    if k is not None:
        out["sh_rest"] = torch.randn(n, k, generator=g)
    return out


def _split(raw: bytes) -> tuple[list[str], bytes]:
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end].decode("ascii").splitlines(), raw[end:]


def _write_ply(path, fields: list[tuple[str, str]], data: dict, fmt="binary_little_endian"):
    """Hand-written PLY with the given (name, ply type) vertex properties, for reader tests."""
    n = len(next(iter(data.values())))
    np_types = {"float": "<f4", "double": "<f8", "uchar": "u1"}
    header = [f"ply\nformat {fmt} 1.0\ncomment hand made\nelement vertex {n}\n"]
    header += [f"property {t} {name}\n" for name, t in fields]
    header.append("end_header\n")
    rec = np.zeros(n, dtype=[(name, np_types[t]) for name, t in fields])
    for name, _ in fields:
        rec[name] = data[name]
    with open(path, "wb") as f:
        f.write("".join(header).encode("ascii") + rec.tobytes())


def test_round_trip_random(tmp_path):
    d = _random(100)
    p = save_gaussian_ply(tmp_path / "sub" / "g.ply", **d)
    assert p == tmp_path / "sub" / "g.ply"
    g = load_gaussian_ply(p)
    assert isinstance(g, GaussianPly) and len(g) == 100 and g.sh_degree == 3
    assert torch.equal(g.sh_rest, torch.zeros(100, 45))  # degree 3 by default, zeros
    for name in ("means", "log_scales", "quats", "opacity_logits", "rgb"):
        assert getattr(g, name).dtype == torch.float32
    assert g.means.shape == (100, 3) and g.quats.shape == (100, 4)
    assert g.opacity_logits.shape == (100,)
    torch.testing.assert_close(g.means, d["means"], rtol=0, atol=0)
    torch.testing.assert_close(g.log_scales, d["log_scales"], rtol=0, atol=0)
    torch.testing.assert_close(g.opacity_logits, d["opacity_logits"], rtol=0, atol=0)
    torch.testing.assert_close(g.rgb, d["rgb"], rtol=0, atol=1e-6)  # via SH DC
    # Quaternions come back unit-norm and equal to the input up to scale.
    torch.testing.assert_close(g.quats.norm(dim=1), torch.ones(100), rtol=0, atol=1e-6)
    expected = d["quats"] / d["quats"].norm(dim=1, keepdim=True)
    torch.testing.assert_close(g.quats, expected, rtol=0, atol=1e-6)
    assert sorted(os.listdir(p.parent)) == ["g.ply"]  # no temp file left behind


def test_numpy_and_float64_inputs(tmp_path):
    d = {k: v.double().numpy() for k, v in _random(7).items()}
    g = load_gaussian_ply(save_gaussian_ply(tmp_path / "g.ply", **d))
    np.testing.assert_allclose(g.means.numpy(), d["means"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g.rgb.numpy(), d["rgb"], atol=1e-6)


def test_header_is_the_standard_layout(tmp_path):
    p = save_gaussian_ply(tmp_path / "g.ply", **_random(10), sh_degree=0)
    lines, body = _split(p.read_bytes())
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 10"]
    assert lines[3:-1] == [f"property float {name}" for name in STANDARD]
    assert lines[-1] == "end_header"
    assert len(body) == 10 * len(STANDARD) * 4
    rec = np.frombuffer(body, dtype=[(name, "<f4") for name in STANDARD])
    assert np.all(rec["nx"] == 0) and np.all(rec["ny"] == 0) and np.all(rec["nz"] == 0)


def test_header_with_f_rest(tmp_path):
    p = save_gaussian_ply(tmp_path / "g.ply", **_random(4, k=45))
    lines, body = _split(p.read_bytes())
    names = [line.split()[-1] for line in lines if line.startswith("property float ")]
    assert names == DEGREE3
    assert len(body) == 4 * len(DEGREE3) * 4


def test_default_is_degree_3_with_zero_f_rest_in_the_inria_order(tmp_path):
    d = _random(6)
    p = save_gaussian_ply(tmp_path / "g.ply", **d)
    lines, body = _split(p.read_bytes())
    assert lines[3:-1] == [f"property float {name}" for name in DEGREE3]
    rec = np.frombuffer(body, dtype=[(name, "<f4") for name in DEGREE3])
    assert all(np.all(rec[f"f_rest_{i}"] == 0) for i in range(45))
    np.testing.assert_array_equal(rec["opacity"], d["opacity_logits"].numpy())
    q = (d["quats"] / d["quats"].norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(rec["rot_3"], q[:, 3], atol=1e-6)
    # The degree-0 file holds the same Gaussians in 17 instead of 62 floats per splat.
    small = save_gaussian_ply(tmp_path / "g0.ply", **d, sh_degree=0)
    assert small.stat().st_size < p.stat().st_size
    a, b = load_gaussian_ply(p), load_gaussian_ply(small)
    assert b.sh_rest is None and b.sh_degree == 0
    for name in ("means", "log_scales", "quats", "opacity_logits", "rgb"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_degree_sets_the_f_rest_count(tmp_path, degree):
    assert sh_rest_count(degree) == [0, 9, 24, 45][degree]
    g = load_gaussian_ply(save_gaussian_ply(tmp_path / "g.ply", **_random(5), sh_degree=degree))
    assert g.sh_degree == degree
    assert (0 if g.sh_rest is None else g.sh_rest.shape[1]) == sh_rest_count(degree)


def test_f_rest_is_written_channel_major(tmp_path):
    """``sh_rest`` is a [N, 3, M] array (channel, coefficient) flattened: f_rest_{c*M+i}."""
    n, m = 4, 15
    coeffs = torch.arange(n * 3 * m, dtype=torch.float32).reshape(n, 3, m)
    p = save_gaussian_ply(tmp_path / "g.ply", **_random(n), sh_rest=coeffs.reshape(n, 3 * m))
    _, body = _split(p.read_bytes())
    rec = np.frombuffer(body, dtype=[(name, "<f4") for name in DEGREE3])
    for c in range(3):
        for i in (0, 7, 14):
            np.testing.assert_array_equal(rec[f"f_rest_{c * m + i}"], coeffs[:, c, i].numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sh_degree": 4}, r"sh_degree: expected an integer in 0\.\.3, got 4"),
        ({"sh_degree": -1}, r"sh_degree: expected an integer in 0\.\.3, got -1"),
        ({"sh_degree": True}, r"sh_degree: expected an integer in 0\.\.3, got True"),
        ({"sh_degree": 1.0}, r"sh_degree: expected an integer in 0\.\.3, got 1\.0"),
        ({"sh_rest": torch.zeros(5, 3)},
         r"sh_rest: expected K = .* one of 0 \(degree 0\), 9 \(degree 1\), 24 \(degree 2\), "
         r"45 \(degree 3\); got 3"),
        ({"sh_rest": torch.zeros(5, 9), "sh_degree": 3},
         r"sh_rest: expected \[N, 45\] for sh_degree=3, got \[5, 9\]"),
        ({"sh_rest": torch.zeros(5, 45), "sh_degree": 0},
         r"sh_rest: expected \[N, 0\] for sh_degree=0, got \[5, 45\]"),
    ],
)  # fmt: skip
def test_bad_sh_degree_or_width_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_gaussian_ply(tmp_path / "g.ply", **(_random(5) | kwargs))
    assert not (tmp_path / "g.ply").exists()


def test_reader_reads_a_non_standard_f_rest_count(tmp_path):
    """Files of other writers may hold any count: read, with ``sh_degree`` None."""
    data = {name: np.ones(2) for name in STANDARD} | {
        f"f_rest_{i}": np.full(2, i) for i in range(3)
    }
    p = tmp_path / "odd.ply"
    _write_ply(p, [(name, "float") for name in data], data)
    g = load_gaussian_ply(p)
    assert g.sh_degree is None and g.sh_rest.tolist() == [[0.0, 1.0, 2.0]] * 2


def test_raw_values_follow_conventions(tmp_path):
    d = _random(6)
    d["rgb"][0] = 0.5
    d["rgb"][1] = torch.tensor([0.0, 1.0, 0.25])
    p = save_gaussian_ply(tmp_path / "g.ply", **d, sh_degree=0)
    _, body = _split(p.read_bytes())
    rec = np.frombuffer(body, dtype=[(name, "<f4") for name in STANDARD])
    f_dc = np.stack([rec[f"f_dc_{i}"] for i in range(3)], axis=1)
    assert np.all(f_dc[0] == 0.0)  # rgb = 0.5 -> f_dc exactly 0
    np.testing.assert_allclose(f_dc[1], (np.array([0.0, 1.0, 0.25]) - 0.5) / SH_C0, rtol=1e-6)
    np.testing.assert_allclose(0.5 + SH_C0 * f_dc, d["rgb"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(rec["opacity"], d["opacity_logits"].numpy())  # logit as is
    np.testing.assert_array_equal(rec["scale_1"], d["log_scales"][:, 1].numpy())  # log as is
    q = np.stack([rec[f"rot_{i}"] for i in range(4)], axis=1)  # rot_0 = w
    expected = (d["quats"] / d["quats"].norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(q, expected, atol=1e-6)


def test_f_rest_round_trip(tmp_path):
    d = _random(20, k=9)
    g = load_gaussian_ply(save_gaussian_ply(tmp_path / "g.ply", **d))
    assert g.sh_rest is not None and g.sh_rest.dtype == torch.float32
    torch.testing.assert_close(g.sh_rest, d["sh_rest"], rtol=0, atol=0)
    torch.testing.assert_close(g.means, d["means"], rtol=0, atol=0)


def test_readable_by_trimesh(tmp_path):
    d = _random(30, k=9)
    p = save_gaussian_ply(tmp_path / "g.ply", **d)
    cloud = trimesh.load(p, process=False)
    assert isinstance(cloud, trimesh.PointCloud)
    np.testing.assert_array_equal(np.asarray(cloud.vertices, dtype=np.float32), d["means"].numpy())
    vertex = cloud.metadata["_ply_raw"]["vertex"]["data"]
    assert list(vertex.dtype.names) == [
        *STANDARD[:9],
        *(f"f_rest_{i}" for i in range(9)),
        *STANDARD[9:],
    ]
    np.testing.assert_array_equal(vertex["opacity"].ravel(), d["opacity_logits"].numpy())


def test_empty_round_trip(tmp_path):
    z = {k: v[:0] for k, v in _random(3).items()}
    g = load_gaussian_ply(save_gaussian_ply(tmp_path / "g.ply", **z))
    assert len(g) == 0 and g.means.shape == (0, 3) and g.opacity_logits.shape == (0,)


def test_reader_accepts_any_order_extra_properties_and_doubles(tmp_path):
    n = 5
    rng = np.random.default_rng(1)
    data = {name: rng.normal(size=n) for name in STANDARD}
    data.update({f"f_rest_{i}": rng.normal(size=n) for i in range(3)})
    data["red"] = rng.integers(0, 255, size=n)
    data["rot_0"] *= 10.0  # unnormalised, as the reference 3DGS code writes them
    names = [*data]
    rng.shuffle(names)
    fields = [
        (name, "uchar" if name == "red" else "double" if i % 2 else "float")
        for i, name in enumerate(names)
    ]
    types = dict(fields)
    p = tmp_path / "any.ply"
    _write_ply(p, fields, data)
    g = load_gaussian_ply(p)

    def stored(name):
        return data[name].astype(np.float32 if types[name] == "float" else np.float64)

    np.testing.assert_allclose(g.means.numpy(), np.stack([stored(c) for c in "xyz"], 1), atol=0)
    rest = np.stack([stored(f"f_rest_{i}") for i in range(3)], 1)
    np.testing.assert_allclose(g.sh_rest.numpy(), rest, rtol=1e-6)
    q = np.stack([stored(f"rot_{i}") for i in range(4)], 1)
    np.testing.assert_allclose(
        g.quats.numpy(), q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6
    )
    dc = np.stack([stored(f"f_dc_{i}") for i in range(3)], 1)
    np.testing.assert_allclose(g.rgb.numpy(), 0.5 + SH_C0 * dc, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("means", torch.zeros(10, 2), r"means: expected \[N, 3\], got \[10, 2\]"),
        (
            "log_scales",
            torch.zeros(10, 2),
            r"log_scales: expected \[N, 3\] with N=10, got \[10, 2\]",
        ),
        ("quats", torch.ones(10, 3), r"quats: expected \[N, 4\] with N=10, got \[10, 3\]"),
        (
            "opacity_logits",
            torch.zeros(10, 1),
            r"opacity_logits: expected \[N\] with N=10, got \[10, 1\]",
        ),
        ("rgb", torch.zeros(9, 3), r"rgb: expected \[N, 3\] with N=10, got \[9, 3\]"),
        ("sh_rest", torch.zeros(10), r"sh_rest: expected \[N, K\] with N=10, got \[10\]"),
    ],
)
def test_wrong_shapes_raise(tmp_path, name, bad, message):
    d = _random(10)
    d[name] = bad
    with pytest.raises(ValueError, match=message):
        save_gaussian_ply(tmp_path / "g.ply", **d)
    assert not (tmp_path / "g.ply").exists()


@pytest.mark.parametrize(
    "name", ["means", "log_scales", "quats", "opacity_logits", "rgb", "sh_rest"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39])  # 1e39 overflows float32
def test_non_finite_values_raise(tmp_path, name, value):
    d = _random(10, k=9)
    d = {k: v.double() for k, v in d.items()}
    d[name].view(-1)[7] = value
    with pytest.raises(ValueError, match=rf"^{name}: .*non-finite"):
        save_gaussian_ply(tmp_path / "g.ply", **d)
    assert os.listdir(tmp_path) == []


def test_zero_quaternion_raises(tmp_path):
    d = _random(10)
    d["quats"][3] = 0.0
    with pytest.raises(ValueError, match="quats: 1 zero-norm quaternion.*row 3"):
        save_gaussian_ply(tmp_path / "g.ply", **d)


def test_failed_overwrite_keeps_old_file(tmp_path):
    p = save_gaussian_ply(tmp_path / "g.ply", **_random(10, seed=1))
    before = p.read_bytes()
    d = _random(20, seed=2)
    d["rgb"][5, 1] = float("nan")
    with pytest.raises(ValueError, match="rgb"):
        save_gaussian_ply(p, **d)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["g.ply"]
    # A successful overwrite replaces it.
    save_gaussian_ply(p, **_random(20, seed=2))
    assert len(load_gaussian_ply(p)) == 20


def test_not_a_ply_raises(tmp_path):
    p = tmp_path / "notes.ply"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=r"notes\.ply: not a PLY file"):
        load_gaussian_ply(p)


def test_ascii_ply_raises(tmp_path):
    p = tmp_path / "ascii.ply"
    header = "ply\nformat ascii 1.0\nelement vertex 1\n"
    header += "".join(f"property float {name}\n" for name in STANDARD) + "end_header\n"
    p.write_text(header + " ".join(["0"] * len(STANDARD)) + "\n")
    with pytest.raises(ValueError, match=r"ascii\.ply: ASCII PLY is not supported"):
        load_gaussian_ply(p)


def test_big_endian_ply_raises(tmp_path):
    p = tmp_path / "be.ply"
    data = {name: np.zeros(2) for name in STANDARD}
    _write_ply(p, [(name, "float") for name in STANDARD], data, fmt="binary_big_endian")
    with pytest.raises(ValueError, match=r"be\.ply: 'binary_big_endian' PLY is not supported"):
        load_gaussian_ply(p)


def test_truncated_file_raises(tmp_path):
    p = save_gaussian_ply(tmp_path / "g.ply", **_random(10))
    raw = p.read_bytes()
    p.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"g\.ply: truncated PLY data"):
        load_gaussian_ply(p)
    header_only = raw[: raw.index(b"end_header")]
    p.write_bytes(header_only)
    with pytest.raises(ValueError, match=r"g\.ply: truncated PLY header"):
        load_gaussian_ply(p)


def test_missing_property_raises(tmp_path):
    p = tmp_path / "mesh.ply"
    names = [name for name in STANDARD if name not in ("opacity", "rot_3")]
    _write_ply(p, [(name, "float") for name in names], {name: np.ones(3) for name in names})
    with pytest.raises(ValueError, match=r"mesh\.ply: .*lacks properties opacity, rot_3"):
        load_gaussian_ply(p)


def test_plain_mesh_ply_raises(tmp_path):
    p = tmp_path / "tri.ply"
    mesh = trimesh.Trimesh(vertices=np.eye(3), faces=[[0, 1, 2]], process=False)
    p.write_bytes(mesh.export(file_type="ply"))
    with pytest.raises(ValueError, match=r"tri\.ply: .*lacks properties"):
        load_gaussian_ply(p)
