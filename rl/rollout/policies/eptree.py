"""`eptree` (TreeRL's EPTree): two phases. First `roots` chains per prompt decoded to the end; then, for
`rounds` rounds, the `top_n` most uncertain positions per tree (highest -log p of the sampled token)
are forked `forks_per_point` times each, the token re-drawn without the original, and every new
branch decoded to the end.

A position is eligible when its token was drawn with probability below 1 (with top-k / top-p a token
can be the only one left, and then has no sibling), it is at least `min_prefix` tokens into the chain,
before the final answer started on its path, at least `min_gap` tokens before the length limit, and
at least `min_gap` tokens from any fork on its path (existing or chosen this round); a point is taken
only while its tree stays within `max_leaves`. Finished chains have no KV left in the engine, so each
fork point's prefix is prefilled again (the tree counts those tokens); a prefix cache would remove
that cost. With a row cap the fork points wait their turn like prompts (`BranchSampler.grow`).
"""

from __future__ import annotations


class EPTree:
    branches = True   # its trees fork

    def sample(self, sampler, trees, branch) -> None:
        sampler.grow(trees, sampler.root_prefixes(trees, branch.roots))
        for _ in range(branch.rounds):
            points = [(t, node, offset) for t, tree in enumerate(trees)
                      for node, offset in fork_points(tree, branch, sampler.max_new_tokens, sampler.answer_ids)]
            if not points:
                return
            sampler.reopen(trees, points, branch.forks_per_point)


def fork_points(tree, s, max_new_tokens: int, answer_ids=frozenset()) -> list[tuple[int, int]]:
    """(node, offset in node) of the chosen fork points for one finished tree, most uncertain first."""
    starts, order = tree.span_starts(), tree.order()
    forked = {n for n in order[1:] if tree.nodes[n].parent != 0 and len(tree.nodes[tree.nodes[n].parent].children) > 1}
    answered = {0: False}   # answer started before the node's first token
    candidates = []         # (log p, global offset, node, offset): least likely first once sorted
    for n in order[1:]:
        node, parent = tree.nodes[n], tree.nodes[n].parent
        answered[n] = answered[parent] or any(t in answer_ids for t in tree.nodes[parent].tokens)
        seen_answer = answered[n]
        for j, (tok, lp) in enumerate(zip(node.tokens, node.logprobs)):
            g = starts[n] + j
            if lp < 0 and not seen_answer and g >= s.min_prefix and g + s.min_gap < max_new_tokens:
                candidates.append((lp, g, n, j))
            seen_answer = seen_answer or tok in answer_ids
    taken: list[tuple[int, int]] = []   # (node, global offset) of forks on record, existing then chosen
    taken += [(n, starts[n]) for n in forked]
    leaves, chosen = len(tree.leaves()), []
    for _, g, n, j in sorted(candidates):
        if leaves + s.forks_per_point > s.max_leaves or len(chosen) == s.top_n:
            break
        if all(abs(g - g2) >= s.min_gap or not on_one_path(tree, n, n2) for n2, g2 in taken):
            chosen.append((n, j))
            taken.append((n, g))
            leaves += s.forks_per_point
    return chosen


def on_one_path(tree, a: int, b: int) -> bool:
    """True when one node is an ancestor of (or is) the other."""
    return a in tree.path(b) or b in tree.path(a)


POLICY = EPTree()
