"""Paged KV cache whose bookkeeping lives in preallocated tensors on the cache's device.

Token i of a row lives in slot i % page_size of page table[row, i // page_size]. Rows only append, so
a full page never changes again and any number of rows may share it (refcounts): `select` with a
repeated row shares the parent's pages and copies only a partially filled last page, so a fork
costs at most one page per layer, never a re-prefill. Page 0 is a trash page that is never handed
out: table entries past a row's pages hold 0, and padded rows of a static-shape step write there.

The pool is one tensor per layer for keys and one for values, [1, Hkv, pages * page_size, D]: the
sequence FlexAttention reads in place, written with index_put_ on the tensor itself (a write through a
view of a larger pool compiles into a copy of the layer). Everything a decode step needs is a tensor
updated in place: the block table, lengths, each page's
filled slots (`fill`, which is what attention masks with), refcounts and a stack of free pages.
`advance` is the decode step's bookkeeping as pure tensor ops (no Python per row, no host sync), so
it compiles into the step and replays inside a CUDA graph. `select` and `admit` run between steps
from the host and may sync. The host keeps only scalars: rows, the longest row, the least headroom
of any row and a lower bound on free pages, so it knows when to grow the pool without reading it.

The pool grows by doubling when a step might run out of free pages (the old pool is copied once;
`version` counts reallocations, which invalidate captured graphs). Deliberately not here:
eviction, prefix caching across batches, sliding windows, which tokens to run (the engine's).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class StepTensors(NamedTuple):
    """The cache's tensors a decode step of B rows reads and updates in place (views of the cache's own)."""

    keys: tuple[torch.Tensor, ...]    # per layer [1, Hkv, pages * page_size, D]: the pool, FlexAttention's layout
    values: tuple[torch.Tensor, ...]  # the same for values
    blocks: torch.Tensor   # [B, W] int32 block table, W >= pages; entries past a row's pages are 0
    lengths: torch.Tensor  # [B] long tokens cached per row
    fill: torch.Tensor     # [pages] int32 slots written per page
    refs: torch.Tensor     # [pages] int32 rows holding each page
    free: torch.Tensor     # [pages] long stack of free pages, free[:top]
    top: torch.Tensor      # [] long


class PagedKV:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, page_size: int = 16, max_seq_len: int = 2048,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, pages: int = 16,
                 rows: int = 8):
        self.page_size, self.device, self.dtype = page_size, torch.device(device), dtype
        self.width = math.ceil(max_seq_len / page_size)      # most pages one row may hold
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.rows, self.max_len, self.headroom = 0, 0, math.inf  # host scalars, see the module docstring
        self.version = 0
        self._alloc_pages(max(pages, 2))
        self._alloc_rows(rows)

    # ------------------------------------------------------------------ sizes
    @property
    def pages(self) -> int:
        return self.fill.shape[0]

    @property
    def table(self) -> torch.Tensor:
        """[R, width] int32 block table (a view of `blocks`, which is as wide as the pool for FlexAttention)."""
        return self.blocks[:, :self.width]

    @property
    def page_bytes(self) -> int:
        """Bytes of one page over every layer, keys and values."""
        return 2 * self.layers * self.kv_heads * self.page_size * self.head_dim * self.keys[0].element_size()

    @property
    def pool_bytes(self) -> int:
        return self.pages * self.page_bytes

    def page_view(self, pool: torch.Tensor) -> torch.Tensor:
        """A layer's keys or values as [Hkv, pages, page_size, D]."""
        return pool.view(self.kv_heads, self.pages, self.page_size, self.head_dim)

    @property
    def pages_in_use(self) -> int:
        return self.pages - 1 - int(self.top)

    def tensors(self, rows: int) -> StepTensors:
        return StepTensors(tuple(self.keys), tuple(self.values), self.blocks[:rows], self.lengths[:rows], self.fill,
                           self.refs, self.free, self.top)

    def row_pages(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths + self.page_size - 1) // self.page_size

    # ------------------------------------------------------------------ host-side operations
    def reset(self) -> None:
        """Drop every row; the pool keeps its size."""
        self.select(torch.zeros(0, dtype=torch.long, device=self.device))

    def admit(self, lengths: list[int], limits: list[int]) -> torch.Tensor:
        """Add rows holding lengths[i] tokens each (pages allocated here, filled by the caller's prefill), each
        allowed up to limits[i] tokens. Returns the cache slot (page * page_size + offset) of every new token,
        row-major: [sum(lengths)]."""
        n, old = len(lengths), self.rows
        self._ensure_rows(old + n)
        counts = [-(-k // self.page_size) for k in lengths]
        pages = self._take(sum(counts))                                               # [sum(counts)]
        dev = self.device
        c = torch.tensor(counts, device=dev)
        row = torch.repeat_interleave(torch.arange(n, device=dev), c)                # [sum(counts)]
        col = torch.arange(len(pages), device=dev) - torch.repeat_interleave(c.cumsum(0) - c, c)
        self.table[old + row, col] = pages.int()
        self.refs[pages] = 1
        lens = torch.tensor(lengths, device=dev)
        last = (lens - (c - 1) * self.page_size)[row]                                # slots used in a row's last page
        self.fill[pages] = torch.where(col == c[row] - 1, last, self.page_size).int()
        self.lengths[old:old + n] = lens
        self.limits[old:old + n] = torch.tensor(limits, device=dev)
        self.rows = old + n
        self.max_len = max([self.max_len] + lengths)
        self.headroom = min([self.headroom] + [b - a for a, b in zip(lengths, limits)])
        pos = torch.arange(max(lengths), device=dev)[None]                           # [1, S]
        r, p = (pos < lens[:, None]).nonzero(as_tuple=True)                          # [N] each
        return self.table[old + r, p // self.page_size].long() * self.page_size + p % self.page_size

    def extend(self, rows: list[int], counts: list[int]) -> torch.Tensor:
        """Append counts[i] tokens to live row rows[i] (pages allocated here, filled by the caller's chunked
        prefill): the row's last partial page is its own (`select` copied it on a fork), so the new tokens
        go after it and into fresh pages. Returns the cache slot of every new token, row-major: [sum(counts)]."""
        slots = []
        for r, k in zip(rows, counts):
            n, limit = int(self.lengths[r]), int(self.limits[r])
            if n + k > limit:
                raise ValueError(f"extend: row {r} holds {n} tokens; {k} more is over its limit of {limit}")
            have, need = -(-n // self.page_size), -(-(n + k) // self.page_size)
            if need > have:
                pages = self._take(need - have)
                self.table[r, have:need] = pages.int()
                self.refs[pages] = 1
            pos = torch.arange(n, n + k, device=self.device)                            # [k]
            page = self.table[r, pos // self.page_size].long()
            self.fill.scatter_reduce_(0, page, (pos % self.page_size + 1).int(), "amax")
            self.lengths[r] = n + k
            slots.append(page * self.page_size + pos % self.page_size)
        live = self.lengths[:self.rows]
        self.max_len = int(live.max()) if self.rows else 0
        self.headroom = int((self.limits[:self.rows] - live).min()) if self.rows else math.inf
        return torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long, device=self.device)

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows in this order; a repeated row shares its full pages and copies its partial last page."""
        old, n = self.rows, len(rows)
        if n == old and rows.device.type == "cpu" and torch.equal(rows, torch.arange(n)):
            return                                                                   # the common step: no change
        rows = rows.to(self.device)
        self._ensure_rows(n)
        width = -(-self.max_len // self.page_size)                                   # pages of the longest row
        before = self.refs.clone()
        held = torch.bincount(rows, minlength=old)[:old]                             # [old] holders of each row
        self.refs.index_add_(0, self.table[:old, :width].flatten().long(),           # trash entries hit page 0
                             (held - 1).int()[:, None].expand(old, width).flatten())
        table, lengths, limits = self.table[rows, :width], self.lengths[rows], self.limits[rows]  # [n, width], [n]
        first = torch.full((old,), n, device=self.device).scatter_reduce(0, rows, torch.arange(n, device=self.device),
                                                                         "amin")
        copy = ((first[rows] != torch.arange(n, device=self.device)) & (lengths % self.page_size != 0)).nonzero()[:, 0]
        if len(copy):                                                                # forks that copy a partial page
            col = (lengths[copy] - 1) // self.page_size
            src = table[copy, col].long()
            dst = self._take(len(copy))
            for pool in self.keys + self.values:
                view = self.page_view(pool)
                view[:, dst] = view[:, src]
            self.fill[dst], self.refs[dst] = self.fill[src], 1
            self.refs.index_add_(0, src, torch.full_like(src, -1, dtype=torch.int32))
            table[copy, col] = dst.int()
        self._release((before > 0) & (self.refs[:len(before)] == 0))                   # the pool may have grown
        self.table[:max(n, old), :width] = 0
        self.table[:n, :width], self.lengths[:n], self.limits[:n] = table, lengths, limits
        self.lengths[n:old], self.limits[n:old] = 0, 0
        self.rows = n
        longest, least = torch.stack([lengths.max(), (limits - lengths).min()]).tolist() if n else (0, math.inf)
        self.max_len, self.headroom = longest, least

    def reserve(self, need: int, rows: int) -> None:
        """Before a decode step of `need` live rows padded to `rows`: that many pages free (the pool grows if
        not) and room for the padded rows."""
        self._ensure_rows(rows)
        if self.free_hint < need:
            self.free_hint = int(self.top)
            if self.free_hint < need:
                self._grow(need)

    def stepped(self) -> None:
        """Host scalars after a decode step appended one token to every row."""
        self.free_hint -= self.rows
        self.max_len += 1
        self.headroom -= 1

    # ------------------------------------------------------------------ storage
    def _take(self, k: int) -> torch.Tensor:
        """k free pages off the stack (the pool grows first if needed): [k] long."""
        top = int(self.top)
        if top < k:
            self._grow(k)
            top = int(self.top)
        self.top -= k
        self.free_hint = top - k
        return self.free[top - k:top].clone()

    def _release(self, freed: torch.Tensor) -> None:
        """Push pages (a bool mask over the first pages) back on the free stack; never the trash page."""
        freed[0] = False
        idx = freed.nonzero()[:, 0]
        top = int(self.top)
        self.free[top:top + len(idx)] = idx
        self.top += len(idx)
        self.free_hint = top + len(idx)

    def _ensure_rows(self, n: int) -> None:
        if n > self.blocks.shape[0]:
            old = self.blocks, self.lengths, self.limits
            self._alloc_rows(max(n, 2 * self.blocks.shape[0]))
            for new, prev in zip((self.blocks, self.lengths, self.limits), old):
                new[:len(prev)] = prev
            self.version += 1

    def _alloc_rows(self, rows: int) -> None:
        self.blocks = torch.zeros(rows, max(self.width, self.pages), dtype=torch.int32, device=self.device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)   # tokens cached per row
        self.limits = torch.zeros(rows, dtype=torch.long, device=self.device)    # most tokens a row may hold

    def _alloc_pages(self, pages: int) -> None:
        shape = (1, self.kv_heads, pages * self.page_size, self.head_dim)
        self.keys, self.values = ([torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)]
                                  for _ in range(2))
        self.fill = torch.zeros(pages, dtype=torch.int32, device=self.device)    # slots written per page
        self.refs = torch.zeros(pages, dtype=torch.int32, device=self.device)    # rows holding each page
        self.free = torch.zeros(pages, dtype=torch.long, device=self.device)     # stack: free[:top] are free
        self.free[:pages - 1] = torch.arange(pages - 1, 0, -1, device=self.device)
        self.top = torch.tensor(pages - 1, device=self.device)
        self.free_hint = pages - 1

    def _grow(self, need: int) -> None:
        """Double the pool (or more, to have `need` free pages); rows, tables and free pages carry over."""
        old_pages, top = self.pages, int(self.top)
        pools, fill, refs, free = self.keys + self.values, self.fill, self.refs, self.free
        self._alloc_pages(max(2 * old_pages, old_pages + need - top))
        for new, old in zip(self.keys + self.values, pools):
            new[:, :, :old.shape[2]] = old
        self.fill[:old_pages], self.refs[:old_pages] = fill, refs
        added = torch.arange(self.pages - 1, old_pages - 1, -1, device=self.device)
        self.free[:top], self.free[top:top + len(added)] = free[:top], added
        self.top.fill_(top + len(added))
        self.free_hint = top + len(added)
        if self.blocks.shape[1] < self.pages:
            blocks = self.blocks
            self.blocks = torch.zeros(blocks.shape[0], self.pages, dtype=torch.int32, device=self.device)
            self.blocks[:, :blocks.shape[1]] = blocks
        self.version += 1


def advance(t: StepTensors, active: torch.Tensor | None, page_size: int):
    """The decode step's bookkeeping: append one token to every active row ([B] bool; None: every row) of a
    static batch, in place in `t`. Rows starting a page take one off the free stack (the caller reserved
    enough). Returns the new token's position and cache slot (page * page_size + offset; inactive rows get
    a slot of the trash page 0) and the pages each row now reads ([B] each, 0 for inactive rows)."""
    pos = t.lengths.clone()                                                  # [B] where the new token goes
    col, off = pos // page_size, pos % page_size
    need = off == 0 if active is None else active & (off == 0)               # rows starting a new page
    rank = need.cumsum(0) - need.long()                                      # [B] exclusive count
    fresh = t.free[(t.top - 1 - rank).clamp(min=0)]                          # [B] a page for each needing row
    current = t.blocks.gather(1, col[:, None])[:, 0].long()                  # [B]
    page = torch.where(need, fresh, current)
    t.blocks.scatter_(1, col[:, None], page[:, None].int())                  # unchanged unless a page was added
    t.refs.index_add_(0, page, need.int())
    t.top.sub_(need.sum())
    if active is None:
        t.fill.index_put_((page,), (off + 1).int())
        t.lengths.add_(1)
        return pos, page * page_size + off, col + 1
    page = torch.where(active, page, 0)                                      # padded rows write the trash page
    t.fill.index_put_((page,), torch.where(active, off + 1, 0).int())
    t.lengths.add_(active.long())
    return pos, page * page_size + off, torch.where(active, col + 1, 0)
