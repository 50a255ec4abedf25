"""Multi-turn rollouts with a real tool: a tiny char-level model's rows end a turn on the env's stop strings, the
sandboxed python tool runs (several calls at once, off the decode loop), its output is appended to the live row
without a re-prefill, and decoding goes on. Checked against a full transformers forward: every policy token's
stored log-prob is the model's over the whole transcript (tool output included as context), so the appended
KV is exactly right; tool tokens are flagged, carry log-prob 0, and the turn and token limits hold."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from branchrl.config import BranchConfig
from branchrl.engine import Decoder, Engine, SamplingParams
from branchrl.envs.base import Environment, Message
from branchrl.models import build_char_tokenizer
from branchrl.rollout.sampler import BranchSampler
from branchrl.rollout.tools import ToolRunner

TOKENIZER = build_char_tokenizer()
EOS = TOKENIZER.eos_token_id


class CountingTool(Environment):
    """Ends a policy turn at any of a few letters; the tool prints the turn's length (and sleeps `sleep_s`)."""

    def __init__(self, max_turns: int = 2, sleep_s: float = 0.0):
        super().__init__(name="counting", tool_stops=tuple("abcdefgh"), max_turns=max_turns)
        self.sleep_s = sleep_s

    def tool_request(self, problem, transcript):
        code = f"import time; time.sleep({self.sleep_s}); print(len({transcript[-1].text!r}))"
        return {"tool": "python", "code": code, "history": []}

    def observation(self, request, output):
        return Message("tool", f"[{output.output.strip() or output.error}]", ok=output.status == "ok")


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def rollout(model, env, prompts, branch=BranchConfig(policy="independent", roots=3, max_leaves=3), max_new=40,
            workers=4, max_rows=0, wait_steps=0):
    decoder = Decoder(model.config.to_dict())
    decoder.load_state_dict(model.state_dict())
    tools = ToolRunner(env, TOKENIZER, workers, wait_steps=wait_steps)
    sampler = BranchSampler(Engine(decoder, pad_id=0), EOS, max_new, SamplingParams(1.0), seed=0, max_rows=max_rows,
                            tools=tools)
    ids = [(f"p{i}", TOKENIZER.encode(p)) for i, p in enumerate(prompts)]
    return sampler.run(ids, branch, policy_version=0)


def test_tool_turns_append_observations_that_the_model_then_reads(model):
    trees = rollout(model, CountingTool(max_turns=2), ["12*34=", "5*6=", "777*8="])
    calls = 0
    for tree in trees:
        for leaf in tree.leaves():
            ids, flags = tree.completion_ids(leaf), tree.completion_roles(leaf)
            lps = tree.completion_logprobs(leaf)
            assert len(ids) <= 40 and tree.tool_calls(leaf) <= 2
            calls += tree.tool_calls(leaf)
            text = TOKENIZER.decode(ids)
            for k in range(tree.tool_calls(leaf)):   # each observation follows a turn that ends on a stop letter
                assert "[" in text
            assert all(lp == 0.0 for lp, f in zip(lps, flags) if f)
            with torch.no_grad():   # every policy token's log-prob is the model's over the whole transcript
                full = torch.tensor([tree.prompt_ids + ids])
                ref = torch.log_softmax(model(full).logits[0, len(tree.prompt_ids) - 1:-1].float(), -1)
                ref = ref[torch.arange(len(ids)), torch.tensor(ids)]
            policy = [i for i, f in enumerate(flags) if not f]
            torch.testing.assert_close(torch.tensor([lps[i] for i in policy]), ref[policy], atol=1e-4, rtol=1e-4)
        assert tree.appended_tokens() + tree.generated_tokens() == sum(len(n.tokens) for n in tree.nodes)
    assert calls >= 3, "the stop letters are common enough that several rows call the tool"
    assert sum(t.tool_calls_run for t in trees) >= 3 and all(t.tool_unavailable == 0 for t in trees)


def test_observation_text_is_the_tools_output(model):
    trees = rollout(model, CountingTool(max_turns=1), ["1+1="])
    seen = 0
    for tree in trees:
        for leaf in tree.leaves():
            ids, flags = tree.completion_ids(leaf), tree.completion_roles(leaf)
            if not any(flags):
                continue
            start = flags.index(True)
            end = start + sum(flags)
            turn = TOKENIZER.decode(ids[:start], skip_special_tokens=True)
            assert TOKENIZER.decode(ids[start:end]) == f"[{len(turn)}]"[:end - start]
            assert turn[-1] in "abcdefgh" and not any(c in "abcdefgh" for c in turn[:-1])
            seen += 1
    assert seen


def test_waiting_rows_do_not_stall_the_others_and_calls_run_at_once(model):
    env = CountingTool(max_turns=1, sleep_s=0.6)
    start = time.perf_counter()
    trees = rollout(model, env, ["12*34=", "5*6=", "777*8=", "9*9="], workers=12,
                    branch=BranchConfig(policy="independent", roots=3, max_leaves=3))
    wall = time.perf_counter() - start
    calls = sum(t.tool_calls_run for t in trees)
    assert calls >= 4
    assert wall < 0.6 * calls * 0.75, f"{calls} calls of 0.6 s ran one after another ({wall:.1f} s)"


class JitteryTool(CountingTool):
    """Calls that take 0-80 ms at random: which decode step a call finishes in is left to timing."""

    def tool_request(self, problem, transcript):
        code = f"import random, time; time.sleep(random.random() * 0.08); print(len({transcript[-1].text!r}))"
        return {"tool": "python", "code": code, "history": []}


def test_fixed_wait_steps_make_tool_rollouts_the_same_whatever_the_calls_timing(model):
    def sample(wait_steps):
        trees = rollout(model, JitteryTool(max_turns=2), ["12*34=", "5*6=", "777*8=", "9*9="], workers=3,
                        branch=BranchConfig(policy="entropy", roots=2, max_leaves=4, entropy_threshold=0.5),
                        max_rows=6, wait_steps=wait_steps)
        assert sum(t.tool_calls_run for t in trees) >= 4
        return [[(n.tokens, n.tool_flags()) for n in t.nodes] for t in trees]

    first = sample(3)
    assert all(sample(3) == first for _ in range(2))


def test_forks_after_tool_results_and_a_row_cap_keep_every_tree_complete(model):
    branch = BranchConfig(policy="entropy", roots=2, max_leaves=4, entropy_threshold=0.1, min_prefix=2, min_gap=3)
    trees = rollout(model, CountingTool(max_turns=2), ["12*34=", "5*6=", "777*8="], branch=branch, max_rows=4)
    for tree in trees:
        assert 2 <= len(tree.leaves()) <= 4
        for leaf in tree.leaves():
            assert tree.nodes[leaf].finish in ("eos", "length") and len(tree.completion_ids(leaf)) <= 40


def test_tool_entropy_forks_only_right_after_a_tool_output(model):
    branch = BranchConfig(policy="tool_entropy", roots=2, max_leaves=6, tool_window=3, tool_entropy_rise=-100.0,
                          min_gap=1, min_prefix=0)
    trees = rollout(model, CountingTool(max_turns=2), ["12*34=", "5*6=", "777*8="], branch=branch)
    forks = 0
    for tree in trees:
        starts = tree.span_starts()
        for n, node in enumerate(tree.nodes[1:], start=1):
            if node.parent == 0 or len(tree.nodes[node.parent].children) < 2:
                continue
            forks += 1
            leaf = next(x for x in tree.leaves() if n in tree.path(x))
            flags, at = tree.completion_roles(leaf), starts[n]   # the fork's first token is the policy's
            assert not flags[at]
            since = next(k for k in range(1, at + 1) if flags[at - k])   # tokens back to the tool output's end
            assert since <= 3, f"a fork {since} tokens after a tool output"
    assert forks > 0
    never = rollout(model, CountingTool(max_turns=0), ["12*34="], branch=branch)   # no tool turns: no forks
    assert never[0].forks() == 0


def test_eptree_reopens_multi_turn_chains_within_the_turn_limit(model):
    branch = BranchConfig(policy="eptree", roots=2, max_leaves=6, top_n=2, forks_per_point=2, min_prefix=1, min_gap=2)
    trees = rollout(model, CountingTool(max_turns=1), ["12*34=", "5*6="], branch=branch)
    for tree in trees:
        assert tree.forks() > 0 and len(tree.leaves()) <= 6
        for leaf in tree.leaves():
            assert tree.tool_calls(leaf) <= 1 and len(tree.completion_ids(leaf)) <= 40
            lps, flags = tree.completion_logprobs(leaf), tree.completion_roles(leaf)
            assert all(lp == 0.0 for lp, f in zip(lps, flags) if f)   # never a fork point inside a tool output
