"""How far the rollout engine's log-probs are from the trainer's, per sampled token, in bf16 (and fp32 for scale).

The real roles in-process: a Trainer (FSDP2, fp32 master weights, model.dtype compute) publishes its weights, a
RolloutWorker (the engine) samples independent chains at temperature 1 and records each token's log-prob, and the
trainer recomputes them (`Trainer.forward_only`, the `train.old_logprobs: recompute` pass). Two figures per case,
mean and max |delta log p| over the sampled tokens:

- rollout: engine vs trainer. What the PPO ratio sees at the start of an update with `old_logprobs: rollout`
  (and what truncated importance sampling corrects with `recompute`).
- recompute: trainer vs trainer, the same tokens packed into other batches (shuffled): what the ratio sees at
  the start of an update with `old_logprobs: recompute`.

Shapes: the project's tiny model (the demo's width, char vocabulary) and a Qwen2.5-0.5B-shaped model with random
weights (bench/train_memory.py writes it once). Random weights give near-uniform distributions over 152k tokens,
so the figures measure the kernels' numerics, not a trained model's.

    .venv/bin/python bench/logprob_mismatch.py                      # CPU: tiny and qwen2.5-0.5b, bf16 and fp32
    python bench/logprob_mismatch.py --shapes qwen2.5-1.5b --gpu     # on a GPU

Lines starting with ROW are for bench/gpu_check.sh. Record results in docs/BENCHMARKS.md. Not a test.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from train_memory import model_dir

TINY = ["model.tiny.hidden_size=128", "model.tiny.layers=4", "model.tiny.heads=4", "model.tiny.kv_heads=4",
        "model.tiny.intermediate_size=384", "model.tiny.max_position=128"]


def roles(shape: str, dtype: str, args):
    """(trainer, rollout worker holding its weights), built from a config as a run builds them."""
    from branchrl.config import load_config
    from branchrl.rollout.worker import RolloutWorker
    from branchrl.training.trainer import Trainer

    model = TINY if shape == "tiny" else [f"model.path={model_dir(shape, None, 1024, Path(args.workdir))}"]
    gpu = ["train.gpus=1", "rollout.gpus_per_worker=1"] if args.gpu else []
    cfg = load_config(None, [*model, f"model.dtype={dtype}", "train.algo=grpo", "branch.policy=independent",
                             f"branch.roots={args.roots}", f"branch.max_leaves={args.roots}", "rollout.temperature=1.0",
                             f"rollout.max_new_tokens={args.new}", f"train.threads={args.threads}",
                             f"rollout.threads_per_worker={args.threads}", *gpu])
    trainer = Trainer(cfg)
    info = trainer.describe()
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, rank=0)
    worker.set_weights(trainer.publish()[1])
    return trainer, worker


def samples(trainer, worker, args) -> list:
    """PGSamples of the chains the engine samples from random prompts (rewards alternate, so every tree counts)."""
    from branchrl.training.advantages import grpo_samples

    gen = torch.Generator().manual_seed(0)
    vocab = trainer.model.config.vocab_size
    prompts = [(f"p{i}", torch.randint(4, vocab, (args.prompt,), generator=gen).tolist()) for i in range(args.prompts)]
    trees, _ = worker.rollout(prompts, step=1)
    for tree in trees:
        for i, leaf in enumerate(tree.leaves()):
            tree.nodes[leaf].reward = float(i % 2)
    return [s for tree in trees for s in grpo_samples(tree)]


def gaps(a: list[list[float]], b: list[list[float]]) -> tuple[float, float, int]:
    flat = [abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)]
    return sum(flat) / len(flat), max(flat), len(flat)


def measure(shape: str, dtype: str, args) -> dict:
    from branchrl.training.objectives import POLICY_GRADIENT

    trainer, worker = roles(shape, dtype, args)
    batch = samples(trainer, worker, args)
    temperature = trainer.cfg.rollout.temperature
    mine, _ = trainer.forward_only(batch, POLICY_GRADIENT.sequence, temperature)
    order = list(range(len(batch)))
    random.Random(1).shuffle(order)
    repacked, _ = trainer.forward_only([batch[i] for i in order], POLICY_GRADIENT.sequence, temperature)
    again = [None] * len(batch)
    for slot, i in enumerate(order):
        again[i] = repacked[slot]
    rollout = gaps([x.old_logprobs for x in batch], mine)
    recompute = gaps(again, mine)
    return {"shape": shape, "dtype": dtype, "tokens": rollout[2], "rollout": rollout[:2], "recompute": recompute[:2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "qwen2.5-0.5b"])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--roots", type=int, default=4, help="chains per prompt")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--new", type=int, default=48, help="generated tokens per chain (at most)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="trainer and engine on the GPU")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "branchrl-bench-models"))
    args = ap.parse_args()
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(f"# {device}, torch {torch.__version__}; {args.prompts} prompts x {args.roots} chains x <= {args.new} tokens")
    print("| shape | dtype | tokens | rollout: mean abs(delta log p) | max | recompute: mean | max |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        for dtype in args.dtypes:
            r = measure(shape, dtype, args)
            (m1, x1), (m2, x2) = r["rollout"], r["recompute"]
            print(f"| {shape} | {dtype} | {r['tokens']} | {m1:.2e} | {x1:.2e} | {m2:.2e} | {x2:.2e} |", flush=True)
            print(f"ROW\tmismatch\t{shape} {dtype} ({r['tokens']} tokens)\trollout mean {m1:.2e} max {x1:.2e}; "
                  f"recompute mean {m2:.2e} max {x2:.2e}", flush=True)


if __name__ == "__main__":
    main()
