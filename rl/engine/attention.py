"""Decode attention over the paged KV cache, two ways, and the KV bytes each moves per step.

`gathered`: plain PyTorch for eager decoding. Each layer copies every row's pages into a padded
[B, Hkv, T, D] tensor that SDPA then reads, T the longest row: the KV is read, written and read again.
`paged_flex`: FlexAttention reading the pool in place. The pool of one layer is one [1, Hkv, pages *
page_size, D] sequence (`PagedKV`); a BlockMask whose KV blocks are pages lists each row's pages (its block-table
row), so the kernel visits only them, and its mask_mod hides the unwritten slots of a page (`fill`).
The query heads that share a KV head are folded into the query length ([B, Hkv, G, D]), so each page
is read once per KV head whatever the GQA ratio. It runs only compiled (eager FlexAttention would
score the whole pool). Deliberately not here: prefill attention (the decoder's), sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .paged_kv import PagedKV


def gathered(keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...], table: torch.Tensor,
             lengths: torch.Tensor, page: int):
    """Attention for decode.attend: keys, values per layer [1, Hkv, N * page, D]; table [B, P] int32, the pages
    of the longest row; lengths [B] tokens each row attends to (its new one included)."""
    B, P = table.shape
    _, kv_heads, T, D = keys[0].shape
    heads = torch.arange(kv_heads, device=table.device)[None, :, None] * (T // page)     # [1, Hkv, 1]
    blocks = (table.long()[:, None, :] + heads).flatten()                                # [B * Hkv * P]
    mask = (torch.arange(P * page, device=table.device) < lengths[:, None])[:, None, None]  # [B, 1, 1, T]

    def attend(i: int, q: torch.Tensor) -> torch.Tensor:                                 # q [B, H, D]
        k, v = (pool[i].view(kv_heads * T // page, page * D).index_select(0, blocks).view(B, kv_heads, P * page, D)
                for pool in (keys, values))                                              # [B, Hkv, T, D]
        a = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=q.shape[1] != kv_heads)
        return a.reshape(B, -1)                                                          # [B, H * D]

    return attend


def paged_flex(keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...], blocks: torch.Tensor,
               pages: torch.Tensor, fill: torch.Tensor, groups: int, page: int):
    """Attention for decode.attend: keys, values per layer [1, Hkv, N * page, D]; blocks [B, W] int32
    block-table rows (W >= N: the CPU kernel wants the index as wide as the sequence); pages [B] how many of
    them each row reads; fill [N] written slots per page; groups: query heads per KV head."""
    _, kv_heads, T, D = keys[0].shape
    B = blocks.shape[0]
    # the CPU decoding kernel (one query per head) scans the whole pool for ragged rows: give it two
    width = 2 if groups == 1 and blocks.device.type == "cpu" else groups

    def written(b, h, q_idx, kv_idx):
        return kv_idx % page < fill[kv_idx // page]

    mask = BlockMask.from_kv_blocks(pages.int()[:, None, None], blocks[:, None, None], BLOCK_SIZE=(128, page),
                                    mask_mod=written, seq_lengths=(width, T), compute_q_blocks=False)

    def attend(i: int, q: torch.Tensor) -> torch.Tensor:                                 # q [B, H, D]
        # scaled here, not in the kernel: a new 4-d buffer, which the CPU template needs (a view of the
        # [B, H, D] rotated queries it misreads)
        q = q.view(B, kv_heads, groups, D).expand(B, kv_heads, width, D) * D ** -0.5     # [B, Hkv, G, D]
        out = flex_attention(q, keys[i], values[i], block_mask=mask, scale=1.0)          # [B, Hkv, G, D]
        return out[:, :, :groups].reshape(B, -1)                                         # [B, H * D]

    return attend


def step_bytes(kv: PagedKV, rows: int, paged: bool) -> tuple[int, int]:
    """(KV bytes the next decode step moves, live KV bytes it must read) for `rows` rows: live = every row's
    tokens after the step once; moved = what the attention reads and writes, from the same block tables the
    step uses (the gather: each row padded to the longest, read, written, read; FlexAttention: each row's
    pages read once per KV head), plus the new token's keys and values written."""
    per_token = kv.page_bytes // kv.page_size
    lengths = kv.lengths[:rows] + 1
    live = int(lengths.sum()) * per_token
    if paged:
        read = int(kv.row_pages(lengths).sum()) * kv.page_bytes
    else:
        read = 3 * rows * int(kv.row_pages(lengths.max())) * kv.page_bytes
    return read + rows * per_token, live
