"""Build a tiny Hugging Face-format chat model in a few seconds, with no download: a byte-level BPE tokenizer trained
here on local text (the repo's data fixtures and its own source), a ChatML chat template as Qwen's instruct models
use, and a randomly initialised Qwen2 or Qwen3 decoder. The folder loads with AutoTokenizer /
AutoModelForCausalLM like any checkpoint, so `model.path` runs on CPU exactly as a real instruct model would
(configs/gsm8k_tiny_hf.yaml). It has learned nothing: it exercises the real-model path, not reasoning.

    python scripts/make_tiny_hf_model.py runs/tiny-qwen2 [--arch qwen3] [--vocab 2048] [--corpus FILE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen2.5-Instruct writes it (without its default system message)
CHAT_TEMPLATE = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{%- endif %}")


def corpus_files(extra: list[str]) -> list[Path]:
    """What the tokenizer learns merges from: the test fixtures (math word problems, code tasks) and the
    project's Python source, plus any files given."""
    found = sorted((ROOT / "tests" / "fixtures" / "data").rglob("*.jsonl"))
    found += sorted(p for folder in ("envs", "verifiers") for p in (ROOT / folder).rglob("*.py"))
    return [*found, *map(Path, extra)]


def train_tokenizer(files: list[Path], vocab: int):
    """A byte-level BPE (every byte is a token, so any text encodes) with the ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train([str(f) for f in files], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, arch: str, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    config_cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    config = config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write (created; must be empty if it exists)")
    parser.add_argument("--arch", choices=["qwen2", "qwen3"], default="qwen2")
    parser.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", nargs="*", default=[], help="more text files for the tokenizer")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"make_tiny_hf_model: error: {out} exists and is not an empty folder", file=sys.stderr)
        return 2
    if args.vocab < 300:
        print("make_tiny_hf_model: error: --vocab must be at least 300 (256 bytes, specials, merges)", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.corpus if not Path(f).is_file()]
    if missing:
        print(f"make_tiny_hf_model: error: corpus file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    tokenizer = train_tokenizer(corpus_files(args.corpus), args.vocab)
    model = build_model(tokenizer, args.arch, args.seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{out}: {args.arch}, {params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, chat template ChatML")
    return 0


if __name__ == "__main__":
    sys.exit(main())
