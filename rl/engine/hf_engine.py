"""Fallback engine for any transformers causal LM: the `Engine` interface over the model's own forward.

Runs architectures the plain decoder does not implement (GPT-2, Mistral, Gemma, RoPE scaling, ...)
so they still work, more slowly: HF's forward with its `DynamicCache`, left-padded lock-step rows
like `generate`. `select` reorders the cache with `Cache.reorder_cache` (the beam-search hook), so a
fork copies its parent's KV rows and never re-prefills, but nothing is shared between rows.
Deliberately not here: paged KV, admitting rows mid-flight, anything model-specific. transformers is
imported when an `HFDecoder` is built, so the plain engine stays usable without it.
"""

from __future__ import annotations

import sys

import torch

from .engine import check_prompts, per_prompt


class HFDecoder:
    """An `AutoModelForCausalLM` built from a config dict, loaded like `Decoder` (HF state dict names)."""

    def __init__(self, config: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.hf_config = AutoConfig.for_model(**config)
        self.model = AutoModelForCausalLM.from_config(self.hf_config, dtype=dtype).to(self.device).eval()

    @property
    def w(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Every parameter must be in `state`, except one tied to a parameter that is (lm_head to embeddings)."""
        result = self.model.load_state_dict({k: v.to(self.device, self.dtype) for k, v in state.items()}, strict=False)
        own = self.model.state_dict()
        loaded = {own[k].data_ptr() for k in state if k in own}
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
        if missing or result.unexpected_keys:
            raise ValueError(f"state dict does not fit {self.config['model_type']}: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")


class HFEngine:
    """Same interface as `Engine`: start / step / select (a repeated row index forks), batch_size, decoder;
    no `admit`: new rows join only through `start`, once the batch is done."""

    continuous_batching = False

    def __init__(self, decoder: HFDecoder, pad_id: int = 0, max_seq_len: int | None = None):
        """max_seq_len: prompt + new tokens per sequence; default the config's max_position_embeddings,
        unlimited for architectures without one."""
        self.decoder, self.pad_id = decoder, pad_id
        self.max_seq_len = max_seq_len or getattr(decoder.hf_config, "max_position_embeddings", None) or sys.maxsize
        self.cache = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)     # [B, T] 1 where a cache slot holds a real token
        self.capacity = 0                                   # slots allowed (longest prompt + max_new_tokens)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @torch.inference_mode()
    def start(self, prompts: list[list[int]], max_new_tokens: int | list[int]) -> torch.Tensor:
        """Prefill a new batch; returns next-token logits [B, V]. Bad prompts raise before any compute."""
        from transformers import DynamicCache

        check_prompts(prompts, max_new_tokens, self.max_seq_len)
        width = max(len(p) for p in prompts)
        tokens = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        self.mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            self.mask[i, width - len(p):] = 1
        self.mask = self.mask.to(self.decoder.device)
        self.cache = DynamicCache(config=self.decoder.hf_config)
        self.capacity = width + max(per_prompt(max_new_tokens, len(prompts)))   # lock-step: the longest need
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)                              # [B, S]
        return self._forward(tokens.to(self.decoder.device), positions)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B]); returns next-token logits [B, V]."""
        if not self.batch_size:
            raise RuntimeError("engine step on an empty batch: every row was dropped or none started; start rows first")
        if self.mask.shape[1] >= self.capacity:
            raise RuntimeError(f"engine cache full at {self.capacity} slots; raise max_new_tokens")
        positions = self.mask.sum(-1, keepdim=True)                                      # [B, 1]
        self.mask = torch.cat([self.mask, torch.ones_like(positions)], dim=1)
        return self._forward(tokens.to(self.decoder.device)[:, None], positions)

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows in this order; a repeated index forks that row (KV rows copied, prefix not recomputed)."""
        rows = rows.to(self.decoder.device)
        self.cache.reorder_cache(rows)
        self.mask = self.mask.index_select(0, rows)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.decoder.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                                 past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()
