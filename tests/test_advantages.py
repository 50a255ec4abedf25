"""Tree RL math on a hand-built tree: values, TreeRL and GRPO advantages, shared-span weights, dynamic
sampling drops, and the clipped token-level policy loss, each against numbers worked out by hand."""

import math

import pytest
import torch

from branchrl.training.advantages import (
    grpo_advantages,
    grpo_samples,
    informative,
    span_weights,
    tree_advantages,
    tree_samples,
)
from branchrl.training.algos import ALGOS
from branchrl.training.losses import policy_loss
from branchrl.tree import Tree


def build(spec) -> Tree:
    t = Tree("p", [1, 2, 3], policy_version=0, tree_id="t")
    for parent, tokens, reward in spec:
        node = t.nodes[t.add_child(parent)]
        node.tokens, node.logprobs, node.entropies = tokens, [-0.1 * x for x in tokens], [0.0] * len(tokens)
        if reward is not None:
            node.finish, node.reward = "eos", reward
    return t


@pytest.fixture
def tree() -> Tree:
    """prompt
        1 [10 11] -+- 3 [12]                  reward 1
                   +- 4 [13] -+- 5 [14 15]    reward 0
                              +- 6 [16]       reward 1
        2 [20 21 22]                          reward 0
    V: root 1/2, n1 2/3, n2 0, n3 1, n4 1/2, n5 0, n6 1.  Leaves below: 4, 3, 1, 1, 2, 1, 1."""
    return build([(0, [10, 11], None), (0, [20, 21, 22], 0.0), (1, [12], 1.0), (1, [13], None),
                  (4, [14, 15], 0.0), (4, [16], 1.0)])


def test_values_and_leaf_counts(tree):
    assert tree.values() == pytest.approx([1 / 2, 2 / 3, 0.0, 1.0, 1 / 2, 0.0, 1.0])
    assert tree.leaf_counts() == [4, 3, 1, 1, 2, 1, 1]


def test_tree_advantages_by_hand(tree):
    # A(n) = [(V(n) - V(parent)) + (V(n) - V(root))] / sqrt(L(n))
    expected = [0.0,
                ((2 / 3 - 1 / 2) + (2 / 3 - 1 / 2)) / math.sqrt(3),   # n1
                (-1 / 2 - 1 / 2) / 1,                                 # n2
                ((1 - 2 / 3) + (1 - 1 / 2)) / 1,                      # n3 = 5/6
                ((1 / 2 - 2 / 3) + 0.0) / math.sqrt(2),               # n4
                ((0 - 1 / 2) + (0 - 1 / 2)) / 1,                      # n5
                ((1 - 1 / 2) + (1 - 1 / 2)) / 1]                      # n6
    assert tree_advantages(tree) == pytest.approx(expected)


def test_grpo_advantages_normalise_the_group():
    assert grpo_advantages([0.0, 1.0, 0.0, 1.0]) == pytest.approx([-1, 1, -1, 1], abs=1e-5)
    assert grpo_advantages([1.0, 1.0]) == [0.0, 0.0]


def test_tree_samples_give_each_span_its_advantage_and_weight(tree):
    adv = tree_advantages(tree)
    by_leaf = {tuple(s.completion_ids): s for s in tree_samples(tree, "once")}
    s = by_leaf[(10, 11, 13, 14, 15)]          # path n1 n4 n5
    assert s.advantages == pytest.approx([adv[1]] * 2 + [adv[4]] + [adv[5]] * 2)
    assert s.weights == pytest.approx([1 / 3] * 2 + [1 / 2] + [1.0] * 2)
    assert s.old_logprobs == pytest.approx([-1.0, -1.1, -1.3, -1.4, -1.5])
    assert s.prompt_ids == [1, 2, 3]


@pytest.mark.parametrize("shared, per_token", [("once", lambda L: 1.0), ("per_leaf", lambda L: float(L))])
def test_a_shared_span_counts_once_or_once_per_leaf(tree, shared, per_token):
    """Summed over every leaf sequence, each generated token's weight is 1 ('once') or L(n) ('per_leaf')."""
    total: dict[tuple[int, int], float] = {}
    for s in tree_samples(tree, shared):
        for i, (tok, w) in enumerate(zip(s.completion_ids, s.weights)):
            total[(i, tok)] = total.get((i, tok), 0.0) + w
    counts = tree.leaf_counts()
    expected = {}
    for n in range(1, len(tree.nodes)):
        start = tree.span_starts()[n]
        for j, tok in enumerate(tree.nodes[n].tokens):
            expected[(start + j, tok)] = per_token(counts[n])
    assert total == pytest.approx(expected)
    assert sum(total.values()) == pytest.approx(sum(per_token(counts[n]) * len(tree.nodes[n].tokens)
                                                    for n in range(1, len(tree.nodes))))


def test_grpo_on_a_tree_gives_shared_tokens_the_mean_of_their_leaves(tree):
    samples = grpo_samples(tree, "once")
    # leaves in order 2, 3, 5, 6 have rewards 0, 1, 0, 1 -> advantages -1, 1, -1, 1
    n1_effective = sum(w * a for s in samples for w, a in zip(s.weights[:2], s.advantages[:2])
                       if s.completion_ids[:2] == [10, 11]) / 2   # two tokens of n1
    assert n1_effective == pytest.approx((1 - 1 + 1) / 3, abs=1e-5)


def test_span_weights_reject_an_unknown_mode(tree):
    with pytest.raises(ValueError, match="shared_spans must be one of"):
        span_weights(tree, "twice")


def test_dynamic_sampling_drops_uniform_trees_and_keeps_the_rest(tree):
    all_right = build([(0, [5], 1.0), (0, [6], 1.0)])
    all_wrong = build([(0, [5], 0.0), (0, [6], 0.0), (0, [7], 0.0)])
    assert informative(tree) and not informative(all_right) and not informative(all_wrong)
    samples, dropped = ALGOS["tree"].batch([all_right, tree, all_wrong], [], "once", max_trees=8)
    assert dropped == 2 and len(samples) == 4            # only the mixed tree's four leaves
    samples, _ = ALGOS["grpo"].batch([tree, tree, tree], [], "once", max_trees=2)
    assert len(samples) == 8                              # over-sampled: the first two informative trees


def test_tree_advantages_need_every_leaf_rewarded():
    t = build([(0, [5], 1.0), (0, [6], None)])
    t.nodes[2].finish = "eos"
    with pytest.raises(ValueError, match="needs a reward"):
        tree_advantages(t)


def test_policy_loss_clips_higher_above_and_lower_below():
    logp = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    w = torch.tensor([1.0, 1.0, 0.5, 0.5])
    loss, stats = policy_loss(logp, old, adv, w, clip_low=0.2, clip_high=0.28)
    r_up, r_down = math.exp(0.5), math.exp(-0.5)
    # A>0: min(r, clip(r)) -> 1.28 (clipped) and r_down; A<0: min(-r, -clip(r)) -> -r_up and -0.8 (clipped)
    expected = (-1.28 - r_down + 0.5 * r_up + 0.5 * 0.8) / 3.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_fraction"] == pytest.approx((1 + 0.5) / 3) and stats["kl"] == 0.0
    loss.backward()
    assert logp.grad[0] == 0 and logp.grad[3] == 0        # clipped tokens carry no gradient
    assert logp.grad[1].item() == pytest.approx(-r_down / 3) and logp.grad[2].item() == pytest.approx(0.5 * r_up / 3)


def test_policy_loss_kl_term_is_k3_and_zero_at_the_reference():
    logp = torch.tensor([-1.0, -2.0])
    zeros = torch.zeros(2)
    _, same = policy_loss(logp, logp, zeros, torch.ones(2), 0.2, 0.28, ref_logp=logp, kl_coef=0.1)
    assert same["kl"] == 0.0
    ref = torch.tensor([-1.5, -1.0])
    loss, stats = policy_loss(logp, logp, zeros, torch.ones(2), 0.2, 0.28, ref_logp=ref, kl_coef=0.1)
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    assert stats["kl"] == pytest.approx(sum(k3) / 2) and loss.item() == pytest.approx(0.1 * sum(k3) / 2)
