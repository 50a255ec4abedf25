"""Seconds per weight sync, object store vs collective broadcast, for a model size and N rollout workers.

    .venv/bin/python bench/weight_sync.py [--model tiny|qwen2.5-0.5b] [--workers 2] [--syncs 5]
        [--paths object_store collective] [--gpus] [key=value ...]

Launches the roles on an embedded Ray (one trainer, N rollout workers, one verifier that stays idle) once
per path and times `loop.sync` as a run does: trainer rank 0 packs a CPU copy with its sha256 checksum and
puts it in the object store, then the workers load it (object_store: each fetches that copy; collective:
trainer rank 0 broadcasts over the group) and each checksums what its engine holds. One untimed sync
first (it builds the group), then --syncs timed ones; `publish` times rank 0's pack + checksum + put
alone, so `sync - publish` is the delivery. --model qwen2.5-0.5b writes a random model of Qwen2.5-0.5B's
shape (494M parameters, 151936-token vocabulary, tied embeddings; the state dict counts the tied matrix
twice, as it is sent) to DIR/qwen2.5-0.5b-DTYPE once (--dir); pass model.dtype=bfloat16 to halve it.
--gpus gives the trainer and every worker a whole GPU each, so `collective` runs over NCCL
(`auto` would pick it too); without it the broadcast is gloo over TCP. Not a test: it asserts nothing
beyond the sync's own checksum check; docs/BENCHMARKS.md records what it printed, with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

QWEN05B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
           "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
           "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}
TINY = ["model.tiny.hidden_size=128", "model.tiny.layers=4", "model.tiny.heads=4", "model.tiny.kv_heads=4",
        "model.tiny.intermediate_size=384"]   # configs/demo.yaml's shape


def qwen_shaped(out: Path, dtype: str) -> Path:
    """A random Qwen2.5-0.5B-shaped HF checkpoint with the project's char tokenizer (the weights are what is timed)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from branchrl.models import build_char_tokenizer

    path = out / f"qwen2.5-0.5b-{dtype}"
    if not (path / "config.json").exists():
        tokenizer = build_char_tokenizer()
        config = Qwen2Config(**QWEN05B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def measure(overrides: list[str], syncs: int) -> dict:
    from branchrl.config import load_config
    from branchrl.launch import launch
    from branchrl.loop import sync

    roles = launch(load_config(None, overrides))
    try:
        sync(roles)   # untimed: the first fetch, or building the broadcast group
        seconds = [sync(roles)[1] for _ in range(syncs)]
        publish = []
        for _ in range(syncs):
            t0 = time.perf_counter()
            roles.trainer.publish()   # the gather on every rank; the weights stay in the object store
            publish.append(time.perf_counter() - t0)
        return {"bytes": roles.published.bytes, "seconds": seconds, "publish": statistics.median(publish),
                "fallbacks": roles.faults.sync_fallbacks}
    finally:
        roles.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    parser.add_argument("--workers", type=int, default=2, help="rollout workers")
    parser.add_argument("--syncs", type=int, default=5, help="timed syncs per path")
    parser.add_argument("--paths", nargs="+", default=["object_store", "collective"],
                        choices=["object_store", "collective", "auto"])
    parser.add_argument("--gpus", action="store_true", help="a whole GPU for the trainer and each worker (NCCL)")
    parser.add_argument("--dir", type=Path, default=Path("runs/weight_sync"), help="where the random checkpoint goes")
    parser.add_argument("overrides", nargs="*", help="key=value for the config (e.g. model.dtype=bfloat16)")
    args = parser.parse_args()

    import ray

    from branchrl.config import load_config, weight_sync_backend

    dtype = load_config(None, args.overrides).model.dtype
    model = TINY if args.model == "tiny" else [f"model.path={qwen_shaped(args.dir, dtype)}"]
    gpus = ["train.gpus=1", "rollout.gpus_per_worker=1"] if args.gpus else []
    base = [*model, f"rollout.workers={args.workers}", "rollout.cpus_per_worker=0.1", "train.cpus=0.1",
            "verify.cpus_per_worker=0.1", "verify.workers=1", "train.threads=1", *gpus, *args.overrides]
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, logging_level="WARNING")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("\n| path | backend | workers | state bytes | s/sync median (min-max) | publish s | "
          "delivery s | fallbacks |\n|---|---|---|---|---|---|---|---|")
    for path in args.paths:
        overrides = [*base, f"rollout.weight_sync={path}"]
        r = measure(overrides, args.syncs)
        median = statistics.median(r["seconds"])
        backend = weight_sync_backend(load_config(None, overrides)) or "object store"
        print(f"| {path} | {backend} | {args.workers} | {r['bytes'] / 1e6:.1f} MB | {median:.3f} "
              f"({min(r['seconds']):.3f}-{max(r['seconds']):.3f}) | {r['publish']:.3f} | "
              f"{median - r['publish']:.3f} | {r['fallbacks']} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
