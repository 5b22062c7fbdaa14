"""Evaluate a trained run on a dataset split (docs/architecture.md §3.4, §8.1).

    python scripts/evaluate.py run_dir=RUN data.path=DIR \
        split=val_view|val_combo|heldout_view|heldout_combo|fit|reenact|expression_gain|
              expression|expression_probe|expression_transfer

* ``val_view`` / ``heldout_view``: training frames from cameras never used in training.
* ``val_combo`` / ``heldout_combo``: (subject, expression) pairs never trained, rendered by
  expression code swapping from another subject's training frame with the same label.
  (``val_*`` are the splits defaults are tuned on; ``heldout_*`` are only reported.)
* ``fit``: every subject of DIR (a dataset the model never saw; one it was trained on is
  refused unless ``fit.allow_seen=true``) is fitted from one camera view (``fit.view``)
  and scored on the other views of that frame. ``fit.inputs=gt`` gives the fit the
  view's true landmarks (projected), mask and K; ``fit.inputs=photo`` prepares the view
  like a user's photo (detector landmarks, segmentation mask, estimated K). Every metric
  comes unaligned (``psnr``, ``ssim``, ``psnr_masked``, ``ssim_masked``, ``lpips``: what a
  user gets in a calibrated rig) and ``*_scale_aligned`` (the fit scaled about the input
  camera to the true head size, which one image cannot tell), plus the head-pose errors
  ``rotation_error_deg`` and ``translation_error`` (canonical-head units) and ``inputs``.
* ``reenact`` (``driver=SUBJECT``, DIR from ``make_synthetic.py mode=sequence``): tracks
  the driver from the driving camera (``track.*``) and scores self-reenactment (other
  cameras) and cross-reenactment (every other subject, driven by the tracked codes at its
  true head motion, all cameras) against ground truth, with a neutral baseline
  (``*_neutral``), unaligned and ``*_scale_aligned``, plus ``seconds_per_frame`` and
  ``jitter`` (gphm.evaluation.reenact). ``reenact.targets`` (default ``[1view]``) says
  how each other subject becomes a target: ``1view`` fitted on its first step in the
  driving camera (``cross_1view_*``, also under the older names ``cross_*``), ``3view``
  fitted on its first step from 3 cameras of the rig (``cross_3view_*``), ``trained``
  the model's own training subject of that name, no fit (``cross_trained_*``; a sequence
  written with ``identities_from_seed`` = the training set's seed). Each also gets the
  expression metrics on the truth's expression support (``*_support_gain_db``,
  ``*_capture``, ``*_support_per_label``) on the images that have a neutral twin
  (``neutral_twins=eval``: the driving camera only; ``reenact.support_cameras=all``
  renders the others' twins).
* ``expression_gain`` (DIR = the training set): every training row rendered with its
  own codes and with its subject's ``neutral`` frame's expression code; ``gain_db``
  (pooled over the non-neutral rows) and ``per_label``: what the model's expression codes
  buy on the frames they were trained on, an upper bound for ``reenact``'s gains.
* ``expression`` (``expression_rows=train|val_view|heldout_view|val_combo|heldout_combo``;
  DIR from ``gphm-synth``, which writes the rows' neutral twins): each expressive row
  rendered with its expression code (own, or transferred on ``*_combo`` rows) and with
  the subject's neutral code, scored on the pixels where the truth's expression changes
  the image: ``support_gain_db``, ``capture`` and ``landmark_capture`` per region, per
  label and pooled (gphm.evaluation.expression), and beside them ``lr_bicubic_*``: the
  same metrics of the truth box-downsampled to the model's render size and upsampled
  bicubically (what the render size leaves to Ψ). Writes ``expression_<rows>.json``.
* ``expression_probe``: the same metrics for every trained (subject, label) at the
  canonical head pose and the generator's reference camera, against the generator's
  renders (needs no twins, only a generated dataset's ``meta.json``); writes
  ``expression_probe/difference.png`` (truth | truth difference | model | model
  difference, one row per label).
* ``expression_transfer``: the same at the canonical pose for cross-identity transfer of
  any trained frame's expression, continuous mixtures (label ``mix``) included: subject A
  rendered with another subject's frame code against the generator's render of A with
  that frame's expression parameters (writes ``expression_transfer/difference.png``).
  With ``probe_parts=true`` both also report ``parts``: the capture left when one of the
  Gaussian head's expression paths (networks, position_basis, color_basis) is fed the
  neutral code, i.e. which part carries each expression.

Writes ``RUN/eval/<split>.json`` (``psnr``, ``psnr_masked``, ``ssim``, ``ssim_masked``,
``lpips`` — null when unavailable, with ``lpips_unavailable`` — and ``n``) and
``RUN/eval/<split>/side_by_side.png`` (prediction | ground truth); ``split=fit
fit.inputs=photo`` writes ``RUN/eval/fit_photo.json`` and ``RUN/eval/fit_photo/`` so both
input modes' reports sit side by side.

Refusals (exit 2, one line, before any work):

* a run whose lock (``RUN/.lock``) a live training holds: its model is half-trained;
* the splits that score the model's trained subjects on their own codes (``val_*``,
  ``heldout_*``, ``expression_gain``) on a dataset whose fingerprint is not the one the
  run recorded (``allow_other_dataset=true`` scores it anyway and says so in the report;
  ``fit`` and ``reenact`` fit every identity they score, ``fit`` refuses *seen* data);
* ``out=DIR`` holding anything but gphm-evaluate reports, or already this split's
  report, unless ``overwrite=true``. The default ``RUN/eval`` is the run's own report
  folder: a split's earlier report there is replaced.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.evaluation.common import (
    check_out_dir,
    check_run_unlocked,
    check_trained_dataset,
    write_split_report,
)
from gphm.evaluation.expression import (
    EXPRESSION_SPLITS,
    evaluate_expression_probe,
    evaluate_expressions,
)
from gphm.evaluation.fit import FIT_INPUTS, evaluate_fit
from gphm.evaluation.perceptual import lpips_available
from gphm.evaluation.reenact import check_reenact_options, evaluate_reenact
from gphm.evaluation.views import evaluate_expression_gain, evaluate_model
from gphm.fitting.fit import FitConfig
from gphm.models.runs import load_run
from gphm.tracking.track import TrackConfig
from gphm.training.config import DataConfig

# ``train`` is what the model was fitted to: not an evaluation split.
ALL_SPLITS = (
    "val_view", "val_combo", "heldout_view", "heldout_combo", "fit", "reenact", "expression_gain",
    "expression", "expression_probe", "expression_transfer",
)  # fmt: skip
# The splits that score the model's trained subjects with their trained codes.
TRAINED_SPLITS = (
    "val_view", "val_combo", "heldout_view", "heldout_combo", "expression_gain", "expression",
    "expression_probe", "expression_transfer",
)  # fmt: skip
# Report names (``<name>.json``, ``<name>/``) an ``out=`` folder may already hold.
REPORT_NAMES = (*ALL_SPLITS, "fit_photo", *(f"expression_{rows}" for rows in EXPRESSION_SPLITS))


@dataclass
class EvalFitConfig:
    view: str | None = None
    """Camera the single input image comes from (default: the most frontal one)."""
    frame: str | None = None
    """Expression label of the frame fitted per subject (default: the subject's first)."""
    max_subjects: int = 0
    """Fit at most this many subjects (0 = all)."""
    inputs: str = "gt"
    """gt: the view's true projected landmarks, mask and K | photo: the view prepared like
    a user's photo (detector landmarks, segmentation mask, K estimated from the framing)."""
    detector: str = "mediapipe"
    """Landmark detector of fit.inputs=photo."""
    allow_seen: bool = False
    """Fit a dataset the model was trained on anyway (its figures then say nothing about
    unseen people; the report records why it counts as seen)."""
    config: FitConfig = field(default_factory=FitConfig)
    """The fitting hyper-parameters (fit.config.phase1_steps=...)."""
    views: int = 1
    """Fit each subject from this many views of the frame together (one identity, an
    expression and a pose per view): the most frontal ones (fit.view first)."""
    score: str = "others"
    """others: score every view that is not an input | heldout: score only the frame's
    heldout_view rows, never inputs, so fit.views=1, 2, 3 are scored on the same views."""
    rig_prior: bool = True
    """fit.inputs=gt, one view: the head's expected position is the point the frame's
    cameras are aimed at (a calibrated rig's centre), which settles the view's
    size/distance ambiguity (fit.config.head_center_sigma, head_size_sigma) | false: the
    fit keeps the canonical head size."""

    def __post_init__(self) -> None:
        if self.inputs not in FIT_INPUTS:
            raise ValueError(
                f"fit.inputs must be one of {'|'.join(FIT_INPUTS)}, got {self.inputs!r}"
            )


@dataclass
class EvalReenactConfig:
    targets: list[str] = field(default_factory=lambda: ["1view"])
    """How each subject other than the driver becomes a cross-reenactment target, one
    report prefix each: 1view (fitted on its first step, driving camera: cross_1view_*,
    also cross_*) | 3view (fitted on its first step from 3 cameras of the rig together:
    cross_3view_*) | trained (the run's training subject of that name with its trained
    identity and neutral codes, no fit: cross_trained_*; needs a sequence written with
    identities_from_seed = the training set's seed). E.g. reenact.targets=[1view,3view]."""
    trained_data: str | None = None
    """targets=trained: the dataset the run was trained on (default: the data.path its
    config.yaml records); checked against the run's dataset fingerprint."""
    support_cameras: str = "twins"
    """The images the expression metrics score: twins (those with a stored neutral twin;
    gphm-synth's default neutral_twins=eval: the driving camera only) | all (every camera;
    the missing twins rendered by the generator, ~2 s each on a CPU at 128 px)."""
    max_subjects: int = 0
    """Cross-reenact at most this many subjects other than the driver (0 = all)."""

    def __post_init__(self) -> None:
        self.targets = check_reenact_options(self.targets, self.support_cameras)
        if self.max_subjects < 0:
            raise ValueError(f"reenact.max_subjects must be >= 0, got {self.max_subjects}")


@dataclass
class EvaluateConfig:
    run_dir: str = MISSING
    """Trained run directory (RUN/model is evaluated)."""
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "heldout_view"
    """val_view | val_combo | heldout_view | heldout_combo | fit | reenact | expression_gain
    (the model's own training rows with their codes vs the subject's neutral code: what
    its expression codes buy at most; data.path = the training set) | expression |
    expression_probe | expression_transfer (module docstring)."""
    neutral: str = "neutral"
    """split=expression_gain|expression|expression_probe|expression_transfer (and split=reenact
    reenact.targets=[trained]): the label of each subject's neutral frame."""
    expression_rows: str = "train"
    """split=expression: the rows scored: train | val_view | heldout_view (each subject's
    own codes) | val_combo | heldout_combo (codes transferred from another subject's
    frame with the label)."""
    probe_parts: bool = False
    """split=expression_probe|expression_transfer, a Gaussian head: also the capture with
    each of the model's expression paths (networks, position_basis, color_basis) fed the
    neutral code, i.e. which part carries each expression (report ``parts``; about twice
    the time: 34 s against 17 s on a demo-sized set's probe, 2 CPU cores)."""
    batch_size: int = 8
    out: str | None = None
    """Report directory (default RUN/eval, the run's own: a split's earlier report there is
    replaced). Another folder may hold other splits' reports; anything else in it, or
    this split's earlier report, is refused unless overwrite=true."""
    overwrite: bool = False
    """Write into an ``out=`` folder that holds other files or this split's report."""
    allow_other_dataset: bool = False
    """Score val_*/heldout_*/expression_gain on a dataset whose fingerprint is not the
    one the run was trained on (e.g. the same data written again); the report says so."""
    fit: EvalFitConfig = field(default_factory=EvalFitConfig)
    driver: str | None = None
    """split=reenact: the subject (name or index) of the sequence dataset that drives."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """split=reenact: tracking and identity-fit options (track.steps=..., track.fit.*)."""
    reenact: EvalReenactConfig = field(default_factory=EvalReenactConfig)
    """split=reenact: the cross-reenactment targets and the expression metrics' images."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        check_device_option(self.device)
        if self.split not in ALL_SPLITS:
            raise ValueError(f"split must be one of {'|'.join(ALL_SPLITS)}, got {self.split!r}")
        if self.split == "reenact" and self.driver is None:
            raise ValueError("split=reenact needs driver=SUBJECT (a subject of data.path)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.probe_parts and self.split not in ("expression_probe", "expression_transfer"):
            raise ValueError(f"probe_parts=true is for split=expression_probe|"
                             f"expression_transfer, not split={self.split}")  # fmt: skip
        if self.expression_rows not in EXPRESSION_SPLITS:
            raise ValueError(f"expression_rows must be one of {'|'.join(EXPRESSION_SPLITS)}, "
                             f"got {self.expression_rows!r}")  # fmt: skip


def _evaluate(cfg: EvaluateConfig, run: Any, out: Path, name: str, device: Any) -> dict[str, Any]:
    """The report of ``cfg.split`` (library calls; their errors propagate)."""
    progress = sys.stderr.isatty()
    if cfg.split == "reenact":
        r = cfg.reenact
        return evaluate_reenact(
            run, cfg.data.path, cfg.driver, cfg.track, max_subjects=r.max_subjects,
            save_dir=out / "reenact", progress=progress, targets=r.targets,
            trained_data=r.trained_data, neutral=cfg.neutral, support_cameras=r.support_cameras,
        )  # fmt: skip
    if cfg.split == "fit":
        return evaluate_fit(
            run, cfg.data.path, view=cfg.fit.view, frame=cfg.fit.frame,
            max_subjects=cfg.fit.max_subjects, config=cfg.fit.config, save_dir=out / name,
            progress=progress, inputs=cfg.fit.inputs, allow_seen=cfg.fit.allow_seen,
            detector=cfg.fit.detector, views=cfg.fit.views, score=cfg.fit.score,
            rig_prior=cfg.fit.rig_prior,
        )  # fmt: skip
    if cfg.split == "expression_gain":
        return evaluate_expression_gain(
            run.model, cfg.data.path, cfg.neutral, lr_size=run.extra.get("lr_size"),
            batch_size=cfg.batch_size, device=device, progress=progress,
            train_frames=run.extra.get("train_frames"),
        )  # fmt: skip
    if cfg.split == "expression":
        return evaluate_expressions(
            run.model, cfg.data.path, cfg.expression_rows, neutral=cfg.neutral,
            lr_size=run.extra.get("lr_size"), batch_size=cfg.batch_size, device=device,
            train_frames=run.extra.get("train_frames"), progress=progress,
        )  # fmt: skip
    if cfg.split in ("expression_probe", "expression_transfer"):
        return evaluate_expression_probe(
            run.model, cfg.data.path, neutral=cfg.neutral, lr_size=run.extra.get("lr_size"),
            batch_size=cfg.batch_size, device=device,
            train_frames=run.extra.get("train_frames"), save_dir=out / name,
            transfer=cfg.split == "expression_transfer", parts=cfg.probe_parts,
        )  # fmt: skip
    return evaluate_model(
        run.model, cfg.data.path, cfg.split, lr_size=run.extra.get("lr_size"),
        batch_size=cfg.batch_size, device=device, save_dir=out / cfg.split,
        progress=progress, train_frames=run.extra.get("train_frames"),
    )  # fmt: skip


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    device = cli_device(cfg.device)
    # One report per split; split=fit's two input modes are two reports.
    name = "fit_photo" if cfg.split == "fit" and cfg.fit.inputs == "photo" else cfg.split
    if cfg.split == "expression":  # one report per scored row set
        name = f"expression_{cfg.expression_rows}"
    check_run_unlocked(cfg.run_dir)
    if cfg.out:
        out = check_out_dir(cfg.out, name, REPORT_NAMES, cfg.overwrite)
    else:
        out = Path(cfg.run_dir) / "eval"
    try:
        run = load_run(cfg.run_dir, device=device)
        checked = {}
        if cfg.split in TRAINED_SPLITS:
            checked = check_trained_dataset(run, cfg.data.path, cfg.split,
                                            cfg.allow_other_dataset)  # fmt: skip
        result = _evaluate(cfg, run, out, name, device) | checked
    except NoFaceError as err:
        raise UserError(f"{err} — fit.inputs=photo needs the detector to find the face") from None
    except (FileNotFoundError, ValueError, BackendUnavailableError) as err:
        raise UserError(str(err)) from None
    no_lpips = result.get("lpips") is None and "lpips_unavailable" not in result
    if not cfg.split.startswith(("reenact", "expression")) and no_lpips:
        available, reason = lpips_available()
        if not available:
            result["lpips_unavailable"] = reason
    result["run_dir"] = str(cfg.run_dir)
    result["data"] = str(cfg.data.path)
    write_split_report(out, name, result)
    return result


def _summary(r: dict[str, Any]) -> str:
    line = _summary_line(r)
    if r.get("allow_other_dataset"):
        line += (f" — on data the model was not trained on (fingerprint "
                 f"{r['dataset_fingerprint']}, trained "
                 f"{r['trained_dataset_fingerprint']})")  # fmt: skip
    return line


def _expression_summary(r: dict[str, Any]) -> str:
    """One line of split=expression|expression_probe: pooled, then each label."""
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    labels = ", ".join(
        f"{k} {fmt(v.get('support_gain_db'), '+.2f')} dB/{fmt(v.get('capture'), '.2f')}"
        for k, v in r["per_label"].items()
    )
    pooled = r["all"] or {}
    reference = ""
    if "lr_bicubic" in r:
        reference = ("; an exact lr render upsampled bicubically: capture "
                     f"{fmt(pooled.get('lr_bicubic_capture'), '.2f')}")  # fmt: skip
    return (f"evaluate {r['split']} ({r.get('codes', 'own')} codes vs the neutral code, on "
            f"the truth's expression support): support gain "
            f"{fmt(pooled.get('support_gain_db'), '+.2f')} dB, capture "
            f"{fmt(pooled.get('capture'), '.2f')} ({labels}){reference}")  # fmt: skip


def _reenact_summary(r: dict[str, Any]) -> str:
    """One line of split=reenact: self, then each target kind's cross figures."""
    cross = "; ".join(
        f"cross PSNR ({kind} targets) {r.get(f'cross_{kind}_psnr')} dB (neutral "
        f"{r.get(f'cross_{kind}_psnr_neutral')}, gain {r.get(f'cross_{kind}_gain_db')} dB"
        + (f"; scale-aligned {r[f'cross_{kind}_psnr_scale_aligned']}"
           if f"cross_{kind}_psnr_scale_aligned" in r else "")
        + f"), support gain {r.get(f'cross_{kind}_support_gain_db')} dB, capture "
        f"{r.get(f'cross_{kind}_capture')}"
        for kind in r.get("target_kinds", [])
    )  # fmt: skip
    return (f"evaluate reenact (driver {r['driver']}, {r['num_steps']} steps): self PSNR "
            f"{r['self_psnr']} dB (neutral {r['self_psnr_neutral']}), {cross}, "
            f"{r['seconds_per_frame']} s/frame, jitter {r['jitter']} px")  # fmt: skip


def _summary_line(r: dict[str, Any]) -> str:
    if str(r["split"]).startswith("expression:"):
        return _expression_summary(r)
    if r["split"] == "reenact":
        return _reenact_summary(r)
    if r["split"] == "expression_gain":
        labels = ", ".join(f"{k} {v['gain_db']:+.2f}" for k, v in r["per_label"].items()
                           if k != r["neutral"])  # fmt: skip
        return (f"evaluate expression_gain (training rows, own codes vs the subject's "
                f"{r['neutral']} code): n={r['n_expressive']} PSNR {r['psnr']} vs "
                f"{r['psnr_neutral_code']} dB, gain {r['gain_db']} dB ({labels})")  # fmt: skip
    if r["split"] != "fit":
        return (f"evaluate {r['split']}: n={r['n']} PSNR {r['psnr']} dB (head "
                f"{r['psnr_masked']}), SSIM {r['ssim']} (head {r['ssim_masked']}), "
                f"LPIPS {r['lpips']}")  # fmt: skip
    return (
        f"evaluate fit ({r['subjects']} subjects; landmarks {r['inputs'].get('landmarks')}, "
        f"K {r['inputs'].get('K')}): n={r['n']} PSNR {r['psnr']} dB unaligned / "
        f"{r['psnr_scale_aligned']} scale-aligned (head {r['psnr_masked']} / "
        f"{r['psnr_masked_scale_aligned']}), SSIM {r['ssim']} / {r['ssim_scale_aligned']}, "
        f"LPIPS {r['lpips']} / {r['lpips_scale_aligned']}, pose error "
        f"{r['rotation_error_deg']} deg, {r['translation_error']} head units"
        + (f"; {r['failed_fits']} fits failed (no face found or a collapsed fit)"
           if r.get("failed_fits") else "")
    )


def cli(argv: list[str] | None = None) -> int:
    """The ``evaluate`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(EvaluateConfig, main, argv, summary=_summary)


if __name__ == "__main__":
    sys.exit(cli())
