"""Sequence packing: crops of different sizes through the transformer blocks in one pass.

Multi-crop gives token sequences of different lengths: at 224 px, global crops of 1 + 196 tokens and local crops of
1 + 36. Run separately, every block is called once per size (dinov2's `forward_features_list` without xformers).
DINOv2 instead concatenates them into one sequence and attends with a block-diagonal mask, so each crop still sees
only its own tokens (xformers' BlockDiagonalMask, "Implementation tricks" in the paper). Here the crops are packed in
groups, one group per row of a batch:

    sets (N_s, T_s, D) for s = 1..S  ->  packed (n, sum_s (N_s / n) T_s, D),   n = gcd(N_1, ..., N_S)

e.g. 2B global crops of 65 tokens and 4B local crops of 17: n = 2B rows of 65 + 2 x 17 = 99 tokens. The mask is
(T, T) bool, True where a token may attend (its own crop), shared by every row, and goes to PyTorch's SDPA (timm's
Attention passes it on). Linear layers, norms and MLPs see the same tokens as before, so the outputs equal separate
forwards; attention does more work, because a dense mask still computes the masked-out scores (block-sparse kernels,
xformers or flex_attention, skip them). Measured speeds are in lesson 7 and the README.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PackedLayout:
    counts: list[int]       # N_s: crops in each set
    lengths: list[int]      # T_s: tokens per crop of each set
    rows: int               # n: packed rows

    @property
    def per_row(self) -> list[int]:
        return [c // self.rows for c in self.counts]


def pack_sequences(token_sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, PackedLayout]:
    """[(N_s, T_s, D)] -> packed (n, T, D), the block-diagonal mask (T, T) bool and the layout to unpack with."""
    counts, lengths = [len(t) for t in token_sets], [t.shape[1] for t in token_sets]
    layout = PackedLayout(counts, lengths, math.gcd(*counts))
    packed = torch.cat([t.reshape(layout.rows, k * t.shape[1], t.shape[2])
                        for t, k in zip(token_sets, layout.per_row)], dim=1)
    return packed, block_diagonal_mask(layout, packed.device), layout


def block_diagonal_mask(layout: PackedLayout, device=None) -> torch.Tensor:
    """(T, T) bool: True where query and key belong to the same crop."""
    crop_of_token = torch.cat([torch.arange(k, device=device).repeat_interleave(length) + offset
                               for offset, k, length in zip(_offsets(layout.per_row), layout.per_row, layout.lengths)])
    return crop_of_token[:, None] == crop_of_token[None, :]


def unpack_sequences(packed: torch.Tensor, layout: PackedLayout) -> list[torch.Tensor]:
    """packed (n, T, D) -> [(N_s, T_s, D)], the inverse of pack_sequences."""
    sizes = [k * length for k, length in zip(layout.per_row, layout.lengths)]
    return [part.reshape(count, length, packed.shape[-1])
            for part, count, length in zip(packed.split(sizes, dim=1), layout.counts, layout.lengths)]


def _offsets(per_row: list[int]) -> list[int]:
    out, total = [], 0
    for k in per_row:
        out.append(total)
        total += k
    return out
