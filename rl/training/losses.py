"""Token log-probabilities, the SFT loss, the clipped policy-gradient loss and truncated importance weights.
Log-probs are computed in chunks of at most CHUNK_LOGITS_BYTES of fp32 logits, so full-vocabulary logits for a
whole batch are never materialised (151k vocab x 16k tokens x 4 B would be 10 GB). Whatever the compute dtype
(bf16 matmuls), log-softmax, log-probs and losses are fp32.

Pure tensor functions with shapes written down; no optimizer, no advantages (rl/training/advantages.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_LOGITS_BYTES = 256 << 20   # fp32 logits per chunk: 441 tokens at a 152k vocabulary


def _chunk_logprobs(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # hidden: [N, d]; head: [V, d]; targets: [N] -> [N]
    logits = F.linear(hidden, head).float()
    return logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]


def selected_logprobs(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
    """log p(target) for each row of hidden ([N, d]) under lm-head weight [V, d]; returns [N] fp32.
    Each chunk's logits are recomputed in backward (checkpoint), so peak memory is one chunk (default: as
    many rows as fit CHUNK_LOGITS_BYTES)."""
    chunk = chunk or max(1, CHUNK_LOGITS_BYTES // (4 * head.shape[0]))
    parts = []
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        parts.append(checkpoint(_chunk_logprobs, h, head, t, use_reentrant=False) if h.requires_grad
                     else _chunk_logprobs(h, head, t))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def pack_batch(sequences: list[tuple], pad_id: int):
    """(prompt_ids, completion_ids[, trained]) -> input_ids [B, T], attention_mask [B, T], loss_mask [B, T]
    where loss_mask marks positions whose NEXT token is a completion token (right padding). `trained` ([C]
    bools, optional): only those completion tokens are predicted; a multi-turn transcript's tool outputs are
    context, never a target."""
    if any(not s[0] for s in sequences):  # nothing would predict the first completion token
        raise ValueError("pack_batch: empty prompt; every sequence needs at least one prompt token (e.g. BOS)")
    width = max(len(s[0]) + len(s[1]) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(sequences), width, dtype=torch.long)
    loss = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, (p, c, *trained) in enumerate(sequences):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :n] = 1
        loss[i, len(p) - 1:n - 1] = torch.tensor(trained[0], dtype=torch.bool) if trained else True
    return ids, attn, loss


def completion_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """log p(completion token) under logits / temperature, for every loss_mask position; returns [N] fp32.
    ids/attn/loss_mask: [B, T]. logits/T = head(hidden/T), so the temperature costs nothing extra."""
    hidden = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # [B, T, d]
    targets = ids[:, 1:][loss_mask[:, :-1]]                                           # [N]
    h = hidden[:, :-1][loss_mask[:, :-1]]                                             # [N, d]
    h = h / temperature if temperature != 1.0 else h
    return selected_logprobs(h, model.get_output_embeddings().weight, targets)


def sft_loss(logp: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of completion tokens (a token-level mean); logp: [N] from
    `completion_logprobs`."""
    return -logp.mean()


def tis_weights(trainer_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling: min(pi_trainer / pi_behaviour, cap) per token, no gradient. Tokens were drawn
    by the rollout engine (behaviour), whose probabilities differ from the trainer's (bf16 kernels); the weight
    makes the update an expectation under the trainer's old policy. [N] -> [N]."""
    return torch.exp(trainer_logp - behaviour_logp).clamp(max=cap).detach()


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                clip_low: float, clip_high: float, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                tis: torch.Tensor | None = None):
    """Token-level clipped policy gradient with clip-higher (DAPO), optional k3 KL to a reference policy and
    optional truncated importance weights (`tis_weights`) on the policy term. All inputs [N] over completion
    tokens; loss = sum(w * token_loss) / sum(w), so long and short sequences weigh per token, not per
    sequence. Returns (loss, stats dict of floats)."""
    ratio = torch.exp(logp - old_logp)                                                 # [N]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token = -torch.minimum(ratio * advantages, clipped * advantages)                  # [N]
    if tis is not None:
        token = tis * token
    kl = torch.zeros_like(token)
    if ref_logp is not None and kl_coef > 0:
        log_r = ref_logp - logp
        kl = torch.exp(log_r) - log_r - 1.0               # [N] k3: >= 0, unbiased for KL(pi||ref)
    total = weights.sum().clamp(min=1e-8)
    loss = (weights * (token + kl_coef * kl)).sum() / total
    with torch.no_grad():
        was_clipped = (clipped * advantages < ratio * advantages).float()   # the clipped term won: no gradient
        stats = {"clip_fraction": float((weights * was_clipped).sum() / total),
                 "kl": float((weights * kl).sum() / total)}
    return loss, stats
