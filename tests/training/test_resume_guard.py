"""Re-running a run directory: the resume guard, one writer per run, finished runs kept,
stale stage-2 checkpoints moved aside (scripts/train.py's main, in this process)."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from gphm.cli import UserError
from gphm.training.run_dir import ResumeMismatch
from gphm.training.trainer import GuidanceTrainer, TrainingDiverged

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


def test_lost_surface_is_a_divergence_naming_the_causes(tiny_head_dataset, tmp_path,
                                                       monkeypatch):  # fmt: skip
    """A step that moves finite weights so far that the mean SDF has no zero crossing (as
    train.lr=1e30 did) stops like a non-finite step: one message naming the likely
    causes and the last good checkpoint, no traceback from the mesh extraction."""
    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STEPS, "train.guidance_steps=3")
    GuidanceTrainer(cfg).train(stop_after=1)

    def lost_surface(*args, **kwargs):
        trainer = GuidanceTrainer(*args, **kwargs)
        real = trainer.model.grid_sdf
        trainer.model.grid_sdf = lambda: real().abs() + 1.0  # the whole grid outside
        return trainer

    with pytest.raises(TrainingDiverged, match=r"the mean SDF lost its surface at guidance step "
                       r"1 .*train\.lr=0\.002.*step_00000001"):  # fmt: skip
        lost_surface(cfg).train()
    monkeypatch.setattr("gphm.cli.train.GuidanceTrainer", lost_surface)
    with pytest.raises(UserError, match="lost its surface"):  # the command: exit 2, one line
        train_script.main(cfg)
    assert not (tmp_path / "run/.lock").exists()


def _train_command(data, run):
    """A stage-1 training that would run for hours: it ends only by the signal."""
    from .conftest import TINY_OVERRIDES

    return [sys.executable, str(ROOT / "scripts/train.py"), f"data.path={data}", f"run_dir={run}",
            "stage=guidance", *TINY_OVERRIDES, "train.guidance_steps=100000",
            "train.checkpoint_every=100000"]  # fmt: skip


def _wait_for(path, proc, log, seconds=180):
    deadline = time.monotonic() + seconds
    while not path.is_file():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def _wait_stuck(proc, run, log, seconds=180):
    """Until the child holds the lock and is either blocked writing to its pipe (Linux:
    ``/proc/PID/wchan``) or training (its "[train]" lines waiting in the stdout buffer,
    which the interpreter's exit would flush into the full pipe)."""
    wchan = f"/proc/{proc.pid}/wchan"
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"child never blocked: {log.read_text()[-2000:]}"
        try:
            blocked = "pipe_write" in open(wchan).read()
        except OSError:
            blocked = False
        if (run / ".lock").is_file() and (blocked or (run / "logs/metrics.jsonl").is_file()):
            return
        time.sleep(0.2)


def _env_long():
    from .test_train import _env

    return _env() | {"GPHM_TIME_LIMIT": "none"}  # 100000 steps: past the time budget


@pytest.mark.slow
def test_sigterm_releases_the_lock(tiny_head_dataset, tmp_path):
    """The child logs every step: its output goes to files, never to pipes this test
    would have to drain (a full pipe blocked the child and the test timed out)."""
    run = tmp_path / "run"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(_train_command(tiny_head_dataset, run), env=_env_long(),
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for(run / "logs/metrics.jsonl", proc, err)
        assert (run / ".lock").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, err.read_text()[-2000:]
    finally:
        proc.kill()
        proc.wait()
    assert not (run / ".lock").exists()
    assert "[train]" in out.read_text()  # what was printed before the signal was kept


@pytest.mark.slow
def test_sigterm_ends_the_run_even_when_its_output_pipe_is_full(tiny_head_dataset, tmp_path):
    """stdout is a pipe that is already full and never read: every write of the child
    blocks, and so would the interpreter's final flush. SIGTERM still ends the run with
    status 143 and the lock released (gphm.cli.train._exit_after_sigterm)."""
    run = tmp_path / "run"
    err = tmp_path / "stderr.txt"
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass  # full
    os.set_blocking(write_end, True)  # the child shares this file description
    try:
        with err.open("wb") as stderr:
            # Buffered stdout (as without PYTHONUNBUFFERED): lines wait in the buffer and
            # the interpreter's exit would flush them into the full pipe.
            env = {k: v for k, v in _env_long().items() if k != "PYTHONUNBUFFERED"}
            proc = subprocess.Popen(_train_command(tiny_head_dataset, run), env=env,
                                    stdout=write_end, stderr=stderr,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            _wait_stuck(proc, run, err)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM, err.read_text()[-2000:]
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(write_end)
        os.close(read_end)
    assert not (run / ".lock").exists()
