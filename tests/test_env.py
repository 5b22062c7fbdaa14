"""Every command runs ``gphm/cli/_env.py`` (the offline variables and the place for an
OpenMP policy, ``THREADING``) before torch loads, and leaves the user's OpenMP policy as
it is, whichever way it is started: an installed console script, ``python -m gphm.cli.NAME``, a
``scripts/*.py`` shim or ``accelerate launch -m gphm.cli.train``.

Each command runs in a subprocess with a ``sitecustomize`` hook that records, at the
moment ``torch`` is first imported, the process's ``OMP_WAIT_POLICY``, whether
``gphm.cli._env`` had run and whether the OpenMP runtime (``libgomp``, which reads the
variable once when it loads) was already mapped into the process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HOOK = '''
import json, os, sys


class _WatchTorch:
    """Records the environment when torch is first imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in sys.modules:
            sys.meta_path.remove(self)
            try:
                with open("/proc/self/maps") as f:
                    maps = f.read()
            except OSError:
                maps = ""
            record = {
                "argv": sys.argv,
                "omp": os.environ.get("OMP_WAIT_POLICY"),
                "env_module": "gphm.cli._env" in sys.modules,
                "gomp_loaded": "libgomp" in maps,
            }
            out = os.path.join(os.environ["GPHM_TEST_ENV_OUT"], f"{os.getpid()}.json")
            with open(out, "w") as f:
                json.dump(record, f)
        return None


sys.meta_path.insert(0, _WatchTorch())
'''

# pyproject.toml's [project.scripts], as installed
SCRIPTS = [e.name for e in distribution("gphm").entry_points if e.group == "console_scripts"]


def _run(cmd: list[str], tmp_path: Path, **extra: str | None) -> list[dict]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    out = tmp_path / "records"
    out.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]), "GPHM_TEST_ENV_OUT": str(out),
            "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra}  # fmt: skip
    env = {k: v for k, v in env.items() if v is not None}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _assert_passive(records: list[dict], program: str) -> None:
    """The processes whose program (``sys.argv[0]``) ends with ``program`` imported torch
    after _env, before the OpenMP runtime was loaded (so a policy set in
    ``_env.THREADING`` takes effect), with the OpenMP policy the user's environment had
    (``_run`` passes PASSIVE: a user sharing the CPU)."""
    ours = [r for r in records if r["argv"][0].endswith(program)]
    assert ours, f"torch was never imported by the command ({records})"
    for r in ours:
        assert r["omp"] == "PASSIVE" and r["env_module"], r
        assert not r["gomp_loaded"], r  # the OpenMP runtime loads after _env


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_scripts_set_passive_waiting_before_torch(name, tmp_path):
    _assert_passive(_run([_bin(name), "--help"], tmp_path), name)


@pytest.mark.parametrize(
    "cmd, program",
    [
        (["-m", "gphm.cli.train", "--help"], "gphm/cli/train.py"),
        (["-m", "gphm.cli.synth", "--help"], "gphm/cli/synth.py"),
        (["scripts/make_synthetic.py", "--help"], "scripts/make_synthetic.py"),
        (["scripts/train.py", "--help"], "scripts/train.py"),
        (["scripts/render.py", "--help"], "scripts/render.py"),
    ],
)
def test_module_and_shim_entry_points_set_passive_waiting(cmd, program, tmp_path):
    _assert_passive(_run([sys.executable, *cmd], tmp_path), program)


@pytest.mark.slow
def test_accelerate_launch_sets_passive_waiting_in_the_training_process(tmp_path):
    accelerate = _bin("accelerate")
    cmd = [accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "gphm.cli.train", "--help"]  # fmt: skip
    records = _run(cmd, tmp_path, HF_HOME=str(tmp_path / "hf"))
    # The launcher imports torch itself (its own process, before any gphm code); the
    # command it starts is a fresh interpreter, where _env runs before torch.
    _assert_passive(records, "gphm/cli/train.py")


def test_users_setting_wins(tmp_path):
    records = _run([_bin("gphm-synth"), "--help"], tmp_path, OMP_WAIT_POLICY="ACTIVE")
    assert records and all(r["omp"] == "ACTIVE" for r in records)


def test_commands_set_no_openmp_policy_of_their_own(tmp_path):
    """A command alone keeps OpenMP's default (spinning) policy: PASSIVE made stage 2
    1.6x slower alone (gphm/cli/_env.py)."""
    from gphm.cli import _env

    assert "OMP_WAIT_POLICY" not in _env.THREADING
    records = _run([_bin("gphm-synth"), "--help"], tmp_path, OMP_WAIT_POLICY=None)
    assert records and all(r["omp"] is None for r in records)


def test_importing_the_python_api_leaves_the_environment_alone(tmp_path):
    code = "import os, gphm, gphm.api; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    assert out.strip() == "None"
