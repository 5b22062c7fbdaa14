"""Re-running a run directory: the resume guard, one writer per run, finished runs kept,
stale stage-2 checkpoints moved aside (scripts/train.py's main, in this process)."""

import importlib.util
import json
import os
import shutil
import socket

import pytest

from gphm.cli import UserError
from gphm.training.run_dir import ResumeMismatch
from gphm.training.trainer import GuidanceTrainer

from .test_train import ROOT, _cfg

_spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts/train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

STEPS = ["train.batch_size=2", "train.checkpoint_every=1"]


def test_changed_option_or_dataset_is_refused_longer_schedule_resumes(tiny_head_dataset, tmp_path):
    run = tmp_path / "run"
    GuidanceTrainer(_cfg(tiny_head_dataset, run, *STEPS, "train.guidance_steps=2")).train(
        stop_after=1
    )
    changed = _cfg(tiny_head_dataset, run, *STEPS, "train.guidance_steps=2", "train.lr=1e-3",
                   "loss.landmark=50")  # fmt: skip
    with pytest.raises(ResumeMismatch, match=r"loss.landmark 100.0 -> 50.0, train.lr 0.002 -> "
                       r"0.001\. Only the schedule"):  # fmt: skip
        GuidanceTrainer(changed).train()
    data = shutil.copytree(tiny_head_dataset, tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps(meta | {"generator": {"kind": "other"}}))
    with pytest.raises(UserError, match=rf"{run}: cannot resume stage guidance on another dataset"):
        train_script.main(_cfg(data, run, *STEPS, "train.guidance_steps=2"))
    assert not (run / ".lock").exists()  # released on the error path too
    longer = _cfg(tiny_head_dataset, f"{tmp_path}/./run", *STEPS, "train.guidance_steps=3",
                  "train.log_every=2")  # fmt: skip
    summary = GuidanceTrainer(longer).train()
    assert summary["resumed_from"] == 1 and summary["steps"] == 3


def test_finished_run_is_kept_as_it_is(tiny_head_dataset, tmp_path, capsys):
    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STEPS, "train.guidance_steps=2")
    first = train_script.main(cfg)
    assert first["steps"] == 2 and first["final_losses"]
    files = [
        tmp_path / "run/train_report.json",
        tmp_path / "run/model/model.safetensors",
        tmp_path / "run/model/config.json",
        tmp_path / "run/guidance_model/config.json",
    ]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again = train_script.main(cfg)
    assert again["already_trained"]
    assert "[train] guidance: already trained to 2 steps" in capsys.readouterr().out
    assert train_script._summary(again).startswith("train: already trained to guidance 2 steps")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    assert not (tmp_path / "run/.lock").exists()


def test_second_writer_is_refused(tiny_head_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-12-01T20:00"}
    (run / ".lock").write_text(json.dumps(owner))
    who = rf"pid {os.getpid()} on {socket.gethostname()}, since 2026-12-01T20:00"
    with pytest.raises(UserError, match=rf"another training run is writing here \({who}\)"):
        train_script.main(_cfg(tiny_head_dataset, run, *STEPS, "train.guidance_steps=1"))
    assert json.loads((run / ".lock").read_text()) == owner  # the owner's lock is kept
    assert not (run / "checkpoints").exists()


def test_stage2_checkpoints_of_an_older_stage1_are_moved_aside(tiny_head_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*STEPS, "stage=all", "train.gaussian_steps=2"]
    train_script.main(_cfg(tiny_head_dataset, run, *args, "train.guidance_steps=2"))
    old = sorted(p.name for p in (run / "checkpoints/gaussian").iterdir())
    report = train_script.main(_cfg(tiny_head_dataset, run, *args, "train.guidance_steps=3"))
    assert report["stages"]["guidance"]["resumed_from"] == 2
    assert report["stages"]["gaussian"]["resumed_from"] == 0  # afresh, not a size mismatch
    stale = list((run / "checkpoints").glob("gaussian.stale-*"))
    assert len(stale) == 1 and sorted(p.name for p in stale[0].iterdir()) == old
    assert f"moved it to {stale[0]}" in capsys.readouterr().out
    # the new stage-2 checkpoints record the stage-1 model they were built from: a re-run
    # resumes nothing and moves nothing
    again = train_script.main(_cfg(tiny_head_dataset, run, *args, "train.guidance_steps=3"))
    assert again["already_trained"] and len(list((run / "checkpoints").glob("gaussian.*"))) == 1


@pytest.mark.slow
def test_sigterm_releases_the_lock(tiny_head_dataset, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from .conftest import TINY_OVERRIDES
    from .test_train import _env

    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts/train.py"), f"data.path={tiny_head_dataset}",
           f"run_dir={run}", "stage=guidance", *TINY_OVERRIDES, "train.guidance_steps=100000",
           "train.checkpoint_every=100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "logs/metrics.jsonl").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        assert (run / ".lock").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    assert not (run / ".lock").exists()
