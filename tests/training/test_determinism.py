"""``train.deterministic``: CPU training is bit-for-bit reproducible at a fixed thread count,
and the option keeps the count fixed where the commands would adapt it to the load
(:mod:`gphm.io.threads`; a count changed mid-run sums floats in another order)."""

import pytest
import torch
from safetensors.torch import load_file

from gphm.cli import parse_config
from gphm.training import trainer as trainer_module
from gphm.training.config import TrainRunConfig
from gphm.training.run_dir import resolved_options, stage_options
from gphm.training.trainer import GuidanceTrainer

from .conftest import TINY_OVERRIDES


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _train(data, run_dir, *extra):
    args = [f"data.path={data}", f"run_dir={run_dir}", "stage=guidance", *TINY_OVERRIDES,
            "train.guidance_steps=4", "train.batch_size=2", *extra]  # fmt: skip
    cfg = parse_config(TrainRunConfig, args)
    summary = GuidanceTrainer(cfg).train()
    return cfg, summary, load_file(str(run_dir / "model/model.safetensors"))


def test_deterministic_training_keeps_the_thread_count(
    tiny_head_dataset, tmp_path, monkeypatch, two_threads
):
    polls = []

    def load_changes(*_):  # adaptation under a changing load: 2 -> 1 -> 2 ... threads
        polls.append(torch.get_num_threads())
        torch.set_num_threads(3 - torch.get_num_threads())

    monkeypatch.setattr(trainer_module.adaptive_threads, "poll", load_changes)
    cfg, summary, a = _train(tiny_head_dataset, tmp_path / "a", "train.deterministic=true")
    _, _, b = _train(tiny_head_dataset, tmp_path / "b", "train.deterministic=true")
    assert polls == [] and torch.get_num_threads() == 2
    assert summary["threads"]["adaptive"] is False and summary["threads"]["count"] == 2
    assert a.keys() == b.keys()
    for k in a:  # two identical runs on 2 threads: the same bits
        assert torch.equal(a[k], b[k]), k
    # a resumed run may switch it: it decides the thread count, not what is trained
    assert "train.deterministic" not in stage_options(resolved_options(cfg), "guidance")

    _, summary, _ = _train(tiny_head_dataset, tmp_path / "adaptive")  # the default adapts
    assert len(polls) == 4 and "count" not in summary["threads"]
