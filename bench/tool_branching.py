"""Branching at tool results, without training: `tool_entropy` vs `independent` from one fixed policy at an equal
budget of generated tokens, several seeds; distinct verified chains per 1,000 generated tokens.

The policy is a checkpoint that calls the tool (a tool demo run's `checkpoints/warm_start`). For each seed and
policy, batches of train problems are sampled with the real multi-turn sampler (tool calls in the sandbox)
until the budget of generated tokens (tool outputs not counted) is spent; every leaf is verified in-process.
The learning half of the comparison (held-out pass@1 after RL) needs `bench/branching.py --config
configs/tool_demo.yaml --policies independent tool_entropy`. Not a test; docs/EXPERIMENTS.md records results.

    .venv/bin/python bench/tool_branching.py --checkpoint RUN/checkpoints/warm_start [--seeds 0 1 2] [--tokens 20000]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from branchrl.config import BranchConfig
from branchrl.engine import SamplingParams, load_checkpoint
from branchrl.envs import load_env
from branchrl.models import build_char_tokenizer
from branchrl.rollout.sampler import BranchSampler
from branchrl.rollout.tools import ToolRunner
from branchrl.verifiers import verify

POLICIES = {  # at most 8 leaves per problem each, as in bench/branching.py
    "independent": BranchConfig(policy="independent", roots=8, max_leaves=8),
    "tool_entropy": BranchConfig(policy="tool_entropy", roots=4, max_leaves=8, tool_window=4, min_gap=2,
                                 min_prefix=0, fork_in_answer=True),
}


def measure(checkpoint: str, policy: str, seed: int, tokens: int, problems: int, max_new: int) -> dict:
    env, tok = load_env("multiply"), build_char_tokenizer()
    engine = load_checkpoint(checkpoint, max_seq_len=128)
    tools = ToolRunner(env, tok, workers=4)
    generated = distinct = passed = leaves = calls = batch = 0
    while generated < tokens:
        chosen = env.train_problems(problems * (batch + 1), seed)[problems * batch:]
        batch += 1
        tools.prompts = {p.id: p.prompt for p in chosen}
        sampler = BranchSampler(engine, tok.eos_token_id, max_new, SamplingParams(0.6), seed * 1000 + batch,
                                tools=tools)
        trees = sampler.run([(p.id, tok.encode(p.prompt)) for p in chosen], POLICIES[policy], 0)
        for p, tree in zip(chosen, trees):
            seen = set()
            for leaf in tree.leaves():
                text = tok.decode(tree.completion_ids(leaf), skip_special_tokens=True)
                ok = verify(env.verifier_record(p, text)).verdict == "pass"
                passed, leaves = passed + ok, leaves + 1
                if ok:
                    seen.add(env.signature(text))
            distinct += len(seen)
            generated += tree.generated_tokens()
            calls += tree.tool_calls_run
    tools.close()
    return {"policy": policy, "seed": seed, "generated": generated, "distinct_per_1k": 1000 * distinct / generated,
            "pass_rate": passed / leaves, "leaves": leaves, "tool_calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tokens", type=int, default=20000, help="generated tokens per (policy, seed)")
    ap.add_argument("--problems", type=int, default=32, help="problems per batch")
    ap.add_argument("--max-new", type=int, default=56)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(args.checkpoint, policy, seed, args.tokens, args.problems, args.max_new)
            for seed in args.seeds for policy in POLICIES]
    print("| policy | seed | generated tokens | distinct verified / 1k tokens | leaf pass rate | tool calls |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['seed']} | {r['generated']} | {r['distinct_per_1k']:.2f} | {r['pass_rate']:.3f} "
              f"| {r['tool_calls']} |")
    for policy in POLICIES:
        values = [r["distinct_per_1k"] for r in rows if r["policy"] == policy]
        print(f"{policy}: distinct verified / 1k tokens mean {statistics.mean(values):.2f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
