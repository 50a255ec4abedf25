"""Lock-step batched decoding over left-padded prompts, with `select` to drop, keep or fork rows.

Every row shares one time index, so a fork (a duplicated row index in `select`) copies the parent's
KV rows and keeps decoding at the same step: the shared prefix is never recomputed. Continuous
batching (rows joining mid-flight) is not done here.
"""

from __future__ import annotations

import torch

from .decoder import Decoder


class PromptTooLong(ValueError):
    """A prompt plus its new tokens does not fit the engine's per-sequence limit."""


def check_prompts(prompts: list[list[int]], max_new_tokens: int, limit: int, names: list[str] | None = None) -> None:
    """Raise before any compute: PromptTooLong past `limit`, ValueError for an empty batch or prompt.
    `names` label the prompts in the message (default: their index)."""
    if not prompts:
        raise ValueError("no prompts to start")
    for i, p in enumerate(prompts):
        name = repr(names[i]) if names else str(i)
        if not p:
            raise ValueError(f"prompt {name} is empty; every prompt needs at least one token (e.g. BOS)")
        if len(p) + max_new_tokens > limit:
            raise PromptTooLong(f"prompt {name} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that is "
                                f"{len(p) + max_new_tokens}, over the engine's limit of {limit} tokens per sequence")


class Engine:
    def __init__(self, decoder: Decoder, pad_id: int = 0, max_seq_len: int | None = None):
        """max_seq_len: prompt + new tokens per sequence; default the config's max_position_embeddings."""
        self.decoder, self.pad_id = decoder, pad_id
        self.max_seq_len = max_seq_len or decoder.config["max_position_embeddings"]
        self.kv: list = []
        self.valid = torch.zeros(0, 0, dtype=torch.bool)   # [B, Tcap] which cache slots hold real tokens
        self.t = 0                                          # slots used so far (same for every row)

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> torch.Tensor:
        """Prefill a new batch; returns next-token logits [B, V]. Bad prompts raise before any compute."""
        check_prompts(prompts, max_new_tokens, self.max_seq_len)
        dev = self.decoder.device
        width = max(len(p) for p in prompts)
        capacity = width + max_new_tokens
        tokens = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        self.valid = torch.zeros(len(prompts), capacity, dtype=torch.bool)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            self.valid[i, width - len(p):width] = True
        self.valid = self.valid.to(dev)
        positions = (self.valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)           # [B, S]
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        mask = causal[None] & self.valid[:, None, :width]                               # [B, S, S]
        mask |= torch.eye(width, dtype=torch.bool, device=dev)[None]  # pad rows attend to themselves: no NaN
        self.kv = self.decoder.empty_cache(len(prompts), capacity)
        self.t = width
        return self.decoder.forward(tokens.to(dev), positions, self.kv, 0, mask)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B]); returns next-token logits [B, V]."""
        if self.t >= self.valid.shape[1]:
            raise RuntimeError(f"engine cache full at {self.t} slots; raise max_new_tokens")
        positions = self.valid[:, :self.t].sum(-1, keepdim=True)                       # [B, 1]
        self.valid[:, self.t] = True
        mask = self.valid[:, None, :self.t + 1]                                          # [B, 1, T]
        logits = self.decoder.forward(tokens.to(self.decoder.device)[:, None], positions, self.kv, self.t, mask)
        self.t += 1
        return logits

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows in this order; a repeated index forks that row (KV copied, prefix not recomputed)."""
        rows = rows.to(self.decoder.device)
        self.kv = [(K.index_select(0, rows), V.index_select(0, rows)) for K, V in self.kv]
        self.valid = self.valid.index_select(0, rows)
