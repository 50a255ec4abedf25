"""Appending many tokens to live rows (`Engine.extend`, a tool's output) and stepping with some rows parked.

The reference is always a full transformers forward over each row's whole sequence: after an append the
next-token logits, and the logits of later decode steps, must match it, on forked rows too (a fork's
partial last page is its own, so appending never writes into the parent's pages), in fp32 and bf16.
"""

import pytest
import torch
from test_engine import PROMPTS, engine_for, hf_next_logits, tiny_hf

from branchrl.engine import Decoder, Engine


@pytest.mark.parametrize("page_size", [4, 16])
def test_extend_matches_a_full_forward_and_decoding_goes_on(page_size):
    model = tiny_hf("qwen2", kv_heads=1)
    decoder = Decoder(model.config.to_dict())
    decoder.load_state_dict(model.state_dict())
    engine = Engine(decoder, pad_id=0, page_size=page_size)
    engine.start(PROMPTS, max_new_tokens=30)
    engine.step(torch.tensor([20, 21, 22]))
    engine.select(torch.tensor([0, 1, 1, 2]))                  # fork row 1 before appending to one copy
    appended = {1: [30, 31, 32, 33, 34, 35, 36], 3: [37, 38]}
    got = engine.extend(list(appended), list(appended.values()))
    seqs = [PROMPTS[0] + [20], PROMPTS[1] + [21], PROMPTS[1] + [21], PROMPTS[2] + [22]]
    for r, toks in appended.items():
        seqs[r] = seqs[r] + toks
    torch.testing.assert_close(got, hf_next_logits(model, [seqs[1], seqs[3]]), atol=1e-4, rtol=1e-4)
    out = engine.step(torch.tensor([5, 6, 7, 8]))
    seqs = [s + [t] for s, t in zip(seqs, [5, 6, 7, 8])]
    torch.testing.assert_close(out, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_parked_rows_keep_their_cache_while_others_decode():
    model = tiny_hf("llama")
    engine = engine_for(model)
    engine.start(PROMPTS, max_new_tokens=20)
    engine.step(torch.tensor([20, 21, 22]))
    active = torch.tensor([True, False, True])                 # row 1 waits for a tool
    engine.step(torch.tensor([23, 0, 24]), active)
    engine.step(torch.tensor([25, 0, 26]), active)
    resumed = engine.extend([1], [[30, 31, 32]])
    seqs = [PROMPTS[0] + [20, 23, 25], PROMPTS[1] + [21, 30, 31, 32], PROMPTS[2] + [22, 24, 26]]
    torch.testing.assert_close(resumed[0], hf_next_logits(model, [seqs[1]])[0], atol=1e-4, rtol=1e-4)
    out = engine.step(torch.tensor([9, 10, 11]))
    seqs = [s + [t] for s, t in zip(seqs, [9, 10, 11])]
    torch.testing.assert_close(out, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_extend_in_bf16_follows_the_fp32_engine():
    model = tiny_hf("qwen3")
    logits = []
    for dtype in (torch.float32, torch.bfloat16):
        decoder = Decoder(model.config.to_dict(), dtype=dtype)
        decoder.load_state_dict(model.state_dict())
        engine = Engine(decoder, pad_id=0, page_size=4)
        engine.start(PROMPTS, max_new_tokens=20)
        engine.step(torch.tensor([20, 21, 22]))
        logits.append(engine.extend([0, 2], [[30, 31, 32, 33, 34], [35]]))
    assert logits[1].dtype == torch.float32                    # logits come out in fp32 either way
    assert (logits[0].argmax(-1) == logits[1].argmax(-1)).all()
    torch.testing.assert_close(logits[1], logits[0], atol=0.15, rtol=0.05)


def test_extend_refuses_past_a_rows_limit_and_bad_rows():
    engine = engine_for(tiny_hf("llama"))
    engine.start(PROMPTS, max_new_tokens=4)
    with pytest.raises(ValueError, match="over its limit"):
        engine.extend([1], [[5] * 5])
    with pytest.raises(IndexError, match="distinct live rows"):
        engine.extend([3], [[5]])
    assert engine.extend([1], [[5] * 4]).shape == (1, 40)      # exactly to the limit is fine
