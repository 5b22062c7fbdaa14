"""Subject-balanced sampling (gphm.data.sampling)."""

from collections import Counter

import numpy as np
import pytest

from gphm.data.loaders import DistributedFrameSampler
from gphm.data.sampling import StepRows, SubjectBalancedSampler, balanced_order

# 3 subjects with 12, 3 and 1 rows: a uniform row order gives subject 0 three quarters.
SUBJECTS = np.array([0] * 12 + [1] * 3 + [2] * 1)


def test_each_epoch_draws_subjects_evenly_and_rows_within_a_subject_uniformly():
    S = 3
    for epoch in range(4):
        order = balanced_order(SUBJECTS, seed=5, epoch=epoch)
        assert len(order) == 18 and order.dtype == np.int64  # 16 rows: 6 whole rounds
        assert Counter(SUBJECTS[order].tolist()) == {0: 6, 1: 6, 2: 6}
        # every round of S draws holds each subject once
        for r in range(6):
            assert sorted(SUBJECTS[order[r * S : (r + 1) * S]].tolist()) == [0, 1, 2]
        # subject 0 has 12 rows and 6 draws: no row of it twice within an epoch
        rows0 = [r for r in order.tolist() if SUBJECTS[r] == 0]
        assert len(rows0) == len(set(rows0))
        # subject 1's 3 rows are each drawn before any repeats (passes are permutations)
        rows1 = [r for r in order.tolist() if SUBJECTS[r] == 1]
        assert sorted(rows1[:3]) == [12, 13, 14]
        assert sorted(rows1[3:]) == [12, 13, 14]
    # the uniform row order for contrast: subject 0 dominates
    uniform = DistributedFrameSampler(len(SUBJECTS), seed=5).order()
    assert Counter(SUBJECTS[uniform].tolist())[0] == 12


def test_over_many_epochs_every_row_of_a_subject_is_drawn_about_equally():
    draws = Counter()
    for epoch in range(60):
        draws.update(balanced_order(SUBJECTS, seed=0, epoch=epoch).tolist())
    assert [draws[r] for r in range(12)] == [30] * 12  # 360 draws: 30 whole passes
    assert draws[15] == 360  # subject 2's single row: a third of all draws


def test_order_is_deterministic_per_seed_and_epoch():
    a = balanced_order(SUBJECTS, seed=1, epoch=2)
    assert np.array_equal(a, balanced_order(SUBJECTS, seed=1, epoch=2))
    assert not np.array_equal(a, balanced_order(SUBJECTS, seed=1, epoch=3))
    assert not np.array_equal(a, balanced_order(SUBJECTS, seed=2, epoch=2))
    # subject ids need not be 0..S-1 or grouped
    shuffled = np.array([7, 3, 7, 3, 9, 7])
    counts = Counter(shuffled[balanced_order(shuffled, 0, 0)].tolist())
    assert counts == {7: 2, 3: 2, 9: 2}  # 6 rows: 2 rounds of the 3 subjects
    uneven = np.array([7, 3, 7, 3, 9, 7, 7])  # 7 rows: 3 rounds (9 draws)
    assert Counter(uneven[balanced_order(uneven, 0, 0)].tolist()) == {7: 3, 3: 3, 9: 3}


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_shards_are_disjoint_and_cover_the_epoch(world):
    shards = []
    for rank in range(world):
        s = SubjectBalancedSampler(SUBJECTS, num_replicas=world, rank=rank, seed=4)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    total = SubjectBalancedSampler(SUBJECTS, seed=4)
    total.set_epoch(1)
    order = list(total)
    # padded to a multiple of world by repeating the head; the first n positions are disjoint
    assert len(order) == 18 and all(len(s) == 18 // world for s in shards)
    # rank r holds positions r, r + W, ...: together exactly the global order, no overlap
    interleaved = [shards[i % world][i // world] for i in range(len(order))]
    assert interleaved == order


def test_step_rows_global_batches_split_disjointly_across_processes():
    rows = StepRows(SUBJECTS, global_batch=4, seed=3)
    assert rows.steps_per_epoch == 4
    epoch0 = [r for k in range(4) for r in rows(k)]
    assert epoch0 == balanced_order(SUBJECTS, 3, 0).tolist()[:16]
    assert rows(4) == balanced_order(SUBJECTS, 3, 1).tolist()[:4]  # next epoch
    batch = rows(2)
    local = [batch[r::2] for r in range(2)]  # the trainer's process split
    assert sorted(local[0] + local[1]) == sorted(batch) and len(local[0]) == len(local[1]) == 2
    # 4 consecutive draws hold at least 2 subjects (a uniform row order can give 4 of
    # subject 0); over an epoch's 4 batches each subject is drawn 5 or 6 times
    for k in range(8):
        assert len(set(SUBJECTS[rows(k)].tolist())) >= 2
    counts = Counter(SUBJECTS[epoch0].tolist())
    assert set(counts) == {0, 1, 2} and min(counts.values()) >= 4
    uniform = StepRows(SUBJECTS, global_batch=4, seed=3, sampling="rows")
    sampler = DistributedFrameSampler(len(SUBJECTS), seed=3)
    assert uniform(1) == sampler.order()[4:8]
    with pytest.raises(ValueError, match="fewer than the global batch"):
        StepRows(SUBJECTS[:3], global_batch=4, seed=0)
    with pytest.raises(ValueError, match="sampling must be one of"):
        StepRows(SUBJECTS, global_batch=4, seed=0, sampling="frames")


def test_auto_sampling_is_uniform_on_balanced_subjects_and_balanced_otherwise():
    """auto keeps the uniform row order where it already draws every subject equally per
    epoch (equal row counts: the demo set, so its training is unchanged) and balances
    subjects where their row counts differ."""
    from gphm.data.loaders import DistributedFrameSampler
    from gphm.data.sampling import resolve_sampling

    equal = np.repeat(np.arange(4), 6)
    assert resolve_sampling("auto", equal) == "rows"
    assert resolve_sampling("auto", SUBJECTS) == "subjects"
    assert resolve_sampling("subjects", equal) == "subjects"
    auto = StepRows(equal, global_batch=4, seed=5)
    assert auto.sampling == "rows"
    sampler = DistributedFrameSampler(len(equal), seed=5)
    assert [r for k in range(6) for r in auto(k)] == sampler.order()
    balanced = StepRows(SUBJECTS, global_batch=4, seed=3)
    assert balanced(0) == balanced_order(SUBJECTS, 3, 0).tolist()[:4]
    with pytest.raises(ValueError, match="sampling must be one of"):
        resolve_sampling("frames", equal)
