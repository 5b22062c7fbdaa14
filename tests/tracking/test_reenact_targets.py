"""split=reenact's target kinds (1view, 3view, trained) and its expression metrics on the
truth's support (gphm.evaluation.reenact, gphm.evaluation.reenact_targets), and the
sequence generator's ``identities_from_seed`` (gphm.data.synthetic.sequence)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import gphm.evaluation.reenact as reenact_eval
from gphm.data.synthetic import MakeSyntheticConfig
from gphm.data.synthetic.generate import generate, plan_dataset
from gphm.data.synthetic.sequence import generate_sequence, plan_sequence
from gphm.evaluation.expression import SUPPORT_THRESHOLD, _NeutralTruth
from gphm.evaluation.reenact import check_reenact_options, evaluate_reenact
from gphm.evaluation.reenact_targets import trained_targets
from gphm.models.runs import dataset_fingerprint
from tests.tracking.test_tracking import FAST, run, sequence  # noqa: F401  (fixtures)

TINY = {"resolution": 32, "mesh_frequency": 8, "supersample": 1}
SEED = 5  # the regular set whose people perform the trained-target sequence


def _sequence(out, **kw):
    cfg = MakeSyntheticConfig(out=str(out), mode="sequence", num_identities=2, num_frames=4,
                              seed=0, **TINY, **kw)  # fmt: skip
    generate_sequence(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def rig_sequence(tmp_path_factory):
    """2 subjects × 4 steps × 3 cameras at 32 px; neutral twins of the driving camera."""
    return _sequence(tmp_path_factory.mktemp("reenact") / "seq3", num_views=3)


@pytest.fixture(scope="module")
def regular_set(tmp_path_factory):
    """A regular set of seed SEED the size of the tiny run's codebooks (2 × 2 frames)."""
    out = tmp_path_factory.mktemp("reenact") / "regular"
    generate(MakeSyntheticConfig(out=str(out), num_identities=2, num_expressions=2,
                                 num_views=2, seed=SEED, **TINY), progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def trained_run(run, regular_set, tmp_path_factory):  # noqa: F811
    """The tiny run posing as one trained on ``regular_set`` (its codebooks have the
    sizes): the checks only read names, frames, the fingerprint and config.yaml."""
    import json

    meta = json.loads((regular_set / "meta.json").read_text())
    run_dir = tmp_path_factory.mktemp("reenact") / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text(f"data:\n  path: {regular_set}\n")
    extra = {**run.extra, "subjects": meta["subjects"], "frames": meta["frames"],
             "train_frames": list(range(len(meta["frames"]))),
             "dataset_fingerprint": dataset_fingerprint(regular_set)}  # fmt: skip
    return dataclasses.replace(run, extra=extra, path=run_dir / "model")


@pytest.fixture(scope="module")
def people_sequence(tmp_path_factory):
    """The sequence performed by the regular set's people (identities_from_seed=SEED)."""
    return _sequence(tmp_path_factory.mktemp("reenact") / "people", num_views=2,
                     identities_from_seed=SEED)  # fmt: skip


def _oracle(data_path, meta, ignore_code=False):
    """A stand-in for the model's render: the truth itself (rows with the driven codes,
    the neutral twins with the target's neutral code), or with ``ignore_code`` the rows
    whatever the code. Returns it and the calls it saw."""
    truth = _NeutralTruth(data_path, meta)
    calls = []

    def render(net, avatar, z_exp, poses, items, size):
        calls.append((avatar, z_exp, poses, items))
        if not ignore_code and torch.equal(z_exp, avatar.z_exp):  # the neutral baseline
            return torch.stack([truth(it)[0] for it in items])
        return torch.stack([it.image for it in items])

    return render, calls


def _expected_gain(data_path, meta, subject_rows):
    """Support gain of a renderer that reproduces the truth: 120 dB (the PSNR cap) minus
    the pooled support PSNR of the neutral twins against the rows."""
    truth = _NeutralTruth(data_path, meta)
    sse, count = 0.0, 0.0
    for it in subject_rows:
        tw = truth(it)[0].double()
        gt = it.image.double()
        support = (gt - tw).abs().amax(-1) > SUPPORT_THRESHOLD
        sse += float((((tw - gt) ** 2).sum(-1) * support).sum())
        count += 3.0 * float(support.sum())
    return 120.0 - (-10.0 * math.log10(sse / count))


def test_support_metrics_are_exact_on_the_truth(run, rig_sequence, monkeypatch):  # noqa: F811
    """A stand-in renderer that reproduces the truth captures it exactly (capture 1, the
    gain of a perfect render); one that ignores the code captures nothing (0, 0 dB)."""
    from gphm.data.loaders import HeadDataset

    ds = HeadDataset(rig_sequence, split=["heldout_combo"])
    render, calls = _oracle(rig_sequence, ds.meta)
    monkeypatch.setattr(reenact_eval, "_render", render)
    report = evaluate_reenact(run, rig_sequence, "seq_000", FAST, targets=["1view", "3view"])
    # neutral_twins=eval: the driving camera's 4 rows of the target, nothing of self.
    twinned = [ds[i] for i in range(len(ds))
               if int(ds.subjects[i]) == 1 and ds[i].camera == "cam_00"]  # fmt: skip
    gain = _expected_gain(rig_sequence, ds.meta, twinned)
    for kind in ("1view", "3view"):
        p = f"cross_{kind}"
        assert report[f"{p}_n_support_items"] == 4
        assert report[f"{p}_n_support_empty"] >= 1  # step 0 is the neutral face itself
        for suffix in ("", "_scale_aligned"):
            assert report[f"{p}_capture{suffix}"] == 1.0
            assert report[f"{p}_support_gain_db{suffix}"] == pytest.approx(gain, abs=2e-3)
        labels = report[f"{p}_support_per_label"]
        assert sum(v["items"] for v in labels.values()) == 4 - report[f"{p}_n_support_empty"]
        assert all(v["capture"] in (None, 1.0) for v in labels.values())
    assert report["self_n_support_items"] == 0 and report["self_capture"] is None
    # The old names are the 1-view figures; every kind has its whole-image figures too.
    assert report["cross_capture"] == report["cross_1view_capture"] == 1.0
    assert report["cross_psnr"] == report["cross_1view_psnr"] and report["n_cross"] == 12
    assert report["n_cross_3view"] == 12 and report["cross_3view_gain_db"] is not None
    entries = {e["target"]: e for e in report["per_subject"]}
    assert entries["1view"]["input_views"] == ["cam_00"]
    assert entries["3view"]["input_views"][0] == "cam_00"
    assert sorted(entries["3view"]["input_views"]) == ["cam_00", "cam_01", "cam_02"]
    assert entries["3view"]["cross_capture"] == 1.0
    assert entries["3view"]["cross_n_support_items"] == 4

    # A renderer that ignores the code changes nothing where the truth changes: 0 and 0.
    ignoring, _ = _oracle(rig_sequence, ds.meta, ignore_code=True)
    monkeypatch.setattr(reenact_eval, "_render", ignoring)
    flat = evaluate_reenact(run, rig_sequence, "seq_000", FAST, support_cameras="all")
    assert flat["cross_capture"] == 0.0 and flat["cross_support_gain_db"] == 0.0
    assert flat["cross_capture_relative"] == 0.0
    # support_cameras=all: every camera's twin (the missing ones rendered) is scored.
    assert flat["cross_n_support_items"] == 4 * 3 and flat["self_n_support_items"] == 4 * 2
    assert flat["self_capture"] == 0.0 and flat["support_cameras"] == "all"


def test_3view_targets_are_fitted_from_the_rig(run, rig_sequence, tmp_path, monkeypatch):  # noqa: F811
    import gphm.evaluation.reenact_targets as targets_mod

    fitted = []

    def fit_images(model, targets, *args, **kwargs):
        fitted.append(targets)
        return real(model, targets, *args, **kwargs)

    real = targets_mod.fit_images
    monkeypatch.setattr(targets_mod, "fit_images", fit_images)
    report = evaluate_reenact(run, rig_sequence, "seq_000", FAST, targets=["3view"],
                              save_dir=tmp_path)  # fmt: skip
    assert report["target_kinds"] == ["3view"] and "cross_psnr" not in report
    for key in ("cross_3view_psnr", "cross_3view_psnr_neutral_scale_aligned",
                "cross_3view_gain_db", "cross_3view_gain_db_relative_scale_aligned",
                "cross_3view_support_gain_db", "cross_3view_capture"):  # fmt: skip
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    entry = report["per_subject"][0]
    assert entry["target"] == "3view" and entry["input_views"][0] == "cam_00"
    assert report["side_by_side_rows"][0].startswith("seq_001 3view step")
    # One fit of the target from its step 0 in 3 cameras of the calibrated rig (each
    # target carries its camera: one head pose in world), the driving camera first.
    from gphm.data.loaders import HeadDataset

    ds = HeadDataset(rig_sequence, split=["heldout_combo"])
    step0 = {ds[i].camera: ds[i] for i in range(len(ds))
             if int(ds.subjects[i]) == 1 and int(ds.frames[i]) == 4}  # fmt: skip
    (rig,) = [t for t in fitted if len(t) == 3]
    for target, cam in zip(rig, entry["input_views"]):
        assert torch.equal(target.camera, step0[cam].viewmat)
        assert torch.equal(target.image, step0[cam].image)


def test_trained_targets_use_the_trained_codes_at_the_true_pose(
    trained_run, people_sequence, monkeypatch
):
    from gphm.data.loaders import HeadDataset

    ds = HeadDataset(people_sequence, split=["heldout_combo"])
    render, calls = _oracle(people_sequence, ds.meta)
    monkeypatch.setattr(reenact_eval, "_render", render)
    # trained_data defaults to the data.path the run's config.yaml records.
    report = evaluate_reenact(trained_run, people_sequence, "synth_000", FAST,
                              targets=["trained"])  # fmt: skip
    entry = report["per_subject"][0]
    assert entry == {**entry, "subject": "synth_001", "target": "trained",
                     "trained_subject": "synth_001", "neutral_frame": 2}  # fmt: skip
    assert report["cross_trained_capture"] == 1.0 and report["cross_trained_n_support_items"] == 4
    assert "cross_trained_psnr_scale_aligned" not in report  # nothing fitted to align
    weights = trained_run.model
    mine = [c for c in calls
            if torch.equal(c[0].z_id, weights.identity_codes.codes.weight[1].detach())]  # fmt: skip
    assert len(mine) == 4 * 3  # 4 steps × (driven, relative, neutral)
    neutral = weights.expression_codes.codes.weight[2].detach()
    assert sum(torch.equal(z, neutral) for _, z, _, _ in mine) >= 4  # the baseline's
    for avatar, _, poses, items in mine:
        assert torch.equal(avatar.z_exp, neutral)
        for (R, T, s), it in zip(poses, items):
            assert torch.equal(R, it.head_R) and torch.equal(T, it.head_T)
            assert s == float(it.head_scale) and int(it.subject) == 1


def test_trained_targets_are_refused_unless_established(
    trained_run, people_sequence, rig_sequence, regular_set, tmp_path
):
    from gphm.data.loaders import HeadDataset

    people = HeadDataset(people_sequence, split=["heldout_combo"]).meta
    own = HeadDataset(rig_sequence, split=["heldout_combo"]).meta
    assert trained_targets(trained_run, people, [1]) == {1: (1, 2)}
    with pytest.raises(ValueError, match="without identities_from_seed"):
        trained_targets(trained_run, own, [1], data_path=rig_sequence)
    with pytest.raises(ValueError, match="reenact.trained_data=.* is not the dataset the run"):
        trained_targets(trained_run, people, [1], trained_data=people_sequence)
    nowhere = dataclasses.replace(trained_run, path=tmp_path / "moved" / "model")
    with pytest.raises(ValueError, match="pass reenact.trained_data=TRAINING_SET"):
        trained_targets(nowhere, people, [1])
    assert trained_targets(nowhere, people, [1], trained_data=regular_set) == {1: (1, 2)}
    other_seed = {**people, "generator": {**people["generator"], "params": {
        **people["generator"]["params"], "identities_from_seed": SEED + 1}}}  # fmt: skip
    with pytest.raises(ValueError, match=f"regenerate it with identities_from_seed={SEED}"):
        trained_targets(trained_run, other_seed, [1])
    changed = {**people, "generator": {**people["generator"], "identities": [
        people["generator"]["identities"][0], people["generator"]["identities"][0]]}}  # fmt: skip
    with pytest.raises(ValueError, match="synth_001 .* different identity parameters"):
        trained_targets(trained_run, changed, [1])
    with pytest.raises(ValueError, match="no trained 'smile' frame|no trained frame shows"):
        trained_targets(trained_run, people, [1], neutral="smile")
    # Through evaluate_reenact: refused before any tracking (a sequence of its own people).
    with pytest.raises(ValueError, match="identities_from_seed"):
        evaluate_reenact(trained_run, rig_sequence, "seq_000", FAST, targets=["trained"])


def test_reenact_options_fail_clearly(run, sequence):  # noqa: F811
    assert check_reenact_options(["3view", "1view"]) == ["3view", "1view"]
    assert check_reenact_options("trained") == ["trained"]
    for bad in (["1view", "4view"], [], ["1view", "1view"]):
        with pytest.raises(ValueError, match=r"reenact.targets must be .*\['1view', '3view', "):
            check_reenact_options(bad)
    with pytest.raises(ValueError, match="unknown \\['4view'\\]"):
        check_reenact_options(["4view"])
    with pytest.raises(ValueError, match=r"reenact.support_cameras must be one of twins\|all"):
        check_reenact_options(["1view"], "some")
    # The 2-camera sequence cannot give 3 views: refused before tracking.
    with pytest.raises(ValueError, match="reenact.targets=3view fits each target from 3"):
        evaluate_reenact(run, sequence, "seq_000", FAST, targets=["3view"])
    from gphm.cli.evaluate import EvalReenactConfig

    with pytest.raises(ValueError, match="reenact.targets must be"):
        EvalReenactConfig(targets=["2view"])
    assert EvalReenactConfig().targets == ["1view"]


def test_identities_from_seed_are_the_regular_sets_people(tmp_path):
    regular = plan_dataset(MakeSyntheticConfig(out=str(tmp_path / "r"), num_identities=4,
                                               seed=SEED, **TINY))  # fmt: skip
    cfg = MakeSyntheticConfig(out=str(tmp_path / "s"), mode="sequence", num_identities=3,
                              seed=9, identities_from_seed=SEED, **TINY)  # fmt: skip
    plan = plan_sequence(cfg)
    assert plan.subjects == regular.subjects[:3] == ["synth_000", "synth_001", "synth_002"]
    assert plan.identities == regular.identities[:3]
    again = plan_sequence(cfg)  # deterministic, and the sequence's own seed still drives it
    assert again.identities == plan.identities and again.keyframes == plan.keyframes
    meta = plan.meta(_template())
    assert meta["generator"]["params"]["identities_from_seed"] == SEED
    assert meta["generator"]["identities_from"]["seed"] == SEED
    assert meta["generator"]["identities"] == [i.to_dict() for i in regular.identities[:3]]
    # The default is unchanged: the sequence's own people, and nothing new in meta.json.
    own = plan_sequence(dataclasses.replace(cfg, identities_from_seed=None))
    assert own.subjects[0] == "seq_000" and own.identities[0] != regular.identities[0]
    own_meta = own.meta(_template())
    assert "identities_from_seed" not in own_meta["generator"]["params"]
    assert "identities_from" not in own_meta["generator"]
    assert "identities_from_seed" not in regular.meta(_template())["generator"]["params"]
    with pytest.raises(ValueError, match="identities_from_seed is for mode=sequence"):
        MakeSyntheticConfig(out=str(tmp_path / "x"), identities_from_seed=SEED)
    with pytest.raises(ValueError, match="must be >= 0"):
        MakeSyntheticConfig(out=str(tmp_path / "x"), mode="sequence", identities_from_seed=-1)


def _template():
    from gphm.data.synthetic.head import build_template

    return build_template(TINY["mesh_frequency"])
