"""Training of both stages with accelerate (docs/architecture.md §3.2, §3.3, §11).

Determinism and resume: the rows of step ``k`` are a pure function of (seed, k, global
batch size) — an epoch-seeded order (``train.sampling``: subject-balanced where
subjects have different numbers of rows, :mod:`gphm.data.sampling`) cut into global
batches, of which process ``r`` takes ``rows[r::W]`` — and the learning rate is a pure
function of ``k``. With the model, optimiser and RNG states in the checkpoint, a resumed
run repeats exactly what the uninterrupted run would have done. Every loss term is a
per-row mean, so W processes × batch b (DDP averages gradients) train like one process ×
batch W·b up to float summation order (docs/architecture.md §11 says what that holds to).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from gphm import losses
from gphm.data.format import MIXED_EXPRESSION
from gphm.data.loaders import DistributedFrameSampler, HeadBatch, HeadDataset, collate_views
from gphm.data.sampling import StepRows
from gphm.evaluation.perceptual import build_perceptual_loss
from gphm.evaluation.views import evaluate_model
from gphm.geometry.cameras import project_points
from gphm.geometry.landmarks import EXPRESSIVE_REGIONS, region_box_mask
from gphm.geometry.mesh import anchored_offsets, knn_indices, knn_weights
from gphm.geometry.pose import apply_head_pose
from gphm.io import threads as adaptive_threads
from gphm.io.atomic import atomic_directory, atomic_write_text
from gphm.io.images import image_grid, save_png
from gphm.io.jsonfile import write_report
from gphm.models.gaussian_head import GaussianHead, GaussianOutput
from gphm.models.guidance import Deformation, GuidanceModel, GuidanceOutput
from gphm.models.runs import dataset_fingerprint
from gphm.training.checkpoint import (
    checkpoint_candidates,
    load_latest,
    prune_checkpoints,
    save_training_state,
)
from gphm.training.config import FACE_REGION_PAD, TrainRunConfig, check_training_budget
from gphm.training.logging import MetricLogger
from gphm.training.run_dir import (
    RunDirError,
    check_resume,
    dataset_dir_fingerprint,
    module_fingerprint,
    on_main,
    record_stage,
    resolved_options,
)
from gphm.training.schedule import stage_steps

__all__ = [
    "TrainingDiverged",
    "DatasetMismatch",
    "CheckpointWriteError",
    "VAL_SPLITS",
    "step_rows",
    "StageTrainer",
    "GuidanceTrainer",
    "GaussianTrainer",
    "load_guidance",
    "GUIDANCE_MODEL_DIR",
]

GUIDANCE_MODEL_DIR = "guidance_model"
"""Where every run keeps its stage-1 model (``RUN/model`` holds the final stage's)."""


VAL_SPLITS = ("val_view", "val_combo")
"""Splits scored at the end of each stage (when the dataset has rows of them)."""


class TrainingDiverged(RuntimeError):
    """A loss, gradient or weight became NaN/Inf; training stopped without applying the
    step or writing a checkpoint."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint or model could not be written (disk full, permissions)."""


class DatasetMismatch(ValueError):
    """The dataset does not fit the model configuration."""


def step_rows(step: int, num_rows: int, global_batch: int, seed: int) -> list[int]:
    """Dataset rows of global batch ``step`` (all processes together)."""
    if num_rows < global_batch:
        raise DatasetMismatch(
            f"the training split has {num_rows} rows, fewer than the global batch "
            f"{global_batch} (train.batch_size × processes)"
        )
    per_epoch = num_rows // global_batch
    epoch, k = divmod(step, per_epoch)
    sampler = DistributedFrameSampler(num_rows, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler.order()[k * global_batch : (k + 1) * global_batch]


def expression_groups(frames: list[dict[str, Any]], train_frames) -> torch.Tensor:
    """[num_frames] int64: for each training frame the index of its ``expression`` label
    (sorted label order), -1 for frames without a label, with a mixed expression
    (:data:`~gphm.data.format.MIXED_EXPRESSION`: no two share one) or outside the
    training split."""
    train = {int(f) for f in train_frames}

    def label_of(f: int) -> str | None:
        label = frames[f].get("expression")
        return str(label) if label and str(label) != MIXED_EXPRESSION else None

    labels = sorted({label for f in train if (label := label_of(f))})
    index = {label: i for i, label in enumerate(labels)}
    groups = torch.full((len(frames),), -1, dtype=torch.long)
    for f in train:
        if label := label_of(f):
            groups[f] = index[label]
    return groups


#: Canonical neighbours of a Gaussian in ``loss.gaussian.basis_smooth``.
BASIS_NEIGHBOURS = 8

#: Anchors a landmark follows in ``loss.landmark_anchor`` (few: two lips or two eyelids
#: a few vertices apart must not share them).
LANDMARK_ANCHOR_K = 4


def anchored_landmarks(
    landmarks: torch.Tensor,  # [L, 3] canonical P0
    anchors: torch.Tensor,  # [N, 3] canonical positions the offsets are of (X0 / V0)
    deformation: Deformation,  # delta_id, delta_exp [B, N, 3]
    k: int = LANDMARK_ANCHOR_K,
) -> torch.Tensor:  # [B, L, 3] canonical
    """P0 (no gradient) moved by the inverse-distance mean identity + expression offset of
    its ``k`` nearest anchors (:func:`gphm.geometry.mesh.knn_weights`): where the surface
    around each landmark goes. Supervising it with the true landmarks trains the surface's
    deformation at the landmarks (the model's own landmarks have their own features and
    can learn their motion without the surface following)."""
    idx, w = knn_weights(landmarks, anchors, k)
    offsets = deformation.delta_id + deformation.delta_exp
    return landmarks.detach() + anchored_offsets(offsets, idx, w)


def canonical_landmark_mean(dataset: HeadDataset, max_rows: int = 256) -> torch.Tensor:
    """Mean canonical landmarks [L, 3]: world landmarks mapped back through each row's
    head pose (``x_c = Rᵀ(x_w − T)/s``), averaged over up to ``max_rows`` rows."""
    rows = range(0, len(dataset), max(1, len(dataset) // max_rows))
    acc = []
    for i in rows:
        it = dataset[i]
        acc.append((it.landmarks_3d - it.head_T) @ it.head_R / it.head_scale)
    return torch.stack(acc).nanmean(0)


class StageTrainer:
    """Shared data, loop, checkpoints and export of both stages for one ``run_dir``.

    Subclasses set ``stage`` and ``ckpt_dir``, build ``self.model``, ``self.optimizer``
    (with one ``base_lrs`` entry per parameter group) and ``self.total_steps``, and
    implement :meth:`_initialise` and :meth:`compute_losses`.
    """

    stage: str = ""
    desc: str = ""

    def __init__(self, cfg: TrainRunConfig, accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.acc = accelerator or Accelerator(
            cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision
        )
        self.run_dir = Path(cfg.run_dir)
        set_seed(cfg.seed)  # identical initialisation on every process
        self.dataset = HeadDataset(cfg.data.path, split="train", lr_size=cfg.model.lr_size)
        hr = self.dataset.hr_size[0]
        if hr != cfg.model.hr_size:
            raise DatasetMismatch(
                f"{cfg.data.path}: images are {hr} px high but model={cfg.model.name} renders "
                f"{cfg.model.lr_size} -> {cfg.model.hr_size} px; regenerate the data at "
                f"resolution={cfg.model.hr_size} or set "
                f"model.lr_size={hr // cfg.model.guidance.upsampler.factor}"
            )
        meta = self.dataset.meta
        if cfg.model.guidance.num_landmarks != meta.get("num_landmarks", 68):
            raise DatasetMismatch(
                f"{cfg.data.path}: {meta.get('num_landmarks')} landmarks per row, the model "
                f"expects model.guidance.num_landmarks={cfg.model.guidance.num_landmarks}"
            )
        self.global_batch = cfg.train.batch_size * self.acc.num_processes
        try:
            self.step_rows = StepRows(self.dataset.subjects, self.global_batch, cfg.seed,
                                      cfg.train.sampling)  # fmt: skip
        except ValueError as err:
            raise DatasetMismatch(str(err)) from None
        self.expression_groups = expression_groups(meta["frames"], self.dataset.frames).to(
            self.acc.device
        )
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.options = resolved_options(cfg)
        self.data_fingerprint = dataset_dir_fingerprint(cfg.data.path)
        self._last_good: Path | None = None  # newest checkpoint known to be sound
        self._last_losses: dict[str, float] = {}
        self.model: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.base_lrs: list[float] = []
        self.total_steps = 0

    # ------------------------------------------------------------------ hooks
    def _initialise(self) -> None:
        """Fresh start (no checkpoint to resume): initialise the model on the device."""
        raise NotImplementedError

    def compute_losses(self, out: Any, batch: HeadBatch) -> dict[str, torch.Tensor]:
        """Loss terms of one batch, each a per-row mean, plus their weighted ``total``."""
        raise NotImplementedError

    def _export_extra(self) -> dict[str, Any]:
        return {}

    def _expression_consistency(self, model) -> torch.Tensor:
        """Spread of the expression codes of training frames sharing a label (see
        :func:`gphm.losses.group_consistency`), over the whole codebook."""
        return losses.group_consistency(model.expression_codes.codes.weight, self.expression_groups)

    def _anchor_term(
        self, model, anchors: torch.Tensor, d: Deformation, batch: HeadBatch
    ) -> torch.Tensor:
        """``landmark_anchor``: :func:`anchored_landmarks` (anchors [N, 3]: the canonical
        mean-mesh vertices or Gaussians the offsets ``d`` belong to) against the truth."""
        moved = anchored_landmarks(model.landmarks_canonical, anchors, d)
        posed = apply_head_pose(moved, batch.head_R, batch.head_T, batch.head_scale)
        return losses.landmark_distance(posed, batch.landmarks_3d)

    def _checkpoint_extra(self) -> dict[str, Any]:
        """Stage-specific entries of each checkpoint's ``trainer_state.json``."""
        return {}

    def _discard_stale(self) -> None:
        """Move aside checkpoints that no longer fit this stage's inputs (main process)."""

    # ------------------------------------------------------------------ set-up
    def _start(self) -> int:
        """Resume from the newest readable checkpoint, or initialise; returns the first
        step. Refuses (:class:`ResumeMismatch`) to resume with other options or data."""
        acc = self.acc
        on_main(acc, self._discard_stale, RunDirError, OSError)
        resuming = bool(checkpoint_candidates(self.ckpt_dir))
        on_main(acc, lambda: check_resume(self.run_dir, self.stage, self.options,
                                          self.data_fingerprint, resuming),
                RunDirError)  # fmt: skip
        loaded = load_latest(self.ckpt_dir, self.model, self.optimizer, warn=acc.print)
        if loaded is not None:
            path, state = loaded
            if state.get("stage") != self.stage:
                raise DatasetMismatch(f"{path}: checkpoint of stage {state.get('stage')!r}")
            acc.print(f"[train] {self.stage}: resuming from {path} (step {state['step']})")
            self._last_good, self._last_losses = path, state.get("losses", {})
            return int(state["step"])
        self.model.to(acc.device)
        self._initialise()
        return 0

    def _scheduled_steps(self, steps: int, epochs: float | None) -> int:
        """This stage's steps for this dataset (rule: :mod:`gphm.training.schedule`)."""
        t = self.cfg.train
        n = stage_steps(steps, epochs, len(self.dataset), self.global_batch,
                        t.schedule_reference_rows)  # fmt: skip
        if n != steps:  # the budget check of the config saw the configured steps
            scaled = dataclasses.replace(t, **{f"{self.stage}_steps": n})
            check_training_budget(dataclasses.replace(self.cfg, train=scaled, stage=self.stage))
            self.acc.print(
                f"[train] {self.stage}: {n} steps for {len(self.dataset)} training "
                f"rows (train.{self.stage}_steps={steps}, {self.stage}_epochs="
                f"{epochs}, schedule_reference_rows={t.schedule_reference_rows})"
            )
        return n

    # ------------------------------------------------------------------ one step
    def _batch(self, step: int) -> HeadBatch:
        rows = self.step_rows(step)
        local = rows[self.acc.process_index :: self.acc.num_processes]
        return collate_views([self.dataset[i] for i in local]).to(self.acc.device)

    def _set_lr(self, step: int) -> None:
        frac = step / max(1, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.cfg.train.lr_decay**frac

    def _forward(self, batch: HeadBatch) -> Any:
        h, w = batch.image_lr.shape[1:3]
        return self.model(
            batch.subject, batch.frame, batch.head_R, batch.head_T, batch.head_scale,
            batch.viewmat, batch.K_lr, w, h,
        )  # fmt: skip

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run (or resume) this stage to its configured number of steps.

        ``stop_after`` ends the loop early after that global step, as an interruption
        would (used by the resume tests); nothing is exported then. A stage already
        trained to its steps (and exported) is left as it is: its recorded summary is
        returned with ``already_trained: True``.
        """
        cfg, acc = self.cfg, self.acc
        start = self._start()
        if start >= self.total_steps and (done_before := self._trained_summary()) is not None:
            acc.print(f"[train] {self.stage}: already trained to {start} steps "
                      f"(train.{self.stage}_steps={self.total_steps}); kept its model")  # fmt: skip
            return done_before | {"already_trained": True}
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        logger = MetricLogger(self.run_dir / "logs", enabled=acc.is_main_process)
        if acc.is_main_process:
            record_stage(self.run_dir, self.stage, self.options, self.data_fingerprint)
            resolved = OmegaConf.to_yaml(OmegaConf.structured(cfg))
            atomic_write_text(self.run_dir / "config.yaml", resolved)
        t0, threads_at_start = time.perf_counter(), adaptive_threads.stats()
        terms: dict[str, torch.Tensor] = {}
        bar = tqdm(range(start, self.total_steps), initial=start, total=self.total_steps,
                   desc=self.desc, disable=not acc.is_local_main_process)  # fmt: skip
        stopped, done = False, start
        try:
            for step in bar:
                if not cfg.train.deterministic:  # else the count stays fixed: same bits
                    adaptive_threads.poll()
                self._set_lr(step)
                batch = self._batch(step)
                out = self._forward_or_diverged(batch, step)
                terms = self.compute_losses(out, batch)
                finite = acc.gather(torch.isfinite(terms["total"].detach())[None]).all()
                if not bool(finite):
                    self._diverged(step, terms)
                self.optimizer.zero_grad(set_to_none=True)
                acc.backward(terms["total"])
                self._check_gradients(step)
                self.optimizer.step()
                done = step + 1
                last = done == self.total_steps
                if done % cfg.train.log_every == 0 or last:
                    scalars = {k: float(v.detach()) for k, v in terms.items()}
                    logger.log(done, scalars, self.stage, lr=self.optimizer.param_groups[0]["lr"])
                    iou = 1 - scalars["silhouette"]
                    bar.set_postfix(loss=f"{scalars['total']:.4f}", iou=f"{iou:.3f}")
                if acc.is_main_process and (done % cfg.train.preview_every == 0 or last):
                    self._preview(done, out, batch)
                if done % cfg.train.checkpoint_every == 0 or last:
                    self._last_losses = _rounded(terms)
                    self._checkpoint(done)
                if stop_after is not None and done >= stop_after:
                    stopped = True
                    break
        finally:
            logger.close()
        if stopped:
            return {"stage": self.stage, "stopped_after": done}
        if start >= self.total_steps:  # trained, but the export was never written
            self._check_parameters(start)
        acc.wait_for_everyone()
        threads = adaptive_threads.stats().since(threads_at_start).as_dict()
        if cfg.train.deterministic:  # no poll ran: record the count a re-run must use
            threads.update(adaptive=False, count=torch.get_num_threads())
        summary = {
            "stage": self.stage,
            "steps": self.total_steps,
            "resumed_from": start,
            "seconds": round(time.perf_counter() - t0, 2),
            "threads": threads,
            "final_losses": self._last_losses,
            "processes": acc.num_processes,
        }
        if acc.is_main_process:
            self.export(summary)
            summary["eval"] = self.validate()
        acc.wait_for_everyone()
        return summary

    def _trained_summary(self) -> dict[str, Any] | None:
        """What the run recorded when this stage was last completed: its entry in
        ``RUN/train_report.json``, else the summary in its exported model; None when the
        export is missing (then it is written again)."""
        model_dir = self.run_dir / (GUIDANCE_MODEL_DIR if self.stage == "guidance" else "model")
        extra = _read_json(model_dir / "config.json").get("extra", {})
        if extra.get("stage") != self.stage or "summary" not in extra:
            return None
        recorded = _read_json(self.run_dir / "train_report.json").get("stages", {})
        return dict(recorded.get(self.stage) or extra["summary"])

    def validate(self) -> dict[str, Any]:
        """Score the trained model on the validation splits the dataset has rows of
        (``val_view``, ``val_combo``) into ``RUN/eval/<split>.json`` (the last stage
        trained) and ``RUN/eval/<stage>_<split>.json``. Held-out splits are never scored
        here: they are for reports (``scripts/evaluate.py``), decisions use validation."""
        sizes = self.dataset.meta.get("split_sizes", {})
        results = {}
        model = self.acc.unwrap_model(self.model)
        for split in VAL_SPLITS:
            if sizes.get(split, 0) > 0:
                result = evaluate_model(model, self.cfg.data.path, split, self.cfg.model.lr_size,
                                        device=self.acc.device)  # fmt: skip
                write_report(self.run_dir / "eval" / f"{self.stage}_{split}.json", result)
                write_report(self.run_dir / "eval" / f"{split}.json", result)
                results[split] = result
        return results

    def _last_good_text(self) -> str:
        return str(self._last_good) if self._last_good else "none"

    def _raise_diverged(self, what: str, step: int, names: list[str], consequence: str) -> NoReturn:
        where = ", ".join(names[:5]) or "on another process"
        raise TrainingDiverged(
            f"non-finite {what} at {self.stage} step {step} ({where}); {consequence}. Last "
            f"good checkpoint: {self._last_good_text()}. Lower the learning rates or check "
            "the data."
        )

    def _all_finite(self, named: list[tuple[str, torch.Tensor]]) -> list[str] | None:
        """None when every tensor is finite on every process, else the local bad names."""
        ok = torch.stack([torch.isfinite(t).all() for _, t in named]) if named else None
        local = ok.all() if ok is not None else torch.tensor(True, device=self.acc.device)
        if bool(self.acc.gather(local[None]).all()):
            return None
        return [n for (n, _), good in zip(named, ok.tolist()) if not good] if named else []

    def _forward_or_diverged(self, batch: HeadBatch, step: int) -> Any:
        """:meth:`_forward`, with the mean SDF losing its surface (all of the grid inside
        or outside: finite weights moved too far by the previous step) reported as
        :class:`TrainingDiverged` naming the likely causes instead of a traceback."""
        try:
            return self._forward(batch)
        except RuntimeError as err:
            if "no zero crossing" not in str(err):  # GuidanceModel.mean_mesh's message
                raise
            train = self.cfg.train
            raise TrainingDiverged(
                f"the mean SDF lost its surface at {self.stage} step {step} (no zero crossing "
                f"inside the grid): the previous steps moved the weights too far. Likely "
                f"causes: learning rates too high (train.lr={train.lr:g}, train.code_lr="
                f"{train.code_lr:g}), loss weights too high, or too few "
                f"train.sdf_prefit_steps ({train.sdf_prefit_steps}). Last good checkpoint: "
                f"{self._last_good_text()}."
            ) from None

    def _diverged(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        self._raise_diverged("loss", step, [f"terms: {', '.join(bad)}"] if bad else [],
                             "the step was not applied")  # fmt: skip

    def _check_gradients(self, step: int) -> None:
        """Before ``optimizer.step()``: stop when a gradient is NaN/Inf on any process.
        With fp16 loss scaling inf gradients are expected now and then and the scaler
        skips those steps itself, so the check is left to it."""
        if self.acc.scaler is not None:
            return
        named = [(n, p.grad) for n, p in self.acc.unwrap_model(self.model).named_parameters()
                 if p.grad is not None]  # fmt: skip
        bad = self._all_finite(named)
        if bad is not None:
            names = [f"parameters: {', '.join(bad[:5])}"] if bad else []
            self._raise_diverged("gradient", step, names, "the step was not applied")

    def _check_parameters(self, step: int) -> None:
        """Before a checkpoint or model is written: stop when a weight is NaN/Inf on any
        process, so that none is ever saved."""
        state = self.acc.unwrap_model(self.model).state_dict()
        bad = self._all_finite([(k, v) for k, v in state.items() if v.is_floating_point()])
        if bad is not None:
            self._raise_diverged("weights", step, bad, "not checkpointed")

    def _checkpoint(self, step: int) -> None:
        self._check_parameters(step)
        self.acc.wait_for_everyone()

        def write() -> Path:
            model = self.acc.unwrap_model(self.model)
            state = {"stage": self.stage, "losses": self._last_losses} | self._checkpoint_extra()
            try:
                path = save_training_state(self.ckpt_dir, step, model, self.optimizer, state)
            except OSError as err:
                raise CheckpointWriteError(
                    f"{self.ckpt_dir / f'step_{step:08d}'}: cannot write the checkpoint "
                    f"({err.strerror or err}); free space and re-run to resume from "
                    f"{self._last_good_text()}"
                ) from None
            prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
            return path

        self._last_good = on_main(self.acc, write, CheckpointWriteError)

    def _preview(self, step: int, out: Any, batch: HeadBatch) -> None:
        n = min(2, len(batch))
        tiles = []
        for i in range(n):
            tiles += [out.rgb[i].detach().float().cpu(), batch.image[i].cpu()]
        save_png(self.run_dir / "previews" / f"{self.stage}_{step:08d}.png", image_grid(tiles, 2))

    def _write_model(self, target: Path, summary: dict[str, Any]) -> Path:
        model = self.acc.unwrap_model(self.model)
        meta = self.dataset.meta
        extra = {
            "stage": self.stage,
            "lr_size": self.cfg.model.lr_size,
            "hr_size": self.cfg.model.hr_size,
            "subjects": meta["subjects"],
            "frames": meta["frames"],
            "train_frames": sorted({int(f) for f in self.dataset.frames}),
            "dataset_fingerprint": dataset_fingerprint(self.cfg.data.path),  # split=fit
            "expressions": meta.get("expressions"),
            "landmark_convention": meta.get("landmark_convention"),
            "train_config": asdict(self.cfg.train),
            "summary": summary,
        } | self._export_extra()
        try:
            with atomic_directory(target, overwrite=True) as tmp:
                model.save_pretrained(tmp, extra=json.loads(json.dumps(extra, default=str)))
        except OSError as err:
            raise CheckpointWriteError(
                f"{target}: cannot write the model ({err.strerror or err}); free space and "
                f"re-run (training resumes from {self._last_good_text()})"
            ) from None
        return target

    def export(self, summary: dict[str, Any]) -> Path:
        """Write the self-describing ``RUN/model`` (config.json + model.safetensors)."""
        return self._write_model(self.run_dir / "model", summary)


class GuidanceTrainer(StageTrainer):
    """Stage 1: the guiding mesh model (docs/architecture.md §3.2)."""

    stage = "guidance"
    desc = "stage 1"

    def __init__(self, cfg: TrainRunConfig, accelerator: Accelerator | None = None):
        super().__init__(cfg, accelerator)
        meta = self.dataset.meta
        self.model = GuidanceModel(
            cfg.model.guidance, num_subjects=len(meta["subjects"]), num_frames=meta["num_frames"]
        )
        codes = [self.model.identity_codes.codes.weight, self.model.expression_codes.codes.weight]
        codes.append(self.model.landmarks_canonical)
        code_ids = {id(p) for p in codes}
        nets = [p for p in self.model.parameters() if id(p) not in code_ids]
        self.optimizer = torch.optim.Adam(
            [{"params": nets, "lr": cfg.train.lr}, {"params": codes, "lr": cfg.train.code_lr}]
        )
        self.base_lrs = [cfg.train.lr, cfg.train.code_lr]
        t = cfg.train
        self.total_steps = self._scheduled_steps(t.guidance_steps, t.guidance_epochs)

    def prefit_sdf(self) -> float:
        """Fit f_mean's SDF to a sphere so DMTet starts from a closed surface.

        Runs identically on every process (same seed, no communication)."""
        t = self.cfg.train
        model = self.model
        opt = torch.optim.Adam(model.f_mean.parameters(), lr=t.sdf_prefit_lr)
        g = torch.Generator().manual_seed(self.cfg.seed)
        loss = torch.tensor(0.0)
        bound = model.config.grid_bound
        for _ in range(t.sdf_prefit_steps):
            x = (torch.rand(2048, 3, generator=g) * 2 - 1) * bound
            x = x.to(model.grid_verts.device)
            loss = losses.sdf_sphere(model.mean_field(x).sdf, x, t.sdf_prefit_radius)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    def _initialise(self) -> None:
        with torch.no_grad():
            self.model.landmarks_canonical.copy_(canonical_landmark_mean(self.dataset))
        loss = self.prefit_sdf()
        try:
            faces = self.model.mean_mesh().faces.shape[0]
        except RuntimeError:
            faces = 0
        if faces == 0:
            raise TrainingDiverged(
                f"the SDF pre-fit left no surface (loss {loss:.2e} after "
                f"{self.cfg.train.sdf_prefit_steps} steps); raise train.sdf_prefit_steps"
            )
        self.acc.print(f"[train] SDF pre-fit to a sphere: loss {loss:.2e}, {faces} faces")

    def compute_losses(self, out: GuidanceOutput, batch: HeadBatch) -> dict[str, torch.Tensor]:
        w = self.cfg.loss
        d = out.deformation
        model = self.acc.unwrap_model(self.model)
        terms = {
            "rgb_hr": losses.l1(out.rgb, batch.image),
            "silhouette": losses.silhouette_iou(out.mask, batch.mask_lr),
            "rgb_lr": losses.l1(out.features[..., :3], batch.image_lr),
            "landmark": losses.landmark_mse(out.landmarks, batch.landmarks_3d),
            "offset": losses.offset_l2(d.delta_id) + losses.offset_l2(d.delta_exp),
            "laplacian": losses.mesh_laplacian(d.points, out.faces),
            "code": losses.code_l2(model.identity_codes(batch.subject))
            + losses.code_l2(model.expression_codes(batch.frame)),
            "expression_consistency": self._expression_consistency(model),
            "sdf_landmark": losses.sdf_abs(model.mean_field(model.landmarks_canonical).sdf),
            "landmark_anchor": self._anchor_term(model, out.mean_mesh.verts, d, batch),
        }
        terms["total"] = sum(getattr(w, k) * v for k, v in terms.items())
        return terms

    def export(self, summary: dict[str, Any]) -> Path:
        """``RUN/guidance_model`` always (stage 2 starts from it); also ``RUN/model`` when
        stage 1 is the final stage of this run."""
        path = self._write_model(self.run_dir / GUIDANCE_MODEL_DIR, summary)
        if self.cfg.stage == "guidance":
            path = self._write_model(self.run_dir / "model", summary)
        return path


class GaussianTrainer(StageTrainer):
    """Stage 2: the Gaussian head created from a trained guidance model (docs/architecture.md §3.3).

    The guidance model comes from ``guidance`` (stage=all hands it over), else from
    ``train.guidance_run`` or this run's ``RUN/guidance_model``. It is copied to
    ``RUN/guidance_model`` so that a resumed stage 2 rebuilds the same Gaussians.
    """

    stage = "gaussian"
    desc = "stage 2"

    def __init__(
        self,
        cfg: TrainRunConfig,
        accelerator: Accelerator | None = None,
        guidance: GuidanceModel | None = None,
    ):
        super().__init__(cfg, accelerator)
        self.ckpt_dir = self.run_dir / "checkpoints" / "gaussian"
        if guidance is None:
            guidance = load_guidance(cfg.guidance_run or cfg.run_dir)
        self._check_guidance(guidance)
        convention = self.dataset.meta.get("landmark_convention")
        wanted = cfg.loss.gaussian.face_regions > 0
        self.face_regions = wanted and convention == "ibug68"
        if wanted and not self.face_regions:
            self.acc.print(f"[train] note: loss.gaussian.face_regions needs iBUG-68 landmarks "
                           f"and {cfg.data.path} has landmark_convention={convention!r}: "
                           "the term is off")  # fmt: skip
        # Stage-2 checkpoints record the stage-1 model they were built from: one built
        # from another (e.g. stage 1 trained further since) no longer fits.
        self.guidance_fingerprint = module_fingerprint(guidance)
        guidance = guidance.to(self.acc.device)
        self.model = GaussianHead.create_from(guidance, cfg.model.gaussian, seed=cfg.seed)
        # The bases' neighbours, of the Gaussians as created (X0 then moves slowly): the
        # same in a resumed run, which loads its checkpoint after this.
        self.basis_nbrs: torch.Tensor | None = None
        if cfg.loss.gaussian.basis_smooth > 0 and self.model.learned_bases():
            self.basis_nbrs = knn_indices(self.model.points.detach(), BASIS_NEIGHBOURS)
        if self.acc.is_main_process and not (self.run_dir / GUIDANCE_MODEL_DIR).is_dir():
            with atomic_directory(self.run_dir / GUIDANCE_MODEL_DIR) as tmp:
                guidance.save_pretrained(tmp, extra={"stage": "guidance", "copied_from":
                                                     str(cfg.guidance_run)})  # fmt: skip
        self.perceptual = build_perceptual_loss(cfg.loss.gaussian.vgg_weights)
        t, m = cfg.train, self.model
        per_point = [m.point_features, m.log_scales, m.quats, m.opacity_logits]
        per_point += m.learned_bases()
        codes = [m.identity_codes.codes.weight, m.expression_codes.codes.weight]
        codes += [m.landmarks_canonical, m.landmark_features]
        special = {id(p) for p in per_point + codes + [m.points]}
        nets = [p for p in m.parameters() if id(p) not in special]
        groups = [(nets, t.gaussian_lr), (codes, t.gaussian_code_lr),
                  ([m.points], t.point_position_lr), (per_point, t.point_lr)]  # fmt: skip
        self.optimizer = torch.optim.Adam([{"params": p, "lr": lr} for p, lr in groups])
        self.base_lrs = [lr for _, lr in groups]
        self.total_steps = self._scheduled_steps(t.gaussian_steps, t.gaussian_epochs)

    def _check_guidance(self, guidance: GuidanceModel) -> None:
        meta = self.dataset.meta
        have = (guidance.identity_codes.num_codes, guidance.expression_codes.num_codes)
        want = (len(meta["subjects"]), meta["num_frames"])
        if have != want:
            raise DatasetMismatch(
                f"the stage-1 model has {have[0]} identity and {have[1]} expression codes but "
                f"{self.cfg.data.path} has {want[0]} subjects and {want[1]} frames; "
                "train stage 1 on this dataset (stage=all)"
            )
        if dataclasses.asdict(guidance.config) != dataclasses.asdict(self.cfg.model.guidance):
            self.acc.print("[train] note: the stage-1 model's architecture differs from "
                           "model.guidance; stage 2 keeps the stage-1 architecture")  # fmt: skip

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {"guidance_fingerprint": self.guidance_fingerprint}

    def _discard_stale(self) -> None:
        """Move ``RUN/checkpoints/gaussian`` aside (never deleted) when its checkpoints
        were built from another stage-1 model than this one; stage 2 then starts afresh.
        Checkpoints from before the fingerprint was recorded are kept."""
        recorded = set()
        for path in checkpoint_candidates(self.ckpt_dir):
            fp = _read_json(path / "trainer_state.json").get("guidance_fingerprint")
            if fp is not None:
                recorded.add(fp)
        if not recorded or recorded == {self.guidance_fingerprint}:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.ckpt_dir.with_name(f"{self.ckpt_dir.name}.stale-{stamp}")
        os.replace(self.ckpt_dir, aside)
        self.acc.print(
            f"[train] warning: {self.ckpt_dir} was built from another stage-1 model (stage 1 "
            f"trained further or was retrained); moved it to {aside}, stage 2 starts afresh"
        )

    def _initialise(self) -> None:
        self.acc.print(
            f"[train] stage 2: {self.model.num_points} Gaussians from the mean mesh; "
            f"perceptual loss: {self.perceptual.name}"
        )

    def _export_extra(self) -> dict[str, Any]:
        model = self.acc.unwrap_model(self.model)
        return {"perceptual": self.perceptual.describe(), "num_points": model.num_points}

    def compute_losses(self, out: GaussianOutput, batch: HeadBatch) -> dict[str, torch.Tensor]:
        w = self.cfg.loss.gaussian
        d = out.attributes.deformation
        model = self.acc.unwrap_model(self.model)
        terms = {
            "rgb_hr": losses.l1(out.rgb, batch.image),
            "rgb_hr_mse": losses.mse(out.rgb, batch.image),
            "perceptual": self.perceptual(out.rgb, batch.image),
            "silhouette": losses.silhouette_iou(out.mask, batch.mask_lr),
            "alpha": losses.l1(out.mask, batch.mask_lr),
            "rgb_lr": losses.l1(out.features[..., :3], batch.image_lr),
            "landmark": losses.landmark_mse(out.landmarks, batch.landmarks_3d),
            "offset": losses.offset_l2(d.delta_id) + losses.offset_l2(d.delta_exp),
            "code": losses.code_l2(model.identity_codes(batch.subject))
            + losses.code_l2(model.expression_codes(batch.frame)),
            "expression_consistency": self._expression_consistency(model),
            "landmark_anchor": self._anchor_term(model, model.points, d, batch),
            "basis_smooth": self._basis_smoothness(model),
            "face_regions": self._face_regions(out, batch),
        }
        terms["total"] = sum(getattr(w, k) * v for k, v in terms.items())
        return terms

    def _face_regions(self, out: GaussianOutput, batch: HeadBatch) -> torch.Tensor:
        """``loss.gaussian.face_regions``'s term: Ψ's MSE inside the boxes of the true
        landmarks' expressive regions, projected with the hr camera."""
        if not self.face_regions:  # off, or the dataset's landmarks are not iBUG-68
            return out.rgb.new_zeros(())
        uv = project_points(batch.landmarks_3d, batch.viewmat, batch.K)[0]
        H, W = out.rgb.shape[1:3]
        regions = region_box_mask(uv, EXPRESSIVE_REGIONS, H, W, FACE_REGION_PAD)
        return losses.masked_mse(out.rgb, batch.image, regions)

    def _basis_smoothness(self, model: GaussianHead) -> torch.Tensor:
        """``loss.gaussian.basis_smooth``'s term: the bases' kNN-Laplacian over the
        canonical Gaussians' neighbours (``self.basis_nbrs``)."""
        if self.basis_nbrs is None:  # no bases, or the term is off
            return model.points.new_zeros(())
        return sum(losses.knn_laplacian(e.flatten(1), self.basis_nbrs) / e[0].numel()
                   for e in model.learned_bases())  # fmt: skip


def _rounded(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: round(float(v.detach()), 6) for k, v in terms.items()}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_guidance(run_dir: str | Path) -> GuidanceModel:
    """The stage-1 model of a run: ``RUN/guidance_model``, else ``RUN/model`` when that
    still holds a guidance model."""
    run = Path(run_dir)
    for d in (run / GUIDANCE_MODEL_DIR, run / "model", run):
        if (d / "config.json").is_file():
            desc = json.loads((d / "config.json").read_text())
            if desc.get("class") == GuidanceModel.__name__:
                return GuidanceModel.from_pretrained(d)
    raise FileNotFoundError(
        f"{run}: no trained stage-1 model (expected {run / GUIDANCE_MODEL_DIR}/config.json); "
        "train it first with stage=guidance, or run stage=all"
    )
