"""The optimisation loop shared by fitting and tracking.

:func:`run_phase` runs one :class:`~gphm.inversion.phases.Phase`: for every step it
asks the caller for the (unweighted) loss terms, sums them with the phase's weights
(:func:`~gphm.inversion.terms.weighted_total`), back-propagates and takes an Adam step.
Each step it checks that the total loss and the gradients are finite, and at the end
of the phase that the parameters are: a non-finite value stops the run with a
:class:`NonFiniteError` (a :class:`~gphm.errors.UserError`: exit status 2) naming the
phase, the step and the option most likely responsible (a learning rate far above its
default, or the weight of the term that overflowed), instead of an avatar or tracking
full of NaN. Hooks (``hook(phase, step, values)``, ``values`` the rounded terms and
``total``) do per-step logging; see :func:`history_hook`. Each step polls
:func:`gphm.io.threads.poll` (fewer torch threads while other processes load the CPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm.errors import UserError
from gphm.inversion.phases import Phase
from gphm.inversion.terms import weighted_total
from gphm.io import threads as adaptive_threads

__all__ = ["Hook", "NonFiniteError", "history_hook", "make_optimizer", "run_phase"]

Hook = Callable[[Phase, int, dict[str, float]], None]
Evaluate = Callable[[int], dict[str, Tensor]]


class NonFiniteError(UserError):
    """A loss, gradient or parameter became NaN or infinite during a phase."""


def make_optimizer(phase: Phase) -> torch.optim.Adam:
    return torch.optim.Adam([g.torch_group() for g in phase.groups])


def history_hook(
    history: list[dict[str, float]], last: dict[str, dict[str, float]], key: str
) -> Hook:
    """Append ``{"phase", "step"} | values`` every ``log_every`` steps and at the last
    step to ``history``; keep the last step's values as ``last[key]``."""

    def hook(phase: Phase, step: int, values: dict[str, float]) -> None:
        if step % phase.log_every == 0 or step == phase.steps - 1:
            history.append({"phase": int(key.removeprefix("phase")), "step": step} | values)
        if step == phase.steps - 1:
            last[key] = values

    return hook


def run_phase(
    phase: Phase,
    evaluate: Evaluate,
    hooks: Iterable[Hook] = (),
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = False,
) -> None:
    """Run ``phase.steps`` Adam steps on ``evaluate(step)``'s terms (module docstring).
    ``optimizer``: one to continue (tracking keeps one across frames); default a new
    Adam over ``phase.groups``. Nothing runs for 0 steps or no parameter groups."""
    if not phase.active:
        return
    hooks = list(hooks)
    opt = optimizer if optimizer is not None else make_optimizer(phase)
    bar = tqdm(range(phase.steps), desc=phase.name, disable=not progress, leave=False)
    for i in bar:
        adaptive_threads.poll()
        terms = evaluate(i)
        total = weighted_total(terms, phase.weights)
        if not bool(torch.isfinite(total)):
            raise NonFiniteError(_loss_message(phase, i, terms, total))
        opt.zero_grad(set_to_none=True)
        total.backward()
        if not _all_finite(p.grad for g in phase.groups for p in g.params):
            raise NonFiniteError(_gradient_message(phase, i, terms))
        opt.step()
        if hooks:
            values = {k: round(float(v.detach()), 6) for k, v in terms.items()}
            values["total"] = round(float(total.detach()), 6)
            for hook in hooks:
                hook(phase, i, values)
    if not _all_finite(p for g in phase.groups for p in g.params):
        raise NonFiniteError(f"{phase.name}: the parameters became non-finite by its last step; "
                             f"{_culprit(phase)}")  # fmt: skip


def _all_finite(tensors: Iterable[Tensor | None]) -> bool:
    checks = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(checks).all()) if checks else True


def _culprit(phase: Phase, terms: dict[str, Tensor] | None = None) -> str:
    """The option furthest above its default: a learning rate of the phase or the
    weight of one of its ``terms`` (a rate or weight without a default counts as 1x)."""
    options = [(g.option, g.lr, g.default, "learning rate") for g in phase.groups]
    options += [(f"{phase.prefix}.{k}", phase.weights[k], phase.defaults.get(k, 0.0), "weight")
                for k in (terms or {}) if k in phase.weights]  # fmt: skip

    def ratio(o: tuple[str, float, float, str]) -> float:
        return o[1] / o[2] if o[2] > 0 else 1.0

    name, value, default, kind = max(options, key=ratio)
    hint = f" (default {default:g})" if default > 0 else ""
    return f"the likely cause is the {kind} {name}={value:g}{hint}: lower it"


def _loss_message(phase: Phase, step: int, terms: dict[str, Tensor], total: Tensor) -> str:
    where = f"{phase.name}, step {step + 1}/{phase.steps}: the loss is {float(total.detach())}"
    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
    if not bad:  # every term finite: a weight overflowed the sum
        return f"{where}; {_culprit(phase, terms)}"
    if step == 0:  # nothing was optimised yet: the inputs or the starting point
        return (f"{where} (term {bad[0]!r} at the first step): the inputs (image, mask, "
                "landmarks) or the starting codes hold non-finite values")  # fmt: skip
    return f"{where} (term {bad[0]!r}); {_culprit(phase, terms)}"


def _gradient_message(phase: Phase, step: int, terms: dict[str, Tensor]) -> str:
    return (f"{phase.name}, step {step + 1}/{phase.steps}: the gradients are not finite; "
            f"{_culprit(phase, terms)}")  # fmt: skip
