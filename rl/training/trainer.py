"""The training-group role: holds the policy and optimizer, learns from verified tokens, hands out weights.

A plain class (Ray wraps it where the roles are wired, `branchrl.launch`), so it runs in-process in tests; it
imports no Ray and never the engine. Weights leave as a versioned CPU state dict in the compute dtype with
a checksum (`publish`), which the trainer group puts in the object store, or which rank 0 broadcasts over
the weight-sync group (`send_weights`).

Precision and sharding are `parallel`'s: fp32 master weights and optimizer state, `model.dtype` compute,
FSDP2 over the `train.workers` trainers (`train.sharding`). One trainer is ready at construction; with more,
each `join`s the group's torch.distributed job. Every rank gets the whole batch and walks the same
minibatches; each takes its slice, and each micro-batch's loss is scaled so the averaged gradient is the
one a lone trainer computes on the whole minibatch. What an objective trains on, and its loss, is the
`Algo` entry's `objective`. Methods that gather or write the shards (`publish`, `save`, `resume`,
`checksum`) are collectives: every rank must call them, as it must every training call (`train`, and an SFT's
`sft_start`, each `sft_epoch`, `sft_finish`, which the driver runs one epoch at a time to report and stop between
epochs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from branchrl.config import Config, weight_sync_backend
from branchrl.models import describe, load_policy, save_policy
from branchrl.records import PolicyInfo
from branchrl.sync.weight_sync import BroadcastMember, Published, Weights, layout, state_checksum
from branchrl.tree import attended_positions

from . import parallel
from .algos import ALGOS
from .losses import pack_batch
from .objectives import LIKELIHOOD

STATE_FILE = "trainer.json"       # policy version and shuffling state, for `resume`
SHARDED_DIR = "sharded"           # in every checkpoint: fp32 master weights and optimizer state (DCP), per rank
COUNTS = ("trained_tokens", "processed_tokens", "context_sum", "forward_tokens", "forward_context_sum",
          "reference_tokens", "reference_context_sum", "checkpoint_tokens", "checkpoint_context_sum")
WARMUP_FRACTION = 0.05            # sft_start: linear warm-up over the first 5% of optimizer steps,
FINAL_LR_FRACTION = 0.1           # then cosine decay to 10% of the peak learning rate


@dataclass
class TrainStats:
    """One update (or SFT pass): totals over the ranks, equal on every rank. Token counts sum over epochs."""
    loss: float                    # mean over the optimizer steps of each step's weighted mean loss
    sequences: int                 # items trained on
    trained_tokens: int            # completion tokens with a loss
    processed_tokens: int          # tokens through forward and backward, prompts included
    context_sum: int               # causal attention positions over those tokens (FLOP accounting)
    seconds: float                 # wall time (the group reports its slowest rank's)
    forward_tokens: int = 0        # tokens through the forward-only pass recomputing old log-probs
    forward_context_sum: int = 0
    reference_tokens: int = 0      # tokens through the KL reference's forward-only passes
    reference_context_sum: int = 0
    checkpoint_tokens: int = 0     # tokens whose decoder-block forward backward recomputes (activation checkpointing)
    checkpoint_context_sum: int = 0
    state_bytes: int = 0           # parameters + gradients + optimizer state this rank holds (the group: the largest)
    clip_fraction: float | None = None   # grpo/tree: weighted fraction of tokens whose clipped ratio won
    kl: float | None = None              # grpo/tree: weighted mean k3 KL to the reference policy
    tis_clipped: float | None = None     # recompute: weighted fraction of tokens whose importance weight hit tis_cap
    mismatch: float | None = None        # recompute: mean |log p_trainer - log p_rollout| per token before the update
    mismatch_max: float | None = None    # recompute: the largest such gap
    grad_norm: float | None = None       # mean over the optimizer steps of the gradient norm before clipping
    lr: float | None = None              # the learning rate of the last optimizer step


@dataclass
class SFTRun:
    """An SFT between `Trainer.sft_start` and `sft_finish`: what it trains on, its schedule, how far it got, and this
    rank's stats of every optimizer step so far, summed in step order."""
    seqs: list
    epochs: int
    batch_size: int
    schedule: torch.optim.lr_scheduler.LambdaLR
    done: int = 0                  # epochs finished
    steps: int = 0                 # optimizer steps taken
    seconds: float = 0.0           # spent in its epochs
    sums: Counter = field(default_factory=lambda: Counter(dict.fromkeys(COUNTS, 0)))


def summed(steps: list[Counter]) -> Counter:
    """Per-step stats added up in step order, every count key present."""
    total = Counter(dict.fromkeys(COUNTS, 0))
    for step in steps:
        total.update(step)
    return total


def encode_pair(tokenizer, prompt: str, completion) -> tuple:
    """What an SFT (`Trainer.sft_start`) trains on for a text pair: (prompt ids, completion ids + EOS), and for a
    completion that is a transcript [(role, text), ...] also the trained mask ([C] bools), whose "tool" messages are
    context, not targets (`pack_batch`). `train --from-data` measures a stored sample's length with it before the
    trainer exists."""
    eos = tokenizer.eos_token_id
    if isinstance(completion, str):
        return tokenizer.encode(prompt), tokenizer.encode(completion, add_special_tokens=False) + [eos]
    ids, trained = [], []
    for role, text in completion:
        part = tokenizer.encode(text, add_special_tokens=False)
        ids, trained = ids + part, trained + [role != "tool"] * len(part)
    return tokenizer.encode(prompt), ids + [eos], trained + [True]


class Trainer(BroadcastMember):
    def __init__(self, cfg: Config):
        torch.set_num_threads(cfg.train.threads)
        self.cfg = cfg
        self.compute_dtype = getattr(torch, cfg.model.dtype)
        self.model, self.tokenizer = load_policy(cfg.model, cfg.run.seed, dtype=torch.float32)  # the master copy
        gpu = cfg.train.gpus > 0 and torch.cuda.is_available()   # Ray shows a trainer its own GPU as the current one
        self.device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
        self.version = 0
        self.rng = random.Random(cfg.run.seed)
        self.rank, self.world = 0, 1
        self.root = self.optimizer = self.reference = None
        self.loaded_from: Path | None = None   # the checkpoint whose sharded state the model holds
        self.sent: Weights | None = None       # what rank 0 last published, kept for a broadcast (`send_weights`)
        self.sft_run: SFTRun | None = None     # an SFT begun by `sft_start`, until `sft_finish`
        if cfg.train.workers == 1:
            self.join(None, 0, 1)

    def join(self, address: str | None, rank: int, world: int) -> None:
        """Become rank `rank` of a `world`-trainer job (every rank at once; address: rank 0's tcp://ip:port),
        shard the model, make the optimizer and load a checkpoint's sharded state if model.path is one."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        parallel.init_process_group(address, rank, world, self.device)
        self.rank, self.world = rank, world
        t = self.cfg.train
        self.mesh = parallel.device_mesh(t.sharding, world, self.device)
        self.root = parallel.shard(self.model, self.mesh, self.compute_dtype, t.activation_checkpointing)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        path = self.cfg.model.path and Path(self.cfg.model.path)
        if path and (path / SHARDED_DIR).is_dir():   # a checkpoint this trainer saved: continue it exactly
            self._load_sharded(path)

    def describe(self) -> PolicyInfo:
        """What the driver needs to know about the policy: HF config, special ids, FLOP parameter count."""
        return describe(self.model, self.tokenizer)

    def sft_start(self, texts: list[tuple], epochs: int, lr: float, batch_size: int) -> int:
        """Begin an SFT on (prompt, completion) text pairs (a completion may be a [(role, text), ...] transcript whose
        tool messages are not trained on), loss on the completion + EOS, for `epochs` passes of one optimizer step
        per batch_size pairs, with linear warm-up and cosine decay from lr over all of them. The driver then calls
        `sft_epoch` once per epoch (it may stop early) and `sft_finish`. Returns the optimizer steps per epoch."""
        if self.sft_run is not None:
            raise RuntimeError(f"sft_start: an SFT is in progress ({self.sft_run.done}/{self.sft_run.epochs} epochs); "
                               f"sft_finish it first")
        seqs = [encode_pair(self.tokenizer, p, s) for p, s in texts]
        per_epoch = -(-len(seqs) // batch_size)
        total = epochs * per_epoch
        warmup = max(1, int(total * WARMUP_FRACTION))
        floor = FINAL_LR_FRACTION
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr
        schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: min(1.0, (i + 1) / warmup) * (
            floor + (1 - floor) * (1 + math.cos(math.pi * min(i, total) / total)) / 2))
        self.sft_run = SFTRun(seqs, epochs, batch_size, schedule)
        return per_epoch

    def sft_epoch(self) -> TrainStats:
        """One epoch of the SFT `sft_start` began (every rank calls it); that epoch's stats. The schedule and the
        shuffling run on from the epoch before, so E calls take exactly the steps of one E-epoch pass."""
        run = self.sft_run
        if run is None or run.done == run.epochs:
            raise RuntimeError("sft_epoch: no SFT in progress; call sft_start first" if run is None else
                               f"sft_epoch: all {run.epochs} epochs are done; call sft_finish")
        t0 = time.perf_counter()
        steps = self._epoch(run.seqs, run.batch_size, LIKELIHOOD, run.schedule)
        seconds = time.perf_counter() - t0
        run.done, run.steps, run.seconds = run.done + 1, run.steps + len(steps), run.seconds + seconds
        for step in steps:
            run.sums.update(step)   # step by step, as one pass over every epoch adds them up
        return self._stats(summed(steps), len(steps), len(run.seqs), seconds)

    def sft_finish(self) -> TrainStats:
        """End the SFT (after all its epochs, or fewer when the driver stopped): the totals over the epochs done (the
        loss: the mean over their optimizer steps; lr: the schedule's last); the policy version stays (not an RL
        update) and the optimizer goes back to train.lr, keeping its Adam moments for RL."""
        run, self.sft_run = self.sft_run, None
        if run is None:
            raise RuntimeError("sft_finish: no SFT in progress")
        stats = self._stats(run.sums, run.steps, len(run.seqs), run.seconds)
        self._set_lr(self.cfg.train.lr)
        return stats

    def sft(self, texts: list[tuple], epochs: int, lr: float, batch_size: int) -> TrainStats:
        """The whole SFT in one call, for in-process use (tests, a library): `sft_start`, every `sft_epoch`,
        `sft_finish`. The driver runs the epochs itself (`loop.sft_epochs`), to report and stop between them."""
        self.sft_start(texts, epochs, lr, batch_size)
        for _ in range(epochs):
            self.sft_epoch()
        return self.sft_finish()

    def train(self, batch: list) -> TrainStats:
        """One RL update; the policy version goes up by one. batch: what `train.algo`'s objective trains on
        ((prompt_ids, completion_ids) pairs for sft, PGSamples for grpo and tree)."""
        t, t0 = self.cfg.train, time.perf_counter()
        objective = ALGOS[t.algo].objective
        items, prepared = objective.prepare(self, batch)
        stats = self.fit(items, t.epochs, t.batch_size, objective, prepared=prepared)
        self.version += 1
        return dataclasses.replace(stats, seconds=time.perf_counter() - t0)

    def logprobs(self, ids, attn, mask, temperature: float = 1.0) -> torch.Tensor:
        """The policy's completion log-probs [N] (fp32) for a packed batch ([B, T] each), through the FSDP root."""
        return self.root(ids, attn, mask, temperature)

    def reference_logprobs(self, ids, attn, mask, temperature: float) -> torch.Tensor:
        """The KL reference's completion log-probs [N], no gradient. The reference is a frozen copy of the
        weights at the first RL update that asks for it (after warm start)."""
        if self.reference is None:
            self.reference = parallel.frozen_copy(self.model, self.mesh, self.compute_dtype)
        with torch.no_grad():
            return self.reference(ids, attn, mask, temperature)

    def forward_only(self, items: list, sequence, temperature: float) -> tuple[list[list[float]], dict]:
        """Every item's per-token completion log-probs under the current weights, no gradient, on every rank:
        each rank computes its share (items[rank::W]) in micro-batches, then they swap results. Also the
        pass's token counts over the ranks (forward_tokens, forward_context_sum)."""
        mine: dict[int, list[float]] = {}
        counts = Counter()
        with torch.no_grad():
            for chunk, _, real in self._micro_batches(list(enumerate(items)), lambda _: 1.0):
                seqs = [sequence(x) for _, x in chunk]
                ids, attn, mask = self._pack(seqs)
                logp = self.logprobs(ids, attn, mask, temperature)
                if real:
                    for (i, _), lp in zip(chunk, logp.split([len(c) for _, c in seqs])):
                        mine[i] = lp.tolist()
                    counts.update(self._counts(attn, mask, 0, False))
        parts = [mine]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, mine)
        merged = {i: lp for part in parts for i, lp in part.items()}
        total = self._sum_over_ranks({"forward_tokens": counts["processed_tokens"],
                                      "forward_context_sum": counts["context_sum"]})
        return [merged[i] for i in range(len(items))], {k: int(v) for k, v in total.items()}

    def fit(self, items: list, epochs: int, batch_size: int, objective, prepared: dict | None = None) -> TrainStats:
        """Minibatch passes over items, one optimizer step per batch_size items (over all ranks). Every rank holds
        all items and shuffles with the same seed, so all ranks walk the same minibatches. prepared: stats of
        the objective's preparation, already final."""
        t0, steps = time.perf_counter(), []
        for _ in range(epochs):
            steps += self._epoch(items, batch_size, objective)
        return self._stats(summed(steps), len(steps), len(items), time.perf_counter() - t0, prepared)

    def _epoch(self, items: list, batch_size: int, objective, schedule=None) -> list[Counter]:
        """One pass over items in a shuffled order (the same on every rank); each optimizer step's stats."""
        order = list(range(len(items)))
        self.rng.shuffle(order)
        steps = []
        for s in range(0, len(order), batch_size):
            steps.append(self._step([items[i] for i in order[s:s + batch_size]], objective))
            if schedule is not None:
                schedule.step()
        return steps

    def _stats(self, sums: Counter, steps: int, sequences: int, seconds: float,
               prepared: dict | None = None) -> TrainStats:
        """TrainStats of `steps` optimizer steps whose stats on this rank add up to sums, totalled over the ranks
        (a collective)."""
        sums = self._sum_over_ranks(sums)
        counts = {k: int(sums.pop(k)) for k in COUNTS}
        means = {k: v / max(steps, 1) for k, v in sums.items()}   # the loss and the objective's token-level stats
        means.setdefault("loss", 0.0)
        for k, v in (prepared or {}).items():
            if k in counts:
                counts[k] += v
            else:
                means[k] = v
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        return TrainStats(sequences=sequences, seconds=seconds,
                          state_bytes=parallel.state_bytes(self.model, self.optimizer), **counts, **means)

    def _step(self, minibatch: list, objective) -> Counter:
        """One optimizer step; returns this rank's share of the stats. Each micro-batch's loss is scaled by
        W * its weight / the minibatch's weight, so the reduction's average over the W ranks of the summed
        micro-batch gradients is the gradient of the whole minibatch's weighted mean, as one trainer computes it."""
        micros = self._micro_batches(minibatch, objective.weight)
        total = self._sum_over_ranks({"weight": sum(w for _, w, _ in micros)})["weight"]
        passes = objective.reference_forwards(self.cfg)
        sums = Counter()
        self.optimizer.zero_grad(set_to_none=True)
        for batch, w, real in micros:
            share = w / total if total > 0 else 0.0
            ids, attn, mask = self._pack([objective.sequence(x) for x in batch])
            loss, stats = objective.loss(self, batch, ids, attn, mask)
            (loss * (share * self.world)).backward()
            sums.update({"loss": share * loss.item(), **{k: share * v for k, v in stats.items()}})
            if real:
                sums.update(self._counts(attn, mask, passes, self.cfg.train.activation_checkpointing))
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm   # a DTensor under FSDP2
        sums["grad_norm"] += float(norm) / self.world   # the same global norm on every rank: summed over them once
        self.optimizer.step()
        return sums

    def _micro_batches(self, minibatch: list, weight) -> list[tuple[list, float, bool]]:
        """This rank's items, minibatch[rank::W], as (items, weight, real) micro-batches. Every rank runs the
        same number of them, padding with a zero-weight stand-in (minibatch[0], real=False), so every rank
        makes the same collective calls in the same order and none waits forever."""
        size = self.cfg.train.micro_batch_size or -(-len(minibatch) // self.world)
        count = -(-len(minibatch) // (self.world * size))
        mine = minibatch[self.rank::self.world]
        chunks = [mine[k * size:(k + 1) * size] for k in range(count)]
        return [(c, float(sum(map(weight, c))), True) if c else ([minibatch[0]], 0.0, False) for c in chunks]

    def _pack(self, seqs: list[tuple[list[int], list[int]]]):
        return (x.to(self.device) for x in pack_batch(seqs, self.tokenizer.pad_token_id))

    @staticmethod
    def _counts(attn: torch.Tensor, mask: torch.Tensor, reference_passes: int, checkpointing: bool) -> dict[str, int]:
        """A micro-batch's tokens for the ledger: trained, processed, again per KL-reference forward, and once more
        when activation checkpointing recomputes the forward in backward."""
        lengths = attn.sum(1).tolist()                                   # [B]
        processed, context = sum(lengths), sum(map(attended_positions, lengths))
        return {"trained_tokens": int(mask.sum()), "processed_tokens": processed, "context_sum": context,
                "reference_tokens": reference_passes * processed, "reference_context_sum": reference_passes * context,
                "checkpoint_tokens": checkpointing * processed, "checkpoint_context_sum": checkpointing * context}

    def _sum_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (every rank passes the same keys); unchanged for a lone trainer."""
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return dict(zip(keys, summed.tolist()))

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def publish(self) -> tuple[Published | None, Weights | None]:
        """The current weights in the compute dtype, gathered from the shards (every rank calls it). Rank 0
        returns what the driver checks (version, checksum, bytes, layout) and the weights; the others (None, None)."""
        state = parallel.full_state(self.model, self.compute_dtype, keep=self.rank == 0)
        if self.rank != 0:
            return None, None
        weights = Weights(self.version, state, state_checksum(state))
        self.sent = weights if weight_sync_backend(self.cfg) else None   # only a broadcast sends them again
        return Published(weights.version, weights.checksum, weights.nbytes, layout(state)), weights

    def send_weights(self, version: int) -> int:
        """As the broadcast group's rank 0 (`join_broadcast`), send the weights published as `version`; returns
        the bytes sent. The driver checks every receiver's checksum against the published one."""
        if self.sent is None or self.sent.version != version:
            held = self.sent.version if self.sent else None
            raise RuntimeError(f"send_weights({version}): the last weights published for a broadcast are version "
                               f"{held}; publish first")
        return self._member().send(self.sent.state)

    def checksum(self) -> str:
        """sha256 of the whole policy in the compute dtype, as `publish` computes it (every rank gathers it all:
        for tests and debugging, not for big models). Under ddp each rank hashes its own replica."""
        return state_checksum(parallel.full_state(self.model, self.compute_dtype, keep=True))

    def save(self, path: str) -> str:
        """A checkpoint: an HF directory in model.dtype that AutoModelForCausalLM / AutoTokenizer load, plus the
        fp32 master weights and optimizer state (sharded/, DCP) and trainer.json, from which a Trainer continues
        exactly. Every rank calls it and writes its shards (the path must be on storage every rank sees)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = parallel.full_state(self.model, self.compute_dtype, keep=self.rank == 0)
        parallel.save_sharded(out / SHARDED_DIR, self.model, self.optimizer)
        if self.rank == 0:
            save_policy(out, self.model, state, self.tokenizer, self.cfg.model.dtype)
            (out / STATE_FILE).write_text(json.dumps({"version": self.version, "rng": self.rng.getstate()}))
        self._barrier()
        return path

    def resume(self, path: str) -> int:
        """Continue from a checkpoint this group (with any number of ranks) saved: master weights and optimizer
        state resharded to this group, the policy version and the minibatch shuffling. Returns the version."""
        if self.loaded_from != Path(path):
            self._load_sharded(Path(path))
        state = json.loads((Path(path) / STATE_FILE).read_text())
        self.version = state["version"]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        return self.version

    def _load_sharded(self, path: Path) -> None:
        parallel.load_sharded(path / SHARDED_DIR, self.model, self.optimizer)
        self._set_lr(self.cfg.train.lr)
        self.loaded_from = path

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
