"""Chunked token log-probs, batch packing, the SFT loss and truncated importance weights, against plain PyTorch
and hand-made batches."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from branchrl.training.losses import (
    CHUNK_LOGITS_BYTES,
    completion_logprobs,
    pack_batch,
    policy_loss,
    selected_logprobs,
    sft_loss,
    tis_weights,
)


def reference_logprobs(hidden, head, targets):
    return torch.log_softmax(hidden @ head.T, -1).gather(1, targets[:, None])[:, 0]


@pytest.mark.parametrize("chunk", [3, None])
def test_selected_logprobs_equal_log_softmax_gather_with_gradients(chunk):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=gen, requires_grad=True)     # [N, d]
    head = torch.randn(13, 8, generator=gen, requires_grad=True)       # [V, d]
    targets = torch.randint(0, 13, (10,), generator=gen)               # [N]
    weights = torch.randn(10, generator=gen)

    ours = selected_logprobs(hidden, head, targets, chunk=chunk)
    (ours * weights).sum().backward()
    grads = hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None
    ref = reference_logprobs(hidden, head, targets)
    (ref * weights).sum().backward()

    assert ours.shape == (10,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.grad)


def test_selected_logprobs_without_grad_and_empty():
    hidden, head = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([0, 6, 3, 3, 1])
    torch.testing.assert_close(selected_logprobs(hidden, head, targets, chunk=2),
                               reference_logprobs(hidden, head, targets))
    assert selected_logprobs(hidden[:0], head, targets[:0]).shape == (0,)


def test_pack_batch_masks_exactly_the_positions_that_predict_completion_tokens():
    seqs = [([1, 2], [3, 4, 5]), ([6], [7]), ([8, 9, 10], [11])]
    ids, attn, loss = pack_batch(seqs, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 9, 10, 11, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert loss.int().tolist() == [[0, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert ids[:, 1:][loss[:, :-1]].tolist() == [3, 4, 5, 7, 11]  # the completions, in order


def test_pack_batch_refuses_an_empty_prompt():
    with pytest.raises(ValueError, match="empty prompt"):
        pack_batch([([], [3, 4])], pad_id=0)


def test_sft_loss_is_mean_nll_over_completion_tokens():
    config = Qwen2Config(vocab_size=30, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)  # far from uniform, so a shifted target would show
    seqs = [([1, 2], [3, 4, 5]), ([6], [7]), ([8, 9, 10], [11, 12])]
    ids, attn, mask = pack_batch(seqs, pad_id=0)

    nll, count = 0.0, 0
    with torch.no_grad():
        for prompt, completion in seqs:  # unpadded, one at a time
            logp = model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)   # [T, V]
            for j, tok in enumerate(completion):
                nll -= logp[len(prompt) - 1 + j, tok].item()
                count += 1
    loss = sft_loss(completion_logprobs(model, ids, attn, mask))
    assert loss.item() == pytest.approx(nll / count, abs=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_default_chunks_hold_a_bounded_number_of_logits(monkeypatch):
    """With a big vocabulary the log-probs come in chunks of CHUNK_LOGITS_BYTES of fp32 logits, and equal the
    unchunked ones."""
    import branchrl.training.losses as losses

    monkeypatch.setattr(losses, "CHUNK_LOGITS_BYTES", 4 * 13 * 4)   # 4 rows of a 13-token vocabulary
    seen = []
    real = losses._chunk_logprobs
    monkeypatch.setattr(losses, "_chunk_logprobs", lambda h, head, t: seen.append(len(h)) or real(h, head, t))
    hidden, head, targets = torch.randn(10, 8), torch.randn(13, 8), torch.randint(0, 13, (10,))
    torch.testing.assert_close(selected_logprobs(hidden, head, targets), reference_logprobs(hidden, head, targets))
    assert seen == [4, 4, 2] and CHUNK_LOGITS_BYTES // (4 * 151936) == 441


def test_tis_weights_cap_the_trainer_over_behaviour_ratio_and_carry_no_gradient():
    trainer = torch.tensor([0.0, -1.0, -0.2, -3.0], requires_grad=True)
    behaviour = torch.tensor([-2.0, -1.0, 0.0, -3.5])
    w = tis_weights(trainer, behaviour, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, math.exp(-0.2), math.exp(0.5)]))   # e^2 capped at 2
    assert not w.requires_grad


def test_policy_loss_weighs_each_tokens_policy_term_by_its_importance_weight():
    logp = torch.tensor([-1.0, -1.0], requires_grad=True)
    adv, w = torch.tensor([1.0, -1.0]), torch.ones(2)
    tis = torch.tensor([2.0, 0.5])
    loss, _ = policy_loss(logp, logp.detach(), adv, w, 0.2, 0.28, tis=tis)
    assert loss.item() == pytest.approx((-2.0 * 1 + 0.5 * 1) / 2)   # ratio 1: token loss -A, times its weight
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.25]))
