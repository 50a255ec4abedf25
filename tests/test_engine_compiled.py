"""The engine's compiled decode step (FlexAttention over KV pages in place, batches padded to buckets) and
bf16 on CPU: compiled equals eager and transformers in every bucket it runs, through forks, drops and
admissions; `graph` mode runs the same compiled step on a CPU and says so; a forked row continues exactly
as an unforked one in fp32 and bf16, eager and compiled; per-step KV traffic stays near the live KV.
The models share one shape, so the compiled graphs are reused between tests."""

import logging

import pytest
import torch
from test_engine import PROMPTS, VOCAB, hf_next_logits, tiny_hf

from branchrl.engine import Decoder, Engine
from branchrl.engine.attention import step_bytes
from branchrl.engine.step import bucket


def engine(model, decode="eager", dtype=torch.float32, page_size=4) -> Engine:
    decoder = Decoder(model.config.to_dict(), dtype=dtype)
    decoder.load_state_dict(model.state_dict())
    return Engine(decoder, pad_id=0, decode=decode, page_size=page_size)


def test_buckets_are_powers_of_two_from_eight():
    assert [bucket(n) for n in (1, 8, 9, 16, 17, 255, 256, 257)] == [8, 8, 16, 16, 32, 256, 256, 512]


@pytest.mark.parametrize("kv_heads", [2, 4])   # GQA folded into the query length; one query per head
def test_compiled_step_equals_eager_and_transformers_in_every_bucket(kv_heads):
    """Rows grow from 3 past 8 (buckets 8 and 16), fork at full and partial pages, drop, and join mid-flight."""
    model = tiny_hf("llama", kv_heads=kv_heads)
    eager, compiled = engine(model), engine(model, "compile")
    gen = torch.Generator().manual_seed(kv_heads)
    seqs = [list(p) for p in PROMPTS]
    logits = [e.start(seqs, max_new_tokens=12) for e in (eager, compiled)]
    buckets = set()
    selects = [[0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 4, 3, 2, 1], [8, 6, 0], [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]]
    for i, rows in enumerate(selects):
        if i == 3:                                                 # a prompt joins mid-flight
            seqs.append([7, 8, 9, 10, 11])
            logits = [torch.cat([lg, e.admit(seqs[-1:], max_new_tokens=12)])
                      for lg, e in zip(logits, (eager, compiled))]
        for e in (eager, compiled):
            e.select(torch.tensor(rows))
        seqs = [list(seqs[r]) for r in rows]
        tokens = torch.randint(3, VOCAB, (len(rows),), generator=gen)
        seqs = [s + [t] for s, t in zip(seqs, tokens.tolist())]
        logits = [e.step(tokens) for e in (eager, compiled)]
        buckets.add(compiled.runner.padded(len(rows)))
        torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1], hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)
    assert buckets == {8, 16}
    assert compiled.kv.pages_in_use == eager.kv.pages_in_use and compiled.kv.max_len == eager.kv.max_len


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_step_with_parked_rows_equals_eager_and_transformers(dtype):
    """Rows waiting for a tool are parked (`active` False): they keep their cache while the others decode, in the
    compiled step as in the eager one, and continue as if never parked (near transformers in fp32, within bf16
    rounding in bf16); parking changes no bucket's graph."""
    model = tiny_hf("llama", kv_heads=2)
    eager, compiled = engine(model, dtype=dtype), engine(model, "compile", dtype)
    seqs = [list(p) for p in PROMPTS]
    for e in (eager, compiled):
        e.start(seqs, max_new_tokens=12)
    masks = [[True, False, True], [False, False, True], [True, True, False], [False, True, True], [True, True, True]]
    for t, mask in enumerate(masks):
        tokens = torch.tensor([10 + t, 20 + t, 30 + t])
        seqs = [s + [int(tok)] if on else s for s, tok, on in zip(seqs, tokens, mask)]
        logits = [e.step(tokens, torch.tensor(mask)) for e in (eager, compiled)]
        on = torch.tensor(mask)
        ref = hf_next_logits(model, [s for s, m in zip(seqs, mask) if m])
        # fp32: an ulp apart and near transformers; bf16: both paths within bf16 rounding (5% of the largest logit)
        same, near = (1e-5, 1e-4) if dtype == torch.float32 else (0.05 * ref.abs().max().item(),) * 2
        torch.testing.assert_close(logits[1][on].float(), logits[0][on].float(), atol=same, rtol=0)
        torch.testing.assert_close(logits[1][on].float(), ref, atol=near, rtol=0)
    assert compiled.kv.lengths[:3].tolist() == eager.kv.lengths[:3].tolist() == [len(s) for s in seqs]
    assert compiled.kv.pages_in_use == eager.kv.pages_in_use


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_follow_eager_across_buckets_and_parked_rows():
    """Captured graphs read static input buffers: a larger bucket reallocates them, so the smaller buckets' graphs
    are captured again (replaying one read a freed buffer before); parked rows keep their cache in a graph too."""
    model = tiny_hf("llama", kv_heads=2)

    def cuda_engine(decode: str) -> Engine:
        decoder = Decoder(model.config.to_dict(), device="cuda")
        decoder.load_state_dict(model.state_dict())
        return Engine(decoder, pad_id=0, decode=decode, page_size=4)

    eager, graphed = cuda_engine("eager"), cuda_engine("graph")
    assert graphed.runner.graphs
    for e in (eager, graphed):
        e.start([list(p) for p in PROMPTS], max_new_tokens=12)
    gen = torch.Generator().manual_seed(0)
    for rows in ([0, 1, 2], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [0, 1, 2], [2, 1, 0]):   # buckets 8, 16, 8, 8
        for e in (eager, graphed):
            e.select(torch.tensor(rows))
        tokens = torch.randint(3, VOCAB, (len(rows),), generator=gen)
        active = torch.arange(len(rows)) % 3 != 1
        out = [e.step(tokens, active) for e in (eager, graphed)]
        torch.testing.assert_close(out[1][active].cpu(), out[0][active].cpu(), atol=1e-4, rtol=1e-4)


def test_graph_mode_on_cpu_runs_the_compiled_step_and_says_so(caplog):
    model = tiny_hf("llama", kv_heads=2)
    with caplog.at_level(logging.WARNING, logger="branchrl.engine"):
        graphed = engine(model, "graph")
    assert [r.getMessage() for r in caplog.records] == [
        "decode mode 'graph' needs a CUDA device; running the compiled step without capture"]
    assert not graphed.runner.graphs and graphed.runner.compiled is not None
    seqs = [list(p) for p in PROMPTS]
    graphed.start(seqs, max_new_tokens=4)
    for t in range(3):
        seqs = [s + [20 + t] for s in seqs]
        logits = graphed.step(torch.full((3,), 20 + t))
    torch.testing.assert_close(logits, hf_next_logits(model, seqs), atol=1e-4, rtol=1e-4)


def test_unknown_decode_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="decode mode 'cuda' is not one of eager, compile, graph"):
        engine(tiny_hf("llama"), "cuda")


@pytest.mark.parametrize("decode,dtype", [("eager", torch.float32), ("eager", torch.bfloat16),
                                          ("compile", torch.float32), ("compile", torch.bfloat16)])
def test_forked_row_continues_exactly_as_an_unforked_one(decode, dtype):
    """A row forked mid-page (its partial page copied) continues like its parent and like the same row prefilled
    on its own in an engine that never forked, up to rounding: an ulp in fp32 (CPU kernels round a row by
    where it falls in the vectorised loop, and the other engine ran its first step at another batch size),
    a bf16 rounding step in bf16; near transformers in fp32, within bf16 rounding in bf16."""
    model = tiny_hf("llama", kv_heads=2)
    forked, alone = engine(model, decode, dtype), engine(model, decode, dtype)
    prompt = PROMPTS[0]                                            # 6 tokens: pages of 4 and 2
    forked.start([prompt, PROMPTS[1]], max_new_tokens=8)
    alone.start([prompt, PROMPTS[1], prompt], max_new_tokens=8)
    forked.step(torch.tensor([20, 21]))
    alone.step(torch.tensor([20, 21, 20]))
    forked.select(torch.tensor([0, 1, 0]))                         # row 2 forks row 0 at 7 tokens
    assert forked.kv.pages_in_use == alone.kv.pages_in_use - 1    # the fork shares row 0's full page
    tail = [22, 23, 24]
    for t in tail:
        out = forked.step(torch.tensor([t, 25, t]))
        want = alone.step(torch.tensor([t, 25, t]))
        ulp = 1e-5 if dtype == torch.float32 else 0.02 * want.abs().max().item()
        torch.testing.assert_close(out[2], out[0], atol=ulp, rtol=0)
        torch.testing.assert_close(out, want, atol=ulp, rtol=0)
    ref = hf_next_logits(model, [prompt + [20] + tail])[0]
    tolerance = 1e-4 if dtype == torch.float32 else 0.05 * ref.abs().max().item()
    torch.testing.assert_close(out[2], ref, atol=tolerance, rtol=0)


def test_bf16_engine_follows_transformers_within_bf16_rounding():
    model = tiny_hf("qwen3", kv_heads=2)
    eng = engine(model, dtype=torch.bfloat16)
    assert eng.kv.keys[0].dtype == eng.kv.values[-1].dtype == torch.bfloat16
    seqs = [list(p) for p in PROMPTS]
    logits = eng.start(seqs, max_new_tokens=6)
    for t in range(4):
        ref = hf_next_logits(model, seqs)
        err = (logits - ref).abs().max() / ref.abs().max()
        assert logits.dtype == torch.float32 and 0 < err < 0.05   # bf16 rounding, not a wiring mistake
        seqs = [s + [10 + t] for s in seqs]
        logits = eng.step(torch.full((3,), 10 + t))


def test_kv_bytes_per_step_are_counted_from_the_block_tables():
    """FlexAttention reads each row's pages (live KV plus a partial page per row); the gather reads, writes and
    reads again every row padded to the longest."""
    eng = engine(tiny_hf("llama", kv_heads=2), page_size=4)
    eng.start([[3] * 50, [4] * 20], max_new_tokens=4)
    per_token = eng.kv.page_bytes // 4
    paged, live = step_bytes(eng.kv, 2, paged=True)
    gathered, _ = step_bytes(eng.kv, 2, paged=False)
    assert live == (51 + 21) * per_token                        # the step's new token included
    assert paged == (13 + 6) * 4 * per_token + 2 * per_token    # 13 + 6 pages read; 2 tokens written
    assert gathered == 3 * 2 * 13 * 4 * per_token + 2 * per_token
    assert paged / live < 1.2 < 3 < gathered / live
