"""The rollout sampler: turns prompts into trees by driving an `Engine`, with the branch policy deciding
where trees fork (`branch.policy` -> rl/policies/<name>.py).

This module holds the decoding primitives every policy shares: prefill the prompts once and repeat
each as root chains (`start_roots`); decode rows in lock-step until each ends on EOS or the length
limit, forking the rows a policy picks (`grow`); and re-open finished chains at chosen positions
(`reopen`). A fork is a copy of the row's KV whose token is re-drawn with the parent's token excluded,
so siblings always differ. It does not verify or score anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .engine import Engine
from .tree import Tree


@dataclass
class BranchSettings:
    policy: str = "entropy"          # independent | entropy | eptree
    roots: int = 4                   # root chains per prompt
    max_leaves: int = 8              # leaf budget per tree
    entropy_threshold: float = 0.8   # entropy: fork where next-token entropy (nats) is at least this
    min_prefix: int = 2              # no fork in the first N completion tokens
    min_gap: int = 4                 # tokens between two forks on a path, and before the length limit
    max_depth: int = 3               # entropy: forks along one path
    top_n: int = 2                   # eptree: fork points per tree per round
    forks_per_point: int = 2         # eptree: new children at each fork point
    rounds: int = 1                  # eptree: rounds of forking finished chains
    answer_ids: tuple[int, ...] = () # tokens that start the final answer: no fork at or after them

    @classmethod
    def from_config(cls, branch, answer_ids: tuple[int, ...] = ()) -> "BranchSettings":
        """From the config's `branch` section; answer_ids are dropped when it allows forks in the answer."""
        fields = branch.model_dump(exclude={"fork_in_answer"})
        return cls(**fields, answer_ids=() if branch.fork_in_answer else tuple(answer_ids))


@dataclass
class Row:
    tree: int
    node: int
    length: int = 0          # completion tokens so far on this path
    since_fork: int = 10**9  # tokens since this path last forked
    depth: int = 0           # forks on this path
    answered: bool = False   # the final answer has started on this path
    src: int = 0             # engine row this row's KV comes from at the next select


ForkRule = Callable[[list[Row], torch.Tensor, list[int]], list[int]]  # rows, entropy [B], leaves per tree -> rows to fork


class BranchSampler:
    def __init__(self, engine: Engine, eos_id: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0):
        self.engine, self.eos_id = engine, eos_id
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        # on the engine's device: torch.multinomial refuses a generator on another device (CPU gen, CUDA probs)
        self.gen = torch.Generator(device=engine.decoder.device).manual_seed(seed)
        self.greedy = False
        self.answer_ids: frozenset[int] = frozenset()

    def run(self, prompts: list[tuple[str, list[int]]], settings: BranchSettings, policy_version: int,
            greedy: bool = False) -> list[Tree]:
        """prompts: (problem_id, prompt token ids). Returns one finished Tree per prompt. greedy: one argmax
        chain per prompt whatever the policy (evaluation)."""
        from .policies import POLICIES  # the policies import this module

        trees = [Tree(f"{pid}#{policy_version}#{i}", pid, ids, policy_version) for i, (pid, ids) in enumerate(prompts)]
        self.greedy, self.answer_ids = greedy, frozenset(settings.answer_ids)
        if greedy:
            POLICIES["independent"].sample(self, trees, BranchSettings(policy="independent", roots=1, max_leaves=1))
        else:
            POLICIES[settings.policy].sample(self, trees, settings)
        return trees

    # ------------------------------------------------------------------ primitives for policies
    def start_roots(self, trees: list[Tree], roots: int) -> tuple[list[Row], torch.Tensor]:
        """Prefill every prompt once and repeat it as `roots` root chains; returns rows and their logits."""
        logits = self.engine.start([t.prompt_ids for t in trees], self.max_new_tokens)
        rows = [Row(i, trees[i].add_child(0)) for i in range(len(trees)) for _ in range(roots)]
        self.engine.select(torch.arange(len(trees)).repeat_interleave(roots))  # roots share one prefill
        return rows, logits.repeat_interleave(roots, dim=0)

    def grow(self, trees: list[Tree], rows: list[Row], logits: torch.Tensor, fork_rule: ForkRule | None = None) -> None:
        """Decode rows (already in the engine, logits [B, V]) until every path ends; fork_rule picks forks."""
        live = [len(t.leaves()) for t in trees]  # leaves (open or finished) per tree
        for r in rows:
            live[r.tree] += 1
        while rows:
            logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)        # [B, V]
            entropy = -(logp.exp() * logp).sum(-1)                                     # [B]
            tokens = logits.argmax(-1) if self.greedy else torch.multinomial(logp.exp(), 1, generator=self.gen)[:, 0]
            forks = fork_rule(rows, entropy, live) if fork_rule and not self.greedy else []
            fork_tokens = self.redraw(logp, tokens, forks)
            rows, toks = self._advance(trees, rows, tokens, logp, entropy, dict(zip(forks, fork_tokens)))
            keep = [i for i, r in enumerate(rows) if not self._finished(trees, r, toks[i])]
            if not keep:
                return
            self.engine.select(torch.tensor([rows[i].src for i in keep], dtype=torch.long))
            rows = [rows[i] for i in keep]
            logits = self.engine.step(torch.tensor([toks[i] for i in keep], dtype=torch.long))

    def reopen(self, trees: list[Tree], points: list[tuple[int, int, int]], children: int) -> None:
        """Fork finished chains: points are (tree, node, offset) = the token at `offset` in `node`'s span.
        Each point gets up to `children` new siblings of that token, drawn without replacement with the
        original token excluded, each decoded to the end. Points are cut in order along each path, so
        several points on one chain are fine. Prefixes are prefilled again (counted on the tree)."""
        if not points:
            return
        starts, prefixes, originals = [], [], []
        offsets = {t: trees[t].span_starts() for t in {p[0] for p in points}}
        for t, node, offset in sorted(set(points), key=lambda p: (p[0], offsets[p[0]][p[1]] + p[2])):
            tree = trees[t]
            # an earlier cut may have moved this token into the tail, which `split` makes the first child
            while offset >= len(tree.nodes[node].tokens):
                offset -= len(tree.nodes[node].tokens)
                node = tree.nodes[node].children[0]
            originals.append(tree.nodes[node].tokens[offset])
            if offset > 0:
                tree.split(node, offset)
            else:
                node = tree.nodes[node].parent
            ids = tree.prompt_ids + [tok for n in tree.path(node) for tok in tree.nodes[n].tokens]
            tree.reprefill_tokens += len(ids)
            tree.reprefill_context += len(ids) * (len(ids) + 1) // 2
            starts.append((t, node, len(ids) - len(tree.prompt_ids)))
            prefixes.append(ids)
        logits = self.engine.start(prefixes, [self.max_new_tokens - length for _, _, length in starts])
        logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)            # [P, V]
        entropy = -(logp.exp() * logp).sum(-1)                                         # [P]
        rows, toks, src = [], [], []
        for i, ((t, node, length), original) in enumerate(zip(starts, originals)):
            probs = logp[i].exp()
            probs[original] = 0.0
            k = min(children, int((probs > 0).sum()))
            for tok in torch.multinomial(probs, k, replacement=False, generator=self.gen).tolist() if k else []:
                row = Row(t, trees[t].add_child(node), length, since_fork=0, depth=1)
                self._append(trees[t], row, tok, logp[i, tok].item(), entropy[i].item())
                if not self._finished(trees, row, tok):
                    rows.append(row)
                    toks.append(tok)
                    src.append(i)
        if rows:
            self.engine.select(torch.tensor(src, dtype=torch.long))
            self.grow(trees, rows, self.engine.step(torch.tensor(toks, dtype=torch.long)))

    def redraw(self, logp: torch.Tensor, tokens: torch.Tensor, forks: list[int]) -> list[int]:
        """A different token for each forked row: sample with the parent's token excluded."""
        if not forks:
            return []
        idx = torch.tensor(forks, device=logp.device)
        probs = logp[idx].exp()                                                  # [F, V]
        probs[torch.arange(len(forks), device=logp.device), tokens[idx]] = 0.0
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0].tolist()

    # ------------------------------------------------------------------ bookkeeping
    def _finished(self, trees: list[Tree], row: Row, token: int) -> bool:
        """Marks the row's node as a leaf when it ended on EOS or reached the length limit."""
        if token == self.eos_id or row.length >= self.max_new_tokens:
            trees[row.tree].nodes[row.node].finish = "eos" if token == self.eos_id else "length"
            return True
        return False

    def _advance(self, trees, rows, tokens, logp, entropy, forks: dict[int, int]):
        """Append each row's token to its node; split forked rows into two children. Returns rows + tokens."""
        toks, lps, ents = tokens.tolist(), logp.gather(1, tokens[:, None])[:, 0].tolist(), entropy.tolist()
        new_rows, new_tokens = [], []
        for i, r in enumerate(rows):
            r.src = i
            tree = trees[r.tree]
            if i in forks:
                child = Row(r.tree, tree.add_child(r.node), r.length, 0, r.depth + 1, r.answered, src=i)
                r.node, r.since_fork, r.depth = tree.add_child(r.node), 0, r.depth + 1
                new_rows.append(child)
                new_tokens.append(forks[i])
                self._append(tree, child, forks[i], logp[i, forks[i]].item(), ents[i])
            self._append(tree, r, toks[i], lps[i], ents[i])
        return rows + new_rows, toks + new_tokens

    def _append(self, tree: Tree, row: Row, token: int, logprob: float, entropy: float) -> None:
        node = tree.nodes[row.node]
        node.tokens.append(token)
        node.logprobs.append(logprob)
        node.entropies.append(entropy)
        row.length += 1
        row.since_fork += 1
        row.answered = row.answered or token in self.answer_ids
