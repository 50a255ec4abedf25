"""The inference-group role: an engine + branching sampler that turns prompts into trees.

A plain class (Ray wraps it in `branchrl.launch`). It takes token ids, not text, so it needs no
tokenizer (except for an env with tools: it loads the env and the tokenizer to read calls and encode
outputs), and returns trees with per-token log-probs and entropies (of the distribution each token was
drawn from: rollout.temperature, top_k, top_p). With rollout.max_rows it decodes at most that many
sequences at once, admitting waiting prompts as rows finish (continuous batching). It never verifies.
Architectures the plain decoder lacks run on the slower HF fallback engine (`load_engine` logs which),
which admits waiting prompts only once its batch is done.

Bad input: a prompt that does not fit the engine (prompt + max_new_tokens over its per-sequence
limit) raises `PromptTooLong` naming the problem, before any compute; the worker stays usable. The
driver already refuses such lengths for tiny models before launch (`loop.prepare`).
"""

from __future__ import annotations

import os
import time

import torch

from branchrl.config import Config
from branchrl.engine import SamplingParams, check_prompts, load_engine
from branchrl.seeding import derive_seed
from branchrl.sync.weight_sync import BroadcastMember, Layout, Published, Weights, layout, state_checksum
from branchrl.tree import Tree

from .sampler import GREEDY, GREEDY_BRANCH, BranchSampler
from .tools import ToolRunner


class NoWeights(RuntimeError):
    """The worker holds no policy yet (it was just started or restarted): sync weights first."""


class RolloutWorker(BroadcastMember):
    def __init__(self, cfg: Config, model_config: dict, eos_id: int, pad_id: int, rank: int,
                 answer_ids: frozenset[int] = frozenset()):
        """answer_ids: the tokens that start the env's final answer (`loop.answer_start_ids`)."""
        torch.set_num_threads(cfg.rollout.threads_per_worker)
        device = "cuda" if cfg.rollout.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        self.cfg, self.eos_id, self.rank, self.answer_ids = cfg, eos_id, rank, frozenset(answer_ids)
        self.engine = load_engine(model_config, device, getattr(torch, cfg.model.dtype), pad_id,
                                  decode=cfg.rollout.decode)
        self.decoder = self.engine.decoder
        self.version = -1
        self.checksum = ""
        self.tools = tool_runner(cfg, self.engine)

    def set_weights(self, weights: Weights) -> dict:
        """Load a new policy version; returns the version and checksum of what was loaded, and this process's
        pid (a new pid after a sync means Ray restarted the worker in between)."""
        return self._load(weights.version, weights.state)

    def receive_weights(self, version: int, spec: Layout) -> dict:
        """Load the version trainer rank 0 broadcasts over the group this worker joined (`join_broadcast`);
        returns what `set_weights` returns. Raises SyncFailed if the broadcast does not complete."""
        return self._load(version, self._member().receive(spec))

    def publish_fixed(self) -> tuple[Published, Weights]:
        """A fixed policy with no trainer (`branchrl generate`): read model.path (or build the tiny model from
        run.seed, as a trainer would) and return what `Trainer.publish` returns for version 0, the weights in the
        compute dtype for the object store. This worker loads them like every other, through `set_weights`."""
        from branchrl.models import load_policy

        model, _ = load_policy(self.cfg.model, self.cfg.run.seed, dtype=torch.float32)  # cast as the trainer does
        dtype = getattr(torch, self.cfg.model.dtype)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().clone()
                 for k, v in model.state_dict().items()}
        weights = Weights(0, state, state_checksum(state))
        return Published(0, weights.checksum, weights.nbytes, layout(state)), weights

    def _load(self, version: int, state: dict) -> dict:
        self.decoder.load_state_dict(state)
        self.version = version
        held = self.decoder.w  # HFDecoder builds this dict on each access
        self.checksum = state_checksum({k: held[k] for k in state})  # what the engine holds
        return {"version": self.version, "checksum": self.checksum, "pid": os.getpid()}

    def rollout(self, prompts: list[tuple[str, list[int]]], step: int, greedy: bool = False,
                tool_actors: list | None = None) -> tuple[list[Tree], float]:
        """Trees for (problem_id, prompt_ids), branched as cfg.branch says. greedy=True: one argmax chain per
        prompt, no forks (eval). `step` seeds the sampler, so every call of a run needs its own step number.
        tool_actors: with rollout.tool_pool=verifiers, the verifier actors that run the tool calls (`Roles.tool_actors`,
        passed with every call, so a restarted worker has them too)."""
        if self.version < 0:
            raise NoWeights("this rollout worker holds no weights yet; call set_weights first")
        r = self.cfg.rollout
        check_prompts([ids for _, ids in prompts], r.max_new_tokens, self.engine.max_seq_len, [p for p, _ in prompts])
        params = GREEDY if greedy else SamplingParams(r.temperature, r.top_k, r.top_p)
        seed = derive_seed(self.cfg.run.seed, "rollout", self.rank, step)
        if self.tools is not None:   # what the turn function sees of each problem: its prompt, never its answer
            self.tools.prompts = {pid: self.tools.decode(ids) for pid, ids in prompts}
            if r.tool_pool == "verifiers":
                self.tools.calls = verifier_calls(tool_actors, self.rank)
        sampler = BranchSampler(self.engine, self.eos_id, r.max_new_tokens, params, seed, r.max_rows, self.answer_ids,
                                self.tools)
        t0 = time.perf_counter()
        trees = sampler.run(prompts, GREEDY_BRANCH if greedy else self.cfg.branch, self.version)
        return trees, time.perf_counter() - t0


def tool_runner(cfg: Config, engine) -> ToolRunner | None:
    """The env's tool turns when it declares any (`max_turns` > 0), with the policy's tokenizer; else None."""
    from branchrl.envs import load_env
    from branchrl.models import load_tokenizer

    env = load_env(cfg.env.name, **cfg.env.kwargs)
    if env.max_turns <= 0:
        return None
    if not hasattr(engine, "extend"):
        raise ValueError(f"env {env.name!r} calls tools, which needs the paged engine (appending a tool's output to "
                         f"a live row); this model runs on the HF fallback engine")
    workers = cfg.rollout.tool_workers if cfg.rollout.tool_pool == "worker" else 1   # verifiers: set per rollout
    return ToolRunner(env, load_tokenizer(cfg.model), workers, wait_steps=cfg.rollout.tool_wait_steps)


def verifier_calls(actors: list | None, rank: int):
    """The tool calls of one rollout on the verifier actors (rollout.tool_pool=verifiers; imports Ray, which the
    default path never does)."""
    from .remote_tools import VerifierCalls

    if not actors:
        raise ValueError("rollout.tool_pool=verifiers runs tool calls on the verifier actors, but this rollout got "
                         "none; pass them (dispatch.submit passes Roles.tool_actors) or set rollout.tool_pool=worker")
    return VerifierCalls(actors, rank)
