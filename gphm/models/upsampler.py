"""Ψ: convolutional upsampler from low-res rendered features to high-res RGB."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["UpsamplerConfig", "Upsampler"]


@dataclass
class UpsamplerConfig:
    factor: int = 2
    """Upsampling factor (a power of two); lr size × factor = hr size."""
    width: int = 64
    """Channels of the convolutional trunk."""
    blocks: int = 2
    """Residual blocks before upsampling."""

    def __post_init__(self) -> None:
        if self.factor < 1 or self.factor & (self.factor - 1):
            raise ValueError(f"factor must be a power of two >= 1, got {self.factor}")
        if self.width < 1 or self.blocks < 0:
            raise ValueError(f"width must be >= 1 and blocks >= 0, got {self.width}, {self.blocks}")


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class Upsampler(nn.Module):
    """``features [B, h, w, C] -> rgb [B, h·f, w·f, 3]`` in [0, 1] (channel-last I/O).

    Residual design: the output is the bilinearly upsampled first three input channels
    (the "lr RGB" that stage 1 supervises directly) plus a learned correction, so an
    untrained Ψ already returns a sensible image.
    """

    def __init__(self, in_channels: int, config: UpsamplerConfig | None = None):
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"the upsampler needs >= 3 input channels, got {in_channels}")
        self.config = cfg = config or UpsamplerConfig()
        self.in_channels = in_channels
        self.head = nn.Conv2d(in_channels, cfg.width, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(cfg.width) for _ in range(cfg.blocks)])
        ups = []
        for _ in range(cfg.factor.bit_length() - 1):
            ups += [nn.Conv2d(cfg.width, cfg.width * 4, 3, padding=1), nn.PixelShuffle(2)]
            ups += [nn.LeakyReLU(0.2)]
        self.up = nn.Sequential(*ups)
        self.tail = nn.Conv2d(cfg.width, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[-1] != self.in_channels:
            raise ValueError(
                f"features must be [B, h, w, {self.in_channels}], got {list(features.shape)}"
            )
        x = features.permute(0, 3, 1, 2)
        base = x[:, :3]
        if self.config.factor > 1:
            base = nn.functional.interpolate(
                base, scale_factor=self.config.factor, mode="bilinear", align_corners=False
            )
        y = self.tail(self.up(self.body(self.head(x))))
        return (base + y).clamp(0.0, 1.0).permute(0, 2, 3, 1)
