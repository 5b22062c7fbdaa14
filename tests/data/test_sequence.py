"""Synthetic sequences (make_synthetic.py mode=sequence) and the optional sequence_step column."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from gphm.data.format import load_dataset_dir, write_dataset
from gphm.data.synthetic import EXPRESSIONS, MakeSyntheticConfig
from gphm.data.synthetic.sequence import (
    DRIVING_CAMERA,
    SEQUENCE_SPLIT,
    blend_expressions,
    generate_sequence,
    plan_sequence,
    sequence_rig,
)
from tests.training.conftest import _rows


def _cfg(out, **kw):
    base = dict(out=str(out), mode="sequence", num_identities=2, num_frames=6, num_views=2,
                resolution=32, mesh_frequency=8, seed=3)  # fmt: skip
    return MakeSyntheticConfig(**(base | kw))


@pytest.fixture(scope="module")
def sequence_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    generate_sequence(_cfg(root / "a"), progress=False)
    generate_sequence(_cfg(root / "b"), progress=False)
    return root


def test_plan_is_deterministic_smooth_and_starts_neutral_at_the_identity_pose(tmp_path):
    a, b = (
        plan_sequence(_cfg(tmp_path, num_frames=30)),
        plan_sequence(_cfg(tmp_path, num_frames=30)),
    )
    assert a.keyframes == b.keyframes and a.expressions == b.expressions
    assert all(np.array_equal(p.R, q.R) for p, q in zip(a.poses, b.poses))
    assert a.keyframes[0] == (0, "neutral") and a.keyframes[-1][0] == 29
    assert a.expressions[0] == EXPRESSIONS["neutral"]
    np.testing.assert_allclose(a.poses[0].R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(a.poses[0].T, 0.0, atol=1e-12)
    labels = [n for _, n in a.keyframes]
    assert all(x != y for x, y in zip(labels, labels[1:]))  # a change at every keyframe
    # Smooth: no activation or head angle jumps between consecutive steps.
    act = np.array([list(dataclasses.asdict(e).values()) for e in a.expressions])
    assert np.abs(np.diff(act, axis=0)).max() <= 0.5
    angles = np.array([np.degrees(np.arccos(np.clip((np.trace(p.R.T @ q.R) - 1) / 2, -1, 1)))
                       for p, q in zip(a.poses, a.poses[1:])])  # fmt: skip
    assert angles.max() < 3.0 and np.abs(np.array([p.T for p in a.poses])).max() <= 0.03 + 1e-9
    other = plan_sequence(_cfg(tmp_path, num_frames=30, seed=4))
    assert other.keyframes != a.keyframes or other.poses[5].R.tolist() != a.poses[5].R.tolist()


def test_blend_and_rig():
    half = blend_expressions(EXPRESSIONS["neutral"], EXPRESSIONS["jaw_open"], 0.5)
    assert half.jaw_open == pytest.approx(0.5) and half.smile_l == 0.0
    rig = sequence_rig(4, 64)
    assert rig.names[0] == DRIVING_CAMERA and rig.azimuth[0] == 0 and rig.elevation[0] == 0
    assert len(set(np.round(rig.azimuth, 6))) == 4 and np.abs(rig.azimuth).max() <= 60


def test_sequence_dataset_shares_each_step_across_subjects(sequence_dir):
    ds, meta = load_dataset_dir(sequence_dir / "a")
    seq = meta["sequence"]
    assert seq["num_steps"] == 6 and seq["driving_camera"] == DRIVING_CAMERA
    assert meta["num_frames"] == 12 and meta["split_sizes"][SEQUENCE_SPLIT] == len(ds) == 24
    assert set(ds["split"]) == {SEQUENCE_SPLIT}
    steps = ds["sequence_step"]
    subjects = ds["subject"]
    by_key = {}
    for i, (s, t) in enumerate(zip(subjects, steps)):
        assert meta["frames"][ds[i]["frame"]]["sequence_step"] == t
        by_key.setdefault(t, {}).setdefault(s, i)
    for rows in by_key.values():
        i0, i1 = rows[0], rows[1]
        r0, r1 = ds[i0], ds[i1]
        # Same expression label and parameters, same head pose; different people.
        assert r0["expression"] == r1["expression"]
        assert np.allclose(r0["head_R"], r1["head_R"]) and np.allclose(r0["head_T"], r1["head_T"])
        assert not np.allclose(r0["landmarks_3d"], r1["landmarks_3d"])
    assert len(seq["expression_params"]) == 6 and len(seq["head_pose"]) == 6
    for name in ("contact_sheet.png", "preview_seq_000.mp4", "preview_seq_001.mp4"):
        assert (sequence_dir / "a" / name).stat().st_size > 0, name


def test_sequence_dataset_is_byte_deterministic(sequence_dir):
    for name in ("data-00000-of-00001.arrow", "meta.json", "state.json", "contact_sheet.png"):
        assert (sequence_dir / "a" / name).read_bytes() == (sequence_dir / "b" / name).read_bytes()


def test_mode_and_num_frames_are_validated(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of expressions|sequence"):
        _cfg(tmp_path, mode="video")
    with pytest.raises(ValueError, match="num_frames must be in 2..10000"):
        _cfg(tmp_path, num_frames=1)


def _meta():
    return {
        "subjects": ["a", "b"], "expressions": ["neutral", "open"], "cameras": ["c0", "c1", "c2"],
        "num_frames": 4,
        "frames": [{"subject": s, "expression": e} for s in range(2) for e in ["neutral", "open"]],
        "landmark_convention": "fibonacci68", "image_size": [32, 32],
        "canonical_transform": {"scale": 1.0, "R": np.eye(3).tolist(), "T": [0.0, 0.0, 0.0]},
        "generator": {"kind": "test"},
    }  # fmt: skip


def test_optional_sequence_step_column_is_all_rows_or_none(tmp_path):
    plain = write_dataset(tmp_path / "plain", _rows(), _meta())
    ds, _ = load_dataset_dir(plain)
    assert "sequence_step" not in ds.column_names  # older layout unchanged
    rows = [dict(r, sequence_step=r["frame"] % 2) for r in _rows()]
    ds2, _ = load_dataset_dir(write_dataset(tmp_path / "steps", rows, _meta()))
    assert ds2["sequence_step"] == [r["sequence_step"] for r in rows]
    mixed = list(_rows())
    mixed[0] = dict(mixed[0], sequence_step=0)
    with pytest.raises(ValueError, match="row 1: optional fields \\[\\], earlier rows have"):
        write_dataset(tmp_path / "mixed", mixed, _meta())
    bad = [dict(r, sequence_step=-1) for r in _rows()]
    with pytest.raises(ValueError, match="row 0: field 'sequence_step' is -1"):
        write_dataset(tmp_path / "bad", bad, _meta())
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "bad").exists()
    assert json.loads((tmp_path / "steps/meta.json").read_text())["num_rows"] == 12
