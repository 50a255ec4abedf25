"""A branched rollout as a tree of token spans, with leaf rewards and node values.

Node 0 is the prompt (no tokens). Every other node is a span of sampled tokens; a fork ends the
current span and starts two children that differ in their first token. A leaf is a finished
completion. V(n) = mean reward of the leaves under n, so V(root) is the group mean (GRPO's
baseline). Advantage formulas live with the algorithms, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def attended_positions(new: int, cached: int = 0) -> int:
    """Attention positions when `new` tokens are computed after `cached` ones (a causal mask: each attends to
    itself and everything before it): new * cached + new * (new + 1) / 2. The ledger's attention FLOPs
    count these for prefill, decode, re-prefill and training alike."""
    return new * cached + new * (new + 1) // 2


@dataclass
class Node:
    id: int
    parent: int | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)    # sampled token's log-prob under the distribution drawn from
    entropies: list[float] = field(default_factory=list)   # next-token entropy (nats) where each token was drawn
    children: list[int] = field(default_factory=list)
    finish: str = ""            # "eos" | "length" on leaves, "" while open or internal
    reward: float | None = None


@dataclass
class Tree:
    problem_id: str
    prompt_ids: list[int]
    policy_version: int
    nodes: list[Node] = field(default_factory=lambda: [Node(0, None)])
    tree_id: str = ""            # unique in the run; the driver names each tree it receives
    reprefill_tokens: int = 0    # prefix tokens computed again to fork a finished chain (eptree's second phase)
    reprefill_context: int = 0   # their attention positions

    def add_child(self, parent: int) -> int:
        node = Node(len(self.nodes), parent)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node.id

    def leaves(self) -> list[int]:
        return [n.id for n in self.nodes if n.finish]

    def path(self, node: int) -> list[int]:
        """Node ids from the first span under the prompt down to `node`."""
        out = []
        while node != 0:
            out.append(node)
            node = self.nodes[node].parent
        return out[::-1]

    def branch_path(self, leaf: int) -> str:
        """Child index at each level, e.g. '2.0.1' (root chain 2, then first child, then second)."""
        return ".".join(str(self.nodes[self.nodes[n].parent].children.index(n)) for n in self.path(leaf))

    def completion_ids(self, leaf: int) -> list[int]:
        return [t for n in self.path(leaf) for t in self.nodes[n].tokens]

    def completion_logprobs(self, leaf: int) -> list[float]:
        return [lp for n in self.path(leaf) for lp in self.nodes[n].logprobs]

    def generated_tokens(self) -> int:
        """Tokens actually decoded for this tree: shared prefixes count once."""
        return sum(len(n.tokens) for n in self.nodes)

    def order(self) -> list[int]:
        """Node ids with every parent before its children (ids alone do not promise it after `split`)."""
        out, stack = [], [0]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(self.nodes[n].children))
        return out

    def span_starts(self) -> list[int]:
        """Completion offset of each node's first token (0 for the prompt node and the root chains)."""
        start = [0] * len(self.nodes)
        for n in self.order()[1:]:
            parent = self.nodes[n].parent
            start[n] = start[parent] + len(self.nodes[parent].tokens)
        return start

    def context_sum(self) -> int:
        """Attention positions over the whole tree: the prompt's prefill once, then each decoded token
        attends to everything before it on its path (shared prefixes computed once, as the engine does)."""
        p = len(self.prompt_ids)
        total = attended_positions(p) + self.reprefill_context
        for n, s in zip(self.nodes[1:], self.span_starts()[1:]):
            total += attended_positions(len(n.tokens), cached=p + s)
        return total

    def prefill_context(self) -> int:
        """Attention positions of the prefills alone: the prompt once, plus every re-prefill."""
        return attended_positions(len(self.prompt_ids)) + self.reprefill_context

    def fork_saved_prefill(self) -> tuple[int, int]:
        """(tokens, attention positions) of prefill that sharing prefixes saved: at every node with k children,
        the k - 1 extra branches would each have prefilled their prefix (prompt + completion before the
        children) again; less what re-opening finished chains did prefill again (`reprefill_tokens`)."""
        p, starts = len(self.prompt_ids), self.span_starts()
        tokens = context = 0
        for n in self.nodes:
            if len(n.children) > 1:
                prefix = p + starts[n.id] + len(n.tokens)
                tokens += (len(n.children) - 1) * prefix
                context += (len(n.children) - 1) * attended_positions(prefix)
        return tokens - self.reprefill_tokens, context - self.reprefill_context

    def split(self, node: int, offset: int) -> int:
        """Cut `node`'s span before token `offset`: node keeps tokens[:offset]; a new only child takes the
        rest, with node's children, finish and reward. Returns the new child's id. 0 < offset < len."""
        n = self.nodes[node]
        if not 0 < offset < len(n.tokens):
            raise ValueError(f"split offset {offset} outside node {node}'s span of {len(n.tokens)} tokens")
        tail = Node(len(self.nodes), node, n.tokens[offset:], n.logprobs[offset:], n.entropies[offset:],
                    n.children, n.finish, n.reward)
        for c in tail.children:
            self.nodes[c].parent = tail.id
        del n.tokens[offset:], n.logprobs[offset:], n.entropies[offset:]
        n.children, n.finish, n.reward = [tail.id], "", None
        self.nodes.append(tail)
        return tail.id

    def leaf_counts(self) -> list[int]:
        """Number of leaves under each node (a leaf counts itself)."""
        count = [0] * len(self.nodes)
        for leaf in self.leaves():
            for n in [0] + self.path(leaf):
                count[n] += 1
        return count

    def forks(self) -> int:
        """Leaves beyond the root chains: every fork adds one leaf per extra child."""
        return sum(len(n.children) - 1 for n in self.nodes[1:] if n.children)

    def values(self) -> list[float | None]:
        """V(n) = mean reward of the leaves under n (None where no leaf below has a reward)."""
        total = [0.0] * len(self.nodes)
        count = [0] * len(self.nodes)
        for leaf in self.leaves():
            reward = self.nodes[leaf].reward
            if reward is None:
                continue
            for n in [0] + self.path(leaf):
                total[n] += reward
                count[n] += 1
        return [t / c if c else None for t, c in zip(total, count)]
