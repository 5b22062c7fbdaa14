"""The public Python API (docs/architecture.md §5.5): load a trained head, render it, fit photos.

    import gphm
    head = gphm.load("runs/demo")                     # RUN or RUN/model
    img = head.render("synth_001", "jaw_open", yaw=30)  # [S, S, 3] float in [0, 1], CPU
    mix = head.render({"synth_000": 0.5, "synth_001": 0.5}, {"neutral": 0.7, "smile": 0.3})
    avatar = gphm.fit(head, "me.jpg")                  # single-photo fitting
    avatar.render("smile", yaw=-20); avatar.save("me_avatar")
    avatar = gphm.load_avatar("me_avatar", head)

Specs
-----
*identity*: a training subject's name, its index in ``head.run.subjects`` (``int``), an
identity code ``Tensor [Did]``, a fitted :class:`Avatar` (its fine-tuned colour MLP and
per-Gaussian offsets are used too), or a mix ``{name_or_index: weight}`` whose weights
are normalised to sum 1 and whose codes are blended linearly (interpolation).

*expression*: a trained label (``head.expressions``; resolved with
:meth:`TrainedRun.trained_frame`: the subject's own trained frame with that label, else
another subject's), ``"NAME@FRAME"`` (a trained global frame), an expression code
``Tensor [Dexp]``, or a mix ``{label_or_NAME@FRAME: weight}``. For a mixed, tensor or
avatar identity a label takes the lowest-index subject's trained frame
(``trained_frame(None, label)``). ``None``: an avatar's own fitted expression, else
``"neutral"`` when trained, else the first trained label.

Cameras
-------
Orbit cameras around the canonical head (:mod:`gphm.rendering`): ``yaw`` degrees about
+y, 0 frontal, positive towards the head's left (+x; ``yaw=90`` shows the left profile);
``pitch`` degrees of elevation, positive from above. Or an explicit ``viewmat [4, 4]``
(world = canonical head space -> OpenCV camera) and ``K [3, 3]`` in pixels of the
*output* image; the low-resolution render the upsampler starts from is hidden.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from gphm.fitting.avatar import Avatar as AvatarData
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import TrainedRun, load_run
from gphm.rendering import DEFAULT_DISTANCE, check_size, lr_intrinsics, orbit_view, render_views

__all__ = ["Head", "Avatar", "Gaussians", "load", "fit", "load_avatar", "resolve_device"]

# Union (not |): "Avatar" is a forward reference.
IdentitySpec = Union[str, int, Tensor, "Avatar", AvatarData, Mapping[Any, float]]
ExpressionSpec = Union[str, Tensor, Mapping[str, float], None]  # noqa: UP007

WHITE = (1.0, 1.0, 1.0)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; otherwise ``device``
    itself (``"cpu"``, ``"cuda"``, ``"cuda:1"``...). ``ValueError`` for an unknown name or
    CUDA asked for where there is none."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available here (use device=cpu or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return dev


@dataclass
class Gaussians:
    """One head's Gaussians in canonical space (a splat preview or a PLY export)."""

    means: Tensor  # [N, 3] centres, canonical head space
    quats: Tensor  # [N, 4] unit quaternions, wxyz
    scales: Tensor  # [N, 3] linear standard deviations
    opacities: Tensor  # [N] in (0, 1)
    features: Tensor  # [N, C] in (0, 1): the splatted features; the first three are RGB

    @property
    def rgb(self) -> Tensor:  # [N, 3]
        """The colour channels of ``features`` (before the upsampler refines them)."""
        return self.features[:, :3]


@dataclass
class _Codes:
    z_id: Tensor  # [Did]
    z_exp: Tensor  # [Dexp]
    model: Any  # the run's model, or an avatar's personalised copy
    point_offsets: Tensor | None  # [N, 3]


class Head:
    """A trained head model (:func:`load`): render any identity and expression."""

    def __init__(self, run: TrainedRun, device: str | torch.device | None = None):
        self.run = run
        self.model = run.model
        self.device = torch.device("cpu")
        self.to(resolve_device(device))
        self._personalised: dict[int, tuple[AvatarData, Any]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def factor(self) -> int:
        """Upsampling factor: output pixels per low-resolution render pixel."""
        return int(self.model.upsampler.config.factor)

    @property
    def size(self) -> int:
        """Default output size: the model's training resolution (``hr_size``)."""
        hr = int(self.run.extra.get("hr_size") or 0)
        return hr if hr > 0 else int(self.run.extra.get("lr_size") or 64) * self.factor

    @property
    def identities(self) -> list[str]:
        """Names of the training subjects with trained frames (their identity codes were
        fitted), in subject order."""
        return [self.run.subjects[s] for s in self.run.trained_subjects]

    @property
    def expressions(self) -> list[str]:
        """Expression labels of the trained frames of any subject."""
        return self.run.trained_labels()

    @property
    def default_expression(self) -> str:
        labels = self.expressions
        if not labels:
            raise ValueError(f"{self.run.path}: the run has no trained frames")
        return "neutral" if "neutral" in labels else labels[0]

    def to(self, device: str | torch.device | None) -> Head:
        """Move the model to ``device`` (``None``/``"auto"``: CUDA when available)."""
        self.device = resolve_device(device)
        self.model = self.model.to(self.device)
        self.run.model = self.model
        self._personalised = {}
        return self

    def __repr__(self) -> str:
        return (
            f"Head({type(self.model).__name__}, {len(self.identities)} identities, "
            f"{len(self.expressions)} expressions, size={self.size}, device={self.device})"
        )

    # ------------------------------------------------------------------ codes
    def _subject(self, spec: str | int) -> int:
        return self.run.trained_subject(spec, "identity", "identities")

    def _weights(self, mix: Mapping[Any, float], what: str) -> list[tuple[Any, float]]:
        if not mix:
            raise ValueError(f"{what} mix is empty")
        items = []
        for k, w in mix.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"{what} mix: weight of {k!r} must be a finite number, got {w!r}")
            items.append((k, float(w)))
        total = sum(w for _, w in items)
        if not total > 0:
            raise ValueError(f"{what} mix: weights must sum to > 0, got {total}")
        return [(k, w / total) for k, w in items]

    def _code(self, spec: Tensor, dim: int, what: str) -> Tensor:
        if spec.shape != (dim,):
            raise ValueError(f"{what} code must have shape [{dim}], got {list(spec.shape)}")
        if not bool(torch.isfinite(spec).all()):
            raise ValueError(f"{what} code has non-finite values")
        return spec.detach().to(self.device, torch.float32)

    def identity_code(self, spec: IdentitySpec) -> Tensor:  # [Did] on head.device
        """The identity code ``spec`` (module docstring) means."""
        codes = self.model.identity_codes
        if isinstance(spec, (Avatar, AvatarData)):
            data = spec.data if isinstance(spec, Avatar) else spec
            return self._code(data.z_id, codes.config.dim, "identity")
        if isinstance(spec, Tensor):
            return self._code(spec, codes.config.dim, "identity")
        if isinstance(spec, Mapping):
            parts = [(self._subject(k), w) for k, w in self._weights(spec, "identity")]
            return sum(w * codes.codes.weight[s].detach() for s, w in parts)
        return codes.codes.weight[self._subject(spec)].detach()

    def _frame(self, spec: str, subject: int | None) -> int:
        run = self.run
        if "@" in spec:
            name, f = spec.rsplit("@", 1)
            try:
                frame = int(f)
            except ValueError:
                raise ValueError(
                    f"expression {spec!r}: expected NAME@FRAME with an integer frame"
                ) from None
            return run.resolve_frame(self._subject(name), frame=frame).frame
        if spec not in self.expressions:
            raise ValueError(
                f"unknown expression {spec!r}; trained expressions: {self.expressions}"
            )
        return run.trained_frame(subject, spec).frame

    def expression_code(
        self, spec: ExpressionSpec, identity: IdentitySpec | None = None
    ) -> Tensor:  # [Dexp] on head.device
        """The expression code ``spec`` means for ``identity`` (a label resolves to the
        identity's own trained frame when it is a training subject; module docstring)."""
        codes = self.model.expression_codes
        if spec is None:
            if isinstance(identity, (Avatar, AvatarData)):
                data = identity.data if isinstance(identity, Avatar) else identity
                return self._code(data.z_exp, codes.config.dim, "expression")
            spec = self.default_expression
        if isinstance(spec, Tensor):
            return self._code(spec, codes.config.dim, "expression")
        subject = (
            self._subject(identity)
            if isinstance(identity, (str, int)) and not isinstance(identity, bool)
            else None
        )
        if isinstance(spec, Mapping):
            parts = self._weights(spec, "expression")
            if not all(isinstance(k, str) for k, _ in parts):
                raise ValueError("expression mix: keys must be labels or NAME@FRAME strings")
            return sum(w * codes.codes.weight[self._frame(k, subject)].detach() for k, w in parts)
        if not isinstance(spec, str):
            raise ValueError(f"expression {spec!r}: expected a label, NAME@FRAME, a code or a mix")
        return codes.codes.weight[self._frame(spec, subject)].detach()

    def _codes(self, identity: IdentitySpec, expression: ExpressionSpec) -> _Codes:
        model, offsets = self.model, None
        if isinstance(identity, (Avatar, AvatarData)):
            data = identity.data if isinstance(identity, Avatar) else identity
            model, offsets = self._avatar_model(data), data.point_offsets
        return _Codes(
            self.identity_code(identity), self.expression_code(expression, identity), model,
            None if offsets is None else offsets.to(self.device),
        )  # fmt: skip

    def _avatar_model(self, data: AvatarData) -> Any:
        """The avatar's personalised model (fine-tuned f_col), cached per avatar."""
        hit = self._personalised.get(id(data))
        if hit is None or hit[0] is not data:
            hit = (data, data.personalised(self.model).to(self.device).eval())
            self._personalised = {id(data): hit}  # keep one: they hold a model copy
        return hit[1]

    # ------------------------------------------------------------------ cameras
    def camera(
        self, yaw: float = 0.0, pitch: float = 0.0, size: int | None = None,
        distance: float | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The default orbit camera: ``viewmat [4, 4]`` and ``K [3, 3]`` at ``size``
        pixels; passing them back as ``render(viewmat=, K=)`` renders the same image."""
        size = self.size if size is None else size
        check_size(size, self.factor)
        return orbit_view(yaw, pitch, size, self.factor,
                          DEFAULT_DISTANCE if distance is None else distance)  # 0 is an error

    def _view(self, yaw, pitch, size, viewmat, K, distance) -> tuple[Tensor, Tensor]:
        """(viewmat [4, 4], K_lr [3, 3]) of a render call."""
        default_vm, default_K = self.camera(yaw, pitch, size, distance)
        vm = default_vm if viewmat is None else torch.as_tensor(viewmat, dtype=torch.float32)
        K = default_K if K is None else torch.as_tensor(K, dtype=torch.float32)
        if vm.shape != (4, 4) or not bool(torch.isfinite(vm).all()):
            raise ValueError(f"viewmat must be a finite [4, 4] matrix, got {list(vm.shape)}")
        if K.shape != (3, 3) or not bool(torch.isfinite(K).all()):
            raise ValueError(f"K must be a finite [3, 3] matrix, got {list(K.shape)}")
        return vm, lr_intrinsics(K, self.factor)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        identity: IdentitySpec,
        expression: ExpressionSpec = None,
        yaw: float = 0.0,
        pitch: float = 0.0,
        size: int | None = None,
        *,
        viewmat: Tensor | None = None,  # [4, 4] world -> camera; overrides yaw/pitch
        K: Tensor | None = None,  # [3, 3] pixels of the `size` output
        distance: float | None = None,
        background: Sequence[float] = WHITE,
    ) -> Tensor:  # [S, S, 3] float in [0, 1], CPU
        """Render ``identity`` with ``expression`` (module docstring) at the canonical
        head pose. ``size`` (default :attr:`size`) must be a multiple of :attr:`factor`.
        ``background``: RGB in [0, 1]; the model renders on white, another colour is
        composited with the (upsampled) render alpha, approximate at soft edges."""
        return self.render_batch([identity], [expression], [yaw], [pitch], size,
                                 viewmats=None if viewmat is None else [viewmat],
                                 Ks=None if K is None else [K], distance=distance,
                                 background=background)[0]  # fmt: skip

    def render_batch(
        self,
        identities: Sequence[IdentitySpec],
        expressions: Sequence[ExpressionSpec] | ExpressionSpec = None,
        yaws: Sequence[float] | float = 0.0,
        pitches: Sequence[float] | float = 0.0,
        size: int | None = None,
        *,
        viewmats: Sequence[Tensor] | None = None,  # B x [4, 4]
        Ks: Sequence[Tensor] | None = None,  # B x [3, 3] at the output size
        distance: float | None = None,
        background: Sequence[float] = WHITE,
        chunk: int = 8,
    ) -> Tensor:  # [B, S, S, 3] float in [0, 1], CPU
        """:meth:`render` for B rows (``identities``: a list of specs, or codes ``[B, Did]``).
        One ``expressions`` spec (a code ``[Dexp]``), yaw or pitch (a number or a 0-d
        tensor), viewmat ``[4, 4]`` or K ``[3, 3]`` is shared by every row; a list, or a
        tensor with a leading ``B``, gives one per row. Rows with the run's own model
        render in chunks of ``chunk``."""
        if isinstance(identities, Tensor) and identities.ndim == 2:
            identities = list(identities)  # [B, Did] codes
        if isinstance(identities, (str, Tensor, Mapping, Avatar, AvatarData)):
            raise ValueError("identities must be a list (one spec per row); use render()")
        B = len(identities)

        def rows(v, name, item_ndim):
            """One entry per row; a single spec (a tensor of ``item_ndim`` dims) is shared."""
            shared = isinstance(v, (str, Mapping, int, float)) or v is None
            if shared or (isinstance(v, Tensor) and v.ndim == item_ndim):
                return [v] * B
            if len(v) != B:
                raise ValueError(f"{name}: expected {B} entries (one per identity), got {len(v)}")
            return [float(x) if isinstance(x, Tensor) and x.ndim == 0 else x for x in v]

        exprs = rows(expressions, "expressions", 1)
        yaw, pitch = rows(yaws, "yaws", 0), rows(pitches, "pitches", 0)
        vms, Kss = rows(viewmats, "viewmats", 2), rows(Ks, "Ks", 2)
        size = self.size if size is None else size
        lr = check_size(size, self.factor)
        bg = torch.as_tensor(background, dtype=torch.float32).flatten()
        if bg.shape != (3,) or not bool(((bg >= 0) & (bg <= 1)).all()):
            raise ValueError(f"background must be 3 values in [0, 1], got {background!r}")
        codes = [self._codes(i, e) for i, e in zip(identities, exprs)]
        views = [self._view(y, p, size, v, k, distance) for y, p, v, k in zip(yaw, pitch, vms, Kss)]
        out = torch.empty(B, size, size, 3)
        # Group rows that share a model and offsets (all but avatars) into one batch.
        groups: dict[tuple[int, int], list[int]] = {}
        for b, c in enumerate(codes):
            groups.setdefault((id(c.model), id(c.point_offsets)), []).append(b)
        for idx in groups.values():
            c0 = codes[idx[0]]
            r = render_views(
                c0.model, torch.stack([codes[b].z_id for b in idx]),
                torch.stack([codes[b].z_exp for b in idx]),
                torch.stack([views[b][0] for b in idx]), torch.stack([views[b][1] for b in idx]),
                lr, c0.point_offsets, chunk=chunk,
            )  # fmt: skip
            rgb = r.rgb
            if not bool((bg == 1).all()):  # rgb ≈ c·α + 1·(1 − α)  ->  c·α + bg·(1 − α)
                rgb = (rgb - (1 - r.alpha) * (1 - bg)).clamp(0, 1)
            out[idx] = rgb
        return out

    # ------------------------------------------------------------------ Gaussians
    @torch.no_grad()
    def gaussians(self, identity: IdentitySpec, expression: ExpressionSpec = None) -> Gaussians:
        """The per-Gaussian attributes of one head in canonical space (GaussianHead runs
        only: a stage-1 model is a mesh)."""
        if not isinstance(self.model, GaussianHead):
            raise ValueError(
                f"{self.run.path}: a {type(self.model).__name__} (stage 1) has no Gaussians; "
                "train stage=gaussian (or stage=all)"
            )
        c = self._codes(identity, expression)
        a = c.model.attributes(c.z_id[None], c.z_exp[None], c.point_offsets)
        quats = a.quats[0]
        return Gaussians(
            means=a.means[0].float().cpu(),
            quats=(quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float().cpu(),
            scales=a.log_scales[0].exp().float().cpu(),
            opacities=torch.sigmoid(a.opacity_logits[0]).float().cpu(),
            features=a.colors[0].float().cpu(),
        )

    def export_ply(
        self, path: str | Path, identity: IdentitySpec, expression: ExpressionSpec = None,
        sh_degree: int = 3, overwrite: bool = False,
    ) -> Path:  # fmt: skip
        """Write the head's Gaussians (canonical space) as a 3DGS PLY (``gphm.io.ply``):
        colour as the SH DC term, ``sh_degree``'s higher-order terms as zeros. An existing
        file is replaced only with ``overwrite=True``."""
        from gphm.io.ply import save_gaussian_ply

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
        g = self.gaussians(identity, expression)
        return save_gaussian_ply(path, g.means, g.scales.log(), g.quats,
                                 torch.logit(g.opacities.clamp(1e-6, 1 - 1e-6)), g.rgb,
                                 sh_degree=sh_degree)  # fmt: skip


class Avatar:
    """A fitted person (:func:`fit`, :func:`load_avatar`) bound to its :class:`Head`.

    ``data`` is the :class:`gphm.fitting.avatar.Avatar` (codes, input-camera pose,
    fine-tuned colour MLP, per-Gaussian offsets); ``result`` the fit's
    :class:`~gphm.fitting.fit.FitResult` when it was just fitted (None when loaded)."""

    def __init__(self, head: Head, data: AvatarData, result: Any = None, prepared: Any = None):
        self.head, self.data, self.result, self.prepared = head, data, result, prepared

    @property
    def z_id(self) -> Tensor:  # [Did]
        return self.data.z_id

    @property
    def z_exp(self) -> Tensor:  # [Dexp]
        return self.data.z_exp

    @property
    def report(self) -> dict[str, Any]:
        return self.data.report

    def render(
        self, expression: ExpressionSpec = None, yaw: float = 0.0, pitch: float = 0.0,
        size: int | None = None, **kwargs: Any,
    ) -> Tensor:  # [S, S, 3] float in [0, 1], CPU  # fmt: skip
        """Render the avatar at the canonical pose from an orbit camera (as
        :meth:`Head.render`). ``expression=None``: its own fitted expression; a label: the
        trained code of that label (``trained_frame(None, label)``)."""
        return self.head.render(self, expression, yaw, pitch, size, **kwargs)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the avatar directory (:meth:`gphm.fitting.avatar.Avatar.save`)."""
        return self.data.save(directory, overwrite=overwrite)

    def __repr__(self) -> str:
        return f"Avatar(checkpoint={self.data.checkpoint!r}, model={self.data.model_class})"


# ---------------------------------------------------------------------- functions


def load(run_or_model_dir: str | Path, device: str | torch.device | None = None) -> Head:
    """Load a trained run (``RUN`` or ``RUN/model``) as a :class:`Head` on ``device``
    (``None``/``"auto"``: CUDA when available)."""
    return Head(load_run(run_or_model_dir, device="cpu"), device)


def load_avatar(directory: str | Path, head: Head) -> Avatar:
    """Read an avatar directory written by :meth:`Avatar.save` (or ``scripts/fit_image.py``),
    checked against ``head``'s model."""
    return Avatar(head, AvatarData.load(directory, head.model))


def _as_image(image: Any) -> np.ndarray | str:
    """A path (as a string), or a uint8 ``[H, W, 3]`` RGB array."""
    if isinstance(image, (str, Path)):
        return str(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {list(arr.shape)}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError(f"image must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_landmarks(landmarks: Any) -> Any:
    """None, a ``.pts`` path, or a float ``[68, 2]`` array."""
    if landmarks is None or isinstance(landmarks, (str, Path)):
        return landmarks
    if isinstance(landmarks, Tensor):
        landmarks = landmarks.detach().cpu().numpy()
    return np.asarray(landmarks, dtype=np.float64)


def fit(
    head: Head,
    image: Any,
    landmarks: Any = None,
    *,
    detector: str = "mediapipe",
    face: int = 0,
    progress: bool = False,
    **fit_options: Any,
) -> Avatar:
    """Fit a person from a photo, or from a list of photos of the same person (one
    identity, an expression and a pose per photo; :func:`gphm.fitting.sources.fit_photos`).

    A photo is a path, a PIL image or an ``[H, W, 3]`` array (uint8, or float in [0, 1]).
    ``landmarks`` (a list of them for a list of photos; None entries are detected): 68
    iBUG points ``[68, 2]`` in input pixels or a ``.pts`` file, else ``detector`` finds
    them; ``face`` picks a face of a photo with several (0 = the largest). ``fit_options``
    are :class:`gphm.fitting.fit.FitConfig` fields (``phase1_steps=``, ...). The avatar's
    own expression and pose are the first photo's."""
    from gphm.fitting.fit import FitConfig
    from gphm.fitting.sources import fit_photos

    valid = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(set(fit_options) - valid)
    if unknown:
        raise ValueError(f"unknown fit option(s) {unknown}; FitConfig fields: {sorted(valid)}")
    config = FitConfig(**fit_options)
    several = isinstance(image, (list, tuple))
    images = list(image) if several else [image]
    if not images:
        raise ValueError("fit got an empty list of images")
    if landmarks is None:
        marks = [None] * len(images)
    elif several:
        if not isinstance(landmarks, (list, tuple)) or len(landmarks) != len(images):
            raise ValueError(
                f"fit got {len(images)} images: landmarks must be a list of as many entries "
                "(arrays, .pts files or None)"
            )
        marks = list(landmarks)
    else:
        marks = [landmarks]
    prepared, result = fit_photos(
        head.run, [_as_image(i) for i in images], detector=detector,
        landmarks=[_as_landmarks(m) for m in marks], config=config, progress=progress,
        face=face,
    )  # fmt: skip
    return Avatar(head, result.avatar, result, prepared if several else prepared[0])
