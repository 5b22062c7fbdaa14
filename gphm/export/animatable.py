"""Animatable export of one identity: PLYs per expression plus a linear expression basis.

::

    DIR/neutral.ply                 the identity at the neutral expression
    DIR/expressions/<label>.ply     one per trained expression label
    DIR/blendshapes.npz             neutral_* [N, ...], basis_* [K, N, ...], weights [E, K]
    DIR/blendshapes.json            names, shapes, units, conventions, weights per label,
                                    singular values and the fidelity curve
    DIR/export_report.json          what was exported from what (ExportReport)
    DIR/fidelity.png                when fidelity is measured: one row per expression,
                                    model render | its PLY splat | the K-component blend

All PLYs are in the standard 3DGS layout (:mod:`gphm.io.ply`) in the model's canonical
head space (+x the head's left, +y up, +z out of the face; the head spans about ±0.9),
at the canonical pose; ``up="-y"`` turns that space half a turn about x for viewers made
for y-down 3DGS captures (:mod:`gphm.export.axes`; PLYs and basis alike). Their colour
is the Gaussians' own RGB (the first three of the model's feature channels), which is
what an engine splats; the model's own render splats all feature channels and passes them
through the Ψ upsampler, which an engine cannot run, so an exported head looks flatter
than the model's render. The fidelity report says by how much.

The directory is written atomically (built beside ``DIR`` and swapped in): a failed
export leaves nothing, or the previous export, behind. An existing non-empty ``DIR`` is
replaced only with ``overwrite=True``, and only if it holds an earlier export
(``blendshapes.json``), so that a mistyped path never deletes anything else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.export.axes import DEFAULT_UP, check_up, turn_means, turn_quats, up_description
from gphm.export.blendshapes import (
    ATTRIBUTE_WIDTHS,
    ATTRIBUTES,
    ExpressionBasis,
    SplatAttributes,
    fit_expression_basis,
)
from gphm.export.fidelity import FidelityOptions, FidelityReport, measure_fidelity, set_target
from gphm.io.atomic import atomic_directory
from gphm.io.images import image_grid, save_png
from gphm.io.npz import load_npz
from gphm.io.ply import MAX_SH_DEGREE, SH_C0, save_gaussian_ply
from gphm.models.gaussian_head import GaussianHead

__all__ = [
    "ExportReport",
    "ExportExistsError",
    "export_animatable",
    "load_expression_basis",
    "save_splat_ply",
    "BASIS_FORMAT",
    "BASIS_FORMAT_VERSION",
]

BASIS_FORMAT = "gphm-blendshapes"
BASIS_FORMAT_VERSION = 1
MARKER = "blendshapes.json"

_UNITS = {
    "means": "canonical head units (the head spans about ±0.9)",
    "f_dc": "SH DC coefficient (rgb = 0.5 + SH_C0 * f_dc, SH_C0 = 0.28209479177387814)",
    "log_scales": "natural log of canonical head units (sigma = exp(log_scale))",
    "quats": "unit quaternion wxyz (rot_0 = w), renormalised after blending",
    "opacity_logits": "logit (alpha = sigmoid(opacity))",
}
_PLY_NAMES = {
    "means": "x y z", "f_dc": "f_dc_0..2", "log_scales": "scale_0..2", "quats": "rot_0..3",
    "opacity_logits": "opacity",
}  # fmt: skip


class ExportExistsError(FileExistsError, ValueError):
    """``out`` exists and may not be replaced (a ``ValueError`` too: CLIs print it as one
    line)."""


@dataclass
class ExportReport:
    """What :func:`export_animatable` wrote (also ``DIR/export_report.json``)."""

    out_dir: str
    num_gaussians: int
    sh_degree: int
    neutral: str
    labels: list[str]
    """Every exported expression label (the neutral one included)."""
    files: dict[str, Any]
    """``{"neutral": "neutral.ply", "expressions": {label: "expressions/<label>.ply"}}``
    (and ``"fidelity_preview": "fidelity.png"`` when measured), relative to ``out_dir``."""
    num_components: int
    """Components stored in ``blendshapes.npz``: min(requested, rank)."""
    requested_components: int
    rank: int
    """Rank of the normalised delta matrix: the components that reproduce every label."""
    fidelity: FidelityReport | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance given by the caller (identity, the frames each label was taken from)."""
    up: str = DEFAULT_UP
    """Up axis of the written files: "+y" (gphm's canonical space) or "-y" (turned half a
    turn about x, the y-down convention of 3DGS captures; :mod:`gphm.export.axes`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _file_names(labels: list[str]) -> dict[str, str]:
    """``expressions/<label>.ply`` with characters outside ``[A-Za-z0-9._-]`` replaced by
    ``_``; refuses labels that would collide or be hidden files."""
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", label)
        if not stem or stem.startswith("."):
            stem = "_" + stem
        if stem.lower() in seen:
            raise ValueError(
                f"expression labels {seen[stem.lower()]!r} and {label!r} map to the same "
                f"file expressions/{stem}.ply"
            )
        seen[stem.lower()] = label
        names[label] = f"expressions/{stem}.ply"
    return names


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportExistsError(f"out={out} is a file; expected a directory to export into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportExistsError(
                f"out={out} is not empty; pass overwrite=true to replace an earlier export"
            )
        if not (out / MARKER).is_file():
            raise ExportExistsError(
                f"out={out} is not empty and holds no earlier export ({MARKER}); an export "
                "replaces the whole directory, so choose a new or empty one"
            )


_TURN = {"means": turn_means, "quats": turn_quats}  # the attributes that ``up`` changes


def _turned(name: str, x: Tensor, up: str) -> Tensor:
    return _TURN[name](x, up) if name in _TURN else x


def save_splat_ply(
    path: str | Path, a: SplatAttributes, sh_degree: int = 3, up: str = DEFAULT_UP
) -> Path:
    """Write one expression's Gaussians (canonical space) as the 3DGS PLY of an export:
    turned to ``up`` (:mod:`gphm.export.axes`), zero ``f_rest_*`` up to ``sh_degree``.
    Every PLY of :func:`export_animatable` is written by it."""
    return save_gaussian_ply(path, turn_means(a.means, check_up(up)), a.log_scales,
                             turn_quats(a.quats, up), a.opacity_logits, a.rgb,
                             sh_degree=sh_degree)  # fmt: skip


def _arrays(basis: ExpressionBasis, up: str = DEFAULT_UP) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in ATTRIBUTES:
        neutral, component = getattr(basis.neutral, name), basis.component(name)
        out[f"neutral_{name}"] = _turned(name, neutral, up).numpy().astype("<f4")
        out[f"basis_{name}"] = _turned(name, component, up).numpy().astype("<f4")
    out["weights"] = basis.weights.numpy().astype("<f4")
    out["labels"] = np.array(basis.labels, dtype=np.str_)
    out["singular_values"] = basis.singular_values.numpy().astype("<f4")
    out["attribute_scales"] = np.array([basis.attribute_scales[a] for a in ATTRIBUTES], "<f4")
    return out


def _describe(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = {}
    for key, a in arrays.items():
        dtype = a.dtype.name if a.dtype.kind == "f" else a.dtype.str  # float32 | <U12
        entry: dict[str, Any] = {"shape": list(a.shape), "dtype": dtype}
        kind, _, name = key.partition("_")
        if kind in ("neutral", "basis") and name in _UNITS:
            entry["units"] = _UNITS[name]
            entry["ply"] = _PLY_NAMES[name]
            entry["meaning"] = (
                "the neutral expression's Gaussians (as in neutral.ply)" if kind == "neutral"
                else "K delta components (neutral + sum_k w_k basis_k), same units"
            )  # fmt: skip
        info[key] = entry
    info["weights"]["meaning"] = "[E, K]: the weights that reproduce each label (row = labels)"
    info["labels"]["meaning"] = "[E]: expression labels, the row order of weights"
    info["singular_values"]["meaning"] = (
        "[R]: all non-zero singular values of the normalised delta matrix (R = rank)"
    )
    info["attribute_scales"]["meaning"] = (
        "[5]: RMS delta per attribute (means, f_dc, log_scales, quats, opacity_logits) "
        "that the deltas were divided by before the SVD"
    )
    return info


def _basis_json(
    basis: ExpressionBasis,
    arrays: dict[str, np.ndarray],
    neutral: str,
    files: dict[str, str],
    requested: int,
    fidelity: FidelityReport | None,
    up: str = DEFAULT_UP,
) -> dict[str, Any]:
    s2 = basis.singular_values.double().square()
    explained = (s2.cumsum(0) / s2.sum()).tolist() if s2.numel() else []
    return {
        "format": BASIS_FORMAT,
        "format_version": BASIS_FORMAT_VERSION,
        "num_gaussians": len(basis.neutral),
        "num_components": basis.num_components,
        "requested_components": requested,
        "rank": basis.rank,
        "neutral": neutral,
        "labels": list(basis.labels),
        "weights": {lbl: basis.weights[i].tolist() for i, lbl in enumerate(basis.labels)},
        "files": {"neutral": "neutral.ply", "expressions": files},
        "arrays": _describe(arrays),
        "blend": (
            "for each attribute X: X = neutral_X + sum_k w[k] * basis_X[k]; then quats /= "
            "|quats|; rgb = 0.5 + SH_C0 * f_dc; alpha = sigmoid(opacity_logits); scale = "
            "exp(log_scales). weights[label] reproduces expressions/<label>.ply (exactly "
            "when num_components == rank); all weights 0 is neutral.ply"
        ),
        "conventions": {
            "up": up,
            "space": up_description(up),
            "colour": "the PLYs and f_dc hold the Gaussians' own RGB (the first 3 of the "
            "model's feature channels); the model's own render splats all channels and "
            "upsamples them with its Ψ network, which an engine does not run "
            "(fidelity.label_splat_vs_model says what that costs)",
            "quaternions": "wxyz; every expression's quaternions are on the neutral's side "
            "(dot >= 0) so deltas are small and a blend is a normalised lerp",
            "sh": "higher-order SH (f_rest_*) are zeros in every PLY and have no basis",
            "sh_c0": SH_C0,
        },
        "normalisation": {
            "method": "uncentred PCA: SVD of the stacked deltas from neutral [E, N*14], each "
            "attribute's columns divided by its RMS delta over all labels and Gaussians "
            "(attribute_scales, at least 1e-3 of the attribute's RMS value); components "
            "multiplied back into attribute units; weights = U*S, then each component "
            "scaled so that its largest-|weight| label has weight +1",
            "attribute_scales": dict(basis.attribute_scales),
        },
        "singular_values": basis.singular_values.tolist(),
        "explained_fraction": explained,
        "fidelity": fidelity.to_dict() if fidelity is not None else None,
    }


@torch.no_grad()
def export_animatable(
    model: GaussianHead,
    identity_code: Tensor,  # [Did]
    out_dir: str | Path,
    expression_codes: Mapping[str, Tensor],  # label -> [Dexp]
    *,
    neutral: str = "neutral",
    point_offsets: Tensor | None = None,  # [N, 3] canonical offsets of a fitted avatar
    num_components: int = 8,
    sh_degree: int = 3,
    overwrite: bool = False,
    fidelity: FidelityOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    up: str = DEFAULT_UP,
) -> ExportReport:
    """Export the identity ``identity_code`` of ``model`` with every expression of
    ``expression_codes`` to ``out_dir`` (module docstring).

    ``neutral`` is the label the basis starts from (it must be one of the codes);
    ``model`` may be a fitted avatar's personalised copy with its ``point_offsets``.
    ``fidelity`` options measure the PSNR curve over K (None: not measured; it renders
    every label ``len(components) + 2`` times per view). ``metadata`` goes into the
    report as given. ``up`` is the up axis of the written files, ``"+y"`` (canonical
    space) or ``"-y"`` (:mod:`gphm.export.axes`); fidelity is measured before the turn,
    in canonical space. Raises ``ValueError`` for bad arguments and :class:`ExportExistsError`
    for an ``out_dir`` that may not be replaced, before anything is computed.
    """
    if not isinstance(model, GaussianHead):
        raise ValueError(
            f"an animatable export needs a Gaussian head (stage 2), got a {type(model).__name__}"
        )
    if not expression_codes:
        raise ValueError("expression_codes: expected at least one labelled expression")
    labels = list(expression_codes)
    if neutral not in expression_codes:
        raise ValueError(f"neutral expression {neutral!r} is not one of {labels}")
    if (
        isinstance(num_components, bool)
        or not isinstance(num_components, int)
        or num_components < 0
    ):
        raise ValueError(f"num_components must be an integer >= 0, got {num_components!r}")
    if isinstance(sh_degree, bool) or sh_degree not in range(MAX_SH_DEGREE + 1):
        raise ValueError(f"sh_degree must be an integer in 0..{MAX_SH_DEGREE}, got {sh_degree!r}")
    check_up(up)
    did, dexp = model.identity_codes.config.dim, model.expression_codes.config.dim
    if tuple(identity_code.shape) != (did,):
        raise ValueError(f"identity_code: expected [{did}], got {list(identity_code.shape)}")
    for lbl, code in expression_codes.items():
        if tuple(code.shape) != (dexp,):
            raise ValueError(f"expression code {lbl!r}: expected [{dexp}], got {list(code.shape)}")
    files = _file_names(labels)
    out = Path(out_dir)
    _check_out(out, overwrite)

    device = model.points.device
    z_id = identity_code.to(device, torch.float32)
    codes = {lbl: c.to(device, torch.float32) for lbl, c in expression_codes.items()}
    att = model.attributes(z_id[None].expand(len(labels), -1), torch.stack(list(codes.values())),
                           None if point_offsets is None else point_offsets.to(device))  # fmt: skip

    def splat(i: int, reference: SplatAttributes | None) -> SplatAttributes:
        return SplatAttributes.from_rgb(
            att.means[i], att.colors[i, :, :3], att.log_scales[i], att.quats[i],
            att.opacity_logits[i], reference=reference,
        ).to("cpu", torch.float32)  # fmt: skip

    base = splat(labels.index(neutral), None)
    per_label = {lbl: splat(i, base) for i, lbl in enumerate(labels)}
    for lbl, a in per_label.items():
        for name in ATTRIBUTES:
            if not bool(torch.isfinite(getattr(a, name)).all()):
                raise ValueError(f"expression {lbl!r}: the model gives non-finite {name}")
    full = fit_expression_basis(per_label[neutral], per_label)
    stored = full.truncated(min(num_components, full.rank))

    report_fidelity, previews = None, []
    if fidelity is not None:
        opts = FidelityOptions(**{**asdict(fidelity), "components": tuple(
            sorted({*fidelity.components, stored.num_components}))})  # fmt: skip
        report_fidelity, previews = measure_fidelity(
            model, z_id, codes, full, per_label, neutral, opts, point_offsets,
            preview_components=stored.num_components,
        )  # fmt: skip
        set_target(report_fidelity, stored.num_components)

    report = ExportReport(
        out_dir=str(out), num_gaussians=len(base), sh_degree=sh_degree, neutral=neutral,
        labels=labels, files={"neutral": "neutral.ply", "expressions": files}
        | ({"fidelity_preview": "fidelity.png"} if previews else {}),
        num_components=stored.num_components, requested_components=num_components,
        rank=full.rank, fidelity=report_fidelity, metadata=dict(metadata or {}), up=up,
    )  # fmt: skip
    arrays = _arrays(stored, up)
    meta = _basis_json(stored, arrays, neutral, files, num_components, report_fidelity, up)
    with atomic_directory(out, overwrite=out.is_dir()) as tmp:
        save_splat_ply(tmp / "neutral.ply", per_label[neutral], sh_degree, up)
        for lbl, a in per_label.items():
            save_splat_ply(tmp / files[lbl], a, sh_degree, up)
        with open(tmp / "blendshapes.npz", "wb") as f:
            np.savez(f, **arrays)
        (tmp / MARKER).write_text(_json(meta))
        if previews:
            save_png(tmp / "fidelity.png", image_grid(previews, ncols=3))
        (tmp / "export_report.json").write_text(_json(report.to_dict()))
    return report


def _json(obj: Any) -> str:
    def clean(x: Any) -> Any:  # JSON has no inf/nan: write them as null
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, default=str, allow_nan=False) + "\n"


def load_expression_basis(directory: str | Path) -> ExpressionBasis:
    """Read ``blendshapes.npz`` (+ ``blendshapes.json``) of an export back into an
    :class:`ExpressionBasis`. ``ValueError`` naming the file for anything else."""
    d = Path(directory)
    jpath, npath = d / MARKER, d / "blendshapes.npz"
    try:
        meta = json.loads(jpath.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{d}: not an animatable export (no {MARKER})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{jpath}: invalid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != BASIS_FORMAT:
        raise ValueError(f"{jpath}: not a {BASIS_FORMAT} file")
    if meta.get("format_version") != BASIS_FORMAT_VERSION:
        raise ValueError(
            f"{jpath}: format_version {meta.get('format_version')!r}, expected "
            f"{BASIS_FORMAT_VERSION}"
        )
    try:
        a = load_npz(npath)  # sizes checked before anything is inflated
    except OSError as err:
        raise ValueError(f"{npath}: unreadable ({err})") from None
    want = [f"{p}_{n}" for p in ("neutral", "basis") for n in ATTRIBUTES]
    missing = [k for k in [*want, "weights", "labels", "singular_values"] if k not in a]
    if missing:
        raise ValueError(f"{npath}: missing arrays {missing}")

    def t(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    try:
        neutral = SplatAttributes(**{n: t(a[f"neutral_{n}"]) for n in ATTRIBUTES})
        k, n = a["weights"].shape[1], len(neutral)
        parts = []
        for name in ATTRIBUTES:
            b = t(a[f"basis_{name}"]).reshape(k, n, ATTRIBUTE_WIDTHS[name])
            parts.append(b)
        components = torch.cat(parts, dim=-1)
    except (ValueError, RuntimeError, IndexError) as err:
        raise ValueError(f"{npath}: arrays of inconsistent shapes ({err})") from None
    labels = tuple(str(x) for x in a["labels"])
    if a["weights"].shape[0] != len(labels):
        raise ValueError(
            f"{npath}: weights has {a['weights'].shape[0]} rows for {len(labels)} labels"
        )
    scales = meta.get("normalisation", {}).get("attribute_scales") or {}
    return ExpressionBasis(
        neutral=neutral, components=components, weights=t(a["weights"]), labels=labels,
        singular_values=t(a["singular_values"]),
        attribute_scales={n: float(scales.get(n, 1.0)) for n in ATTRIBUTES},
    )  # fmt: skip
