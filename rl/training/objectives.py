"""The trainer's half of each objective (`train.algo`): what a training item is, how much it weighs in a
minibatch, what is computed before an update, and the loss. The Trainer runs the passes and steps; it never
asks which objective it holds. Pure loss math lives in `losses`, advantages in `advantages`.

- `Likelihood` (sft, and every warm start / `train --from-data`): items are (prompt_ids, completion_ids), or
  with a third element, the completion tokens trained on (a multi-turn transcript: the policy's, not the
  tools'); the loss is the mean NLL over trained tokens, so an item weighs their number.
- `PolicyGradient` (grpo, tree): items are PGSamples; the clipped token-level loss at the rollout
  temperature, each item weighing the sum of its token weights. With `train.old_logprobs: recompute` the
  trainer first computes every token's log-prob under the weights before the update (one forward-only
  pass, counted as training FLOPs): those are the PPO ratio's denominator, and the engine's own log-probs
  enter only through truncated importance weights min(pi_trainer / pi_rollout, train.tis_cap), which
  correct for the engine's different numerics (bf16 kernels). With `rollout` the engine's log-probs are
  the denominator (exact in fp32, where the two agree to ~1e-6; no extra pass).
"""

from __future__ import annotations

import dataclasses

from .advantages import PGSample

# torch and the losses are imported where a loss is computed: the Algo entries hold these objects, and the config
# validates names against ALGOS, which must not load torch (`branchrl --help` and config errors stay instant)


class Likelihood:
    def sequence(self, item: tuple) -> tuple:
        return item

    def weight(self, item) -> float:
        """Its trained tokens: the completion's, or with a `trained` mask (a tool transcript) the policy's."""
        return float(sum(item[2]) if len(item) > 2 else len(item[1]))

    def reference_forwards(self, cfg) -> int:
        """Forward-only passes per trained micro-batch besides the training one (FLOP accounting)."""
        return 0

    def prepare(self, trainer, items: list) -> tuple[list, dict]:
        """Items ready to train on, and stats of the preparation (final, not summed over ranks)."""
        return items, {}

    def loss(self, trainer, items: list, ids, attn, mask):
        from .losses import sft_loss

        return sft_loss(trainer.logprobs(ids, attn, mask)), {}


class PolicyGradient:
    def sequence(self, item: PGSample) -> tuple[list[int], list[int]]:
        return item.prompt_ids, item.completion_ids

    def weight(self, item: PGSample) -> float:
        return float(sum(item.weights))

    def reference_forwards(self, cfg) -> int:
        return 1 if cfg.train.kl_coef > 0 else 0

    def prepare(self, trainer, items: list[PGSample]) -> tuple[list[PGSample], dict]:
        """With recompute: every item's per-token log-probs under the current weights, and how far the rollout
        engine's were from them (mean and max |delta log p| per token); the pass's tokens for the ledger."""
        if trainer.cfg.train.old_logprobs != "recompute":
            return items, {}
        logps, counts = trainer.forward_only(items, self.sequence, trainer.cfg.rollout.temperature)
        items = [dataclasses.replace(x, trainer_logprobs=lp) for x, lp in zip(items, logps)]
        gaps = [abs(a - b) for x in items for a, b in zip(x.trainer_logprobs, x.old_logprobs)]
        return items, {**counts, "mismatch": sum(gaps) / max(len(gaps), 1), "mismatch_max": max(gaps, default=0.0)}

    def loss(self, trainer, items: list[PGSample], ids, attn, mask):
        import torch

        from .losses import policy_loss, tis_weights

        t, temperature = trainer.cfg.train, trainer.cfg.rollout.temperature
        flat = lambda field: torch.tensor([v for x in items for v in getattr(x, field)],  # noqa: E731
                                          device=ids.device)                              # [N]
        ref = trainer.reference_logprobs(ids, attn, mask, temperature) if t.kl_coef > 0 else None
        logp = trainer.logprobs(ids, attn, mask, temperature)
        behaviour, weights = flat("old_logprobs"), flat("weights")
        old, tis, stats = behaviour, None, {}
        if t.old_logprobs == "recompute":
            old = flat("trainer_logprobs")
        if t.old_logprobs == "recompute" and t.tis_cap > 0:
            tis = tis_weights(old, behaviour, t.tis_cap)
            capped = (old - behaviour > torch.log(torch.tensor(t.tis_cap))).float()
            stats["tis_clipped"] = float((weights * capped).sum() / weights.sum().clamp(min=1e-8))
        loss, pg = policy_loss(logp, old, flat("advantages"), weights, t.clip_low, t.clip_high, ref, t.kl_coef, tis)
        return loss, {**pg, **stats}


LIKELIHOOD = Likelihood()
POLICY_GRADIENT = PolicyGradient()
