"""Scalar logging: JSON lines always, TensorBoard when the package is installed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["MetricLogger"]

log = logging.getLogger(__name__)


class MetricLogger:
    """Appends ``{"step", "stage", "lr", **scalars}`` to ``logs/metrics.jsonl`` and mirrors the
    scalars to TensorBoard (``logs/tb``) when ``tensorboard`` is importable. Disabled
    loggers (non-main processes) do nothing."""

    def __init__(self, directory: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tb"))
        except ImportError:
            log.info("tensorboard is not installed; logging to metrics.jsonl only")

    def log(
        self, step: int, scalars: dict[str, float], stage: str | None = None, **extra: float
    ) -> None:
        """One record; ``stage`` is stored in it and prefixes the TensorBoard tags."""
        if not self.enabled:
            return
        record = {"step": step, **({"stage": stage} if stage else {}), **extra, **scalars}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            prefix = f"{stage}/" if stage else ""
            for k, v in {**scalars, **extra}.items():
                self.writer.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
