"""Two gphm commands at once: a training's time alone and beside a second training.

``python scripts/bench.py contention`` calls :func:`run`. Both trainings are started as
users start them: ``python -m gphm.cli.train`` in a fresh process, same priority, with
the OpenMP variables (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``) and
``GPHM_ADAPTIVE_THREADS`` removed from their environment, so what is measured is what the
commands do by themselves: OpenMP's default (spinning) policy, torch's default thread
count and adaptive intra-op threads (``gphm/io/threads.py``, switched on for the commands
by ``gphm/cli/_env.py``: fewer threads while other processes keep the CPUs busy).

* Data: a small synthetic set written by ``gphm.cli.synth`` into a temporary folder (2
  identities × 2 expressions × 3 views at 128 px, the ``model=tiny`` hr size).
* ``alone_s``: the training loop's seconds (``train_report.json``'s ``seconds``:
  the steps only, without start-up, data loading and the SDF pre-fit) of
  ``model=tiny stage=guidance device=cpu train.guidance_steps=STEPS`` with the machine
  otherwise idle (as far as this script knows: run it on a quiet machine).
* ``beside_s``: the same command while a second identical training (``50 × STEPS``
  steps, its own run directory) is already in its training loop; the second one is
  stopped with SIGTERM once the first has finished.
* ``ratio`` = ``beside_s / alone_s``. Two equal jobs sharing the cores fairly give about
  2; the target is <= 2.4 (issue 28: ~4.5 with spin-waiting OpenMP threads at a fixed
  count).
* ``threads_alone`` / ``threads_beside``: the measured training's adaptive-thread
  counters (``train_report.json``'s ``stages.guidance.threads``: whether it adapted, how
  many times it changed the count, wall seconds at each count).

The headline (``ratio``, ``meets_target``) is the commands' default, ``default``. With
``quick=False`` the same pair is also run with what a user may set instead:

* ``fixed``: ``GPHM_ADAPTIVE_THREADS=0``, the thread count fixed (the contention the
  adaptation removes); ``alone_vs_fixed`` = ``default.alone_s / fixed.alone_s`` is what the
  adaptation costs a training alone (target <= 1.05);
* ``passive``: ``GPHM_ADAPTIVE_THREADS=0 OMP_WAIT_POLICY=PASSIVE``, sleeping instead of
  spinning workers (fair, but slow alone);
* ``active``: ``OMP_WAIT_POLICY=ACTIVE``, spinning forced, adaptation on.

STEPS is 200 (20 with ``quick``). ``alone_s_per_step`` / ``beside_s_per_step`` divide by
it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET_RATIO = 2.4
#: Most a training alone may slow down with the adaptation on (``alone_vs_fixed``).
ALONE_TOLERANCE = 1.05
#: The second training's steps, as a multiple of the measured one's: it must outlast it.
BESIDE_FACTOR = 50


def _user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no OpenMP or thread settings of ours, the
    repository importable, offline; ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.pop("GPHM_BENCH_THREADS", None)
    env.pop("GPHM_ADAPTIVE_THREADS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env | extra


def _train_cmd(data: Path, run: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "gphm.cli.train", f"data.path={data}", f"run_dir={run}",
            "model=tiny", "stage=guidance", "device=cpu", f"train.guidance_steps={steps}",
            "train.log_every=1", f"train.checkpoint_every={steps}",
            f"train.preview_every={steps}"]  # fmt: skip


def _make_data(folder: Path) -> Path:
    data = folder / "data"
    cmd = [sys.executable, "-m", "gphm.cli.synth", f"out={data}", "num_identities=2",
           "num_expressions=2", "num_views=3", "resolution=128", "seed=0"]  # fmt: skip
    subprocess.run(cmd, env=_user_env(), check=True, capture_output=True, cwd=ROOT)
    return data


def _train(data: Path, run: Path, steps: int, env: dict[str, str], log: Path) -> dict:
    """Run one training; its ``train_report.json``."""
    with log.open("wb") as out:
        subprocess.run(_train_cmd(data, run, steps), env=env, stdout=out, stderr=out,
                       check=True, cwd=ROOT)  # fmt: skip
    return json.loads((run / "train_report.json").read_text())


def _beside(data: Path, folder: Path, steps: int, env: dict[str, str], tag: str) -> dict:
    """The measured training while a second one runs its training loop."""
    other_run = folder / f"other_{tag}"
    with (folder / f"other_{tag}.log").open("wb") as out:
        other = subprocess.Popen(_train_cmd(data, other_run, BESIDE_FACTOR * steps), env=env,
                                 stdout=out, stderr=out, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (other_run / "logs/metrics.jsonl").is_file():
            if other.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second training did not start: see {out.name}")
            time.sleep(0.2)
        report = _train(data, folder / f"beside_{tag}", steps, env,
                        folder / f"beside_{tag}.log")  # fmt: skip
        if other.poll() is not None:
            raise RuntimeError("the second training ended before the measured one")
        return report
    finally:
        other.send_signal(signal.SIGTERM)
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait()


def _pair(data: Path, folder: Path, steps: int, tag: str, **extra: str) -> dict:
    env = _user_env(**extra)
    alone = _train(data, folder / f"alone_{tag}", steps, env, folder / f"alone_{tag}.log")
    beside = _beside(data, folder, steps, env, tag)
    alone_s, beside_s = float(alone["seconds"]), float(beside["seconds"])
    return {
        "alone_s": round(alone_s, 3),
        "beside_s": round(beside_s, 3),
        "alone_s_per_step": round(alone_s / steps, 4),
        "beside_s_per_step": round(beside_s / steps, 4),
        "ratio": round(beside_s / alone_s, 3),
        "threads_alone": alone["stages"]["guidance"]["threads"],
        "threads_beside": beside["stages"]["guidance"]["threads"],
    }


def run(quick: bool = False) -> dict:
    steps = 20 if quick else 200
    with tempfile.TemporaryDirectory(prefix="gphm-contention-") as tmp:
        folder = Path(tmp)
        data = _make_data(folder)
        result: dict = {"steps": steps, "cpu_count": os.cpu_count(), "target_ratio": TARGET_RATIO}
        result["default"] = _pair(data, folder, steps, "default")  # the commands' own
        result["ratio"] = result["default"]["ratio"]
        result["meets_target"] = result["ratio"] <= TARGET_RATIO
        if quick:
            return result
        result["fixed"] = _pair(data, folder, steps, "fixed", GPHM_ADAPTIVE_THREADS="0")
        alone_vs_fixed = result["default"]["alone_s"] / result["fixed"]["alone_s"]
        result["alone_vs_fixed"] = round(alone_vs_fixed, 3)
        result["alone_meets_target"] = alone_vs_fixed <= ALONE_TOLERANCE
        result["passive"] = _pair(data, folder, steps, "passive", GPHM_ADAPTIVE_THREADS="0",
                                  OMP_WAIT_POLICY="PASSIVE")  # fmt: skip
        result["active"] = _pair(data, folder, steps, "active", OMP_WAIT_POLICY="ACTIVE")
        return result
