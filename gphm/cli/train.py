r"""Train gphm (docs/architecture.md §7, §8.2).

    accelerate launch scripts/train.py data.path=DIR run_dir=RUN [model=tiny|paper] \
        [stage=all|guidance|gaussian] seed=0 train.batch_size=4 train.guidance_steps=1500 \
        train.gaussian_steps=1500 train.checkpoint_every=500

Stages (``stage=all`` is the default):

- ``stage=guidance`` trains the stage-1 guiding mesh model (SDF -> DMTet mesh). Writes
  ``RUN/checkpoints/step_*/``, ``RUN/guidance_model/`` and ``RUN/model/``
  (config.json + model.safetensors).
- ``stage=gaussian`` trains the stage-2 Gaussian head created from a stage-1 run
  (``guidance_run=RUN1``, default ``run_dir`` itself). Writes
  ``RUN/checkpoints/gaussian/step_*/`` and ``RUN/model/`` (the Gaussian head).
- ``stage=all`` runs both in turn: ``RUN/guidance_model/`` is stage 1,
  ``RUN/model/`` the final Gaussian head.

Every stage also writes ``RUN/logs/`` (metrics.jsonl, TensorBoard), ``RUN/previews/``,
``RUN/eval/<stage>_<split>.json`` for the dataset's validation splits and
``RUN/train_report.json`` (``RUN/eval/<split>.json`` holds the last stage's validation
figures; held-out splits are only scored by ``scripts/evaluate.py``).

Re-running with the same ``run_dir`` resumes from its newest readable checkpoint (a
damaged one is skipped with a warning), with the options and dataset it was started with
(recorded in ``RUN/run_state.json``): a changed option or dataset exits 2 naming it, only
the schedule (``train.*_steps``, ``checkpoint_every``, ``keep_checkpoints``,
``log_every``, ``preview_every``) may change. A run already trained to its steps is left
as it is. Stage-2 checkpoints built from an older stage-1 model (stage 1 trained further)
are moved to ``RUN/checkpoints/gaussian.stale-<time>/``. One process at a time writes a
run directory (``RUN/.lock``; a second exits 2 naming the owner, a dead owner's lock is
taken over).

Presets: the defaults come from ``configs/train.yaml``; ``model=NAME`` picks
``configs/model/NAME.yaml`` (tiny: CPU-sized, paper: GPU paper scale). Your own presets:
put ``model/NAME.yaml`` in a folder and pass ``config_dir=DIR`` (or list folders in
``$GPHM_CONFIG_PATH``); its files add to and override the shipped ones. Every key of a
YAML is checked against the schema (gphm/training/config.py) at start.

Installed as ``gphm-train`` (``accelerate launch -m gphm.cli.train`` for several
processes). ``device=cpu`` (= ``train.cpu=true``) forces the CPU, ``device=cuda`` insists
on CUDA; by default accelerate places the model (CUDA when available).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from accelerate import Accelerator

from gphm.cli import UserError, cli_device, run_cli, write_report
from gphm.training.config import TrainRunConfig, check_training_time
from gphm.training.run_dir import RunDirError, RunLock, RunLocked, exit_on_sigterm, on_main
from gphm.training.trainer import (
    CheckpointWriteError,
    GaussianTrainer,
    GuidanceTrainer,
    TrainingDiverged,
)


def _train(cfg: TrainRunConfig, acc: Accelerator) -> dict[str, dict]:
    stages: dict[str, dict] = {}
    guidance = None
    if cfg.stage in ("guidance", "all"):
        trainer = GuidanceTrainer(cfg, accelerator=acc)
        stages["guidance"] = trainer.train()
        guidance = acc.unwrap_model(trainer.model).cpu()
        del trainer
    if cfg.stage in ("gaussian", "all"):
        trainer = GaussianTrainer(cfg, accelerator=acc, guidance=guidance)
        stages["gaussian"] = trainer.train()
    return stages


def main(cfg: TrainRunConfig) -> dict:
    acc = Accelerator(cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision)
    try:
        check_training_time(cfg, "cuda" if acc.device.type == "cuda" else "cpu")
    except ValueError as err:  # over the time budget: refused before the run is touched
        raise UserError(str(err)) from None
    lock = RunLock(cfg.run_dir)
    run = Path(cfg.run_dir)
    try:
        with exit_on_sigterm():
            try:
                on_main(acc, lock.acquire, RunLocked, OSError)
                stages = _train(cfg, acc)
            finally:
                lock.release()
    # DatasetMismatch and CheckpointError are ValueErrors; dataset loading/validation
    # errors name the path.
    except (ValueError, TrainingDiverged, RunDirError, CheckpointWriteError) as err:
        raise UserError(str(err)) from None
    except OSError as err:  # e.g. disk full or read-only while writing logs or previews
        raise UserError(f"{err.filename or run}: {err.strerror or err}") from None
    if all(s.get("already_trained") for s in stages.values()):
        steps = {k: s.get("steps") for k, s in stages.items()}
        return {"stage": cfg.stage, "already_trained": True, "run_dir": str(run), "steps": steps}
    for s in stages.values():
        s.pop("already_trained", None)
    last = stages[list(stages)[-1]]
    summary = {
        "stage": cfg.stage,
        "steps": sum(s["steps"] for s in stages.values()),
        "seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "processes": last["processes"],
        "final_losses": last["final_losses"],
        "stages": stages,
    }
    if acc.is_main_process:
        write_report(run / "train_report.json", summary)
    return summary


def _summary(r: dict) -> str:
    if r.get("already_trained"):
        steps = ", ".join(f"{k} {n}" for k, n in r["steps"].items())
        return (f"train: already trained to {steps} steps; nothing to do, kept "
                f"{r['run_dir']}/train_report.json and the models")  # fmt: skip
    losses = r["final_losses"]
    return (
        f"train: stage {r['stage']} {r['steps']} steps in {r['seconds']} s on "
        f"{r['processes']} process(es); loss {losses.get('total')}, "
        f"IoU {1 - losses.get('silhouette', 1):.3f}"
        + "".join(
            f"; {k} {split} PSNR {ev['psnr']}"
            for k, s in r["stages"].items()
            for split, ev in (s.get("eval") or {}).items()
        )
    )


def device_overrides(argv: list[str]) -> list[str]:
    """The commands' shared ``device=auto|cpu|cuda`` option, for training: accelerate
    places the model (one process per GPU under ``accelerate launch``), so ``device=cpu``
    is ``train.cpu=true``, ``device=cuda`` checks that CUDA is there and ``auto`` (the
    default) leaves accelerate's choice. Other arguments pass through."""
    out = []
    for arg in argv:
        if not arg.startswith("device="):
            out.append(arg)
            continue
        value = arg.split("=", 1)[1].strip().lower()
        if value not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be one of auto|cpu|cuda for training, got {value!r}")
        if value == "cpu":
            out.append("train.cpu=true")
        elif value == "cuda":
            cli_device("cuda")  # UserError where there is no CUDA
    return out


#: Seconds the output may take to drain after SIGTERM before the process exits anyway.
SIGTERM_FLUSH_SECONDS = 2.0


def _exit_after_sigterm(code: int) -> None:
    """End the process now, after SIGTERM's ``finally`` blocks ran (lock released).

    The interpreter's own exit flushes ``stdout``/``stderr`` and blocks forever when they
    are a pipe that nobody reads (a launcher or test that stopped draining it): a SIGTERM
    must end the run whatever its output does. The buffered output gets
    :data:`SIGTERM_FLUSH_SECONDS` to drain in a helper thread, then ``os._exit``.
    """

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken: nothing more to save
                pass

    helper = threading.Thread(target=flush, daemon=True)
    helper.start()
    helper.join(SIGTERM_FLUSH_SECONDS)
    os._exit(code)


def cli(argv: list[str] | None = None) -> int:
    """The ``train`` command: parse ``argv`` (default: the process's), run, summarise.
    SIGTERM ends it with status 143 once the run directory's lock is released
    (:func:`_exit_after_sigterm`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = device_overrides(argv)
    except UserError as err:
        print(f"{Path(sys.argv[0]).name or 'gphm-train'}: error: {err}", file=sys.stderr)
        return 2
    try:
        return run_cli(TrainRunConfig, main, argv, summary=_summary)
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:  # exit_on_sigterm's exit
            _exit_after_sigterm(exc.code)
        raise


if __name__ == "__main__":
    sys.exit(cli())
