"""Vectorized per-group statistics (no Python loops over groups)."""

from __future__ import annotations

import torch


def group_index(group: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..G-1; returns (index per row, G)."""
    uniq, index = torch.unique(group, return_inverse=True)
    return index, int(uniq.numel())


def group_sum(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over each row's group, broadcast back to rows: shape [B]."""
    index, n = group_index(group)
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return sums[index]


def group_count(group: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Number of rows in each row's group, shape [B]."""
    return group_sum(torch.ones_like(group, dtype=dtype), group)


def group_mean(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each row's group, shape [B].

    Summed relative to the group's maximum, so a group of equal values has exactly that value
    as its mean (a plain float32 sum / count can be an ulp off, e.g. for seven rewards of 0.7,
    and GRPO's division by std + eps would blow that ulp up to an advantage of about 0.06).
    """
    index, n = group_index(group)
    top = values.new_zeros(n).scatter_reduce(0, index, values, "amax", include_self=False)[index]
    return top + group_sum(values - top, group) / group_count(group, values.dtype)


def group_std(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) standard deviation within each row's group, shape [B].

    Groups of one row have no spread; they get 0.
    """
    count = group_count(group, values.dtype)
    centered = values - group_mean(values, group)
    var = group_sum(centered * centered, group) / (count - 1).clamp(min=1)
    return var.sqrt()
