"""Training, validation and held-out splits of the synthetic set (docs/architecture.md §8.1).

* ``heldout_view`` / ``val_view`` rows: cameras never used in training (for any frame).
* ``heldout_combo`` / ``val_combo`` rows: (subject, expression) pairs never used in
  training (all their cameras). Every held-out or validation expression label must still
  be seen in training on another subject, so expression transfer to the pair has a source.

The validation splits are for choosing defaults and ablations; the held-out ones are only
reported. Validation cameras and pairs are disjoint from the held-out ones and from
training. Precedence of a row's split (:func:`split_of`): ``heldout_combo`` >
``val_combo`` > ``heldout_view`` > ``val_view`` > ``train`` — a pair's rows are all combo
rows, whichever camera they come from.

Pure functions: the only randomness comes from the generator passed in.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "choose_heldout_cameras",
    "choose_val_cameras",
    "max_heldout_combos",
    "choose_heldout_combos",
    "choose_combos",
    "split_of",
]


def _spread(candidates: list[int], count: int) -> list[int]:
    """``count`` of ``candidates`` (ordered by azimuth) spread evenly, away from the ends."""
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


def choose_heldout_cameras(num_views: int, count: int, keep: int) -> list[int]:
    """``count`` camera indices to hold out, never ``keep`` (the reference camera).

    Cameras are assumed ordered by azimuth; the held-out ones are spread evenly over
    the remaining cameras, away from the two extremes when possible (held-out views
    should test interpolation between training views, not extrapolation).
    """
    if not 0 <= count < num_views:
        raise ValueError(f"can hold out 0..{num_views - 1} of {num_views} cameras, not {count}")
    return _spread([c for c in range(num_views) if c != keep], count)


def choose_val_cameras(num_views: int, count: int, keep: int, heldout: list[int]) -> list[int]:
    """``count`` validation cameras: never ``keep`` nor one of ``heldout``.

    Chosen after (and independently of) the held-out cameras, so adding validation
    cameras never changes which cameras are held out; spread like them over the
    cameras still in training.
    """
    candidates = [c for c in range(num_views) if c != keep and c not in heldout]
    if not 0 <= count <= len(candidates):
        raise ValueError(
            f"can take 0..{len(candidates)} validation cameras of {num_views} "
            f"({len(heldout)} held out, one reference camera), not {count}"
        )
    return _spread(candidates, count)


def max_heldout_combos(num_subjects: int, num_expressions: int) -> int:
    """Largest number of held-out plus validation expressions per subject for which the
    cyclic assignment of :func:`choose_combos` leaves every label in training for at
    least one subject. Neutral (expression 0) is never held out."""
    m = num_expressions - 1
    if num_subjects < 2 or m < 1:
        return 0
    best = 0
    for c in range(1, m + 1):
        if math.ceil(num_subjects * c / m) <= num_subjects - 1:
            best = c
    return best


def choose_combos(
    num_subjects: int,
    num_expressions: int,
    heldout_per_subject: int,
    val_per_subject: int,
    rng: np.random.Generator,
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Held-out and validation (subject, expression index) pairs, non-neutral, disjoint.

    One seeded permutation of the non-neutral labels is walked cyclically: subjects first
    take ``heldout_per_subject`` consecutive labels each (positions ``s·h + j``, exactly
    the held-out pairs of a dataset without validation pairs), then ``val_per_subject``
    each (positions ``S·h + s·v + j``). Over ``S·(h + v)`` consecutive positions each label
    comes up at most ⌈S·(h+v)/(E−1)⌉ <= S − 1 times when ``h + v <= max_heldout_combos``,
    so every label stays in training for some subject. If that continuation would give a
    subject the same label twice (few labels), every subject takes one block of ``h + v``
    consecutive labels instead (first ``h`` held out): the same bound holds.

    Returns ``(heldout, val)``.
    """
    h, v = heldout_per_subject, val_per_subject
    limit = max_heldout_combos(num_subjects, num_expressions)
    if h < 0 or v < 0 or h + v > limit:
        names = (
            "heldout_combos_per_subject"
            if v == 0
            else ("heldout_combos_per_subject + val_combos_per_subject")
        )
        raise ValueError(
            f"{names}={h + v} is not possible with {num_subjects} subjects and "
            f"{num_expressions} expressions (max {limit}: every held-out or validation "
            "expression must stay in training for another subject)"
        )
    m = num_expressions - 1
    order = 1 + rng.permutation(m) if m > 0 else np.zeros(0, dtype=np.int64)
    S = num_subjects

    def label(p: int) -> int:
        return int(order[p % m])

    held = [[label(s * h + j) for j in range(h)] for s in range(S)]
    val = [[label(S * h + s * v + j) for j in range(v)] for s in range(S)]
    if any(len(set(held[s] + val[s])) < h + v for s in range(S)):
        c = h + v
        held = [[label(s * c + j) for j in range(h)] for s in range(S)]
        val = [[label(s * c + h + j) for j in range(v)] for s in range(S)]
    return (
        {(s, e) for s in range(S) for e in held[s]},
        {(s, e) for s in range(S) for e in val[s]},
    )


def choose_heldout_combos(
    num_subjects: int,
    num_expressions: int,
    per_subject: int,
    rng: np.random.Generator,
) -> set[tuple[int, int]]:
    """Held-out pairs only (no validation pairs): :func:`choose_combos` with ``v = 0``."""
    return choose_combos(num_subjects, num_expressions, per_subject, 0, rng)[0]


def split_of(
    subject: int,
    expression: int,
    camera: int,
    heldout_cameras: set[int] | list[int],
    heldout_combos: set[tuple[int, int]],
    val_cameras: set[int] | list[int] = (),
    val_combos: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
) -> str:
    """Split of one row: pairs win over cameras, held out wins over validation."""
    if (subject, expression) in heldout_combos:
        return "heldout_combo"
    if (subject, expression) in val_combos:
        return "val_combo"
    if camera in heldout_cameras:
        return "heldout_view"
    if camera in val_cameras:
        return "val_view"
    return "train"
