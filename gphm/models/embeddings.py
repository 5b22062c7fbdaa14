"""Learned latent codes: one identity code per subject, one expression code per
training frame (auto-decoder, docs/architecture.md §1)."""

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

    def _rows(self, rows: Tensor | list[int] | None) -> Tensor:  # [R, dim]
        w = self.codes.weight
        if rows is None:
            return w
        index = torch.as_tensor(rows, dtype=torch.long, device=w.device).reshape(-1)
        if index.numel() == 0:
            raise ValueError(f"{self.name} codebook statistics need at least one row")
        return self(index)  # validates the range

    def mean(self, rows: Tensor | list[int] | None = None) -> Tensor:  # [dim]
        """Mean code over ``rows`` (indices; default all): the starting point for fitting
        an unseen subject/expression. Pass the trained rows: a row that was never
        optimised (a held-out frame) still holds its random initialisation."""
        return self._rows(rows).mean(dim=0)

    def std(self, rows: Tensor | list[int] | None = None, floor: float = 1e-3) -> Tensor:
        """Per-dimension standard deviation [dim] of the codes over ``rows`` (default all),
        at least ``floor``: with :meth:`mean`, the diagonal Gaussian prior that fitting
        keeps new codes near."""
        return self._rows(rows).std(dim=0, unbiased=False).clamp_min(floor)
