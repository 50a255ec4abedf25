"""Branching sampler: root chains per prompt, forked where next-token entropy is high, within a leaf budget.

Drives an `Engine` step by step. At each step every live row samples a token; rows whose
distribution is uncertain (entropy above the threshold, past `min_prefix`, `min_gap` tokens since
their last fork, their tree under `max_leaves`) also fork: the fork is a copy of the row's KV whose
token is re-drawn with the parent's token excluded, so the two branches always differ. The most
uncertain candidates get the budget first. It does not verify or score anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import Engine
from .tree import Tree


@dataclass
class BranchSettings:
    roots: int = 4
    max_leaves: int = 8
    entropy_threshold: float = 0.8
    min_prefix: int = 2
    min_gap: int = 4
    branch: bool = True      # False: plain independent chains (roots per prompt, no forks)


@dataclass
class _Row:
    tree: int
    node: int
    length: int = 0          # completion tokens so far on this path
    since_fork: int = 10**9  # tokens since this path last forked
    src: int = 0             # engine row this row's KV comes from at the next select


class BranchSampler:
    def __init__(self, engine: Engine, eos_id: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0):
        self.engine, self.eos_id = engine, eos_id
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        # on the engine's device: torch.multinomial refuses a generator on another device (CPU gen, CUDA probs)
        self.gen = torch.Generator(device=engine.decoder.device).manual_seed(seed)

    def run(self, prompts: list[tuple[str, list[int]]], settings: BranchSettings, policy_version: int,
            greedy: bool = False) -> list[Tree]:
        """prompts: (problem_id, prompt token ids). Returns one finished Tree per prompt."""
        trees = [Tree(f"{pid}#{policy_version}#{i}", pid, ids, policy_version) for i, (pid, ids) in enumerate(prompts)]
        logits = self.engine.start([ids for _, ids in prompts], self.max_new_tokens)
        rows = [_Row(t, trees[t].add_child(0)) for t in range(len(trees)) for _ in range(settings.roots)]
        self.engine.select(torch.arange(len(trees)).repeat_interleave(settings.roots))  # roots share one prefill
        logits = logits.repeat_interleave(settings.roots, dim=0)
        live = [settings.roots] * len(trees)  # leaves (open or finished) per tree
        for step in range(self.max_new_tokens):
            logp = torch.log_softmax(logits / self.temperature, dim=-1)               # [B, V]
            entropy = -(logp.exp() * logp).sum(-1)                                   # [B]
            tokens = logits.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=self.gen)[:, 0]
            forks = [] if greedy or not settings.branch else self._pick_forks(rows, entropy, live, settings)
            fork_tokens = self._redraw(logp, tokens, forks)
            rows, tokens = self._advance(trees, rows, tokens, logp, entropy, dict(zip(forks, fork_tokens)))
            last = step == self.max_new_tokens - 1
            keep = []
            for i, r in enumerate(rows):
                if tokens[i] == self.eos_id or last:
                    trees[r.tree].nodes[r.node].finish = "eos" if tokens[i] == self.eos_id else "length"
                else:
                    keep.append(i)
            if not keep:
                break
            self.engine.select(torch.tensor([r.src for r in rows], dtype=torch.long)[keep])
            rows = [rows[i] for i in keep]
            logits = self.engine.step(torch.tensor([tokens[i] for i in keep], dtype=torch.long))
        return trees

    def _pick_forks(self, rows, entropy, live, s: BranchSettings) -> list[int]:
        ent = entropy.tolist()
        candidates = [i for i, r in enumerate(rows) if ent[i] > s.entropy_threshold
                      and r.length >= s.min_prefix and r.since_fork >= s.min_gap]
        chosen = []
        for i in sorted(candidates, key=lambda i: -ent[i]):
            if live[rows[i].tree] < s.max_leaves:
                live[rows[i].tree] += 1
                chosen.append(i)
        return chosen

    def _redraw(self, logp: torch.Tensor, tokens: torch.Tensor, forks: list[int]) -> list[int]:
        """A different token for each forked row: sample with the parent's token excluded."""
        if not forks:
            return []
        idx = torch.tensor(forks, device=logp.device)
        probs = logp[idx].exp()                                                  # [F, V]
        probs[torch.arange(len(forks), device=logp.device), tokens[idx]] = 0.0
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0].tolist()

    def _advance(self, trees, rows, tokens, logp, entropy, forks: dict[int, int]):
        """Append each row's token to its node; split forked rows into two children. Returns rows + tokens."""
        toks, lps, ents = tokens.tolist(), logp.gather(1, tokens[:, None])[:, 0].tolist(), entropy.tolist()
        new_rows, new_tokens = [], []
        for i, r in enumerate(rows):
            r.src = i
            tree = trees[r.tree]
            if i in forks:
                child = _Row(r.tree, tree.add_child(r.node), r.length, 0, src=i)
                r.node, r.since_fork = tree.add_child(r.node), 0
                new_rows.append(child)
                new_tokens.append(forks[i])
                self._append(tree, child, forks[i], logp[i, forks[i]].item(), ents[i])
            self._append(tree, r, toks[i], lps[i], ents[i])
        return rows + new_rows, toks + new_tokens

    @staticmethod
    def _append(tree: Tree, row: _Row, token: int, logprob: float, entropy: float) -> None:
        node = tree.nodes[row.node]
        node.tokens.append(token)
        node.logprobs.append(logprob)
        node.entropies.append(entropy)
        row.length += 1
        row.since_fork += 1
