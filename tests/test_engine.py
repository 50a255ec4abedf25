"""Engine and decoder: logits equal transformers' full forward over left-padded batches, forks
continue like their parent, greedy decoding equals `generate`, unsupported checkpoints say why; the
same for the HF fallback engine, which unsupported architectures get with one log line."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config, Qwen3Config

from branchrl.engine import (
    Decoder,
    Engine,
    HFDecoder,
    HFEngine,
    PromptTooLong,
    UnsupportedModel,
    check_prompts,
    load_checkpoint,
    load_engine,
)

VOCAB = 40
PROMPTS = [[5, 6, 7, 8, 9, 10], [3, 4], [11, 12, 13, 14]]  # different lengths: left padding matters


def tiny_hf(arch: str, kv_heads: int = 2, seed: int = 0):
    """A fp32 model with weights, biases and norms far from their init, so any wiring mistake shows."""
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    config = cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 500.0}, eos_token_id=2, pad_token_id=0,
                 bos_token_id=1)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.25)
    return model


def engine_for(model) -> Engine:
    decoder = Decoder(model.config.to_dict())
    decoder.load_state_dict(model.state_dict())
    return Engine(decoder, pad_id=0)


@torch.no_grad()
def hf_next_logits(model, seqs: list[list[int]]) -> torch.Tensor:
    """Last-position logits of a full, unpadded forward over each sequence: [B, V]."""
    return torch.stack([model(torch.tensor([s])).logits[0, -1] for s in seqs])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_engine_logits_match_transformers_over_prefill_and_decode(arch):
    model = tiny_hf(arch, kv_heads=2)  # GQA: 4 query heads share 2 kv heads
    assert arch != "qwen2" or model.model.layers[0].self_attn.q_proj.bias is not None
    assert arch != "qwen3" or "model.layers.0.self_attn.q_norm.weight" in model.state_dict()
    engine = engine_for(model)
    logits = engine.start(PROMPTS, max_new_tokens=6)
    seqs = [list(p) for p in PROMPTS]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        ref = hf_next_logits(model, seqs)
        assert ref.std() > 0.5  # logits far from uniform: a wrong RoPE or mask would not hide in 1e-4
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        tokens = torch.randint(3, VOCAB, (len(seqs),), generator=gen)
        for s, t in zip(seqs, tokens.tolist()):
            s.append(t)
        logits = engine.step(tokens)
    torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_forked_row_continues_exactly_like_its_parent_and_like_transformers():
    model = tiny_hf("qwen2", kv_heads=1)
    engine = engine_for(model)
    engine.start(PROMPTS, max_new_tokens=8)
    engine.step(torch.tensor([20, 21, 22]))
    engine.select(torch.tensor([2, 1, 1]))  # drop row 0, keep 2, fork 1
    assert engine.batch_size == 3
    same = engine.step(torch.tensor([23, 24, 24]))
    # equal to an ulp, not bitwise: CPU elementwise kernels (silu) run a tensor's tail through other code
    torch.testing.assert_close(same[1], same[2], atol=1e-6, rtol=1e-6)
    diverged = engine.step(torch.tensor([25, 26, 27]))
    seqs = [PROMPTS[2] + [22, 23, 25], PROMPTS[1] + [21, 24, 26], PROMPTS[1] + [21, 24, 27]]
    torch.testing.assert_close(diverged, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_fork_does_not_alias_the_parent_cache():
    model = tiny_hf("llama")
    engine = engine_for(model)
    engine.start([PROMPTS[0]], max_new_tokens=6)
    engine.select(torch.tensor([0, 0]))
    engine.step(torch.tensor([30, 31]))  # writes different K/V into each copy at the same slot
    out = engine.step(torch.tensor([32, 32]))
    torch.testing.assert_close(out, hf_next_logits(model, [PROMPTS[0] + [30, 32], PROMPTS[0] + [31, 32]]),
                               atol=1e-4, rtol=1e-4)


def assert_greedy_equals_generate(model, engine, new: int = 10) -> None:
    """Argmax decoding on the engine gives transformers' greedy `generate` tokens for every prompt."""
    logits = engine.start(PROMPTS, max_new_tokens=new)
    tokens = []
    for i in range(new):
        tokens.append(logits.argmax(-1))
        if i < new - 1:
            logits = engine.step(tokens[-1])
    for prompt, mine in zip(PROMPTS, torch.stack(tokens, 1).tolist()):   # [B, new]
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=new)
        theirs = out[0, len(prompt):].tolist()  # generate stops early only at eos
        assert len(theirs) == new or theirs[-1] == model.config.eos_token_id
        assert mine[:len(theirs)] == theirs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_engine_decoding_equals_generate(arch):
    model = tiny_hf(arch, seed=3)
    assert_greedy_equals_generate(model, engine_for(model))


def test_full_cache_raises_instead_of_overwriting():
    engine = engine_for(tiny_hf("llama"))
    engine.start([[3, 4]], max_new_tokens=2)
    engine.step(torch.tensor([5]))
    engine.step(torch.tensor([6]))
    with pytest.raises(RuntimeError, match="cache full"):
        engine.step(torch.tensor([7]))


def test_tied_embeddings_without_lm_head_use_the_embedding():
    model = tiny_hf("llama")
    config = model.config.to_dict() | {"tie_word_embeddings": True}
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    decoder = Decoder(config)
    decoder.load_state_dict(state)
    assert decoder.w["lm_head.weight"] is decoder.w["model.embed_tokens.weight"]
    with pytest.raises(UnsupportedModel, match="no lm_head.weight"):
        Decoder(model.config.to_dict()).load_state_dict(state)


def test_unsupported_architecture_and_rope_are_refused_by_name():
    config = tiny_hf("llama").config.to_dict()
    with pytest.raises(UnsupportedModel, match="'gpt2' not supported"):
        Decoder(config | {"model_type": "gpt2"})
    with pytest.raises(UnsupportedModel, match="RoPE type 'llama3'"):
        Decoder(config | {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}})


def test_rope_theta_from_transformers_4_style_config():
    """Checkpoints saved by transformers 4.x keep rope_theta at the top level next to rope_scaling."""
    model = tiny_hf("llama")
    config = {k: v for k, v in model.config.to_dict().items() if k != "rope_parameters"}
    engine = Engine(Decoder(config | {"rope_theta": 500.0, "rope_scaling": None}))
    engine.decoder.load_state_dict(model.state_dict())
    torch.testing.assert_close(engine.start(PROMPTS, 1), hf_next_logits(model, PROMPTS), atol=1e-4, rtol=1e-4)
    with pytest.raises(UnsupportedModel, match="RoPE type 'linear'"):
        Decoder(config | {"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}})


def test_prompt_over_the_limit_is_refused_in_one_line_before_any_compute():
    model = tiny_hf("llama")  # max_position_embeddings=64
    engine = engine_for(model)
    with pytest.raises(PromptTooLong) as err:
        engine.start([[3] * 10, [4] * 60], max_new_tokens=8)
    assert str(err.value) == ("prompt 1 has 60 tokens; with max_new_tokens=8 that is 68, over the engine's limit "
                              "of 64 tokens per sequence")
    assert isinstance(err.value, ValueError) and engine.batch_size == 0  # nothing was started
    with pytest.raises(PromptTooLong, match="prompt 0 has 40 tokens.* limit of 32 tokens"):
        Engine(engine.decoder, max_seq_len=32).start([[3] * 40], max_new_tokens=1)
    with pytest.raises(ValueError, match="prompt 'b' is empty"):
        check_prompts([[3], []], 4, 64, names=["a", "b"])
    assert engine.start([[3] * 56], max_new_tokens=8).shape == (1, VOCAB)  # exactly at the limit is fine


# The generic fallback: any transformers causal LM behind the same interface.

def tiny_fallback(arch: str, seed: int = 0):
    """Architectures the plain decoder lacks: GPT-2 (learned positions, tied head), GPT-NeoX (partial RoPE)."""
    if arch == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=2,
                            bos_token_id=1, pad_token_id=0)
    else:
        config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5, eos_token_id=2,
                               bos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if ("ln" in name or "norm" in name) and name.endswith("weight")
                    else 0.25 * torch.randn_like(p))
    return model


def fallback_for(model) -> HFEngine:
    engine = load_engine(model.config.to_dict())
    engine.decoder.load_state_dict(model.state_dict())
    return engine


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_fallback_logits_match_transformers_over_prefill_decode_and_fork(arch):
    model = tiny_fallback(arch)
    engine = fallback_for(model)
    assert isinstance(engine, HFEngine)
    logits = engine.start(PROMPTS, max_new_tokens=6)
    seqs = [list(p) for p in PROMPTS]
    for tokens in ([20, 21, 22], [23, 24, 25]):
        ref = hf_next_logits(model, seqs)
        assert ref.std() > 0.5
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        seqs = [s + [t] for s, t in zip(seqs, tokens)]
        logits = engine.step(torch.tensor(tokens))
    engine.select(torch.tensor([2, 1, 1]))  # drop row 0, keep 2, fork 1
    same = engine.step(torch.tensor([26, 27, 27]))
    # equal to an ulp, not bitwise: CPU elementwise kernels (silu) run a tensor's tail through other code
    torch.testing.assert_close(same[1], same[2], atol=1e-6, rtol=1e-6)
    out = engine.step(torch.tensor([28, 29, 30]))
    seqs = [seqs[2] + [26, 28], seqs[1] + [27, 29], seqs[1] + [27, 30]]
    torch.testing.assert_close(out, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)
    assert engine.batch_size == 3


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_fallback_greedy_decoding_equals_generate(arch):
    model = tiny_fallback(arch, seed=3)
    assert_greedy_equals_generate(model, fallback_for(model))


def test_fallback_refuses_long_prompts_and_a_full_cache():
    engine = fallback_for(tiny_fallback("gpt2"))  # n_positions=64: a hard limit for learned positions
    with pytest.raises(PromptTooLong, match="prompt 0 has 60 tokens; .* limit of 64 tokens per sequence"):
        engine.start([[3] * 60], max_new_tokens=5)
    engine.start([[3, 4]], max_new_tokens=1)
    engine.step(torch.tensor([5]))
    with pytest.raises(RuntimeError, match="cache full"):
        engine.step(torch.tensor([6]))


def test_unsupported_checkpoint_falls_back_with_exactly_one_log_line(tmp_path, caplog):
    gpt2, llama = tiny_fallback("gpt2"), tiny_hf("llama")
    gpt2.save_pretrained(tmp_path / "gpt2")  # tied head: the checkpoint has no lm_head.weight
    llama.save_pretrained(tmp_path / "llama")
    with caplog.at_level(logging.DEBUG, logger="branchrl.engine"):
        plain = load_checkpoint(tmp_path / "llama")
    assert isinstance(plain, Engine) and caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="branchrl.engine"):
        fallback = load_checkpoint(tmp_path / "gpt2")
    assert isinstance(fallback, HFEngine)
    assert [r.getMessage() for r in caplog.records] == [
        "model_type 'gpt2' not supported (have ['llama', 'qwen2', 'qwen3']); using the generic transformers "
        "engine instead (slower)"]
    for engine, model in ((plain, llama), (fallback, gpt2)):
        torch.testing.assert_close(engine.start(PROMPTS, 2), hf_next_logits(model, PROMPTS), atol=1e-4, rtol=1e-4)


def test_fallback_state_dict_must_fit():
    engine = fallback_for(tiny_fallback("gpt2"))
    state = tiny_fallback("gpt2").state_dict()
    with pytest.raises(ValueError, match=r"missing \['transformer.h.0.attn.c_attn.weight'\]"):
        engine.decoder.load_state_dict({k: v for k, v in state.items() if k != "transformer.h.0.attn.c_attn.weight"})


# Paged KV: forks share pages, rows join mid-flight, the pool grows; always equal to a full forward.

def test_fork_shares_full_pages_and_copies_only_a_partial_last_page():
    engine = Engine(engine_for(tiny_hf("llama")).decoder, page_size=4)
    kv = engine.kv
    engine.start([list(range(3, 13))], max_new_tokens=8)       # 10 tokens: pages of 4, 4, 2
    assert kv.pages_in_use == 3
    engine.select(torch.tensor([0, 0, 0]))                     # two children copy the partial page
    assert kv.pages_in_use == 5
    table = kv.table[:3, :3].tolist()
    assert [t[:2] for t in table] == [table[0][:2]] * 3 and len({t[2] for t in table}) == 3
    assert kv.refs[kv.table[0, :3].long()].tolist() == [3, 3, 1]
    assert kv.fill[kv.table[:3, 2].long()].tolist() == [2, 2, 2]  # each copy holds the 2 written slots
    engine.step(torch.tensor([20, 21, 22]))
    engine.step(torch.tensor([20, 21, 22]))                    # 12 tokens: every last page full now
    engine.select(torch.tensor([1, 1, 2]))                     # a fork at a page boundary copies nothing
    assert kv.pages_in_use == 4 and kv.refs[kv.table[0, 2]] == 2
    engine.step(torch.tensor([23, 24, 25]))                    # each row starts its own page
    assert kv.pages_in_use == 7 and kv.table[:3, 3].unique().numel() == 3
    engine.select(torch.tensor([], dtype=torch.long))
    assert kv.pages_in_use == 0 and int(kv.refs[1:].abs().sum()) == 0 and int(kv.table.abs().sum()) == 0
    assert sorted(kv.free[:int(kv.top)].tolist()) == list(range(1, kv.pages))  # page 0 is never handed out


def test_fork_memory_grows_with_new_tokens_not_with_children():
    engine = Engine(engine_for(tiny_hf("llama")).decoder, page_size=16)
    engine.start([[5] * 48], max_new_tokens=8)
    engine.select(torch.zeros(8, dtype=torch.long))
    assert engine.kv.pages_in_use == 3                         # 8 rows, one copy of the 48-token prefix
    engine.step(torch.arange(8) + 3)
    assert engine.kv.pages_in_use == 3 + 8


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_random_forks_drops_and_admissions_match_a_full_forward(page_size):
    """Rows of different lengths cross page boundaries, fork at full and partial pages, get dropped, and
    new prompts join mid-flight; every step's logits equal transformers on each row's whole sequence."""
    model = tiny_hf("qwen3", kv_heads=2)
    engine = Engine(engine_for(model).decoder, page_size=page_size)
    gen = torch.Generator().manual_seed(page_size)
    seqs = [list(p) for p in PROMPTS]
    logits = engine.start(seqs, max_new_tokens=12)
    for i in range(8):
        torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)
        if i == 3:                                             # continuous batching: two prompts join
            new = [[7, 8, 9, 10, 11], [12]]
            logits = torch.cat([logits, engine.admit(new, max_new_tokens=12)])
            seqs += [list(p) for p in new]
            torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)
        rows = torch.randint(0, len(seqs), (int(torch.randint(2, 6, (), generator=gen)),), generator=gen)
        engine.select(rows)
        seqs = [list(seqs[r]) for r in rows.tolist()]
        tokens = torch.randint(3, VOCAB, (len(seqs),), generator=gen)
        seqs = [s + [t] for s, t in zip(seqs, tokens.tolist())]
        logits = engine.step(tokens)
    torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_pool_grows_mid_decode_and_keeps_every_row():
    model = tiny_hf("llama")
    engine = Engine(engine_for(model).decoder, page_size=1)
    engine.start(PROMPTS, max_new_tokens=4)                    # 12 tokens in a first pool of 15 usable pages
    assert engine.kv.pages == 16
    engine.select(torch.tensor([0, 1, 2, 0, 1, 2]))
    seqs = [list(PROMPTS[r]) for r in [0, 1, 2, 0, 1, 2]]
    for t in range(3):                                         # 18 more pages: the pool doubles on the way
        tokens = torch.arange(6) + 3 + t
        seqs = [s + [x] for s, x in zip(seqs, tokens.tolist())]
        logits = engine.step(tokens)
    assert engine.kv.pages == 32 and engine.kv.pages_in_use == 30 and engine.kv.version == 1
    torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def greedy(engine, logits, n):
    """n greedy tokens for every current row: ([B, n] tokens, [B, n] log-probs of them)."""
    tokens, logps = [], []
    for i in range(n):
        logp = torch.log_softmax(logits, -1)
        tokens.append(logits.argmax(-1))
        logps.append(logp.gather(1, tokens[-1][:, None])[:, 0])
        if i < n - 1:
            logits = engine.step(tokens[-1])
    return torch.stack(tokens, 1), torch.stack(logps, 1)


def test_sequence_admitted_mid_flight_decodes_as_when_run_alone():
    model = tiny_hf("qwen2", seed=5)
    alone = engine_for(model)
    want_tokens, want_logps = greedy(alone, alone.start([PROMPTS[0]], max_new_tokens=8), 8)
    engine = engine_for(model)
    logits = engine.start(PROMPTS[1:], max_new_tokens=12)
    for _ in range(3):                                         # the running rows are mid-decode
        logits = engine.step(logits.argmax(-1))
    engine.select(torch.tensor([1]))                           # one finishes and leaves
    logits = torch.cat([logits[1:], engine.admit([PROMPTS[0]], max_new_tokens=8)])
    tokens, logps = greedy(engine, logits, 8)
    assert tokens[1].tolist() == want_tokens[0].tolist()
    torch.testing.assert_close(logps[1], want_logps[0], atol=1e-5, rtol=1e-5)


def test_admit_checks_prompts_and_keeps_each_rows_limit():
    engine = engine_for(tiny_hf("llama"))
    engine.start([[3, 4]], max_new_tokens=1)
    with pytest.raises(PromptTooLong, match="prompt 0 has 64 tokens"):
        engine.admit([[3] * 64], max_new_tokens=1)
    assert engine.batch_size == 1                              # the refused prompt left no row behind
    engine.admit([[5]], max_new_tokens=3)
    engine.step(torch.tensor([6, 7]))
    with pytest.raises(RuntimeError, match="cache full: row 0 holds 3 tokens"):
        engine.step(torch.tensor([8, 9]))


@pytest.mark.parametrize("fallback", [False, True])
def test_step_on_an_empty_batch_says_so_and_the_engine_stays_usable(fallback):
    model = tiny_hf("llama")
    engine = HFEngine(HFDecoder(model.config.to_dict()), pad_id=0) if fallback else engine_for(model)
    engine.decoder.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="engine step on an empty batch: every row was dropped or none started"):
        engine.step(torch.zeros(0, dtype=torch.long))
    engine.start([[3, 4]], max_new_tokens=2)
    engine.select(torch.zeros(0, dtype=torch.long))            # every row finished
    with pytest.raises(RuntimeError, match="empty batch"):
        engine.step(torch.zeros(0, dtype=torch.long))
    logits = engine.start([[5, 6]], max_new_tokens=2)
    torch.testing.assert_close(logits, hf_next_logits(model, [[5, 6]]), atol=1e-4, rtol=1e-4)


def test_per_prompt_new_token_budgets_set_each_rows_limit():
    check_prompts([[1] * 10, [1] * 30], [54, 34], limit=64)          # each fits exactly
    with pytest.raises(PromptTooLong, match="prompt 1 has 30 tokens; with max_new_tokens=35"):
        check_prompts([[1] * 10, [1] * 30], [54, 35], limit=64)
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        check_prompts([[1]], [1, 2], limit=64)
