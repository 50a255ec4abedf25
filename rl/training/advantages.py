"""Advantages on rollout trees and how shared spans are weighted in the loss: pure functions, no torch.

- `grpo`: one advantage per leaf, (r - mean) / (std + eps) over the tree's leaves (the group).
- `tree`: one advantage per node span, TreeRL's rule (../shared/ANCHORS.md):
  A(n) = [(V(n) - V(parent)) + (V(n) - V(root))] / sqrt(L(n)), V = mean leaf reward below, L = leaves below.

Shared spans. A training sequence is a leaf's whole path, so a span with L(n) leaves below it appears
in L(n) sequences. With `shared_spans="once"` each appearance has weight 1/L(n): every generated
token counts once in the loss, and under `grpo` a shared token's effective advantage is the mean of
its leaves' advantages. With `shared_spans="per_leaf"` (weight 1) a span is trained once per leaf,
as TreeRL's own implementation does. It does not decide which trees enter the batch (see `informative`).
Tool outputs in a multi-turn path are context: their tokens get weight 0, so they carry no loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from branchrl.tree import Tree

SHARED_SPANS = ("once", "per_leaf")


@dataclass
class PGSample:
    """One leaf path for the policy-gradient loss: per completion token an advantage and a weight."""
    prompt_ids: list[int]
    completion_ids: list[int]
    advantages: list[float]
    weights: list[float]
    old_logprobs: list[float]   # the rollout policy's log-prob of each token (at the sampling temperature)
    trainer_logprobs: list[float] | None = None   # the trainer's, before the update (train.old_logprobs=recompute)


def informative(tree: Tree) -> bool:
    """Dynamic sampling: a tree whose leaves all got the same reward carries no policy-gradient signal."""
    rewards = {tree.nodes[leaf].reward for leaf in tree.leaves()}
    return len(rewards) > 1


def grpo_advantages(rewards: list[float], eps: float = 1e-6) -> list[float]:
    """(r - mean) / (std + eps), population std over the group."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + eps) for r in rewards]


def tree_advantages(tree: Tree) -> list[float]:
    """TreeRL's A(n) for every node (0.0 for the prompt node, which has no tokens)."""
    values, counts = tree.values(), tree.leaf_counts()
    if any(values[leaf] is None for leaf in tree.leaves()):
        raise ValueError(f"tree {tree.tree_id}: every leaf needs a reward before tree advantages")
    out = [0.0] * len(tree.nodes)
    for n in range(1, len(tree.nodes)):
        v, parent = values[n], values[tree.nodes[n].parent]
        out[n] = ((v - parent) + (v - values[0])) / math.sqrt(counts[n])
    return out


def span_weights(tree: Tree, shared_spans: str) -> list[float]:
    """Weight of one appearance of each node's tokens in one leaf sequence (see the module docstring)."""
    if shared_spans not in SHARED_SPANS:
        raise ValueError(f"shared_spans must be one of {SHARED_SPANS}, got {shared_spans!r}")
    if shared_spans == "per_leaf":
        return [1.0] * len(tree.nodes)
    return [1.0 / c if c else 0.0 for c in tree.leaf_counts()]


def leaf_samples(tree: Tree, node_advantage, shared_spans: str) -> list[PGSample]:
    """One PGSample per leaf; node_advantage(leaf, node) gives the advantage of node's tokens on that path."""
    weights = span_weights(tree, shared_spans)
    out = []
    for leaf in tree.leaves():
        adv, w = [], []
        for n in tree.path(leaf):
            k = len(tree.nodes[n].tokens)
            adv += [node_advantage(leaf, n)] * k
            w += [0.0 if tool else weights[n] for tool in tree.nodes[n].tool_flags()]   # tool output: context only
        out.append(PGSample(tree.prompt_ids, tree.completion_ids(leaf), adv, w, tree.completion_logprobs(leaf)))
    return out


def grpo_samples(tree: Tree, shared_spans: str = "once") -> list[PGSample]:
    leaves = tree.leaves()
    adv = dict(zip(leaves, grpo_advantages([tree.nodes[leaf].reward for leaf in leaves])))
    return leaf_samples(tree, lambda leaf, node: adv[leaf], shared_spans)


def tree_samples(tree: Tree, shared_spans: str = "once") -> list[PGSample]:
    adv = tree_advantages(tree)
    return leaf_samples(tree, lambda leaf, node: adv[node], shared_spans)
