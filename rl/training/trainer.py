"""The training-group role: holds the policy and optimizer, learns from verified tokens, hands out weights.

A plain class (Ray wraps it in `branchrl.launch`), so it runs in-process in tests. It never imports
the engine; weights leave as a versioned CPU state dict with a checksum, which `weight_sync` moves
(through the object store, or broadcast by rank 0 over its own group: `send_weights`).

Data parallel: `train.workers` trainers `join` one torch.distributed job (gloo on CPU, nccl on GPUs)
and wrap the policy in DistributedDataParallel. Every rank gets the whole batch and walks the same
minibatches; each takes its slice, and the loss weighting makes the all-reduced gradient exactly the
one a lone trainer computes on the minibatch, so the ranks stay bitwise identical. A trainer that never
joins is a group of one and needs no torch.distributed. It does not shard parameters or optimizer
state (no FSDP/ZeRO): every rank holds the whole model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import socket
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from branchrl.config import Config
from branchrl.models import count_flop_params, load_policy
from branchrl.sync.weight_sync import BroadcastMember, Weights, layout, pack_weights, state_checksum

from .advantages import PGSample
from .algos import ALGOS
from .losses import completion_logprobs, pack_batch, policy_loss

OPTIMIZER_FILE = "optimizer.pt"   # beside the HF files of every checkpoint
STATE_FILE = "trainer.json"       # policy version and shuffling state, for `resume`
COUNTS = ("trained_tokens", "processed_tokens", "context_sum")   # the ledger's FLOP inputs, summed over ranks
COLLECTIVE_TIMEOUT = timedelta(minutes=10)   # rendezvous, and how long a rank waits for the others in a collective


class CompletionLogprobs(torch.nn.Module):
    """`completion_logprobs` of a causal LM as a module's forward, the call DistributedDataParallel hooks."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids, attn, loss_mask, temperature: float = 1.0) -> torch.Tensor:
        return completion_logprobs(self.model, ids, attn, loss_mask, temperature)


class Trainer(BroadcastMember):
    def __init__(self, cfg: Config):
        torch.set_num_threads(cfg.train.threads)
        self.cfg = cfg
        self.model, self.tokenizer = load_policy(cfg.model, cfg.run.seed)
        self.device = torch.device("cuda" if cfg.train.gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model.to(self.device).train()
        self.logprobs = CompletionLogprobs(self.model)   # wrapped in DDP by join()
        self.rank, self.world = 0, 1
        self.optimizer = self._optimizer(cfg.train.lr)
        self._load_optimizer_state()
        self.version = 0
        self.rng = random.Random(cfg.run.seed)
        self.ref_model = None
        self.published: tuple[int, list] = (-1, [])   # version and layout of the last publish (send_weights sends them)

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=self.cfg.train.weight_decay)

    def _load_optimizer_state(self) -> None:
        """A checkpoint this trainer saved carries its Adam moments: continuing from it (e.g. one warm start
        shared by several runs) then takes the same steps as a run that never stopped, at train.lr."""
        path = self.cfg.model.path and Path(self.cfg.model.path) / OPTIMIZER_FILE
        if path and path.is_file():
            self.optimizer.load_state_dict(torch.load(path, map_location=self.device))
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.train.lr

    def address(self) -> str:
        """Where the group's rendezvous will listen: this node's IP and a port free right now (ask rank 0)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return f"tcp://{ray.util.get_node_ip_address()}:{s.getsockname()[1]}"

    def join(self, address: str, rank: int, world: int) -> None:
        """Become rank `rank` of a `world`-trainer job; every rank must call this at the same time. DDP's
        constructor copies rank 0's parameters to every rank, so the group starts identical."""
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, init_method=address, rank=rank, world_size=world,
                                             timeout=COLLECTIVE_TIMEOUT)
        self.rank, self.world = rank, world
        self.logprobs = DistributedDataParallel(self.logprobs)

    def checksum(self) -> str:
        """sha256 of this rank's parameters and buffers (`weight_sync.state_checksum`)."""
        return state_checksum(self.model.state_dict())

    def describe(self) -> dict:
        """What the driver needs to know about the policy: HF config, special ids, FLOP parameter count."""
        c = self.model.config
        return {"config": c.to_dict(), "eos_id": self.tokenizer.eos_token_id, "pad_id": self.tokenizer.pad_token_id,
                "flop_params": count_flop_params(self.model), "layers": c.num_hidden_layers, "hidden": c.hidden_size}

    def warm_start(self, texts: list[tuple[str, str]]) -> dict:
        """Short SFT on worked (prompt, solution) pairs before RL."""
        ws = self.cfg.warm_start
        return self.sft(texts, ws.epochs, ws.lr, ws.batch_size)

    def sft(self, texts: list[tuple[str, str]], epochs: int, lr: float, batch_size: int) -> dict:
        """SFT on (prompt, completion) text pairs, loss on the completion + EOS, with linear warm-up and cosine
        decay from lr; the policy version stays (not an RL update) and the optimizer ends at train.lr."""
        eos = self.tokenizer.eos_token_id
        seqs = [(self.tokenizer.encode(p), self.tokenizer.encode(s) + [eos]) for p, s in texts]
        total = epochs * -(-len(seqs) // batch_size)
        warmup = max(1, total // 20)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr
        schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to 10%
            self.optimizer,
            lambda i: min(1.0, (i + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(i, total) / total)))
        stats = self.fit(seqs, epochs, batch_size, schedule=schedule)
        for group in self.optimizer.param_groups:  # RL continues with the same Adam moments
            group["lr"] = self.cfg.train.lr
        return stats

    def train(self, batch: list) -> dict:
        """One RL update; the policy version goes up by one. batch: (prompt_ids, completion_ids) pairs for
        a likelihood objective (`sft`), PGSamples for a policy-gradient one (`grpo`, `tree`)."""
        t = self.cfg.train
        if ALGOS[t.algo].policy_gradient:
            stats = self.fit(batch, t.epochs, t.batch_size, self._pg_loss,
                             pairs=lambda x: (x.prompt_ids, x.completion_ids), weight=lambda x: sum(x.weights))
        else:
            stats = self.fit(batch, t.epochs, t.batch_size)
        self.version += 1
        return stats

    def _pg_loss(self, items: list[PGSample], ids, attn, mask):
        """Clipped token-level policy gradient. The behaviour log-probs are the rollout's own (the engine
        matches a full forward to 1e-4 in fp32), so no extra forward pass is spent recomputing them."""
        t = self.cfg.train
        flat = lambda field: torch.tensor([v for x in items for v in getattr(x, field)], device=self.device)  # noqa: E731
        logp = self.logprobs(ids, attn, mask, self.cfg.rollout.temperature)
        ref = None
        if t.kl_coef > 0:
            with torch.no_grad():
                ref = completion_logprobs(self._reference(), ids, attn, mask, self.cfg.rollout.temperature)
        return policy_loss(logp, flat("old_logprobs"), flat("advantages"), flat("weights"),
                           t.clip_low, t.clip_high, ref, t.kl_coef)

    def _sft_loss(self, items: list, ids, attn, mask):
        """Mean negative log-likelihood over completion tokens (losses.sft_loss through the DDP wrapper)."""
        return -self.logprobs(ids, attn, mask).mean(), {}

    def _reference(self):
        """The frozen policy the KL term pulls towards: the weights at the first RL update (after warm start)."""
        if self.ref_model is None:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self.ref_model

    def fit(self, items, epochs: int, batch_size: int, loss_fn=None, schedule=None, pairs=lambda x: x,
            weight=None) -> dict:
        """Minibatch passes over items, one optimizer step per batch_size items (over all ranks).
        loss_fn(items, ids, attn, mask) -> (loss, stats) is a mean weighted by weight(item) per item (default:
        SFT NLL, a mean over completion tokens). Every rank holds all items and shuffles with the same seed,
        so all ranks walk the same minibatches. Returns totals over ranks, equal on every rank."""
        loss_fn = loss_fn or self._sft_loss
        weight = weight or (lambda x: len(pairs(x)[1]))
        t0, sums, steps = time.perf_counter(), Counter(dict.fromkeys(COUNTS, 0)), 0
        for _ in range(epochs):
            order = list(range(len(items)))
            self.rng.shuffle(order)
            for s in range(0, len(order), batch_size):
                sums.update(self._step([items[i] for i in order[s:s + batch_size]], loss_fn, pairs, weight))
                steps += 1
                if schedule is not None:
                    schedule.step()
        sums = self._sum_over_ranks(sums)
        counts = {k: int(sums.pop(k)) for k in COUNTS}
        return {"loss": sums.pop("loss", 0.0) / max(steps, 1), **counts, "seconds": time.perf_counter() - t0,
                "sequences": len(items), **{k: v / steps for k, v in sums.items()}}

    def _step(self, minibatch: list, loss_fn, pairs, weight) -> Counter:
        """One optimizer step; returns this rank's share of the stats. Each micro-batch's loss is scaled by
        W * its weight / the minibatch's weight, so DDP's average over the W ranks of the summed micro-batch
        gradients is the gradient of the whole minibatch's weighted mean, as one trainer computes it."""
        micros = self._micro_batches(minibatch, weight)
        total = self._sum_over_ranks({"weight": sum(w for _, w, _ in micros)})["weight"]
        sums = Counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (batch, w, real) in enumerate(micros):
            share = w / total if total > 0 else 0.0
            packed = pack_batch([pairs(x) for x in batch], self.tokenizer.pad_token_id)
            ids, attn, mask = (x.to(self.device) for x in packed)
            with self._sync_gradients(i == len(micros) - 1):
                loss, stats = loss_fn(batch, ids, attn, mask)
                (loss * (share * self.world)).backward()
            sums.update({"loss": share * loss.item(), **{k: share * v for k, v in stats.items()}})
            if real:
                lengths = attn.sum(1)                                     # [B]
                sums.update({"trained_tokens": int(mask.sum()), "processed_tokens": int(lengths.sum()),
                             "context_sum": int((lengths * (lengths + 1) // 2).sum())})  # causal attention positions
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
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

    def _sync_gradients(self, last: bool):
        """DDP all-reduces the gradients in the backward of a rank's last micro-batch only."""
        return self.logprobs.no_sync() if self.world > 1 and not last else contextlib.nullcontext()

    def _sum_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (every rank passes the same keys); unchanged for a lone trainer."""
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(summed)
        return dict(zip(keys, summed.tolist()))

    def weights(self) -> Weights:
        return pack_weights(self.model, self.version)

    def publish(self) -> dict:
        """Put the current weights in the Ray object store once; returns version, checksum and the ref.
        Only this small dict travels to the driver; the workers fetch the tensors from the store."""
        import ray

        w = self.weights()
        self.published = (w.version, layout(w.state))
        return {"version": w.version, "checksum": w.checksum, "ref": ray.put(w), "bytes": w.nbytes,
                "layout": self.published[1]}

    def send_weights(self, version: int) -> int:
        """As the broadcast group's rank 0 (`join_broadcast`), send the weights just published as `version`;
        returns the bytes sent. Nothing trains between publish and this call, so the model still holds them;
        the driver checks every receiver's checksum against the published one all the same."""
        state = self.model.state_dict()
        if (version, layout(state)) != self.published:
            raise RuntimeError(f"send_weights({version}): the trainer last published version {self.published[0]} "
                               f"and now holds {self.version}; publish first")
        return self._member().send(state)

    def save(self, path: str) -> str:
        """HF directory (config, safetensors, tokenizer) that AutoModelForCausalLM / AutoTokenizer load, plus
        the optimizer state (optimizer.pt) that a Trainer started from this directory continues with."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one tiny shard: a progress bar is only noise in the run log
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        torch.save(self.optimizer.state_dict(), Path(path) / OPTIMIZER_FILE)
        (Path(path) / STATE_FILE).write_text(json.dumps({"version": self.version, "rng": self.rng.getstate()}))
        return path

    def resume(self, path: str) -> int:
        """Continue a killed run from a checkpoint this trainer saved (weights and Adam moments are loaded at
        construction from model.path): the same policy version and minibatch shuffling. Returns the version."""
        state = json.loads((Path(path) / STATE_FILE).read_text())
        self.version = state["version"]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        return self.version
