"""Subject-balanced row order for training on many identities.

Rows of a gphm dataset are (frame, camera) views; subjects may have different numbers of
rows (fewer expressions or views per subject, imported captures of different lengths).
Uniform sampling over rows then visits subjects in proportion to their rows. The
*subject-balanced* order of an epoch instead draws subjects evenly:

* the epoch is ``ceil(n / S)`` rounds over the ``S`` subjects (``n`` rows rounded up to
  whole rounds: ``ceil(n / S) · S`` draws); each round is a random permutation of the
  subjects, so every subject is drawn ``ceil(n / S)`` times per epoch and a round's
  ``S`` consecutive draws hold each subject once;
* each draw of a subject takes the next row of an endless stream of random permutations
  of that subject's rows, which carries on from one epoch to the next, so over the
  epochs every row of a subject is drawn equally often (to within one pass).

The order is a pure function of ``(subjects, seed, epoch)`` (numpy generators seeded by
``(seed, purpose, epoch)`` and ``(seed, purpose, subject, pass)``), identical on every
process: a global batch is a slice of it and process
``r`` of ``W`` takes ``batch[r::W]`` (disjoint shards, the rule of
:class:`gphm.data.loaders.DistributedFrameSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["SAMPLINGS", "balanced_order", "resolve_sampling", "SubjectBalancedSampler", "StepRows"]

#: ``train.sampling`` choices: ``auto`` (``rows`` when every subject has the same number of
#: rows — an epoch of a uniform permutation then draws every subject equally often already
#: — else ``subjects``) | ``subjects`` (balanced, this module) | ``rows`` (a uniform
#: permutation of the rows, :class:`gphm.data.loaders.DistributedFrameSampler`).
SAMPLINGS = ("auto", "subjects", "rows")
_STREAM_ROUNDS, _STREAM_ROWS = 1, 2  # purposes of the random streams


def resolve_sampling(sampling: str, subjects: Sequence[int] | np.ndarray) -> str:
    """``subjects`` or ``rows``: ``auto`` is ``rows`` when every subject has as many rows as
    every other (each epoch of a uniform permutation then draws each subject exactly its
    rows, the same number for all), else ``subjects``."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {'|'.join(SAMPLINGS)}, got {sampling!r}")
    if sampling != "auto":
        return sampling
    counts = np.unique(np.asarray(subjects, np.int64), return_counts=True)[1]
    return "rows" if len(counts) and counts.min() == counts.max() else "subjects"


def balanced_order(subjects: Sequence[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """[ceil(n / S) · S] int64 row indices of one subject-balanced epoch (module docstring).

    ``subjects``: [n] the subject id of each row (any integers; rows are positions).
    """
    subjects = np.asarray(subjects, np.int64)
    n = len(subjects)
    if n == 0:
        raise ValueError("balanced_order: no rows")
    ids, inverse = np.unique(subjects, return_inverse=True)
    S = len(ids)
    rounds = math.ceil(n / S)
    # draws[s, j]: subject s's j-th draw of this epoch = position epoch·rounds + j of its
    # endless stream of row permutations (pass p seeded by (seed, s, p)): over the epochs
    # every row of a subject is drawn equally often (to one pass).
    draws = np.empty((S, rounds), np.int64)
    start = int(epoch) * rounds
    grouped = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    for s, rows in enumerate(grouped):  # rows of subject s, ascending
        m = len(rows)
        first, last = start // m, (start + rounds - 1) // m
        stream = np.concatenate([
            np.random.default_rng([int(seed), _STREAM_ROWS, s, p]).permutation(rows)
            for p in range(first, last + 1)
        ])  # fmt: skip
        draws[s] = stream[start - first * m : start - first * m + rounds]
    rng = np.random.default_rng([int(seed), _STREAM_ROUNDS, int(epoch)])
    order = np.stack([draws[rng.permutation(S), j] for j in range(rounds)])
    return order.reshape(-1)


class SubjectBalancedSampler(Sampler[int]):
    """:func:`balanced_order` as a torch sampler, split across processes.

    Every process builds the same epoch order (call :meth:`set_epoch` on all), padded by
    repeating its head to a multiple of ``num_replicas``; process ``rank`` takes
    ``order[rank::num_replicas]``, so the shards are disjoint and together are the order.
    """

    def __init__(
        self,
        subjects: Sequence[int] | np.ndarray,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        self.subjects = np.asarray(subjects, np.int64)
        if len(self.subjects) == 0:
            raise ValueError("SubjectBalancedSampler: need at least one row")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0
        draws = math.ceil(len(self.subjects) / len(np.unique(self.subjects))) * len(
            np.unique(self.subjects)
        )
        self.num_samples = math.ceil(draws / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The global (all-process) order of this epoch, padded to ``num_samples × W``."""
        order = balanced_order(self.subjects, self.seed, self.epoch).tolist()
        pad = self.num_samples * self.num_replicas - len(order)
        return order + order[:pad]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class StepRows:
    """Rows of each global training step: ``rows(step)`` is batch ``k`` of epoch ``e``
    (``e, k = divmod(step, m // global_batch)``, ``m`` the length of an epoch's order:
    ``n`` rows, or ``ceil(n / S) · S`` for ``subjects``), a slice of that epoch's order;
    the last ``m mod global_batch`` draws of an epoch's order are not used.

    ``sampling``: ``subjects`` (:func:`balanced_order`), ``rows`` (the uniform
    permutation of :class:`gphm.data.loaders.DistributedFrameSampler`, seed + epoch) or
    ``auto`` (:func:`resolve_sampling`; ``self.sampling`` is the resolved one).
    The current epoch's order is kept, so a step costs O(global_batch) after the first.
    """

    def __init__(self, subjects: Sequence[int] | np.ndarray, global_batch: int, seed: int,
                 sampling: str = "auto"):  # fmt: skip
        sampling = resolve_sampling(sampling, subjects)
        self.subjects = np.asarray(subjects, np.int64)
        self.global_batch, self.seed, self.sampling = int(global_batch), int(seed), sampling
        n = len(self.subjects)
        if n < self.global_batch:
            raise ValueError(
                f"the training split has {n} rows, fewer than the global batch "
                f"{self.global_batch} (train.batch_size × processes)"
            )
        S = len(np.unique(self.subjects))
        m = math.ceil(n / S) * S if sampling == "subjects" else n
        self.steps_per_epoch = m // self.global_batch
        self._epoch: int | None = None
        self._order: list[int] = []

    def epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            if self.sampling == "subjects":
                self._order = balanced_order(self.subjects, self.seed, epoch).tolist()
            else:
                from gphm.data.loaders import DistributedFrameSampler

                sampler = DistributedFrameSampler(len(self.subjects), seed=self.seed)
                sampler.set_epoch(epoch)
                self._order = sampler.order()
            self._epoch = epoch
        return self._order

    def __call__(self, step: int) -> list[int]:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        G = self.global_batch
        return self.epoch_order(epoch)[k * G : (k + 1) * G]
