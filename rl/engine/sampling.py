"""Next-token sampling: temperature, top-k, top-p and a seeded generator, as pure tensor functions.

Each drawn token comes with its log-prob under the distribution it was actually drawn from (logits
divided by the temperature, truncated by top-k then top-p, renormalised) and that distribution's
entropy in nats, which is what importance ratios and entropy-keyed branching need. Temperature 0
is greedy: the distribution is a point mass on the argmax (log-prob 0, entropy 0).

`siblings` draws the other children of a fork: tokens from the same distribution with the parent's
token removed, without replacement, so siblings always differ and a cut token is never drawn.

Ties are kept together: top-k keeps every token whose logit equals the k-th largest, top-p every
token whose probability equals the smallest one it keeps, so the result never depends on sort order.
Deliberately not here: repetition penalties, min-p, per-row parameters, engine or model state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # logits are divided by this; 0 draws the argmax
    top_k: int = 0            # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0        # keep the most likely tokens until their mass reaches top_p; 1 keeps all

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")


class Sample(NamedTuple):
    tokens: torch.Tensor    # [B] long
    logprobs: torch.Tensor  # [B] float32, log-prob of each token under the distribution it was drawn from
    entropy: torch.Tensor   # [B] float32, entropy (nats) of that distribution
    logp: torch.Tensor      # [B, V] float32, that distribution (`sampling_logprobs`), for drawing siblings


def sampling_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs [B, V] (float32) of the distribution tokens are drawn from; -inf for cut tokens."""
    logits = logits.float()                                                  # [B, V]
    if params.temperature == 0:
        best = logits.argmax(-1, keepdim=True)                               # [B, 1]
        return torch.full_like(logits, -torch.inf).scatter_(-1, best, 0.0)
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]               # [B, 1]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    logp = torch.log_softmax(logits, dim=-1)
    if params.top_p < 1:
        probs, _ = logp.exp().sort(dim=-1, descending=True)                  # [B, V]
        before = probs.cumsum(-1) - probs                                    # mass of the more likely tokens
        smallest = probs.masked_fill(before >= params.top_p, torch.inf).min(-1, keepdim=True).values  # [B, 1]
        logp = torch.log_softmax(logp.masked_fill(logp.exp() < smallest, -torch.inf), dim=-1)
    return logp


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats [B] of distributions given as log-probs [B, V]; cut tokens (-inf) count 0."""
    return -(logp.exp() * logp.masked_fill(logp == -torch.inf, 0.0)).sum(-1)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Sample:
    """Draw one token per row of logits [B, V]. The generator must live on the logits' device."""
    logp = sampling_logprobs(logits, params)                                 # [B, V]
    if params.temperature == 0:
        tokens = logp.argmax(-1)
    else:
        tokens = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
    return Sample(tokens, logp.gather(-1, tokens[:, None])[:, 0], entropy(logp), logp)


def siblings(logp: torch.Tensor, tokens: torch.Tensor, counts: list[int],
             generator: torch.Generator | None = None) -> list[list[int]]:
    """For each row i of logp [F, V]: counts[i] tokens drawn without replacement from that distribution
    with tokens[i] ([F]) removed and the rest renormalised; fewer when fewer tokens are left."""
    probs = logp.exp().scatter(-1, tokens[:, None], 0.0)                     # [F, V]
    left = probs.gt(0).sum(-1).tolist()
    return [torch.multinomial(probs[i], min(k, n), replacement=False, generator=generator).tolist() if min(k, n) else []
            for i, (k, n) in enumerate(zip(counts, left))]
