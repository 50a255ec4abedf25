"""Sampling controls and stop strings: temperature, top-k, top-p and greedy distributions, log-probs
and entropies checked against hand-computed values; seeded draws; a fork's siblings drawn without the
parent's token; stop strings found on the token
that completes them, by decoding tails only, agreeing with a full decode."""

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from branchrl.engine import SamplingParams, entropy, find_stop, sample, sampling_logprobs, siblings
from branchrl.models import build_char_tokenizer

LN2 = math.log(2.0)


def probs_of(logits, **params) -> list[float]:
    return sampling_logprobs(torch.tensor([logits]), SamplingParams(**params)).exp()[0].tolist()


def close(got, want, tol=1e-6):
    assert got == pytest.approx(want, abs=tol)


def test_temperature_divides_the_logits():
    logp = sampling_logprobs(torch.tensor([[2 * LN2, 0.0, 0.0]]), SamplingParams(temperature=2.0))
    close(logp.exp()[0].tolist(), [0.5, 0.25, 0.25])
    close(entropy(logp).tolist(), [1.5 * LN2])  # 0.5 ln 2 + 2 * 0.25 ln 4


def test_top_k_renormalises_over_the_k_most_likely_and_keeps_ties():
    p = [0.5, 0.3, 0.2]
    close(probs_of([math.log(x) for x in p], top_k=2), [0.625, 0.375, 0.0])
    close(probs_of([math.log(x) for x in [0.4, 0.3, 0.3]], top_k=2), [0.4, 0.3, 0.3])  # 0.3 twice: both stay
    close(probs_of([math.log(x) for x in p], top_k=3), p)  # k >= V keeps everything


def test_top_p_keeps_the_smallest_likely_set_reaching_the_mass():
    logits = [math.log(x) for x in [0.5, 0.3, 0.2]]
    close(probs_of(logits, top_p=0.7), [0.625, 0.375, 0.0])  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    close(probs_of(logits, top_p=0.4), [1.0, 0.0, 0.0])       # the most likely token alone
    close(probs_of(logits, top_p=0.9), [0.5, 0.3, 0.2])
    close(probs_of([math.log(x) for x in [0.4, 0.3, 0.3]], top_p=0.6), [0.4, 0.3, 0.3])  # the tie at 0.3 stays


def test_top_k_then_top_p_then_temperature_order():
    logits = [math.log(x) for x in [0.4, 0.3, 0.2, 0.1]]
    # top-k 3 -> [4/9, 3/9, 2/9]; top-p 0.7 on that: 4/9 < 0.7 so 3/9 joins, then 7/9 >= 0.7 stops
    close(probs_of(logits, top_k=3, top_p=0.7), [4 / 7, 3 / 7, 0.0, 0.0])
    # temperature first: [0.4, 0.3, 0.2, 0.1] ** 2 renormalised = [16, 9, 4, 1] / 30, then top-k 2
    close(probs_of(logits, temperature=0.5, top_k=2), [16 / 25, 9 / 25, 0.0, 0.0])


def test_entropy_of_cut_distributions_ignores_cut_tokens():
    logp = sampling_logprobs(torch.tensor([[math.log(x) for x in [0.5, 0.3, 0.2]]]), SamplingParams(top_k=2))
    close(entropy(logp).tolist(), [-(0.625 * math.log(0.625) + 0.375 * math.log(0.375))])


def test_greedy_is_a_point_mass_on_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    out = sample(logits, SamplingParams(temperature=0.0))
    assert out.tokens.tolist() == [1, 0]
    assert out.logprobs.tolist() == [0.0, 0.0] and out.entropy.tolist() == [0.0, 0.0]


def test_sample_returns_log_prob_and_entropy_of_the_distribution_drawn_from():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9)
    out = sample(logits, params, torch.Generator().manual_seed(1))
    logp = sampling_logprobs(logits, params)
    assert out.tokens.dtype == torch.long and out.tokens.shape == (64,)
    torch.testing.assert_close(out.logprobs, logp.gather(1, out.tokens[:, None])[:, 0])
    torch.testing.assert_close(out.entropy, entropy(logp))
    assert torch.isfinite(out.logprobs).all()  # never a cut token
    assert (logp > -torch.inf).sum(-1).max() <= 20


def test_seeded_generator_reproduces_draws_and_frequencies_match():
    logits = torch.tensor([[math.log(x) for x in [0.5, 0.3, 0.2]]]).repeat(20000, 1)
    params = SamplingParams(top_k=2)
    a = sample(logits, params, torch.Generator().manual_seed(7)).tokens
    b = sample(logits, params, torch.Generator().manual_seed(7)).tokens
    c = sample(logits, params, torch.Generator().manual_seed(8)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    freq = torch.bincount(a, minlength=3).float() / len(a)
    close(freq.tolist(), [0.625, 0.375, 0.0], tol=0.02)


def test_siblings_leave_out_the_parent_draw_without_replacement_and_stay_inside_the_truncation():
    probs = [0.4, 0.3, 0.2, 0.1]
    logp = sampling_logprobs(torch.tensor([[math.log(x) for x in probs]] * 3), SamplingParams(top_k=3))  # 3 is cut
    gen = torch.Generator().manual_seed(0)
    out = siblings(logp, torch.tensor([0, 1, 2]), [5, 1, 2], gen)
    assert sorted(out[0]) == [1, 2]                       # only two tokens left: fewer than asked
    assert len(out[1]) == 1 and out[1][0] in (0, 2)
    assert len(set(out[2])) == 2 and set(out[2]) <= {0, 1}
    alone = sampling_logprobs(torch.tensor([[2.0, 1.0, 0.0]]), SamplingParams(top_k=1))
    assert siblings(alone, torch.tensor([0]), [2], gen) == [[]]   # truncation left the parent's token alone
    many = sampling_logprobs(torch.tensor([[math.log(x) for x in probs]] * 4000), SamplingParams(top_k=3))
    drawn = siblings(many, torch.zeros(4000, dtype=torch.long), [1] * 4000, gen)
    freq = torch.bincount(torch.tensor([d[0] for d in drawn]), minlength=4).float() / 4000
    close(freq.tolist(), [0.0, 0.6, 0.4, 0.0], tol=0.03)  # 0.3 and 0.2 renormalised without the parent


@pytest.mark.parametrize("params, message", [
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_k=-2), "top_k=-2 must be >= 0"),
    (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
])
def test_bad_sampling_params_say_what_to_change(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params)


def byte_bpe() -> Tokenizer:
    """A byte-level BPE with multi-character tokens and multi-byte characters split over tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["Question: what is 12+30?\nAnswer: 42\n\n", "The answer is 42.\n\nQuestion"] * 50, trainer)
    return tok


TEXT = "Let x = 12 → y.\nThe answer is 42.\n\nQuestion: é?### done"
STOPS = ["\n\nQuestion", "###", "42.", "→ y", "é?", "never"]


def first_hit_full_decode(ids, decode, stops):
    return next(((i, s) for i in range(len(ids)) for s in stops if s in decode(ids[:i + 1])), None)


def first_hit_tail(ids, decode, stops):
    for i in range(len(ids)):
        hit = find_stop(ids[:i + 1], decode, stops)
        if hit:
            return i, hit
    return None


@pytest.mark.parametrize("name", ["char", "byte_bpe"])
@pytest.mark.parametrize("stop", STOPS)
def test_stop_found_on_the_token_that_completes_it(name, stop):
    if name == "char":
        tok = build_char_tokenizer()
        ids, decode = tok.encode(TEXT.replace("→", "->").replace("é", "e")), tok.decode
        stop = stop.replace("→", "->").replace("é", "e")
    else:
        tok = byte_bpe()
        ids, decode = tok.encode(TEXT).ids, tok.decode
    assert decode(ids) in (TEXT, TEXT.replace("→", "->").replace("é", "e"))
    want = first_hit_full_decode(ids, decode, [stop])
    assert first_hit_tail(ids, decode, [stop]) == want
    assert (want is None) == (stop == "never")


def test_stop_strings_spanning_tokens_and_bytes_in_a_byte_bpe():
    tok = byte_bpe()
    ids = tok.encode(TEXT).ids
    pieces = [tok.decode([i]) for i in ids]
    assert any(len(p) > 2 for p in pieces) and "\ufffd" in "".join(pieces)  # multi-char and split-byte tokens
    assert first_hit_tail(ids, tok.decode, STOPS) == first_hit_full_decode(ids, tok.decode, STOPS)


def test_stop_checks_decode_only_the_tail():
    tok = build_char_tokenizer()
    seen = []

    def decode(ids):
        seen.append(len(ids))
        return tok.decode(ids)

    ids = tok.encode("abc " * 500 + "STOP")
    assert find_stop(ids, decode, ["STOP", "xyz"]) == "STOP"
    assert find_stop(ids[:-1], decode, ["STOP"]) is None
    assert max(seen) <= 2 * (4 + 4 + 1)
    assert find_stop(ids, decode, []) is None and find_stop([], decode, ["a"]) is None


def test_stop_in_a_long_token_past_zero_width_tokens():
    """Tokens that decode to nothing (skipped specials) make the tail grow until it holds enough text."""
    words = {0: "", 1: "x", 2: "STOP", 3: "ab"}

    def decode(ids):
        return "".join(words[i] for i in ids)

    ids = [1, 3, 3] + [0] * 40 + [2]
    assert find_stop(ids, decode, ["abSTOP"]) == "abSTOP"
    assert find_stop(ids, decode, ["xabab"]) == "xabab"  # found now although it ended 41 tokens ago
