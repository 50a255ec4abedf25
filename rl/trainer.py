"""The training-group role: holds the policy and optimizer, learns from verified tokens, hands out weights.

A plain class (Ray wraps it in `branchrl.launch`), so it runs in-process in tests. It never imports
the engine; weights leave as a versioned CPU state dict with a checksum, which `weight_sync` moves.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import torch

from .config import Config
from .advantages import PGSample
from .algos import ALGOS
from .losses import completion_logprobs, pack_batch, policy_loss, sft_loss
from .models import count_flop_params, load_policy
from .weight_sync import Weights, pack_weights

OPTIMIZER_FILE = "optimizer.pt"   # beside the HF files of every checkpoint
STATE_FILE = "trainer.json"       # policy version and shuffling state, for `resume`


class Trainer:
    def __init__(self, cfg: Config):
        torch.set_num_threads(cfg.train.threads)
        self.cfg = cfg
        self.model, self.tokenizer = load_policy(cfg.model, cfg.run.seed)
        self.device = torch.device("cuda" if cfg.train.gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model.to(self.device).train()
        self.optimizer = self._optimizer(cfg.train.lr)
        self._load_optimizer_state()
        self.version = 0
        self.rng = random.Random(cfg.run.seed)
        self.ref_model = None

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
            self.optimizer, lambda i: min(1.0, (i + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(i, total) / total)))
        stats = self.fit(seqs, epochs, batch_size, schedule=schedule)
        for group in self.optimizer.param_groups:  # RL continues with the same Adam moments
            group["lr"] = self.cfg.train.lr
        return stats

    def train(self, batch: list) -> dict:
        """One RL update; the policy version goes up by one. batch: (prompt_ids, completion_ids) pairs for
        a likelihood objective (`sft`), PGSamples for a policy-gradient one (`grpo`, `tree`)."""
        t = self.cfg.train
        if ALGOS[t.algo].policy_gradient:
            stats = self.fit(batch, t.epochs, t.batch_size, self._pg_loss, pairs=lambda x: (x.prompt_ids, x.completion_ids))
        else:
            stats = self.fit(batch, t.epochs, t.batch_size)
        self.version += 1
        return stats

    def _pg_loss(self, items: list[PGSample], ids, attn, mask):
        """Clipped token-level policy gradient. The behaviour log-probs are the rollout's own (the engine
        matches a full forward to 1e-4 in fp32), so no extra forward pass is spent recomputing them."""
        t = self.cfg.train
        flat = lambda field: torch.tensor([v for x in items for v in getattr(x, field)], device=self.device)  # noqa: E731
        logp = completion_logprobs(self.model, ids, attn, mask, self.cfg.rollout.temperature)
        ref = None
        if t.kl_coef > 0:
            with torch.no_grad():
                ref = completion_logprobs(self._reference(), ids, attn, mask, self.cfg.rollout.temperature)
        return policy_loss(logp, flat("old_logprobs"), flat("advantages"), flat("weights"),
                           t.clip_low, t.clip_high, ref, t.kl_coef)

    def _reference(self):
        """The frozen policy the KL term pulls towards: the weights at the first RL update (after warm start)."""
        if self.ref_model is None:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self.ref_model

    def fit(self, items, epochs: int, batch_size: int, loss_fn=None, schedule=None, pairs=lambda x: x) -> dict:
        """Minibatch passes over items; loss_fn(items, ids, attn, mask) -> (loss, stats) (default: SFT NLL)."""
        t0, losses, tokens, processed, context, extra = time.perf_counter(), [], 0, 0, 0, {}
        for _ in range(epochs):
            order = list(range(len(items)))
            self.rng.shuffle(order)
            for s in range(0, len(order), batch_size):
                batch = [items[i] for i in order[s:s + batch_size]]
                packed = pack_batch([pairs(x) for x in batch], self.tokenizer.pad_token_id)
                ids, attn, mask = (x.to(self.device) for x in packed)
                loss, step_stats = loss_fn(batch, ids, attn, mask) if loss_fn else (sft_loss(self.model, ids, attn, mask), {})
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                self.optimizer.step()
                if schedule is not None:
                    schedule.step()
                losses.append(loss.item())
                for k, v in step_stats.items():
                    extra.setdefault(k, []).append(v)
                lengths = attn.sum(1)                                     # [B]
                tokens += int(mask.sum())
                processed += int(lengths.sum())
                context += int((lengths * (lengths + 1) // 2).sum())      # causal attention positions
        return {"loss": sum(losses) / max(len(losses), 1), "trained_tokens": tokens, "processed_tokens": processed,
                "context_sum": context, "seconds": time.perf_counter() - t0, "sequences": len(items),
                **{k: sum(v) / len(v) for k, v in extra.items()}}

    def weights(self) -> Weights:
        return pack_weights(self.model, self.version)

    def publish(self) -> dict:
        """Put the current weights in the Ray object store once; returns version, checksum and the ref.
        Only this small dict travels to the driver; the workers fetch the tensors from the store."""
        import ray

        w = self.weights()
        return {"version": w.version, "checksum": w.checksum, "ref": ray.put(w), "bytes": w.nbytes}

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
