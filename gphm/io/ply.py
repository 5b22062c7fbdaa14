"""3D Gaussian splats as binary PLY, in the 3D Gaussian Splatting (INRIA "graphdeco") layout.

This is the layout written by the reference 3DGS code (``diff-gaussian-rasterization``) and
by the nerfstudio / gsplat exporters, and the one opened by common splat viewers
(SuperSplat, the antimatter15 splat viewer, ...)::

    ply
    format binary_little_endian 1.0
    element vertex N
    property float x            \\
    property float y             | centre (means)
    property float z            /
    property float nx           \\
    property float ny            | normals, always written as zeros (unused by viewers)
    property float nz           /
    property float f_dc_0       \\
    property float f_dc_1        | degree-0 spherical-harmonic (DC) colour coefficients, R G B
    property float f_dc_2       /
    property float f_rest_0     \\
    ...                          | higher-order SH coefficients, K = 3·((degree+1)² - 1):
    property float f_rest_{K-1} /   45 at SH degree 3 (the default), none at degree 0
    property float opacity        opacity LOGIT (viewers apply a sigmoid)
    property float scale_0      \\
    property float scale_1       | LOG scales (viewers apply exp), one per local axis
    property float scale_2      /
    property float rot_0        \\
    property float rot_1         | rotation quaternion in wxyz order (rot_0 = w),
    property float rot_2         | written normalised
    property float rot_3        /
    end_header
    <N records of float32, little endian, in the property order above>

Conventions:

* ``opacity`` is the logit: ``alpha = sigmoid(opacity)``.
* ``scale_*`` are natural-log scales: ``sigma = exp(scale)``.
* ``rot_*`` is a quaternion ``(w, x, y, z)``, scalar first (the convention of
  :mod:`gphm.geometry.rotations`).
* Colour is stored as the SH DC coefficient ``f_dc = (rgb - 0.5) / SH_C0`` with
  ``SH_C0 = 0.28209479177387814`` (the degree-0 real SH constant ``1 / (2 sqrt(pi))``), so
  a viewer reconstructs ``rgb = 0.5 + SH_C0 * f_dc`` (then clamps to [0, 1]).
* ``f_rest_*`` are written exactly as given in ``sh_rest`` [N, K], or as zeros when it is
  not given. The reference layout is channel-major: with ``M = (degree + 1)**2 - 1``
  coefficients per channel, K = 3 M and ``f_rest_{c * M + i}`` is coefficient ``i`` of
  channel ``c`` (all R coefficients, then G, then B: a [N, 3, M] array flattened; gsplat's
  ``shN`` [N, M, 3] must be transposed to [N, 3, M] first). This is what the reference
  ``save_ply`` writes (it transposes its [N, M, 3] ``features_rest`` to [N, 3, M] before
  flattening) and what its ``load_ply`` reads back (it reshapes to [N, 3, M]).
* SH degree: the reference loader *asserts* ``3·((D+1)² - 1)`` ``f_rest_*`` properties for
  its configured degree D (3 by default), so a degree-0 file without them is refused by
  it, and some engine importers also expect them. :func:`save_gaussian_ply` therefore
  writes degree 3 by default (45 zero ``f_rest_*`` when no ``sh_rest`` is given: they add
  nothing to the colour, which stays the DC term); ``sh_degree=0`` writes the 17-property
  file. Degrees above 3 are refused: no common renderer evaluates them.

Writing uses numpy only (header text + a structured array's bytes) and is atomic
(:func:`gphm.io.atomic.atomic_write_bytes`): an existing file is replaced only once the new
one is complete, and is left untouched if validation or writing fails.

Reading accepts any binary little-endian PLY whose ``vertex`` element has the required
properties (in any order, as ``float`` or ``double``); other properties and elements are
ignored, except ``f_rest_*`` which are collected in index order (any count: degree-0
files, degree-3 files and non-standard counts are all read; :attr:`GaussianPly.sh_degree`
says which degree the count means, None for a non-standard one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gphm.io.atomic import atomic_write_bytes

__all__ = [
    "SH_C0",
    "DEFAULT_SH_DEGREE",
    "MAX_SH_DEGREE",
    "GaussianPly",
    "save_gaussian_ply",
    "load_gaussian_ply",
    "sh_rest_count",
]

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical-harmonic constant ``1 / (2 sqrt(pi))``."""

DEFAULT_SH_DEGREE = 3
"""SH degree written when none is asked for: the reference 3DGS loader's default."""
MAX_SH_DEGREE = 3


def sh_rest_count(degree: int) -> int:
    """Number of ``f_rest_*`` properties at SH ``degree``: ``3·((degree + 1)² - 1)``
    (0, 9, 24, 45 for degrees 0-3)."""
    return 3 * ((degree + 1) ** 2 - 1)


_DEGREE_OF_COUNT = {sh_rest_count(d): d for d in range(MAX_SH_DEGREE + 1)}

_POSITION = ("x", "y", "z")
_NORMAL = ("nx", "ny", "nz")
_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_OPACITY = ("opacity",)
_SCALE = ("scale_0", "scale_1", "scale_2")
_ROT = ("rot_0", "rot_1", "rot_2", "rot_3")
_REQUIRED = _POSITION + _DC + _OPACITY + _SCALE + _ROT

# PLY scalar type names (both spellings) -> little-endian numpy dtype strings.
_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "<i2",
    "int16": "<i2",
    "ushort": "<u2",
    "uint16": "<u2",
    "int": "<i4",
    "int32": "<i4",
    "uint": "<u4",
    "uint32": "<u4",
    "float": "<f4",
    "float32": "<f4",
    "double": "<f8",
    "float64": "<f8",
}
_MAX_HEADER_LINES = 100_000
_MAX_LINE_BYTES = 4096
_F_REST = re.compile(r"f_rest_(\d+)")


@dataclass
class GaussianPly:
    """Gaussians read from a splat PLY file (all float32 CPU tensors)."""

    means: Tensor  # [N, 3] centres
    log_scales: Tensor  # [N, 3] natural-log scales
    quats: Tensor  # [N, 4] unit quaternions, wxyz
    opacity_logits: Tensor  # [N] opacity logits (alpha = sigmoid)
    rgb: Tensor  # [N, 3] 0.5 + SH_C0 * f_dc (not clamped)
    sh_rest: Tensor | None = None  # [N, K] f_rest_0..f_rest_{K-1}, or None when absent

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int | None:
        """The SH degree the ``f_rest_*`` count means (0 without any), None for a count
        that is no degree's ``3·((D+1)² - 1)``."""
        k = 0 if self.sh_rest is None else int(self.sh_rest.shape[1])
        return _DEGREE_OF_COUNT.get(k)


# --------------------------------------------------------------------------- writing


def _to_numpy(name: str, x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
        return x.to(torch.float64).numpy()
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _shape_str(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _check_shape(name: str, a: np.ndarray, n: int, width: int | None) -> None:
    """``a`` must be [n, width] (or [n] when ``width`` is None)."""
    if width is None:
        ok = a.ndim == 1 and a.shape[0] == n
        expected = "[N]"
    else:
        ok = a.ndim == 2 and a.shape[0] == n and a.shape[1] == width
        expected = f"[N, {width}]"
    if not ok:
        raise ValueError(f"{name}: expected {expected} with N={n}, got {_shape_str(a.shape)}")


def _check_finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN/inf, or too large for "
            f"float32), first at row {int(rows[0])} ({len(rows)} row(s) affected)"
        )


def _header(n: int, properties: list[str]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {p}" for p in properties]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def save_gaussian_ply(
    path: str | os.PathLike,
    means: Tensor | np.ndarray,  # [N, 3] centres
    log_scales: Tensor | np.ndarray,  # [N, 3] natural-log scales
    quats: Tensor | np.ndarray,  # [N, 4] wxyz, any non-zero norm (normalised on write)
    opacity_logits: Tensor | np.ndarray,  # [N] opacity logits
    rgb: Tensor | np.ndarray,  # [N, 3] colour, nominally in [0, 1]
    sh_rest: Tensor | np.ndarray | None = None,  # [N, K] higher-order SH (f_rest_*), or None
    sh_degree: int | None = None,
) -> Path:
    """Write Gaussians to ``path`` in the standard 3DGS binary PLY layout, atomically.

    Torch tensors (any device / float dtype) and numpy arrays are accepted; everything is
    written as float32. ``rgb`` is stored as the SH DC term ``(rgb - 0.5) / SH_C0`` (values
    outside [0, 1] are kept as they are); ``quats`` are normalised; normals are zeros.
    Parent directories are created. Returns the path written.

    ``sh_degree`` (0-3) sets how many ``f_rest_*`` are written, ``K = 3·((D+1)² - 1)``;
    ``sh_rest`` [N, K] gives their values in the channel-major order of the module
    docstring, zeros when None. By default the degree is the one ``sh_rest``'s width means,
    or :data:`DEFAULT_SH_DEGREE` (3) without ``sh_rest``; ``sh_degree=0`` writes no
    ``f_rest_*`` (the small file the reference loader refuses at its default degree).

    Raises ``ValueError`` (naming the argument) for a wrong shape, an ``sh_rest`` width that
    is no degree's (or not ``sh_degree``'s), an unsupported ``sh_degree``, a non-finite
    value (also after the float32 cast) or a zero-norm quaternion; nothing is written in
    that case.
    """
    path = Path(path)
    m = _to_numpy("means", means)
    if m.ndim != 2 or m.shape[1] != 3:
        raise ValueError(f"means: expected [N, 3], got {_shape_str(m.shape)}")
    n = m.shape[0]
    s = _to_numpy("log_scales", log_scales)
    _check_shape("log_scales", s, n, 3)
    q = _to_numpy("quats", quats)
    _check_shape("quats", q, n, 4)
    o = _to_numpy("opacity_logits", opacity_logits)
    _check_shape("opacity_logits", o, n, None)
    c = _to_numpy("rgb", rgb)
    _check_shape("rgb", c, n, 3)
    if sh_degree is not None and (
        isinstance(sh_degree, bool)
        or not isinstance(sh_degree, (int, np.integer))
        or not 0 <= sh_degree <= MAX_SH_DEGREE
    ):
        raise ValueError(f"sh_degree: expected an integer in 0..{MAX_SH_DEGREE}, got {sh_degree!r}")
    r = None
    if sh_rest is not None:
        r = _to_numpy("sh_rest", sh_rest)
        if r.ndim != 2 or r.shape[0] != n:
            raise ValueError(f"sh_rest: expected [N, K] with N={n}, got {_shape_str(r.shape)}")
        k = r.shape[1]
        if sh_degree is None and k not in _DEGREE_OF_COUNT:
            counts = ", ".join(f"{c} (degree {d})" for c, d in _DEGREE_OF_COUNT.items())
            raise ValueError(
                f"sh_rest: expected K = 3·((degree+1)² - 1) columns, one of {counts}; got {k}"
            )
        if sh_degree is not None and k != sh_rest_count(sh_degree):
            raise ValueError(
                f"sh_rest: expected [N, {sh_rest_count(sh_degree)}] for sh_degree={sh_degree}, "
                f"got {_shape_str(r.shape)}"
            )
        if k == 0:
            r = None
    elif sh_degree is None or sh_degree > 0:
        # Zeros: no view-dependent colour, but the properties the reference loader expects.
        r = np.zeros((n, sh_rest_count(DEFAULT_SH_DEGREE if sh_degree is None else sh_degree)))

    # Validate the float32 values that will actually be stored (overflow -> inf -> error).
    with np.errstate(over="ignore", invalid="ignore"):
        for name, a in (("means", m), ("log_scales", s), ("quats", q), ("opacity_logits", o)):
            _check_finite(name, a.astype(np.float32))
        _check_finite("rgb", c)
        f_dc = ((c - 0.5) / SH_C0).astype(np.float32)
        _check_finite("rgb", f_dc)
        if r is not None:
            _check_finite("sh_rest", r.astype(np.float32))

    norm = np.linalg.norm(q, axis=1)
    zero = np.nonzero(~(norm > 0))[0]
    if len(zero):
        raise ValueError(f"quats: {len(zero)} zero-norm quaternion(s), first at row {int(zero[0])}")
    q_unit = (q / norm[:, None]).astype(np.float32)

    k = 0 if r is None else r.shape[1]
    properties = [
        *_POSITION,
        *_NORMAL,
        *_DC,
        *(f"f_rest_{i}" for i in range(k)),
        *_OPACITY,
        *_SCALE,
        *_ROT,
    ]
    columns = [m, np.zeros((n, 3)), f_dc]
    if r is not None:
        columns.append(r)
    columns += [o[:, None], s, q_unit]
    data = np.concatenate(columns, axis=1).astype("<f4", copy=False)
    assert data.shape == (n, len(properties))
    record = np.dtype([(p, "<f4") for p in properties])
    body = np.ascontiguousarray(data).view(record).reshape(n)
    return atomic_write_bytes(path, _header(n, properties) + body.tobytes())


# --------------------------------------------------------------------------- reading


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy dtype), scalar properties only
    has_list: bool = False


def _parse_header(path: Path, f) -> tuple[list[_Element], int]:
    """Parse the header from the binary file object ``f``; returns (elements, data offset)."""
    first = f.readline(_MAX_LINE_BYTES)
    if first.rstrip(b"\r\n") != b"ply":
        raise ValueError(f"{path}: not a PLY file (it does not start with a 'ply' line)")
    elements: list[_Element] = []
    fmt = None
    for _ in range(_MAX_HEADER_LINES):
        raw = f.readline(_MAX_LINE_BYTES)
        if not raw:
            raise ValueError(f"{path}: truncated PLY header (no 'end_header' line)")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: PLY header contains non-ASCII bytes") from None
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) != 3:
                raise ValueError(f"{path}: malformed PLY format line {line!r}")
            fmt = (words[1], words[2])
            if words[1] != "binary_little_endian":
                kind = "ASCII" if words[1] == "ascii" else repr(words[1])
                raise ValueError(
                    f"{path}: {kind} PLY is not supported; Gaussian splat PLY files must be "
                    "'format binary_little_endian 1.0'"
                )
            if words[2] != "1.0":
                raise ValueError(f"{path}: unsupported PLY version {words[2]!r} (expected 1.0)")
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{path}: malformed PLY element line {line!r}")
            elements.append(_Element(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property {line!r} appears before any element")
            el = elements[-1]
            if len(words) >= 2 and words[1] == "list":
                if len(words) != 5:
                    raise ValueError(f"{path}: malformed PLY property line {line!r}")
                el.has_list = True
                continue
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: malformed PLY property line {line!r}")
            if any(p == words[2] for p, _ in el.properties):
                raise ValueError(f"{path}: duplicate property {words[2]!r} in element {el.name!r}")
            el.properties.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise ValueError(f"{path}: unexpected PLY header line {line!r}")
    else:
        raise ValueError(f"{path}: PLY header too long (no 'end_header' line)")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return elements, f.tell()


def load_gaussian_ply(path: str | os.PathLike) -> GaussianPly:
    """Read Gaussians from a 3DGS-layout binary PLY (see the module docstring).

    Property order is free and extra properties/elements are ignored; ``f_rest_*`` are
    collected in index order into ``sh_rest`` (None when there are none). Quaternions are
    normalised (the reference 3DGS code stores them unnormalised); ``rgb`` is
    ``0.5 + SH_C0 * f_dc``, not clamped.

    Raises ``ValueError`` naming the file for anything that is not such a PLY: not a PLY,
    ASCII / big-endian PLY, no ``vertex`` element, a missing or non-float required
    property, truncated data, or a zero-norm quaternion.
    """
    path = Path(path)
    with open(path, "rb") as f:
        elements, offset = _parse_header(path, f)
        size = os.fstat(f.fileno()).st_size

        vertex = None
        for el in elements:
            if el.name == "vertex":
                vertex = el
                break
            # Skip the data of elements stored before the vertex element.
            if el.has_list:
                raise ValueError(
                    f"{path}: element {el.name!r} (with list properties) precedes the vertex "
                    "element; this is not supported"
                )
            offset += el.count * np.dtype(el.properties).itemsize
        if vertex is None:
            raise ValueError(f"{path}: PLY file has no 'vertex' element")
        if vertex.has_list:
            raise ValueError(f"{path}: the vertex element has list properties; not supported")

        types = dict(vertex.properties)
        missing = [p for p in _REQUIRED if p not in types]
        if missing:
            raise ValueError(
                f"{path}: not a Gaussian splat PLY, vertex element lacks propert"
                f"{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}"
            )
        rest = sorted(
            ((int(mt.group(1)), p) for p in types if (mt := _F_REST.fullmatch(p))),
        )
        if [i for i, _ in rest] != list(range(len(rest))):
            raise ValueError(
                f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1} without gaps"
            )
        for p in (*_REQUIRED, *(p for _, p in rest)):
            if types[p] not in ("<f4", "<f8"):
                raise ValueError(
                    f"{path}: property {p!r} must be float or double, got {types[p]!r}"
                )

        record = np.dtype(vertex.properties)
        n = vertex.count
        need = n * record.itemsize
        available = max(size - offset, 0)
        if available < need:
            raise ValueError(
                f"{path}: truncated PLY data: {n} vertices of {record.itemsize} bytes need "
                f"{need} bytes after the header, file has {available}"
            )
        f.seek(offset)
        data = np.frombuffer(f.read(need), dtype=record, count=n)

    def cols(names) -> np.ndarray:
        return np.stack([data[p].astype(np.float64) for p in names], axis=1)

    q = cols(_ROT)
    norm = np.linalg.norm(q, axis=1)
    zero = np.nonzero(norm == 0)[0]
    if len(zero):
        raise ValueError(
            f"{path}: {len(zero)} zero-norm quaternion(s) (rot_0..rot_3), first at vertex "
            f"{int(zero[0])}"
        )

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    with np.errstate(invalid="ignore"):
        q_unit = q / norm[:, None]
    return GaussianPly(
        means=t(cols(_POSITION)),
        log_scales=t(cols(_SCALE)),
        quats=t(q_unit),
        opacity_logits=t(cols(_OPACITY)[:, 0]),
        rgb=t(0.5 + SH_C0 * cols(_DC)),
        sh_rest=t(cols([p for _, p in rest])) if rest else None,
    )
