"""Training on many identities: generator cost options, the schedule rule, streaming
rows from the arrow files, and 2-process training on a multi-identity set."""

import gc
import json
import math
import subprocess
import sys
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gphm.cli import parse_config
from gphm.data.loaders import HeadDataset
from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.generate import _split, generate, plan_dataset
from gphm.data.synthetic.truth import load_neutral_twins
from gphm.training.config import TrainConfig, TrainRunConfig
from gphm.training.schedule import DEMO_TRAIN_ROWS, stage_steps

from .conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
# 6 identities, each 4 of 5 expressions from 3 of 6 cameras at 32 px (the tiny model's hr).
SMALL = dict(num_identities=6, num_expressions=5, expressions_per_subject=4, num_views=6,
             views_per_subject=3, resolution=32, mesh_frequency=10, supersample=1)  # fmt: skip


@pytest.fixture(scope="module")
def many_ids(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "six"
    generate(MakeSyntheticConfig(out=str(out), **SMALL), progress=False)
    return out


def _train_rows(plan) -> int:
    cams = plan.cameras_of
    return sum(_split(plan, f, c) == "train" for f in plan.frames for c in cams(f.subject))


# ---------------------------------------------------------------- generator cost options
def test_cost_options_pick_labels_and_cameras_per_subject(tmp_path):
    cfg = MakeSyntheticConfig(out=str(tmp_path / "x"), num_identities=20,
                              expressions_per_subject=4, views_per_subject=3)  # fmt: skip
    plan = plan_dataset(cfg)
    untrained = plan.heldout_combos | plan.val_combos
    assert [f.index for f in plan.frames] == list(range(len(plan.frames)))  # dense codes
    by_subject = {s: [f.expression for f in plan.frames if f.subject == s] for s in range(20)}
    trained = Counter()
    for s, labels in by_subject.items():
        assert len(labels) == 4 and labels[0] == 0  # neutral first, 4 labels
        assert {e for t, e in untrained if t == s} <= set(labels)  # its evaluation pairs
        trained.update(e for e in labels if (s, e) not in untrained and e)
        cams = plan.cameras_of(s)
        assert len(cams) == 3 and plan.reference_camera in cams
    # 20 subjects × 1 extra trained label over 7: spread evenly (least-trained first)
    assert set(trained) == set(range(1, 8)) and max(trained.values()) - min(trained.values()) <= 1
    assert len({tuple(plan.cameras_of(s)) for s in range(20)}) > 3  # seeded, varied
    full = plan_dataset(MakeSyntheticConfig(out=str(tmp_path / "y"), num_identities=20))
    assert plan.num_rows() == 20 * 4 * 3 and full.num_rows() == 20 * 8 * 9
    # subject 3's frames keep their poses whatever the subset (streams keyed by (s, e))
    f_full = {(f.subject, f.expression): f.pose.T.tolist() for f in full.frames}
    assert all(f_full[(f.subject, f.expression)] == f.pose.T.tolist() for f in plan.frames)


def test_cost_options_are_validated(tmp_path):
    out = str(tmp_path / "x")
    with pytest.raises(ValueError, match="expressions_per_subject must be in 3..8"):
        MakeSyntheticConfig(out=out, expressions_per_subject=2)
    with pytest.raises(ValueError, match="views_per_subject must be in 1..9"):
        MakeSyntheticConfig(out=out, views_per_subject=10)
    with pytest.raises(ValueError, match="for mode=expressions"):
        MakeSyntheticConfig(out=out, mode="sequence", views_per_subject=2)
    # neutral + held-out + validation only: the held-out labels are trained by nobody
    with pytest.raises(ValueError, match="trained for no other subject"):
        plan_dataset(MakeSyntheticConfig(out=out, expressions_per_subject=3))


def test_a_reduced_set_is_a_valid_dataset_with_matching_twins(many_ids):
    meta = json.loads((many_ids / "meta.json").read_text())
    assert meta["num_rows"] == 6 * 4 * 3 and meta["num_frames"] == 24
    ds = HeadDataset(many_ids, split=["train", "val_view", "val_combo", "heldout_view",
                                      "heldout_combo"])  # fmt: skip
    assert Counter(ds.subjects.tolist()) == {s: 12 for s in range(6)}
    twins = load_neutral_twins(many_ids)
    assert len(twins.by_row) > 0
    for row, rec in twins.by_row.items():  # the twin of row r is of r's frame and camera
        r = ds.ds[row]
        assert (r["frame"], r["camera"], r["split"]) == (rec["frame"], rec["camera"], rec["split"])
        if r["expression"] == "neutral":  # a neutral row's twin is the row
            image, _, _ = twins.get(row)
            assert np.array_equal(image, np.asarray(r["image"].convert("RGB")))


# ---------------------------------------------------------------- schedule rule
def test_schedule_rule():
    assert stage_steps(1500, None, 288, 4, 288) == 1500  # the demo set: as configured
    assert stage_steps(300, None, 100, 4, 288) == 300  # smaller sets: as configured
    assert stage_steps(1500, None, 2880, 4, 288) == 15000  # 10× the rows: 10× the steps
    assert stage_steps(1500, None, 2880, 4, 0) == 1500  # reference 0: no scaling
    assert stage_steps(1500, 2.5, 1000, 8, 288) == math.ceil(2.5 * 1000 / 8)  # epochs win
    assert stage_steps(1500, 0.0, 1000, 8, 288) == 0


def test_reference_rows_are_the_demo_sets_training_rows(tmp_path):
    plan = plan_dataset(MakeSyntheticConfig(out=str(tmp_path / "demo")))  # the demo's options
    assert _train_rows(plan) == DEMO_TRAIN_ROWS == TrainConfig().schedule_reference_rows


def test_trainer_applies_the_rule(many_ids, tmp_path):
    from gphm.training.trainer import GuidanceTrainer

    def steps(*extra):
        args = [f"data.path={many_ids}", f"run_dir={tmp_path / 'r'}", "stage=guidance",
                "train.batch_size=2", *TINY_OVERRIDES, *extra]  # fmt: skip
        return GuidanceTrainer(parse_config(TrainRunConfig, args)).total_steps

    rows = len(HeadDataset(many_ids))  # 28 training rows
    assert steps("train.guidance_steps=3") == 3
    assert steps("train.guidance_steps=3", "train.schedule_reference_rows=7") == math.ceil(
        3 * rows / 7
    )
    assert steps("train.guidance_epochs=2") == math.ceil(2 * rows / 2)
    with pytest.raises(Exception, match="guidance_epochs must be a finite number >= 0"):
        parse_config(TrainRunConfig, [f"data.path={many_ids}", "run_dir=x",
                                      "train.guidance_epochs=-1"])  # fmt: skip


# ---------------------------------------------------------------- streaming
def test_rows_stream_from_memory_mapped_arrow_without_being_kept(many_ids):
    """A split larger than the (here tiny) memory budget keeps no decoded row: every
    item's tensors die with the item, and the arrow table is memory-mapped. An eager
    loader (``cache=True``, every row decoded and kept) fails the same check."""
    ds = HeadDataset(many_ids, split="train", cache_bytes=64 * 1024)
    per_item = 4 * 4 * (32 * 32 + 16 * 16)  # hr + lr image and mask, float32
    assert per_item * len(ds) > 64 * 1024
    assert type(ds.ds.data).__name__ == "MemoryMappedTable"

    def refs(dataset) -> list:
        out = []
        for i in range(len(dataset)):
            item = dataset[i]
            out += [weakref.ref(item.image), weakref.ref(item.image_lr)]
            del item
        gc.collect()
        return [r for r in out if r() is not None]

    assert refs(ds) == []
    eager = HeadDataset(many_ids, split="train", cache=True)
    assert len(refs(eager)) == 2 * len(eager)
    # the default budget (512 MiB) caches a split this small
    assert HeadDataset(many_ids, split="train")._cache is not None


# ---------------------------------------------------------------- 2 processes
@pytest.mark.slow
def test_two_processes_train_a_multi_identity_set(many_ids, tmp_path):
    """accelerate launch, 2 CPU processes × batch 1, one epoch of the 6-identity set with
    subject-balanced sampling: the stated schedule, every process a disjoint shard."""
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true")  # fmt: skip
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29531", "-m", "gphm.cli.train",
    ]  # fmt: skip
    run = tmp_path / "run"
    args = [f"data.path={many_ids}", f"run_dir={run}", "stage=guidance", *TINY_OVERRIDES,
            "train.batch_size=1", "train.guidance_epochs=0.25"]  # fmt: skip
    res = subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 process(es)" in res.stdout
    rows = 28  # training rows of the set: 0.25 epoch at global batch 2 = 4 steps
    assert f"guidance: 4 steps for {rows} training rows" in res.stdout
    report = json.loads((run / "train_report.json").read_text())
    text = json.dumps(report)
    assert '"steps": 4' in text
    weights = run / "guidance_model" / "model.safetensors"
    from safetensors.torch import load_file

    codes = load_file(str(weights))
    ident = [v for k, v in codes.items() if "identity_codes" in k]
    assert len(ident) == 1 and ident[0].shape[0] == 6
