#!/usr/bin/env python
"""Benchmarks (speed and memory are measured here, never in timed tests).

    python scripts/bench.py render      # Gaussian rasterizer + mesh rasterizer
    python scripts/bench.py geometry    # tet grid, marching tetrahedra, mesh ops
    python scripts/bench.py preprocess  # landmark detection on a 512² photo
    python scripts/bench.py stage2      # Gaussian head: create_from, train step, fitting
    python scripts/bench.py viewer      # web viewer: renders/s at 256², first picture
    python scripts/bench.py contention  # a training alone vs beside a second (quiet machine)
    python scripts/bench.py scaling     # 8/64/256 identities: generation, RSS, time per epoch
    python scripts/bench.py all
    python scripts/bench.py render --quick --out bench_results/render.json

Each suite lives in ``scripts/benchmarks/<suite>.py`` as ``run(quick: bool) -> dict``.
Results are written as JSON (default ``bench_results/<suite>.json``) together with the
machine description, and a short table is printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SUITES = {
    "render": ["benchmarks.gaussians", "benchmarks.mesh"],
    "geometry": ["benchmarks.geometry"],
    "preprocess": ["benchmarks.preprocess"],
    "stage2": ["benchmarks.stage2"],
    "viewer": ["benchmarks.viewer"],
    "contention": ["benchmarks.contention"],
    "scaling": ["benchmarks.scaling"],
    "identity_curve": ["benchmarks.identity_curve"],
}


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _print_rows(name: str, result: object, prefix: str = "") -> None:
    """Print leaf numbers of a nested result dict as `path: value` lines."""
    if isinstance(result, dict):
        for k, v in result.items():
            _print_rows(name, v, f"{prefix}{k}." if isinstance(v, (dict, list)) else f"{prefix}{k}")
    elif isinstance(result, list):
        for i, v in enumerate(result):
            _print_rows(name, v, f"{prefix}{i}.")
    elif isinstance(result, float):
        print(f"  {name}: {prefix} = {result:.4g}")
    else:
        print(f"  {name}: {prefix} = {result}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (one suite only)")
    args = parser.parse_args(argv)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if args.out is not None and len(suites) > 1:
        parser.error("--out needs a single suite")
    for suite in suites:
        results = {"machine": machine_info(), "quick": args.quick}
        for mod_name in SUITES[suite]:
            mod = importlib.import_module(mod_name)
            print(f"[bench] {mod_name} ...", flush=True)
            results[mod_name.split(".")[-1]] = mod.run(quick=args.quick)
        out = args.out or ROOT / "bench_results" / f"{suite}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        for key, value in results.items():
            if key not in ("machine", "quick"):
                _print_rows(key, value)
        print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
