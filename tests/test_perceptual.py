from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from gphm.perceptual import (
    VGG16Features,
    build_perceptual_loss,
    load_vgg16_weights,
    lpips_available,
    lpips_metric,
)

# torchvision's vgg16().features: conv layers at these indices.
CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(1, size, size, 3)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def torchvision_sd() -> dict[str, torch.Tensor]:
    """A random VGG-16 in torchvision's full-model key layout, classifier included."""
    torch.manual_seed(1)
    sd = {f"features.{k}": v.clone() for k, v in VGG16Features().state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 8)  # ignored by the loader
    sd["classifier.0.bias"] = torch.zeros(4)
    return sd


def test_vgg16_features_keys_match_torchvision():
    sd = VGG16Features().state_dict()
    want = {f"{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    assert set(sd) == want
    assert sd["0.weight"].shape == (64, 3, 3, 3)
    assert sd["28.weight"].shape == (512, 512, 3, 3)


def test_vgg16_features_taps():
    feats = VGG16Features()(torch.rand(1, 32, 32, 3))
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 32, 32),
        (1, 128, 16, 16),
        (1, 256, 8, 8),
        (1, 512, 4, 4),
    ]


def test_dssim_fallback_without_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="gphm"):
        loss = build_perceptual_loss(None)
    warnings = [r for r in caplog.records if r.name == "gphm" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "D-SSIM" in warnings[0].getMessage() and "vgg16" in warnings[0].getMessage()
    assert loss.name == "dssim"
    assert loss.describe() == {"perceptual": "dssim", "weights": None}
    assert build_perceptual_loss("").name == "dssim"

    x, y = _images()
    assert loss(x, x).abs().item() < 1e-6
    pred = y.clone().requires_grad_(True)
    value = loss(pred, x)
    assert value.item() > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_missing_path_raises(tmp_path):
    missing = tmp_path / "nope" / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match="vgg16.pth"):
        build_perceptual_loss(str(missing))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vgg_loss_from_checkpoint(tmp_path, torchvision_sd, fmt):
    path = tmp_path / f"vgg16.{fmt}"
    if fmt == "pth":
        torch.save(torchvision_sd, path)
    else:
        save_file(torchvision_sd, str(path))
    loss = build_perceptual_loss(str(path))
    assert loss.name == "vgg"
    assert loss.describe() == {"perceptual": "vgg", "weights": str(path)}
    for k, v in loss.vgg.state_dict().items():
        assert torch.equal(v, torchvision_sd[f"features.{k}"])
    assert all(not p.requires_grad for p in loss.parameters())

    x, y = _images()
    assert loss(x, x).item() == 0.0
    pred = y.clone().requires_grad_(True)
    value = loss(pred, x)
    assert value.dim() == 0 and value.item() > 0
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_features_only_checkpoint_without_prefix(tmp_path, torchvision_sd):
    sd = {k.removeprefix("features."): v for k, v in torchvision_sd.items()
          if k.startswith("features.")}  # fmt: skip
    path = tmp_path / "features.pth"
    torch.save(sd, path)
    model = load_vgg16_weights(path)
    assert torch.equal(model.state_dict()["0.weight"], sd["0.weight"])


def test_bad_checkpoints_raise_value_error(tmp_path, torchvision_sd):
    wrong_shape = dict(torchvision_sd)
    wrong_shape["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "wrong_shape.safetensors"
    save_file(wrong_shape, str(path))
    with pytest.raises(ValueError, match="wrong_shape.safetensors"):
        build_perceptual_loss(str(path))

    missing = {k: v for k, v in torchvision_sd.items() if k != "features.28.bias"}
    path = tmp_path / "missing_key.pth"
    torch.save(missing, path)
    with pytest.raises(ValueError, match="missing_key.pth"):
        load_vgg16_weights(path)

    extra = dict(torchvision_sd)
    extra["features.31.weight"] = torch.zeros(1)
    path = tmp_path / "extra_key.pth"
    torch.save(extra, path)
    with pytest.raises(ValueError, match="extra_key.pth"):
        load_vgg16_weights(path)

    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_vgg16_weights(path)


def test_lpips_available_reports_reason():
    ok, reason = lpips_available()
    assert isinstance(ok, bool)
    assert isinstance(reason, str) and reason
    if not ok:
        assert lpips_metric() is None


def test_lpips_backbone_mapping(tmp_path, torchvision_sd):
    """lpips keeps torchvision's layer indices inside net.sliceK; check the copy."""
    from torch import nn

    from gphm.perceptual import _load_lpips_backbone

    features = VGG16Features()
    net = nn.Module()
    for k, (a, b) in enumerate([(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)], start=1):
        s = nn.Sequential()
        for i in range(a, b):
            s.add_module(str(i), features._modules[str(i)])
        net.add_module(f"slice{k}", s)
    model = nn.Module()
    model.net = net
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision_sd, path)
    _load_lpips_backbone(model, path)
    assert torch.equal(net.slice2[1].weight, torchvision_sd["features.5.weight"])
    assert torch.equal(net.slice5[5].bias, torchvision_sd["features.28.bias"])
