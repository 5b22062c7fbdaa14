"""Held-out cameras and held-out (subject, expression) pairs (DESIGN.md §6).

* ``heldout_view`` rows: cameras never used in training (for every training frame).
* ``heldout_combo`` rows: (subject, expression) pairs never used in training (all their
  cameras). Every held-out expression label must still be seen in training on another
  subject, so expression transfer to the held-out pair has a source.

Pure functions: the only randomness comes from the generator passed in.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "choose_heldout_cameras",
    "max_heldout_combos",
    "choose_heldout_combos",
    "split_of",
]


def choose_heldout_cameras(num_views: int, count: int, keep: int) -> list[int]:
    """``count`` camera indices to hold out, never ``keep`` (the reference camera).

    Cameras are assumed ordered by azimuth; the held-out ones are spread evenly over
    the remaining cameras, away from the two extremes when possible (held-out views
    should test interpolation between training views, not extrapolation).
    """
    if not 0 <= count < num_views:
        raise ValueError(f"can hold out 0..{num_views - 1} of {num_views} cameras, not {count}")
    candidates = [c for c in range(num_views) if c != keep]
    if count == 0:
        return []
    n = len(candidates)
    picks = sorted({min(n - 1, round((j + 0.5) * n / count - 0.5)) for j in range(count)})
    # Rounding collisions (count close to n): fill with the first unused candidates.
    for c in range(n):
        if len(picks) == count:
            break
        if c not in picks:
            picks.append(c)
    return sorted(candidates[p] for p in picks)


def max_heldout_combos(num_subjects: int, num_expressions: int) -> int:
    """Largest number of held-out expressions per subject for which the cyclic
    assignment of :func:`choose_heldout_combos` leaves every label in training for at
    least one subject. Neutral (expression 0) is never held out."""
    m = num_expressions - 1
    if num_subjects < 2 or m < 1:
        return 0
    best = 0
    for c in range(1, m + 1):
        if math.ceil(num_subjects * c / m) <= num_subjects - 1:
            best = c
    return best


def choose_heldout_combos(
    num_subjects: int,
    num_expressions: int,
    per_subject: int,
    rng: np.random.Generator,
) -> set[tuple[int, int]]:
    """Held-out (subject, expression index) pairs: ``per_subject`` non-neutral
    expressions per subject.

    Subjects take consecutive blocks of a seeded permutation of the non-neutral labels,
    cyclically, so each label is held out by ⌈S·c/(E−1)⌉ subjects at most; with
    ``per_subject <= max_heldout_combos(S, E)`` that leaves every label in training.
    """
    limit = max_heldout_combos(num_subjects, num_expressions)
    if not 0 <= per_subject <= limit:
        raise ValueError(
            f"heldout_combos_per_subject={per_subject} is not possible with "
            f"{num_subjects} subjects and {num_expressions} expressions (max {limit}: every "
            "held-out expression must stay in training for another subject)"
        )
    m = num_expressions - 1
    order = 1 + rng.permutation(m) if m > 0 else np.zeros(0, dtype=np.int64)
    combos = set()
    for s in range(num_subjects):
        for j in range(per_subject):
            combos.add((s, int(order[(s * per_subject + j) % m])))
    return combos


def split_of(
    subject: int,
    expression: int,
    camera: int,
    heldout_cameras: set[int] | list[int],
    heldout_combos: set[tuple[int, int]],
) -> str:
    """Split of one row: held-out pairs win over held-out cameras."""
    if (subject, expression) in heldout_combos:
        return "heldout_combo"
    if camera in heldout_cameras:
        return "heldout_view"
    return "train"
