"""RUN/.lock, the resume guard's option comparison and the fingerprints (no training)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from gphm.cli import parse_config
from gphm.training.config import TrainRunConfig
from gphm.training.run_dir import (
    ResumeMismatch,
    RunDirError,
    RunLock,
    RunLocked,
    check_resume,
    dataset_dir_fingerprint,
    module_fingerprint,
    record_stage,
    resolved_options,
)


def _options(*overrides):
    return resolved_options(parse_config(TrainRunConfig, ["data.path=/data", *overrides]))


def test_lock_is_exclusive_and_released(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    owner = json.loads((tmp_path / "run/.lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    who = rf"pid {os.getpid()} on {socket.gethostname()}, since "
    with pytest.raises(RunLocked, match=rf"writing here \({who}.*delete .*\.lock"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run/.lock").exists()
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run/.lock").is_file()
    assert not (tmp_path / "run/.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                "started": "then"}))  # fmt: skip
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"took over the stale lock {tmp_path / '.lock'} (process {dead.pid} is not running)" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLocked, match="pid 1 on elsewhere"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").is_file()


def test_resume_guard_names_changed_options_only(tmp_path):
    run = tmp_path / "run"
    record_stage(run, "guidance", _options(f"run_dir={run}", "guidance_run=a/b"), "fp")
    # schedule, run_dir spelling, stage and device may change; a relative path is resolved
    same = _options(f"run_dir={tmp_path}/./run", "train.guidance_steps=9999",
                    "train.checkpoint_every=7", "stage=all", "train.cpu=true",
                    f"guidance_run={os.getcwd()}/a/b")  # fmt: skip
    check_resume(run, "guidance", same, "fp", resuming=True)
    changed = _options(f"run_dir={run}", "train.lr=1e-3", "seed=3", "train.gaussian_lr=1")
    with pytest.raises(ResumeMismatch) as err:
        check_resume(run, "guidance", changed, "fp", resuming=True)
    msg = str(err.value)
    assert "cannot resume stage guidance" in msg
    assert "seed 0 -> 3, train.lr 0.002 -> 0.001." in msg  # stage-2 options are not stage 1's
    assert "train.guidance_steps" in msg.split("Only the schedule")[1]
    check_resume(run, "guidance", changed, "fp", resuming=False)  # a fresh start is never refused
    check_resume(run, "gaussian", changed, "fp", resuming=True)  # nothing recorded for stage 2
    with pytest.raises(ResumeMismatch, match="on another dataset.*fingerprint other"):
        check_resume(run, "guidance", same, "other", resuming=True)


def test_guidance_run_defaults_to_the_run_itself(tmp_path):
    assert _options(f"run_dir={tmp_path}")["guidance_run"] == "<run_dir>"
    assert _options(f"run_dir={tmp_path}", f"guidance_run={tmp_path}/.")["guidance_run"] == (
        "<run_dir>"
    )
    assert _options(f"run_dir={tmp_path}", "guidance_run=/x")["guidance_run"] == "/x"


def test_stage2_guard_ignores_stage1_options(tmp_path):
    record_stage(tmp_path, "gaussian", _options("run_dir=r"), "fp")
    check_resume(tmp_path, "gaussian", _options("run_dir=r", "train.lr=1", "loss.rgb_hr=3"), "fp",
                 resuming=True)  # fmt: skip
    with pytest.raises(ResumeMismatch, match=r"loss.gaussian.rgb_hr 1.0 -> 3.0"):
        check_resume(tmp_path, "gaussian", _options("run_dir=r", "loss.gaussian.rgb_hr=3"), "fp",
                     resuming=True)  # fmt: skip


def test_dataset_fingerprint_follows_the_content(tiny_head_dataset, tmp_path):
    copy = shutil.copytree(tiny_head_dataset, tmp_path / "copy")
    assert dataset_dir_fingerprint(copy) == dataset_dir_fingerprint(tiny_head_dataset)
    meta = json.loads((copy / "meta.json").read_text())
    meta["generator"]["note"] = "regenerated"
    (copy / "meta.json").write_text(json.dumps(meta))
    assert dataset_dir_fingerprint(copy) != dataset_dir_fingerprint(tiny_head_dataset)


def test_module_fingerprint_follows_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert module_fingerprint(a) == module_fingerprint(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert module_fingerprint(a) != module_fingerprint(b)


@pytest.mark.parametrize(
    "pid, reason",
    [(10**20, "process 100000000000000000000 is not running"),
     (0, "process 0 is not running"), (-1, "process -1 is not running"),
     (1e20, "the lock names no process (pid 1e+20)"),
     ("7", "the lock names no process (pid '7')")],
)  # fmt: skip
def test_lock_holding_an_absurd_pid_is_stale(tmp_path, capsys, pid, reason):
    # issue 28 finding 12: os.kill(10**20, 0) raised OverflowError; 0 and -1 are groups
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                "started": "then"}))  # fmt: skip
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"({reason})" in capsys.readouterr().err


@pytest.mark.parametrize(
    "state, match",
    [
        ([], r"expected a JSON object, got list"),
        ({"stages": []}, r"field 'stages' must be a JSON object"),
        ({"stages": {"guidance": "x"}}, r"field 'stages.guidance' must be a JSON object"),
        ({"stages": {"guidance": {"options": [1]}}},
         r"field 'stages.guidance.options' must be a JSON object, got \[1\]"),
        ({"stages": {"guidance": {"options": {}, "dataset": 3}}},
         r"field 'stages.guidance.dataset' must be a string or null, got 3"),
    ],
)  # fmt: skip
def test_run_state_of_wrong_types_is_one_line(tmp_path, state, match):
    # issue 28 finding 12: AttributeError tracebacks on a run_state.json of wrong types
    (tmp_path / "run_state.json").write_text(json.dumps(state))
    options = _options(f"run_dir={tmp_path}")
    with pytest.raises(RunDirError, match=rf"run_state.json: {match}.*; restore it or use a new"):
        check_resume(tmp_path, "guidance", options, "fp", resuming=True)
    with pytest.raises(RunDirError, match=match):
        record_stage(tmp_path, "guidance", options, "fp")
