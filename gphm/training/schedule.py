"""How many steps a training stage runs: the schedule rule for datasets of any size.

Each stage (``guidance``, ``gaussian``) has ``train.<stage>_steps`` and an optional
``train.<stage>_epochs``, with ``R`` = rows of the training split, ``G`` = global batch
(``train.batch_size`` × processes) and ``R0`` = ``train.schedule_reference_rows``:

* ``<stage>_epochs`` set: ``ceil(epochs × R / G)`` steps (an epoch is ``R / G`` steps:
  every training row once, in expectation once per subject-balanced draw);
* otherwise ``<stage>_steps × max(1, R / R0)`` rounded up: the step counts are stated for
  a dataset of up to ``R0`` training rows and a larger dataset trains the same number of
  epochs. ``R0 = 288`` is the demo set's training split (8 identities × 6 trained
  expressions × 6 trained cameras), so the demo and every smaller set train exactly the
  configured steps; ``R0 = 0`` turns the scaling off (the steps as given).
"""

from __future__ import annotations

import math

__all__ = ["DEMO_TRAIN_ROWS", "stage_steps"]

#: Training rows of the demo set (make_synthetic defaults: 8 × 8 expressions × 9 views).
DEMO_TRAIN_ROWS = 288


def stage_steps(
    steps: int, epochs: float | None, train_rows: int, global_batch: int, reference_rows: int
) -> int:
    """Steps of one stage by the rule of this module's docstring."""
    if train_rows < 1 or global_batch < 1:
        raise ValueError(f"need train_rows >= 1 and global_batch >= 1, got "
                         f"{train_rows} and {global_batch}")  # fmt: skip
    if epochs is not None:
        return math.ceil(epochs * train_rows / global_batch)
    if reference_rows <= 0 or train_rows <= reference_rows:
        return int(steps)
    return math.ceil(steps * train_rows / reference_rows)
