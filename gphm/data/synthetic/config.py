"""Configuration of the synthetic dataset generator (``scripts/make_synthetic.py``).

A dataclass schema for hydra (docs/architecture.md §6): ``key=value`` overrides, validated in
``__post_init__`` with messages that name the option and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from gphm.data.synthetic.params import EXPRESSION_NAMES
from gphm.data.synthetic.splits import max_heldout_combos
from gphm.io import limits

__all__ = ["MakeSyntheticConfig", "MODES", "NEUTRAL_TWIN_CHOICES"]

MODES = ("expressions", "sequence")
#: ``neutral_twins``: none | eval (rows of the evaluation splits) | all rows.
NEUTRAL_TWIN_CHOICES = ("none", "eval", "all")


@dataclass
class MakeSyntheticConfig:
    """Options of ``make_synthetic.py`` (defaults: the demo set, 8 × 8 × 9 at 128 px:
    6 training cameras, 2 held out, 1 for validation)."""

    out: str = MISSING
    """Output dataset directory (created atomically; see ``overwrite``)."""
    mode: str = "expressions"
    """expressions: one frame per (subject, expression) with training/held-out splits |
    sequence: every subject performs the same continuous sequence of ``num_frames`` steps
    (smooth expression blends and head motion; ``cam_00`` frontal, every row
    ``heldout_combo``: for evaluation and driving, see gphm.data.synthetic.sequence)."""
    num_frames: int = 24
    """Steps of the shared sequence (mode=sequence only)."""
    num_identities: int = 8
    """Number of subjects K (each a random identity)."""
    num_expressions: int = 8
    """Number of expression labels E: the first E of EXPRESSION_NAMES (neutral first);
    mode=sequence draws its keyframes from them."""
    num_views: int = 9
    """Number of cameras V (>= 2), spread over ±70° azimuth and ±25° elevation."""
    resolution: int = 128
    """Image width = height in pixels: a multiple of 16, at least 32."""
    seed: int = 0
    """Seed of every random choice (identities, head poses, held-out and validation pairs)."""
    heldout_views: Optional[int] = None  # noqa: UP045 (hydra needs Optional[...])
    """Cameras held out of training (never the most frontal one); default max(1, V // 4)."""
    heldout_combos_per_subject: Optional[int] = None  # noqa: UP045
    """Non-neutral expressions held out per subject; default 1 when possible (K >= 2, E >= 3)."""
    val_views: Optional[int] = None  # noqa: UP045
    """Validation cameras (split ``val_view``), disjoint from the held-out ones and never
    the most frontal; default 1 when at least 2 training cameras remain, else 0."""
    val_combos_per_subject: Optional[int] = None  # noqa: UP045
    """Validation (subject, expression) pairs per subject (split ``val_combo``), disjoint
    from the held-out pairs; default 1 when the held-out pairs leave room for it (every
    held-out or validation label must stay in training for another identity), else 0."""
    supersample: int = 2
    """Anti-aliasing: render at supersample × resolution and box-downsample (1..4)."""
    mesh_frequency: int = 40
    """Geodesic frequency of the head mesh: 10·f² + 2 vertices (16002 at 40)."""
    overwrite: bool = False
    """Replace an existing ``out`` (only once the new dataset is complete)."""
    neutral_twins: str = "eval"
    """Also render rows' heads with the neutral expression, same pose and camera, into
    ``out/neutral_twins/`` (the truth for expression metrics, gphm.data.synthetic.truth):
    none | eval (rows of the val/held-out splits; mode=sequence: the driving camera's
    rows) | all (every row: twice the rendering)."""
    identities_from_seed: Optional[int] = None  # noqa: UP045
    """mode=sequence: the subjects are the people of the regular (mode=expressions) set of
    this seed: subject s gets exactly the identity that set samples for its subject s, and
    its name (``synth_000``, ...), so a model trained on that set can be scored on its own
    training subjects (``evaluate.py split=reenact reenact.targets=[trained]``). Default:
    identities from the sequence's own random stream, never a regular set's people."""
    mixtures_per_subject: int = 0
    """mode=expressions: extra frames per subject (after its labelled ones), each a seeded
    random mixture of 1..``mixture_max_active`` of the non-neutral labels' expressions
    (never the subject's held-out or validation labels: mixtures are trained) with
    intensities in [``mixture_min_intensity``, ``mixture_max_intensity``]; label
    ``mix`` unless the mixture equals a label's expression. Split by camera only."""
    mixture_min_intensity: float = 0.3
    """Lowest intensity of an expression in a mixture (0..1)."""
    mixture_max_intensity: float = 1.0
    """Highest intensity of an expression in a mixture (0..1, >= the lowest)."""
    mixture_max_active: int = 2
    """Most expressions mixed in one mixture frame (>= 1; at most the non-neutral labels)."""
    expressions_per_subject: Optional[int] = None  # noqa: UP045
    """Cost choice for many identities (mode=expressions): labelled expressions rendered
    per subject, default all ``num_expressions``. Each subject keeps neutral and its
    held-out and validation labels, then the least-trained other labels so far (seeded
    ties), so every label stays trained by some subjects; frame indices number the
    rendered frames. At least 1 + heldout + val combos per subject."""
    views_per_subject: Optional[int] = None  # noqa: UP045
    """Cost choice (mode=expressions): cameras rendered per subject, default all
    ``num_views``: the most frontal one plus a seeded random choice of the others (splits
    stay by camera, so a subject may have no held-out-view rows). 1..num_views."""

    def __post_init__(self) -> None:
        n_avail = len(EXPRESSION_NAMES)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {'|'.join(MODES)}, got {self.mode!r}")
        if not 2 <= self.num_frames <= 10000:
            raise ValueError(f"num_frames must be in 2..10000, got {self.num_frames}")
        if self.num_identities < 1:
            raise ValueError(f"num_identities must be >= 1, got {self.num_identities}")
        if not 1 <= self.num_expressions <= n_avail:
            raise ValueError(
                f"num_expressions must be in 1..{n_avail} (available, in order: "
                f"{', '.join(EXPRESSION_NAMES)}), got {self.num_expressions}"
            )
        if self.num_views < 2:
            raise ValueError(
                f"num_views must be >= 2 (one camera can be held out only if another is "
                f"left for training), got {self.num_views}"
            )
        if self.num_views > 64:
            raise ValueError(f"num_views must be <= 64, got {self.num_views}")
        if self.resolution < 32 or self.resolution % 16:
            raise ValueError(
                f"resolution must be a multiple of 16 and >= 32 (e.g. 64, 128, 256), "
                f"got {self.resolution}"
            )
        if self.resolution > 2048:
            raise ValueError(f"resolution must be <= 2048, got {self.resolution}")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must be in 1..4, got {self.supersample}")
        if not 8 <= self.mesh_frequency <= 100:
            raise ValueError(f"mesh_frequency must be in 8..100, got {self.mesh_frequency}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self._check_expression_options()
        views = self.heldout_views
        if views is not None and not 0 <= views <= self.num_views - 1:
            raise ValueError(
                f"heldout_views must be in 0..{self.num_views - 1} (num_views - 1: at least "
                f"one camera must stay in training), got {views}"
            )
        combos = self.heldout_combos_per_subject
        limit = max_heldout_combos(self.num_identities, self.num_expressions)
        if combos is not None and not 0 <= combos <= limit:
            raise ValueError(
                f"heldout_combos_per_subject must be in 0..{limit} with num_identities="
                f"{self.num_identities} and num_expressions={self.num_expressions} (every "
                f"held-out expression must stay in training for another identity; neutral "
                f"is never held out), got {combos}"
            )
        val_views = self.val_views
        room = self.num_views - 1 - self.resolved_heldout_views()
        if val_views is not None and not 0 <= val_views <= room:
            raise ValueError(
                f"val_views must be in 0..{room} (num_views - heldout_views - 1: at least "
                f"one camera must stay in training), got {val_views}"
            )
        val_combos = self.val_combos_per_subject
        room = limit - self.resolved_heldout_combos()
        if val_combos is not None and not 0 <= val_combos <= room:
            raise ValueError(
                f"val_combos_per_subject must be in 0..{room} with num_identities="
                f"{self.num_identities}, num_expressions={self.num_expressions} and "
                f"{self.resolved_heldout_combos()} held-out pair(s) per subject (held-out "
                f"plus validation pairs per subject are at most {limit}: every such "
                f"expression must stay in training for another identity), got {val_combos}"
            )
        self._check_cost_options()
        self.check_budget()

    def _check_cost_options(self) -> None:
        k, v = self.expressions_per_subject, self.views_per_subject
        if (k is not None or v is not None) and self.mode != "expressions":
            raise ValueError("expressions_per_subject and views_per_subject are for "
                             "mode=expressions; leave them unset")  # fmt: skip
        least = 1 + self.resolved_heldout_combos() + self.resolved_val_combos()
        if k is not None and not min(least, self.num_expressions) <= k <= self.num_expressions:
            raise ValueError(
                f"expressions_per_subject must be in {min(least, self.num_expressions)}.."
                f"{self.num_expressions} (neutral plus the subject's held-out and validation "
                f"labels at least, num_expressions at most), got {k}"
            )
        if v is not None and not 1 <= v <= self.num_views:
            raise ValueError(f"views_per_subject must be in 1..{self.num_views}, got {v}")

    def _check_expression_options(self) -> None:
        if self.neutral_twins not in NEUTRAL_TWIN_CHOICES:
            raise ValueError(
                f"neutral_twins must be one of {'|'.join(NEUTRAL_TWIN_CHOICES)}, "
                f"got {self.neutral_twins!r}"
            )
        if not 0 <= self.mixtures_per_subject <= 1000:
            raise ValueError(
                f"mixtures_per_subject must be in 0..1000, got {self.mixtures_per_subject}"
            )
        seed = self.identities_from_seed
        if seed is not None and (self.mode != "sequence" or seed < 0):
            raise ValueError(
                f"identities_from_seed is for mode=sequence (the seed of the regular set whose "
                f"people perform the sequence) and must be >= 0; got {seed} with "
                f"mode={self.mode}"
            )
        if self.mixtures_per_subject and self.mode != "expressions":
            raise ValueError("mixtures_per_subject is for mode=expressions (a sequence "
                             "already blends expressions continuously); set it to 0")  # fmt: skip
        if self.mixtures_per_subject and self.num_expressions < 2:
            raise ValueError("mixtures_per_subject needs num_expressions >= 2 (the mixtures "
                             "mix the non-neutral labels' expressions)")  # fmt: skip
        lo, hi = self.mixture_min_intensity, self.mixture_max_intensity
        if not (0.0 <= lo <= hi <= 1.0 and hi > 0.0):
            raise ValueError(
                f"mixture_min_intensity and mixture_max_intensity must satisfy 0 <= min "
                f"<= max <= 1 and max > 0, got {lo} and {hi}"
            )
        if self.mixture_max_active < 1:
            raise ValueError(f"mixture_max_active must be >= 1, got {self.mixture_max_active}")

    def check_budget(self) -> None:
        """Refuse a dataset whose rendering time, memory or disk is over budget before
        anything is rendered (:mod:`gphm.io.limits`): images = identities × expressions
        (or sequence steps) × views, each rendered at ``resolution × supersample`` on the
        CPU; on disk at least one byte per pixel of each image (compressed PNG)."""
        per_subject = self.num_frames if self.mode == "sequence" else self.num_expressions
        count = "num_frames" if self.mode == "sequence" else "num_expressions"
        if self.mode == "expressions" and self.expressions_per_subject is not None:
            per_subject = min(self.expressions_per_subject, self.num_expressions)
            count = "expressions_per_subject"
        if self.mode == "expressions" and self.mixtures_per_subject:
            per_subject += self.mixtures_per_subject
            count = f"({count} + mixtures_per_subject)"
        views = min(self.views_per_subject or self.num_views, self.num_views)
        images = self.num_identities * per_subject * views
        side = self.resolution * self.supersample
        vname = "views_per_subject" if views < self.num_views else "num_views"
        what = (f"num_identities={self.num_identities} x {count}={per_subject} x {vname}="
                f"{views} ({images} images at resolution={self.resolution}")  # fmt: skip
        limits.check_image_size(f"resolution={self.resolution} x supersample="
                                f"{self.supersample}", side, side, channels=4)  # fmt: skip
        seconds = limits.work_seconds(pixels=float(images) * side * side, items=images)
        limits.check_seconds(seconds, what + f", supersample={self.supersample})")
        disk = float(images) * self.resolution * self.resolution
        limits.check_disk(disk, what + ")", self.out)

    def resolved_heldout_views(self) -> int:
        if self.heldout_views is not None:
            return self.heldout_views
        return max(1, self.num_views // 4)

    def resolved_heldout_combos(self) -> int:
        if self.heldout_combos_per_subject is not None:
            return self.heldout_combos_per_subject
        return min(1, max_heldout_combos(self.num_identities, self.num_expressions))

    def resolved_val_views(self) -> int:
        if self.val_views is not None:
            return self.val_views
        return 1 if self.num_views - self.resolved_heldout_views() - 1 >= 2 else 0

    def resolved_val_combos(self) -> int:
        if self.val_combos_per_subject is not None:
            return self.val_combos_per_subject
        limit = max_heldout_combos(self.num_identities, self.num_expressions)
        return 1 if self.resolved_heldout_combos() + 1 <= limit else 0
