"""Paged KV cache: fixed-size pages in one pool, a block table per row, refcounts so forks share pages.

A row's cache is its list of pages; token i of the row lives in slot i % page_size of page
table[i // page_size]. Rows only ever append, so a full page never changes again and can be shared
by any number of rows: `select` with a repeated row index shares all of the parent's pages and
copies only a partially filled last page (copy-on-write, done at the fork), so a fork costs at most
one page per layer, never a re-prefill. Attention reads each row's live pages, gathered into a
padded [B, Hkv, T, D] view per layer (plain PyTorch; a paged-attention kernel would skip the gather).

The pool grows by doubling when it runs out of free pages (the old pool is copied once), and keeps
its size across batches. Deliberately not here: eviction, prefix caching across batches, sliding
windows, anything about which tokens to run (that is the engine's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    """Where one forward's new tokens go and what each of its rows attends to."""

    positions: torch.Tensor  # [B, S] long, position of each new token in its row
    mask: torch.Tensor       # [B, 1, S, T] bool, True where a query may attend to a gathered key
    src: torch.Tensor        # [N] long, index into the flattened [B * S] new tokens of each real one
    page: torch.Tensor       # [N] long, the page each real new token is written to
    offset: torch.Tensor     # [N] long, and its slot in that page
    gather: torch.Tensor     # [B * Hkv * P] long, (page, head) blocks to read, row-major in [B, Hkv, P]
    last: torch.Tensor       # [B] long, index in S of each row's last real token


class PagedKV:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, page_size: int = 16,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.page_size, self.device, self.kv_heads = page_size, torch.device(device), kv_heads
        # page-major, then head: one (page, head) block of [page_size, D] is contiguous, so gathering
        # blocks yields [B, Hkv, T, D] directly, the layout attention reads fastest
        self.kv = torch.zeros(layers, 2, 0, kv_heads, page_size, head_dim, device=device, dtype=dtype)
        self.refs: list[int] = []          # rows holding each page
        self.free: list[int] = []          # pages with refs == 0
        self.tables: list[list[int]] = []  # per row: its pages in order
        self.lengths: list[int] = []       # per row: tokens cached

    @property
    def pages_in_use(self) -> int:
        return len(self.refs) - len(self.free)

    @property
    def page_bytes(self) -> int:
        return self.kv[:, :, :1].numel() * self.kv.element_size()

    def reset(self) -> None:
        """Drop every row; the pool keeps its size."""
        self.refs = [0] * len(self.refs)
        self.free = list(range(len(self.refs)))[::-1]
        self.tables, self.lengths = [], []

    def add_rows(self, n: int) -> None:
        self.tables += [[] for _ in range(n)]
        self.lengths += [0] * n

    def select(self, rows: list[int]) -> None:
        """Keep rows in this order; a repeated row shares its full pages and copies its partial last page."""
        tables, seen, copies = [], set(), []
        for r in rows:
            table = list(self.tables[r])
            if r in seen and self.lengths[r] % self.page_size:
                table[-1] = self._alloc()
                copies.append((self.tables[r][-1], table[-1]))
            seen.add(r)
            for p in table:
                self.refs[p] += 1
            tables.append(table)
        if copies:
            src, dst = (torch.tensor(x, device=self.device) for x in zip(*copies))
            self.kv[:, :, dst] = self.kv[:, :, src]
        for table in self.tables:
            self._release(table)
        self.tables, self.lengths = tables, [self.lengths[r] for r in rows]

    def layout(self, rows: list[int], counts: list[int]) -> Layout:
        """Append counts[i] tokens to row rows[i] (pages allocated here); the forward writes them in order."""
        for r, n in zip(rows, counts):
            need = -(-(self.lengths[r] + n) // self.page_size) - len(self.tables[r])
            for _ in range(need):
                self.tables[r].append(self._alloc())
                self.refs[self.tables[r][-1]] = 1
        dev, width = self.device, max(len(self.tables[r]) for r in rows)
        pages = torch.tensor([self.tables[r] + [0] * (width - len(self.tables[r])) for r in rows], device=dev)  # [B, P]
        before = torch.tensor([self.lengths[r] for r in rows], device=dev)[:, None]                 # [B, 1]
        count = torch.tensor(counts, device=dev)[:, None]                                           # [B, 1]
        j = torch.arange(max(counts), device=dev)[None]                                            # [1, S]
        positions = before + j                                                                     # [B, S]
        src = (j < count).flatten().nonzero()[:, 0]                                                # [N]
        pos = positions.flatten()[src]                                                             # [N]
        page = pages.flatten()[src // j.shape[1] * width + pos // self.page_size]                  # [N]
        heads = torch.arange(self.kv_heads, device=dev)[None, :, None]                             # [1, Hkv, 1]
        keys = torch.arange(width * self.page_size, device=dev)                                    # [T]
        mask = (keys <= positions[..., None]) & (keys < (before + count)[..., None])               # [B, S, T]
        for r, n in zip(rows, counts):
            self.lengths[r] += n
        return Layout(positions, mask[:, None], src, page, pos % self.page_size,
                      (pages[:, None] * self.kv_heads + heads).flatten(), count[:, 0] - 1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new k, v ([B, S, Hkv, D]) at their slots; return each row's keys and values [B, Hkv, T, D]."""
        B, H = at.last.shape[0], self.kv_heads
        out = []
        for pool, new in zip(self.kv[layer], (k, v)):                            # pool: [pages, Hkv, page, D]
            pool[at.page, :, at.offset] = new.flatten(0, 1).index_select(0, at.src)  # [N, Hkv, D]
            blocks = pool.flatten(0, 1).flatten(1).index_select(0, at.gather)    # [B * Hkv * P, page * D]
            out.append(blocks.view(B, H, -1, pool.shape[-1]))                    # [B, Hkv, T, D]
        return out[0], out[1]

    def _alloc(self) -> int:
        if not self.free:
            self._grow()
        return self.free.pop()

    def _release(self, table: list[int]) -> None:
        for p in table:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free.append(p)

    def _grow(self) -> None:
        old = self.kv.shape[2]
        new = max(2 * old, 16)
        grown = self.kv.new_zeros(*self.kv.shape[:2], new, *self.kv.shape[3:])
        grown[:, :, :old] = self.kv
        self.kv = grown
        self.refs += [0] * (new - old)
        self.free += list(range(new - 1, old - 1, -1))
