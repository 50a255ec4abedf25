"""`entropy`: fork online, at the step a row's next-token entropy reaches the threshold.

A row may fork only when all hold: entropy >= `entropy_threshold`; at least `min_prefix` tokens into
its chain; at least `min_gap` tokens since its path last forked; fewer than `max_depth` forks on its
path; the final answer has not started (no token of `answer_ids` yet); at least `min_gap` tokens left
before the length limit; its tree is under `max_leaves`; and the drawn token's probability was below 1
(else top-k / top-p left no other token to fork to). When the budget is short, the most uncertain rows
fork first. The fork re-draws the token with the parent's choice excluded.
"""

from __future__ import annotations

from functools import partial


class Entropy:
    branches = True   # its trees fork

    def sample(self, sampler, trees, branch) -> None:
        rule = partial(pick_forks, s=branch, max_new_tokens=sampler.max_new_tokens)
        sampler.grow(trees, sampler.root_prefixes(trees, branch.roots), rule, branch.max_leaves)


def pick_forks(rows, entropy, forkable: list[bool], live: list[int], s, max_new_tokens: int) -> list[int]:
    """Row indices to fork this step; `live` (leaves per tree) is updated for the chosen ones."""
    ent = entropy.tolist()
    candidates = [i for i, r in enumerate(rows) if forkable[i] and ent[i] >= s.entropy_threshold
                  and r.length >= s.min_prefix and r.since_fork >= s.min_gap and r.depth < s.max_depth
                  and not r.answered and r.length + s.min_gap < max_new_tokens]
    return within_budget(rows, candidates, ent, live, s.max_leaves)


def within_budget(rows, candidates: list[int], score: list[float], live: list[int], max_leaves: int) -> list[int]:
    """The candidates, highest score first, that their tree's leaf budget still allows; `live` is updated."""
    chosen = []
    for i in sorted(candidates, key=lambda i: -score[i]):
        if live[rows[i].tree] < max_leaves:
            live[rows[i].tree] += 1
            chosen.append(i)
    return chosen


POLICY = Entropy()
