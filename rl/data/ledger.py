"""Compute ledger: tokens, FLOPs, device-seconds and bytes per group, and the rollout-to-train FLOP ratio.

FLOPs follow DESIGN.md's model: a forward pass costs 2N per token plus attention 4*L*d*ctx
(ctx = tokens attended to), training costs three forwards' worth (6N + 12*L*d*ctx). N counts all
parameters but the input embedding. tests/test_flops.py checks these against torch's FlopCounterMode.

What is kept apart, and why a cluster plan needs it (`branchrl plan` reads these totals):
- rollout: prefill (prompts and re-prefilled prefixes) and decode FLOPs and tokens, since prefill is
  compute-bound and decode memory-bound; and the prefill that sharing a prefix between forks saved.
- train: the update's forward + backward (`train_update_flops`), the forward-only recompute of old
  log-probs and the KL reference pass; `train_flops` is their sum, the model FLOPs of the algorithm.
  Activation-checkpoint recompute (`train_checkpoint_flops`) is hardware work on top, not in the ratio.
- device-seconds: busy and idle per group, a device being a GPU (or a CPU worker slot when the role
  holds no GPU); verifier CPU-seconds (busy seconds of the verifier actors, one CPU each).
- bytes: verified data written (what a remote inference site ships to the trainers) and weights sent
  per sync (what comes back).
Eval and warm-start compute are kept apart from the ratio. It does not time anything itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

STEP_ROLLOUT = ("prefill_tokens", "reprefill_tokens", "fork_saved_prefill_tokens", "fork_saved_prefill_flops",
                "rollout_prefill_flops", "rollout_decode_flops", "rollout_flops", "verifier_cpu_seconds",
                "verified_bytes", "driver_seconds")   # what a step's metrics line adds when its rollouts are in
STEP_TRAIN = ("train_update_flops", "train_recompute_flops", "train_reference_flops", "train_flops",
              "train_checkpoint_flops")   # ... and when its update is done


@dataclass
class Ledger:
    flop_params: int
    layers: int
    hidden: int
    head_params: int = 0         # LM head parameters: activation checkpointing recomputes the blocks, not the head
    generated_tokens: int = 0    # decoded tokens (shared prefixes once), stale batches included
    verified_tokens: int = 0
    trained_tokens: int = 0
    prefill_tokens: int = 0      # positions prefilled: prompts once per tree, plus re-prefilled prefixes
    reprefill_tokens: int = 0    # ... of which re-prefilled to fork finished chains
    fork_saved_prefill_tokens: int = 0   # prefill that forks sharing their prefix did not have to compute
    fork_saved_prefill_flops: float = 0.0
    rollout_prefill_flops: float = 0.0
    rollout_decode_flops: float = 0.0
    rollout_flops: float = 0.0
    train_update_flops: float = 0.0      # forward + backward of the update
    train_recompute_flops: float = 0.0   # forward-only pass recomputing old log-probs
    train_reference_flops: float = 0.0   # forward-only passes of the KL reference
    train_flops: float = 0.0             # update + recompute + reference: the ratio's denominator
    train_checkpoint_flops: float = 0.0  # activation-checkpoint recompute in backward (hardware only)
    eval_flops: float = 0.0
    processed_tokens: int = 0            # tokens through the update's forward + backward, prompts included
    rollout_seconds: float = 0.0
    train_seconds: float = 0.0
    verify_seconds: float = 0.0
    sync_seconds: float = 0.0
    driver_seconds: float = 0.0  # the driver's own work in a step (prune, store, batch), serial with the groups
    rollout_busy_device_seconds: float = 0.0
    rollout_idle_device_seconds: float = 0.0
    train_busy_device_seconds: float = 0.0
    train_idle_device_seconds: float = 0.0
    verifier_cpu_seconds: float = 0.0
    leaves: int = 0                      # leaves verified
    syncs: int = 0
    verified_bytes: int = 0      # parquet bytes of verified samples written
    sync_bytes: int = 0          # weight bytes sent to the rollout workers, each of which receives them all
    train_state_bytes_per_rank: int = 0   # the most parameter + gradient + optimizer-state bytes one trainer held
    tool_calls: int = 0          # tool calls the rollouts made (multi-turn envs)
    tool_seconds: float = 0.0    # their sandbox seconds, summed (they overlap decoding, so not rollout time)
    appended_tokens: int = 0     # tool-output tokens appended to live rows (prefilled, not generated)
    tool_unavailable: int = 0    # tool calls that did not run for a reason of ours (the sandbox did not start)

    def forward_flops(self, tokens: int, context_sum: int) -> float:
        """tokens: positions computed; context_sum: sum over them of positions attended to."""
        return 2.0 * self.flop_params * tokens + 4.0 * self.layers * self.hidden * context_sum

    def add_rollout(self, trees, seconds: float, stale_tokens: int = 0) -> None:
        """A step's kept trees (`Tree`s) and the decoded tokens of stale batches dropped unverified (their decode
        FLOPs count 2N per token: their attention positions were not kept)."""
        decode = sum(t.generated_tokens() for t in trees)
        prefill = sum(len(t.prompt_ids) + t.reprefill_tokens + t.appended_tokens() for t in trees)  # + tool outputs
        prefill_ctx = sum(t.prefill_context() for t in trees)
        decode_ctx = sum(t.context_sum() for t in trees) - prefill_ctx
        saved = [t.fork_saved_prefill() for t in trees]
        self.generated_tokens += decode + stale_tokens
        self.prefill_tokens += prefill
        self.reprefill_tokens += sum(t.reprefill_tokens for t in trees)
        self.fork_saved_prefill_tokens += sum(tok for tok, _ in saved)
        self.fork_saved_prefill_flops += self.forward_flops(sum(tok for tok, _ in saved), sum(c for _, c in saved))
        prefill_flops = self.forward_flops(prefill, prefill_ctx)
        decode_flops = self.forward_flops(decode + stale_tokens, decode_ctx)
        self.rollout_prefill_flops += prefill_flops
        self.rollout_decode_flops += decode_flops
        self.rollout_flops += prefill_flops + decode_flops
        self.rollout_seconds += seconds

    def add_sampled(self, trees, seconds: float, leaves, verified_tokens: int, verify_seconds: float,
                    stale_tokens: int = 0) -> dict:
        """What a step of `run` (or a batch of `generate`) sampled and verified: its kept trees, rollout seconds, their
        verified leaves (`Leaf`s, with results), the verified tokens pruning counted, verification wall seconds and
        stale batches' tokens. Returns the tool counts, for the step's metrics line."""
        tools = self.add_tools(trees)   # tool outputs are prefilled into their rows (add_rollout counts them there)
        self.add_rollout(trees, seconds, stale_tokens)
        self.verified_tokens += verified_tokens
        self.add_verify(len(leaves), verify_seconds, sum(leaf.result.seconds for leaf in leaves))
        return tools

    def add_tools(self, trees) -> dict:
        """A step's tool turns (on the trees: calls, seconds, appended tokens, unavailable); returns them for the
        metrics. A call counts once per tree however many leaves share its output, and whether or not its rows
        were verified or stored."""
        step = {"tool_calls": sum(t.tool_calls_run for t in trees), "tool_seconds": sum(t.tool_seconds for t in trees),
                "appended_tokens": sum(t.appended_tokens() for t in trees),
                "tool_unavailable": sum(t.tool_unavailable for t in trees)}
        for key, value in step.items():
            setattr(self, key, getattr(self, key) + value)
        return step

    def add_eval(self, tokens: int, context_sum: int) -> None:
        self.eval_flops += self.forward_flops(tokens, context_sum)

    def add_train(self, stats) -> None:
        """A trainer update (`TrainStats`): forward + backward over the processed tokens, its forward-only passes
        (recomputed old log-probs, the KL reference) and activation-checkpoint recompute, each apart."""
        self.trained_tokens += stats.trained_tokens
        self.processed_tokens += stats.processed_tokens
        self.train_update_flops += 3.0 * self.forward_flops(stats.processed_tokens, stats.context_sum)
        self.train_recompute_flops += self.forward_flops(stats.forward_tokens, stats.forward_context_sum)
        self.train_reference_flops += self.forward_flops(stats.reference_tokens, stats.reference_context_sum)
        self.train_checkpoint_flops += (self.forward_flops(stats.checkpoint_tokens, stats.checkpoint_context_sum)
                                        - 2.0 * self.head_params * stats.checkpoint_tokens)
        self.train_flops = self.train_update_flops + self.train_recompute_flops + self.train_reference_flops
        self.train_seconds += stats.seconds
        self.train_state_bytes_per_rank = max(self.train_state_bytes_per_rank, stats.state_bytes)

    def add_verify(self, leaves: int, wall_seconds: float, busy_seconds: float) -> None:
        self.leaves += leaves
        self.verify_seconds += wall_seconds
        self.verifier_cpu_seconds += busy_seconds

    def add_sync(self, seconds: float, nbytes: int) -> None:
        self.syncs += 1
        self.sync_seconds += seconds
        self.sync_bytes += nbytes

    def add_busy(self, group: str, busy: float, held: float) -> None:
        """Device-seconds of a group ("rollout" or "train"): `busy` working, out of `held` (devices x wall)."""
        setattr(self, f"{group}_busy_device_seconds", getattr(self, f"{group}_busy_device_seconds") + busy)
        setattr(self, f"{group}_idle_device_seconds", getattr(self, f"{group}_idle_device_seconds") + held - busy)

    def since(self, mark: dict, keys: tuple[str, ...]) -> dict:
        """How much each of `keys` grew since `mark` (a `state()`): one step's share, for its metrics line."""
        return {k: getattr(self, k) - mark[k] for k in keys}

    @property
    def ratio(self) -> float | None:
        return self.rollout_flops / self.train_flops if self.train_flops else None

    def state(self) -> dict:
        """Everything, for a checkpoint; `Ledger(**state)` continues counting from it."""
        return asdict(self)

    def totals(self) -> dict:
        out = asdict(self)   # the shape too: a planner derives attention context from FLOPs with it
        out["decode_tokens"] = self.generated_tokens
        out["rollout_train_flop_ratio"] = self.ratio
        return out
