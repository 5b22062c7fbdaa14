"""Configuration schemas of ``scripts/train.py`` (hydra structured configs).

The defaults are the dataclass fields below; presets are YAML in the config folders:
``configs/train.yaml`` is the root config, ``model=tiny|paper`` picks
``configs/model/{tiny,paper}.yaml`` (a new ``configs/model/NAME.yaml``, or one in a folder
of ``$GPHM_CONFIG_PATH`` / ``config_dir=DIR``, is ``model=NAME``). Any field can then be
overridden (``model.guidance.tet_resolution=40``). Every field is typed, so a typo or a
wrong type fails at start, in a YAML file as on the command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, OmegaConf

from gphm.config import compose_config
from gphm.data.sampling import SAMPLINGS
from gphm.errors import UserError
from gphm.io import limits
from gphm.models.gaussian_head import GaussianHeadConfig
from gphm.models.guidance import GuidanceConfig

__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "GuidanceLossConfig",
    "GaussianLossConfig",
    "LossConfig",
    "TrainRunConfig",
]

STAGES = ("guidance", "gaussian", "all")


@dataclass
class ModelConfig:
    name: str = "custom"
    """Preset name (informational; each ``configs/model/*.yaml`` sets its own)."""
    lr_size: int = 64
    """Height of the low-resolution render; hr = lr_size × upsampler factor must equal
    the dataset's image height."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    gaussian: GaussianHeadConfig = field(default_factory=GaussianHeadConfig)
    """Stage-2 options (the inherited networks keep the ``guidance`` architecture)."""

    def __post_init__(self) -> None:
        if self.lr_size < 8:
            raise ValueError(f"model.lr_size must be >= 8, got {self.lr_size}")

    @property
    def hr_size(self) -> int:
        return self.lr_size * self.guidance.upsampler.factor


def model_preset(name: str, config_dir: str | None = None) -> ModelConfig:
    """The ``model=NAME`` preset: ``configs/model/NAME.yaml`` composed over ModelConfig.

    The YAML is the only copy of a preset's values; ``config_dir`` (or
    ``$GPHM_CONFIG_PATH``) adds folders searched before the shipped ones.
    """
    extra = [f"config_dir={config_dir}"] if config_dir else []
    cfg = compose_config(TrainRunConfig, [f"model={name}", *extra])
    try:
        return OmegaConf.to_object(cfg.model)  # type: ignore[return-value]
    except ValueError as err:  # ModelConfig.__post_init__
        raise UserError(str(err)) from None


def tiny_model() -> ModelConfig:
    """``model=tiny`` (CPU-sized: tet grid 32, splats at 128 px refined by Ψ at factor 1,
    64-wide MLPs)."""
    return model_preset("tiny")


def paper_model() -> ModelConfig:
    """``model=paper`` (GPU-sized: tet grid 128, lr 256 -> hr 512, 256-wide MLPs)."""
    return model_preset("paper")


@dataclass
class DataConfig:
    path: str = MISSING
    """Dataset directory written by make_synthetic.py / import_capture.py."""


def _check_weights(weights: object, prefix: str) -> None:
    """``ValueError`` for a negative loss weight (a negative weight maximises its error)."""
    for f in dataclasses.fields(weights):  # type: ignore[arg-type]
        value = getattr(weights, f.name)
        if isinstance(value, float) and value < 0:
            raise ValueError(
                f"{prefix}{f.name} must be >= 0 (a loss weight; 0 turns the term off), got {value}"
            )


@dataclass
class GuidanceLossConfig:
    """Stage-1 loss weights (docs/architecture.md §3.2)."""

    rgb_hr: float = 1.0
    """L1 of Ψ's high-resolution RGB."""
    silhouette: float = 1.0
    """1 − IoU of the soft mask."""
    rgb_lr: float = 1.0
    """L1 of the first three low-resolution feature channels."""
    landmark: float = 100.0
    """Squared 3D landmark distance (canonical units ~ head radius 1)."""
    offset: float = 0.01
    """||δV_id||² + ||δV_exp||²."""
    laplacian: float = 1.0
    """Uniform Laplacian of the posed canonical mesh."""
    code: float = 1e-3
    """||z_id||² + ||z_exp||²."""
    expression_consistency: float = 1.0
    """Mean ||z_exp(f) − mean of z_exp over training frames with f's expression label||²
    (frames without a label are left out): ties the codes of a label together so that
    identity lives in z_id and code swapping transfers expressions."""
    sdf_landmark: float = 0.1
    """|sdf| at the canonical mean landmarks (keeps the surface through them)."""
    landmark_anchor: float = 5.0
    """3D distance (not squared: :func:`gphm.losses.landmark_distance`) of the *anchored*
    landmarks to the true ones: each canonical
    landmark moved by the mean identity + expression offset of its nearest mesh vertices
    (:func:`gphm.training.trainer.anchored_landmarks`). The landmark term trains the
    landmarks' own path through f_exp; this one makes the surface around them move as
    they do (a mouth corner up in a smile, an eyelid down in a blink). Decided on the demo
    set's val rows (README, "Expression metrics"): 5 gave val_view / val_combo 29.27 /
    29.62 dB against 29.08 / 29.11 without the term, with the same expression capture
    (0.41 / 0.37); 30 captured more (0.53 / 0.46: a raised brow) for 0.2-0.4 dB less."""

    def __post_init__(self) -> None:
        _check_weights(self, "loss.")


@dataclass
class GaussianLossConfig:
    """Stage-2 loss weights (docs/architecture.md §3.3)."""

    rgb_hr: float = 1.0
    rgb_hr_mse: float = 30.0
    """Mean squared error of Ψ's RGB, on top of the L1 ``rgb_hr``. Most of the remaining
    error sits on the outline, where L1 (minimised by the median) draws a sharp, misplaced
    edge and the squared error (minimised by the mean) blends, which PSNR rewards: on the
    demo set held-out views go 29.0 -> 29.8 dB at 10, and to 30.4-30.6 dB at 30 with
    ``train.point_position_lr=1e-3`` (README, "Stage 2"); 0 turns it off."""
    perceptual: float = 0.2
    """VGG perceptual loss when ``vgg_weights`` is given, else D-SSIM (logged, recorded
    in the exported model's config.json)."""
    silhouette: float = 1.0
    alpha: float = 1.0
    """L1 of the lr alpha against the dataset's lr mask (box-downsampled, so fractional at
    the outline). 1 − IoU alone pushes a partly covered pixel's alpha to 0 or 1, this term
    is minimised by the true coverage, from which Ψ places the hr edge."""
    rgb_lr: float = 1.0
    landmark: float = 100.0
    offset: float = 0.01
    code: float = 1e-3
    expression_consistency: float = 1.0
    """As ``loss.expression_consistency`` (stage 1)."""
    landmark_anchor: float = 5.0
    """As ``loss.landmark_anchor`` (stage 1), anchored to the nearest Gaussians."""
    basis_smooth: float = 10.0
    """kNN-Laplacian of the per-Gaussian bases E_id / E_exp (``model.gaussian.*_basis``)
    and C_id / C_exp (``model.gaussian.color_basis_channels``): each Gaussian's basis
    minus the mean of its 8 nearest canonical neighbours', squared, mean over Gaussians
    and the basis' entries. Free per-Gaussian bases otherwise learn a speckle (without
    it their Laplacian energy was 88 % of their energy). On the demo set's val rows
    (README, "Expression metrics") val_view / val_combo 31.83 / 32.99 -> 32.13 / 33.37 dB
    at 10; 0 turns it off."""
    face_regions: float = 0.0
    """Mean squared error of Ψ's RGB over the boxes of the true landmarks' brows, eyes and
    mouth (:data:`gphm.geometry.landmarks.EXPRESSIVE_REGIONS`, each box grown by
    :data:`FACE_REGION_PAD` of the face's size), on top of ``rgb_hr_mse`` which spreads
    over the whole image (a smile moves ~1 % of the pixels). The region-weighted
    photometric term of HeadGAP / FlashAvatar's mouth mask, for every expressive region.
    Off by default: on the demo set's val rows 10 raised the small expressions' capture
    (val_view blink 0.45 -> 0.59, smiles 0.49 / 0.56 -> 0.58 / 0.61) at +0.11 / -0.19 dB
    val_view / val_combo, but on a second, freshly generated set's val rows it cost
    0.30 / 0.34 dB with no capture gain there (README, "Expression metrics"); 30 costs
    0.7-1.0 dB. Needs iBUG-68 landmarks (``landmark_convention`` of the dataset; on
    other data the term is off, with a note)."""
    vgg_weights: str | None = None
    """Local torchvision VGG-16 checkpoint (.pth or .safetensors); never downloaded."""

    def __post_init__(self) -> None:
        _check_weights(self, "loss.gaussian.")


#: ``loss.gaussian.face_regions``: each region's box grows by this fraction of the largest
#: side of all the landmarks' box on every side (0.1: ~7 px of a 128-px synthetic face).
FACE_REGION_PAD = 0.1


@dataclass
class LossConfig(GuidanceLossConfig):
    """Stage-1 weights at the top level (``loss.rgb_hr``), stage 2 under ``loss.gaussian``."""

    gaussian: GaussianLossConfig = field(default_factory=GaussianLossConfig)


LEARNING_RATES = ("lr", "code_lr", "gaussian_lr", "gaussian_code_lr", "point_lr",
                  "point_position_lr", "sdf_prefit_lr")  # fmt: skip
#: Largest learning rate accepted: Adam moves every weight by about lr per step.
MAX_LR = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 4
    """Rows per process and step (global batch = batch_size × processes)."""
    guidance_steps: int = 1500
    """Stage-1 steps for a dataset of up to ``schedule_reference_rows`` training rows;
    a larger one trains proportionally more (the same epochs; gphm.training.schedule)."""
    gaussian_steps: int = 1500
    """Stage-2 steps, scaled like ``guidance_steps``."""
    guidance_epochs: Optional[float] = None  # noqa: UP045 (hydra needs Optional[...])
    """Stage 1 stated in epochs instead: ceil(epochs × training rows / global batch) steps
    (overrides ``guidance_steps``)."""
    gaussian_epochs: Optional[float] = None  # noqa: UP045
    """Stage 2 stated in epochs (overrides ``gaussian_steps``)."""
    schedule_reference_rows: int = 288
    """Training rows the step counts are stated for (288: the demo set, which thus trains
    exactly ``*_steps``); a split with R more rows runs ``*_steps × R / 288`` steps. 0 runs
    the steps as given, whatever the dataset size."""
    sampling: str = "auto"
    """subjects: each epoch draws the subjects evenly (a random permutation of the subjects
    per round), then a row of the drawn subject (gphm.data.sampling) | rows: a uniform
    permutation of the training rows (subjects in proportion to their rows) | auto: rows
    when every subject has the same number of training rows (the uniform order then draws
    them equally often already), else subjects."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    """How many step_* checkpoints to keep (0 keeps all)."""
    log_every: int = 10
    preview_every: int = 250
    lr: float = 2e-3
    """Adam learning rate of the networks."""
    code_lr: float = 2e-2
    """Adam learning rate of identity/expression codes and canonical landmarks (high: the
    codes start near zero and must spread apart within a short schedule)."""
    lr_decay: float = 0.1
    """Learning-rate factor reached at the last step (exponential schedule)."""
    gaussian_lr: float = 2e-3
    """Stage 2: Adam learning rate of the networks (f_inj, f_id, f_exp, f_col, f_att, Ψ)."""
    gaussian_code_lr: float = 1e-2
    """Stage 2: codes, canonical landmarks and their features."""
    point_lr: float = 5e-3
    """Stage 2: per-Gaussian Γ0, log-scales, rotations and opacity logits."""
    point_position_lr: float = 1e-3
    """Stage 2: per-Gaussian canonical positions X0 (canonical units, head radius ~1).
    With ``loss.gaussian.rgb_hr_mse`` it lets the outline move to where the images put
    it: held-out views 29.8 -> 30.6 dB over 2e-4 on the demo set (README, "Stage 2")."""
    sdf_prefit_steps: int = 100
    """Adam steps fitting f_mean's SDF to a sphere before the main loop."""
    sdf_prefit_lr: float = 1e-2
    sdf_prefit_radius: float = 0.7
    mixed_precision: str = "no"
    """no | fp16 | bf16 (accelerate)."""
    cpu: bool = False
    """Force CPU even when a GPU is present."""
    deterministic: bool = False
    """Bit-for-bit reproducible CPU training: the training loops keep torch's thread count
    fixed (the configured one, ``OMP_NUM_THREADS``) instead of lowering it while other
    processes load the CPUs (:mod:`gphm.io.threads`). Every CPU op gives the same bits run
    to run at a fixed count, but a different count sums floats in another order, and a
    changed count early in a run grows into different figures (validation PSNR differed by
    tenths of a dB). Free when the command runs alone; beside other work it keeps the
    spinning workers that adaptation removes (up to ~4.5x slower), hence off by default.
    A re-run must use the same thread count (each stage's ``train_report.json``
    ``threads`` entry records it). Not compared on resume."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "log_every", "preview_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in LEARNING_RATES:
            lr = getattr(self, name)
            if not (math.isfinite(lr) and 0 <= lr <= MAX_LR):
                raise ValueError(
                    f"train.{name} must be in [0, {MAX_LR:g}] (an Adam step moves a weight by "
                    f"about lr; larger ones diverge at once), got {lr:g}"
                )
        if self.keep_checkpoints < 0:
            raise ValueError(
                f"train.keep_checkpoints must be >= 0 (0 keeps all), got {self.keep_checkpoints}"
            )
        if not self.sdf_prefit_radius > 0:
            raise ValueError(f"train.sdf_prefit_radius must be > 0, got {self.sdf_prefit_radius}")
        for name in ("guidance_epochs", "gaussian_epochs"):
            epochs = getattr(self, name)
            if epochs is not None and not (math.isfinite(epochs) and epochs >= 0):
                raise ValueError(f"train.{name} must be a finite number >= 0, got {epochs}")
        if self.schedule_reference_rows < 0:
            raise ValueError(f"train.schedule_reference_rows must be >= 0 (0: no scaling), "
                             f"got {self.schedule_reference_rows}")  # fmt: skip
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"train.sampling must be one of {'|'.join(SAMPLINGS)}, got {self.sampling!r}"
            )
        for name in ("guidance_steps", "gaussian_steps", "sdf_prefit_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"train.mixed_precision must be no|fp16|bf16, got {self.mixed_precision!r}"
            )
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay must be in (0, 1], got {self.lr_decay}")


@dataclass
class TrainRunConfig:
    """The defaults list (``model: tiny``) lives in ``configs/train.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = MISSING
    """Run directory; re-running with the same run_dir resumes from its latest checkpoint."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Set by the ``model=NAME`` preset (``configs/model/NAME.yaml``, default tiny)."""
    stage: str = "all"
    """guidance | gaussian | all: ``guidance`` trains the stage-1 mesh model (writes
    ``RUN/guidance_model``, ``RUN/checkpoints/step_*``); ``gaussian`` trains the Gaussian
    head from a stage-1 run (``guidance_run``, default ``run_dir``; writes
    ``RUN/checkpoints/gaussian/step_*``); ``all`` runs both in turn. ``RUN/model`` is the
    final stage's model."""
    seed: int = 0
    guidance_run: str | None = None
    """stage=gaussian: the stage-1 run to start from (default: run_dir itself)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {'|'.join(STAGES)}, got {self.stage!r}")
        check_training_memory(self)


def check_training_memory(cfg: TrainRunConfig) -> None:
    """Refuse sizes that cannot fit in the memory budget (:mod:`gphm.io.limits`;
    ``GPHM_MEMORY_LIMIT`` overrides) when the config is validated, before any data is
    read or model built: the model's sizes (tet grid, Gaussians, MLP widths, images) plus
    one batch of 32-channel feature images at the hr size."""
    model, train = cfg.model, cfg.train
    hr, batch = model.hr_size, train.batch_size
    terms = limits.model_memory_terms({"model": dataclasses.asdict(model)})
    batch_bytes = float(hr) * hr * 32 * 4 * batch
    terms.append((_batch_text(cfg), batch_bytes))
    total = sum(b for _, b in terms)
    name, biggest = max(terms, key=lambda t: t[1])
    limits.check_bytes(total, name + ("" if biggest == total else " (with the other sizes)"))


def _batch_text(cfg: TrainRunConfig) -> str:
    lr, hr = cfg.model.lr_size, cfg.model.hr_size
    return f"train.batch_size={cfg.train.batch_size} at model.lr_size={lr} ({hr} px)"


def check_training_time(cfg: TrainRunConfig, device: str) -> None:
    """Refuse step counts and sizes whose estimated work exceeds the time budget
    (:mod:`gphm.io.limits`; ``GPHM_TIME_LIMIT`` overrides). The train command calls it
    once accelerate has chosen the ``device`` (``"cpu"`` or ``"cuda"``), before the run
    directory is locked: a config is valid anywhere, ``model=paper`` is only slow on a
    CPU.

    Per stage: steps × (batch × hr² rendered pixels + the stage's grid cells or
    Gaussians); stage 1 also pre-fits the SDF (``train.sdf_prefit_steps`` grid
    evaluations). ``num_points=0`` (one Gaussian per mesh vertex, unknown before stage
    1) counts no Gaussians; ``face_points`` are counted. The steps of a resumed run are
    counted in full.
    """
    model, train = cfg.model, cfg.train
    cells = float(model.guidance.tet_resolution) ** 3
    pixels = float(train.batch_size) * model.hr_size**2
    work, named = 0.0, []
    if cfg.stage in ("guidance", "all"):
        steps = train.guidance_steps
        work += limits.work_seconds(pixels=steps * pixels, cells=(steps + train.sdf_prefit_steps)
                                    * cells, items=steps, device=device)  # fmt: skip
        named.append(f"train.guidance_steps={steps}")
        named.append(f"model.guidance.tet_resolution={model.guidance.tet_resolution}")
    if cfg.stage in ("gaussian", "all"):
        steps = train.gaussian_steps
        points = float(train.batch_size) * (model.gaussian.num_points + model.gaussian.face_points)
        work += limits.work_seconds(pixels=steps * pixels, gaussians=steps * points,
                                    items=steps, device=device)  # fmt: skip
        named.append(f"train.gaussian_steps={steps}")
        if model.gaussian.num_points:
            named.append(f"model.gaussian.num_points={model.gaussian.num_points}")
        if model.gaussian.face_points:
            named.append(f"model.gaussian.face_points={model.gaussian.face_points}")
    named.append(_batch_text(cfg))
    limits.check_seconds(work, ", ".join(named), device)


def check_training_budget(cfg: TrainRunConfig, device: str | None = None) -> None:
    """Both checks: :func:`check_training_memory` and :func:`check_training_time` on
    ``device`` (default: the CPU with ``train.cpu``, else CUDA when available)."""
    check_training_memory(cfg)
    if device is None:
        device = "cpu" if cfg.train.cpu else limits.compute_device("auto")
    check_training_time(cfg, device)
