"""The installed commands (pyproject [project.scripts] -> gphm/cli/*.py), their shims in
scripts/, the one device option and the one place that sets the offline variables."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gphm.cli import UserError, check_device_option, cli_device, parse_config

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "gphm-train": "gphm.cli.train",
    "gphm-evaluate": "gphm.cli.evaluate",
    "gphm-fit": "gphm.cli.fit",
    "gphm-edit": "gphm.cli.edit",
    "gphm-render": "gphm.cli.render",
    "gphm-synth": "gphm.cli.synth",
    "gphm-preprocess": "gphm.cli.preprocess",
    "gphm-import": "gphm.cli.import_capture",
    "gphm-view": "gphm.cli.view",
    "gphm-track": "gphm.cli.track",
    "gphm-reenact": "gphm.cli.reenact",
    "gphm-export": "gphm.cli.export",
}
SHIMS = {
    "train": "train", "evaluate": "evaluate", "fit_image": "fit", "edit_expression": "edit",
    "render": "render", "make_synthetic": "synth", "preprocess": "preprocess",
    "import_capture": "import_capture", "view": "view", "track_video": "track",
    "reenact": "reenact", "export": "export",
}  # fmt: skip


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_every_entry_point_resolves_to_its_module_cli():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.name.startswith("gphm-")}  # fmt: skip
    assert set(eps) >= set(COMMANDS), sorted(set(COMMANDS) - set(eps))
    for name, module in COMMANDS.items():
        assert eps[name].value == f"{module}:cli", name
        fn = eps[name].load()
        assert fn is importlib.import_module(module).cli and callable(fn)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_0(name, capsys, monkeypatch):
    """In-process (fast): the entry point's function itself with --help."""
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    fn = importlib.import_module(COMMANDS[name]).cli
    assert fn(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: " in out and "options (defaults):" in out


@pytest.mark.slow
def test_installed_and_module_forms_run():
    bin_dir = Path(sys.executable).parent
    res = subprocess.run([str(bin_dir / "gphm-render"), "--help"], capture_output=True,
                         text=True, env=_env(), timeout=300)  # fmt: skip
    assert res.returncode == 0 and "mode=turntable" in res.stdout, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "gphm.cli.render", "--help"], capture_output=True,
                         text=True, env=_env(), timeout=300, cwd="/")  # fmt: skip
    assert res.returncode == 0 and "device: auto" in res.stdout, res.stderr[-2000:]
    res = subprocess.run([sys.executable, str(ROOT / "scripts/render.py"), "device=tpu",
                          "checkpoint=x", "out=y"], capture_output=True, text=True, env=_env(),
                         timeout=300)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "render.py: error: device must be one of auto|cpu|cuda|cuda:N, got 'tpu'"
    )


# The benchmark runner imports its suites from scripts/benchmarks (not a command).
NOT_MOVED_YET = {"bench"}


def test_scripts_are_shims_without_sys_path_edits():
    for path in (ROOT / "scripts").glob("*.py"):
        if path.stem in NOT_MOVED_YET:
            continue
        text = path.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path.name
    for path in (ROOT / "gphm").rglob("*.py"):
        assert "sys.path.insert" not in path.read_text(), path
    for script, module in SHIMS.items():
        text = (ROOT / "scripts" / f"{script}.py").read_text()
        assert f"from gphm.cli import {module} as _command" in text, script
        assert len(text.strip().splitlines()) <= 13, script


def test_the_offline_variables_are_set_in_one_place():
    setters = [
        str(p.relative_to(ROOT))
        for base in ("gphm", "scripts")
        for p in (ROOT / base).rglob("*.py")
        if p.stem not in NOT_MOVED_YET
        and re.search(r"environ\.setdefault\(\s*.HF_(HUB|DATASETS)_OFFLINE", p.read_text())
        or 'OFFLINE = {"HF_HUB_OFFLINE"' in p.read_text()
    ]
    assert setters == ["gphm/cli/_env.py"], setters
    code = ("import os; os.environ.pop('HF_HUB_OFFLINE', None); "
            "os.environ.pop('HF_DATASETS_OFFLINE', None); import gphm.cli.render; "
            "print(os.environ['HF_HUB_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])")  # fmt: skip
    env = {k: v for k, v in _env().items() if not k.startswith("HF_")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0 and res.stdout.split() == ["1", "1"], res.stderr[-2000:]


def test_device_option():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "CPU"):
        check_device_option(ok)
    for bad in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device must be one of auto|cpu|cuda|cuda:N"):
            check_device_option(bad)
    assert cli_device("cpu") == torch.device("cpu")
    assert cli_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device: device=cuda: CUDA is not available"):
            cli_device("cuda")
    for module, schema, extra in (
        ("render", "RenderConfig", ["checkpoint=r", "out=o"]),
        ("edit", "EditConfig", ["checkpoint=r", "source=a", "target=b", "out=o"]),
        ("fit", "FitImageConfig", ["checkpoint=r", "image=i.png", "out=o"]),
        ("evaluate", "EvaluateConfig", ["run_dir=r", "data.path=d"]),
        ("track", "TrackVideoConfig", ["checkpoint=r", "out=o", "video=v.mp4"]),
        ("reenact", "ReenactConfig", ["checkpoint=r", "driver=d", "target=t", "out=o"]),
        ("view", "ViewConfig", ["checkpoint=r"]),
    ):
        cls = getattr(importlib.import_module(f"gphm.cli.{module}"), schema)
        assert parse_config(cls, extra).device == "auto"
        assert parse_config(cls, [*extra, "device=cpu"]).device == "cpu"
        with pytest.raises(UserError, match="device must be one of"):
            parse_config(cls, [*extra, "device=tpu"])


@pytest.mark.slow
def test_accelerate_launch_module_form(tmp_path):
    """``accelerate launch -m gphm.cli.train`` runs the command in every process (a
    locked run directory makes both end at once with the owner's name, before any data)."""
    import json
    import socket

    run = tmp_path / "run"
    run.mkdir()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}
    (run / ".lock").write_text(json.dumps(owner))
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29527", "-m", "gphm.cli.train",
    ]  # fmt: skip
    env = _env() | {"ACCELERATE_USE_CPU": "true"}
    res = subprocess.run([*launch, f"data.path={tmp_path / 'data'}", f"run_dir={run}"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode != 0
    assert res.stderr.count(f"another training run is writing here (pid {os.getpid()}") == 2


def test_train_maps_the_device_option_onto_accelerate():
    from gphm.cli.train import device_overrides

    assert device_overrides(["a=1", "device=cpu"]) == ["a=1", "train.cpu=true"]
    assert device_overrides(["device=auto", "b=2"]) == ["b=2"]
    with pytest.raises(UserError, match="device must be one of auto|cpu|cuda for training"):
        device_overrides(["device=tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            device_overrides(["device=cuda"])
