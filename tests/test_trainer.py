"""Trainer, tiny models, char tokenizer, weight packing and the rollout worker's weight load, in-process (a lone
trainer is an FSDP2 world of one). Every precision path runs in float32 and bfloat16."""

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from branchrl.config import ConfigError, load_config
from branchrl.engine import PromptTooLong
from branchrl.models import CHARS, SPECIALS, build_char_tokenizer, count_flop_params, load_policy, load_tokenizer
from branchrl.rollout.worker import RolloutWorker
from branchrl.sync.weight_sync import pack_weights, state_checksum
from branchrl.training import parallel
from branchrl.training.losses import pack_batch, sft_loss
from branchrl.training.objectives import LIKELIHOOD
from branchrl.training.trainer import Trainer, encode_pair
from branchrl.tree import attended_positions

TINY = ["model.tiny.hidden_size=32", "model.tiny.layers=2", "model.tiny.heads=4", "model.tiny.kv_heads=2",
        "model.tiny.intermediate_size=64", "model.tiny.max_position=64", "train.threads=1",
        "rollout.threads_per_worker=1", "train.batch_size=4", "rollout.max_new_tokens=6"]
PAIRS = [("12+30=", "42"), ("7*6=", "42"), ("9-4=", "5"), ("3+3=", "6"), ("10/2=", "5"), ("8+1=", "9")]
DTYPES = ["float32", "bfloat16"]


def tiny_cfg(*extra):
    return load_config(None, TINY + list(extra))


def sequences(trainer):
    tok = trainer.tokenizer
    return [(tok.encode(p), tok.encode(s) + [tok.eos_token_id]) for p, s in PAIRS]


@torch.no_grad()
def loss_on(trainer, seqs) -> float:
    ids, attn, mask = pack_batch(seqs, trainer.tokenizer.pad_token_id)
    return sft_loss(trainer.logprobs(ids, attn, mask)).item()


def weights(trainer):
    """What the trainer publishes: the whole policy in the compute dtype."""
    return trainer.publish()[1]


def master(trainer) -> dict[str, torch.Tensor]:
    """The fp32 master weights, whole."""
    return parallel.full_state(trainer.model, torch.float32, keep=True)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def hf_copy(trainer):
    """A plain transformers model holding what the trainer publishes (the trainer's own model is sharded)."""
    w = weights(trainer)
    model = AutoModelForCausalLM.from_config(trainer.model.config, dtype=next(iter(w.state.values())).dtype)
    model.load_state_dict(w.state)
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """(trainer, weights before, master weights before, stats) after one train() on PAIRS; shared because
    building is the slow part."""
    trainer = Trainer(tiny_cfg())
    before, before_master = weights(trainer), master(trainer)
    stats = trainer.train(sequences(trainer))
    return trainer, before, before_master, stats


def test_train_step_changes_every_parameter_and_bumps_the_version(trained):
    trainer, before, before_master, stats = trained
    assert math.isfinite(stats.loss) and stats.loss > 0
    assert trainer.version == before.version + 1 == 1
    after = master(trainer)
    unchanged = [k for k, v in before_master.items() if torch.equal(v, after[k])]
    assert unchanged == []


def test_train_stats_count_tokens_context_and_the_state_one_rank_holds(trained):
    trainer, _, _, stats = trained
    seqs = sequences(trainer)
    lengths = [len(p) + len(c) for p, c in seqs]
    assert stats.sequences == len(seqs)
    assert stats.trained_tokens == sum(len(c) for _, c in seqs)
    assert stats.processed_tokens == sum(lengths)
    assert stats.context_sum == sum(map(attended_positions, lengths))
    assert stats.forward_tokens == stats.forward_context_sum == 0   # sft: no forward-only pass
    params = list(trainer.model.parameters())
    # fp32 parameter, gradient and two Adam moments per element, plus a float32 step count per tensor
    assert stats.state_bytes == 16 * sum(p.numel() for p in params) + 4 * len(params)


def test_weights_checksum_tracks_the_model(trained):
    trainer, before, _, _ = trained
    now = weights(trainer)
    assert now.version == 1 and now.checksum != before.checksum
    assert now.checksum == trainer.checksum() == state_checksum(master(trainer))
    assert state_checksum(before.state) == before.checksum  # a packed copy does not move with training
    assert now.nbytes == 4 * sum(p.numel() for p in trainer.model.parameters())


def test_rollout_worker_loads_exactly_what_the_trainer_published(trained):
    trainer, _, _, _ = trained
    cfg, info = trainer.cfg, trainer.describe()
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, rank=0)
    published = weights(trainer)
    assert worker.set_weights(published) == {"version": published.version, "checksum": published.checksum,
                                             "pid": os.getpid()}
    prompts = [("a", trainer.tokenizer.encode("12+30=")), ("b", trainer.tokenizer.encode("3+3="))]
    trees, seconds = worker.rollout(prompts, step=1, greedy=True)
    assert seconds >= 0 and [t.policy_version for t in trees] == [1, 1]
    model = hf_copy(trainer)
    with torch.no_grad():  # the worker decodes with the trainer's weights: same greedy text as HF generate
        for (_, ids), tree in zip(prompts, trees):
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=cfg.rollout.max_new_tokens)
            assert tree.completion_ids(tree.leaves()[0]) == out[0, len(ids):].tolist()


def test_rollout_worker_refuses_a_too_long_prompt_by_name_and_stays_usable(trained):
    trainer = trained[0]
    info = trainer.describe()
    worker = RolloutWorker(trainer.cfg, info.config, info.eos_id, info.pad_id, rank=0)
    worker.set_weights(weights(trainer))
    ok = ("ok", trainer.tokenizer.encode("1+1="))
    with pytest.raises(PromptTooLong, match=r"^prompt 'long' has 60 tokens; with max_new_tokens=6 that is 66, over "
                                            r"the engine's limit of 64 tokens per sequence$"):
        worker.rollout([ok, ("long", [5] * 60)], step=1)
    trees, _ = worker.rollout([ok], step=1, greedy=True)
    assert len(trees) == 1 and trees[0].leaves()


def test_rollout_worker_runs_an_unsupported_architecture_on_the_fallback_engine():
    config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    worker = RolloutWorker(tiny_cfg(), config.to_dict(), eos_id=2, pad_id=0, rank=0)
    weights = pack_weights(model, version=3)
    assert worker.set_weights(weights) == {"version": 3, "checksum": weights.checksum, "pid": os.getpid()}
    trees, _ = worker.rollout([("a", [5, 6, 7]), ("b", [8, 9])], step=1, greedy=True)
    with torch.no_grad():
        for ids, tree in zip([[5, 6, 7], [8, 9]], trees):
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=6)
            assert tree.completion_ids(tree.leaves()[0]) == out[0, len(ids):].tolist()


def test_rollout_worker_branches_within_the_configured_budget(trained):
    trainer = trained[0]
    cfg = tiny_cfg("branch.roots=2", "branch.max_leaves=3", "branch.entropy_threshold=0.0", "branch.min_prefix=1",
                   "branch.min_gap=1")
    info = trainer.describe()
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, rank=1)
    worker.set_weights(weights(trainer))
    trees, _ = worker.rollout([("a", trainer.tokenizer.encode("1+1="))], step=1)
    assert len(trees[0].leaves()) == 3 and trees[0].forks() == 1


def test_rollout_worker_samples_with_the_configured_truncation_and_row_cap(trained):
    trainer = trained[0]
    cfg = tiny_cfg("rollout.top_k=1", "rollout.max_rows=3", "branch.roots=2", "branch.max_leaves=3",
                   "branch.entropy_threshold=0.0", "branch.min_prefix=1", "branch.min_gap=1")
    info = trainer.describe()
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, rank=1)
    worker.set_weights(weights(trainer))
    batches, step = [], worker.engine.step
    worker.engine.step = lambda tokens: (batches.append(len(tokens)), step(tokens))[1]
    prompts = [(p, trainer.tokenizer.encode(p)) for p in ("1+1=", "2+3=", "4*2=")]
    trees, _ = worker.rollout(prompts, step=1)
    greedy, _ = worker.rollout(prompts, step=2, greedy=True)
    assert batches and max(batches) <= 3
    for tree, chain in zip(trees, greedy):   # top_k=1: each token had probability 1, so no fork and no choice
        assert tree.forks() == 0 and len(tree.leaves()) == 2
        assert {tuple(tree.completion_ids(leaf)) for leaf in tree.leaves()} == {tuple(chain.completion_ids(1))}


def test_bfloat16_weights_reach_the_worker_unchanged():
    trainer = Trainer(tiny_cfg("model.dtype=bfloat16"))
    info = trainer.describe()
    worker = RolloutWorker(trainer.cfg, info.config, info.eos_id, info.pad_id, rank=0)
    published = weights(trainer)
    assert {t.dtype for t in published.state.values()} == {torch.bfloat16}
    assert worker.set_weights(published)["checksum"] == published.checksum


def test_bfloat16_compute_keeps_float32_master_weights_and_optimizer_state_that_small_updates_move():
    """The update that bf16 parameters would round away (lr 1e-5 on weights ~0.02, below bf16's resolution):
    the fp32 master weights take it; the published bf16 weights are the master rounded."""
    trainer = Trainer(tiny_cfg("model.dtype=bfloat16", "train.lr=0.00001"))
    before = master(trainer)
    stats = trainer.train(sequences(trainer))
    after = master(trainer)
    assert math.isfinite(stats.loss)
    assert {t.dtype for t in after.values()} == {torch.float32}
    trained = {k: v for k, v in before.items() if "embed" not in k}   # rows of unused tokens get no gradient
    moved = sum(int((after[k] != v).sum()) for k, v in trained.items()) / sum(v.numel() for v in trained.values())
    assert moved > 0.99
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if v.numel() > 1]
    assert state and {local(v).dtype for v in state} == {torch.float32}
    published = weights(trainer).state
    assert all(torch.equal(published[k], v.to(torch.bfloat16)) for k, v in after.items())
    bf16 = {k: v.to(torch.bfloat16) for k, v in before.items()}
    rounded = sum(int((published[k] != v).sum()) for k, v in bf16.items())
    assert rounded < 0.5 * sum(v.numel() for v in bf16.values())   # what a bf16 copy alone would have kept


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_checkpointing_recomputes_each_block_and_takes_the_same_step(dtype):
    cfg = ["train.grad_clip=1000", f"model.dtype={dtype}"]
    plain, checkpointed = Trainer(tiny_cfg(*cfg)), Trainer(tiny_cfg(*cfg, "train.activation_checkpointing=true"))
    calls = []
    parallel.decoder_blocks(checkpointed.model)[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    a, b = plain.train(sequences(plain)), checkpointed.train(sequences(checkpointed))
    steps = -(-len(PAIRS) // plain.cfg.train.batch_size)
    assert len(calls) == 2 * steps   # forward, and again in backward
    assert (a.checkpoint_tokens, a.checkpoint_context_sum) == (0, 0)   # the ledger counts the recompute apart
    assert (b.checkpoint_tokens, b.checkpoint_context_sum) == (b.processed_tokens, b.context_sum)
    assert math.isfinite(b.loss) and b.loss == a.loss
    for (k, p), q in zip(plain.model.named_parameters(), checkpointed.model.parameters()):
        torch.testing.assert_close(local(q.grad), local(p.grad), msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sft_lowers_the_loss_on_its_data_and_restores_the_rl_lr(dtype):
    trainer = Trainer(tiny_cfg("train.lr=0.0005", f"model.dtype={dtype}"))
    seqs = sequences(trainer)
    before = loss_on(trainer, seqs)
    stats = trainer.sft(PAIRS, epochs=15, lr=0.01, batch_size=3)
    assert math.isfinite(stats.loss)
    assert loss_on(trainer, seqs) < 0.5 * before
    assert trainer.version == 0  # an SFT is not an RL update
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0005]


def schedule(lr: float, total: int) -> list[float]:
    """The SFT learning rate of each optimizer step, as specified: linear warm-up over the first 5% of all steps,
    then cosine decay to 10% of lr."""
    warmup = max(1, int(total * 0.05))
    return [lr * (min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 + math.cos(math.pi * i / total)) / 2))
            for i in range(total)]


def one_pass(trainer, epochs: int, lr: float, batch_size: int) -> tuple[float, int]:
    """The SFT as one uninterrupted loop (what Trainer.sft was before the driver ran it epoch by epoch), with the
    specified schedule: every epoch shuffles with the trainer's rng, one optimizer step per batch_size pairs.
    Returns the mean loss over the steps and the trained tokens."""
    seqs = [encode_pair(trainer.tokenizer, p, c) for p, c in PAIRS]
    rates = iter(schedule(lr, epochs * -(-len(seqs) // batch_size)))
    losses, tokens = [], 0
    for _ in range(epochs):
        order = list(range(len(seqs)))
        trainer.rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            trainer._set_lr(next(rates))
            step = trainer._step([seqs[i] for i in order[s:s + batch_size]], LIKELIHOOD)
            losses.append(step["loss"])
            tokens += step["trained_tokens"]
    return sum(losses) / len(losses), tokens


@pytest.mark.parametrize("dtype", DTYPES)
def test_sft_epoch_by_epoch_takes_the_steps_and_learning_rates_of_one_pass(dtype):
    """Trainer.sft_start, one sft_epoch per epoch, sft_finish (what the driver runs, reporting between epochs) on one
    trainer; the one-pass loop above on another of the same seed: the same learning rate at every step, the same
    final weights, loss and tokens; the epochs' stats add up to the totals."""
    epochs, lr, batch_size = 12, 0.01, 4   # 2 steps per epoch (4 + 2 pairs), 24 in all: a warm-up of 1 step
    a, b = (Trainer(tiny_cfg("train.lr=0.0005", f"model.dtype={dtype}")) for _ in range(2))
    seen = []
    a.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    assert a.sft_start(PAIRS, epochs, lr, batch_size) == 2
    per_epoch = [a.sft_epoch() for _ in range(epochs)]
    total = a.sft_finish()
    assert seen == pytest.approx(schedule(lr, 2 * epochs), rel=1e-12)   # continuous over the epochs, never restarted
    loss, tokens = one_pass(b, epochs, lr, batch_size)
    for (k, x), y in zip(master(a).items(), master(b).values()):
        assert torch.equal(x, y), k
    assert (total.loss, total.trained_tokens, total.sequences) == (loss, tokens, len(PAIRS))
    assert sum(e.trained_tokens for e in per_epoch) == tokens and total.loss == pytest.approx(
        sum(e.loss for e in per_epoch) / epochs)
    assert a.optimizer.param_groups[0]["lr"] == 0.0005 and a.rng.getstate() == b.rng.getstate()


def test_an_sft_stopped_early_ends_cleanly_and_refuses_misuse():
    trainer = Trainer(tiny_cfg("train.lr=0.0005"))
    with pytest.raises(RuntimeError, match="no SFT in progress; call sft_start"):
        trainer.sft_epoch()
    trainer.sft_start(PAIRS, 5, 0.01, 3)
    with pytest.raises(RuntimeError, match="an SFT is in progress"):
        trainer.sft_start(PAIRS, 5, 0.01, 3)
    first = trainer.sft_epoch()
    stopped = trainer.sft_finish()   # after 1 of 5 epochs, as the driver does after a stop signal
    assert stopped.trained_tokens == first.trained_tokens and stopped.loss == first.loss
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0005
    trainer.sft_start(PAIRS, 1, 0.01, 3)
    trainer.sft_epoch()
    with pytest.raises(RuntimeError, match="all 1 epochs are done; call sft_finish"):
        trainer.sft_epoch()


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_writes_an_hf_dir_in_the_compute_dtype_that_transformers_loads_identically(dtype, tmp_path):
    trainer = Trainer(tiny_cfg(f"model.dtype={dtype}"))
    trainer.train(sequences(trainer))
    path = trainer.save(str(tmp_path / "ckpt"))
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["dtype"] == dtype
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.dtype == getattr(torch, dtype)
    text = "Q: 12*(3+4)=?\nA: 84 " + CHARS
    ids = trainer.tokenizer.encode(text)
    assert tokenizer.encode(text) == ids
    assert tokenizer.decode(ids) == text
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (trainer.tokenizer.pad_token_id,
                                                                trainer.tokenizer.eos_token_id)
    with torch.no_grad():
        x = torch.tensor([ids[:40]])
        assert torch.equal(model.eval()(x).logits, hf_copy(trainer)(x).logits)
    loaded, loaded_tok = load_policy(load_config(None, [f"model.path={path}", f"model.dtype={dtype}"]).model, seed=0)
    assert state_checksum(loaded.state_dict()) == weights(trainer).checksum
    assert loaded_tok.encode(text) == ids


def test_checkpoint_tokenizer_without_pad_gets_eos_as_pad(tmp_path):
    tok = build_char_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(load_config(None, [f"model.path={tmp_path}"]).model)
    assert loaded.pad_token_id == loaded.eos_token_id == tok.eos_token_id


def test_char_tokenizer_one_token_per_character():
    tok = build_char_tokenizer()
    assert len(tok) == len(SPECIALS) + len(CHARS) == 100
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    ids = tok.encode(CHARS)
    assert len(ids) == len(CHARS) and len(set(ids)) == len(CHARS) and min(ids) == len(SPECIALS)
    assert tok.decode(ids) == CHARS
    assert tok.encode("a\u00e9b") == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.convert_tokens_to_ids("b")]
    assert tok.decode(tok.encode("7") + [tok.eos_token_id], skip_special_tokens=True) == "7"


@pytest.mark.parametrize("tied", [False, True])
def test_count_flop_params_by_hand(tied):
    # hidden 32, 4 heads of 8, 2 kv heads, MLP 64, 2 layers, vocab 100
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32   # q, k+v, o, mlp, 2 norms
    expected = 2 * per_layer + 32 + 100 * 32                                   # + final norm + lm head
    assert count_flop_params(model) == expected == 21792


def test_tiny_model_follows_the_config():
    cfg = tiny_cfg("model.tiny.arch=qwen2", "run.seed=3")
    model, tok = load_policy(cfg.model, seed=3)
    again, _ = load_policy(cfg.model, seed=3)
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.vocab_size) == \
           ("qwen2", 32, 2, 2, len(tok))
    assert (c.eos_token_id, c.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert state_checksum(model.state_dict()) == state_checksum(again.state_dict())  # seeded


def test_state_checksum_sees_every_difference():
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor(3)}
    base = state_checksum(state)
    assert state_checksum({k: v.clone() for k, v in state.items()}) == base
    assert state_checksum({"b": state["b"], "a": state["a"]}) == base               # order-free
    assert state_checksum(state | {"a": state["a"].T.contiguous().T}) == base       # layout-free
    variants = [state | {"a": state["a"].view(3, 2)}, state | {"a": state["a"].double()},
                {"c": state["a"], "b": state["b"]}, state | {"b": torch.tensor(4)},
                state | {"a": state["a"] + torch.tensor([[0, 0, 1e-6], [0, 0, 0]])}]
    assert len({base, *map(state_checksum, variants)}) == 1 + len(variants)


def test_pack_weights_is_a_detached_cpu_copy():
    model = torch.nn.Linear(3, 2)
    packed = pack_weights(model, version=5)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert packed.version == 5 and packed.checksum == state_checksum(packed.state)
    assert packed.checksum != state_checksum(model.state_dict())
    assert not any(t.requires_grad for t in packed.state.values())
    assert packed.nbytes == 4 * (6 + 2)


def sampled_batch(trainer, algo: str):
    """The leaves of one tree the rollout worker samples with the trainer's weights, the first one rewarded, as the
    driver builds a policy-gradient batch; and the rewarded and the last leaf as (prompt, completion) pairs."""
    from branchrl.training.algos import ALGOS

    cfg, info = trainer.cfg, trainer.describe()
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, rank=0)
    worker.set_weights(weights(trainer))
    trees, _ = worker.rollout([("a", trainer.tokenizer.encode("1+1="))], step=1)
    tree, leaves = trees[0], trees[0].leaves()
    for i, leaf in enumerate(leaves):
        tree.nodes[leaf].reward = 1.0 if i == 0 else 0.0
    batch, dropped = ALGOS[algo].batch(trees, [], "once", max_trees=1)
    assert dropped == 0 and len(batch) == len(leaves) == 4
    return batch, [(tree.prompt_ids, tree.completion_ids(leaf)) for leaf in (leaves[0], leaves[-1])]


PG = ["branch.roots=2", "branch.max_leaves=4", "branch.entropy_threshold=0.0", "branch.min_prefix=1",
      "branch.min_gap=1", "train.lr=0.01", "rollout.max_new_tokens=5"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo", ["grpo", "tree"])
def test_policy_gradient_update_moves_logprobs_toward_rewarded_leaves(algo, dtype):
    """One update on a tree the worker sampled: finite loss, changed parameters, and the rewarded leaf's
    log-likelihood goes up while the penalised one goes down; the recompute pass is counted and measured."""
    trainer = Trainer(tiny_cfg(f"train.algo={algo}", f"model.dtype={dtype}", *PG))
    batch, seqs = sampled_batch(trainer, algo)
    before, old = [-loss_on(trainer, [s]) for s in seqs], master(trainer)
    stats = trainer.train(batch)
    assert math.isfinite(stats.loss) and stats.clip_fraction is not None and trainer.version == 1
    new = master(trainer)
    assert all(not torch.equal(v, new[k]) for k, v in old.items() if "embed" not in k)
    after = [-loss_on(trainer, [s]) for s in seqs]
    assert after[0] > before[0] and after[1] < before[1]
    assert stats.forward_tokens == stats.processed_tokens and stats.forward_context_sum == stats.context_sum
    limit = 1e-4 if dtype == "float32" else 0.2   # engine and trainer agree in fp32; bf16 kernels differ
    assert 0 <= stats.mismatch <= stats.mismatch_max < limit and stats.tis_clipped == 0.0


def test_recompute_gives_the_trainers_own_old_logprobs_and_truncated_importance_weights():
    """With rollout log-probs 3x too small (a badly mismatched engine) and advantage +1 on every token:
    recompute keeps the PPO ratio at 1 against the trainer's own policy and weighs every token by the capped
    importance weight (loss -tis_cap); with old_logprobs=rollout the ratio is 3 against the engine's numbers,
    clipped at 1 + clip_high."""
    import dataclasses

    def run(*extra):
        trainer = Trainer(tiny_cfg("train.algo=grpo", "train.grad_clip=1000", *PG, *extra))
        batch, _ = sampled_batch(trainer, "grpo")
        shifted = [dataclasses.replace(x, old_logprobs=[v - math.log(3) for v in x.old_logprobs],
                                       advantages=[1.0] * len(x.advantages)) for x in batch]
        return trainer.train(shifted)

    recompute, rollout, capped = run(), run("train.old_logprobs=rollout"), run("train.tis_cap=2.5")
    assert recompute.tis_clipped == 1.0 and recompute.mismatch == pytest.approx(math.log(3), abs=1e-4)
    assert recompute.clip_fraction == 0.0 and recompute.loss == pytest.approx(-2.0, rel=1e-5)
    assert capped.loss == pytest.approx(-2.5, rel=1e-5)
    assert rollout.tis_clipped is None and rollout.mismatch is None and rollout.forward_tokens == 0
    assert rollout.clip_fraction == 1.0 and rollout.loss == pytest.approx(-1.28, rel=1e-5)


def test_kl_term_pulls_towards_a_frozen_copy_of_the_weights_before_the_first_update():
    trainer = Trainer(tiny_cfg("train.algo=grpo", "train.kl_coef=0.5"))
    seqs = sequences(trainer)
    ids, attn, mask = pack_batch(seqs, trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        start = trainer.logprobs(ids, attn, mask, 1.0)
    stats = trainer.train(pg_samples(trainer))
    ref = trainer.reference
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    assert stats.kl > 0 and stats.forward_tokens == stats.reference_tokens == stats.processed_tokens  # two passes
    torch.testing.assert_close(trainer.reference_logprobs(ids, attn, mask, 1.0), start)
    trainer.train(pg_samples(trainer))
    assert trainer.reference is ref


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_trainer_started_from_a_saved_checkpoint_continues_exactly(dtype, tmp_path):
    """The checkpoint's sharded fp32 master weights and Adam moments, not its model.dtype HF weights, are what a
    trainer started from it holds: the next steps are the ones the first trainer takes."""
    first = Trainer(tiny_cfg(f"model.dtype={dtype}"))
    first.train(sequences(first))
    first.save(str(tmp_path / "ckpt"))
    second = Trainer(tiny_cfg(f"model.path={tmp_path / 'ckpt'}", "train.lr=0.0005", f"model.dtype={dtype}"))
    assert all(torch.equal(v, master(second)[k]) for k, v in master(first).items())
    a, b = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for k in a["state"]:
        assert torch.equal(local(a["state"][k]["exp_avg_sq"]), local(b["state"][k]["exp_avg_sq"]))
    assert {g["lr"] for g in second.optimizer.param_groups} == {0.0005}
    assert second.resume(str(tmp_path / "ckpt")) == first.version == 1 and second.rng.getstate() == first.rng.getstate()
    first._set_lr(0.0005)
    seqs = sequences(first)
    first.train(seqs), second.train(seqs)
    assert all(torch.equal(v, master(second)[k]) for k, v in master(first).items())


def pg_samples(trainer):
    """PGSamples on PAIRS with uneven advantages and token weights; old log-probs near a fresh model's (1/100)."""
    from branchrl.training.advantages import PGSample

    return [PGSample(p, c, advantages=[(-1.0) ** i * (1 + i / 4)] * len(c), weights=[1.0 / (1 + i % 3)] * len(c),
                     old_logprobs=[-4.6] * len(c)) for i, (p, c) in enumerate(sequences(trainer))]


@pytest.mark.parametrize("algo", ["sft", "grpo"])
def test_gradient_accumulation_takes_the_same_step_as_the_whole_minibatch(algo):
    """One minibatch of 6 in micro-batches of 4 and 2 against all 6 at once: the same gradient and update.
    grad_clip never clips here, so a wrongly weighted micro-batch cannot hide behind it."""
    cfg = ["train.batch_size=6", "train.kl_coef=0.1", "train.grad_clip=1000", f"train.algo={algo}"]
    whole, accumulated = Trainer(tiny_cfg(*cfg)), Trainer(tiny_cfg(*cfg, "train.micro_batch_size=4"))
    batch = pg_samples(whole) if algo == "grpo" else sequences(whole)
    before = master(whole)
    expected, got = whole.train(batch), accumulated.train(batch)
    assert math.isfinite(got.loss) and got.loss == pytest.approx(expected.loss, rel=1e-5, abs=1e-7)
    fields = ("trained_tokens", "processed_tokens", "context_sum", "forward_tokens", "sequences")
    assert [getattr(got, k) for k in fields] == [getattr(expected, k) for k in fields]
    after = master(accumulated)
    assert all(not torch.equal(v, after[k]) for k, v in before.items() if "embed" not in k)
    for (k, p), q in zip(whole.model.named_parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(local(q.grad), local(p.grad))
    for k, v in master(whole).items():
        torch.testing.assert_close(after[k], v)


def test_float16_and_unknown_sharding_are_refused_with_what_to_change():
    with pytest.raises(ConfigError, match=r"model.dtype=float16 would train without loss scaling.*use bfloat16"):
        load_config(None, ["model.dtype=float16"])
    with pytest.raises(ConfigError, match=r"train\.sharding: Input should be 'fsdp' or 'ddp' \(got 'zero3'\)"):
        load_config(None, ["train.sharding=zero3"])
    with pytest.raises(ConfigError, match=r"train\.old_logprobs: Input should be 'rollout' or 'recompute'"):
        load_config(None, ["train.old_logprobs=engine"])
    with pytest.raises(ConfigError, match=r"train\.tis_cap: .*greater than or equal to 0"):
        load_config(None, ["train.tis_cap=-1"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
def test_a_trainer_on_cuda_trains_in_bfloat16_over_nccl_and_publishes_cpu_weights(sharding):
    """The GPU twin of the CPU tests above (run alone, as bench/gpu_check.sh does: a process holds one group)."""
    trainer = Trainer(tiny_cfg("train.gpus=1", "model.dtype=bfloat16", f"train.sharding={sharding}",
                               "train.activation_checkpointing=true"))
    assert "nccl" in torch.distributed.get_backend_config() and trainer.device.type == "cuda"
    before = master(trainer)
    stats = trainer.train(sequences(trainer))
    after = master(trainer)
    assert math.isfinite(stats.loss)
    assert all(not torch.equal(v, after[k]) for k, v in before.items() if "embed" not in k)
    published = weights(trainer)
    assert {(t.device.type, t.dtype) for t in published.state.values()} == {("cpu", torch.bfloat16)}


def test_train_stats_report_the_gradient_norm_before_clipping_and_the_learning_rate(trained):
    trainer, _, _, stats = trained
    assert stats.lr == trainer.cfg.train.lr
    assert math.isfinite(stats.grad_norm) and stats.grad_norm > 0
    clipped = Trainer(tiny_cfg("train.grad_clip=0.001"))
    small = clipped.train(sequences(clipped))
    assert small.grad_norm > 0.001   # the norm the clip saw, not the clipped one
