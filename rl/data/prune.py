"""Prune verified trees to the synthetic data set: passing leaves only, distinct by signature, a cap per problem.

Input is every verified leaf (its tree, ids, text and verdict); output is what the data store writes
and what `sft` learns from, the same set for both. Two completions are the same sample when their
signatures match (the env's normalised text or code), so a reformatted copy is not a new path.
Leaf order decides which samples survive the cap, so the choice is deterministic. Every passing tree
is exported, including all-correct ones that policy-gradient objectives drop from their batch.
Nothing here calls a verifier or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from branchrl.envs import Problem
from branchrl.records import Leaf
from branchrl.tree import Tree


@dataclass
class Selection:
    samples: list[tuple[Problem, Leaf]] = field(default_factory=list)   # (problem, verified leaf)
    # (prompt ids, completion ids), plus the trained mask when the path holds tool outputs (never trained on)
    sequences: list[tuple] = field(default_factory=list)
    pass_rate: float = 0.0     # passing leaves / all leaves
    solved_rate: float = 0.0   # problems with at least one passing leaf
    verified_tokens: int = 0   # generated tokens on at least one passing path (a shared span counts once)
    distinct: int = 0          # distinct passing signatures over all problems, before the cap


def select_verified(problems: list[Problem], trees: list[Tree], leaves: list[Leaf], cap: int,
                    signature: Callable[[str], str] = lambda text: text) -> Selection:
    """leaves: every verified leaf, in tree order. Keeps <= cap passing leaves with distinct signatures per tree."""
    by_tree: dict[str, list[Leaf]] = {}
    for leaf in leaves:
        by_tree.setdefault(leaf.tree.tree_id, []).append(leaf)
    out, passed, solved = Selection(), 0, 0
    for problem, tree in zip(problems, trees, strict=True):
        seen: set[str] = set()
        passing = [leaf for leaf in by_tree.get(tree.tree_id, []) if leaf.passed]
        out.verified_tokens += verified_tokens(tree, [leaf.node for leaf in passing])
        signatures = [signature(leaf.text) for leaf in passing]
        out.distinct += len(set(signatures))
        for leaf, sig in zip(passing, signatures):
            if sig not in seen and len(seen) < cap:
                seen.add(sig)
                out.samples.append((problem, leaf))
                out.sequences.append(training_sequence(tree, leaf.node))
        passed += len(passing)
        solved += bool(passing)
    # counted, then divided once: summing 1/n per problem drifts (ten solved of ten gave 0.9999999999999999)
    out.solved_rate = solved / max(len(trees), 1)
    out.pass_rate = passed / max(len(leaves), 1)
    return out


def verified_tokens(tree: Tree, passing_leaves: list[int]) -> int:
    """Generated tokens of the nodes on at least one passing path: what verification kept of what was generated
    (tool outputs on those paths were appended, not generated, and are not counted, as in `generated_tokens`)."""
    nodes = {n for leaf in passing_leaves for n in tree.path(leaf)}
    return sum(len(tree.nodes[n].tokens) - sum(tree.nodes[n].tool_flags()) for n in nodes)


def training_sequence(tree: Tree, leaf: int) -> tuple:
    """(prompt ids, completion ids) for SFT; with tool outputs on the path, also [C] bools: True = the policy's."""
    ids, roles = tree.completion_ids(leaf), tree.completion_roles(leaf)
    return (tree.prompt_ids, ids, [not r for r in roles]) if any(roles) else (tree.prompt_ids, ids)
