"""Loading a trained run (``RUN/model``) and resolving subjects and frames by name."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gphm.io.jsonfile import read_json_object
from gphm.models.base import SerializableModule
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["TrainedRun", "ResolvedFrame", "load_run", "dataset_fingerprint",
           "fingerprint_comparable", "seen_by",
           "MODEL_CLASSES"]  # fmt: skip

MODEL_CLASSES = (GuidanceModel, GaussianHead)


@dataclass(frozen=True)
class ResolvedFrame:
    """A trained expression code chosen for a subject (:meth:`TrainedRun.trained_frame`)."""

    frame: int
    """Global frame index = row of the expression codebook."""
    subject: int
    """Index of the subject whose frame it is (not necessarily the one asked for)."""
    subject_name: str
    label: str
    """The frame's expression label."""
    borrowed: bool
    """True when the frame belongs to another subject than the one asked for (expression
    transfer: the asked-for subject has no trained frame with that label)."""
    note: str | None = None
    """Why the choice may be less sure than it looks (an older run without
    ``train_frames``: every frame is taken as trained)."""

    def describe(self) -> str:
        """``"expression from synth_005@37"`` (``NAME@FRAME`` is a valid source spec)."""
        return f"expression from {self.subject_name}@{self.frame}"


@dataclass
class TrainedRun:
    model: GuidanceModel | GaussianHead
    extra: dict[str, Any]
    """Training metadata from config.json: subjects, frames, train_frames, lr/hr sizes."""
    path: Path

    @property
    def subjects(self) -> list[str]:
        return list(self.extra.get("subjects", []))

    @property
    def frames(self) -> list[dict[str, Any]]:
        """``meta["frames"]`` of the training dataset: one record per expression code."""
        return list(self.extra.get("frames", []))

    @property
    def train_frames(self) -> list[int]:
        """Global frame indices whose expression codes were optimised (sorted). Runs
        written before ``extra["train_frames"]`` existed: every frame (see
        :attr:`train_frames_note`)."""
        recorded = self.extra.get("train_frames")
        if recorded is None:
            return list(range(len(self.frames)))
        return sorted(int(f) for f in recorded)

    @property
    def train_frames_note(self) -> str | None:
        if "train_frames" in self.extra:
            return None
        return (
            f"{self.path / 'config.json'} does not record train_frames (an older run): "
            "every frame is taken as trained"
        )

    @property
    def trained_subjects(self) -> list[int]:
        """Subjects with at least one trained frame: the identity codes that were fitted."""
        return sorted({self.frame_subject(self.frames[f]) for f in self.train_frames})

    def frame_label(self, frame: int) -> str:
        f = self.frames[frame]
        return str(f.get("expression") or f.get("name") or frame)

    def trained_labels(self, subject: int | None = None) -> list[str]:
        """Expression labels of the trained frames (of ``subject``, or of any subject),
        without repeats, in the order of ``extra["expressions"]`` (then frame order)."""
        frames = self.frames
        labels = [self.frame_label(f) for f in self.train_frames
                  if subject is None or self.frame_subject(frames[f]) == subject]  # fmt: skip
        order = {e: i for i, e in enumerate(self.extra.get("expressions") or [])}
        return sorted(dict.fromkeys(labels), key=lambda e: order.get(e, len(order)))

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

    def trained_subject(
        self, spec: str | int, noun: str = "subject", nouns: str = "subjects"
    ) -> int:
        """Index of a subject with a trained frame (so its identity code was fitted), given
        by name or index (a string or an int): the one resolver of the API's identities
        and the exporter's ``subject=``. ``ValueError`` otherwise, calling ``spec`` a
        ``noun`` and listing the trained ``nouns``."""
        listing = f"trained {nouns}: {[self.subjects[i] for i in self.trained_subjects]}"
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise ValueError(f"{noun} {spec!r}: expected a subject name or index; {listing}")
        if isinstance(spec, str) and spec not in self.subjects and not spec.lstrip("-").isdigit():
            raise ValueError(f"unknown {noun} {spec!r}; {listing}")
        try:
            s = self.subject_index(spec)
        except ValueError as err:
            raise ValueError(f"{noun} {spec!r}: {err}; {listing}") from None
        if s not in self.trained_subjects:
            raise ValueError(
                f"{noun} {self.subjects[s]!r} has no trained frame, so its identity code was "
                f"never fitted; {listing}"
            )
        return s

    def _resolved(self, frame: int, asked: int | None) -> ResolvedFrame:
        owner = self.frame_subject(self.frames[frame])
        return ResolvedFrame(
            frame=frame, subject=owner, subject_name=self.subjects[owner],
            label=self.frame_label(frame), borrowed=asked is not None and owner != asked,
            note=self.train_frames_note,
        )  # fmt: skip

    def trained_frame(self, subject: int | None, expression: str) -> ResolvedFrame:
        """The trained frame to render ``subject`` with ``expression``: the subject's own
        trained frame with that label (the lowest such index), otherwise the trained frame
        of the lowest-index other subject that has the label (``borrowed``: expression
        transfer). ``subject=None`` (a fitted avatar asks): the lowest-index subject's.
        Untrained frames (held-out pairs) never count: their codes were never optimised.
        ``ValueError`` listing the trained labels when no subject has one."""
        frames = self.frames
        candidates = [f for f in self.train_frames if self.frame_label(f) == expression]
        if not candidates:
            raise ValueError(
                f"no trained frame shows expression {expression!r}; trained labels: "
                f"{self.trained_labels()}"
            )
        own = [f for f in candidates if self.frame_subject(frames[f]) == subject]
        if own:
            return self._resolved(own[0], subject)
        donor = min(candidates, key=lambda f: (self.frame_subject(frames[f]), f))
        return self._resolved(donor, subject)

    def resolve_frame(
        self, subject: int, frame: int | None = None, expression: str | None = None
    ) -> ResolvedFrame:
        """The frame a CLI's ``SUBJECT``, ``SUBJECT:EXPRESSION`` or ``SUBJECT@FRAME`` means:
        ``frame`` itself (it must be trained), :meth:`trained_frame` for ``expression``,
        or the subject's first trained frame."""
        n = len(self.frames)
        name = self.subjects[subject]
        trained = self.train_frames
        if frame is not None:
            if not 0 <= frame < n:
                raise ValueError(f"frame {frame} out of range [0, {n})")
            if frame not in set(trained):
                raise ValueError(
                    f"{name}@{frame}: frame {frame} was not trained (its expression code was "
                    f"never optimised); {name}'s trained labels: {self.trained_labels(subject)}"
                )
            return self._resolved(frame, subject)
        if expression is not None:
            return self.trained_frame(subject, expression)
        own = [f for f in trained if self.frame_subject(self.frames[f]) == subject]
        if not own:
            raise ValueError(
                f"subject {name!r} has no trained frame; name an expression "
                f"({self.trained_labels()}) or a frame"
            )
        return self._resolved(own[0], subject)

    def frame_index(
        self, subject: int, frame: int | None = None, expression: str | None = None
    ) -> int:
        """``resolve_frame(...).frame``: a trained global frame (expression-code) index."""
        return self.resolve_frame(subject, frame, expression).frame

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
    desc = read_json_object(model_dir / "config.json", "model config")
    classes: dict[str, type[SerializableModule]] = {c.__name__: c for c in MODEL_CLASSES}
    cls = classes.get(desc.get("class"))
    if cls is None:
        raise ValueError(
            f"{model_dir / 'config.json'}: holds a {desc.get('class')!r}, expected one of "
            f"{sorted(classes)}"
        )
    model = cls.from_pretrained(model_dir, map_location=device).eval()
    return TrainedRun(model=model, extra=desc.get("extra", {}), path=model_dir)


FINGERPRINT_VERSION = "v2"
"""Prefix of :func:`dataset_fingerprint` values (older values: :func:`fingerprint_comparable`)."""


def dataset_fingerprint(data_dir: str | Path) -> str:
    """The one fingerprint of a dataset directory: ``v2-`` and 16 hex digits over its
    ``meta.json`` (names, frames, cameras, generator parameters with the seed, split
    sizes) and its ``state.json`` (which holds the writer's content hash of the encoded
    rows, :func:`gphm.data.format.write_dataset`), each as parsed JSON, so independent of
    whitespace and key order and costing no read of the rows. Training records it in
    ``RUN/model/config.json`` (``extra["dataset_fingerprint"]``: evaluation tells a
    dataset the model was trained on) and in ``RUN/run_state.json`` (the resume guard)."""
    h = hashlib.sha256(b"gphm-dataset-fingerprint-v2")
    for name in ("meta.json", "state.json"):
        path = Path(data_dir) / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if name == "meta.json":
                raise FileNotFoundError(f"{path}: missing; not a gphm dataset") from None
            value = None  # a dataset written by hand, without the writer's state
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        h.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return f"{FINGERPRINT_VERSION}-{h.hexdigest()[:16]}"


def fingerprint_comparable(recorded: Any) -> bool:
    """Whether a recorded dataset fingerprint can be compared with :func:`dataset_fingerprint`:
    runs before ``v2`` recorded 16 bare hex digits of other formulas (meta.json alone in
    ``config.json``; file bytes and sizes in ``run_state.json``); treat those as none."""
    return isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{16}", recorded) is None


def seen_by(run: TrainedRun, data_dir: str | Path, meta: dict[str, Any]) -> str | None:
    """Why the dataset at ``data_dir`` (with ``meta``, its meta.json) holds people ``run``
    was trained on, or None.

    * the run records the training dataset's :func:`dataset_fingerprint` and it matches;
    * older runs (no fingerprint): the same subject names and frames as the run's;
    * imported data (``meta["generator"]["importer"]``: real people with real names):
      any subject name shared with the run. Generated sets reuse names (``synth_000``)
      for different people, so for them names alone prove nothing.
    """
    recorded = run.extra.get("dataset_fingerprint")
    if not fingerprint_comparable(recorded):
        recorded = None  # recorded by an older formula: as if none
    if recorded is not None and recorded == dataset_fingerprint(data_dir):
        return f"it is the dataset the model was trained on (fingerprint {recorded})"
    if (
        recorded is None
        and list(meta.get("subjects", [])) == run.subjects
        and (meta.get("frames") == run.extra.get("frames"))
    ):
        return "it has the subjects and frames of the model's training data"
    if "importer" in (meta.get("generator") or {}):
        shared = sorted(set(meta.get("subjects", [])) & set(run.subjects))
        if shared:
            return f"the model was trained on its subjects {shared[:5]}"
    return None
