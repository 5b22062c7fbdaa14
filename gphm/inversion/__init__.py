"""One inversion engine for fitting (:mod:`gphm.fitting.fit`) and tracking
(:mod:`gphm.tracking.track`): find the codes, pose and personalisation that make the
model render a given image.

* :mod:`~gphm.inversion.target`: :class:`Target`, the one input record (image, mask,
  intrinsics, landmarks, optional calibrated camera), and :class:`TargetBatch`, the
  stacked tensors the loss terms compare against;
* :mod:`~gphm.inversion.terms`: every loss term, a small pure function each, and
  :data:`~gphm.inversion.terms.TERMS`, their names: a term's weight is the config option
  of that name (``fit.landmark``, ``track.landmark``, ...);
* :mod:`~gphm.inversion.phases`: a :class:`Phase` is data: which parameters (with
  learning rates), how many steps, which terms with which weights;
* :mod:`~gphm.inversion.engine`: :func:`run_phase`, the optimisation loop: weighted
  total, backward, Adam step, a non-finite check every step
  (:class:`NonFiniteError` names the phase, step and the option likely responsible)
  and hooks for per-step logging and progress;
* :mod:`~gphm.inversion.guard`: render coverage of the target mask, the check that
  catches a fit that renders (almost) nothing.

**Adding a loss term**: write it in :mod:`~gphm.inversion.terms` (a pure function of
tensors) and add its name to ``TERMS``; add a weight of that name to ``FitConfig`` or
``TrackConfig`` (it is validated there: finite, >= 0); compute it where the
configuration evaluates its terms (``_FitProblem.terms`` in fitting,
``_Tracker.photometric_terms`` / ``landmark_terms`` in tracking) and list it in the
phases that use it. The engine weights, sums, logs and checks it.
"""

from gphm.inversion.engine import NonFiniteError, run_phase
from gphm.inversion.guard import FitCollapseError, coverage
from gphm.inversion.phases import ParamGroup, Phase
from gphm.inversion.target import Target, TargetBatch

__all__ = ["FitCollapseError", "NonFiniteError", "ParamGroup", "Phase", "Target",
           "TargetBatch", "coverage", "run_phase"]  # fmt: skip
