"""Perceptual loss and LPIPS metric that never download anything (DESIGN.md §7).

* :class:`VGG16Features` is a pure-torch copy of torchvision's ``vgg16().features`` with
  the same ``state_dict`` keys (``0.weight``, ``2.weight``, ..., ``28.bias``), so a
  torchvision ImageNet checkpoint (``vgg16-397923af.pth`` or a ``.safetensors``
  conversion of it) loads into it without torchvision installed.
* :func:`build_perceptual_loss` returns a VGG feature-matching loss when the path of such
  a checkpoint is given, and otherwise D-SSIM (:func:`gphm.losses.dssim`) with one logged
  warning. A path that does not exist is an error: nothing is ever downloaded.
* :func:`lpips_metric` builds the `lpips` package's metric only when that package (and
  the torchvision it needs) is importable *and* the backbone weights are on disk; it
  returns ``None`` otherwise, so evaluation reports LPIPS as unavailable, never as 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gphm.losses import dssim

__all__ = [
    "VGG16Features",
    "load_vgg16_weights",
    "PerceptualLoss",
    "build_perceptual_loss",
    "lpips_available",
    "lpips_metric",
    "LPIPSMetric",
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
    want = model.state_dict()
    missing = sorted(set(want) - set(sd), key=_key_order)
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{p}: not a torchvision VGG-16 checkpoint; missing keys {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, unexpected keys {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    bad = [f"{k}: {list(sd[k].shape)} != {list(v.shape)}" for k, v in want.items()
           if sd[k].shape != v.shape]  # fmt: skip
    if bad:
        raise ValueError(f"{p}: wrong shapes for VGG-16: {'; '.join(bad)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.requires_grad_(False)
    return model.eval()


def _key_order(key: str) -> tuple[int, str]:
    head, _, tail = key.partition(".")
    return (int(head) if head.isdigit() else 1 << 30, tail)


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


def _lpips_backbone_path(weights: str | os.PathLike[str] | None, net: str) -> Path | None:
    if weights:
        return Path(weights).expanduser()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]
    return cached if cached.is_file() else None


def lpips_available(
    weights: str | os.PathLike[str] | None = None, net: str = "alex"
) -> tuple[bool, str]:
    """Whether LPIPS can be computed offline, and why (not).

    Needs the ``lpips`` package, ``torchvision`` (its backbones come from there) and the
    ImageNet backbone weights on disk: ``weights`` (a torchvision alexnet / vgg16
    checkpoint for ``net="alex"`` / ``"vgg"``) or, when ``None``, torchvision's own cached
    file in ``torch.hub.get_dir()/checkpoints``. The check imports, it does not build.
    """
    if net not in _TORCHVISION_FILES:
        return False, f"unsupported LPIPS backbone {net!r} (use 'alex' or 'vgg')"
    for module in ("torchvision", "lpips"):
        try:
            __import__(module)
        except ImportError as e:
            return False, f"LPIPS unavailable: cannot import {module} ({e})"
    path = _lpips_backbone_path(weights, net)
    if path is None:
        return False, (
            f"LPIPS unavailable: no local {net} backbone weights (give a path, or put "
            f"{_TORCHVISION_FILES[net]} in {Path(torch.hub.get_dir()) / 'checkpoints'})"
        )
    if not path.is_file():
        return False, f"LPIPS unavailable: backbone weights not found: {path}"
    return True, f"LPIPS ({net}) with backbone weights {path}"


class LPIPSMetric(nn.Module):
    """LPIPS distance per image; wraps an ``lpips.LPIPS`` model (see :func:`lpips_metric`)."""

    def __init__(self, model: nn.Module, net: str, weights: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.net = net
        self.weights = weights

    @torch.no_grad()
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, 3] x2 in [0, 1]
        """[B] LPIPS distances (lower is more similar)."""
        if pred.shape != target.shape or pred.shape[-1] != 3:
            raise ValueError(f"lpips: expected two [B, H, W, 3], got {list(pred.shape)}, "
                             f"{list(target.shape)}")  # fmt: skip
        self.model.to(pred.device)
        p = pred.permute(0, 3, 1, 2) * 2 - 1  # lpips wants NCHW in [-1, 1]
        t = target.permute(0, 3, 1, 2) * 2 - 1
        return self.model(p.float(), t.float()).flatten()


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


def lpips_metric(
    weights: str | os.PathLike[str] | None = None, net: str = "alex"
) -> LPIPSMetric | None:
    """An LPIPS metric ([B, H, W, 3] x2 in [0, 1] -> [B]) or ``None`` when unavailable.

    The backbone is built with ``pnet_rand=True`` (no download) and its weights copied
    from the local checkpoint (see :func:`lpips_available`); the linear heads ship inside
    the ``lpips`` wheel. Any failure logs the reason on the ``gphm`` logger and returns
    ``None`` — callers report LPIPS as unavailable, never as 0.
    """
    ok, reason = lpips_available(weights, net)
    if not ok:
        log.warning("%s", reason)
        return None
    path = _lpips_backbone_path(weights, net)
    assert path is not None
    try:
        import lpips

        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        _load_lpips_backbone(model, path)
    except Exception as e:  # anything (an lpips API change, a bad file) means "unavailable"
        log.warning("LPIPS unavailable: building it failed (%s: %s)", type(e).__name__, e)
        return None
    return LPIPSMetric(model, net, str(path))
