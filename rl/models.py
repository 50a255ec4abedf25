"""Policy models and tokenizers: load an HF checkpoint, or build a tiny one that needs no download, and
write a policy as an HF directory.

The tiny path builds a character-level tokenizer (printable ASCII, `tokenizers` WordLevel) and a
Llama/Qwen2/Qwen3 model from a transformers config; both save as a normal HF directory that
`AutoTokenizer` / `AutoModelForCausalLM` load. Training and generation code live elsewhere.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .config import ModelConfig
from .records import PolicyInfo

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.printable[:95] + "\n"  # digits, letters, punctuation, space, newline


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(CHARS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_model(cfg: ModelConfig, tokenizer, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    t = cfg.tiny
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[t.arch]
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
        max_position_embeddings=t.max_position, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_tokenizer(cfg: ModelConfig):
    """The policy's tokenizer: the project's char tokenizer for a tiny model, else the checkpoint's."""
    if cfg.path is None:
        return build_char_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(cfg.path)
    if tokenizer.pad_token_id is None:  # many base models ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: ModelConfig, seed: int, dtype: torch.dtype | None = None):
    """(model, tokenizer) on CPU, parameters in `dtype` (default model.dtype; the trainer asks for float32
    master weights whatever the checkpoint holds); the caller moves it to its device."""
    tokenizer = load_tokenizer(cfg)
    dtype = dtype or getattr(torch, cfg.dtype)
    if cfg.path is None:
        return build_tiny_model(cfg, tokenizer, seed, dtype), tokenizer
    return AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype), tokenizer


def save_policy(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor], tokenizer, dtype: str) -> None:
    """An HF directory of `model`'s config and tokenizer with the weights `state` (a full state dict in `dtype`):
    config.json records dtype (transformers 5 names the key `dtype`), one model.safetensors holds every tensor
    once (a tied LM head is stored as the embedding, as `save_pretrained` does)."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    config.dtype = dtype
    config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    every = dict(model.named_parameters(remove_duplicate=False))
    names = {n for n, _ in model.named_parameters()} | {n for n in state if n not in every}   # + persistent buffers
    save_file({k: v.contiguous() for k, v in state.items() if k in names}, str(Path(path) / "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(path)


def describe(model: torch.nn.Module, tokenizer) -> PolicyInfo:
    """What the driver and the rollout workers need to know about a policy: HF config, special ids, FLOP
    parameter count, layers and width (the ledger's attention term), LM head size."""
    c = model.config
    return PolicyInfo(c.to_dict(), tokenizer.eos_token_id, tokenizer.pad_token_id, count_flop_params(model),
                      c.num_hidden_layers, c.hidden_size, model.get_output_embeddings().weight.numel())


def describe_unloaded(cfg: ModelConfig, seed: int) -> PolicyInfo:
    """`describe` without reading or initialising any weights (the model is built on the meta device), for a
    driver that places no trainer (`branchrl generate`)."""
    tokenizer = load_tokenizer(cfg)
    with torch.device("meta"):
        if cfg.path is None:
            model = build_tiny_model(cfg, tokenizer, seed, torch.float32)
        else:
            from transformers import AutoConfig

            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.path))
    return describe(model, tokenizer)


def count_flop_params(model: torch.nn.Module) -> int:
    """N in the 2N / 6N FLOP rules: all parameters except the input embedding (LM head included)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - emb.numel() + (head.numel() if head is emb else 0)
