#!/usr/bin/env python
"""Train gphm (DESIGN.md §5).

    accelerate launch scripts/train.py data.path=DIR run_dir=RUN model=tiny|paper \
        stage=guidance seed=0 train.batch_size=4 train.guidance_steps=1500 \
        train.checkpoint_every=500

Re-running with the same ``run_dir`` resumes from its latest checkpoint. Writes
``RUN/checkpoints/step_*/``, ``RUN/model/`` (config.json + model.safetensors),
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
from gphm.training.trainer import GuidanceTrainer, TrainingDiverged


def main(cfg: TrainRunConfig) -> dict:
    if cfg.stage != "guidance":
        raise UserError(
            f"stage={cfg.stage}: the Gaussian head stage is not part of this version yet; "
            "use stage=guidance"
        )
    try:
        trainer = GuidanceTrainer(cfg)
        summary = trainer.train()
    # DatasetMismatch is a ValueError; dataset loading/validation errors name the path.
    except (FileNotFoundError, ValueError, TrainingDiverged) as err:
        raise UserError(str(err)) from None
    if trainer.acc.is_main_process:
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
            ),
        )
    )
