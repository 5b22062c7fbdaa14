"""Perceptual loss and the LPIPS metric, usable without torchvision (docs/architecture.md §10).

* :class:`VGG16Features` is a pure-torch copy of torchvision's ``vgg16().features`` with
  the same ``state_dict`` keys (``0.weight``, ``2.weight``, ..., ``28.bias``), so a
  torchvision ImageNet checkpoint (``vgg16-397923af.pth`` or a ``.safetensors``
  conversion of it) loads into it without torchvision installed.
* :func:`build_perceptual_loss` returns a VGG feature-matching loss when the path of such
  a checkpoint is given, and otherwise D-SSIM (:func:`gphm.losses.dssim`) with one logged
  warning. A path that does not exist is an error: nothing is ever downloaded.
* :func:`load_lpips` builds the LPIPS metric (AlexNet, v0.1): with the ``lpips`` package
  when it and torchvision import, else with :class:`LPIPSAlex`, a pure-torch twin that
  loads the same weight files (torchvision's AlexNet checkpoint, the wheel's linear
  heads). Without weights it gives ``(None, reason)``, so evaluation reports LPIPS as
  null with that reason, never as 0. It downloads torchvision's backbone the standard
  way (``torch.hub``) only when not offline; nothing else here ever downloads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gphm.losses import dssim
from gphm.models.base import StateDictMismatch, compare_state_dict

__all__ = [
    "resolve_lpips",
    "VGG16Features",
    "load_vgg16_weights",
    "PerceptualLoss",
    "build_perceptual_loss",
    "AlexNetFeatures",
    "LPIPSAlex",
    "LPIPSMetric",
    "load_lpips",
    "lpips_heads_path",
    "lpips_available",
    "lpips_metric",
]

log = logging.getLogger("gphm")

# torchvision's VGG-16 configuration "D": channels of the 3x3 convs, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
# Indices (in torchvision's ``features`` numbering) of relu1_2, relu2_2, relu3_3, relu4_3.
VGG16_LAYERS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# File names torchvision gives the ImageNet backbones in its hub cache (torch.hub.get_dir()).
_TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` in pure torch (randomly initialised).

    Sub-modules are named ``"0"`` ... ``"30"`` exactly as in torchvision, so
    ``state_dict()`` has the keys of ``torchvision.models.vgg16().features.state_dict()``.
    The ImageNet mean/std are non-persistent buffers and add no keys. ``forward`` stops
    after relu4_3: the fifth block's weights are held (to load checkpoints strictly) but
    never computed.
    """

    layer_names: tuple[str, ...] = tuple(VGG16_LAYERS)

    def __init__(self) -> None:
        super().__init__()
        i, c_in = 0, 3
        for v in _VGG16_CFG:
            if v == "M":
                self.add_module(str(i), nn.MaxPool2d(kernel_size=2, stride=2))
                i += 1
            else:
                self.add_module(str(i), nn.Conv2d(c_in, int(v), kernel_size=3, padding=1))
                self.add_module(str(i + 1), nn.ReLU(inplace=True))
                c_in, i = int(v), i + 2
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: Tensor) -> list[Tensor]:  # [B, H, W, 3] in [0, 1]
        """Activations after relu1_2, relu2_2, relu3_3, relu4_3, each [B, C_l, H_l, W_l]."""
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG16Features: expected [B, H, W, 3], got {list(x.shape)}")
        h = (x.permute(0, 3, 1, 2) - self.mean) / self.std
        taps = set(VGG16_LAYERS.values())
        out = []
        for i in range(max(taps) + 1):
            h = self._modules[str(i)](h)
            if i in taps:
                out.append(h)
        return out


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``'d state dict (``.pth``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled module instead of a state dict, ...
        raise ValueError(f"{path}: cannot read a state dict ({type(e).__name__}: {e})") from e
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return dict(sd)


def _features_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop ``classifier.*`` and strip the ``features.`` prefix of a torchvision VGG."""
    out = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            continue
        out[k.removeprefix("features.")] = v
    return out


def load_vgg16_weights(path: str | os.PathLike[str]) -> VGG16Features:
    """A frozen, eval-mode :class:`VGG16Features` holding the weights of ``path``.

    ``path`` is a torchvision VGG-16 checkpoint — the whole model (``features.N.*`` and
    ``classifier.*`` keys; the classifier is ignored) or only its ``features`` (keys with
    or without the ``features.`` prefix) — as ``.pth`` or ``.safetensors``. Raises
    FileNotFoundError when it does not exist and ValueError (naming the file) when keys
    are missing or unexpected or a shape differs.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"VGG-16 weights not found: {p} (nothing is downloaded)")
    sd = _features_state_dict(_read_state_dict(p))
    model = VGG16Features()
    found = compare_state_dict(sd, model.state_dict(), finite=False)
    missing, unexpected = found.missing, sorted(found.unexpected)  # missing: layer order
    if missing or unexpected:
        raise ValueError(
            f"{p}: not a torchvision VGG-16 checkpoint; missing keys {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, unexpected keys {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    if found.shapes:
        raise ValueError(f"{p}: wrong shapes for VGG-16: {_shape_list(found)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.requires_grad_(False)
    return model.eval()


def _shape_list(found: StateDictMismatch) -> str:
    """ "key: [got] != [expected]; ..." of the tensors whose shape differs."""
    return "; ".join(f"{k}: {list(got)} != {list(want)}" for k, got, want in found.shapes)


class PerceptualLoss(nn.Module):
    """The stage-2 perceptual term: VGG-16 feature matching, or D-SSIM without weights.

    ``name`` is ``"vgg"`` or ``"dssim"``. With VGG the loss is
    ``sum over l in (relu1_2, relu2_2, relu3_3, relu4_3) of mean |φ_l(pred) − φ_l(target)|``
    (mean over batch, channels and pixels of each layer), computed on ImageNet-normalised
    images; with D-SSIM it is :func:`gphm.losses.dssim`. Both are 0 for identical images.
    The VGG parameters are frozen; gradients flow only to ``pred`` (and to ``target`` if
    it requires grad). Build it with :func:`build_perceptual_loss`.
    """

    def __init__(self, vgg: VGG16Features | None = None, weights: str | None = None) -> None:
        super().__init__()
        self.name = "vgg" if vgg is not None else "dssim"
        self.weights = weights if vgg is not None else None
        self.vgg = vgg
        if vgg is not None:
            vgg.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # no dropout/batch-norm in `features`, but keep it fixed anyway
        return self

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, 3] x2 -> []
        if pred.shape != target.shape:
            raise ValueError(f"perceptual: pred {list(pred.shape)} vs target {list(target.shape)}")
        if self.vgg is None:
            return dssim(pred, target)
        if self.vgg.mean.device != pred.device:
            self.vgg.to(pred.device)  # built on the CPU; follow the images to the accelerator
        fp = self.vgg(pred)
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            ft = self.vgg(target)
        return sum(F.l1_loss(a, b) for a, b in zip(fp, ft, strict=True))

    def describe(self) -> dict[str, str | None]:
        return {"perceptual": self.name, "weights": self.weights}


def build_perceptual_loss(vgg_weights: str | os.PathLike[str] | None) -> PerceptualLoss:
    """VGG perceptual loss from a local torchvision VGG-16 checkpoint, else D-SSIM.

    ``None`` or ``""`` selects D-SSIM and logs one warning on the ``gphm`` logger; a path
    that does not exist raises FileNotFoundError (nothing is ever downloaded).
    """
    if vgg_weights is None or not str(vgg_weights).strip():
        log.warning(
            "perceptual loss: no local VGG-16 weights given, so D-SSIM substitutes for the "
            "VGG perceptual term. To enable it, pass the path of a torchvision vgg16 "
            "checkpoint (e.g. vgg16-397923af.pth, or a .safetensors conversion) as "
            "loss.gaussian.vgg_weights=PATH; nothing is downloaded."
        )
        return PerceptualLoss()
    path = Path(vgg_weights).expanduser()
    return PerceptualLoss(load_vgg16_weights(path), weights=str(path))


# --------------------------------------------------------------------------- LPIPS
#
# LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a
# Perceptual Metric"), version 0.1, AlexNet variant — the one papers report. For inputs
# x0, x1 in [-1, 1]:
#   1. scale each image per channel: (x - shift) / scale with the constants below;
#   2. take the AlexNet activations after each of its 5 ReLUs (ImageNet weights, frozen);
#   3. unit-normalise every activation vector along channels: f / (||f||_2 + 1e-10);
#   4. square the difference, weight its channels with a learned non-negative 1x1 conv
#      per layer (the "linear heads", trained on human judgements), average over pixels;
#   5. sum the 5 layers.
# The backbone is torchvision's `alexnet().features`; the heads ship inside the `lpips`
# wheel (lpips/weights/v0.1/alex.pth).

_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_EPS = 1e-10
# torchvision's download URLs for the backbones (torchvision.models.AlexNet_Weights /
# VGG16_Weights.IMAGENET1K_V1); the file names embed the SHA-256 prefix hub checks.
_TORCHVISION_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
LPIPS_BACKBONE_ENV = "GPHM_LPIPS_BACKBONE"
"""Environment variable: path of a torchvision backbone checkpoint for LPIPS."""
LPIPS_HEADS_ENV = "GPHM_LPIPS_HEADS"
"""Environment variable: path of the LPIPS v0.1 linear heads (``alex.pth``)."""
_OFFLINE_ENVS = ("GPHM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# torchvision alexnet().features: (index of the conv, its out channels); each is followed
# by its ReLU at index + 1, which is where LPIPS taps.
_ALEX_CONVS = ((0, 64), (3, 192), (6, 384), (8, 256), (10, 256))
ALEX_CHANNELS: tuple[int, ...] = tuple(c for _, c in _ALEX_CONVS)
LPIPS_MIN_SIZE = 31
"""Smallest image side AlexNet accepts: its 11x11 stride-4 conv and two 3x3 stride-2
max-pools leave 1 pixel at 31 px and none below."""


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` up to its last ReLU, in pure torch.

    Sub-modules are named ``"0"`` ... ``"11"`` as in torchvision, so ``state_dict()`` has
    the keys ``0.weight, 0.bias, 3.*, 6.*, 8.*, 10.*`` of
    ``torchvision.models.alexnet().features`` (the final max-pool has no weights and
    LPIPS does not use it). Randomly initialised; load weights with ``load_state_dict``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def forward(self, x: Tensor) -> list[Tensor]:  # [B, 3, H, W] (already LPIPS-scaled)
        """The activations after the 5 ReLUs, each [B, C_l, H_l, W_l] (C = 64..256)."""
        taps = {i + 1 for i, _ in _ALEX_CONVS}
        out = []
        for i in range(len(self._modules)):
            # ReLU(inplace) only overwrites the conv output just made; every layer after a
            # tap returns a new tensor, so the tapped activations are never modified.
            x = self._modules[str(i)](x)
            if i in taps:
                out.append(x)
        return out


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone, in pure torch (no torchvision).

    ``net`` is :class:`AlexNetFeatures`; ``lin0`` ... ``lin4`` are the bias-free 1x1 convs
    (C_l -> 1) of the linear heads. ``forward`` takes NCHW images in [-1, 1] and returns
    the [B] distances; the same number as ``lpips.LPIPS(net="alex", version="0.1")`` in
    eval mode (its heads' dropout is then the identity). Build it with :meth:`from_weights`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        for k, c in enumerate(ALEX_CHANNELS):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_weights(cls, backbone: Mapping[str, Tensor], heads: Mapping[str, Tensor]) -> LPIPSAlex:
        """A frozen, eval-mode twin from a torchvision AlexNet state dict and LPIPS heads.

        ``backbone``: ``alexnet().state_dict()`` (``features.N.*`` keys, ``classifier.*``
        ignored) or only its ``features`` (``N.*``). ``heads``: the lpips file's keys
        ``lin{k}.model.1.weight`` (or ``lin{k}.weight``), each [C_k, ...] -> [1, C_k, 1, 1];
        other keys of an ``lpips.LPIPS`` state dict (``net.*``, ``lins.*``) are ignored.
        Raises ValueError on a missing key or a wrong shape.
        """
        model = cls()
        feats = _features_state_dict(backbone)
        want = model.net.state_dict()
        found = compare_state_dict(feats, want, finite=False)
        if found.missing or found.unexpected:
            raise ValueError(f"not a torchvision AlexNet checkpoint: missing keys "
                             f"{sorted(found.missing)}, unexpected keys "
                             f"{sorted(found.unexpected)[:6]}")  # fmt: skip
        sd = {f"net.{k}": feats[k] for k in want}
        for k in range(len(ALEX_CHANNELS)):
            v = heads.get(f"lin{k}.model.1.weight", heads.get(f"lin{k}.weight"))
            if v is None:
                raise ValueError(f"not LPIPS alex heads: no lin{k}.model.1.weight")
            sd[f"lin{k}.weight"] = v
        found = compare_state_dict(sd, model.state_dict(), finite=False)
        if found.shapes:
            raise ValueError(f"wrong shapes for LPIPS alex: {_shape_list(found)}")
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        return model.requires_grad_(False).eval()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:  # [B, 3, H, W] x2 in [-1, 1] -> [B]
        if min(x0.shape[-2:]) < LPIPS_MIN_SIZE:
            raise ValueError(f"lpips: images must be at least {LPIPS_MIN_SIZE} px on each "
                             f"side for AlexNet, got {list(x0.shape[-2:])}")  # fmt: skip
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        total = x0.new_zeros(x0.shape[0])
        for k, (a, b) in enumerate(zip(f0, f1, strict=True)):
            a = a / (a.square().sum(1, keepdim=True).sqrt() + _LPIPS_EPS)
            b = b / (b.square().sum(1, keepdim=True).sqrt() + _LPIPS_EPS)
            total = total + self._modules[f"lin{k}"]((a - b).square()).mean((1, 2, 3))
        return total


class LPIPSMetric(nn.Module):
    """LPIPS distance per image over ``[B, H, W, 3]`` images in [0, 1] (lower = closer).

    Wraps either the ``lpips`` package's model (``backend="lpips"``) or the pure-torch
    :class:`LPIPSAlex` twin (``backend="twin"``); both take NCHW in [-1, 1]. Build it with
    :func:`load_lpips`. :meth:`describe` says which backend and which weight files.
    """

    def __init__(
        self, model: nn.Module, net: str, backbone: str, heads: str | None, backend: str
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.net, self.backbone, self.heads, self.backend = net, backbone, heads, backend

    def train(self, mode: bool = True) -> LPIPSMetric:
        super().train(mode)
        self.model.eval()  # a metric: the lpips heads' dropout must never be active
        return self

    @torch.no_grad()
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, 3] x2 -> [B]
        """[B] LPIPS distances of images in [0, 1] (values outside are not clamped)."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 3:
            raise ValueError(f"lpips: expected two [B, H, W, 3], got {list(pred.shape)}, "
                             f"{list(target.shape)}")  # fmt: skip
        self.model.to(pred.device)
        p = pred.permute(0, 3, 1, 2).float() * 2 - 1
        t = target.permute(0, 3, 1, 2).float() * 2 - 1
        return self.model(p, t).flatten()

    def describe(self) -> dict[str, str | None]:
        return {"lpips_net": self.net, "lpips_backend": self.backend,
                "lpips_backbone": self.backbone, "lpips_heads": self.heads}  # fmt: skip


def _offline() -> str | None:
    """The environment variable that forbids downloads, if one is set."""
    for name in _OFFLINE_ENVS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def _hub_checkpoint(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]


def _local_backbone(
    net: str, weights: str | os.PathLike[str] | None
) -> tuple[Path | None, str, bool]:
    """``(path, "", explicit)`` of the local backbone checkpoint, or ``(None, why not,
    explicit)``; ``explicit``: the path was given (argument or environment variable)."""
    env = os.environ.get(LPIPS_BACKBONE_ENV)
    for given, origin in ((weights, "weights"), (env, LPIPS_BACKBONE_ENV)):
        if given is not None and str(given).strip():
            p = Path(given).expanduser()
            if not p.is_file():
                return None, f"LPIPS backbone weights not found: {p} (from {origin})", True
            return p, "", True
    cached = _hub_checkpoint(net)
    if cached.is_file():
        return cached, "", False
    return None, (f"no local {net} backbone weights: put torchvision's {cached.name} in "
                  f"{cached.parent} or set {LPIPS_BACKBONE_ENV}=PATH"), False  # fmt: skip


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the download host answers (skipped behind a proxy, which urllib uses)."""
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    import socket
    from urllib.parse import urlsplit

    try:
        socket.create_connection((urlsplit(url).hostname, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _download_backbone(net: str, why_missing: str) -> tuple[Path | None, str]:
    """torchvision's checkpoint into the hub cache the standard way, unless offline."""
    url = _TORCHVISION_URLS[net]
    offline = _offline()
    if offline:
        return None, f"{why_missing}; not downloaded because {offline} is set"
    if not _network_reachable(url):
        return None, f"{why_missing}; {url} is not reachable (no network)"
    try:
        torch.hub.load_state_dict_from_url(
            url, map_location="cpu", check_hash=True, file_name=_TORCHVISION_FILES[net],
            progress=False,
        )  # fmt: skip
    except Exception as e:  # network error, hash mismatch, full disk: "unavailable"
        return None, f"{why_missing}; downloading {url} failed ({type(e).__name__}: {e})"
    cached = _hub_checkpoint(net)
    return (cached, "") if cached.is_file() else (None, f"{why_missing}; download left no file")


def lpips_heads_path(net: str = "alex", heads: str | os.PathLike[str] | None = None) -> Path | None:
    """The LPIPS v0.1 linear heads: ``heads``, ``$GPHM_LPIPS_HEADS`` or the lpips wheel's.

    The wheel is located with ``importlib.util.find_spec`` *without* importing ``lpips``
    (which imports torchvision); ``pip install --no-deps lpips`` is enough to provide it.
    ``None`` when no such file exists.
    """
    import importlib.util

    for given in (heads, os.environ.get(LPIPS_HEADS_ENV)):
        if given is not None and str(given).strip():
            p = Path(given).expanduser()
            return p if p.is_file() else None
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "weights" / "v0.1" / f"{net}.pth"
        if p.is_file():
            return p
    return None


def _lpips_package() -> tuple[Any, str]:
    """(the imported ``lpips`` module, "") when it and torchvision import, else (None, why)."""
    for module in ("torchvision", "lpips"):
        try:
            __import__(module)
        except Exception as e:  # ImportError, or torchvision's operator registration failing
            return None, f"cannot import {module} ({type(e).__name__}: {e})"
    import lpips

    return lpips, ""


def _load_lpips_backbone(model: nn.Module, path: Path) -> None:
    """Copy a torchvision ``features`` checkpoint into lpips's ``net.sliceK.N.*``.

    lpips splits ``features`` into ``slice1`` ... ``slice5`` but keeps torchvision's layer
    indices as module names, so ``net.sliceK.N.weight`` is ``features.N.weight``.
    """
    src = _features_state_dict(_read_state_dict(path))
    dst = model.net.state_dict()
    new = {}
    for k, v in dst.items():
        key = k.partition(".")[2]  # "slice2.5.weight" -> "5.weight"
        if key not in src or src[key].shape != v.shape:
            raise ValueError(f"{path}: no tensor of shape {list(v.shape)} for {key}")
        new[k] = src[key].to(v.dtype)
    model.net.load_state_dict(new, strict=True)


def _resolve_lpips(
    net: str,
    weights: str | os.PathLike[str] | None,
    heads: str | os.PathLike[str] | None,
    download: bool,
) -> tuple[Any, Path | None, Path | None, str | None]:
    """``(lpips module or None, backbone path, heads path, reason)``; reason None = ready.

    The package's model loads its own heads, so ``heads path`` is only set for the twin.
    """
    if net not in _TORCHVISION_FILES:
        return None, None, None, f"unsupported LPIPS backbone {net!r} (use 'alex' or 'vgg')"
    package, why_not_package = _lpips_package()
    heads_path = None
    if package is None:
        if net != "alex":
            return (
                None,
                None,
                None,
                (
                    f"the pure-torch LPIPS twin has only the AlexNet variant; net={net!r} needs "
                    f"the lpips package ({why_not_package})"
                ),
            )
        heads_path = lpips_heads_path(net, heads)
        if heads_path is None:
            given = heads or os.environ.get(LPIPS_HEADS_ENV)
            return None, None, None, (
                f"LPIPS linear heads not found: {Path(given).expanduser()}" if given
                else "no LPIPS linear heads: install them with `pip install --no-deps "
                f"lpips` or set {LPIPS_HEADS_ENV}=PATH/alex.pth"
            )  # fmt: skip
    backbone, why, explicit = _local_backbone(net, weights)
    if backbone is None and not explicit:  # a given path that does not exist is not fetched
        if download:
            backbone, why = _download_backbone(net, why)
        else:
            why += "; not downloaded by this check"
    if backbone is None:
        return package, None, heads_path, why
    return package, backbone, heads_path, None


def load_lpips(
    net: str = "alex",
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    heads: str | os.PathLike[str] | None = None,
) -> tuple[LPIPSMetric | None, str | None]:
    """``(metric, None)`` when LPIPS can be computed, else ``(None, reason)``.

    Backend: the ``lpips`` package when it and torchvision import (``net`` "alex" or
    "vgg"), else the pure-torch :class:`LPIPSAlex` twin ("alex" only), which needs the
    linear heads (:func:`lpips_heads_path`: ``heads``, ``$GPHM_LPIPS_HEADS`` or the lpips
    wheel). Backbone weights, first found: ``weights``, ``$GPHM_LPIPS_BACKBONE``,
    torchvision's file in ``torch.hub.get_dir()/checkpoints``; failing those, torchvision's
    URL is fetched with ``torch.hub.load_state_dict_from_url`` — never when
    ``GPHM_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set, nor when the
    host is unreachable. Any failure (including a given path that does not exist or does
    not hold the expected tensors) is a reason naming it, never an exception: callers
    report LPIPS as null with that reason, never as 0.
    """
    package, backbone, heads_path, why = _resolve_lpips(net, weights, heads, download=True)
    if why is not None:
        return None, why
    assert backbone is not None
    try:
        if package is not None:
            model = package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
            _load_lpips_backbone(model, backbone)
            metric = LPIPSMetric(model, net, str(backbone), None, backend="lpips")
        else:
            assert heads_path is not None
            twin = LPIPSAlex.from_weights(_read_state_dict(backbone), _read_state_dict(heads_path))
            metric = LPIPSMetric(twin, net, str(backbone), str(heads_path), backend="twin")
    except Exception as e:  # a bad file or an lpips API change means "unavailable", not a crash
        return None, f"building LPIPS failed ({type(e).__name__}: {e})"
    return (metric.to(device) if device is not None else metric), None


def lpips_available(
    weights: str | os.PathLike[str] | None = None, net: str = "alex"
) -> tuple[bool, str]:
    """Whether :func:`load_lpips` finds what it needs, and why (not); cheap.

    Checks imports and that the weight files exist; it neither reads them nor downloads
    (so a file that exists but is corrupt only shows in :func:`load_lpips`'s reason).
    """
    package, backbone, heads_path, why = _resolve_lpips(net, weights, None, download=False)
    if why is not None:
        return False, f"LPIPS unavailable: {why}"
    backend = "lpips" if package is not None else f"twin, heads {heads_path}"
    return True, f"LPIPS ({net}, {backend}) with backbone weights {backbone}"


def lpips_metric(
    weights: str | os.PathLike[str] | None = None, net: str = "alex"
) -> LPIPSMetric | None:
    """:func:`load_lpips`'s metric or ``None`` (the reason is logged on ``gphm``)."""
    metric, reason = load_lpips(net, weights)
    if metric is None:
        log.warning("LPIPS unavailable: %s", reason)
    return metric


def resolve_lpips(
    lpips: Any, size: tuple[int, int], device: torch.device | str | None = None
) -> tuple[Any, str | None]:
    """What an evaluation's ``lpips`` argument means: a metric (any callable
    ``(pred, target) -> [B]``) is used as given; ``False`` disables LPIPS; ``True`` loads
    AlexNet LPIPS (:func:`load_lpips`) unless the images (``size`` = H, W) are smaller
    than AlexNet takes. Returns ``(metric, None)`` or ``(None, reason)``."""
    if callable(lpips):
        return lpips, None
    if not lpips:
        return None, "disabled by the caller (lpips=False)"
    if min(size) < LPIPS_MIN_SIZE:
        return None, f"images of {size[0]}x{size[1]} px are smaller than AlexNet's " \
            f"{LPIPS_MIN_SIZE} px"  # fmt: skip
    return load_lpips("alex", device=device)
