"""Checkpoints: a bad newest one falls back to the previous, none readable is a clear
error, a failed write names the path, and no NaN/Inf ever reaches one."""

import errno
import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gphm.cli import UserError
from gphm.training import checkpoint as checkpoint_module
from gphm.training.checkpoint import CheckpointError, latest_checkpoint
from gphm.training.trainer import CheckpointWriteError, GuidanceTrainer, TrainingDiverged

from .test_resume_guard import train_script
from .test_train import _cfg

ARGS = ["train.batch_size=2", "train.checkpoint_every=1", "train.guidance_steps=4"]


@pytest.fixture(scope="module")
def two_checkpoints(tiny_head_dataset, tmp_path_factory):
    """A stage-1 run interrupted after step 2, with checkpoints at steps 1 and 2."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    GuidanceTrainer(_cfg(tiny_head_dataset, run, *ARGS)).train(stop_after=2)
    return run


@pytest.fixture
def run(two_checkpoints, tmp_path):
    return shutil.copytree(two_checkpoints, tmp_path / "run")


def _trainer(data, run):
    return GuidanceTrainer(_cfg(data, run, *ARGS))


def _all_finite(ckpt):
    return all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


def test_truncated_newest_checkpoint_falls_back(tiny_head_dataset, run, capsys):
    weights = run / "checkpoints/step_00000002/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    summary = _trainer(tiny_head_dataset, run).train()
    out = capsys.readouterr().out
    assert "warning: skipping checkpoint step_00000002" in out and f"{weights}: unreadable" in out
    assert summary["resumed_from"] == 1 and summary["steps"] == 4


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"step": -7}, r"field 'step' must be an integer >= 0, got -7"),
        ({"step": True}, r"field 'step' must be an integer >= 0, got True"),
        ({"stage": 3}, r"field 'stage' must be a JSON string, got 3"),
        ({"losses": [1]}, r"field 'losses' must be a JSON object, got \[1\]"),
    ],
)
def test_newest_checkpoint_with_a_bad_trainer_state_falls_back(
    tiny_head_dataset, run, capsys, edit, match
):
    # issue 28 finding 12: step -7 resumed at step -7 (tqdm at -18 %)
    path = run / "checkpoints/step_00000002/trainer_state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    summary = _trainer(tiny_head_dataset, run).train()
    out = capsys.readouterr().out
    assert "warning: skipping checkpoint step_00000002" in out
    assert re.search(rf"{re.escape(str(path))}: {match}", out)
    assert summary["resumed_from"] == 1 and summary["steps"] == 4


def test_wrong_shape_newest_checkpoint_falls_back(tiny_head_dataset, run, capsys):
    weights = run / "checkpoints/step_00000002/model.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(3, 3)
    save_file(state, str(weights))
    summary = _trainer(tiny_head_dataset, run).train(stop_after=2)
    assert f"weights of the wrong shape: {name} (3, 3)" in capsys.readouterr().out
    assert summary == {"stage": "guidance", "stopped_after": 2}


def test_no_readable_checkpoint_names_them_all(tiny_head_dataset, run):
    for step in (1, 2):
        (run / f"checkpoints/step_{step:08d}/trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="readable checkpoint.*step_00000002.*step_00000001"):
        _trainer(tiny_head_dataset, run).train()
    with pytest.raises(UserError, match=r"no readable checkpoint"):
        train_script.main(_cfg(tiny_head_dataset, run, *ARGS))


def test_disk_full_while_checkpointing_is_one_line(tiny_head_dataset, run, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    target = run / "checkpoints/step_00000003"
    with pytest.raises(CheckpointWriteError, match=re.escape(
        f"{target}: cannot write the checkpoint (No space left on device); free space and "
        f"re-run to resume from {run / 'checkpoints/step_00000002'}"
    )):  # fmt: skip
        _trainer(tiny_head_dataset, run).train()
    with pytest.raises(UserError, match=re.escape(f"{target}: cannot write the checkpoint")):
        train_script.main(_cfg(tiny_head_dataset, run, *ARGS))
    # nothing half-written is left: only the two good checkpoints
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001",
                                                                      "step_00000002"]  # fmt: skip


def test_disk_full_inside_safetensors_while_checkpointing_is_one_line(
    tiny_head_dataset, run, monkeypatch
):
    # issue 28 finding 8: safetensors reports a full disk as SafetensorError, no OSError
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              'StorageFull, message: "No space left on device" })')  # fmt: skip

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    target = run / "checkpoints/step_00000003"
    with pytest.raises(OSError, match="No space left on device") as err:
        model = SimpleNamespace(save_pretrained=lambda d: None)
        checkpoint_module.save_training_state(run / "checkpoints", 3, model,
                                              torch.optim.Adam([torch.zeros(1)]), {})  # fmt: skip
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    with pytest.raises(UserError, match=re.escape(
        f"{target}: cannot write the checkpoint (No space left on device); free space and "
        f"re-run to resume from {run / 'checkpoints/step_00000002'}"
    )):  # fmt: skip
        train_script.main(_cfg(tiny_head_dataset, run, *ARGS))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001",
                                                                      "step_00000002"]  # fmt: skip


def test_nan_gradient_is_never_applied_or_saved(tiny_head_dataset, run):
    trainer = _trainer(tiny_head_dataset, run)
    name, param = next(iter(trainer.model.named_parameters()))
    param.register_hook(lambda g: g * float("nan"))
    with pytest.raises(TrainingDiverged, match=rf"non-finite gradient at guidance step 2 \("
                       rf"parameters: {re.escape(name)}\); the step was not applied\. Last good "
                       rf"checkpoint: .*step_00000002"):  # fmt: skip
        trainer.train()
    assert latest_checkpoint(run / "checkpoints").name == "step_00000002"
    assert _all_finite(run / "checkpoints/step_00000002")


def test_nan_weight_is_never_checkpointed(tiny_head_dataset, run):
    trainer = _trainer(tiny_head_dataset, run)
    name, param = list(trainer.model.named_parameters())[-1]
    step = trainer.optimizer.step

    def poisoning_step(*args, **kwargs):
        result = step(*args, **kwargs)
        with torch.no_grad():
            param.view(-1)[0] = float("inf")
        return result

    trainer.optimizer.step = poisoning_step
    with pytest.raises(TrainingDiverged, match=rf"non-finite weights at guidance step 3 \("
                       rf"{re.escape(name)}\); not checkpointed\. Last good checkpoint: "
                       rf".*step_00000002"):  # fmt: skip
        trainer.train()
    assert latest_checkpoint(run / "checkpoints").name == "step_00000002"
    assert not (run / "model").exists()
