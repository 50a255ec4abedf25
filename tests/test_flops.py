"""The ledger's FLOP formulas against torch's FlopCounterMode, forward and forward + backward, within 5%.

Shapes: the demo's tiny Llama and Qwen2.5-0.5B (all 24 layers, full vocabulary), both built on the meta
device, so nothing is allocated or computed: the counter reads shapes. FlopCounterMode counts matrix
products and attention; a causal attention over a whole sequence is counted over all T x T positions
(the kernel's masked half included), so full-sequence passes are compared with context T*T per
sequence; a decode step against a KV cache has no masked half, and there the ledger's causal count
(`attended_positions`) is compared as it is used in runs.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, Qwen2Config

from branchrl.config import load_config
from branchrl.data.ledger import Ledger
from branchrl.models import build_char_tokenizer, build_tiny_model, count_flop_params
from branchrl.tree import attended_positions

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)   # its config.json


def tiny_model():
    cfg = load_config("configs/demo.yaml", [])
    with torch.device("meta"):
        return build_tiny_model(cfg.model, build_char_tokenizer(), seed=0, dtype=torch.float32)


def qwen_model():
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B))


def ledger_for(model) -> Ledger:
    c = model.config
    return Ledger(count_flop_params(model), c.num_hidden_layers, c.hidden_size)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module", params=["tiny", "qwen2.5-0.5b"])
def model(request):
    return tiny_model() if request.param == "tiny" else qwen_model()


def test_forward_over_sequences(model):
    batch, length = 2, 96
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    got = counted(lambda: model(ids))
    want = ledger_for(model).forward_flops(batch * length, batch * length * length)
    assert want == pytest.approx(got, rel=0.05)


def test_forward_and_backward_cost_three_forwards(model):
    batch, length = 2, 96
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    got = counted(lambda: model(ids).logits.float().sum().backward())
    want = 3 * ledger_for(model).forward_flops(batch * length, batch * length * length)
    assert want == pytest.approx(got, rel=0.05)


def test_a_decode_step_attends_to_the_cache_as_the_ledger_counts(model):
    batch, cached = 4, 200
    out = model(torch.zeros(batch, cached, dtype=torch.long, device="meta"), use_cache=True)
    step = torch.zeros(batch, 1, dtype=torch.long, device="meta")
    got = counted(lambda: model(step, cache=out.past_key_values, use_cache=True))
    led = ledger_for(model)
    want = led.forward_flops(batch, batch * attended_positions(1, cached=cached))
    assert want == pytest.approx(got, rel=0.05)
    attention = 4 * led.layers * led.hidden * batch * (cached + 1)
    assert attention > 0.001 * got   # the attention term is in the comparison, not lost in rounding
