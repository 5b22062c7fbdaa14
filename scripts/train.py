#!/usr/bin/env python
"""Train gphm (DESIGN.md §5).

    accelerate launch scripts/train.py data.path=DIR run_dir=RUN model=tiny|paper \
        stage=guidance|gaussian|all seed=0 train.batch_size=4 train.guidance_steps=1500 \
        train.gaussian_steps=1500 train.checkpoint_every=500

``stage=all`` trains the guiding mesh model, then the Gaussian head created from it;
``stage=gaussian`` starts from an existing stage-1 run (``guidance_run=RUN1``, default
``run_dir`` itself). Re-running with the same ``run_dir`` resumes from its latest
checkpoint. Writes ``RUN/checkpoints/step_*/`` (stage 1), ``RUN/checkpoints/gaussian/
step_*/`` (stage 2), ``RUN/guidance_model/`` (stage 1), ``RUN/model/`` (config.json +
model.safetensors of the final stage),
``RUN/logs/`` (metrics.jsonl, TensorBoard), ``RUN/previews/`` and ``RUN/train_report.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from gphm.cli import UserError, run_cli, write_report
from gphm.training.config import TrainRunConfig
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer, TrainingDiverged


def main(cfg: TrainRunConfig) -> dict:
    stages: dict[str, dict] = {}
    try:
        guidance, acc = None, None
        if cfg.stage in ("guidance", "all"):
            trainer = GuidanceTrainer(cfg)
            stages["guidance"] = trainer.train()
            acc = trainer.acc
            guidance = acc.unwrap_model(trainer.model).cpu()
            del trainer
        if cfg.stage in ("gaussian", "all"):
            trainer = GaussianTrainer(cfg, accelerator=acc, guidance=guidance)
            stages["gaussian"] = trainer.train()
            acc = trainer.acc
    # DatasetMismatch is a ValueError; dataset loading/validation errors name the path.
    except (FileNotFoundError, ValueError, TrainingDiverged) as err:
        raise UserError(str(err)) from None
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
        write_report(Path(cfg.run_dir) / "train_report.json", summary)
    return summary


if __name__ == "__main__":
    sys.exit(
        run_cli(
            TrainRunConfig,
            main,
            summary=lambda r: (
                f"train: stage {r['stage']} {r['steps']} steps in {r['seconds']} s on "
                f"{r['processes']} process(es); loss {r['final_losses'].get('total')}, "
                f"IoU {1 - r['final_losses'].get('silhouette', 1):.3f}"
                + "".join(
                    f"; {k} heldout_view PSNR {s['eval']['psnr']}"
                    for k, s in r["stages"].items()
                    if s.get("eval")
                )
            ),
        )
    )
