"""No tool-output token ever carries loss weight, for sft, grpo and tree: the loss is differentiated with
respect to every completion token's log-prob (what the trainer's model computes), and each token that a tool
wrote gets exactly zero gradient (sft: it is not even a target), while the policy's tokens do get one.
Also the data path into those losses: pruning's SFT sequences, the warm start's transcripts, PG samples."""

import pytest
import torch
from test_trainer import tiny_cfg

from branchrl.data.prune import training_sequence, verified_tokens
from branchrl.training.algos import ALGOS
from branchrl.training.losses import pack_batch
from branchrl.training.trainer import Trainer, encode_pair
from branchrl.tree import Node, Tree

PROMPT = [5, 6, 7]
# a multi-turn tree: a shared span (policy, then a tool output), then two leaves that differ
SHARED = ([10, 11, 12, 40, 41, 42, 43], [False, False, False, True, True, True, True])
LEAVES = [([13, 44, 45, 14, 2], [False, True, True, False, False]), ([15, 16, 2], [False, False, False])]


def multi_turn_tree() -> Tree:
    tree = Tree("p", PROMPT, policy_version=0, tree_id="t0")
    shared = tree.add_child(0)
    tree.nodes[shared] = Node(shared, 0, list(SHARED[0]), [-0.5] * 7, [1.0] * 7, tool=list(SHARED[1]))
    for (tokens, tool), reward in zip(LEAVES, (1.0, 0.0)):
        leaf = tree.add_child(shared)
        tree.nodes[leaf] = Node(leaf, shared, list(tokens), [-0.7] * len(tokens), [1.0] * len(tokens), finish="eos",
                                reward=reward, tool=list(tool))
    return tree


def gradients(trainer, algo: str, items: list) -> tuple[torch.Tensor, list[bool]]:
    """d loss / d log p for every target the loss sees, and whether each target is a tool's token."""
    objective = ALGOS[algo].objective
    items, _ = objective.prepare(trainer, items)   # grpo/tree: the old log-probs (recomputed by default)
    captured = {}
    real = trainer.logprobs

    def spy(*args, **kwargs):
        captured["logp"] = real(*args, **kwargs).detach().requires_grad_(True)
        return captured["logp"]

    trainer.logprobs = spy
    seqs = [objective.sequence(x) for x in items]
    ids, attn, mask = pack_batch(seqs, trainer.tokenizer.pad_token_id)
    loss, _ = objective.loss(trainer, items, ids, attn, mask)
    loss.backward()
    trainer.logprobs = real
    tool = []
    tree = multi_turn_tree()
    flags = {tuple(tree.completion_ids(leaf)): tree.completion_roles(leaf) for leaf in tree.leaves()}
    for b, (p, c, *_) in enumerate(seqs):
        for t in mask[b].nonzero()[:, 0].tolist():   # position t predicts completion token t + 1 - len(p)
            tool.append(flags[tuple(c)][t + 1 - len(p)])
    return captured["logp"].grad, tool


@pytest.mark.parametrize("algo", ["grpo", "tree"])
def test_policy_gradient_gives_tool_tokens_no_weight_and_no_gradient(algo):
    trainer = Trainer(tiny_cfg(f"train.algo={algo}"))
    tree = multi_turn_tree()
    items, _ = ALGOS[algo].batch([tree], [], "once", max_trees=1)
    for item, leaf in zip(items, tree.leaves()):
        roles = tree.completion_roles(leaf)
        assert all(w == 0.0 for w, r in zip(item.weights, roles) if r)
        assert all(w > 0.0 for w, r in zip(item.weights, roles) if not r)
    grad, tool = gradients(trainer, algo, items)
    assert any(tool) and len(grad) == len(tool)
    assert all(g == 0.0 for g, t in zip(grad.tolist(), tool) if t)
    assert any(g != 0.0 for g, t in zip(grad.tolist(), tool) if not t)


def test_sft_on_verified_paths_never_targets_a_tool_token():
    trainer = Trainer(tiny_cfg("train.algo=sft"))
    tree = multi_turn_tree()
    items = [training_sequence(tree, leaf) for leaf in tree.leaves()]
    assert all(len(x) == 3 for x in items)   # both paths hold the shared tool output
    grad, tool = gradients(trainer, "sft", items)
    assert not any(tool) and (grad != 0).all()
    assert ALGOS["sft"].objective.weight(items[0]) == sum(not r for r in tree.completion_roles(tree.leaves()[0]))
    plain = Tree("q", PROMPT, 0)
    leaf = plain.add_child(0)
    plain.nodes[leaf].tokens, plain.nodes[leaf].finish = [9, 2], "eos"
    assert training_sequence(plain, leaf) == (PROMPT, [9, 2])   # single-turn paths stay pairs


def test_verified_tokens_count_what_was_generated_not_the_tool_outputs():
    tree = multi_turn_tree()
    assert verified_tokens(tree, tree.leaves()) == tree.generated_tokens() < tree.generated_tokens() + \
        tree.appended_tokens()


def test_warm_start_transcripts_train_only_the_policy_messages():
    trainer = Trainer(tiny_cfg("train.algo=sft"))
    prompt, ids, trained = encode_pair(trainer.tokenizer, "12*3=", [("policy", "<py>print(12*3)</py>"),
                                                                    ("tool", "<out>36</out>"), ("policy", " #### 36")])
    text = trainer.tokenizer.decode(ids[:-1])
    assert text == "<py>print(12*3)</py><out>36</out> #### 36" and ids[-1] == trainer.tokenizer.eos_token_id
    assert trainer.tokenizer.decode([i for i, t in zip(ids, trained) if not t]) == "<out>36</out>"
    ws = trainer.cfg.warm_start
    stats = trainer.sft([("12*3=", [("policy", "<py>print(12*3)</py>"), ("tool", "<out>36</out>"),
                                    ("policy", " #### 36")])] * 4, ws.epochs, ws.lr, ws.batch_size)
    assert stats.trained_tokens == 4 * ws.epochs * sum(trained)


def test_encode_pair_puts_a_bos_only_before_the_prompt():
    """A tokenizer that adds BOS (Llama-style): the completion is the continuation the engine samples after the
    prompt, so neither a text completion nor a transcript gets a BOS of its own."""
    from tokenizers import processors

    from branchrl.models import build_char_tokenizer

    tok = build_char_tokenizer()
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                                         special_tokens=[("<bos>", bos)])
    assert tok.encode("1+1=")[0] == bos
    for completion in (" #### 2", [("policy", "<py>print(1+1)</py>"), ("tool", "<out>2</out>"), ("policy", " #### 2")]):
        prompt, ids, *_ = encode_pair(tok, "1+1=", completion)
        assert prompt[0] == bos and bos not in ids and ids[-1] == tok.eos_token_id


def test_a_verified_transcript_row_has_its_role_spans_and_tool_calls():
    from branchrl.models import build_char_tokenizer
    from branchrl.records import Leaf

    tok = build_char_tokenizer()
    tree = Tree("p", tok.encode("12*3="), 0)
    node = tree.add_child(0)
    parts = [("<py>print(12*3)</py>", False), ("<out>36</out>", True), (" #### 36", False)]
    for text, tool in parts:
        ids = tok.encode(text)
        tree.nodes[node].tool = tree.nodes[node].tool_flags() + [tool] * len(ids)
        tree.nodes[node].tokens += ids
    tree.nodes[node].finish = "eos"
    ids = tree.completion_ids(node)
    leaf = Leaf(tree, node, ids, tok.decode(ids), {})
    spans = leaf.role_spans(tok.decode)
    assert [(s["role"], leaf.text[s["start"]:s["end"]]) for s in spans] == [("policy", "<py>print(12*3)</py>"),
                                                                            ("tool", "<out>36</out>"),
                                                                            ("policy", " #### 36")]
    assert leaf.tool_calls == 1
