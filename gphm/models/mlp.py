"""Positional encoding and MLPs (the f_* networks of docs/architecture.md §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["PositionalEncodingConfig", "PositionalEncoding", "MLPConfig", "MLP"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": lambda: nn.Softplus(beta=100),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
}


@dataclass
class PositionalEncodingConfig:
    num_frequencies: int = 6
    """Octaves L: features sin/cos(2^k·π·x) for k = 0..L-1."""
    include_input: bool = True
    """Append the raw input to the encoding."""

    def __post_init__(self) -> None:
        if self.num_frequencies < 0:
            raise ValueError(f"num_frequencies must be >= 0, got {self.num_frequencies}")


class PositionalEncoding(nn.Module):
    """NeRF-style encoding ``x [..., d] -> [..., d·(2L + include_input)]``.

    Frequencies are ``2^k·π`` so that inputs in the canonical cube [-1, 1] see the
    lowest octave as one period across the cube.
    """

    def __init__(self, in_dim: int, config: PositionalEncodingConfig | None = None):
        super().__init__()
        self.config = config or PositionalEncodingConfig()
        self.in_dim = in_dim
        freqs = (2.0 ** torch.arange(self.config.num_frequencies)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.config.num_frequencies + int(self.config.include_input))

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected input [..., {self.in_dim}], got {list(x.shape)}")
        scaled = (x[..., None, :] * self.freqs[:, None]).flatten(-2)  # [..., L·d]
        parts = [x] if self.config.include_input else []
        return torch.cat(parts + [scaled.sin(), scaled.cos()], dim=-1)


@dataclass
class MLPConfig:
    width: int = 128
    """Hidden width."""
    depth: int = 4
    """Number of hidden layers (linear + activation)."""
    skips: tuple[int, ...] = ()
    """Hidden layers whose input is concatenated with the network input (NeRF skip)."""
    activation: str = "relu"
    """One of relu, softplus (β=100, for SDFs), silu, gelu, leaky_relu."""
    zero_init_last: bool = False
    """Zero-initialise the output layer (a residual branch that starts as identity)."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 0:
            raise ValueError(f"width must be >= 1 and depth >= 0, got {self.width}, {self.depth}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        bad = [s for s in self.skips if not 0 < s < self.depth]
        if bad:
            raise ValueError(f"skips must index hidden layers 1..{self.depth - 1}, got {bad}")


class MLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]`` fully connected network."""

    def __init__(self, in_dim: int, out_dim: int, config: MLPConfig | None = None):
        super().__init__()
        self.config = cfg = config or MLPConfig()
        self.in_dim, self.out_dim = in_dim, out_dim
        layers = []
        dim = in_dim
        for i in range(cfg.depth):
            if i in cfg.skips:
                dim += in_dim
            layers.append(nn.Linear(dim, cfg.width))
            dim = cfg.width
        self.hidden = nn.ModuleList(layers)
        self.act = _ACTIVATIONS[cfg.activation]()
        self.out = nn.Linear(dim, out_dim)
        if cfg.zero_init_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected input [..., {self.in_dim}], got {list(x.shape)}")
        h = x
        for i, layer in enumerate(self.hidden):
            if i in self.config.skips:
                h = torch.cat([h, x], dim=-1)
            h = self.act(layer(h))
        return self.out(h)
