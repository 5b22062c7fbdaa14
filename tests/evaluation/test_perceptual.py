from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from gphm.evaluation.perceptual import (
    AlexNetFeatures,
    LPIPSAlex,
    LPIPSMetric,
    VGG16Features,
    build_perceptual_loss,
    load_lpips,
    load_vgg16_weights,
    lpips_available,
    lpips_heads_path,
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

    from gphm.evaluation.perceptual import _load_lpips_backbone

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


# ------------------------------------------------------------------ LPIPS (AlexNet twin)

# torchvision's alexnet().features: conv layers at these indices.
ALEX_CONV_INDICES = [0, 3, 6, 8, 10]


def _random_alex_files(tmp_path, seed: int = 3):
    """A random AlexNet in torchvision's full-model layout and random LPIPS heads."""
    g = torch.Generator().manual_seed(seed)
    backbone = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05
                for k, v in AlexNetFeatures().state_dict().items()}  # fmt: skip
    backbone["classifier.1.weight"] = torch.zeros(4, 8)  # ignored, as the real file's
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for k, c in enumerate((64, 192, 384, 256, 256))}  # fmt: skip
    torch.save(backbone, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(heads, tmp_path / "alex.pth")
    return tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"


def _no_package(monkeypatch):
    """Make the lpips package's backend unavailable so load_lpips picks the twin."""
    import gphm.evaluation.perceptual as perceptual

    monkeypatch.setattr(perceptual, "_lpips_package", lambda: (None, "disabled by test"))


def _no_network(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("tried to use the network")

    import socket

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(socket, "create_connection", boom)


def test_alexnet_features_keys_and_taps():
    sd = AlexNetFeatures().state_dict()
    assert set(sd) == {f"{i}.{p}" for i in ALEX_CONV_INDICES for p in ("weight", "bias")}
    assert sd["0.weight"].shape == (64, 3, 11, 11)
    feats = AlexNetFeatures()(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 15, 15), (2, 192, 7, 7), (2, 384, 3, 3), (2, 256, 3, 3), (2, 256, 3, 3),
    ]  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 48, 40)])
def test_lpips_twin_deterministic_and_zero_on_identical(tmp_path, monkeypatch, shape):
    _no_package(monkeypatch)
    _no_network(monkeypatch)
    backbone, heads = _random_alex_files(tmp_path)
    metric, reason = load_lpips(weights=str(backbone), heads=str(heads))
    assert reason is None and isinstance(metric, LPIPSMetric)
    assert metric.describe() == {
        "lpips_net": "alex",
        "lpips_backend": "twin",
        "lpips_backbone": str(backbone),
        "lpips_heads": str(heads),
    }
    x = torch.rand(*shape, 3)
    y = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    d = metric(x, y)
    assert d.shape == (shape[0],) and torch.isfinite(d).all() and (d > 0).all()
    assert torch.equal(d, metric(x, y))  # deterministic (eval mode: no dropout)
    metric.train()
    assert torch.equal(d, metric(x, y))  # train() cannot switch a metric to dropout
    assert torch.allclose(metric(x, x), torch.zeros(shape[0]), atol=1e-7)
    # A row's distance does not depend on the other rows of the batch.
    if shape[0] > 1:
        assert torch.allclose(metric(x[1:2], y[1:2]), d[1:2], rtol=1e-5, atol=1e-7)
    # Closer images are closer in LPIPS.
    z = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    assert (metric(x, z) < d).all()


def test_lpips_twin_rejects_bad_input(tmp_path, monkeypatch):
    _no_package(monkeypatch)
    backbone, heads = _random_alex_files(tmp_path)
    metric, _ = load_lpips(weights=str(backbone), heads=str(heads))
    with pytest.raises(ValueError, match="at least 31 px"):
        metric(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        metric(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 4))


def test_lpips_offline_without_weights_never_touches_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("GPHM_LPIPS_BACKBONE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_network(monkeypatch)
    metric, reason = load_lpips()
    assert metric is None
    assert "HF_HUB_OFFLINE" in reason or "heads" in reason  # no weights of some kind
    _no_package(monkeypatch)
    _, heads = _random_alex_files(tmp_path)
    metric, reason = load_lpips(heads=str(heads))
    assert metric is None
    assert "alexnet-owt-7be5be79.pth" in reason and "HF_HUB_OFFLINE" in reason
    ok, why = lpips_available()
    assert not ok and "unavailable" in why
    assert lpips_metric() is None
    # Unreachable host (not offline by environment): a reason, still no download attempt.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for k in ("GPHM_OFFLINE", "TRANSFORMERS_OFFLINE", "https_proxy", "HTTPS_PROXY",
              "all_proxy", "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    metric, reason = load_lpips(heads=str(heads))
    assert metric is None and "not reachable" in reason


def test_lpips_backbone_from_hub_cache_and_env(tmp_path, monkeypatch):
    _no_package(monkeypatch)
    _no_network(monkeypatch)
    backbone, heads = _random_alex_files(tmp_path)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    backbone.rename(tmp_path / "hub" / "checkpoints" / backbone.name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("GPHM_LPIPS_HEADS", str(heads))
    metric, reason = load_lpips()
    assert reason is None and metric.backbone.endswith("hub/checkpoints/" + backbone.name)
    ok, why = lpips_available()  # checks the files exist, reads nothing
    assert ok and "twin" in why and backbone.name in why
    monkeypatch.setenv("GPHM_LPIPS_BACKBONE", str(tmp_path / "typo.pth"))
    metric, reason = load_lpips()
    assert metric is None and "typo.pth" in reason and "GPHM_LPIPS_BACKBONE" in reason


def test_lpips_bad_files_give_reasons(tmp_path, monkeypatch):
    _no_package(monkeypatch)
    _no_network(monkeypatch)
    backbone, heads = _random_alex_files(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    metric, reason = load_lpips(weights=str(garbage), heads=str(heads))
    assert metric is None and "garbage.pth" in reason
    vgg = tmp_path / "vgg.pth"
    torch.save(VGG16Features().state_dict(), vgg)
    metric, reason = load_lpips(weights=str(vgg), heads=str(heads))
    assert metric is None and "AlexNet" in reason
    metric, reason = load_lpips(weights=str(backbone), heads=str(tmp_path / "nope.pth"))
    assert metric is None and "nope.pth" in reason
    metric, reason = load_lpips(net="squeeze")
    assert metric is None and "squeeze" in reason


def test_lpips_heads_found_in_wheel_without_importing_it(monkeypatch):
    import sys

    monkeypatch.delenv("GPHM_LPIPS_HEADS", raising=False)
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    path = lpips_heads_path()
    assert "lpips" not in sys.modules  # importing lpips would import torchvision
    if path is None:
        pytest.skip("lpips is not installed (pip install --no-deps lpips)")
    assert path.parts[-3:] == ("weights", "v0.1", "alex.pth")
    assert [tuple(v.shape) for v in torch.load(path, map_location="cpu").values()] == [
        (1, c, 1, 1) for c in (64, 192, 384, 256, 256)
    ]


def _import_lpips_package():
    try:
        import lpips
        import torchvision  # noqa: F401
    except Exception as e:  # torchvision fails to import beside torch 2.13.0 CPU
        pytest.skip(f"needs the lpips package and torchvision ({type(e).__name__}: {e})")
    return lpips


@pytest.mark.parametrize("shape", [(1, 64, 64), (4, 96, 80), (2, 224, 224)])
def test_lpips_twin_matches_lpips_package(shape):
    """Same random backbone and the real heads: the twin equals lpips.LPIPS(net='alex')."""
    lpips = _import_lpips_package()
    torch.manual_seed(7)
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    backbone = {k.partition(".")[2]: v for k, v in ref.net.state_dict().items()}
    twin = LPIPSAlex.from_weights(backbone, ref.state_dict())
    metric = LPIPSMetric(twin, "alex", "random", "lpips wheel", backend="twin")
    x = torch.rand(*shape, 3)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        want = ref(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2), normalize=True).flatten()
    got = metric(x, y)
    print(
        f"LPIPS twin vs lpips {tuple(shape)}: max |diff| = {(got - want).abs().max():.3g}, "
        f"values {want.tolist()}"
    )
    assert got.shape == want.shape == (shape[0],)
    assert torch.allclose(got, want, rtol=0, atol=1e-5)


def test_load_lpips_prefers_package_and_agrees_with_twin(tmp_path, monkeypatch):
    """Where lpips imports, load_lpips uses it; the twin on the same files gives the same."""
    lpips = _import_lpips_package()
    _no_network(monkeypatch)
    backbone, _ = _random_alex_files(tmp_path)
    heads = lpips_heads_path()
    assert heads is not None and heads.is_relative_to(lpips.__path__[0])
    package, reason = load_lpips(weights=str(backbone))
    assert reason is None and package.backend == "lpips"
    _no_package(monkeypatch)
    twin, reason = load_lpips(weights=str(backbone), heads=str(heads))
    assert reason is None and twin.backend == "twin"
    x = torch.rand(3, 64, 72, 3)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(package(x, y), twin(x, y), rtol=0, atol=1e-5)
