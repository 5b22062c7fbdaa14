"""The expression basis as pure math: exact reproduction, truncation, rank, projection."""

import pytest
import torch

from gphm.export.blendshapes import (
    ATTRIBUTES,
    ExpressionBasis,
    SplatAttributes,
    fit_expression_basis,
)


def _attrs(n=40, seed=0) -> SplatAttributes:
    g = torch.Generator().manual_seed(seed)
    return SplatAttributes.from_rgb(
        torch.randn(n, 3, generator=g) * 0.5, torch.rand(n, 3, generator=g),
        torch.randn(n, 3, generator=g) - 3, torch.randn(n, 4, generator=g) + torch.eye(4)[0] * 3,
        torch.randn(n, generator=g),
    )  # fmt: skip


def _shifted(base: SplatAttributes, direction: torch.Tensor, t: float) -> SplatAttributes:
    """base + t * direction in the stacked space (quaternions as they come)."""
    return SplatAttributes.from_stacked(base.stacked() + t * direction, normalise_quats=False)


def _close(a: SplatAttributes, b: SplatAttributes, atol=1e-5):
    for name in ATTRIBUTES:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)


def test_all_components_reproduce_every_expression_and_zero_weights_are_neutral():
    base = _attrs()
    exprs = {"neutral": base} | {f"e{i}": _attrs(seed=i + 1) for i in range(4)}
    for e in exprs.values():  # same side as the neutral's quaternions, as the exporter does
        object.__setattr__(e, "quats", torch.where(
            (e.quats * base.quats).sum(-1, keepdim=True) < 0, -e.quats, e.quats))  # fmt: skip
    basis = fit_expression_basis(base, exprs)
    assert basis.rank == 4 and basis.num_components == 4  # 4 deltas, the neutral's is zero
    assert basis.components.shape == (4, 40, 14) and basis.weights.shape == (5, 4)
    assert basis.labels == tuple(exprs)
    for label, e in exprs.items():
        _close(basis.expression(label), e)
    assert torch.equal(basis.weights[0], torch.zeros(4))
    # Slider units: on each component the strongest label has weight exactly +1.
    torch.testing.assert_close(basis.weights.max(0).values, torch.ones(4))
    assert basis.weights.abs().max() <= 1 + 1e-6
    _close(basis.blend(torch.zeros(4)), base, atol=1e-6)
    # Projection of a trained expression gives back its weights.
    w2 = basis.weights[basis.labels.index("e2")]
    torch.testing.assert_close(basis.project(exprs["e2"]), w2, atol=1e-4, rtol=1e-4)


def test_truncation_is_nested_and_errors_shrink():
    base = _attrs()
    exprs = {f"e{i}": _attrs(seed=i + 1) for i in range(5)}
    full = fit_expression_basis(base, exprs)
    assert torch.all(full.singular_values[:-1] >= full.singular_values[1:])
    three = fit_expression_basis(base, exprs, num_components=3)
    torch.testing.assert_close(three.components, full.components[:3])
    torch.testing.assert_close(full.truncated(3).weights, three.weights)
    errors = []
    for k in range(full.num_components + 1):
        b = full.truncated(k)
        errors.append(
            sum(
                float(
                    (b.expression(lbl).stacked() - e.stacked())
                    .div(
                        torch.cat(
                            [
                                torch.full((w,), full.attribute_scales[a])
                                for a, w in zip(ATTRIBUTES, (3, 3, 3, 4, 1))
                            ]
                        )
                    )
                    .square()
                    .sum()
                )  # fmt: skip
                for lbl, e in exprs.items()
            )
        )
    assert all(a >= b - 1e-3 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6 * errors[0]


def test_a_rank_one_set_needs_one_component():
    base = _attrs()
    direction = torch.randn(40, 14) * 0.01
    direction[:, 9:13] = 0  # quaternions untouched: a blend renormalises them
    exprs = {"neutral": base} | {f"e{t}": _shifted(base, direction, t) for t in (1.0, -2.0, 0.5)}
    basis = fit_expression_basis(base, exprs, num_components=8)
    assert basis.rank == 1 and basis.num_components == 1  # capped at the rank
    for label, e in exprs.items():
        _close(basis.expression(label), e)
    w = basis.weights[:, 0]
    torch.testing.assert_close(w[2] / w[1], torch.tensor(-2.0))  # weights follow t


def test_per_attribute_normalisation_is_recorded_and_units_kept():
    base = _attrs()
    move = torch.zeros(40, 14)
    move[:, 0] = 1e-3  # a tiny shift in x only: its RMS is the means' scale
    basis = fit_expression_basis(base, {"x": _shifted(base, move, 1.0)})
    assert basis.attribute_scales["means"] == pytest.approx(1e-3 / 3**0.5, rel=1e-4)
    # Never moves: the floor, 1e-3 of its RMS value (not magnified from 0 to count alike).
    rms = float(base.f_dc.double().square().mean().sqrt())
    assert basis.attribute_scales["f_dc"] == pytest.approx(1e-3 * rms, rel=1e-6)
    torch.testing.assert_close(basis.component("means")[0] * basis.weights[0, 0],
                               move[:, :3], atol=1e-7, rtol=0)  # fmt: skip
    assert basis.component("opacity_logits").shape == (1, 40)


def test_only_the_neutral_gives_an_empty_basis_and_errors_name_the_problem():
    base = _attrs()
    basis = fit_expression_basis(base, {"neutral": base})
    assert basis.rank == 0 and basis.components.shape == (0, 40, 14)
    _close(basis.expression("neutral"), base, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        fit_expression_basis(base, {})
    with pytest.raises(ValueError, match="expression 'x': 10 Gaussians, the neutral has 40"):
        fit_expression_basis(base, {"x": _attrs(10)})
    with pytest.raises(ValueError, match=r"weights: expected \[0\], got \[2\]"):
        basis.blend(torch.zeros(2))
    with pytest.raises(ValueError, match="unknown expression 'smile'"):
        basis.expression("smile")
    with pytest.raises(ValueError, match=r"quats: expected \[40, 4\]"):
        SplatAttributes(
            base.means, base.f_dc, base.log_scales, base.quats[:, :3], base.opacity_logits
        )
    assert isinstance(basis, ExpressionBasis)
