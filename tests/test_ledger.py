"""Compute ledger: the 2N/6N + attention FLOP model on hand-computed numbers, and the rollout/train ratio."""

import pytest

from branchrl.data.ledger import Ledger
from branchrl.training.trainer import TrainStats
from branchrl.tree import Tree, attended_positions

# N = 1000 FLOP parameters, 2 layers, width 32: a forward costs 2000 per token + 256 per attended position


def test_forward_flops_by_hand():
    led = Ledger(flop_params=1000, layers=2, hidden=32)
    assert led.forward_flops(tokens=10, context_sum=55) == 2 * 1000 * 10 + 4 * 2 * 32 * 55 == 34080
    assert led.forward_flops(0, 0) == 0


def chain_tree(prompt: int, spans: list[int]) -> Tree:
    """A prompt of `prompt` tokens and one root chain of sum(spans) tokens (no forks)."""
    tree = Tree("p", list(range(prompt)), 0)
    node = tree.add_child(0)
    tree.nodes[node].tokens = [7] * sum(spans)
    tree.nodes[node].finish = "eos"
    return tree


def test_rollout_train_and_eval_accumulate_apart():
    led = Ledger(1000, 2, 32)
    assert led.ratio is None  # nothing trained yet: no ratio rather than a division by zero
    led.add_rollout([chain_tree(4, [6])], seconds=1.5)         # prefill 4 (ctx 10), decode 6 after 4 (ctx 45)
    led.add_rollout([chain_tree(2, [3])], seconds=0.5, stale_tokens=5)   # prefill 2 (ctx 3), decode 3 (ctx 12)
    led.add_train(TrainStats(loss=1.0, sequences=2, trained_tokens=3, processed_tokens=10, context_sum=55, seconds=2.0,
                             state_bytes=800))
    led.add_eval(tokens=5, context_sum=15)
    assert led.rollout_prefill_flops == 2000 * 6 + 256 * (10 + 3)
    assert led.rollout_decode_flops == 2000 * (6 + 3 + 5) + 256 * (45 + 12)   # stale tokens: 2N each, no attention
    assert led.rollout_flops == led.rollout_prefill_flops + led.rollout_decode_flops == 2000 * 20 + 256 * 70
    assert (led.prefill_tokens, led.generated_tokens, led.fork_saved_prefill_tokens) == (6, 14, 0)
    assert led.train_flops == led.train_update_flops == 3 * 34080 == 102240   # 6N per token + 12*L*d per position
    assert led.eval_flops == 2000 * 5 + 256 * 15 == 13840        # kept out of the ratio
    assert led.ratio == pytest.approx(57920 / 102240)
    assert led.trained_tokens == 3
    assert (led.rollout_seconds, led.train_seconds) == (2.0, 2.0)
    totals = led.totals()
    assert totals["rollout_train_flop_ratio"] == led.ratio and totals["decode_tokens"] == 14
    assert totals["flop_params"] == 1000 and totals["eval_flops"] == 13840
    assert totals["train_state_bytes_per_rank"] == 800


def test_forks_saved_prefill_is_what_each_extra_branch_would_have_prefilled():
    # prompt of 3; 2 root chains; the first forks after 2 tokens into 3 children (2 extra branches)
    tree = Tree("p", [1, 2, 3], 0)
    a, b = tree.add_child(0), tree.add_child(0)
    tree.nodes[a].tokens = [5, 6]
    kids = [tree.add_child(a) for _ in range(3)]
    for n in [b, *kids]:
        tree.nodes[n].tokens, tree.nodes[n].finish = [9], "eos"
    # root: 1 extra chain x prefix 3; node a: 2 extra branches x prefix 3 + 2 = 5
    assert tree.fork_saved_prefill() == (3 + 2 * 5, attended_positions(3) + 2 * attended_positions(5))
    tree.reprefill_tokens, tree.reprefill_context = 5, attended_positions(5)   # had a re-opened chain paid one back
    assert tree.fork_saved_prefill() == (3 + 5, attended_positions(3) + attended_positions(5))
    led = Ledger(1000, 2, 32)
    led.add_rollout([tree], seconds=1.0)
    assert led.fork_saved_prefill_tokens == 8
    assert led.fork_saved_prefill_flops == 2000 * 8 + 256 * (6 + 15)
    assert led.prefill_tokens == 3 + 5 and led.reprefill_tokens == 5


def test_train_passes_are_named_apart_and_checkpoint_recompute_leaves_the_head_out():
    led = Ledger(1000, 2, 32, head_params=100)
    led.add_train(TrainStats(loss=1.0, sequences=2, trained_tokens=3, processed_tokens=10, context_sum=55, seconds=1.0,
                             forward_tokens=10, forward_context_sum=55, reference_tokens=10,
                             reference_context_sum=55, checkpoint_tokens=10, checkpoint_context_sum=55))
    assert (led.train_update_flops, led.train_recompute_flops, led.train_reference_flops) == (3 * 34080, 34080, 34080)
    assert led.train_flops == 5 * 34080                      # the ratio's denominator: model FLOPs of every pass
    assert led.train_checkpoint_flops == 34080 - 2 * 100 * 10   # the blocks' forward again, not the LM head
    mark = led.state()
    led.add_sync(0.5, 1234)
    led.add_verify(leaves=4, wall_seconds=0.2, busy_seconds=0.3)
    led.add_busy("rollout", busy=3.0, held=4.0)
    assert led.since(mark, ("sync_bytes", "leaves", "verifier_cpu_seconds")) == {
        "sync_bytes": 1234, "leaves": 4, "verifier_cpu_seconds": 0.3}
    assert (led.syncs, led.rollout_busy_device_seconds, led.rollout_idle_device_seconds) == (1, 3.0, 1.0)


def test_forward_only_passes_count_one_forward_and_state_bytes_keep_the_largest():
    led = Ledger(1000, 2, 32)
    led.add_train(TrainStats(loss=1.0, sequences=2, trained_tokens=3, processed_tokens=10, context_sum=55, seconds=1.0,
                             forward_tokens=10, forward_context_sum=55, state_bytes=900))
    led.add_train(TrainStats(loss=1.0, sequences=1, trained_tokens=1, processed_tokens=0, context_sum=0, seconds=1.0,
                             state_bytes=700))
    assert led.train_flops == 3 * 34080 + 34080   # a recompute pass is a forward: 2N per token
    assert led.train_state_bytes_per_rank == 900


def test_attended_positions():
    assert [attended_positions(n) for n in (0, 1, 2, 3)] == [0, 1, 1 + 2, 1 + 2 + 3]
    assert attended_positions(2, cached=5) == 6 + 7   # two decode steps after 5 cached tokens


def test_tool_turns_are_counted_per_step_and_in_total():
    from branchrl.tree import Tree

    led = Ledger(1000, 2, 32)
    tree = Tree("p", [1, 2], 0)
    node = tree.add_child(0)
    tree.nodes[node].tokens, tree.nodes[node].tool = [5, 6, 7, 8, 9], [False, True, True, False]
    tree.tool_calls_run, tree.tool_seconds, tree.tool_unavailable = 1, 0.25, 1
    step = led.add_tools([tree, tree])
    assert step == {"tool_calls": 2, "tool_seconds": 0.5, "appended_tokens": 4, "tool_unavailable": 2}
    assert (led.tool_calls, led.appended_tokens, tree.generated_tokens()) == (2, 4, 3)
    assert led.totals()["tool_seconds"] == 0.5 and led.totals()["tool_unavailable"] == 2


def test_a_sampled_batch_is_counted_once_for_run_and_generate_alike():
    """`add_sampled` is what run's steps and generate's batches both call: tools, rollout, verified tokens, verify."""
    from branchrl.records import Leaf
    from branchrl.verifiers.result import Result

    tree = chain_tree(4, [6])
    node = tree.leaves()[0]
    tree.nodes[node].tool, tree.tool_calls_run = [False, True, True, False, False, False], 1
    leaf = Leaf(tree, node, tree.completion_ids(node), "", {}, Result("pass", 1.0, 0.75, "by hand"))
    led, apart = Ledger(1000, 2, 32), Ledger(1000, 2, 32)
    tools = led.add_sampled([tree], 1.5, [leaf], verified_tokens=6, verify_seconds=2.0)
    assert tools == apart.add_tools([tree])
    apart.add_rollout([tree], 1.5)
    apart.add_verify(1, 2.0, 0.75)
    apart.verified_tokens += 6
    assert led.state() == apart.state() and (led.tool_calls, led.appended_tokens, led.leaves) == (1, 2, 1)


def test_report_states_the_tool_share_of_a_multi_turn_run(tmp_path):
    import json

    from branchrl.data.report import _markdown

    steps = [{"generated_tokens": 100, "leaves": 8, "forks": 4, "verified_samples": 2, "tool_calls": 6,
              "tool_seconds": 0.3, "appended_tokens": 30, "verified_with_tool": 1.0},
             {"generated_tokens": 100, "leaves": 8, "forks": 4, "verified_samples": 0, "tool_calls": 4,
              "tool_seconds": 0.2, "appended_tokens": 20, "verified_with_tool": 0.0}]
    text = _markdown(tmp_path, json.loads('{"eval_before": 0.1, "eval_after": 0.3}'), steps)
    assert "Tools: 10 calls (0.5 s in the sandbox), 50 tool-output tokens appended" in text
    assert "called a tool: 100%" in text   # steps with no kept sample do not count


def test_report_of_an_interrupted_run_has_no_eval_after(tmp_path):
    from branchrl.data.report import _markdown

    steps = [{"generated_tokens": 100, "leaves": 8, "forks": 4, "verified_samples": 2}]
    text = _markdown(tmp_path, {"interrupted": True, "signal": "SIGTERM", "steps": 1, "eval_before": 0.25,
                                "eval_after": None}, steps)
    assert "Interrupted by SIGTERM after step 1; held-out pass@1 before RL: 0.250." in text
    text = _markdown(tmp_path, {"interrupted": True, "signal": "SIGINT", "steps": 0, "eval_before": None,
                                "eval_after": None}, [])
    assert "Interrupted by SIGINT after step 0." in text
