"""Llama / Qwen2 / Qwen3 decoder forward over a paged KV cache, from an HF config dict and state dict.

Weights keep their HF names (`model.layers.0.self_attn.q_proj.weight`, ...), so a trainer's
`state_dict()` or a checkpoint's safetensors load directly. Deliberately not here: sampling,
batching policy, other architectures (they raise `UnsupportedModel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .paged_kv import Layout, PagedKV

SUPPORTED = {"llama", "qwen2", "qwen3"}


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
    # x: [B, S, H, D]; cos/sin: [B, S, 1, D]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Decoder:
    """Holds weights; `forward` runs new tokens per row against a paged KV cache it appends to."""

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
        self.w = {k: v.detach().to(self.device, self.dtype) for k, v in state.items()}
        if "lm_head.weight" not in self.w:
            if not self.tied:
                raise UnsupportedModel("state dict has no lm_head.weight and embeddings are not tied")
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def empty_cache(self, page_size: int = 16) -> PagedKV:
        return PagedKV(self.layers, self.kv_heads, self.head_dim, page_size, self.device, self.dtype)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, kv: PagedKV, at: Layout) -> torch.Tensor:
        """tokens: [B, S], right-padded as `at` (from `kv.layout`) says. Returns logits [B, V] after each
        row's last real token."""
        B, S = tokens.shape
        x = F.embedding(tokens, self.w["model.embed_tokens.weight"])
        freqs = at.positions.float()[..., None] * self.inv_freq                # [B, S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None]                    # [B, S, 1, D]
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], self.eps)
            q = self._linear(h, p + "self_attn.q_proj").view(B, S, self.heads, self.head_dim)
            k = self._linear(h, p + "self_attn.k_proj").view(B, S, self.kv_heads, self.head_dim)
            if p + "self_attn.q_norm.weight" in self.w:  # Qwen3: RMSNorm over each head before RoPE
                q = rms_norm(q, self.w[p + "self_attn.q_norm.weight"], self.eps)
                k = rms_norm(k, self.w[p + "self_attn.k_norm.weight"], self.eps)
            v = self._linear(h, p + "self_attn.v_proj").view(B, S, self.kv_heads, self.head_dim)
            K, V = kv.update(i, apply_rope(k, cos, sin), v, at)                # [B, Hkv, T, D]
            a = F.scaled_dot_product_attention(apply_rope(q, cos, sin).transpose(1, 2), K, V, attn_mask=at.mask,
                                               enable_gqa=self.kv_heads != self.heads)  # [B, H, S, D]
            x = x + self._linear(a.transpose(1, 2).reshape(B, S, -1), p + "self_attn.o_proj")
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
            gate, up = self._linear(h, p + "mlp.gate_proj"), self._linear(h, p + "mlp.up_proj")
            x = x + self._linear(F.silu(gate) * up, p + "mlp.down_proj")
        x = rms_norm(x[torch.arange(B, device=x.device), at.last], self.w["model.norm.weight"], self.eps)
        return F.linear(x, self.w["lm_head.weight"]).float()
