"""The decode step as one function, and the three ways it runs: eager, compiled, or a CUDA graph per bucket.

`decode_step` is the cache bookkeeping (`paged_kv.advance`) plus the decoder's one-token forward, all
tensor ops with no host sync, so `torch.compile(fullgraph=True)` takes it whole. Eager runs it at the
exact batch with the gather attention. `compile` and `graph` pad the batch to a bucket (a power of
two, at least 8): the step reads its tokens and which rows take one (padding never; a row parked while
it waits for a tool neither) from static buffers and FlexAttention reads the pages in place, so each
bucket is one compiled graph whatever rows are parked; `graph` also captures each bucket as a CUDA graph
and replays it (on a CPU it runs the same compiled step uncaptured, its CPU twin). A capture runs the
step with no active row, which changes no cache state. Growing the pool or the row capacity reallocates
the cache's tensors, and a larger bucket the static buffers: the next step recompiles and recaptures.
Deliberately not here: prefill (eager, once per prompt), sampling, anything about which rows run.
"""

from __future__ import annotations

import logging

import torch

from .attention import gathered, paged_flex
from .decoder import Decoder
from .paged_kv import PagedKV, StepTensors, advance

log = logging.getLogger(__name__)
MODES = ("eager", "compile", "graph")


def bucket(rows: int) -> int:
    """The padded batch size of a compiled step: the next power of two, at least 8."""
    return max(8, 1 << (rows - 1).bit_length())


def decode_step(decoder: Decoder, tokens: torch.Tensor, active: torch.Tensor | None, t: StepTensors, page_size: int,
                paged: bool, width: int) -> torch.Tensor:
    """Append tokens [B] to the rows of `t` where active [B] is True (None: all); returns logits [B, V].
    paged: FlexAttention over pages in place (compiled only), else the gather over `width` pages per row."""
    pos, slots, pages = advance(t, active, page_size)
    if paged:
        attend = paged_flex(t.keys, t.values, t.blocks, pages, t.fill, decoder.heads // decoder.kv_heads, page_size)
    else:
        attend = gathered(t.keys, t.values, t.blocks[:, :width], pos + 1, page_size)
    return decoder.decode(tokens, pos, slots, t.keys, t.values, attend)


def _padded_step(decoder: Decoder, tokens: torch.Tensor, active: torch.Tensor, t: StepTensors, page_size: int):
    return decode_step(decoder, tokens, active, t, page_size, True, 0)


class StepRunner:
    """Runs decode steps in one of MODES; `__call__(tokens [B], active [B] bool or None)` returns logits [B, V], valid
    until the next step (an inactive row's are meaningless)."""

    def __init__(self, decoder: Decoder, kv: PagedKV, mode: str = "eager"):
        if mode not in MODES:
            raise ValueError(f"decode mode {mode!r} is not one of {', '.join(MODES)}")
        self.decoder, self.kv, self.mode = decoder, kv, mode
        self.graphs = mode == "graph" and decoder.device.type == "cuda"
        if mode == "graph" and not self.graphs:
            log.warning("decode mode 'graph' needs a CUDA device; running the compiled step without capture")
        self.compiled = None
        if mode != "eager":
            # one graph per bucket and cache size; the default limit of 8 would silently fall back to eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.compiled = torch.compile(_padded_step, fullgraph=True, dynamic=False)
        self.tokens = torch.zeros(0, dtype=torch.long, device=decoder.device)       # static input buffers
        self.active = torch.zeros(0, dtype=torch.bool, device=decoder.device)
        self.captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def padded(self, rows: int) -> int:
        return rows if self.compiled is None else bucket(rows)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """active: the rows that take their token (None: all); the others keep their cache as it is."""
        B, kv = len(tokens), self.kv
        if self.compiled is None:
            width = -(-(kv.max_len + 1) // kv.page_size)                              # pages of the longest row
            return decode_step(self.decoder, tokens, active, kv.tensors(B), kv.page_size, False, width)
        size = bucket(B)
        if len(self.tokens) < size:   # captured graphs read the old buffers: capture again
            self.tokens = torch.zeros(size, dtype=torch.long, device=tokens.device)
            self.active = torch.zeros(size, dtype=torch.bool, device=tokens.device)
            self.captured = {}
        self.tokens[:B].copy_(tokens)
        if active is None:
            self.active[:B].fill_(True)
        else:
            self.active[:B].copy_(active)
        self.active[B:size].fill_(False)
        if not self.graphs:
            return self._run(size)[:B]
        key = (size, kv.version)
        if key not in self.captured:
            self.captured = {k: g for k, g in self.captured.items() if k[1] == kv.version}  # stale after a regrow
            self.captured[key] = self._capture(size)
        graph, out = self.captured[key]
        graph.replay()
        return out[:B]

    def _run(self, size: int) -> torch.Tensor:
        return self.compiled(self.decoder, self.tokens[:size], self.active[:size], self.kv.tensors(size),
                             self.kv.page_size)

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Compile and warm up on a side stream, then capture, all with no active row (a no-op on the cache)."""
        active = self.active.clone()
        self.active.fill_(False)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(size)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._run(size)
        self.active.copy_(active)
        return graph, out
