"""`tool_entropy` (ARPO-style): fork online right after a tool's output, where the policy became less sure.

`roots` chains per prompt decode as usual; a row forks only within `tool_window` tokens after a tool's
output was appended, at a token whose entropy exceeds the mean entropy of the last tokens before the call
(`Row.pre_tool`) by more than `tool_entropy_rise`. The other limits are `entropy`'s: at least `min_gap`
tokens since the path's last fork, fewer than `max_depth` forks on it, not after the final answer started,
room before the length limit, the tree under `max_leaves`, and a drawn token of probability below 1.
When the budget is short, the largest rises fork first. On single-turn envs it never forks (no tool output).
"""

from __future__ import annotations

from functools import partial

from .entropy import within_budget


class ToolEntropy:
    branches = True   # its trees fork (after tool outputs)

    def sample(self, sampler, trees, branch) -> None:
        rule = partial(pick_forks, s=branch, max_new_tokens=sampler.max_new_tokens)
        sampler.grow(trees, sampler.root_prefixes(trees, branch.roots), rule, branch.max_leaves)


def pick_forks(rows, entropy, forkable: list[bool], live: list[int], s, max_new_tokens: int) -> list[int]:
    """Row indices to fork this step; `live` (leaves per tree) is updated for the chosen ones."""
    ent = entropy.tolist()
    rise = [e - r.pre_tool for e, r in zip(ent, rows)]
    candidates = [i for i, r in enumerate(rows) if forkable[i] and r.since_tool < s.tool_window
                  and rise[i] > s.tool_entropy_rise and r.since_fork >= s.min_gap and r.depth < s.max_depth
                  and not r.answered and r.length + s.min_gap < max_new_tokens]
    return within_budget(rows, candidates, rise, live, s.max_leaves)


POLICY = ToolEntropy()
