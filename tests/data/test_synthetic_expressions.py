"""Neutral twins, expression mixtures and on-demand truth renders of the synthetic
generator (gphm.data.synthetic.truth, generate, sequence)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gphm.data.format import load_dataset_dir
from gphm.data.synthetic import EXPRESSIONS, MakeSyntheticConfig, build_template
from gphm.data.synthetic.generate import MIX_LABEL, generate, plan_dataset, sample_mixture
from gphm.data.synthetic.sequence import blend_expressions, plan_sequence
from gphm.data.synthetic.truth import (
    EXPRESSION_FIELDS,
    NEUTRAL_TWINS_DIR,
    DatasetTruth,
    expression_vector,
    load_neutral_twins,
    render_truth,
)
from gphm.errors import UserError
from gphm.evaluation.expression import expression_stats

TINY = dict(
    num_identities=3,
    num_expressions=4,
    num_views=3,
    resolution=32,
    supersample=1,
    mesh_frequency=12,
    heldout_views=1,
    val_views=0,
)


def _cfg(out: Path, **extra) -> MakeSyntheticConfig:
    return MakeSyntheticConfig(out=str(out), **{**TINY, **extra})


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "report.json"
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A tiny dataset with 3 mixture frames per subject and the default neutral twins."""
    out = tmp_path_factory.mktemp("mixed") / "ds"
    cfg = _cfg(out, mixtures_per_subject=3, seed=4)
    report = generate(cfg, progress=False)
    ds, meta = load_dataset_dir(out)
    return cfg, report, ds, meta


def test_generation_is_deterministic_with_mixtures_and_twins(mixed, tmp_path):
    cfg, report, _, _ = mixed
    again = tmp_path / "again"
    generate(_cfg(again, mixtures_per_subject=3, seed=4), progress=False)
    a, b = _hashes(Path(cfg.out)), _hashes(again)
    assert a == b
    assert any(k.startswith(f"{NEUTRAL_TWINS_DIR}/") and k.endswith(".png") for k in a)
    other = tmp_path / "other"
    generate(_cfg(other, mixtures_per_subject=3, seed=5), progress=False)
    assert _hashes(other)[f"{NEUTRAL_TWINS_DIR}/index.json"] != a[f"{NEUTRAL_TWINS_DIR}/index.json"]


def test_mixture_frames_are_recorded_and_labelled(mixed):
    cfg, report, ds, meta = mixed
    E, M = cfg.num_expressions, cfg.mixtures_per_subject
    assert meta["num_frames"] == cfg.num_identities * (E + M) and report["num_mixture_frames"] == 9
    assert meta["expressions"] == ["neutral", "jaw_open", "smile_l", "smile_r", MIX_LABEL]
    assert meta["generator"]["expression_fields"] == list(EXPRESSION_FIELDS)
    held = {(c["subject"], c["expression"]) for c in meta["generator"]["heldout_combos"]}
    for i, frame in enumerate(meta["frames"]):
        s, j = divmod(i, E + M)
        params = frame["expression_params"]
        assert frame["subject"] == s and set(params) == set(EXPRESSION_FIELDS)
        if j < E:  # a labelled frame: the label's parameters
            assert frame["expression"] == meta["expressions"][j]
            assert params == EXPRESSIONS[frame["expression"]].to_dict()
            continue
        active = {k: v for k, v in params.items() if v > 0}
        assert frame["expression"] == MIX_LABEL
        assert 1 <= len(active) <= cfg.mixture_max_active
        assert all(0.3 <= v <= 1.0 for v in active.values())
        assert set(active) <= {"jaw_open", "smile_l", "smile_r"}
        assert not {(s, label) for label in active} & held  # no leak of held-out pairs
    rows = ds.select_columns(["frame", "expression", "camera", "split"]).to_list()
    heldout_cams = set(meta["generator"]["cameras"]["heldout"])
    for r in rows:
        assert r["expression"] == meta["frames"][r["frame"]]["expression"]
        if r["expression"] == MIX_LABEL:  # mixtures are trained, split by camera only
            assert r["split"] == ("heldout_view" if r["camera"] in heldout_cams else "train")


def test_mixtures_at_standard_intensity_keep_their_label(tmp_path):
    cfg = _cfg(tmp_path / "x", mixtures_per_subject=4, mixture_min_intensity=1.0,
               mixture_max_intensity=1.0, mixture_max_active=1)  # fmt: skip
    plan = plan_dataset(cfg)
    assert MIX_LABEL not in plan.expressions  # every mixture is exactly one label
    mixtures = [f for f in plan.frames if f.mixture is not None]
    assert len(mixtures) == 12
    for f in mixtures:
        label = plan.expressions[f.expression]
        assert label != "neutral" and f.mixture == EXPRESSIONS[label]
        assert (f.subject, f.expression) not in plan.heldout_combos


def test_sample_mixture_is_seeded_and_clipped():
    basis = ["smile", "smile_l", "jaw_open"]
    draw = [sample_mixture(np.random.default_rng([7, s]), basis, (0.8, 1.0), 3) for s in range(40)]
    again = [sample_mixture(np.random.default_rng([7, s]), basis, (0.8, 1.0), 3) for s in range(40)]
    assert draw == again
    vecs = np.stack([expression_vector(p) for p in draw])
    assert vecs.max() <= 1.0 and vecs.min() >= 0.0
    assert (vecs[:, EXPRESSION_FIELDS.index("smile_l")] == 1.0).any()  # smile + smile_l, clipped
    assert len({tuple(v) for v in vecs}) == 40


def test_neutral_twins_are_the_neutral_render_of_the_row(mixed):
    cfg, report, ds, meta = mixed
    twins = load_neutral_twins(cfg.out)
    C = cfg.num_views
    rows = ds.select_columns(["frame", "camera", "split", "expression"]).to_list()
    evaluation = [i for i, r in enumerate(rows) if r["split"] != "train"]
    assert sorted(twins.by_row) == evaluation and report["neutral_twins"] == len(evaluation)
    plan = plan_dataset(cfg)
    template = build_template(cfg.mesh_frequency)
    checked = {"neutral": 0, "active": 0, "differs": 0}
    for i in evaluation:
        frame = plan.frames[rows[i]["frame"]]
        assert frame.index == rows[i]["frame"] and i == frame.index * C + plan.rig.names.index(
            rows[i]["camera"]
        )
        image, mask, lmk = twins.get(i)
        truth = render_truth(
            template, plan.identities[frame.subject], EXPRESSIONS["neutral"], frame.pose,
            plan.rig, supersample=cfg.supersample,
        )  # fmt: skip
        c = plan.rig.names.index(rows[i]["camera"])
        assert np.array_equal(image, truth.images[c]) and np.array_equal(mask, truth.masks[c])
        np.testing.assert_array_equal(lmk, truth.landmarks_3d)
        row = ds[i]
        row_image = np.asarray(row["image"])
        if rows[i]["expression"] == "neutral":
            assert np.array_equal(image, row_image)  # the twin of a neutral row is the row
            checked["neutral"] += 1
        else:
            # A small expression may hide from a side camera at 32 px; jaw_open never does.
            differs = not np.array_equal(image, row_image)
            assert differs or rows[i]["expression"] != "jaw_open"
            moved = np.linalg.norm(lmk - np.asarray(row["landmarks_3d"]), axis=-1)
            assert moved.max() > 1e-3  # the expression moves some landmarks
            checked["active"] += 1
            checked["differs"] += differs
    assert checked["neutral"] and checked["differs"] >= 0.75 * checked["active"]
    with pytest.raises(KeyError, match="no neutral twin"):
        twins.get(next(i for i, r in enumerate(rows) if r["split"] == "train"))


def test_truth_renders_any_identity_and_expression(mixed):
    """DatasetTruth rebuilt from meta.json reproduces the rows and transfers expressions."""
    cfg, _, ds, meta = mixed
    truth = DatasetTruth(meta)
    rows = ds.select_columns(["frame", "expression", "subject", "camera"]).to_list()
    reference = meta["generator"]["cameras"]["reference"]
    mixes = [i for i, r in enumerate(rows) if r["expression"] == MIX_LABEL]
    # The frontal row of the strongest mixture (small ones can vanish at 32 px).
    strength = lambda i: sum(meta["frames"][rows[i]["frame"]]["expression_params"].values())  # noqa: E731
    mix = max((i for i in mixes if rows[i]["camera"] == reference), key=strength)
    for i in (0, mix):
        row = ds[i]
        views = truth.render_row(row)
        diff = np.abs(views.images[0].astype(int) - np.asarray(row["image"]))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # the row's pose is float32
        np.testing.assert_allclose(views.landmarks_3d, row["landmarks_3d"], atol=1e-5)
    # Transfer: subject 1 with subject 0's mixture frame's expression, at that row's camera.
    row = ds[mix]
    other = (row["subject"] + 1) % cfg.num_identities
    moved = truth.render_row(row, subject=other)
    still = truth.render_row(row, subject=other, expression=EXPRESSIONS["neutral"])
    assert np.abs(moved.images[0].astype(int) - still.images[0]).max() > 8
    # A renderer reproducing the truth captures the expression fully.
    f = lambda im: torch.from_numpy(im).double() / 255  # noqa: E731
    stats = expression_stats(f(moved.images), f(still.images), f(moved.images), f(still.images))
    assert float(stats.capture[0]) == pytest.approx(1.0) and stats.support_values[0] > 0


def test_old_datasets_still_load_and_say_how_to_get_twins(tmp_path):
    out = tmp_path / "old"
    generate(_cfg(out, neutral_twins="none"), progress=False)
    assert not (out / NEUTRAL_TWINS_DIR).exists()
    ds, meta = load_dataset_dir(out)
    with pytest.raises(UserError, match="has no neutral twins.*regenerate it with gphm-synth"):
        load_neutral_twins(out)
    # A meta.json of an older generator: no per-frame parameters, no expression_fields.
    for frame in meta["frames"]:
        del frame["expression_params"]
    del meta["generator"]["expression_fields"]
    (out / "meta.json").write_text(json.dumps(meta))
    ds, meta = load_dataset_dir(out)
    truth = DatasetTruth(meta)
    assert truth.frame_expression(1) == EXPRESSIONS[meta["frames"][1]["expression"]]
    (out / NEUTRAL_TWINS_DIR).mkdir()
    (out / NEUTRAL_TWINS_DIR / "index.json").write_text("{broken")
    with pytest.raises(UserError, match="index.json: unreadable"):
        load_neutral_twins(out)
    shutil.rmtree(out / NEUTRAL_TWINS_DIR)


def test_sequence_records_every_step_and_twins_the_driving_camera(tmp_path):
    out = tmp_path / "seq"
    cfg = _cfg(out, mode="sequence", num_frames=5, num_identities=2)
    report = generate(cfg, progress=False)
    ds, meta = load_dataset_dir(out)
    plan = plan_sequence(cfg)
    truth = DatasetTruth(meta)
    for i, frame in enumerate(meta["frames"]):
        step = frame["sequence_step"]
        assert frame["expression_params"] == plan.expressions[step].to_dict()
        assert truth.frame_expression(i) == plan.expressions[step]
    # An in-between step is a blend of its keyframes, not one label's expression.
    (s0, a), (s1, b) = plan.keyframes[:2]
    mid = (s0 + s1) // 2
    assert s0 < mid < s1
    assert all(plan.expressions[mid] != EXPRESSIONS[n] for n in plan.labels)
    weight = expression_vector(plan.expressions[mid]) - expression_vector(EXPRESSIONS[a])
    span = expression_vector(EXPRESSIONS[b]) - expression_vector(EXPRESSIONS[a])
    w = float(weight @ span / (span @ span))
    assert 0 < w < 1 and blend_expressions(EXPRESSIONS[a], EXPRESSIONS[b], w) == pytest.approx(
        plan.expressions[mid]
    )
    twins = load_neutral_twins(out)
    cams = {twins.by_row[i]["camera"] for i in twins.by_row}
    assert cams == {"cam_00"} and report["neutral_twins"] == 2 * 5
    rows = ds.select_columns(["camera", "sequence_step"]).to_list()
    for i in twins.by_row:
        assert rows[i]["camera"] == "cam_00"
        image, _, _ = twins.get(i)
        if rows[i]["sequence_step"] == 0:  # step 0 is the neutral face
            assert np.array_equal(image, np.asarray(ds[i]["image"]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(neutral_twins="some"), "neutral_twins must be one of none|eval|all"),
        (dict(mixtures_per_subject=-1), "mixtures_per_subject must be in 0..1000"),
        (dict(mixtures_per_subject=2, mode="sequence"), "mixtures_per_subject is for mode"),
        (dict(mixtures_per_subject=2, num_expressions=1), "needs num_expressions >= 2"),
        (dict(mixture_min_intensity=0.8, mixture_max_intensity=0.5), "0 <= min <= max <= 1"),
        (dict(mixture_max_active=0), "mixture_max_active must be >= 1"),
    ],
)
def test_bad_expression_options_are_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        _cfg(Path("x"), **extra)


def test_truth_refuses_datasets_it_did_not_generate(mixed):
    _, _, _, meta = mixed
    with pytest.raises(UserError, match="not a gphm synthetic dataset"):
        DatasetTruth({**meta, "generator": {"name": "gphm.data.importers.nersemble"}}, "m.json")
    broken = {**meta, "generator": {**meta["generator"], "identities": [{"shape": {}}]}}
    with pytest.raises(UserError, match="m.json: generator.identities missing or unreadable"):
        DatasetTruth(broken, "m.json")


def test_cli_options(tmp_path, capsys):
    from gphm.cli.synth import cli

    out = tmp_path / "cli"
    args = [f"{k}={v}" for k, v in TINY.items()]
    assert cli([*args, f"out={out}", "mixtures_per_subject=2", "mixture_min_intensity=1",
                "mixture_max_active=1", "neutral_twins=none"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "(6 mixture frames)" in said and "neutral twins" not in said
    assert not (out / NEUTRAL_TWINS_DIR).exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"]["mixtures"]["intensity"] == [1.0, 1.0]
    assert MIX_LABEL not in meta["expressions"]  # intensity 1, one label: a label's frame
    assert cli([*args, f"out={tmp_path / 'bad'}", "neutral_twins=yes"]) == 2
    err = capsys.readouterr().err
    assert "neutral_twins must be one of none|eval|all" in err and err.count("\n") == 1


def test_mixtures_never_move_a_field_of_a_subjects_untrained_labels(tmp_path):
    """With smile / surprise among the labels, a held-out ``smile`` also keeps smile_l
    and smile_r out of that subject's (trained) mixtures."""
    extra = dict(
        num_identities=6,
        num_expressions=12,
        mixtures_per_subject=20,
        mixture_max_active=3,
        heldout_combos_per_subject=2,
        val_combos_per_subject=1,
    )
    cfg = _cfg(tmp_path / "x", **extra)
    plan = plan_dataset(cfg)
    untrained = plan.heldout_combos | plan.val_combos
    composite = 0
    for s in range(cfg.num_identities):
        labels = [plan.expressions[e] for t, e in untrained if t == s]
        fields = {f for n in labels for f, v in EXPRESSIONS[n].to_dict().items() if v}
        composite += any(n in ("smile", "surprise") for n in labels)
        for frame in plan.frames:
            if frame.subject == s and frame.mixture is not None:
                assert not fields & {f for f, v in frame.mixture.to_dict().items() if v}
    assert composite  # the case the rule is for does occur with this seed
