"""A linear expression basis over the values a standard splat PLY stores (pure math).

An engine without our networks animates a head by blending per-Gaussian *deltas* from the
neutral expression::

    value(w) = neutral + Σ_k w_k · basis_k            for each stored attribute
    quats(w) = normalise(neutral.quats + Σ_k w_k · basis_quats_k)

The attributes are exactly those of the PLY files (:class:`SplatAttributes`): centres in
canonical head space, the SH DC colour ``f_dc`` (``rgb = 0.5 + SH_C0·f_dc``), natural-log
scales, unit ``wxyz`` quaternions (each expression's sign chosen on the neutral's side,
so that deltas are small and the blend of two rotations is their normalised lerp) and
opacity logits (``alpha = sigmoid``).

The basis is a PCA without centring: the SVD of the stacked deltas ``D`` [E, N·14] of
the E expressions (the neutral one's row is zero), after dividing each attribute's columns
by that attribute's RMS delta (``attribute_scales``), so that positions, colours, scales,
rotations and opacities count alike whatever their units (the divisor is at least 1e-3
of the attribute's RMS value, so an attribute that does not move is not magnified from
rounding noise; singular values under the float32 noise level count as zero). The
stored components are
multiplied back into each attribute's own units; ``weights`` [E, K] are ``U·S`` and
reproduce each expression exactly when K is the rank of ``D`` (at most E - 1), each
component scaled and signed so that the label with the largest |weight| on it has
weight +1 (sliders in about [-1, 1]). All weights zero is the neutral expression.
Truncation keeps the K largest singular values (nested: the K-component basis is the
first K of any larger one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from gphm.io.ply import SH_C0

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_WIDTHS",
    "SplatAttributes",
    "ExpressionBasis",
    "fit_expression_basis",
]

ATTRIBUTES = ("means", "f_dc", "log_scales", "quats", "opacity_logits")
"""Attribute names in the stacked order of :meth:`SplatAttributes.stacked`."""
ATTRIBUTE_WIDTHS = {"means": 3, "f_dc": 3, "log_scales": 3, "quats": 4, "opacity_logits": 1}
_WIDTH = sum(ATTRIBUTE_WIDTHS.values())  # 14 values per Gaussian

# Singular values below this fraction of the largest one count as zero (and below the
# float32 rounding noise of the inputs, see fit_expression_basis).
_RANK_RTOL = 1e-6
# Per-attribute normalisation never divides by less than this fraction of the attribute's
# RMS value in the neutral expression.
_SCALE_FLOOR = 1e-3


@dataclass(frozen=True)
class SplatAttributes:
    """The Gaussians of one expression as a standard 3DGS PLY stores them (canonical
    head space, float32 CPU or any device)."""

    means: Tensor  # [N, 3] centres
    f_dc: Tensor  # [N, 3] SH DC colour, rgb = 0.5 + SH_C0 * f_dc
    log_scales: Tensor  # [N, 3] natural-log standard deviations
    quats: Tensor  # [N, 4] unit quaternions, wxyz
    opacity_logits: Tensor  # [N], alpha = sigmoid

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        for name in ATTRIBUTES:
            t = getattr(self, name)
            want = (n,) if name == "opacity_logits" else (n, ATTRIBUTE_WIDTHS[name])
            if tuple(t.shape) != want:
                raise ValueError(f"{name}: expected {list(want)}, got {list(t.shape)}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def rgb(self) -> Tensor:  # [N, 3], not clamped
        return 0.5 + SH_C0 * self.f_dc

    @classmethod
    def from_rgb(
        cls,
        means: Tensor,  # [N, 3]
        rgb: Tensor,  # [N, 3]
        log_scales: Tensor,  # [N, 3]
        quats: Tensor,  # [N, 4] wxyz, any non-zero norm
        opacity_logits: Tensor,  # [N]
        reference: SplatAttributes | None = None,
    ) -> SplatAttributes:
        """From RGB and unnormalised quaternions: quaternions are normalised and, with a
        ``reference``, flipped to its side (``q`` and ``-q`` are one rotation; the side
        nearest the reference makes the delta small)."""
        q = quats / quats.norm(dim=-1, keepdim=True)
        if reference is not None:
            q = torch.where((q * reference.quats).sum(-1, keepdim=True) < 0, -q, q)
        return cls(means, (rgb - 0.5) / SH_C0, log_scales, q, opacity_logits)

    def stacked(self) -> Tensor:  # [N, 14] in ATTRIBUTES order
        return torch.cat([self.means, self.f_dc, self.log_scales, self.quats,
                          self.opacity_logits[:, None]], dim=-1)  # fmt: skip

    @classmethod
    def from_stacked(cls, x: Tensor, normalise_quats: bool = True) -> SplatAttributes:
        """Inverse of :meth:`stacked` (``x`` [N, 14]); quaternions renormalised."""
        parts = dict(zip(ATTRIBUTES, x.split(list(ATTRIBUTE_WIDTHS.values()), dim=-1)))
        if normalise_quats:
            parts["quats"] = parts["quats"] / parts["quats"].norm(dim=-1, keepdim=True)
        parts["opacity_logits"] = parts["opacity_logits"][:, 0]
        return cls(**parts)

    def to(self, *args, **kwargs) -> SplatAttributes:
        return SplatAttributes(**{f.name: getattr(self, f.name).to(*args, **kwargs)
                                  for f in fields(self)})  # fmt: skip


@dataclass(frozen=True)
class ExpressionBasis:
    """Neutral Gaussians plus K delta components and the weights of each expression."""

    neutral: SplatAttributes
    components: Tensor  # [K, N, 14] deltas in each attribute's units, ATTRIBUTES order
    weights: Tensor  # [E, K] weights that reproduce each label (row order of `labels`), |w| <= 1
    labels: tuple[str, ...]
    singular_values: Tensor  # [R] all non-zero singular values of the normalised deltas
    attribute_scales: dict[str, float]
    """RMS delta of each attribute over all expressions and Gaussians (at least 1e-3 of
    the attribute's RMS value; 1.0 where both are 0): the columns of the delta matrix
    were divided by it before the SVD."""

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def rank(self) -> int:
        return int(self.singular_values.shape[0])

    def component(self, name: str) -> Tensor:  # [K, N, w] (or [K, N] for opacity_logits)
        """One attribute's slice of the components."""
        start = sum(ATTRIBUTE_WIDTHS[a] for a in ATTRIBUTES[: ATTRIBUTES.index(name)])
        out = self.components[..., start : start + ATTRIBUTE_WIDTHS[name]]
        return out[..., 0] if name == "opacity_logits" else out

    def truncated(self, k: int) -> ExpressionBasis:
        """The first ``k`` components (those of the ``k`` largest singular values)."""
        if not 0 <= k <= self.num_components:
            raise ValueError(f"k must be in [0, {self.num_components}], got {k}")
        return dataclasses.replace(self, components=self.components[:k],
                                   weights=self.weights[:, :k])  # fmt: skip

    def blend(self, weights: Tensor) -> SplatAttributes:  # weights [K]
        """``neutral + Σ_k w_k · component_k``, quaternions renormalised."""
        if tuple(weights.shape) != (self.num_components,):
            raise ValueError(
                f"weights: expected [{self.num_components}], got {list(weights.shape)}"
            )
        base = self.neutral.stacked()
        delta = torch.einsum("k,knc->nc", weights.to(base), self.components.to(base))
        return SplatAttributes.from_stacked(base + delta)

    def expression(self, label: str) -> SplatAttributes:
        """The blend with the stored weights of a trained label."""
        if label not in self.labels:
            raise ValueError(f"unknown expression {label!r}; the basis has {list(self.labels)}")
        return self.blend(self.weights[self.labels.index(label)])

    def project(self, attributes: SplatAttributes) -> Tensor:  # [K]
        """Weights of the least-squares fit of another expression, in the normalised
        space the components are orthogonal in."""
        # component_k = c_k · v_k · scale with orthonormal v_k, so the weight
        # <delta / scale, v_k> / c_k is <delta, component_k / scale²> / c_k², and
        # c_k² = |component_k / scale|².
        scale = _column_scales(self.attribute_scales, self.components)
        delta = (attributes.stacked() - self.neutral.stacked()).to(self.components)
        c2 = (self.components / scale).square().sum((1, 2))
        return torch.einsum("nc,knc->k", delta, self.components / scale**2) / c2


def _column_scales(scales: dict[str, float], like: Tensor) -> Tensor:  # [14]
    return torch.cat([torch.full((ATTRIBUTE_WIDTHS[a],), scales[a]) for a in ATTRIBUTES]).to(like)


def fit_expression_basis(
    neutral: SplatAttributes,
    expressions: dict[str, SplatAttributes],
    num_components: int | None = None,
) -> ExpressionBasis:
    """PCA (uncentred, per-attribute RMS normalised: module docstring) of the deltas of
    ``expressions`` from ``neutral``, keeping ``min(num_components, rank)`` components
    (all with None). ``expressions`` may include the neutral label (its weights are 0).
    Computed in float64; stored as float32 on the CPU."""
    if not expressions:
        raise ValueError("expressions: expected at least one labelled expression")
    if num_components is not None and num_components < 0:
        raise ValueError(f"num_components must be >= 0, got {num_components}")
    n = len(neutral)
    for label, a in expressions.items():
        if len(a) != n:
            raise ValueError(f"expression {label!r}: {len(a)} Gaussians, the neutral has {n}")
    labels = tuple(expressions)
    base = neutral.stacked().detach().double().cpu()
    deltas = torch.stack([a.stacked().detach().double().cpu() - base
                          for a in expressions.values()])  # [E, N, 14]  # fmt: skip
    scales: dict[str, float] = {}
    start = 0
    for name in ATTRIBUTES:
        w = ATTRIBUTE_WIDTHS[name]
        rms = float(deltas[..., start : start + w].square().mean().sqrt())
        # An attribute that barely moves (float noise, e.g. renormalised quaternions) must
        # not be magnified to count as much as the others: floor at a small fraction of
        # its typical magnitude.
        floor = _SCALE_FLOOR * float(base[:, start : start + w].square().mean().sqrt())
        scales[name] = max(rms, floor) if math.isfinite(rms) and max(rms, floor) > 0 else 1.0
        start += w
    col = _column_scales(scales, deltas)
    normalised = (deltas / col).reshape(len(labels), n * _WIDTH)
    u, s, vt = torch.linalg.svd(normalised, full_matrices=False)
    # The inputs are float32: each value carries rounding noise of about eps32·|value|,
    # i.e. eps32·|value|/scale after normalisation; a matrix of such noise has singular
    # values up to about that times sqrt(rows + columns). Directions below are noise.
    typical = torch.cat([base[:, i : i + 1].square().mean().sqrt().expand(1) for i in
                         range(_WIDTH)]) / col  # fmt: skip
    eps32 = torch.finfo(torch.float32).eps
    noise = 10 * eps32 * float(typical.max()) * math.sqrt(len(labels) + n * _WIDTH)
    tol = max(_RANK_RTOL * float(s[0]) if s.numel() else 0.0, noise)
    rank = int((s > tol).sum()) if s.numel() and s[0] > 0 else 0
    k = rank if num_components is None else min(num_components, rank)
    weights = u[:, :k] * s[:k]  # [E, K]
    weights[deltas.flatten(1).abs().amax(1) == 0] = 0  # the neutral: exactly, not ~1e-15
    # Slider-friendly units: each component scaled (and signed) so that the label with the
    # largest |weight| has weight +1; the product weight x component is unchanged.
    peak = weights.gather(0, weights.abs().argmax(0, keepdim=True))[0] if k else weights[0]
    weights = weights / peak
    components = vt[:k].reshape(k, n, _WIDTH) * col * peak[:, None, None]
    return ExpressionBasis(
        neutral=neutral.to("cpu", torch.float32),
        components=components.float(),
        weights=weights.float(),
        labels=labels,
        singular_values=s[:rank].float(),
        attribute_scales=scales,
    )
