"""Phases as data: what one stretch of optimisation changes, how fast, for how long,
under which loss terms.

Fitting runs two phases (codes and pose; then the personalisation on a copy of the
model), tracking two per frame (landmark steps without rendering; then photometric
steps). Each is a :class:`Phase` handed to :func:`gphm.inversion.engine.run_phase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ParamGroup", "Phase"]


@dataclass
class ParamGroup:
    """Tensors optimised with one Adam learning rate, and the option that set it."""

    params: list[Tensor]
    lr: float
    option: str
    """The config option of ``lr`` (``fit.phase1_lr``): named when the phase diverges."""
    default: float = 0.0
    """The option's default (0: unknown): a rate far above it is the likely culprit."""

    def torch_group(self) -> dict:
        return {"params": self.params, "lr": self.lr}


@dataclass
class Phase:
    """One optimisation phase. ``weights`` lists its terms (name -> weight, in the
    order they are summed); the terms themselves come from the caller's ``evaluate``."""

    name: str  # "fit phase 1": shown in progress bars and errors
    steps: int
    groups: list[ParamGroup]
    weights: dict[str, float]
    prefix: str = "fit"
    """Config prefix of the weights' options (``fit.landmark``, ``track.mask``)."""
    defaults: dict[str, float] = field(default_factory=dict)
    """The weights' defaults, for the error that names a likely culprit."""
    log_every: int = 10
    """Hooks marked ``sparse`` see every ``log_every``-th step and the last."""

    @property
    def active(self) -> bool:
        return self.steps > 0 and bool(self.groups)
