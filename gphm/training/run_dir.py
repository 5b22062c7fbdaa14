"""Bookkeeping of a training run directory (``scripts/train.py``).

* :class:`RunLock` — one writer per run: ``RUN/.lock`` holds the owner's pid, host and
  start time, is created atomically (``O_CREAT | O_EXCL``) and removed on exit. A lock
  left by a dead process of this host is taken over with a warning.
* :func:`check_resume` / :func:`record_stage` — ``RUN/run_state.json`` records, per
  stage, the resolved options and the dataset fingerprint the stage was trained with;
  resuming with other options or another dataset is refused, naming the changes. Only
  the schedule (:data:`SCHEDULE_KEYS`) may change, so a longer schedule still resumes.
* :func:`dataset_dir_fingerprint` (the one dataset fingerprint,
  :func:`gphm.models.runs.dataset_fingerprint`), :func:`module_fingerprint` — cheap,
  deterministic content hashes of a dataset directory and of a module's weights.
* :func:`on_main` — run a check on the main process only and end every process alike
  when it fails (the others must not wait forever at the next collective).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf

from gphm.io.atomic import atomic_write_text, pid_alive
from gphm.models.runs import dataset_fingerprint as dataset_dir_fingerprint
from gphm.models.runs import fingerprint_comparable

__all__ = [
    "RunDirError",
    "RunLocked",
    "ResumeMismatch",
    "RunLock",
    "SCHEDULE_KEYS",
    "resolved_options",
    "stage_options",
    "check_resume",
    "record_stage",
    "dataset_dir_fingerprint",
    "module_fingerprint",
    "on_main",
    "exit_on_sigterm",
]

LOCK_NAME = ".lock"
STATE_NAME = "run_state.json"

SCHEDULE_KEYS = frozenset(
    {
        "train.guidance_steps",
        "train.gaussian_steps",
        "train.guidance_epochs",
        "train.gaussian_epochs",
        "train.schedule_reference_rows",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.preview_every",
    }
)
"""Options that may change when a run resumes: when and how long, not what is trained."""

# Not compared: where the run and the data live (the dataset is compared by content),
# which stages this invocation runs, the device, and whether the thread count may adapt.
_UNCOMPARED = SCHEDULE_KEYS | {"run_dir", "stage", "data.path", "train.cpu", "train.deterministic"}
# Compared as resolved absolute paths.
_PATH_KEYS = ("guidance_run", "loss.gaussian.vgg_weights")
# Options only one stage reads (everything else, e.g. seed and batch size, is shared).
_GUIDANCE_ONLY = ("model.guidance.", "train.lr", "train.code_lr", "train.sdf_prefit_")
_GAUSSIAN_ONLY = ("model.gaussian.", "loss.gaussian.", "train.gaussian_", "train.point_",
                  "guidance_run")  # fmt: skip

T = TypeVar("T")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (one-line message, exit 2)."""


class RunLocked(RunDirError):
    """Another process owns the run directory."""


class ResumeMismatch(RunDirError):
    """Resuming would continue a stage with other options or another dataset."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- lock
def _process_start(pid: int) -> float | None:
    """Start time (Unix seconds) of process ``pid`` from /proc, None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after "comm"
        boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime"))  # fmt: skip
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class RunLock:
    """``RUN/.lock``: taken by :meth:`acquire`, removed by :meth:`release` (also as a
    context manager). The file is JSON ``{"pid", "host", "started", "token"}``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.token: str | None = None

    def _owner(self) -> dict[str, Any] | None:
        """The lock's content; None when it is unreadable (being written, or damaged)."""
        for _ in range(3):
            try:
                owner = json.loads(self.path.read_text())
                if isinstance(owner, dict):  # complete (a partial write does not parse)
                    return owner
            except FileNotFoundError:
                raise
            except (OSError, ValueError):
                pass
            time.sleep(0.05)  # the owner may be between creating and writing it
        return None

    def _stale_reason(self, owner: dict[str, Any] | None) -> str | None:
        """Why the lock's owner is certainly gone, or None when it may be running."""
        if owner is None:
            age = time.time() - self.path.stat().st_mtime
            return f"unreadable lock file {age:.0f} s old" if age > 10 else None
        if owner.get("host") != socket.gethostname():
            return None  # cannot look at another machine's processes
        pid = owner.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int):
            return f"the lock names no process (pid {pid!r})"
        if not pid_alive(pid):
            return f"process {pid} is not running"
        start = _process_start(pid)
        created = owner.get("created")
        if start is not None and isinstance(created, (int, float)) and start > created + 2:
            return f"pid {pid} now belongs to a process started after the lock"
        return None

    def acquire(self) -> RunLock:
        """Take the lock; raises :class:`RunLocked` naming the owner when it is held."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                  "created": time.time(), "token": token}  # fmt: skip
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = self._owner()
                    reason = self._stale_reason(owner)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if reason is None:
                    who = (f"pid {owner.get('pid')} on {owner.get('host')}, since "
                           f"{owner.get('started')}") if owner else "an unknown owner"  # fmt: skip
                    raise RunLocked(
                        f"{self.run_dir}: another training run is writing here ({who}); wait "
                        f"for it to end or use another run_dir (if none is running, delete "
                        f"{self.path})"
                    ) from None
                self._take_over(owner, reason)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.token = token
            return self
        raise RunLocked(f"{self.path}: could not take the lock (contended); try again")

    def _take_over(self, stale: dict[str, Any] | None, reason: str) -> None:
        # Move the lock aside and look at what was moved: if another process replaced
        # the stale lock by its own meanwhile, put that one back (link fails if a third
        # took the place) instead of deleting a live lock.
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved != stale:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            print(f"[train] warning: took over the stale lock {self.path} ({reason})",
                  file=sys.stderr)  # fmt: skip
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this object holds it (idempotent)."""
        if self.token is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        self.token = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (sent by launchers and schedulers) into ``SystemExit(143)`` so that
    ``finally`` blocks run: the lock is released on every exit path but SIGKILL (whose
    lock the next run takes over as stale)."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- fingerprints
def module_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits over a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- resume guard
def resolved_options(cfg: Any) -> dict[str, Any]:
    """The resolved options of a run config as ``{"train.lr": 0.002, ...}`` (JSON
    values; path options resolved to absolute paths)."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk({k: v for k, v in tree.items() if k != "defaults"}, "")
    for key in _PATH_KEYS:
        if flat.get(key) is not None:
            flat[key] = str(Path(flat[key]).expanduser().resolve())
    # stage 2 starts from run_dir itself unless told otherwise: the same, however spelt
    run_dir = str(Path(flat["run_dir"]).expanduser().resolve()) if flat.get("run_dir") else None
    if flat.get("guidance_run") in (None, run_dir):
        flat["guidance_run"] = "<run_dir>"
    return json.loads(json.dumps(flat, default=str))


def stage_options(options: dict[str, Any], stage: str) -> dict[str, Any]:
    """The options that shape ``stage``'s result (those compared on resume)."""
    other = _GAUSSIAN_ONLY if stage == "guidance" else _GUIDANCE_ONLY
    out = {}
    for k, v in options.items():
        if k in _UNCOMPARED or k.startswith(other):
            continue
        if stage == "gaussian" and k.startswith("loss.") and not k.startswith("loss.gaussian."):
            continue  # stage-1 loss weights
        out[k] = v
    return out


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_NAME
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path}: unreadable ({err}); restore it or use a new run_dir") from None
    problem = _state_problem(state)
    if problem:
        raise RunDirError(f"{path}: {problem}; restore it or use a new run_dir")
    return state


def _state_problem(state: Any) -> str | None:
    """What is wrong with the types of a ``run_state.json`` (None when nothing is):
    ``{"stages": {STAGE: {"options": {...}, "dataset": str|null, "first_started": str,
    "last_started": str}}, "format": int}``."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    stages = state.get("stages", {})
    if not isinstance(stages, dict):
        return f"field 'stages' must be a JSON object, got {stages!r:.60}"
    for stage, record in stages.items():
        if not isinstance(record, dict):
            return f"field 'stages.{stage}' must be a JSON object, got {record!r:.60}"
        kinds = {"options": (dict,), "dataset": (str, type(None)),
                 "first_started": (str,), "last_started": (str,)}  # fmt: skip
        for key, kind in kinds.items():
            if key in record and not isinstance(record[key], kind):
                names = " or ".join("null" if k is type(None) else
                                    {"dict": "a JSON object", "str": "a string"}[k.__name__]
                                    for k in kind)  # fmt: skip
                return f"field 'stages.{stage}.{key}' must be {names}, got {record[key]!r:.60}"
    return None


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) or v is None else str(v)


def check_resume(
    run_dir: str | Path, stage: str, options: dict[str, Any], dataset: str, resuming: bool
) -> None:
    """Refuse to resume ``stage`` when its recorded options or dataset differ.

    ``options`` are :func:`resolved_options`, ``dataset`` the :func:`dataset_dir_fingerprint`
    of this invocation; ``resuming`` says whether the stage has checkpoints (a fresh
    start is never refused). Options the record does not know (added since) are not
    compared. Raises :class:`ResumeMismatch` listing ``key old -> new``.
    """
    if not resuming:
        return
    run_dir = Path(run_dir)
    record = _read_state(run_dir).get("stages", {}).get(stage)
    if not record:
        return  # a run from before the record existed
    old, new = stage_options(record.get("options", {}), stage), stage_options(options, stage)
    changed = [f"{k} {_show(old[k])} -> {_show(new[k])}" for k in sorted(new)
               if k in old and json.dumps(old[k]) != json.dumps(new[k])]  # fmt: skip
    if changed:
        raise ResumeMismatch(
            f"{run_dir}: cannot resume stage {stage} with other options than it was trained "
            f"with: {', '.join(changed)}. Only the schedule ({', '.join(sorted(SCHEDULE_KEYS))})"
            " may change on resume; restore these options or use a new run_dir"
        )
    # a record of an older fingerprint formula cannot be compared: as if none
    if fingerprint_comparable(record.get("dataset")) and record["dataset"] != dataset:
        raise ResumeMismatch(
            f"{run_dir}: cannot resume stage {stage} on another dataset: {options.get('data.path')}"
            f" (fingerprint {dataset}) is not the data it was trained on (fingerprint "
            f"{record['dataset']}, from {record.get('options', {}).get('data.path')}); use a "
            "new run_dir"
        )


def record_stage(run_dir: str | Path, stage: str, options: dict[str, Any], dataset: str) -> None:
    """Record in ``RUN/run_state.json`` what ``stage`` is trained with (kept: when it
    first started)."""
    run_dir = Path(run_dir)
    state = _read_state(run_dir)
    stages = state.setdefault("stages", {})
    first = stages.get(stage, {}).get("first_started", _now())
    stages[stage] = {"options": options, "dataset": dataset, "first_started": first,
                     "last_started": _now()}  # fmt: skip
    state["format"] = 1
    atomic_write_text(run_dir / STATE_NAME, json.dumps(state, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- processes
def on_main(acc: Any, fn: Callable[[], T], *errors: type[BaseException]) -> T:
    """``fn()`` on the main process of accelerator ``acc``; its result — or the message
    of one of ``errors`` it raised, raised again as that type — reaches every process.
    Also a barrier."""
    from accelerate.utils import broadcast_object_list

    payload: list[Any] = [None]
    failure: BaseException | None = None
    if acc.is_main_process:
        try:
            payload = [(True, fn())]
        except errors as err:
            failure = err
            payload = [(False, (type(err), str(err)))]
    if acc.num_processes > 1:
        broadcast_object_list(payload)
    ok, value = payload[0]
    if failure is not None:
        raise failure
    if not ok:
        cls, message = value
        raise cls(message)
    return value
