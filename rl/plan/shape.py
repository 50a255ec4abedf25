"""A decoder-only model's shape from its Hugging Face config.json: what the planner needs to price it.

Counts parameters from the config alone (no weights, no torch): Llama / Qwen2 / Qwen3 / Mistral-style blocks
(attention with grouped KV heads, a gated MLP, RMS norms), q/k/v biases where the config has them (Qwen2, or
`attention_bias`), q/k norms for Qwen3. `flop_params` is N of the ledger's 2N rule: everything but the input
embedding, the LM head included even when tied (the ledger's `count_flop_params`). Mixture-of-experts configs
are refused rather than priced wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from branchrl.config import ConfigError

from .hardware import WEIGHT_BYTES_PER_PARAM


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    params: int          # stored parameters (a tied head once)
    flop_params: int     # N in 2N per token
    head_params: int
    kv_bytes_per_token: int   # K and V of every layer, bf16

    @property
    def weight_bytes(self) -> int:
        return WEIGHT_BYTES_PER_PARAM * self.params


def load_shape(path: str | Path) -> Shape:
    """From a config.json file or an HF model directory holding one."""
    p = Path(path)
    file = p / "config.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"--model {path}: no config.json there (give a config.json or an HF model directory)")
    try:
        c = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model {file} is not JSON: {e}") from None
    return shape_from_config(c, name=c.get("_name_or_path") or p.name)


def shape_from_config(c: dict, name: str = "model") -> Shape:
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if k not in c]
    if missing:
        raise ConfigError(f"model config {name!r} lacks {', '.join(missing)}; is it a decoder-only HF config.json?")
    if any(k in c for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ConfigError(f"model config {name!r} is a mixture of experts; the planner prices dense models only")
    d, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or d // heads
    bias = c.get("attention_bias", c.get("model_type") == "qwen2")
    qk_norm = 2 * hd if c.get("model_type") == "qwen3" else 0
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d + (heads * hd + 2 * kv * hd if bias else 0)
    block = attn + 3 * d * c["intermediate_size"] + 2 * d + qk_norm
    head = c["vocab_size"] * d
    body = layers * block + d   # blocks and the final norm
    tied = c.get("tie_word_embeddings", False)
    return Shape(name, layers, d, params=body + head + (0 if tied else head), flop_params=body + head,
                 head_params=head, kv_bytes_per_token=2 * layers * kv * hd * WEIGHT_BYTES_PER_PARAM)
