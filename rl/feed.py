"""The stream of rollout batches a run trains on, synchronous or ahead of the trainer.

Batches are numbered in the order they are sent; batch n's problems and sampler seeds come from n, so
a run is reproducible whatever the timing. With `depth` 0 a batch is sent only when the loop asks for
one (on-policy: it starts after the last weight sync). With depth k >= 1 the loop keeps k batches in
flight (`top_up`) while it verifies, stores and trains, so the rollout workers never wait for the
trainer; a batch sent after sync v is trained on at most k updates later, which is what bounds the
staleness (`rollout.max_staleness`). The loop still checks every batch's real version and drops stale
ones. It does not verify anything.

Which problems batch n holds (`rollout.problem_order`): `draw` = an independent seeded draw of prompts_per_step
distinct problems per batch (a problem may come back before another was seen once; the only order a procedural
env, whose train split has no end, allows); `epochs` = the walk a data loader makes over a data-set env's train
split: each epoch a fresh permutation of the whole split, cut into batches, so no problem repeats within an
epoch. Both are functions of the batch number alone, so a resumed run continues the same order.
"""

from __future__ import annotations

import random
from collections import deque

from branchrl.envs import Environment, Problem

from .config import Config, ConfigError
from .context import Context
from .dispatch import Batch, collect, submit
from .seeding import derive_seed
from .tree import Tree


class Feed:
    def __init__(self, ctx: Context, depth: int, next_key: int = 1):
        self.ctx, self.depth, self.next_key = ctx, depth, next_key
        self.queue: deque[Batch] = deque()
        self.busy = [0.0] * len(ctx.roles.rollout)   # each rollout worker's seconds of work on training batches
        self.split: list[Problem] | None = None        # rollout.problem_order=epochs: the whole train split
        self.epoch: tuple[int, list[Problem]] = (-1, [])   # the permutation of the epoch in progress

    def top_up(self) -> None:
        """Keep `depth` batches in flight (nothing when synchronous)."""
        while len(self.queue) < self.depth:
            self.queue.append(self._send())

    def take(self) -> tuple[Batch, list[Tree], float]:
        """The oldest batch in flight (sending one first if none is), with its finished trees and the seconds
        its slowest worker spent sampling it (time queued behind other batches not counted)."""
        batch = self.queue.popleft() if self.queue else self._send()
        trees, busy = collect(self.ctx.roles, batch)
        self.busy = [a + b for a, b in zip(self.busy, busy)]
        for i, tree in enumerate(trees):  # workers number trees within their shard; ids must be run-unique
            tree.tree_id = f"{tree.problem_id}#b{batch.key}#{i}"
        return batch, trees, max(busy)

    def oldest_key(self) -> int:
        """The first batch not yet taken: where a resumed run starts sending again."""
        return self.queue[0].key if self.queue else self.next_key

    def drain(self) -> int:
        """Wait for the batches still in flight at the end of a run and discard them; returns their tokens."""
        unused = 0
        while self.queue:
            _, trees, _ = self.take()
            unused += sum(t.generated_tokens() for t in trees)
        return unused

    def _send(self) -> Batch:
        ctx, key = self.ctx, self.next_key
        self.next_key += 1
        problems = self.problems(key)
        prompts = [(p.id, ctx.tokenizer.encode(p.prompt)) for p in problems]
        return submit(ctx.roles, problems, prompts, key)

    def problems(self, key: int) -> list[Problem]:
        """The problems of batch `key` (1, 2, ...), as rollout.problem_order says."""
        cfg, n = self.ctx.cfg, self.ctx.cfg.rollout.prompts_per_step
        if cfg.rollout.problem_order == "draw":
            return self.ctx.env.train_problems(n, seed=derive_seed(cfg.run.seed, "problems", key))
        if self.split is None:
            self.split = self.ctx.env.train_problems(epoch_size(cfg, self.ctx.env), seed=cfg.run.seed)
        epoch, index = divmod(key - 1, len(self.split) // n)
        if self.epoch[0] != epoch:
            order = list(self.split)
            random.Random(derive_seed(cfg.run.seed, "epoch", epoch)).shuffle(order)
            self.epoch = (epoch, order)
        return self.epoch[1][index * n:(index + 1) * n]


def epoch_size(cfg: Config, env: Environment) -> int:
    """rollout.problem_order=epochs: the train split's size, checked to hold a batch. An epoch is its
    size // prompts_per_step batches; the remainder waits for a later epoch's permutation."""
    size = env.split_size("train")
    if size is None:
        raise ConfigError(f"rollout.problem_order=epochs walks the whole train split, but env {env.name!r} does not "
                          f"say how many train problems it holds (it draws them without end); use problem_order=draw")
    if size < cfg.rollout.prompts_per_step:
        raise ConfigError(f"rollout.problem_order=epochs: env {env.name!r} holds {size} train problems, fewer than "
                          f"rollout.prompts_per_step={cfg.rollout.prompts_per_step}")
    return size
