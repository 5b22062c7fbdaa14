"""A fitted avatar: what single-image fitting produces and rendering/editing accept.

On disk (one directory, written atomically; an existing one is replaced only with
``overwrite=True``, and :meth:`Avatar.load` checks every field)::

    avatar.json          {"class": "Avatar", "format_version", "checkpoint", "model_class",
                          "head_scale", "image_size", "report", ...}
    avatar.safetensors   z_id [Did], z_exp [Dexp], head_R [3, 3], head_T [3], K [3, 3],
                         optional (phase 2 of the fit, Gaussian heads):
                         point_offsets [N, 3]    per-Gaussian X_can offsets
                         color_offsets [N, C]    per-Gaussian colour-feature offsets
                         opacity_offsets [N]     per-Gaussian opacity-logit offsets
                         f_col.*                 the fine-tuned colour MLP
                         upsampler.*             fine-tuned Ψ weights (a subset of Ψ's)
                         expressions.NAME [Dexp] named expression codes (a fit from
                                                 several images: image_0, image_1, ...)

A field that is absent (an avatar written before it existed) means "no change": zero
offsets, the run's own f_col and Ψ, no named expressions.

The avatar refers to the trained run by path (``checkpoint``); the model itself is not
copied. ``head_R``/``head_T`` place the head in the input camera's frame (the camera is
the world origin, looking down +z) and ``K`` is that camera at ``image_size`` pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from gphm.io.atomic import atomic_directory
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["Avatar", "AvatarExistsError", "PersonalisedGaussianHead", "is_avatar_dir"]

FORMAT_VERSION = 1
JSON_NAME = "avatar.json"
WEIGHTS_NAME = "avatar.safetensors"


def is_avatar_dir(path: str | Path) -> bool:
    return (Path(path) / JSON_NAME).is_file()


class PersonalisedGaussianHead(GaussianHead):
    """A :class:`GaussianHead` with per-Gaussian colour-feature and opacity-logit offsets
    added to every render (``C = sigmoid(f_col(H, z_exp)) + color_offsets``,
    ``A = A0 + f_att(...) + opacity_offsets``): what a fitted avatar adds to the run's
    model. Built by :meth:`wrap` (or :meth:`Avatar.personalised`), never trained or saved
    as a run; ``point_offsets`` stay a render argument, as for the plain model."""

    color_offsets: Tensor  # [N, C]
    opacity_offsets: Tensor  # [N]

    @classmethod
    def wrap(
        cls,
        model: GaussianHead,
        color_offsets: Tensor | None = None,  # [N, C]
        opacity_offsets: Tensor | None = None,  # [N]
    ) -> PersonalisedGaussianHead:
        """A deep copy of ``model`` carrying the offsets as (frozen) parameters; zeros when
        None. ``model`` is unchanged."""
        out = copy.deepcopy(model)
        out.__class__ = cls
        N, C = model.num_points, model.color_channels
        device = model.points.device
        for name, value, shape in (("color_offsets", color_offsets, (N, C)),
                                   ("opacity_offsets", opacity_offsets, (N,))):  # fmt: skip
            value = torch.zeros(shape) if value is None else value.detach()
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be {list(shape)}, got {list(value.shape)}")
            out.register_parameter(
                name, torch.nn.Parameter(value.float().to(device).clone(), requires_grad=False)
            )
        return out

    def attributes(self, z_id, z_exp, point_offsets=None, exp_parts=None):
        att = super().attributes(z_id, z_exp, point_offsets, exp_parts)
        return dataclasses.replace(
            att,
            colors=att.colors + self.color_offsets,
            opacity_logits=att.opacity_logits + self.opacity_offsets,
        )


@dataclass
class Avatar:
    checkpoint: str
    """Run directory of the model the avatar was fitted with."""
    model_class: str
    z_id: Tensor  # [Did]
    z_exp: Tensor  # [Dexp]
    head_R: Tensor  # [3, 3] canonical -> input camera
    head_T: Tensor  # [3]
    head_scale: float
    K: Tensor  # [3, 3] input camera at image_size pixels
    image_size: int
    point_offsets: Tensor | None = None  # [N, 3] per-Gaussian X_can offsets (phase 2)
    f_col: dict[str, Tensor] | None = None  # fine-tuned f_col state (phase 2)
    report: dict[str, Any] = field(default_factory=dict)
    color_offsets: Tensor | None = None  # [N, C] per-Gaussian colour-feature offsets
    opacity_offsets: Tensor | None = None  # [N] per-Gaussian opacity-logit offsets
    upsampler: dict[str, Tensor] | None = None  # fine-tuned Ψ entries (subset of its state)
    expressions: dict[str, Tensor] = field(default_factory=dict)
    """Named expression codes [Dexp] (a fit from several images: ``image_0``, ...;
    ``z_exp`` is ``image_0``'s)."""

    # ------------------------------------------------------------------ model
    def personalised(self, model: GuidanceModel | GaussianHead) -> GuidanceModel | GaussianHead:
        """A copy of ``model`` with everything this avatar fine-tuned: f_col, Ψ entries
        and, for a Gaussian head, the per-Gaussian colour and opacity offsets
        (:class:`PersonalisedGaussianHead`). ``point_offsets`` are passed to ``render``
        separately. ``model`` is unchanged; without any of these it is returned as is."""
        if type(model).__name__ != self.model_class:
            raise ValueError(
                f"the avatar was fitted with a {self.model_class}, got a {type(model).__name__}"
            )
        for name in ("point_offsets", "color_offsets", "opacity_offsets"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != getattr(model, "num_points", -1):
                raise ValueError(
                    f"the avatar has {name} for {value.shape[0]} Gaussians, the model has "
                    f"{getattr(model, 'num_points', 'none')}: it was fitted with another "
                    "checkpoint"
                )
        per_gaussian = self.color_offsets is not None or self.opacity_offsets is not None
        if self.f_col is None and self.upsampler is None and not per_gaussian:
            return model
        if per_gaussian:
            out = PersonalisedGaussianHead.wrap(model, self.color_offsets, self.opacity_offsets)
        else:
            out = copy.deepcopy(model)
        if self.f_col is not None:
            out.f_col.load_state_dict(self.f_col)
        if self.upsampler is not None:
            state = out.upsampler.state_dict()
            state.update({k: v.to(state[k].device) for k, v in self.upsampler.items()})
            out.upsampler.load_state_dict(state)
        return out

    def expression(self, name: str | None = None) -> Tensor:  # [Dexp]
        """``z_exp`` (None) or the named expression; ``KeyError`` lists the names."""
        if name is None:
            return self.z_exp
        if name not in self.expressions:
            raise KeyError(
                f"the avatar has no expression {name!r}; it has {sorted(self.expressions)}"
            )
        return self.expressions[name]

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the avatar directory atomically. An existing non-empty ``directory`` is
        replaced only with ``overwrite=True`` (the user's ``overwrite=true``), otherwise
        :class:`AvatarExistsError`; an empty one is filled."""
        d = Path(directory)
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise AvatarExistsError(
                f"{d} already exists and is not empty; pass overwrite=true to replace it"
            )
        tensors = {"z_id": self.z_id, "z_exp": self.z_exp, "head_R": self.head_R,
                   "head_T": self.head_T, "K": self.K}  # fmt: skip
        if self.point_offsets is not None:
            tensors["point_offsets"] = self.point_offsets
        for name in ("color_offsets", "opacity_offsets"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        for prefix, entries in (("f_col", self.f_col), ("upsampler", self.upsampler),
                                ("expressions", self.expressions)):  # fmt: skip
            for k, v in (entries or {}).items():
                tensors[f"{prefix}.{k}"] = v
        # clone: a named expression may be z_exp itself (safetensors refuses shared memory)
        tensors = {k: v.detach().float().cpu().clone().contiguous() for k, v in tensors.items()}
        meta = {
            "class": "Avatar",
            "format_version": FORMAT_VERSION,
            "checkpoint": str(Path(self.checkpoint).resolve()),
            "model_class": self.model_class,
            "head_scale": float(self.head_scale),
            "image_size": int(self.image_size),
            "report": self.report,
        }
        # An empty directory holds nothing to lose: replace it like a new path.
        with atomic_directory(d, overwrite=overwrite or d.is_dir()) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_NAME))
            (tmp / JSON_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return d

    @classmethod
    def load(
        cls, directory: str | Path, model: GuidanceModel | GaussianHead | None = None
    ) -> Avatar:
        """Read an avatar directory, checking every field: JSON types, tensor shapes
        (against ``model`` too when given: code sizes, Gaussian count, f_col weights) and
        that every tensor is finite. A damaged file raises ``ValueError`` naming the file
        and the field."""
        d = Path(directory)
        jpath, wpath = d / JSON_NAME, d / WEIGHTS_NAME
        if not jpath.is_file() or not wpath.is_file():
            raise FileNotFoundError(f"{d}: not an avatar (expected {JSON_NAME} and {WEIGHTS_NAME})")
        try:
            meta = json.loads(jpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{jpath}: invalid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{jpath}: expected a JSON object, got {type(meta).__name__}")
        if meta.get("class") != "Avatar" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{jpath}: not an avatar of format {FORMAT_VERSION} (class "
                f"{meta.get('class')!r}, version {meta.get('format_version')!r})"
            )
        _check_meta(jpath, meta)
        try:
            t = load_file(str(wpath))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{wpath}: unreadable safetensors file ({err})") from None
        _check_tensors(wpath, t, model, meta["model_class"])
        f_col, upsampler, expressions = (_prefixed(t, p) for p in _PREFIXES)
        return cls(
            checkpoint=meta["checkpoint"], model_class=meta["model_class"], z_id=t["z_id"],
            z_exp=t["z_exp"], head_R=t["head_R"], head_T=t["head_T"],
            head_scale=float(meta["head_scale"]), K=t["K"], image_size=int(meta["image_size"]),
            point_offsets=t.get("point_offsets"), f_col=f_col or None,
            report=meta.get("report", {}), color_offsets=t.get("color_offsets"),
            opacity_offsets=t.get("opacity_offsets"), upsampler=upsampler or None,
            expressions=expressions,
        )  # fmt: skip


_PREFIXES = ("f_col", "upsampler", "expressions")


def _prefixed(t: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in t.items() if k.startswith(prefix + ".")}


class AvatarExistsError(FileExistsError, ValueError):
    """The avatar directory exists and ``overwrite`` was not asked for. A ``ValueError``
    too, so that CLIs turn it into their one-line bad-input error."""


def _check_meta(jpath: Path, meta: dict[str, Any]) -> None:
    for key, kind in (("checkpoint", str), ("model_class", str)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{jpath}: field {key!r} must be a string, got {meta.get(key)!r}")
    scale, size = meta.get("head_scale"), meta.get("image_size")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise ValueError(f"{jpath}: field 'head_scale' must be a finite number > 0, got {scale!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{jpath}: field 'image_size' must be an integer >= 1, got {size!r}")
    if not isinstance(meta.get("report", {}), dict):
        raise ValueError(f"{jpath}: field 'report' must be a JSON object")


def _check_tensors(
    wpath: Path, t: dict[str, Tensor], model: GuidanceModel | GaussianHead | None, model_class: str
) -> None:
    missing = [k for k in ("z_id", "z_exp", "head_R", "head_T", "K") if k not in t]
    if missing:
        raise ValueError(f"{wpath}: missing tensors {missing}")
    expected: dict[str, tuple[int | None, ...]] = {
        "z_id": (None,), "z_exp": (None,), "head_R": (3, 3), "head_T": (3,), "K": (3, 3),
        "point_offsets": (None, 3), "color_offsets": (None, None), "opacity_offsets": (None,),
    }  # fmt: skip
    dim_exp = t["z_exp"].shape[0] if t["z_exp"].dim() == 1 else None
    for k in t:
        if k.startswith("expressions."):
            expected[k] = (dim_exp,)
    per_gaussian = ("point_offsets", "color_offsets", "opacity_offsets")
    counts = {t[k].shape[0] for k in per_gaussian if k in t and t[k].dim() >= 1}
    if len(counts) > 1:
        raise ValueError(f"{wpath}: the per-Gaussian fields disagree on the Gaussian count")
    if model is not None:
        if type(model).__name__ != model_class:
            raise ValueError(
                f"{wpath.parent / JSON_NAME}: field 'model_class' is {model_class!r}, the "
                f"checkpoint holds a {type(model).__name__}"
            )
        expected["z_id"] = (model.identity_codes.config.dim,)
        for k in expected:
            if k == "z_exp" or k.startswith("expressions."):
                expected[k] = (model.expression_codes.config.dim,)
        if isinstance(model, GaussianHead):
            N = model.num_points
            expected["point_offsets"] = (N, 3)
            expected["color_offsets"] = (N, model.color_channels)
            expected["opacity_offsets"] = (N,)
        else:
            for k in per_gaussian:
                if k in t:
                    raise ValueError(f"{wpath}: field {k!r} given for a {model_class}")
        for prefix, module, strict in (("f_col", model.f_col, True),
                                       ("upsampler", model.upsampler, False)):  # fmt: skip
            state = module.state_dict()
            for k, v in state.items():
                expected[f"{prefix}.{k}"] = tuple(v.shape)
            stored = set(_prefixed(t, prefix))
            extra, lacking = sorted(stored - set(state)), sorted(set(state) - stored)
            if stored and (extra or (strict and lacking)):
                raise ValueError(
                    f"{wpath}: {prefix} weights do not match the model's (unexpected "
                    f"{extra[:3]}, missing {lacking[:3] if strict else []})"
                )
    for k, v in t.items():
        want = expected.get(k)
        if want is None and not k.startswith(("f_col.", "upsampler.")):
            raise ValueError(f"{wpath}: unexpected tensor {k!r}")
        if want is not None and (
            v.dim() != len(want) or any(w is not None and w != n for w, n in zip(want, v.shape))
        ):
            shape = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
            raise ValueError(f"{wpath}: field {k!r} has shape {list(v.shape)}, expected {shape}")
        if not v.is_floating_point():
            raise ValueError(f"{wpath}: field {k!r} must be floating point, got {v.dtype}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{wpath}: field {k!r} holds non-finite values (NaN or inf)")
