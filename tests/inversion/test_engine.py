"""The inversion engine (gphm.inversion): phases, weighted terms, hooks, the non-finite
check, render coverage and the options validated at config time."""

import math

import pytest
import torch

from gphm.errors import UserError
from gphm.fitting.fit import FitConfig
from gphm.inversion import NonFiniteError, ParamGroup, Phase, Target, coverage, run_phase
from gphm.inversion import terms as T
from gphm.inversion.engine import history_hook
from gphm.tracking.track import TrackConfig, TrackFrame


def _quadratic(lr=0.1, steps=50, weights=None):
    p = torch.tensor([3.0, -2.0], requires_grad=True)
    groups = [ParamGroup([p], lr, "toy.lr", default=0.1)]
    weights = weights or {"a": 1.0, "b": 0.5}
    phase = Phase("toy", steps, groups, weights, prefix="toy", defaults={"a": 1.0, "b": 1.0})

    def evaluate(step):
        return {"a": (p[0] - 1) ** 2, "b": (p[1] + 1) ** 2}

    return p, phase, evaluate


def test_run_phase_minimises_the_weighted_terms_and_logs_through_hooks():
    p, phase, evaluate = _quadratic(steps=200)
    history, last = [], {}
    run_phase(phase, evaluate, [history_hook(history, last, "phase1")])
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -1.0]), atol=1e-2, rtol=0)
    assert [h["step"] for h in history] == [*range(0, 200, 10), 199]
    assert history[0]["phase"] == 1 and history[0]["total"] == pytest.approx(4 + 0.5 * 1)
    assert last["phase1"]["total"] < 1e-3 and set(last["phase1"]) == {"a", "b", "total"}
    # A term without a weight is logged only; 0 steps or no groups run nothing.
    assert (
        float(T.weighted_total({"a": torch.tensor(2.0), "x": torch.tensor(9.0)}, {"a": 3.0})) == 6
    )
    q, phase, evaluate = _quadratic(steps=0)
    run_phase(phase, evaluate)
    assert torch.equal(q.detach(), torch.tensor([3.0, -2.0]))


def test_a_huge_learning_rate_stops_with_the_phase_step_and_option():
    p, phase, _ = _quadratic(lr=1e30)

    def evaluate(step):  # finite at the start, overflows once p is ~1e30
        return {"a": (p**4).sum(), "b": p.sum() * 0}

    with pytest.raises(NonFiniteError, match=r"toy, step 2/50: .*learning rate toy.lr=1e\+30 "
                       r"\(default 0.1\)") as info:  # fmt: skip
        run_phase(phase, evaluate)
    assert isinstance(info.value, UserError)  # exit status 2 through run_cli


def test_a_huge_weight_stops_at_the_first_step_naming_the_weight():
    p, phase, evaluate = _quadratic(weights={"a": 1.0, "b": 1e308})
    with pytest.raises(NonFiniteError, match=r"toy, step 1/50: .*weight toy.b=1e\+308"):
        run_phase(phase, evaluate)
    assert torch.equal(p.detach(), torch.tensor([3.0, -2.0]))  # nothing was stepped


def test_non_finite_inputs_are_named_as_inputs():
    p, phase, _ = _quadratic()
    with pytest.raises(NonFiniteError, match="step 1/50: .*term 'a'.*the inputs"):
        run_phase(phase, lambda i: {"a": p.sum() * math.nan, "b": p.sum()})


def test_coverage_is_the_covered_fraction_of_the_mask():
    mask = torch.zeros(3, 4, 4, 1)
    mask[:, :2] = 1  # the top half
    alpha = torch.zeros(3, 4, 4, 1)
    alpha[0] = 1  # everything
    alpha[1, 2:] = 1  # only outside the mask
    alpha[2, :1] = 0.5  # half of the mask's rows, half opaque
    torch.testing.assert_close(coverage(alpha, mask), torch.tensor([1.0, 0.0, 0.25]))
    assert float(coverage(alpha[:1], torch.zeros(1, 4, 4, 1))[0]) == 1.0  # nothing to cover


def test_one_target_record_for_fitting_and_tracking():
    from gphm.fitting.fit import FitTarget

    assert FitTarget is Target and TrackFrame is Target
    f = TrackFrame(torch.ones(4, 4, 3), torch.ones(4, 4, 1), torch.eye(3), None, info={"file": "x"})
    assert f.camera is None and f.info == {"file": "x"}


def test_code_prior_terms_agree():
    z, mean, std = torch.randn(2, 5), torch.randn(5), torch.rand(5) + 0.5
    assert torch.equal(T.code_prior(z, mean, std), T.standard_prior((z - mean) / std))


@pytest.mark.parametrize("kwargs", [{"phase1_lr": 0.0}, {"pose_lr": math.inf},
                                    {"phase1_lr": math.nan}, {"landmark": math.inf},
                                    {"code": -1.0}, {"min_coverage": 1.0}])  # fmt: skip
def test_fit_options_are_validated(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"fit.{name} must be"):
        FitConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": math.inf}, {"pose_lr": math.nan},
                                    {"landmark": math.inf}, {"mask": math.nan},
                                    {"smooth": -1.0}])  # fmt: skip
def test_track_options_are_validated(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"track.{name} must be a finite number"):
        TrackConfig(**kwargs)
