"""Generate the built-in synthetic multi-identity head dataset (docs/architecture.md §7, §8.1).

    python scripts/make_synthetic.py out=data/synthetic num_identities=8 \
        num_expressions=8 num_views=9 resolution=128 seed=0

Options (``key=value``, see ``--help`` for all): ``out`` (required), ``num_identities``,
``num_expressions`` (the first E of neutral, jaw_open, smile_l, smile_r, brow_raise,
blink_l, pucker, cheek_puff, frown, blink_r, smile, surprise), ``num_views`` (>= 2),
``resolution`` (multiple of 16, >= 32), ``seed``, ``heldout_views`` (cameras held out,
default max(1, V // 4)), ``heldout_combos_per_subject`` (default 1 when possible),
``val_views`` (validation cameras, disjoint from the held-out ones; default 1 when at
least 2 training cameras remain, else 0), ``val_combos_per_subject`` (validation pairs,
default 1 when the held-out pairs leave room: every held-out or validation expression
stays in training for another identity), ``supersample`` (anti-aliasing factor, default
2), ``mesh_frequency`` (default 40, 16002 vertices), ``overwrite`` (default false:
replaces only a gphm dataset or an empty folder, never a folder of other files).

Expression truth (gphm.data.synthetic.truth): ``neutral_twins`` (none | eval | all,
default eval) also renders the rows of the val/held-out splits (mode=sequence: the
driving camera's rows; all: every row) with the neutral expression, same head pose and
camera, into OUT/neutral_twins/: the truth's neutral twin that expression metrics
(gphm.evaluation.expression) compare against. ``mixtures_per_subject=M`` adds M frames
per subject with continuous, mixed expressions (a capture session): each a seeded mix
of 1..``mixture_max_active`` (default 2) of the labels' expressions at intensities in
[``mixture_min_intensity``, ``mixture_max_intensity``] (default [0.3, 1]), label ``mix``;
every frame's full expression parameters are in meta.json (``frames[i].expression_params``).

``mode=sequence num_frames=F`` instead writes one shared continuous performance per
subject (smooth blends between the expressions above plus head motion, F steps, camera
``cam_00`` frontal = the driving camera), every row ``heldout_combo`` with its
``sequence_step``; the sequence is in meta.json, with a contact sheet and an MP4 preview
per subject (gphm.data.synthetic.sequence). It is for ``evaluate.py split=reenact``,
``track_video.py`` and ``reenact.py``, not for training. Its subjects are new people
unless ``identities_from_seed=S``: then subject s is the regular set of seed S's subject s
(same identity and name), so ``split=reenact reenact.targets=[trained]`` can drive a
model's own training subjects.

Rows get split ``train``, ``val_view``, ``val_combo``, ``heldout_view`` or
``heldout_combo`` (pairs win over cameras, held out over validation). Choose defaults
and ablations on the ``val_*`` splits; only report ``heldout_*``.

Writes OUT/ (the dataset, meta.json, contact_sheet.png, report.json) atomically: on bad
options or any failure an existing OUT is left untouched. Output is byte-identical for a
given set of options (report.json aside: it records the run time).
"""

from __future__ import annotations

import sys
from typing import Any

from gphm.cli import UserError, run_cli  # first: sets OMP_WAIT_POLICY before torch loads
from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.generate import generate


def main(cfg: MakeSyntheticConfig) -> dict[str, Any]:
    try:
        return generate(cfg, progress=sys.stderr.isatty())
    except FileExistsError as err:
        raise UserError(str(err)) from None


def _extras(report: dict[str, Any]) -> str:
    """`` (M mixture frames, T neutral twins)`` when there are any."""
    parts = []
    if report.get("num_mixture_frames"):
        parts.append(f"{report['num_mixture_frames']} mixture frames")
    if report.get("neutral_twins"):
        parts.append(f"{report['neutral_twins']} neutral twins")
    return f" ({', '.join(parts)})" if parts else ""


def summary(report: dict[str, Any]) -> str:
    splits = ", ".join(f"{k}={v}" for k, v in sorted(report["split_sizes"].items()))
    if report.get("mode") == "sequence":
        return (
            f"wrote {report['num_rows']} rows ({report['num_identities']} identities x "
            f"{report['num_frames']} sequence steps x {report['num_views']} views, "
            f"{report['resolution']} px; driving camera {report['driving_camera']}; {splits}) "
            f"to {report['out']} in {report['seconds']:.1f} s{_extras(report)}"
        )
    return (
        f"wrote {report['num_rows']} rows ({report['num_identities']} identities x "
        f"{report['num_expressions']} expressions x {report['num_views']} views, "
        f"{report['resolution']} px; {splits}) to {report['out']} in {report['seconds']:.1f} s"
        f"{_extras(report)}"
    )


def cli(argv: list[str] | None = None) -> int:
    """The ``synth`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(MakeSyntheticConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())
