"""Loading a trained run (``RUN/model``) and resolving subjects and frames by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gphm.models.base import SerializableModule
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["TrainedRun", "load_run", "MODEL_CLASSES"]

MODEL_CLASSES = (GuidanceModel, GaussianHead)


@dataclass
class TrainedRun:
    model: GuidanceModel | GaussianHead
    extra: dict[str, Any]
    """Training metadata from config.json: subjects, frames, lr/hr sizes, summary."""
    path: Path

    @property
    def subjects(self) -> list[str]:
        return list(self.extra.get("subjects", []))

    def subject_index(self, subject: str | int) -> int:
        """Index of a subject given by name or index (as a string or int)."""
        names = self.subjects
        if isinstance(subject, str) and subject in names:
            return names.index(subject)
        try:
            i = int(subject)
        except (TypeError, ValueError):
            raise ValueError(f"unknown subject {subject!r}; the run has {names}") from None
        if not 0 <= i < len(names):
            raise ValueError(f"subject index {i} out of range [0, {len(names)})")
        return i

    def frame_index(
        self, subject: int, frame: int | None = None, expression: str | None = None
    ) -> int:
        """A global frame (expression-code) index: ``frame`` itself, or the first frame of
        ``subject`` showing ``expression`` (default: the subject's first frame)."""
        frames = self.extra.get("frames", [])
        if frame is not None:
            if not 0 <= frame < len(frames):
                raise ValueError(f"frame {frame} out of range [0, {len(frames)})")
            return frame
        for i, f in enumerate(frames):
            if self.frame_subject(f) == subject and expression in (None, f.get("expression")):
                return i
        raise ValueError(
            f"subject {self.subjects[subject]!r} has no frame"
            + (f" with expression {expression!r}" if expression else "")
        )

    def frame_subject(self, f: dict[str, Any]) -> int:
        """Subject index of a frame record of ``extra["frames"]``."""
        s = f.get("subject")
        return self.subjects.index(s) if isinstance(s, str) else int(s)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """Load ``RUN/model`` (or a model directory itself) written by training."""
    path = Path(run_dir)
    model_dir = path / "model" if (path / "model").is_dir() else path
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no trained model (expected {path / 'model' / 'config.json'}); "
            "train one with scripts/train.py"
        )
    desc = json.loads((model_dir / "config.json").read_text())
    classes: dict[str, type[SerializableModule]] = {c.__name__: c for c in MODEL_CLASSES}
    cls = classes.get(desc.get("class"))
    if cls is None:
        raise ValueError(
            f"{model_dir / 'config.json'}: holds a {desc.get('class')!r}, expected one of "
            f"{sorted(classes)}"
        )
    model = cls.from_pretrained(model_dir, map_location=device).eval()
    return TrainedRun(model=model, extra=desc.get("extra", {}), path=model_dir)
