"""Batched decoding over a paged KV cache, with `select` to drop, keep or fork rows and `admit` to add them.

Each row has its own length and positions, so rows can join a running batch (`admit`: continuous
batching) and a fork (a repeated row index in `select`) shares the parent's KV pages: the prefix is
never recomputed nor copied, only a partially filled last page is. A step runs as `decode` says
(`step.py`: eager, compiled or CUDA-graph replay) and does no Python work per row: the cache's
bookkeeping is on the device and the host keeps a few scalars. Deliberately not here: sampling,
scheduling which prompts to admit when, and stop conditions (the caller's).
"""

from __future__ import annotations

import torch

from .decoder import Decoder
from .step import StepRunner


class PromptTooLong(ValueError):
    """A prompt plus its new tokens does not fit the engine's per-sequence limit."""


def check_prompts(prompts: list[list[int]], max_new_tokens: int | list[int], limit: int,
                  names: list[str] | None = None) -> None:
    """Raise before any compute: PromptTooLong past `limit`, ValueError for an empty batch or prompt.
    max_new_tokens: one for all prompts or one per prompt. `names` label the prompts (default: index)."""
    if not prompts:
        raise ValueError("no prompts to start")
    for i, (p, max_new_tokens) in enumerate(zip(prompts, per_prompt(max_new_tokens, len(prompts)))):
        name = repr(names[i]) if names else str(i)
        if not p:
            raise ValueError(f"prompt {name} is empty; every prompt needs at least one token (e.g. BOS)")
        if len(p) + max_new_tokens > limit:
            raise PromptTooLong(f"prompt {name} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that is "
                                f"{len(p) + max_new_tokens}, over the engine's limit of {limit} tokens per sequence")


def per_prompt(max_new_tokens: int | list[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    if len(max_new_tokens) != n:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {n} prompts")
    return list(max_new_tokens)


class Engine:
    continuous_batching = True  # `admit` adds rows while others are mid-decode

    def __init__(self, decoder: Decoder, pad_id: int = 0, max_seq_len: int | None = None, page_size: int = 16,
                 decode: str = "eager"):
        """max_seq_len: prompt + new tokens per sequence; default the config's max_position_embeddings.
        decode: how steps run, one of step.MODES (eager | compile | graph)."""
        self.decoder, self.pad_id = decoder, pad_id
        self.max_seq_len = max_seq_len or decoder.config["max_position_embeddings"]
        self.kv = decoder.empty_cache(page_size, self.max_seq_len)
        self.runner = StepRunner(decoder, self.kv, decode)

    @property
    def batch_size(self) -> int:
        return self.kv.rows

    def start(self, prompts: list[list[int]], max_new_tokens: int | list[int]) -> torch.Tensor:
        """Drop every row and prefill new ones; returns next-token logits [B, V]. Bad prompts raise first."""
        check_prompts(prompts, max_new_tokens, self.max_seq_len)
        self.kv.reset()
        return self.admit(prompts, max_new_tokens)

    @torch.no_grad()
    def admit(self, prompts: list[list[int]], max_new_tokens: int | list[int]) -> torch.Tensor:
        """Prefill prompts as new rows after the current ones; returns their next-token logits [N, V].
        max_new_tokens: one for all or one per prompt. The next `step` takes a token for every row."""
        check_prompts(prompts, max_new_tokens, self.max_seq_len)
        lengths = [len(p) for p in prompts]
        tokens = torch.full((len(prompts), max(lengths)), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = torch.tensor(p, dtype=torch.long)
        limits = [n + k for n, k in zip(lengths, per_prompt(max_new_tokens, len(prompts)))]
        slots = self.kv.admit(lengths, limits)
        device = self.decoder.device
        return self.decoder.prefill(tokens.to(device), torch.tensor(lengths, device=device), slots, self.kv.keys,
                                    self.kv.values)

    @torch.no_grad()
    def extend(self, rows: list[int], tokens: list[list[int]]) -> torch.Tensor:
        """Append many tokens to live rows (a tool's output): a chunked prefill into each row's own pages, its
        prefix never recomputed. rows: engine row indices; returns next-token logits [len(rows), V]."""
        if not rows or any(not t for t in tokens):
            raise ValueError("extend needs at least one row and at least one token per row")
        if not all(0 <= r < self.batch_size for r in rows) or len(set(rows)) != len(rows):
            raise IndexError(f"extend: rows {rows} must be distinct live rows of the batch of {self.batch_size}")
        starts = self.kv.lengths[torch.tensor(rows, device=self.kv.device)].clone()
        counts = [len(t) for t in tokens]
        slots = self.kv.extend(rows, counts)
        batch = torch.full((len(rows), max(counts)), self.pad_id, dtype=torch.long)
        for i, t in enumerate(tokens):
            batch[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        width = -(-self.kv.max_len // self.kv.page_size)
        device = self.decoder.device
        blocks = self.kv.table[torch.tensor(rows, device=self.kv.device), :width]
        return self.decoder.extend(batch.to(device), starts, torch.tensor(counts, device=device), slots, blocks,
                                   self.kv.keys, self.kv.values, self.kv.page_size)

    def step(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Append one token per row ([B]); returns next-token logits [B, V], valid until the next step.
        active [B] bool: only those rows take their token (the others, e.g. waiting for a tool, keep their
        cache as it is and their logits are meaningless), in every decode mode."""
        rows = self.batch_size
        if not rows:
            raise RuntimeError("engine step on an empty batch: every row was dropped or none started; "
                               "start or admit rows first")
        if self.kv.headroom <= 0:   # a lower bound (parked rows lower it too): look at the rows themselves
            room = self.kv.limits[:rows] - self.kv.lengths[:rows]
            if active is not None:
                room = torch.where(active.to(room.device), room, room.max())
            self.kv.headroom = int(room.min())
        if self.kv.headroom <= 0:
            full = int((self.kv.lengths[:rows] >= self.kv.limits[:rows]).nonzero()[0, 0])
            raise RuntimeError(f"engine cache full: row {full} holds {int(self.kv.limits[full])} tokens "
                               f"(prompt + max_new_tokens); raise max_new_tokens")
        self.kv.reserve(rows, self.runner.padded(rows))
        device = self.decoder.device
        logits = self.runner(tokens.to(device), None if active is None else active.to(device))
        self.kv.stepped()
        return logits

    @torch.no_grad()
    def select(self, rows: torch.Tensor) -> None:
        """Keep rows in this order; a repeated index forks that row (its KV pages shared, not recomputed)."""
        if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < self.batch_size:
            raise IndexError(f"select: row indices {int(rows.min())}..{int(rows.max())} outside the batch of "
                             f"{self.batch_size} rows")
        self.kv.select(rows)
