"""The identity-scaling curve: ``model=tiny`` trained on N identities, PSNR against N.

    python scripts/benchmarks/identity_curve.py [--sizes 8,24,72] [--epochs-guidance 6]
        [--epochs-gaussian 24] [--steps G,S] [--seed-unseen 101] [--out DIR] [--reuse]
        [--quick]
    python scripts/bench.py identity_curve [--quick]    # the same with the defaults

For each N of ``--sizes`` it trains ``model=tiny`` (``stage=all``) on an N-identity set,
then scores the model three ways (each a ``gphm-evaluate`` report):

* **trained identities, held-out cameras** — ``split=heldout_view`` on its own training
  set: the training frames seen from the cameras no training row uses;
* **unseen identities fitted from 1 view** and **from 3 views** — ``split=fit
  fit.views=1|3 fit.score=heldout`` on one unseen set, the same for every N: each unseen
  person's first frame is fitted from its 1 or 3 most frontal non-held-out views (true
  landmarks, mask and K: ``fit.inputs=gt``) and rendered into that frame's held-out
  cameras, so both fits are scored on the *same* views (gphm/evaluation/fit.py). Every
  figure comes unaligned (the fit as it comes out) and scale-aligned (the fit scaled about
  the input camera to the true head size first, as monocular benchmarks do).

**Data** (``gphm-synth``, rendered on the CPU). Training sets: the per-identity cost of
``benchmarks.scaling.COST`` (per subject 4 of 8 expression labels — neutral, its
held-out label and 2 trained ones — and 4 of 9 cameras, the most frontal one always; no
validation pairs, no neutral twins) at 128 px, seed ``TRAIN_SEED`` = 0. The generator keys
every random stream by (seed, purpose, subject[, expression]) and with no validation
pairs the held-out pairs and per-subject labels depend only on earlier subjects, so
subject i is the same head, with the same frames, poses, cameras and splits, whatever N:
the sets are **nested** (checked on the plans for 8 ⊂ 24 ⊂ 72) and only N differs.
Training rows: 54 / 180 / 591 for N = 8 / 24 / 72 (7-8 per identity). N = 3 is not
possible with this cost at seed 0 (a held-out label would be trained by nobody else), so
``--quick`` uses N = 2, 4. Unseen set (``UNSEEN``): 6 identities, neutral frame only, all
9 cameras at 128 px, 2 held out (−35° and +52.5° azimuth, the training sets' held-out
cameras too), so 1- and 3-view fits are scored on 2 views per person (12 images).

**Seeds of the unseen people.** ``VALIDATION_SEED`` (101, the default) is the one to look
at while deciding anything (schedule, sizes, options); ``REPORT_SEED`` (202) is for the
reported curve, nobody tuned on it: ``--seed-unseen 202``. The JSON records which one
was used (``unseen.seed_role``).

**Schedule.** Stated in epochs (``train.guidance_epochs``, ``train.gaussian_epochs``:
ceil(epochs × training rows / 4) steps per stage, gphm/training/schedule.py), the same
for every N, so N = 72 trains 11× the steps of N = 8. Defaults 6 + 24 epochs (the demo
run's 300 + 1300 steps on 288 rows are 4 + 18): 81 + 324 / 270 + 1080 / 887 + 3546 steps
for N = 8 / 24 / 72. ``--steps G,S`` is the control: every N trains exactly G + S steps
(``train.schedule_reference_rows=0``), so a rising curve cannot come from more steps
(``--steps 270,1080`` is the N = 24 point's schedule: that run is the same either way).
Timing on 2 CPU cores (Intel Xeon 2.5 GHz, torch 2.13.0 CPU,
``TIMING``): 10 + 5 and 30 + 15 steps on the N = 8 set (the difference cancels set-up and
validation) gave stage 1 0.19 s/step, stage 2 0.37 s/step and ≈ 6 s of process start,
set-up and validation per run; the demo run's full-length report (300 + 1300 steps) has
0.24 and 0.39 s/step, which the estimate uses. Fitting (default 110 + 160 steps per
person): 23 s per person from 1 view, 56-60 s from 3 views. Estimate
(:func:`estimate_minutes`, printed at the start): training 2.5 / 8.2 / 26.7 min for
N = 8 / 24 / 72, fits 6 people × 2 × 3 models ≈ 24 min, generation and the held-out-view
evaluations ≈ 2 min: **about 65 min** for the whole curve on an otherwise idle machine
(longer when the machine is shared).

**Outputs** (``--out``, default ``bench_results/identity_curve``, ``--quick``:
``bench_results/identity_curve_quick``): ``data/`` (the datasets), ``runs/`` (one run
per N and schedule), ``eval/`` (the ``gphm-evaluate`` reports), ``logs/`` (one log per
command: on a failure the command and its log's tail are printed),
``identity_curve.json`` (per N: dataset sizes, training rows, steps, training wall time,
every metric — ``METRICS`` says what each measures — and the commands run) and
``identity_curve.png`` (PSNR against N on a log axis, one line per metric; needs
matplotlib, else the JSON says why there is no plot). Every gphm command runs as its own
process (the ``gphm-*`` executables beside this Python). An existing dataset, run or report
is refused unless ``--reuse``, which keeps complete datasets and reports and lets
``gphm-train`` resume (or keep) an existing run. ``--quick``: N = 2, 4 at 64 px
(``model.lr_size=32``, Ψ factor 2), 1 + 1 epochs, 2 unseen people, 10 + 10 fitting
steps — a smoke run of a minute or two.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:  # run as a file: import its sibling suites
    sys.path.insert(0, str(ROOT / "scripts"))

# the per-identity cost choice and the quick runs' model come from the scaling benchmark
from benchmarks.scaling import COST, QUICK_MODEL, _dir_mb  # noqa: E402

SIZES = (8, 24, 72)
QUICK_SIZES = (2, 4)
EPOCHS = (6.0, 24.0)  # guidance, gaussian
QUICK_EPOCHS = (1.0, 1.0)
TRAIN_SEED = 0
VALIDATION_SEED, REPORT_SEED = 101, 202
RESOLUTION, QUICK_RESOLUTION = 128, 64
FIT_VIEWS = (1, 3)
#: The unseen people: neutral frame only, the training sets' 9-camera rig, 2 held out.
UNSEEN = {"num_identities": 6, "num_expressions": 1, "num_views": 9, "heldout_views": 2,
          "neutral_twins": "none"}  # fmt: skip
QUICK_UNSEEN_IDENTITIES = 2
#: Measured on 2 cores (module docstring): seconds per step, per run (process start,
#: set-up, validation), per fitted person, per other command (generation, held-out views).
TIMING = {"guidance_s_per_step": 0.24, "gaussian_s_per_step": 0.39, "setup_s_per_run": 6.0,
          "fit1_s_per_person": 23.1, "fit3_s_per_person": 57.8,
          "other_s_per_command": 10.0}  # fmt: skip
BATCH = 4  # train.batch_size (default), one process

#: Every metric of a point: what it measures.
METRICS = {
    "trained_heldout_view_psnr": "trained identities, their training frames from the "
    "held-out cameras (split=heldout_view), PSNR of the whole image (dB)",
    "trained_heldout_view_psnr_masked": "the same, PSNR inside the true head mask (dB)",
    "trained_heldout_view_ssim": "the same, SSIM of the whole image",
    "trained_val_view_psnr": "trained identities from the validation camera (the "
    "training's end-of-stage validation, split=val_view), PSNR (dB)",
}
_FIT = {
    "psnr_unaligned": ("psnr", "PSNR of the whole image, the fit as it comes out (dB)"),
    "psnr_scale_aligned": ("psnr_scale_aligned", "PSNR of the whole image, the fit scaled "
                           "to the true head size about the input camera first (dB)"),
    "psnr_masked_unaligned": ("psnr_masked", "PSNR inside the true head mask, unaligned (dB)"),
    "psnr_masked_scale_aligned": ("psnr_masked_scale_aligned",
                                  "PSNR inside the true head mask, scale-aligned (dB)"),
    "ssim_unaligned": ("ssim", "SSIM of the whole image, unaligned"),
    "ssim_scale_aligned": ("ssim_scale_aligned", "SSIM of the whole image, scale-aligned"),
    "rotation_error_deg": ("rotation_error_deg", "error of the fitted head rotation (deg)"),
    "scored_views": ("n", "held-out views scored (people × held-out cameras)"),
    "failed_fits": ("failed_fits", "people whose fit failed (left out of the means)"),
}  # fmt: skip
for _k in FIT_VIEWS:
    for _name, (_, _what) in _FIT.items():
        METRICS[f"unseen_{_k}view_{_name}"] = (
            f"unseen identities fitted from {_k} view{'s' if _k > 1 else ''} (split=fit "
            f"fit.views={_k} fit.score=heldout), scored on their held-out cameras: {_what}"
        )
#: The plot: one panel per group, one line per metric.
PLOT_PANELS = {
    "PSNR, whole image (dB)": ["trained_heldout_view_psnr", "unseen_1view_psnr_unaligned",
                               "unseen_1view_psnr_scale_aligned", "unseen_3view_psnr_unaligned",
                               "unseen_3view_psnr_scale_aligned"],
    "PSNR, head mask (dB)": ["trained_heldout_view_psnr_masked",
                             "unseen_1view_psnr_masked_unaligned",
                             "unseen_1view_psnr_masked_scale_aligned",
                             "unseen_3view_psnr_masked_unaligned",
                             "unseen_3view_psnr_masked_scale_aligned"],
}  # fmt: skip


class CommandFailed(RuntimeError):
    """A gphm command exited non-zero; ``str()`` names it and quotes its log's tail."""


def train_rows(n: int, resolution: int = RESOLUTION) -> int:
    """Training rows of the N-identity set, from the generator's plan (nothing rendered)."""
    from gphm.data.synthetic.config import MakeSyntheticConfig
    from gphm.data.synthetic.generate import plan_dataset

    cfg = MakeSyntheticConfig(out="unused", num_identities=n, resolution=resolution,
                              seed=TRAIN_SEED, **COST)  # fmt: skip
    plan = plan_dataset(cfg)
    held, val = set(plan.heldout_cameras), set(plan.val_cameras)
    return sum(
        1 for f in plan.frames if (f.subject, f.expression) not in plan.heldout_combos
        for c in (plan.subject_cameras[f.subject] or range(cfg.num_views))
        if c not in held and c not in val
    )  # fmt: skip


def estimate_minutes(
    sizes: list[int], epochs: tuple[float, float], unseen: int,
    fixed_steps: tuple[int, int] | None = None,
) -> dict:  # fmt: skip
    """Minutes per training, for the fits and for the whole curve, from :data:`TIMING`
    (128 px, an idle 2-core machine)."""
    t = TIMING
    out: dict[str, float] = {}
    for n in sizes:
        steps = fixed_steps or [math.ceil(e * train_rows(n) / BATCH) for e in epochs]
        s = (steps[0] * t["guidance_s_per_step"] + steps[1] * t["gaussian_s_per_step"]
             + t["setup_s_per_run"])  # fmt: skip
        out[f"train_N{n}_min"] = round(s / 60, 1)
    fits = unseen * (t["fit1_s_per_person"] + t["fit3_s_per_person"]) * len(sizes)
    out["fits_min"] = round(fits / 60, 1)
    out["other_min"] = round(t["other_s_per_command"] * (2 * len(sizes) + 1) / 60, 1)
    out["total_min"] = round(sum(out.values()), 1)
    return out


# ---------------------------------------------------------------------------- commands


def gphm_exe(name: str) -> str:
    """The ``gphm-*`` executable installed beside this Python (its own process)."""
    exe = Path(sys.executable).parent / name
    if exe.is_file():
        return str(exe)
    if found := shutil.which(name):
        return found
    raise FileNotFoundError(f"{exe}: not found; install gphm into this environment "
                            "(pip install -e .)")  # fmt: skip


def run_command(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; returns its wall seconds. On failure
    prints the command and the log's tail and raises :class:`CommandFailed`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    print(f"[identity_curve] $ {shlex.join(cmd)}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        msg = (f"command failed (exit {res.returncode}) after {seconds:.0f} s:\n  "
               f"{shlex.join(cmd)}\nlast lines of {log}:\n{tail}")  # fmt: skip
        print(f"[identity_curve] {msg}", file=sys.stderr, flush=True)
        raise CommandFailed(msg)
    return seconds


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- the plan


class Curve:
    """Paths, commands and options of one curve (``--out`` and the options)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.out: Path = args.out
        self.quick: bool = args.quick
        self.sizes: list[int] = args.sizes
        self.epochs = (args.epochs_guidance, args.epochs_gaussian)
        self.steps: tuple[int, int] | None = args.steps
        self.seed_unseen: int = args.seed_unseen
        self.reuse: bool = args.reuse
        self.res = QUICK_RESOLUTION if self.quick else RESOLUTION
        self.commands: dict[str, list[str]] = {}
        self.estimate: dict[str, float] | None = None

    # paths
    def train_data(self, n: int) -> Path:
        return self.out / "data" / f"train_N{n}_{self.res}px_seed{TRAIN_SEED}"

    def unseen_data(self) -> Path:
        return self.out / "data" / f"unseen_{self.res}px_seed{self.seed_unseen}"

    def run_dir(self, n: int) -> Path:
        if self.steps is not None:
            return self.out / "runs" / f"N{n}_{self.res}px_gs{self.steps[0]}_ss{self.steps[1]}"
        g, s = self.epochs
        return self.out / "runs" / f"N{n}_{self.res}px_ge{g:g}_se{s:g}"

    def eval_dir(self, n: int, what: str) -> Path:
        return self.out / "eval" / self.run_dir(n).name / what

    def fit_name(self, k: int) -> str:
        return f"unseen_seed{self.seed_unseen}_fit{k}view"

    # commands
    def synth_train(self, n: int) -> list[str]:
        cost = [f"{k}={v}" for k, v in COST.items()]
        return [gphm_exe("gphm-synth"), f"out={self.train_data(n)}", f"num_identities={n}",
                f"resolution={self.res}", f"seed={TRAIN_SEED}", *cost]  # fmt: skip

    def synth_unseen(self) -> list[str]:
        spec = dict(UNSEEN)
        if self.quick:
            spec["num_identities"] = QUICK_UNSEEN_IDENTITIES
        return [gphm_exe("gphm-synth"), f"out={self.unseen_data()}", f"resolution={self.res}",
                f"seed={self.seed_unseen}", *(f"{k}={v}" for k, v in spec.items())]  # fmt: skip

    def train(self, n: int) -> list[str]:
        g, s = self.epochs
        schedule = [f"train.guidance_epochs={g:g}", f"train.gaussian_epochs={s:g}"]
        if self.steps is not None:
            schedule = [f"train.guidance_steps={self.steps[0]}",
                        f"train.gaussian_steps={self.steps[1]}",
                        "train.schedule_reference_rows=0"]  # fmt: skip
        cmd = [gphm_exe("gphm-train"), f"data.path={self.train_data(n)}",
               f"run_dir={self.run_dir(n)}", "model=tiny", "stage=all", f"seed={TRAIN_SEED}",
               *schedule, "train.preview_every=1000000"]  # fmt: skip
        if self.quick:
            cmd += QUICK_MODEL
        return cmd

    def evaluate(self, n: int, what: str) -> list[str]:
        run = self.run_dir(n)
        if what == "heldout_view":
            return [gphm_exe("gphm-evaluate"), f"run_dir={run}", f"data.path={self.train_data(n)}",
                    "split=heldout_view", f"out={self.eval_dir(n, what)}"]  # fmt: skip
        k = int(what.removeprefix(f"unseen_seed{self.seed_unseen}_fit").removesuffix("view"))
        cmd = [gphm_exe("gphm-evaluate"), f"run_dir={run}", f"data.path={self.unseen_data()}",
               "split=fit", f"fit.views={k}", "fit.score=heldout", "fit.inputs=gt",
               f"out={self.eval_dir(n, what)}"]  # fmt: skip
        if self.quick:
            cmd += ["fit.config.phase1_steps=10", "fit.config.phase2_steps=10"]
        return cmd

    def evals(self) -> list[str]:
        return ["heldout_view", *(self.fit_name(k) for k in FIT_VIEWS)]

    def report_of(self, n: int, what: str) -> Path:
        name = "heldout_view" if what == "heldout_view" else "fit"
        return self.eval_dir(n, what) / f"{name}.json"

    def existing(self) -> list[Path]:
        """The datasets, runs and reports of this curve that already exist."""
        paths = [self.unseen_data()]
        for n in self.sizes:
            paths += [self.train_data(n), self.run_dir(n)]
            paths += [self.eval_dir(n, w) for w in self.evals()]
        return [p for p in paths if p.exists()]

    def log(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"


# ---------------------------------------------------------------------------- steps


def make_dataset(curve: Curve, path: Path, cmd: list[str], name: str) -> dict[str, Any]:
    """Generate ``path`` with ``cmd`` (or keep a complete one with ``--reuse``)."""
    curve.commands[name] = cmd
    report = path / "report.json"
    reused = curve.reuse and report.is_file()
    if not reused:
        run_command(cmd, curve.log(name))
    r = _read(report)
    wanted = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in cmd[1:]}
    for key in ("num_identities", "resolution", "seed", "num_views", "num_expressions"):
        if key in wanted and str(r[key]) != wanted[key]:
            raise ValueError(f"{path}: has {key}={r[key]}, this curve needs {wanted[key]}; "
                             "remove it or pick another --out")  # fmt: skip
    return {"path": str(path), "num_identities": r["num_identities"], "rows_total": r["num_rows"],
            "split_sizes": r["split_sizes"], "generation_s": r["seconds"],
            "mb": _dir_mb(path), "reused": reused}  # fmt: skip


def train_run(curve: Curve, n: int) -> dict[str, Any]:
    """Train (or resume / keep) the N-identity run; its steps, rows and wall time."""
    name = f"train_N{n}"
    cmd = curve.train(n)
    curve.commands[name] = cmd
    report = curve.run_dir(n) / "train_report.json"
    reused = curve.reuse and report.is_file()
    wall = None if reused else round(run_command(cmd, curve.log(name)), 1)
    r = _read(report)
    stages = r["stages"]
    val = (stages["gaussian"].get("eval") or {}).get("val_view") or {}
    return {
        "run_dir": str(curve.run_dir(n)),
        "steps": {k: stages[k]["steps"] for k in ("guidance", "gaussian")},
        "stage_seconds": {k: stages[k]["seconds"] for k in ("guidance", "gaussian")},
        "wall_s": wall,
        "reused": reused,
        "val_view_psnr": val.get("psnr"),
    }


def evaluate_run(curve: Curve, n: int) -> tuple[dict[str, Any], dict[str, float]]:
    """The three reports of the N-identity model: metrics and each command's seconds."""
    metrics: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for what in curve.evals():
        name = f"eval_N{n}_{what}"
        cmd = curve.evaluate(n, what)
        curve.commands[name] = cmd
        report = curve.report_of(n, what)
        if not report.is_file():
            if report.parent.exists():  # --reuse: an interrupted evaluation's leftovers
                cmd.append("overwrite=true")
            seconds[what] = round(run_command(cmd, curve.log(name)), 1)
        r = _read(report)
        if what == "heldout_view":
            metrics |= {"trained_heldout_view_psnr": r["psnr"],
                        "trained_heldout_view_psnr_masked": r["psnr_masked"],
                        "trained_heldout_view_ssim": r["ssim"]}  # fmt: skip
            continue
        k = r["views"]
        metrics |= {f"unseen_{k}view_{m}": r.get(key) for m, (key, _) in _FIT.items()}
    return metrics, seconds


def point(curve: Curve, n: int) -> dict[str, Any]:
    """One N: generate, train, evaluate."""
    data = make_dataset(curve, curve.train_data(n), curve.synth_train(n), f"synth_train_N{n}")
    train = train_run(curve, n)
    train["rows"] = data["split_sizes"].get("train", 0)
    metrics, eval_s = evaluate_run(curve, n)
    metrics["trained_val_view_psnr"] = train.pop("val_view_psnr")
    names = [f"synth_train_N{n}", f"train_N{n}", *(f"eval_N{n}_{w}" for w in curve.evals())]
    return {
        "n_identities": n,
        "dataset": data,
        "train": train,
        "evaluation_s": eval_s,
        "metrics": metrics,
        "commands": [shlex.join(curve.commands[k]) for k in names],
    }


# ---------------------------------------------------------------------------- outputs


def assemble(curve: Curve, unseen: dict[str, Any], points: list[dict[str, Any]],
             seconds: float) -> dict[str, Any]:  # fmt: skip
    """The ``identity_curve.json`` report."""
    role = {VALIDATION_SEED: "validation", REPORT_SEED: "report"}.get(curve.seed_unseen, "other")
    return {
        "what": "model=tiny trained on N identities (same per-identity data, same "
                "schedule in epochs); trained identities scored on held-out cameras, unseen "
                "identities fitted from 1 and 3 views and scored on held-out cameras",
        "quick": curve.quick,
        "options": {"sizes": curve.sizes, "guidance_epochs": curve.epochs[0],
                    "gaussian_epochs": curve.epochs[1], "fixed_steps": curve.steps,
                    "batch_size": BATCH,
                    "resolution": curve.res, "model": "tiny", "train_seed": TRAIN_SEED},
        "train_data": {"cost": COST, "seed": TRAIN_SEED, "resolution": curve.res,
                       "nested": "subject i is the same head (frames, poses, cameras, "
                       "splits) for every N: the smaller sets are prefixes of the larger"},
        "unseen": unseen | {"seed": curve.seed_unseen, "seed_role": role},
        "metrics": {k: METRICS[k] for k in METRICS},
        "points": points,
        "total_wall_s": round(seconds, 1),
        "estimate_min": curve.estimate,
        "timing_basis": TIMING,
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def _style(key: str) -> dict[str, Any]:
    """One colour per scored group (trained, 1 view, 3 views); scale-aligned dashed."""
    color = next((f"C{i}" for i, k in enumerate(FIT_VIEWS) if f"_{k}view_" in key), "k")
    return {"color": color, "linestyle": "--" if key.endswith("scale_aligned") else "-"}


def plot_curve(report: dict[str, Any], path: Path) -> str | None:
    """Draw PSNR against N (log x) into ``path`` atomically; returns None, or why no
    plot was drawn (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"no plot: matplotlib does not import ({err})"
    from gphm.io.atomic import atomic_write_bytes

    ns = [p["n_identities"] for p in report["points"]]
    fig, axes = plt.subplots(1, len(PLOT_PANELS), figsize=(6 * len(PLOT_PANELS), 4.5))
    for ax, (title, keys) in zip(axes, PLOT_PANELS.items()):
        for key in keys:
            ys = [p["metrics"].get(key) for p in report["points"]]
            xy = [(x, y) for x, y in zip(ns, ys) if isinstance(y, (int, float))
                  and math.isfinite(y)]  # fmt: skip
            if xy:
                ax.plot(*zip(*xy), marker="o", label=key, **_style(key))
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("training identities N")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    o = report["options"]
    schedule = (
        f"{o['guidance_epochs']:g}+{o['gaussian_epochs']:g} epochs"
        if not o.get("fixed_steps")
        else "{}+{} steps for every N".format(*o["fixed_steps"])
    )
    fig.suptitle(f"model=tiny, {schedule}, "
                 f"{o['resolution']} px; unseen seed {report['unseen']['seed']} "
                 f"({report['unseen']['seed_role']}), {report['unseen']['num_identities']} "
                 "people", fontsize=10)  # fmt: skip
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return None


def curve_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the curve of ``args``; writes and returns the report."""
    from gphm.io.jsonfile import write_report

    curve = Curve(args)
    if not curve.reuse and (there := curve.existing()):
        raise FileExistsError(f"{there[0]}: exists (and {len(there) - 1} more of this curve); "
                              "pass --reuse to keep complete datasets, runs and reports, or "
                              "remove them")  # fmt: skip
    if not curve.quick:
        curve.estimate = estimate_minutes(curve.sizes, curve.epochs, UNSEEN["num_identities"],
                                          curve.steps)  # fmt: skip
        print(f"[identity_curve] estimate on an idle 2-core machine (minutes): "
              f"{curve.estimate}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    unseen = make_dataset(curve, curve.unseen_data(), curve.synth_unseen(), "synth_unseen")
    points = []
    for n in curve.sizes:
        points.append(point(curve, n))
        report = assemble(curve, unseen, points, time.perf_counter() - t0)
        write_report(curve.out / "identity_curve.json", report)  # partial curve so far
    report["plot"] = str(curve.out / "identity_curve.png")
    if (why := plot_curve(report, curve.out / "identity_curve.png")) is not None:
        report["plot"], report["plot_unavailable"] = None, why
    report["commands_unseen"] = shlex.join(curve.commands["synth_unseen"])
    write_report(curve.out / "identity_curve.json", report)
    print(f"[identity_curve] wrote {curve.out / 'identity_curve.json'}"
          + (f" and {report['plot']}" if report["plot"] else f" ({why})"), flush=True)  # fmt: skip
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="training identities, comma-separated "
                   f"(default {','.join(map(str, SIZES))}; --quick: "
                   f"{','.join(map(str, QUICK_SIZES))})")  # fmt: skip
    for stage, i in (("guidance", 0), ("gaussian", 1)):
        p.add_argument(f"--epochs-{stage}", type=float, default=None,
                       help=f"stage-{i + 1} epochs (default {EPOCHS[i]:g}; --quick "
                       f"{QUICK_EPOCHS[i]:g})")  # fmt: skip
    p.add_argument("--steps", default=None,
                   help="G,S: train every N exactly G stage-1 and S stage-2 steps (the "
                   "fixed-steps control; replaces the epochs)")  # fmt: skip
    p.add_argument("--seed-unseen", type=int, default=VALIDATION_SEED,
                   help=f"seed of the unseen people ({VALIDATION_SEED}: validation, the "
                   f"default; {REPORT_SEED}: the reported curve)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default bench_results/identity_curve, --quick: "
                   "bench_results/identity_curve_quick)")  # fmt: skip
    p.add_argument("--reuse", action="store_true",
                   help="keep complete datasets and reports, resume or keep runs")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: N=2,4 at 64 px, 1+1 epochs")
    args = p.parse_args(argv)
    sizes = args.sizes or ",".join(map(str, QUICK_SIZES if args.quick else SIZES))
    try:
        args.sizes = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error(f"--sizes needs at least one N >= 1, got {sizes!r}")
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    args.epochs_guidance = epochs[0] if args.epochs_guidance is None else args.epochs_guidance
    args.epochs_gaussian = epochs[1] if args.epochs_gaussian is None else args.epochs_gaussian
    for e in (args.epochs_guidance, args.epochs_gaussian):
        if not (math.isfinite(e) and e > 0):
            p.error(f"epochs must be finite and > 0, got {e:g}")
    if args.steps is not None:
        try:
            args.steps = tuple(int(v) for v in args.steps.split(","))
        except ValueError:
            p.error(f"--steps must be two integers G,S, got {args.steps!r}")
        if len(args.steps) != 2 or min(args.steps) < 1:
            p.error(f"--steps must be two integers G,S >= 1, got {args.steps}")
    if args.out is None:
        args.out = ROOT / "bench_results" / f"identity_curve{'_quick' if args.quick else ''}"
    return args


def run(quick: bool = False) -> dict[str, Any]:
    """``python scripts/bench.py identity_curve [--quick]``: the curve with the defaults,
    reusing what an earlier run left complete."""
    return curve_main(parse_args(["--reuse"] + (["--quick"] if quick else [])))


def main(argv: list[str] | None = None) -> int:
    try:
        curve_main(parse_args(argv))
    except (CommandFailed, FileExistsError, FileNotFoundError, ValueError) as err:
        if not isinstance(err, CommandFailed):  # already printed with the log's tail
            print(f"[identity_curve] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
