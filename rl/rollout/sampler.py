"""The rollout sampler: turns prompts into trees by driving an `Engine`, with the branch policy deciding
where trees fork (`branch.policy` -> rl/rollout/policies/<name>.py).

Every token is drawn by the engine's sampling (`branchrl.engine.sample`: temperature, top-k, top-p, a
seeded generator), and the log-prob and entropy stored with it are those of the distribution it was
drawn from, truncation included. A fork's other children come from that same distribution with the
parent's token removed, without replacement (`siblings`), so siblings always differ; a token drawn
with probability 1 (truncation left it alone) has no sibling, so no fork happens there. Greedy runs
(evaluation) draw at temperature 0 (`GREEDY`): the argmax, stored with log-prob 0 and entropy 0.

A sampler is built for one call: its sampling parameters, the tokens that start the final answer and
its seed are fixed at construction; `run` takes the branch settings (the config's `branch` section,
or `GREEDY_BRANCH`) and returns trees without ids (the driver names them, unique in the run).

This module holds the decoding primitives every policy shares: each prompt prefilled once and
continued by its root chains (`root_prefixes`); decoding rows in lock-step until each ends on EOS or
the length limit, forking the rows a rule picks (`grow`); re-opening finished chains at chosen
positions (`reopen`). With a row cap (`max_rows`) `grow` is continuous batching: it prefills only the
prefixes whose rows fit and admits the next ones (`Engine.admit`) as rows finish. A prefix is admitted
only when all the rows it may need at once fit (under a fork rule, its tree's whole leaf budget), so
an online fork never finds the cap full: the cap changes when a tree is decoded, never where it forks.
With `tools` (an env that calls tools, `tools.py`), a row whose turn ends on the env's stop string waits
for its call while the other rows decode (the engine steps with it parked), and the tool's output is
appended to its path (flagged tool tokens, log-prob 0) and to its engine row (`Engine.extend`); turn and
token limits hold per episode. A row resumes when its call is done (`tools.wait_steps` 0: timing decides the
step, so such rollouts are not bit-reproducible) or exactly `wait_steps` decode steps after its call (the
same rollouts for a seed, whatever the calls' timing). It does not verify or score anything.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch

from branchrl.config import BranchConfig
from branchrl.engine import Engine, Sample, SamplingParams, sample, siblings
from branchrl.tree import Tree, attended_positions

from .tools import ToolRunner

GREEDY = SamplingParams(temperature=0.0)                          # evaluation: the argmax
GREEDY_BRANCH = BranchConfig(policy="independent", roots=1, max_leaves=1)  # ... one chain per prompt, no forks
NEVER_FORKED = 10**9   # a root chain's distance to its last fork: no fork on the path limits where it may fork
RECENT = 8             # entropies a row remembers: the level a tool result's next tokens are compared with


@dataclass
class Row:
    tree: int
    node: int
    length: int = 0          # completion tokens so far on this path
    since_fork: int = NEVER_FORKED  # tokens since this path last forked
    depth: int = 0           # forks on this path
    answered: bool = False   # the final answer has started on this path
    src: int = 0             # engine row this row's KV comes from at the next select
    original: int = -1       # a re-opened fork point: the token already there, which this row only forks from
    children: int = 0        # ... into this many siblings, and then ends
    # tool turns (`tools.py`): calls made, where the current policy turn starts, the call it waits for
    turns: int = 0
    turn_start: int = 0
    waiting: Future | None = None
    request: dict | None = None
    due: int = 0                      # the decode step it resumes at (tools.wait_steps > 0)
    cells_ok: tuple[bool, ...] = ()   # each earlier call ran cleanly
    since_tool: int = NEVER_FORKED    # tokens since the last tool output on this path
    recent: tuple[float, ...] = ()    # entropies of the last few tokens (the level before a tool call)
    pre_tool: float = 0.0             # their mean when the last tool output arrived

    @property
    def width(self) -> int:
        """Rows this one may occupy at once: a re-opened point turns into its children."""
        return max(1, self.children)


class Prefix(NamedTuple):
    ids: list[int]    # tokens to prefill: prompt + completion so far
    rows: list[Row]   # rows that continue from it, all sharing its prefill


ForkRule = Callable[[list[Row], torch.Tensor, list[bool], list[int]], list[int]]
# rows, entropy [B], forkable (the drawn token's probability was below 1), leaves per tree -> rows to fork
Children = list[tuple[int, float]]  # a fork's new children: (token, log-prob) each


class BranchSampler:
    def __init__(self, engine: Engine, eos_id: int, max_new_tokens: int, params: SamplingParams = SamplingParams(),
                 seed: int = 0, max_rows: int = 0, answer_ids: frozenset[int] = frozenset(),
                 tools: ToolRunner | None = None):
        """params: how tokens are drawn; max_rows: most rows decoding at once (0 = no cap); answer_ids: tokens
        that start the final answer (no fork at or after them on a path; empty when forks there are allowed);
        tools: the env's tool turns (None: single-turn). max_new_tokens bounds a whole episode, tool outputs
        included."""
        self.engine, self.eos_id, self.max_new_tokens = engine, eos_id, max_new_tokens
        self.params, self.max_rows, self.answer_ids = params, max_rows, frozenset(answer_ids)
        self.tools = tools
        self.steps = 0   # decode steps so far: the clock of tool calls' `due` steps
        # on the engine's device: torch.multinomial refuses a generator on another device (CPU gen, CUDA probs)
        self.gen = torch.Generator(device=engine.decoder.device).manual_seed(seed)

    def run(self, prompts: list[tuple[str, list[int]]], branch: BranchConfig, policy_version: int) -> list[Tree]:
        """prompts: (problem_id, prompt token ids). Returns one finished Tree per prompt, in order, shaped by
        branch.policy (GREEDY_BRANCH with GREEDY params: one argmax chain per prompt, for evaluation)."""
        from .policies import POLICIES  # the policies import this module

        trees = [Tree(pid, ids, policy_version) for pid, ids in prompts]
        POLICIES[branch.policy].sample(self, trees, branch)
        return trees

    # ------------------------------------------------------------------ primitives for policies
    def root_prefixes(self, trees: list[Tree], roots: int) -> list[Prefix]:
        """Each prompt, continued by `roots` root chains that share its one prefill."""
        return [Prefix(t.prompt_ids, [Row(i, t.add_child(0)) for _ in range(roots)]) for i, t in enumerate(trees)]

    def grow(self, trees: list[Tree], prefixes: list[Prefix], fork_rule: ForkRule | None = None,
             budget: int = 0) -> None:
        """Prefill prefixes as the row cap allows and decode every row until its path ends. fork_rule picks
        online forks and keeps each tree within `budget` leaves, which admission reserves."""
        queue, live = deque(prefixes), [len(t.leaves()) for t in trees]  # live: leaves per tree, open or finished
        budget = budget if fork_rule else 0
        rows: list[Row] = []
        logits = None
        while True:
            rows, logits = self._admit(queue, rows, logits, live, budget)
            if not rows:
                return
            rows, logits = self._resume(trees, rows, logits)
            act = [i for i, r in enumerate(rows) if r.waiting is None]
            if not act:   # every row waits for a tool and no prompt fits: wait for the first call to finish
                if rows and self.tools.wait_steps:   # ... or move the clock to the first due step
                    self.steps = max(self.steps, min(r.due for r in rows))
                elif rows:
                    self.tools.wait_any([r.waiting for r in rows])
                continue
            rows, toks, parked = self._decode_once(trees, rows, act, logits, fork_rule, live)
            if rows:
                self.engine.select(torch.tensor([r.src for r in rows], dtype=torch.long))
                toks = torch.tensor(toks, dtype=torch.long)
                if parked:
                    logits = self.engine.step(toks, torch.tensor([True] * (len(rows) - parked) + [False] * parked))
                else:
                    logits = self.engine.step(toks)
                self.steps += 1

    def _decode_once(self, trees: list[Tree], rows: list[Row], act: list[int], logits: torch.Tensor,
                     fork_rule: ForkRule | None, live: list[int]) -> tuple[list[Row], list[int], int]:
        """One token for each active row (`act`: not waiting for a tool): draw, fork, append, end or start a
        tool call. Returns the rows for the next step (active ones, then the waiting ones), their tokens (a
        pad for a waiting row) and how many wait."""
        sub = [rows[i] for i in act]
        s = sample(logits if len(act) == len(rows) else logits[torch.tensor(act, device=logits.device)],
                   self.params, self.gen)
        tokens, forks = self._forks(sub, s, fork_rule, live)
        sub, toks = self._advance(trees, sub, tokens, s, self._siblings(s.logp, tokens, forks))
        for r in sub:
            r.src = act[r.src]                       # the engine row whose KV this row continues
        keep = [j for j, r in enumerate(sub) if not self._finished(trees, r, toks[j])]
        sub, toks = [sub[j] for j in keep], [toks[j] for j in keep]
        if self.tools is not None:
            for r in sub:                            # the token that ends a call is still fed this step
                self.tools.check(trees[r.tree], r)
                r.due = self.steps + self.tools.wait_steps
            self.tools.flush()                       # the step's calls leave together
        parked = []
        for i in sorted(set(range(len(rows))) - set(act)):
            rows[i].src = i
            parked.append(rows[i])
        return sub + parked, toks + [self.engine.pad_id] * len(parked), len(parked)

    def _resume(self, trees: list[Tree], rows: list[Row], logits: torch.Tensor):
        """Rows whose tool call finished: the observation is appended to the path (as tool tokens) and to the
        engine row (`Engine.extend`, no re-prefill), whose logits replace the row's. An observation that does
        not fit the episode's token limit (with one token to spare) is cut; one that cannot start ends the row."""
        wait = self.tools.wait_steps if self.tools else 0
        done = [i for i, r in enumerate(rows)
                if r.waiting is not None and (self.steps >= r.due if wait else r.waiting.done())]
        if not done:
            return rows, logits
        extend, ids, drop = [], [], []
        for i in done:
            r = rows[i]
            obs, output = self.tools.collect(r)
            obs = obs[:max(0, self.max_new_tokens - r.length - 1)]
            tree = trees[r.tree]
            tree.tool_calls_run += 1
            tree.tool_seconds += output.seconds
            tree.tool_unavailable += output.status == "unavailable"
            if not obs:
                trees[r.tree].nodes[r.node].finish = "length"
                drop.append(i)
                continue
            node = tree.nodes[r.node]
            node.tool = node.tool_flags() + [True] * len(obs)
            node.tokens += obs
            node.logprobs += [0.0] * len(obs)
            node.entropies += [0.0] * len(obs)
            r.length += len(obs)
            r.turn_start, r.since_tool = r.length, 0
            r.pre_tool = sum(r.recent) / len(r.recent) if r.recent else 0.0
            extend.append(i)
            ids.append(obs)
        if extend:
            logits = logits.clone()
            logits[torch.tensor(extend, device=logits.device)] = self.engine.extend(extend, ids)
        if drop:
            keep = [i for i in range(len(rows)) if i not in set(drop)]
            self.engine.select(torch.tensor(keep, dtype=torch.long))
            rows, logits = [rows[i] for i in keep], logits[torch.tensor(keep, dtype=torch.long, device=logits.device)]
        return rows, logits

    def reopen(self, trees: list[Tree], points: list[tuple[int, int, int]], children: int) -> None:
        """Fork finished chains: points are (tree, node, offset) = the token at `offset` in `node`'s span.
        Each point gets up to `children` new siblings of that token, drawn without replacement with the
        original token excluded, each decoded to the end. Points are cut in order along each path, so
        several points on one chain are fine. Prefixes are prefilled again (counted on the tree)."""
        prefixes = []
        offsets = {t: trees[t].span_starts() for t in {p[0] for p in points}}
        for t, node, offset in sorted(set(points), key=lambda p: (p[0], offsets[p[0]][p[1]] + p[2])):
            tree = trees[t]
            # an earlier cut may have moved this token into the tail, which `split` makes the first child
            while offset >= len(tree.nodes[node].tokens):
                offset -= len(tree.nodes[node].tokens)
                node = tree.nodes[node].children[0]
            original = tree.nodes[node].tokens[offset]
            if offset > 0:
                tree.split(node, offset)
            else:
                node = tree.nodes[node].parent
            ids = tree.prompt_ids + [tok for n in tree.path(node) for tok in tree.nodes[n].tokens]
            tree.reprefill_tokens += len(ids)
            tree.reprefill_context += attended_positions(len(ids))
            flags = tree.completion_roles(node)   # a multi-turn path's tool turns so far: its turn limit goes on
            row = Row(t, node, len(ids) - len(tree.prompt_ids), since_fork=0, original=original, children=children,
                      turns=tree.tool_calls(node), turn_start=len(flags) - flags[::-1].index(True) if any(flags) else 0)
            prefixes.append(Prefix(ids, [row]))
        self.grow(trees, prefixes)

    # ------------------------------------------------------------------ batching
    def _admit(self, queue: deque[Prefix], rows: list[Row], logits, live: list[int], budget: int):
        """Prefill the next prefixes whose rows fit under the cap (all of them without one) after the running
        rows; returns the rows and their next-token logits [B, V]. With no row running the engine starts
        afresh; an engine that cannot admit mid-flight (the HF fallback) takes prefixes only then, in waves."""
        if not queue or (rows and not self.engine.continuous_batching):
            return rows, logits
        room = (self.max_rows or math.inf) - self._held(rows, live, budget)
        taken = []
        while queue and self._need(queue[0], budget) <= room:
            room -= self._need(queue[0], budget)
            taken.append(queue.popleft())
        if not taken:
            if not rows:
                raise ValueError(f"max_rows={self.max_rows} cannot hold the {self._need(queue[0], budget)} rows one "
                                 "tree may decode at once; raise rollout.max_rows to at least branch.max_leaves")
            return rows, logits
        prefill = self.engine.admit if rows else self.engine.start
        new = prefill([p.ids for p in taken], [self.max_new_tokens - p.rows[0].length for p in taken])   # [P, V]
        expand = [j for j, p in enumerate(taken) for _ in p.rows]
        self.engine.select(torch.tensor(list(range(len(rows))) + [len(rows) + j for j in expand], dtype=torch.long))
        new = new[torch.tensor(expand, device=new.device)]
        for p in taken:
            for r in p.rows:
                live[r.tree] += r.original < 0   # a re-opened point's row is no leaf; its siblings will be
        return rows + [r for p in taken for r in p.rows], torch.cat([logits, new]) if rows else new

    @staticmethod
    def _need(prefix: Prefix, budget: int) -> int:
        """Rows a prefix may occupy at once once admitted: its rows' widths, or its tree's leaf budget."""
        return max(sum(r.width for r in prefix.rows), budget)

    @staticmethod
    def _held(rows: list[Row], live: list[int], budget: int) -> int:
        """Rows the running trees may occupy at once: every row's width, plus each open tree's unspent
        leaf budget, which its online forks may still take."""
        return sum(r.width for r in rows) + sum(max(0, budget - live[t]) for t in {r.tree for r in rows})

    # ------------------------------------------------------------------ bookkeeping
    @staticmethod
    def _forks(rows: list[Row], s: Sample, fork_rule: ForkRule | None, live: list[int]):
        """Each row's token ([B]: the one drawn, or a re-opened point's original) and the forks: row -> new
        children (a re-opened point: its `children`; a fork the rule picks: one)."""
        reopened = {i: r for i, r in enumerate(rows) if r.original >= 0}
        tokens = s.tokens
        if reopened:
            at = torch.tensor(list(reopened), device=tokens.device)
            tokens = tokens.index_put((at,), torch.tensor([r.original for r in reopened.values()], device=at.device))
        forks = {i: r.children for i, r in reopened.items()}
        if fork_rule:
            forkable = [p and r.original < 0 for p, r in zip((s.logprobs < 0).tolist(), rows)]
            forks.update((i, 1) for i in fork_rule(rows, s.entropy, forkable, live))
        return tokens, forks

    def _siblings(self, logp: torch.Tensor, tokens: torch.Tensor, forks: dict[int, int]) -> dict[int, Children]:
        """forks: row -> new children. Each child's (token, log-prob), drawn with the row's token excluded."""
        if not forks:
            return {}
        idx = sorted(forks)
        at = torch.tensor(idx, device=logp.device)
        drawn = siblings(logp[at], tokens[at], [forks[i] for i in idx], self.gen)
        pairs = [(i, tok) for i, toks in zip(idx, drawn) for tok in toks]
        lps = logp[[i for i, _ in pairs], [tok for _, tok in pairs]].tolist() if pairs else []
        out: dict[int, Children] = {}
        for (i, tok), lp in zip(pairs, lps):
            out.setdefault(i, []).append((tok, lp))
        return out

    def _finished(self, trees: list[Tree], row: Row, token: int) -> bool:
        """Marks the row's node as a leaf when it ended on EOS or reached the length limit."""
        if token == self.eos_id or row.length >= self.max_new_tokens:
            trees[row.tree].nodes[row.node].finish = "eos" if token == self.eos_id else "length"
            return True
        return False

    def _advance(self, trees, rows: list[Row], tokens: torch.Tensor, s: Sample, forks: dict[int, Children]):
        """Append each row's token to its node. A forked row's path continues in a new child, beside one
        new child per sibling; a re-opened point's row leaves only its siblings. Returns rows and tokens."""
        toks, lps, ents = tokens.tolist(), s.logprobs.tolist(), s.entropy.tolist()
        kept, kept_tokens, new_rows, new_tokens = [], [], [], []
        for i, r in enumerate(rows):
            r.src = i
            tree = trees[r.tree]
            for tok, lp in forks.get(i, []):   # a child carries its path's state, tool turns included
                child = replace(r, node=tree.add_child(r.node), since_fork=0, depth=r.depth + 1, src=i, original=-1,
                                children=0, waiting=None, request=None)
                self._append(tree, child, tok, lp, ents[i])
                new_rows.append(child)
                new_tokens.append(tok)
            if r.original >= 0:
                continue
            if i in forks:
                r.node, r.since_fork, r.depth = tree.add_child(r.node), 0, r.depth + 1
            self._append(tree, r, toks[i], lps[i], ents[i])
            kept.append(r)
            kept_tokens.append(toks[i])
        return kept + new_rows, kept_tokens + new_tokens

    def _append(self, tree: Tree, row: Row, token: int, logprob: float, entropy: float) -> None:
        node = tree.nodes[row.node]
        node.tokens.append(token)
        node.logprobs.append(logprob)
        node.entropies.append(entropy)
        row.length += 1
        row.since_fork += 1
        row.since_tool += 1
        row.recent = (row.recent + (entropy,))[-RECENT:]
        row.answered = row.answered or token in self.answer_ids
