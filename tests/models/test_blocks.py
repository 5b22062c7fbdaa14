import math

import pytest
import torch

from gphm.models.embeddings import Codebook, CodebookConfig
from gphm.models.mlp import MLP, MLPConfig, PositionalEncoding, PositionalEncodingConfig
from gphm.models.upsampler import Upsampler, UpsamplerConfig


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_positional_encoding_values_and_shapes(lead):
    pe = PositionalEncoding(3, PositionalEncodingConfig(num_frequencies=4))
    x = torch.rand(*lead, 3) * 2 - 1
    y = pe(x)
    assert y.shape == (*lead, pe.out_dim) and pe.out_dim == 3 * 9
    # Layout: [x, sin(2^k π x_d) for k, d ..., cos(...)] with k-major order.
    k, d = 2, 1
    assert torch.allclose(y[..., 3 + k * 3 + d], torch.sin(4 * math.pi * x[..., d]), atol=1e-5)
    assert torch.allclose(y[..., 3 + 12 + k * 3 + d], torch.cos(4 * math.pi * x[..., d]), atol=1e-5)


def test_mlp_skips_zero_init_and_errors():
    mlp = MLP(7, 5, MLPConfig(width=16, depth=4, skips=(2,), zero_init_last=True))
    assert mlp.hidden[2].in_features == 16 + 7
    x = torch.randn(2, 3, 7)
    assert torch.equal(mlp(x), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 7\]"):
        mlp(torch.randn(4, 6))
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPConfig(activation="tanhh")
    with pytest.raises(ValueError, match="skips must index"):
        MLPConfig(depth=2, skips=(3,))


def test_mlp_learns_a_function():
    torch.manual_seed(0)
    mlp = MLP(1, 1, MLPConfig(width=32, depth=2))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = x**2
    for _ in range(300):
        loss = ((mlp(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_codebook_lookup_and_range_errors():
    cb = Codebook(4, CodebookConfig(dim=8), name="identity")
    assert cb(torch.tensor([[0, 3]])).shape == (1, 2, 8)
    assert cb.mean().shape == (8,)
    with pytest.raises(IndexError, match=r"identity index out of range \[0, 4\)"):
        cb(torch.tensor([4]))
    with pytest.raises(TypeError, match="integers"):
        cb(torch.tensor([0.0]))


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upsampler_starts_as_bilinear_upsampling(factor):
    up = Upsampler(32, UpsamplerConfig(factor=factor, width=8, blocks=1))
    feats = torch.rand(2, 8, 6, 32)
    out = up(feats)
    assert out.shape == (2, 8 * factor, 6 * factor, 3)
    ref = torch.nn.functional.interpolate(
        feats[..., :3].permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear"
    ).permute(0, 2, 3, 1)
    assert torch.allclose(out, ref.clamp(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        UpsamplerConfig(factor=3)
