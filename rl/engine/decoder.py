"""Llama / Qwen2 / Qwen3 decoder over a paged KV cache, from an HF config dict and state dict.

Two forwards share one layer: `prefill` runs whole prompts (causal attention over the new tokens
only, since an admitted row starts empty) and writes their keys and values into pages; `decode`
runs one token per row, writes it at the slot `advance` chose, and lets an attention function read
the cache (`attention.py`: a gather for eager decoding, FlexAttention over pages in place when
compiled). Both write keys and values with one index_put_ on each layer's pool tensor. Weights keep
their HF names (`model.layers.0.self_attn.q_proj.weight`, ...), so a trainer's `state_dict()` or a
checkpoint's safetensors load directly, and reloading copies into the same tensors, so a compiled or
captured step keeps working. Deliberately not here: sampling, batching policy, other architectures
(they raise `UnsupportedModel`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .paged_kv import PagedKV

SUPPORTED = {"llama", "qwen2", "qwen3"}
Attend = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, rotated queries [B, H, D]) -> [B, H * D]


class UnsupportedModel(ValueError):
    """The checkpoint's architecture or RoPE variant is not implemented by this decoder."""


def rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
        raise UnsupportedModel(f"RoPE type {kind!r} is not supported by the engine")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [..., H, D]; cos/sin: [..., 1, D]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Decoder:
    """Holds weights; `prefill` and `decode` run tokens against a paged KV cache they append to."""

    def __init__(self, config: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if config.get("model_type") not in SUPPORTED:
            raise UnsupportedModel(f"model_type {config.get('model_type')!r} not supported (have {sorted(SUPPORTED)})")
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // self.heads
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.tied = bool(config.get("tie_word_embeddings", False))
        theta = rope_theta(config)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, device=self.device).float() / self.head_dim)
        self.w: dict[str, torch.Tensor] = {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy into the tensors already held when the names and shapes match (compiled steps keep them)."""
        if "lm_head.weight" not in state and not self.tied:
            raise UnsupportedModel("state dict has no lm_head.weight and embeddings are not tied")
        held = self.w.keys() - {"lm_head.weight"}
        if held and held <= state.keys() <= self.w.keys() and all(self.w[k].shape == v.shape for k, v in state.items()):
            with torch.no_grad():
                for k, v in state.items():
                    self.w[k].copy_(v)
            return
        self.w = {k: v.detach().to(self.device, self.dtype, copy=True) for k, v in state.items()}
        if "lm_head.weight" not in self.w:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def empty_cache(self, page_size: int = 16, max_seq_len: int = 2048) -> PagedKV:
        return PagedKV(self.layers, self.kv_heads, self.head_dim, page_size, max_seq_len, self.device, self.dtype)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq                   # [..., D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[..., None, :]                  # [..., 1, D]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _layer(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One block over x [..., hidden]; attend(layer, q, k, v) with q [..., H, D], k, v [..., Hkv, D]."""
        p = f"model.layers.{i}."
        lead = x.shape[:-1]
        h = rms_norm(x, self.w[p + "input_layernorm.weight"], self.eps)
        q = self._linear(h, p + "self_attn.q_proj").view(*lead, self.heads, self.head_dim)
        k = self._linear(h, p + "self_attn.k_proj").view(*lead, self.kv_heads, self.head_dim)
        if p + "self_attn.q_norm.weight" in self.w:  # Qwen3: RMSNorm over each head before RoPE
            q = rms_norm(q, self.w[p + "self_attn.q_norm.weight"], self.eps)
            k = rms_norm(k, self.w[p + "self_attn.k_norm.weight"], self.eps)
        v = self._linear(h, p + "self_attn.v_proj").view(*lead, self.kv_heads, self.head_dim)
        a = attend(i, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)      # [..., H * D]
        x = x + self._linear(a, p + "self_attn.o_proj")
        h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
        gate, up = self._linear(h, p + "mlp.gate_proj"), self._linear(h, p + "mlp.up_proj")
        return x + self._linear(F.silu(gate) * up, p + "mlp.down_proj")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, self.w["model.norm.weight"], self.eps), self.w["lm_head.weight"]).float()

    def _write(self, pool: torch.Tensor, slots: torch.Tensor, new: torch.Tensor) -> None:
        """new [T, Hkv, D] into pool [1, Hkv, pages * page_size, D] at token slots [T]: one index_put_ on the
        pool itself (written through a view, a compiled step would copy the whole layer)."""
        zero = torch.zeros(1, dtype=torch.long, device=slots.device)
        heads = torch.arange(self.kv_heads, device=slots.device)[:, None]                  # [Hkv, 1]
        pool.index_put_((zero, heads, slots[None]), new.transpose(0, 1))                   # [Hkv, T, D]

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> torch.Tensor:
        """tokens [N, S] right-padded to lengths [N], new rows; slots [T]: the cache slot (page * page_size +
        offset) of each real token in row-major order (`PagedKV.admit`). Writes their keys and values into the
        layers' pools; returns logits [N, V] after each row's last token."""
        N, S = tokens.shape
        real = torch.arange(S, device=tokens.device)[None] < lengths[:, None]             # [N, S]
        mask = real[:, None, None, :] & torch.ones(S, S, dtype=torch.bool, device=tokens.device).tril()  # [N,1,S,S]

        def attend(i, q, k, v):                                                           # q [N, S, H, D]
            self._write(keys[i], slots, k[real])
            self._write(values[i], slots, v[real])
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                               enable_gqa=self.kv_heads != self.heads)    # [N, H, S, D]
            return a.transpose(1, 2).reshape(N, S, -1)

        x = F.embedding(tokens, self.w["model.embed_tokens.weight"])
        cos, sin = self._rope(torch.arange(S, device=tokens.device).expand(N, S))
        for i in range(self.layers):
            x = self._layer(i, x, cos, sin, attend)
        return self._logits(x[torch.arange(N, device=x.device), lengths - 1])

    def extend(self, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor,
               blocks: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], page: int) -> torch.Tensor:
        """A chunked prefill into live rows: tokens [N, S] right-padded to lengths [N] go after each row's starts[N]
        cached tokens, at slots [T] (row-major, `PagedKV.extend`); blocks [N, P] the rows' pages, enough for the
        longest. Each new token attends to its row's cache and the new tokens before it, so only the S new
        tokens are computed. Returns logits [N, V] after each row's last new token."""
        N, S = tokens.shape
        pos = starts[:, None] + torch.arange(S, device=tokens.device)[None]                 # [N, S]
        real = torch.arange(S, device=tokens.device)[None] < lengths[:, None]              # [N, S]
        _, kv_heads, T, D = keys[0].shape
        P = blocks.shape[1]
        heads = torch.arange(kv_heads, device=tokens.device)[None, :, None] * (T // page)   # [1, Hkv, 1]
        index = (blocks.long()[:, None, :] + heads).flatten()                               # [N * Hkv * P]
        mask = (torch.arange(P * page, device=tokens.device)[None, None] <= pos[:, :, None])[:, None]  # [N,1,S,P*page]

        def attend(i, q, k, v):                                                            # q [N, S, H, D]
            self._write(keys[i], slots, k[real])
            self._write(values[i], slots, v[real])
            kc, vc = (pool[i].view(kv_heads * T // page, page * D).index_select(0, index).view(N, kv_heads, P * page, D)
                      for pool in (keys, values))                                          # [N, Hkv, P * page, D]
            a = F.scaled_dot_product_attention(q.transpose(1, 2), kc, vc, attn_mask=mask,
                                               enable_gqa=self.kv_heads != self.heads)     # [N, H, S, D]
            return a.transpose(1, 2).reshape(N, S, -1)

        x = F.embedding(tokens, self.w["model.embed_tokens.weight"])
        cos, sin = self._rope(pos)
        for i in range(self.layers):
            x = self._layer(i, x, cos, sin, attend)
        return self._logits(x[torch.arange(N, device=x.device), lengths - 1])

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, keys: tuple[torch.Tensor, ...],
               values: tuple[torch.Tensor, ...], attend: Attend) -> torch.Tensor:
        """One token per row: tokens, pos, slots [B] (its cache slot, page * page_size + offset). Writes each
        token's keys and values there; attend(layer, q [B, H, D]) reads the cache. Returns logits [B, V]."""

        def write_then_attend(i, q, k, v):                                                 # k, v [B, Hkv, D]
            self._write(keys[i], slots, k)
            self._write(values[i], slots, v)
            return attend(i, q)

        x = F.embedding(tokens, self.w["model.embed_tokens.weight"])                         # [B, hidden]
        cos, sin = self._rope(pos)
        for i in range(self.layers):
            x = self._layer(i, x, cos, sin, write_then_attend)
        return self._logits(x)
