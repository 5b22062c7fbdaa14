"""Learned latent codes: one identity code per subject, one expression code per
training frame (auto-decoder, DESIGN.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CodebookConfig", "Codebook"]


@dataclass
class CodebookConfig:
    dim: int = 64
    """Code dimension."""
    init_std: float = 0.01
    """Codes start as N(0, init_std²): near the mean, as in DeepSDF-style auto-decoders."""

    def __post_init__(self) -> None:
        if self.dim < 1 or self.init_std < 0:
            raise ValueError(f"dim must be >= 1 and init_std >= 0, got {self.dim}, {self.init_std}")


class Codebook(nn.Module):
    """``num_codes`` learnable vectors of size ``config.dim``.

    ``forward(index [...]) -> codes [..., dim]``; indices are validated so that an
    out-of-range subject/frame id names itself instead of failing inside the kernel.
    """

    def __init__(self, num_codes: int, config: CodebookConfig | None = None, name: str = "code"):
        super().__init__()
        if num_codes < 1:
            raise ValueError(f"{name} codebook needs at least one code, got {num_codes}")
        self.config = config or CodebookConfig()
        self.name = name
        self.codes = nn.Embedding(num_codes, self.config.dim)
        nn.init.normal_(self.codes.weight, std=self.config.init_std)

    @property
    def num_codes(self) -> int:
        return self.codes.num_embeddings

    def forward(self, index: Tensor) -> Tensor:
        if index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{self.name} indices must be integers, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_codes):
            raise IndexError(
                f"{self.name} index out of range [0, {self.num_codes}): "
                f"got {int(index.min())}..{int(index.max())}"
            )
        return self.codes(index)

    def mean(self) -> Tensor:  # [dim]
        """Mean code: the starting point for fitting an unseen subject/expression."""
        return self.codes.weight.mean(dim=0)

    def std(self, floor: float = 1e-3) -> Tensor:  # [dim]
        """Per-dimension standard deviation of the codes (at least ``floor``): with
        :meth:`mean`, the diagonal Gaussian prior that fitting keeps new codes near."""
        return self.codes.weight.std(dim=0, unbiased=False).clamp_min(floor)
