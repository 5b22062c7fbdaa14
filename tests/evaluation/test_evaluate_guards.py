"""gphm-evaluate's refusals: another dataset for the trained-subject splits, the overwrite
policy of ``out=``, and a run a live training holds."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from gphm.cli import UserError
from gphm.cli import evaluate as ev
from gphm.evaluation.common import check_trained_dataset
from gphm.models.runs import TrainedRun, dataset_fingerprint
from gphm.training.config import DataConfig
from gphm.training.run_dir import RunLock
from gphm.training.trainer import GuidanceTrainer
from tests.training.test_train import _cfg


@pytest.fixture(scope="module")
def run_dir(tiny_head_dataset, tmp_path_factory):
    """A stage-1 run trained (2 steps) on ``tiny_head_dataset``."""
    path = tmp_path_factory.mktemp("guards") / "run"
    GuidanceTrainer(_cfg(tiny_head_dataset, path, "train.guidance_steps=2",
                         "train.batch_size=2")).train()  # fmt: skip
    return path


def _cfg_eval(run_dir, data, split="heldout_view", **kw) -> ev.EvaluateConfig:
    return ev.EvaluateConfig(run_dir=str(run_dir), data=DataConfig(path=str(data)), split=split,
                             **kw)  # fmt: skip


def test_trained_subject_splits_refuse_another_dataset_with_the_same_names(
    run_dir, tiny_head_dataset, tiny_combo_dataset, tmp_path, capsys
):
    trained = dataset_fingerprint(tiny_head_dataset)
    other = dataset_fingerprint(tiny_combo_dataset)
    assert trained != other  # same subject names "a", "b": names prove nothing
    for split in ("heldout_view", "expression_gain"):
        out = tmp_path / split
        with pytest.raises(UserError) as err:
            ev.main(_cfg_eval(run_dir, tiny_combo_dataset, split, out=str(out)))
        msg = str(err.value)
        assert other in msg and trained in msg and "allow_other_dataset=true" in msg, msg
        assert "\n" not in msg and not out.exists()
    # The CLI: exit status 2, one line, no traceback.
    code = ev.cli([f"run_dir={run_dir}", f"data.path={tiny_combo_dataset}",
                   "split=heldout_view", f"out={tmp_path / 'cli'}"])  # fmt: skip
    err_text = capsys.readouterr().err
    assert code == 2 and other in err_text and "Traceback" not in err_text
    # Allowed on purpose: scored, and the report says on which data.
    r = ev.main(_cfg_eval(run_dir, tiny_combo_dataset, out=str(tmp_path / "allowed"),
                          allow_other_dataset=True))  # fmt: skip
    assert r["allow_other_dataset"] is True and r["n"] > 0
    assert r["dataset_fingerprint"] == other and r["trained_dataset_fingerprint"] == trained
    written = json.loads((tmp_path / "allowed/heldout_view.json").read_text())
    assert written["dataset_fingerprint"] == other
    assert f"not trained on (fingerprint {other}, trained {trained})" in ev._summary(r)
    # The training data itself, also copied elsewhere: no refusal, no extra keys.
    copy = shutil.copytree(tiny_head_dataset, tmp_path / "copy")
    for data in (tiny_head_dataset, copy):
        r = ev.main(_cfg_eval(run_dir, data, out=str(tmp_path / f"own_{data.name}")))
        assert "allow_other_dataset" not in r and "dataset_fingerprint" not in r
    # A run from before fingerprints were recorded: scored, and said to be unverified.
    old = TrainedRun(model=None, extra={}, path=run_dir / "model")
    assert check_trained_dataset(old, tiny_combo_dataset, "heldout_view") == {
        "dataset_unverified": "the run records no dataset fingerprint"}
    # fit and reenact fit the identities they score: other data is what they are for
    # (split=fit is refused on the *training* data instead, see tests/fitting).
    assert set(ev.TRAINED_SPLITS) == set(ev.ALL_SPLITS) - {"fit", "reenact"}


def test_out_folder_follows_the_overwrite_policy(run_dir, tiny_head_dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"out=.*mine holds files .*\(notes.txt\).*overwrite=true"):
        ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(mine)))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(mine), overwrite=True))
    assert (mine / "heldout_view.json").is_file() and (mine / "notes.txt").read_text() == "keep me"

    # A folder of reports: other splits may join it, the same split is not replaced...
    reports = tmp_path / "reports"
    first = ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(reports)))
    ev.main(_cfg_eval(run_dir, tiny_head_dataset, "expression_gain", out=str(reports)))
    assert (reports / "expression_gain.json").is_file()
    before = (reports / "heldout_view.json").read_text()
    with pytest.raises(UserError, match="already holds a heldout_view report; pass overwrite=true"):
        ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(reports)))
    assert (reports / "heldout_view.json").read_text() == before
    again = ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(reports), overwrite=True))
    assert again["psnr"] == first["psnr"]
    # ... unless asked; a file that only looks like a report is not one.
    (reports / "val_view.json").write_text("my notes, not a report")
    with pytest.raises(UserError, match=r"did not write \(val_view.json\)"):
        ev.main(_cfg_eval(run_dir, tiny_head_dataset, "expression_gain", out=str(reports),
                          overwrite=False))  # fmt: skip
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(a_file), overwrite=True))
    # The run's own RUN/eval: re-evaluating replaces the split's earlier report.
    for _ in range(2):
        ev.main(_cfg_eval(run_dir, tiny_head_dataset))
    assert (run_dir / "eval/heldout_view.json").is_file()


def test_evaluate_refuses_a_run_a_live_training_holds(run_dir, tiny_head_dataset, tmp_path):
    lock = RunLock(run_dir).acquire()  # this (live) process holds it, as a training would
    try:
        for target in (run_dir, run_dir / "model"):
            with pytest.raises(UserError) as err:
                ev.main(_cfg_eval(target, tiny_head_dataset, out=str(tmp_path / "locked")))
            msg = str(err.value)
            assert str(run_dir / ".lock") in msg and f"pid {os.getpid()}" in msg, msg
            assert "\n" not in msg and not (tmp_path / "locked").exists()
    finally:
        lock.release()
    # A lock its process left behind (the process is gone) does not stop an evaluation.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                               "started": "earlier", "token": "x"}))  # fmt: skip
    try:
        r = ev.main(_cfg_eval(run_dir, tiny_head_dataset, out=str(tmp_path / "stale")))
        assert r["n"] > 0
    finally:
        (run_dir / ".lock").unlink()
