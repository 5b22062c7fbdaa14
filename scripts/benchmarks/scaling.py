"""Training on 8, 64 and 256 identities: generation time, memory and time per epoch.

``python scripts/bench.py scaling`` calls :func:`run`. For each N (``GPHM_BENCH_SCALING_N``,
comma-separated, overrides the list; ``quick``: 8 only):

* **Data** — ``gphm-synth`` with the per-identity cost choices: ``num_expressions=8,
  expressions_per_subject=4, val_combos_per_subject=0, num_views=9, views_per_subject=4,
  neutral_twins=none`` (per subject: neutral, its held-out label and 2 trained ones, 4
  cameras of which about 2/3 are training cameras) at
  128 px (``quick``: 64 px), kept in ``bench_results/scaling_data/N<N>`` and reused
  (then ``gen_s`` is the stored report's). ``gen_s_per_identity`` = ``gen_s / N``
  (rendering on the CPU, one process).
* **Training** — a fresh Python process per N (so its peak RSS is its own) runs the
  trainers of ``gphm-train`` (``model=tiny``; ``quick``: ``model.lr_size=32``, Ψ factor
  2) on one process: stage 1 for ``GUIDANCE_STEPS`` steps, then stage 2 for
  ``GAUSSIAN_STEPS`` (``train.schedule_reference_rows=0``: exactly these steps). Measured:
  ``*_s_per_step`` (the stage's loop seconds / steps: includes the checkpoint and preview
  of the last step, so an upper bound), ``*_s_per_epoch`` = that × steps per epoch (extrapolated,
  subject-balanced epoch of the training split at batch 4), ``*_setup_and_validate_s``
  (building the stage — SDF pre-fit, Gaussian creation — and its end-of-stage
  evaluation on the validation splits), ``peak_rss_mb`` (``ru_maxrss`` of the
  worker: dataset, both models, Adam states, evaluation) and ``rss_after_open_mb``
  (after opening the dataset: the rows stream from memory-mapped arrow files).
  ``default_schedule_h`` estimates both stages at the default schedule rule
  (1500 + 1500 steps scaled by training rows / 288, :mod:`gphm.training.schedule`).
* **Sizes** — ``checkpoint_mb`` (newest stage-1 checkpoint folder: model + Adam state),
  ``model_mb`` (exported stage-2 model), and the code books: identity ``N × dim`` and
  expression ``frames × dim`` (frames = N × expressions_per_subject).

Timings depend on what else runs on the machine: report the load with the figures.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = (8, 64, 256)
GUIDANCE_STEPS, GAUSSIAN_STEPS = 20, 10
QUICK_STEPS = (5, 3)
#: ``quick`` runs' model: 32 px splats and Ψ upsampling to the quick data's 64 px (the
#: tiny preset renders at its data's full size); shared with the identity curve.
QUICK_MODEL = ("model.lr_size=32", "model.guidance.upsampler.factor=2")
COST = {"num_expressions": 8, "expressions_per_subject": 4, "val_combos_per_subject": 0,
        "num_views": 9, "views_per_subject": 4, "neutral_twins": "none"}  # fmt: skip


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_data(n: int, quick: bool) -> tuple[Path, float]:
    """The N-identity set (generated once); returns its path and generation seconds."""
    from gphm.data.synthetic.config import MakeSyntheticConfig
    from gphm.data.synthetic.generate import generate

    out = ROOT / "bench_results" / "scaling_data" / f"N{n}{'_quick' if quick else ''}"
    if not (out / "report.json").is_file():
        res = 64 if quick else 128
        generate(MakeSyntheticConfig(out=str(out), num_identities=n, resolution=res, **COST),
                 progress=False)  # fmt: skip
    return out, float(json.loads((out / "report.json").read_text())["seconds"])


def worker(data: str, run_dir: str, quick: bool) -> dict:
    """Train both stages briefly on ``data`` in this process; returns the measurements."""
    from accelerate import Accelerator

    from gphm.cli import parse_config
    from gphm.training.config import TrainRunConfig
    from gphm.training.schedule import stage_steps
    from gphm.training.trainer import GaussianTrainer, GuidanceTrainer

    g_steps, s_steps = QUICK_STEPS if quick else (GUIDANCE_STEPS, GAUSSIAN_STEPS)
    args = [f"data.path={data}", f"run_dir={run_dir}", "model=tiny", "stage=all", "train.cpu=true",
            f"train.guidance_steps={g_steps}", f"train.gaussian_steps={s_steps}",
            "train.schedule_reference_rows=0", "train.preview_every=1000000"]  # fmt: skip
    if quick:
        args += QUICK_MODEL
    cfg = parse_config(TrainRunConfig, args)
    acc = Accelerator(cpu=True)
    out: dict = {}
    t0 = time.perf_counter()
    trainer = GuidanceTrainer(cfg, accelerator=acc)
    out["rss_after_open_mb"] = round(_rss_mb(), 1)
    out["train_rows"] = len(trainer.dataset)
    out["steps_per_epoch"] = trainer.step_rows.steps_per_epoch
    model = trainer.model
    out["identity_codes"] = list(model.identity_codes.codes.weight.shape)
    out["expression_codes"] = list(model.expression_codes.codes.weight.shape)
    summary = trainer.train()
    out["guidance_setup_and_validate_s"] = round(time.perf_counter() - t0 - summary["seconds"], 2)
    guidance = acc.unwrap_model(trainer.model).cpu()
    del trainer
    t1 = time.perf_counter()
    stage2 = GaussianTrainer(cfg, accelerator=acc, guidance=guidance)
    summary2 = stage2.train()
    out["gaussian_setup_and_validate_s"] = round(time.perf_counter() - t1 - summary2["seconds"], 2)
    per_epoch = out["steps_per_epoch"]
    for name, s, steps in (("guidance", summary, g_steps), ("gaussian", summary2, s_steps)):
        out[f"{name}_s_per_step"] = round(s["seconds"] / steps, 4)
        out[f"{name}_s_per_epoch"] = round(s["seconds"] / steps * per_epoch, 1)
    full = [stage_steps(1500, None, out["train_rows"], 4, 288) for _ in range(2)]
    out["default_schedule_steps"] = full
    out["default_schedule_h"] = round(
        (full[0] * out["guidance_s_per_step"] + full[1] * out["gaussian_s_per_step"]) / 3600, 2
    )
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    out["checkpoint_mb"] = _dir_mb(ckpts[-1]) if ckpts else None
    out["model_mb"] = _dir_mb(Path(run_dir) / "model")
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run(quick: bool = False) -> dict:
    import tempfile

    env_sizes = os.environ.get("GPHM_BENCH_SCALING_N")
    sizes = [int(s) for s in env_sizes.split(",")] if env_sizes else ([8] if quick else SIZES)
    results: dict = {"cost": COST, "load": os.getloadavg()[0]}
    for n in sizes:
        t0 = time.perf_counter()
        data, gen_s = make_data(n, quick)
        row: dict = {"gen_s": gen_s, "gen_s_per_identity": round(gen_s / n, 2),
                     "data_mb": _dir_mb(data),
                     "data_wait_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
                       HF_DATASETS_OFFLINE="1")  # fmt: skip
            cmd = [sys.executable, str(Path(__file__).resolve()), str(data), f"{tmp}/run",
                   "quick" if quick else "full"]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                row["error"] = res.stderr.strip().splitlines()[-1:]
            else:
                row |= json.loads(res.stdout.strip().splitlines()[-1])
        results[f"N{n}"] = row
    results["load_after"] = os.getloadavg()[0]
    return results


if __name__ == "__main__":  # the worker process of run()
    sys.path.insert(0, str(ROOT))
    result = worker(sys.argv[1], sys.argv[2], sys.argv[3] == "quick")
    print(json.dumps(result))
