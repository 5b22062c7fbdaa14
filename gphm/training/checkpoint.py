"""Full training state, without pickle: ``RUN/checkpoints/step_XXXXXXXX/``.

Each checkpoint directory holds

* ``model.safetensors`` + ``config.json`` — the model (``save_pretrained``),
* ``optimizer.safetensors`` + ``optimizer.json`` — the optimiser's state dict, tensors
  in safetensors and the nested structure (param groups, hyper-parameters) in JSON,
* ``rng.safetensors`` + ``trainer_state.json`` — torch's CPU/CUDA generator states,
  Python's and NumPy's RNG states, the step, the stage and free metadata.

A checkpoint is written into a temporary sibling and renamed when complete, so a crash
never leaves a half-written ``step_*`` behind; the newest complete one is what
``latest_checkpoint`` returns. Resuming (:func:`load_latest`) checks a checkpoint
completely before applying it and falls back to the previous one, with a warning, when
the newest is damaged (truncated, edited, written for another model).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gphm.io.atomic import atomic_directory
from gphm.models.base import compare_state_dict

__all__ = [
    "flatten_state",
    "unflatten_state",
    "capture_rng",
    "restore_rng",
    "save_training_state",
    "load_training_state",
    "load_latest",
    "checkpoint_candidates",
    "CheckpointError",
    "latest_checkpoint",
    "prune_checkpoints",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, scalars) into a JSON-able
    skeleton and a flat ``{key: tensor}`` dict. Dict keys become strings; int keys are
    restored by :func:`unflatten_state`."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, key: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[key] = x.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(x, dict):
            return {
                "__dict__": [[k if isinstance(k, str) else {"__int__": k}, walk(v, f"{key}.{k}")]
                             for k, v in x.items()]
            }  # fmt: skip
        if isinstance(x, (list, tuple)):
            items = [walk(v, f"{key}.{i}") for i, v in enumerate(x)]
            return {"__tuple__": items} if isinstance(x, tuple) else items
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot serialise {type(x).__name__} at '{key}' without pickle")

    return walk(obj, prefix or "s"), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__dict__" in skeleton:
            out = {}
            for k, v in skeleton["__dict__"]:
                out[k["__int__"] if isinstance(k, dict) else k] = unflatten_state(v, tensors)
            return out
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able Python/NumPy states, torch generator states)."""
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(_py, np_state[2:])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return meta, tensors


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))  # noqa: NPY002
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_training_state(
    checkpoints_dir: str | Path,
    step: int,
    model: Any,  # a SerializableModule (unwrapped)
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
) -> Path:
    """Write ``checkpoints_dir/step_{step:08d}`` atomically and return its path."""
    target = Path(checkpoints_dir) / f"step_{step:08d}"
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        skeleton, tensors = flatten_state(optimizer.state_dict(), "opt")
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(skeleton))
        rng_meta, rng_tensors = capture_rng()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {"step": step, "rng": rng_meta, **trainer_state}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    return target


class CheckpointError(ValueError):
    """A checkpoint is unreadable, incomplete or does not fit the model."""


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None


def _check_model_state(path: Path, state: dict[str, torch.Tensor], model: Any) -> None:
    found = compare_state_dict(state, model.state_dict())
    if found.missing or found.unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {found.missing[:5]}, unexpected "
            f"{found.unexpected[:5]}); was it written with another config?"
        )
    if found.shapes:
        wrong = ", ".join(f"{k} {got} != {want}" for k, got, want in found.shapes[:3])
        raise CheckpointError(f"{path}: weights of the wrong shape: {wrong}")
    if found.nonfinite:
        bad = ", ".join(k for k, _, _ in found.nonfinite[:5])
        raise CheckpointError(f"{path}: non-finite values in {bad}")


def _check_optimizer_state(path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer):
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or [len(g.get("params", [])) for g in groups] != [
        len(g["params"]) for g in optimizer.param_groups
    ]:
        raise CheckpointError(f"{path}: optimiser parameter groups do not fit the model")
    for idx, entry in state.get("state", {}).items():
        if not isinstance(idx, int) or not 0 <= idx < len(params):
            raise CheckpointError(f"{path}: optimiser state of an unknown parameter {idx!r}")
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != params[idx].shape:
                raise CheckpointError(
                    f"{path}: optimiser state {name} of parameter {idx} has shape "
                    f"{tuple(v.shape)}, the parameter {tuple(params[idx].shape)}"
                )


#: Types of the trainer_state.json entries the trainer reads back (besides "step").
_STATE_TYPES = {"stage": str, "losses": dict, "rng": dict}


def _check_trainer_state(path: Path, state: Any) -> None:
    """``CheckpointError`` naming the field unless ``state`` is a JSON object with an
    integer ``step`` >= 0 and the entries of :data:`_STATE_TYPES` (when present) of
    their types: a hand-edited ``step: -7`` must not resume at step -7."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(state).__name__}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: field 'step' must be an integer >= 0, got {step!r}")
    for key, kind in _STATE_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise CheckpointError(
                f"{path}: field {key!r} must be a JSON {'object' if kind is dict else 'string'},"
                f" got {state[key]!r:.60}"
            )


def load_training_state(
    checkpoint: str | Path,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
) -> dict[str, Any]:
    """Load weights, optimiser and RNG states from ``checkpoint``; returns trainer state.

    Everything is read and checked (files present and readable, weights of the model's
    names and shapes and finite, optimiser state fitting its parameters) before anything
    is applied, so a bad checkpoint raises :class:`CheckpointError` naming the file and
    leaves ``model`` and ``optimizer`` untouched.
    """
    checkpoint = Path(checkpoint)
    required = ["model.safetensors", "optimizer.safetensors", "optimizer.json",
                "rng.safetensors", "trainer_state.json"]  # fmt: skip
    missing = [n for n in required if not (checkpoint / n).is_file()]
    if missing:
        raise CheckpointError(f"{checkpoint}: incomplete checkpoint, missing {missing}")
    trainer_state = _load_json(checkpoint / "trainer_state.json")
    _check_trainer_state(checkpoint / "trainer_state.json", trainer_state)
    state = _load_tensors(checkpoint / "model.safetensors")
    _check_model_state(checkpoint / "model.safetensors", state, model)
    opt_state = None
    if optimizer is not None:
        skeleton = _load_json(checkpoint / "optimizer.json")
        tensors = _load_tensors(checkpoint / "optimizer.safetensors")
        try:
            opt_state = unflatten_state(skeleton, tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{checkpoint / 'optimizer.json'}: damaged ({err!r})") from None
        _check_optimizer_state(checkpoint / "optimizer.json", opt_state, optimizer)
    rng = _load_tensors(checkpoint / "rng.safetensors")
    if "torch_cpu" not in rng or "rng" not in trainer_state:
        raise CheckpointError(f"{checkpoint}: no RNG state")
    model.load_state_dict(state, strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    try:
        restore_rng(trainer_state.pop("rng"), rng)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{checkpoint}: damaged RNG state ({err!r})") from None
    return trainer_state


def checkpoint_candidates(checkpoints_dir: str | Path) -> list[Path]:
    """Every ``step_*`` directory, complete or not, newest first."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]  # fmt: skip
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(
    checkpoints_dir: str | Path,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    warn: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest readable checkpoint of ``checkpoints_dir``: ``(path, trainer
    state)``, or None when there is none. A corrupt, truncated or ill-fitting newer one
    is skipped with a warning naming it (it is left in place); when none is readable
    :class:`CheckpointError` names them all."""
    candidates = checkpoint_candidates(checkpoints_dir)
    problems = []
    for path in candidates:
        try:
            return path, load_training_state(path, model, optimizer)
        except CheckpointError as err:
            problems.append(str(err))
            warn(f"[train] warning: skipping checkpoint {path.name}: {err}")
    if not candidates:
        return None
    raise CheckpointError(
        f"{checkpoints_dir}: no readable checkpoint ({'; '.join(problems)}); move the "
        "checkpoints aside to train this stage afresh"
    )


def _step_dirs(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for p in checkpoints_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """Newest complete ``step_*`` directory, or None."""
    dirs = _step_dirs(Path(checkpoints_dir))
    return dirs[-1][1] if dirs else None


def prune_checkpoints(checkpoints_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in _step_dirs(Path(checkpoints_dir))[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
