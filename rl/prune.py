"""Prune verified trees to training samples: passing leaves only, distinct completions, a cap per problem.

Input is every verified leaf (its tree, ids, text and verdict); output is what the data store writes
and the trainer learns from, the same set for both. Leaf order decides which samples survive the
cap, so the choice is deterministic. Nothing here calls a verifier or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from branchrl.envs import Problem

from .tree import Tree


@dataclass
class Selection:
    samples: list[tuple[Problem, dict]] = field(default_factory=list)   # (problem, verified leaf)
    sequences: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (prompt ids, completion ids)
    pass_rate: float = 0.0     # passing leaves / all leaves
    solved_rate: float = 0.0   # problems with at least one passing leaf
    verified_tokens: int = 0   # completion tokens of all passing leaves (before de-duplication)


def select_verified(problems: list[Problem], trees: list[Tree], leaves: list[dict], cap: int) -> Selection:
    """leaves: dicts with tree, ids, text, result (in tree order). Keeps <= cap distinct passing texts per tree."""
    by_tree: dict[str, list[dict]] = {}
    for leaf in leaves:
        by_tree.setdefault(leaf["tree"].tree_id, []).append(leaf)
    out, passed, solved = Selection(), 0, 0
    for problem, tree in zip(problems, trees, strict=True):
        seen: set[str] = set()
        passing = [leaf for leaf in by_tree.get(tree.tree_id, []) if leaf["result"]["verdict"] == "pass"]
        for leaf in passing:
            out.verified_tokens += len(leaf["ids"])
            if leaf["text"] not in seen and len(seen) < cap:
                seen.add(leaf["text"])
                out.samples.append((problem, leaf))
                out.sequences.append((tree.prompt_ids, leaf["ids"]))
        passed += len(passing)
        solved += bool(passing)
    # counted, then divided once: summing 1/n per problem drifts (ten solved of ten gave 0.9999999999999999)
    out.solved_rate = solved / max(len(trees), 1)
    out.pass_rate = passed / max(len(leaves), 1)
    return out
