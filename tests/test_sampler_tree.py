"""Branching sampler, its policies and rollout trees: leaf budget, where forks may happen (entropy's
online rules, eptree's fork points), stored log-probs equal a full forward, greedy mode; top-k / top-p
sampling and forks inside the truncated distribution; the row cap (continuous batching) for every
policy; tree values, paths, splits, token counts and attention context by hand."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from branchrl.config import BranchConfig
from branchrl.engine import Decoder, Engine, HFDecoder, HFEngine, SamplingParams, entropy, sampling_logprobs
from branchrl.rollout.policies.eptree import fork_points
from branchrl.rollout.sampler import GREEDY, GREEDY_BRANCH, BranchSampler
from branchrl.tree import Tree

VOCAB, EOS = 40, 2
PROMPTS = [("p0", [5, 6, 7, 8, 9]), ("p1", [3, 4]), ("p2", [11, 12, 13])]


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # peaked enough that greedy has no ties, flat enough that every row may fork
        m.lm_head.weight.normal_(0.0, 0.1)
        m.lm_head.weight[EOS] += 0.3   # some chains end on eos, others run to the length limit
    return m


def sampler(model, max_new_tokens=14, temperature=0.7, seed=0, max_rows=0, engine=None, answer_ids=frozenset(),
            greedy=False, **truncation) -> BranchSampler:
    """truncation: top_k / top_p. engine: a ready engine (default: a fresh `Engine` over the model). greedy: the
    evaluation sampler (argmax; run it with GREEDY_BRANCH)."""
    if engine is None:
        decoder = Decoder(model.config.to_dict())
        decoder.load_state_dict(model.state_dict())
        engine = Engine(decoder, pad_id=0)
    params = GREEDY if greedy else SamplingParams(temperature, **truncation)
    return BranchSampler(engine, EOS, max_new_tokens, params, seed, max_rows, answer_ids)


def fork_offsets(tree: Tree, leaf: int) -> list[int]:
    """Completion offsets where the path to `leaf` leaves a forked node (a child's first token)."""
    offsets, at = [], 0
    for n in tree.path(leaf):
        if tree.nodes[n].parent != 0:
            offsets.append(at)
        at += len(tree.nodes[n].tokens)
    return offsets


@pytest.fixture(scope="module")
def branched(model):
    settings = BranchConfig(roots=2, max_leaves=5, entropy_threshold=0.5, min_prefix=3, min_gap=4)
    return settings, sampler(model).run(PROMPTS, settings, policy_version=7)


def test_trees_respect_the_leaf_budget_and_spend_it(branched):
    settings, trees = branched
    assert [t.problem_id for t in trees] == ["p0", "p1", "p2"]
    assert [t.policy_version for t in trees] == [7, 7, 7] and {t.tree_id for t in trees} == {""}  # the driver names
    for tree in trees:
        assert len(tree.nodes[0].children) == settings.roots
        assert len(tree.leaves()) == settings.roots + tree.forks()
        assert len(tree.leaves()) <= settings.max_leaves
    assert sum(t.forks() for t in trees) > 0
    assert any(len(t.leaves()) == settings.max_leaves for t in trees)


def test_forks_wait_for_min_prefix_and_min_gap_and_children_differ(branched):
    settings, trees = branched
    firsts, gaps = [], []
    for tree in trees:
        for leaf in tree.leaves():
            offsets = fork_offsets(tree, leaf)
            firsts += offsets[:1]
            gaps += [b - a for a, b in zip(offsets, offsets[1:])]
    # every entropy is above the threshold, so forks come as early as the rules allow, and no earlier
    assert min(firsts) == settings.min_prefix
    assert gaps and min(gaps) == settings.min_gap
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.children:
                assert len(node.children) == 2
                heads = [tree.nodes[c].tokens[0] for c in node.children]
                assert heads[0] != heads[1]


def test_fork_children_differ_even_when_one_token_dominates(model):
    settings = BranchConfig(roots=1, max_leaves=6, entropy_threshold=0.0, min_prefix=0, min_gap=1)
    trees = sampler(model, max_new_tokens=8, temperature=0.1).run(PROMPTS, settings, policy_version=0)
    forked = [n for t in trees for n in t.nodes[1:] if n.children]
    assert len(forked) >= 10
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.children:
                assert tree.nodes[node.children[0]].tokens[0] != tree.nodes[node.children[1]].tokens[0]


def test_leaves_end_on_eos_or_at_the_length_limit(branched, model):
    _, trees = branched
    finishes = set()
    for tree in trees:
        for leaf in tree.leaves():
            ids, finish = tree.completion_ids(leaf), tree.nodes[leaf].finish
            finishes.add(finish)
            assert ids.count(EOS) == (finish == "eos")
            assert (ids[-1] == EOS) if finish == "eos" else len(ids) == 14
        internal = [n for n in tree.nodes[1:] if n.children]
        assert all(not n.finish for n in internal)
    assert finishes == {"eos", "length"}


@torch.no_grad()
def assert_leaves_match_a_full_forward(model, tree: Tree, params: SamplingParams = SamplingParams(0.7)) -> None:
    """Every leaf's stored log-probs and entropies equal one forward of the HF model over the whole path,
    under the distribution sampled from (without truncation: written out by hand, as the trainer computes it)."""
    prompt = tree.prompt_ids
    for leaf in tree.leaves():
        ids = tree.completion_ids(leaf)
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]   # [C, V]
        if params.top_k or params.top_p < 1:
            logp = sampling_logprobs(logits, params)
        else:
            logp = torch.log_softmax(logits / params.temperature, -1)
        expected = logp.gather(1, torch.tensor(ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(tree.completion_logprobs(leaf)), expected, atol=1e-4, rtol=0)
        stored = [e for n in tree.path(leaf) for e in tree.nodes[n].entropies]
        torch.testing.assert_close(torch.tensor(stored), entropy(logp), atol=1e-4, rtol=0)


def test_stored_logprobs_equal_a_full_forward_at_the_sampling_temperature(branched, model):
    for tree in branched[1]:
        assert_leaves_match_a_full_forward(model, tree)


def test_a_compiled_engine_grows_the_same_trees_with_the_same_logprobs(branched, model):
    """rollout.decode=compile: FlexAttention over pages, batches padded to buckets (up to 15 rows here: 8 and 16)."""
    settings, trees = branched
    decoder = Decoder(model.config.to_dict())
    decoder.load_state_dict(model.state_dict())
    compiled = sampler(model, engine=Engine(decoder, pad_id=0, page_size=4, decode="compile"))
    again = compiled.run(PROMPTS, settings, policy_version=7)
    for tree, other in zip(trees, again):
        assert_leaves_match_a_full_forward(model, other)
        assert [other.completion_ids(leaf) for leaf in other.leaves()] == [tree.completion_ids(leaf)
                                                                         for leaf in tree.leaves()]


def test_same_seed_same_trees(model, branched):
    settings, trees = branched
    again = sampler(model).run(PROMPTS, settings, policy_version=7)
    assert [[t.completion_ids(leaf) for leaf in t.leaves()] for t in again] == \
           [[t.completion_ids(leaf) for leaf in t.leaves()] for t in trees]


def test_no_forks_below_the_entropy_threshold(model):
    settings = BranchConfig(roots=2, max_leaves=8, entropy_threshold=50.0, min_prefix=0, min_gap=1)
    for tree in sampler(model).run(PROMPTS, settings, policy_version=0):
        assert tree.forks() == 0 and len(tree.leaves()) == 2


def test_branching_off_gives_independent_chains(model):
    settings = BranchConfig(policy="independent", roots=3, max_leaves=8, entropy_threshold=0.0, min_prefix=0,
                              min_gap=1)
    for tree in sampler(model).run(PROMPTS, settings, policy_version=0):
        assert tree.forks() == 0 and len(tree.leaves()) == 3


@torch.no_grad()
def test_greedy_is_one_chain_per_prompt_equal_to_generate(model):
    trees = sampler(model, max_new_tokens=10, greedy=True).run(PROMPTS, GREEDY_BRANCH, policy_version=0)
    for (_, prompt), tree in zip(PROMPTS, trees):
        assert tree.forks() == 0 and tree.leaves() == [1]
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=10)
        assert tree.completion_ids(1) == out[0, len(prompt):].tolist()


def first_index(ids: list[int], wanted: set[int]) -> int:
    return next((i for i, t in enumerate(ids) if t in wanted), len(ids))


def test_entropy_forks_stop_at_max_depth_the_answer_and_the_length_limit(model):
    answer = {3, 4, 5}   # stands for the tokens that start "####"
    settings = BranchConfig(roots=1, max_leaves=40, entropy_threshold=0.0, min_prefix=0, min_gap=1, max_depth=2)
    trees = sampler(model, max_new_tokens=12, answer_ids=answer).run(PROMPTS * 3, settings, policy_version=0)
    depths, answered_early = [], 0
    for tree in trees:
        for leaf in tree.leaves():
            ids, offsets = tree.completion_ids(leaf), fork_offsets(tree, leaf)
            depths.append(len(offsets))
            assert all(o <= first_index(ids, answer) for o in offsets)   # no fork once the answer started
            assert all(o + settings.min_gap < 12 for o in offsets)       # none at the length limit
            answered_early += first_index(ids, answer) < 3
    assert max(depths) == 2 and answered_early > 0


def test_entropy_threshold_is_inclusive(model):
    at = BranchConfig(roots=1, max_leaves=4, entropy_threshold=0.0, min_prefix=0, min_gap=1)
    assert all(t.forks() == 3 for t in sampler(model).run(PROMPTS, at, policy_version=0))


def test_independent_policy_ignores_entropy_and_budget(model):
    settings = BranchConfig(policy="independent", roots=5, max_leaves=5, entropy_threshold=0.0, min_prefix=0)
    trees = sampler(model).run(PROMPTS, settings, policy_version=0)
    assert all(t.forks() == 0 and len(t.leaves()) == 5 and len(t.nodes[0].children) == 5 for t in trees)


# ------------------------------------------------------------------ top-k / top-p
@pytest.mark.parametrize("policy", ["entropy", "eptree"])
def test_truncated_sampling_stores_the_distribution_drawn_from_and_forks_inside_it(model, policy):
    params = SamplingParams(0.7, top_k=6, top_p=0.9)
    settings = BranchConfig(policy=policy, roots=2, max_leaves=6, entropy_threshold=0.3, min_prefix=1, min_gap=2)
    trees = sampler(model, top_k=6, top_p=0.9).run(PROMPTS, settings, policy_version=0)
    assert sum(t.forks() for t in trees) > 0
    for tree in trees:
        assert_leaves_match_a_full_forward(model, tree, params)   # a token outside the cut would be -inf there
        for node in tree.nodes[1:]:
            heads = [tree.nodes[c].tokens[0] for c in node.children]
            assert len(set(heads)) == len(heads)
    entropies = [e for t in trees for n in t.nodes[1:] for e in n.entropies]
    assert max(entropies) < math.log(6) + 1e-4                 # at most 6 tokens in any distribution drawn from


def test_a_fork_point_gets_only_the_siblings_the_truncation_leaves(model):
    settings = BranchConfig(policy="eptree", roots=2, max_leaves=12, top_n=2, forks_per_point=3, min_prefix=1,
                              min_gap=2)
    trees = sampler(model, top_k=2).run(PROMPTS, settings, policy_version=0)
    forked = [n for t in trees for n in t.nodes[1:] if len(n.children) > 1]
    assert forked and all(len(n.children) == 2 for n in forked)   # the original + the one other token of 2


@pytest.mark.parametrize("policy", ["entropy", "eptree"])
def test_no_fork_where_truncation_leaves_one_token(model, policy):
    settings = BranchConfig(policy=policy, roots=2, max_leaves=8, entropy_threshold=0.0, min_prefix=0, min_gap=1)
    trees = sampler(model, top_k=1).run(PROMPTS, settings, policy_version=0)
    for tree in trees:
        assert tree.forks() == 0 and len(tree.leaves()) == 2
        assert {x for n in tree.nodes[1:] for x in n.logprobs + n.entropies} == {0.0}


def test_reopening_a_token_drawn_with_probability_one_adds_nothing(model):
    smp = sampler(model, max_new_tokens=10, top_k=1)
    trees = smp.run(PROMPTS[:1], BranchConfig(policy="independent", roots=1), policy_version=0)
    original = trees[0].completion_ids(1)
    smp.reopen(trees, [(0, 1, 4)], children=2)
    assert [trees[0].completion_ids(leaf) for leaf in trees[0].leaves()] == [original]


# ------------------------------------------------------------------ row cap (continuous batching)
class Counting:
    """Records the engine's batch size after every call that changes it, and admissions mid-flight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes, self.mid_flight = [], 0

    def start(self, prompts, max_new_tokens):
        out = super().start(prompts, max_new_tokens)
        self.sizes.append(self.batch_size)
        return out

    def admit(self, prompts, max_new_tokens):
        self.mid_flight += self.batch_size > 0     # Engine.start admits into an empty batch
        out = super().admit(prompts, max_new_tokens)
        self.sizes.append(self.batch_size)
        return out

    def select(self, rows):
        super().select(rows)
        self.sizes.append(self.batch_size)

    def step(self, tokens):
        out = super().step(tokens)
        self.sizes.append(self.batch_size)
        return out


class CountingEngine(Counting, Engine):
    pass


class CountingHFEngine(Counting, HFEngine):
    pass


def counting(model, fallback: bool = False):
    if fallback:
        decoder = HFDecoder(model.config.to_dict())
        decoder.load_state_dict(model.state_dict())
        return CountingHFEngine(decoder, pad_id=0)
    decoder = Decoder(model.config.to_dict())
    decoder.load_state_dict(model.state_dict())
    return CountingEngine(decoder, pad_id=0)


CAPPED = {  # policy: settings whose trees need at most 6 rows at once
    "independent": BranchConfig(policy="independent", roots=3, max_leaves=3),
    "entropy": BranchConfig(roots=2, max_leaves=5, entropy_threshold=0.5, min_prefix=3, min_gap=4),
    "eptree": BranchConfig(policy="eptree", roots=2, max_leaves=6, top_n=2, forks_per_point=2, min_prefix=2,
                             min_gap=3),
}


def assert_complete(trees: list[Tree], settings: BranchConfig, max_new_tokens: int) -> None:
    for tree in trees:
        assert len(tree.nodes[0].children) == settings.roots
        assert settings.roots <= len(tree.leaves()) <= max(settings.max_leaves, settings.roots)
        for node in tree.nodes[1:]:
            assert bool(node.children) != bool(node.finish) and node.tokens        # a leaf or a fork, never open
        for leaf in tree.leaves():
            ids = tree.completion_ids(leaf)
            assert ids[-1] == EOS if tree.nodes[leaf].finish == "eos" else len(ids) == max_new_tokens


@pytest.mark.parametrize("policy", CAPPED)
@pytest.mark.parametrize("max_rows", [0, 6, 11])
def test_row_cap_is_never_exceeded_and_trees_are_complete(model, policy, max_rows):
    settings, engine = CAPPED[policy], counting(model)
    trees = sampler(model, max_rows=max_rows, engine=engine).run(PROMPTS * 3, settings, policy_version=0)
    assert_complete(trees, settings, 14)
    for tree in trees:
        assert_leaves_match_a_full_forward(model, tree)
    if max_rows:
        assert max(engine.sizes) <= max_rows
        # prompts join as rows finish; an entropy tree holds its whole leaf budget until its last row ends, and
        # these mostly end together at the length limit (its admissions mid-flight: the test below)
        assert engine.mid_flight > 0 or policy == "entropy"
    else:
        assert max(engine.sizes) >= 9 * settings.roots and engine.mid_flight == 0   # everything at once
    if policy != "independent":
        assert sum(t.forks() for t in trees) > 0


def test_a_row_cap_never_skips_an_online_fork(model):
    """Every row forks as soon as it may, so every tree reaches its leaf budget, cap or not."""
    settings = BranchConfig(roots=1, max_leaves=4, entropy_threshold=0.0, min_prefix=0, min_gap=1)
    for max_rows in (4, 9):
        engine = counting(model)
        trees = sampler(model, max_rows=max_rows, engine=engine).run(PROMPTS * 3, settings, policy_version=0)
        assert all(t.forks() == 3 for t in trees) and max(engine.sizes) <= max_rows
    assert engine.mid_flight > 0


@pytest.mark.parametrize("fallback", [False, True])
def test_greedy_with_a_row_cap_equals_greedy_without_one(model, fallback):
    free = sampler(model, max_new_tokens=10, greedy=True).run(PROMPTS * 3, GREEDY_BRANCH, policy_version=0)
    engine = counting(model, fallback)
    capped = sampler(model, max_new_tokens=10, max_rows=2, engine=engine, greedy=True).run(
        PROMPTS * 3, GREEDY_BRANCH, policy_version=0)
    assert [t.completion_ids(1) for t in capped] == [t.completion_ids(1) for t in free]
    assert max(engine.sizes) <= 2
    assert (engine.mid_flight == 0) if fallback else (engine.mid_flight > 0)   # the fallback runs in waves


def test_the_fallback_engine_fills_the_cap_in_waves(model):
    """No `admit` mid-flight on the HF fallback: a new wave starts once every row is done."""
    settings = CAPPED["entropy"]
    engine = counting(model, fallback=True)
    trees = sampler(model, max_rows=5, engine=engine).run(PROMPTS * 2, settings, policy_version=0)
    assert_complete(trees, settings, 14)
    assert max(engine.sizes) <= 5 and engine.mid_flight == 0


@pytest.mark.parametrize("max_rows", [0, 5])
def test_same_seed_same_trees_with_truncation_and_a_row_cap(model, max_rows):
    settings = CAPPED["entropy"]
    runs = [sampler(model, seed=seed, max_rows=max_rows, top_p=0.95).run(PROMPTS * 2, settings, policy_version=0)
            for seed in (3, 3, 4)]
    leaves = [[[t.completion_ids(leaf) for leaf in t.leaves()] for t in trees] for trees in runs]
    assert leaves[0] == leaves[1] and leaves[0] != leaves[2]


def test_a_cap_below_one_trees_rows_is_refused_before_any_compute(model):
    engine = counting(model)
    with pytest.raises(ValueError, match="max_rows=4 cannot hold the 5 rows one tree may decode at once"):
        sampler(model, max_rows=4, engine=engine).run(PROMPTS, CAPPED["entropy"], policy_version=0)
    assert engine.sizes == []


@pytest.fixture(scope="module")
def eptree(model):
    settings = BranchConfig(policy="eptree", roots=2, max_leaves=6, top_n=2, forks_per_point=2, rounds=1,
                              min_prefix=2, min_gap=3)
    return settings, sampler(model, max_new_tokens=14).run(PROMPTS, settings, policy_version=0)


def test_eptree_forks_top_n_points_t_times_within_budget(eptree):
    settings, trees = eptree
    for tree in trees:
        assert len(tree.nodes[0].children) == settings.roots
        assert len(tree.leaves()) == 6 == settings.roots + settings.top_n * settings.forks_per_point
        points = [n for n in tree.nodes[1:] if len(n.children) > 1]
        assert sum(len(n.children) - 1 for n in points) == 4
        for leaf in tree.leaves():
            offsets = fork_offsets(tree, leaf)
            assert all(o >= settings.min_prefix and o + settings.min_gap < 14 for o in offsets)
            assert all(b - a >= settings.min_gap for a, b in zip(offsets, offsets[1:]))
        for node in tree.nodes[1:]:   # new branches differ from the original token and from each other
            heads = [tree.nodes[c].tokens[0] for c in node.children]
            assert len(set(heads)) == len(heads)


def test_eptree_branches_have_full_forward_logprobs_and_count_their_reprefill(eptree, model):
    _, trees = eptree
    for tree in trees:
        assert_leaves_match_a_full_forward(model, tree)
        assert all(len(tree.completion_ids(leaf)) == 14 or tree.completion_ids(leaf)[-1] == EOS
                   for leaf in tree.leaves())
        prompt = tree.prompt_ids
        forked = [n for n in tree.nodes[1:] if len(n.children) > 1]
        starts = tree.span_starts()
        assert tree.reprefill_tokens == sum(len(prompt) + starts[n.id] + len(n.tokens) for n in forked)


def test_fork_points_take_the_least_likely_tokens_spaced_apart_and_before_the_answer():
    tree = Tree("p", [1], 0, tree_id="t")
    node = tree.nodes[tree.add_child(0)]
    node.tokens = [10, 11, 12, 13, 99, 15, 16, 17, 18, 19]
    node.logprobs = [-0.1, -3.0, -0.2, -2.5, -0.1, -2.9, -0.3, -5.0, -0.1, -0.1]
    node.finish, node.reward = "eos", 1.0
    s = BranchConfig(policy="eptree", roots=1, max_leaves=9, top_n=2, forks_per_point=2, min_prefix=1, min_gap=2)
    assert fork_points(tree, s, max_new_tokens=20) == [(1, 7), (1, 1)]          # -log p 5.0 then 3.0
    assert fork_points(tree, s, max_new_tokens=20, answer_ids={99}) == [(1, 1), (1, 3)]  # nothing after '99'
    wide = s.model_copy(update={"min_gap": 5})
    assert fork_points(tree, wide, max_new_tokens=20, answer_ids={99}) == [(1, 1)]  # 3 is too close to 1
    small = s.model_copy(update={"max_leaves": 4})
    assert fork_points(tree, small, max_new_tokens=20) == [(1, 7)]              # 1 + 2 + 2 > 4 leaves
    assert fork_points(tree, s, max_new_tokens=9) == [(1, 1), (1, 5)]           # 7 + 2 >= 9: at the limit


def test_reopen_two_points_on_one_chain_keeps_the_original_path(model):
    smp = sampler(model, max_new_tokens=12)
    trees = smp.run(PROMPTS[:1], BranchConfig(policy="independent", roots=1), policy_version=0)
    tree = trees[0]
    original = tree.completion_ids(1)
    smp.reopen(trees, [(0, 1, 6), (0, 1, 2)], children=1)
    paths = [tree.completion_ids(leaf) for leaf in tree.leaves()]
    assert original in paths and len(paths) == 3
    for at in (2, 6):
        branch = [p for p in paths if p != original and p[:at] == original[:at] and p[at] != original[at]]
        assert len(branch) == 1
    assert sorted(tree.order()) == list(range(len(tree.nodes)))


def test_split_moves_the_tail_children_and_leaf_state():
    t = Tree("p", [1, 2], 0, tree_id="t")
    a = t.add_child(0)
    t.nodes[a].tokens, t.nodes[a].logprobs, t.nodes[a].entropies = [5, 6, 7], [-1.0, -2.0, -3.0], [0.1, 0.2, 0.3]
    b, c = t.add_child(a), t.add_child(a)
    t.nodes[b].tokens, t.nodes[c].tokens = [8], [9]
    t.nodes[b].finish = t.nodes[c].finish = "eos"
    before = t.context_sum()
    tail = t.split(a, 1)
    assert (t.nodes[a].tokens, t.nodes[a].children, t.nodes[tail].tokens, t.nodes[tail].logprobs) == (
        [5], [tail], [6, 7], [-2.0, -3.0])
    assert t.nodes[tail].children == [b, c] and t.nodes[b].parent == tail and t.order() == [0, a, tail, b, c]
    assert t.completion_ids(c) == [5, 6, 7, 9] and t.context_sum() == before and t.forks() == 1
    with pytest.raises(ValueError, match="outside"):
        t.split(a, 1)


# ------------------------------------------------------------------ tree math on a hand-built tree
@pytest.fixture
def tree() -> Tree:
    """prompt [1 2 3]
        1 [10 11] -+- 3 [12]              eos,    reward 1
                   +- 4 [13] -+- 5 [14 15]  length, reward 0
                              +- 6 [16]     eos,    never verified
        2 [20 21 22]                       eos,    reward 1
    """
    t = Tree("p", [1, 2, 3], 0, tree_id="t")
    for parent, tokens, finish, reward in [(0, [10, 11], "", None), (0, [20, 21, 22], "eos", 1.0),
                                           (1, [12], "eos", 1.0), (1, [13], "", None),
                                           (4, [14, 15], "length", 0.0), (4, [16], "eos", None)]:
        node = t.nodes[t.add_child(parent)]
        node.tokens, node.logprobs = tokens, [-0.5 * x for x in tokens]
        node.finish, node.reward = finish, reward
    return t


def test_tree_structure(tree):
    assert tree.leaves() == [2, 3, 5, 6]
    assert tree.forks() == 2
    assert tree.path(5) == [1, 4, 5]
    assert tree.completion_ids(5) == [10, 11, 13, 14, 15]
    assert tree.completion_ids(6) == [10, 11, 13, 16]
    assert tree.completion_logprobs(6) == [-5.0, -5.5, -6.5, -8.0]


def test_values_are_mean_rewarded_leaf_below(tree):
    assert tree.values() == pytest.approx([2 / 3, 0.5, 1.0, 1.0, 0.0, 0.0, None])
    assert tree.values()[6] is None


def test_branch_paths(tree):
    assert [tree.branch_path(leaf) for leaf in tree.leaves()] == ["1", "0.0", "0.1.0", "0.1.1"]


def test_generated_tokens_count_shared_spans_once(tree):
    assert tree.generated_tokens() == 2 + 3 + 1 + 1 + 2 + 1
    assert sum(len(tree.completion_ids(leaf)) for leaf in tree.leaves()) == 3 + 3 + 5 + 4


def test_context_sum_by_hand(tree):
    # prefill 1+2+3; then each token attends to the prompt, its path so far and itself:
    # node1 4+5, node2 4+5+6, node3 6, node4 6, node5 7+8, node6 7
    assert tree.context_sum() == 6 + 9 + 15 + 6 + 6 + 15 + 7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_branching_on_cuda_matches_the_cpu_model(model):
    decoder = Decoder(model.config.to_dict(), device="cuda")
    decoder.load_state_dict(model.state_dict())
    settings = BranchConfig(roots=2, max_leaves=4, entropy_threshold=0.5, min_prefix=1, min_gap=2)
    branch_sampler = BranchSampler(Engine(decoder, pad_id=0), EOS, 8, SamplingParams(0.7), seed=0)
    trees = branch_sampler.run(PROMPTS, settings, policy_version=0)
    assert sum(t.forks() for t in trees) > 0
    for tree in trees:
        for leaf in tree.leaves():
            ids = tree.completion_ids(leaf)
            logits = model(torch.tensor([tree.prompt_ids + ids])).logits[0, len(tree.prompt_ids) - 1:-1]
            expected = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(tree.completion_logprobs(leaf)), expected, atol=1e-3, rtol=0)
