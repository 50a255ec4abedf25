"""Compute ledger: tokens, FLOPs and seconds per group, and the rollout-to-train FLOP ratio.

FLOPs follow DESIGN.md's model: a forward pass costs 2N per token plus attention 4*L*d*ctx
(ctx = tokens attended to), training costs three forwards' worth (6N + 12*L*d*ctx). N counts all
parameters but the input embedding. Eval and warm-start compute are kept apart from the ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Ledger:
    flop_params: int
    layers: int
    hidden: int
    generated_tokens: int = 0
    verified_tokens: int = 0
    trained_tokens: int = 0
    rollout_flops: float = 0.0
    train_flops: float = 0.0
    eval_flops: float = 0.0
    rollout_seconds: float = 0.0
    train_seconds: float = 0.0
    verify_seconds: float = 0.0
    sync_seconds: float = 0.0
    sync_bytes: int = 0          # weight bytes sent to the rollout workers, each of which receives them all
    train_state_bytes_per_rank: int = 0   # the most parameter + gradient + optimizer-state bytes one trainer held
    tool_calls: int = 0          # tool calls the rollouts made (multi-turn envs)
    tool_seconds: float = 0.0    # their sandbox seconds, summed (they overlap decoding, so not rollout time)
    appended_tokens: int = 0     # tool-output tokens appended to live rows (prefilled, not generated)

    def forward_flops(self, tokens: int, context_sum: int) -> float:
        """tokens: positions computed; context_sum: sum over them of positions attended to."""
        return 2.0 * self.flop_params * tokens + 4.0 * self.layers * self.hidden * context_sum

    def add_rollout(self, generated: int, prefill: int, context_sum: int, seconds: float) -> None:
        self.generated_tokens += generated
        self.rollout_flops += self.forward_flops(generated + prefill, context_sum)
        self.rollout_seconds += seconds

    def add_tools(self, trees) -> dict:
        """A step's tool turns (on the trees: calls, seconds, appended tokens); returns them for the metrics."""
        step = {"tool_calls": sum(t.tool_calls_run for t in trees), "tool_seconds": sum(t.tool_seconds for t in trees),
                "appended_tokens": sum(t.appended_tokens() for t in trees),
                "tool_unavailable": sum(t.tool_unavailable for t in trees)}
        self.tool_calls += step["tool_calls"]
        self.tool_seconds += step["tool_seconds"]
        self.appended_tokens += step["appended_tokens"]
        return step

    def add_eval(self, tokens: int, context_sum: int) -> None:
        self.eval_flops += self.forward_flops(tokens, context_sum)

    def add_train(self, stats) -> None:
        """A trainer update (`TrainStats`): forward + backward over the processed tokens, plus its forward-only
        passes (recomputed old log-probs, the KL reference)."""
        self.trained_tokens += stats.trained_tokens
        self.train_flops += (3.0 * self.forward_flops(stats.processed_tokens, stats.context_sum)
                             + self.forward_flops(stats.forward_tokens, stats.forward_context_sum))
        self.train_seconds += stats.seconds
        self.train_state_bytes_per_rank = max(self.train_state_bytes_per_rank, stats.state_bytes)

    @property
    def ratio(self) -> float | None:
        return self.rollout_flops / self.train_flops if self.train_flops else None

    def state(self) -> dict:
        """Everything, for a checkpoint; `Ledger(**state)` continues counting from it."""
        return asdict(self)

    def totals(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("flop_params", "layers", "hidden")}
        out["rollout_train_flop_ratio"] = self.ratio
        return out

