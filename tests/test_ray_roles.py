"""The roles on real Ray actors: placement groups, versioned weight sync, failing fast on missing resources,
and the training group as one data-parallel job of two trainers."""

import contextlib
import math
import os
import shutil
import time

import pytest
import torch

from branchrl.config import load_config
from branchrl.launch import LaunchError, launch
from branchrl.loop import sync
from branchrl.models import load_tokenizer
from branchrl.training import parallel
from branchrl.training.algos import ALGOS
from branchrl.training.group import TrainerGroup
from branchrl.training.trainer import Trainer
from branchrl.verifier_pool import VerifierWorker
from branchrl.verifiers import warm_sandbox
from branchrl.verifiers.math_answer import pool as math_pool

# grad_clip high enough never to clip: clipping (like Adam) hides a wrongly scaled gradient, which the
# gradients compared below must show
TINY = ["model.tiny.hidden_size=32", "model.tiny.layers=2", "model.tiny.heads=2", "model.tiny.kv_heads=2",
        "model.tiny.intermediate_size=64", "rollout.workers=2", "train.threads=1", "train.batch_size=3",
        "train.grad_clip=1000"]
# two trainers of 0.5 CPU: with 2 rollout workers and a verifier the roles reserve 3.5 of the session's 4 CPUs.
# batch_size 3 over 2 ranks with micro-batches of 1: no_sync accumulation, and a rank with an empty slice when a
# minibatch holds one sequence
GROUP = [*TINY, "train.workers=2", "train.cpus=0.5", "train.micro_batch_size=1", "warm_start.batch_size=4",
         "warm_start.epochs=2"]
PAIRS = [("12+30=", "42"), ("7*6=", "42"), ("9-4=", "5"), ("3+3=", "6"), ("10/2=", "5")]
FORKING = ["branch.roots=2", "branch.max_leaves=4", "branch.entropy_threshold=0.0", "branch.min_prefix=1",
           "branch.min_gap=1", "rollout.max_new_tokens=5"]


@pytest.fixture(scope="module")
def roles(ray_cluster):
    roles = launch(load_config(None, GROUP))
    yield roles
    roles.shutdown()


def _placement(actor):
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id()))


def test_rollout_workers_and_trainer_sit_in_separate_placement_groups(roles):
    training, inference = (g.id.hex() for g in roles.groups)
    assert training != inference
    assert [_placement(t) for t in roles.trainer.actors] == [training, training]
    assert [_placement(w) for w in roles.rollout] == [inference, inference]


def test_weights_reach_every_rollout_worker_with_the_trainers_checksum_and_next_version(ray_cluster, roles):
    ray = ray_cluster
    version, _ = sync(roles)
    before = roles.trainer.publish()
    states = ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])
    assert states == [(version, before.checksum)] * 2

    _set_algo(roles.trainer, "sft")
    update = roles.trainer.train([([5, 6, 7], [8, 9, 2]), ([5, 7], [9, 9, 9, 2])])
    assert update.trained_tokens > 0
    new_version, _ = sync(roles)
    after = roles.trainer.publish()
    assert new_version == version + 1 == after.version
    assert after.checksum != before.checksum  # training changed the weights
    states = ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])
    assert states == [(version + 1, after.checksum)] * 2


def _set_algo(group, algo: str) -> None:
    """The objective is read from each trainer's config at every update; switching it saves launching new groups."""
    import ray

    ray.get([a.__ray_call__.remote(lambda self: setattr(self.cfg.train, "algo", algo)) for a in group.actors])


def _batch(roles, algo: str, step: int) -> list:
    """sft: PAIRS as token ids. grpo/tree: the leaves of two trees a rollout worker samples with the current
    policy, the first leaf of each rewarded, as the driver builds them (Algo.batch)."""
    import ray

    cfg = load_config(None, [*GROUP, *FORKING])
    tok = load_tokenizer(cfg.model)
    if not ALGOS[algo].policy_gradient:
        return [(tok.encode(p), tok.encode(s) + [tok.eos_token_id]) for p, s in PAIRS]
    prompts = [(p, tok.encode(p)) for p, _ in PAIRS[:2]]
    trees, _ = ray.get(roles.rollout[0].rollout.remote(prompts, step))
    for tree in trees:
        for i, leaf in enumerate(tree.leaves()):
            tree.nodes[leaf].reward = float(i == 0)
    batch, dropped = ALGOS[algo].batch(trees, [], "once", max_trees=2)
    assert dropped == 0 and len(batch) >= 4
    return batch


def _held(roles) -> list[tuple[int, str]]:
    import ray

    return ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])


def _on_every_rank(group, fn) -> list:
    """fn(trainer) on every rank at once (the trainers' gathers are collectives); each rank's result."""
    import ray

    return ray.get([a.__ray_call__.remote(fn) for a in group.actors])


def _master(group) -> dict[str, torch.Tensor]:
    """The group's fp32 master weights, gathered whole from the shards."""
    return _on_every_rank(group, lambda self: parallel.full_state(self.model, torch.float32, keep=True))[0]


def test_two_fsdp_trainers_learn_through_warm_start_and_every_objective(ray_cluster, roles):
    """With a KL term, so the frozen reference is built from the shards too."""
    group = roles.trainer
    cfg = load_config(None, GROUP)
    ws = cfg.warm_start
    assert group.sft_start(PAIRS, ws.epochs, ws.lr, ws.batch_size) == 2   # optimizer steps per epoch
    epochs = [group.sft_epoch() for _ in range(ws.epochs)]   # every rank, epoch by epoch
    stats = group.sft_finish()
    assert math.isfinite(stats.loss) and stats.sequences == len(PAIRS) and len(set(group.checksums())) == 1
    assert stats.trained_tokens == sum(e.trained_tokens for e in epochs) > 0
    assert stats.loss == pytest.approx(sum(e.loss for e in epochs) / ws.epochs)
    assert _on_every_rank(group, lambda self: self.optimizer.param_groups[0]["lr"]) == [cfg.train.lr] * 2
    _on_every_rank(group, lambda self: setattr(self.cfg.train, "kl_coef", 0.1))
    for algo in ("sft", "grpo", "tree"):
        _set_algo(group, algo)
        for step in range(1, 3):
            version, _ = sync(roles)  # the rollout workers sample with the policy the trainers hold
            before = roles.published.checksum
            assert _held(roles) == [(version, before)] * 2
            update = group.train(_batch(roles, algo, step))
            assert math.isfinite(update.loss) and update.trained_tokens > 0
            assert len(set(group.checksums())) == 1 and group.checksums()[0] != before, (algo, step)
            assert algo == "sft" or update.kl > 0 or (algo, step) == ("grpo", 1)   # the reference is the start
    _on_every_rank(group, lambda self: setattr(self.cfg.train, "kl_coef", 0.0))
    version, _ = sync(roles)
    assert _held(roles) == [(version, group.checksums()[0])] * 2 == [(version, roles.published.checksum)] * 2


@pytest.mark.parametrize("algo", ["sft", "grpo", "tree"])
def test_two_fsdp_trainers_take_the_step_one_trainer_takes_on_the_same_batch(ray_cluster, roles, tmp_path, algo):
    """The group (2 ranks, micro-batches of 1) saves a sharded checkpoint; a lone in-process trainer (no
    accumulation) resumes it, resharded to one rank (weights, Adam moments, shuffle state); both train on one
    batch: the same gradients and update up to float reduction order, and each rank holds about half the state.
    (The last minibatch of 2 or 1 sequences gives each rank one, or rank 1 none.)"""
    group = roles.trainer
    _set_algo(group, algo)
    sync(roles)
    batch = _batch(roles, algo, step=7)
    group.save(str(tmp_path / "ckpt"))
    lone = Trainer(load_config(None, [*TINY, f"train.algo={algo}"]))
    assert lone.resume(str(tmp_path / "ckpt")) == roles.published.version
    start = _master(group)
    assert all(torch.equal(v, parallel.full_state(lone.model, torch.float32, True)[k]) for k, v in start.items())
    expected, got = lone.train(batch), group.train(batch)
    fields = ("trained_tokens", "processed_tokens", "context_sum", "forward_tokens", "forward_context_sum", "sequences")
    assert [getattr(got, k) for k in fields] == [getattr(expected, k) for k in fields]
    assert got.loss == pytest.approx(expected.loss, rel=1e-5, abs=1e-7)
    assert got.state_bytes <= 0.55 * expected.state_bytes
    state = _master(group)
    assert all(not torch.equal(v, state[k]) for k, v in start.items())
    for k, v in parallel.full_state(lone.model, torch.float32, True).items():
        torch.testing.assert_close(state[k], v)
    grads = _grads(group)
    for k, p in lone.model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad.to_local())
    version, _ = sync(roles)
    assert _held(roles) == [(version, roles.published.checksum)] * 2


@contextlib.contextmanager
def _bare_group_and_lone(ray, tmp_path, *extra):
    """Two trainers without a rollout group (a sliver of CPU each: the module's roles hold 3.5 of the session's 4)
    train PAIRS once and save; a lone in-process trainer resumes that checkpoint; then both train PAIRS again.
    Yields (group, lone, the group's stats, the lone trainer's)."""
    cfg = load_config(None, [*GROUP, *extra])
    group = TrainerGroup([ray.remote(Trainer).options(num_cpus=0.1).remote(cfg) for _ in range(2)])
    try:
        group.connect()
        tok = load_tokenizer(cfg.model)
        batch = [(tok.encode(p), tok.encode(s) + [tok.eos_token_id]) for p, s in PAIRS]
        group.train(batch)
        group.save(str(tmp_path / "ckpt"))
        lone = Trainer(load_config(None, [*TINY, *extra]))
        lone.resume(str(tmp_path / "ckpt"))
        expected = lone.train(batch)
        yield group, lone, group.train(batch), expected
    finally:
        for actor in group.actors:
            ray.kill(actor)


def _grads(group) -> dict[str, torch.Tensor]:
    """The last step's reduced gradients, gathered whole."""
    return _on_every_rank(group, lambda self: {k: p.grad.full_tensor() for k, p in self.model.named_parameters()})[0]


def test_two_ddp_trainers_hold_identical_replicas_and_take_the_lone_trainers_step(ray_cluster, tmp_path):
    """train.sharding=ddp: the same machinery replicated. Each rank's own replica stays bitwise equal to the
    other's, the step equals a lone trainer's, and each rank holds all the state."""
    with _bare_group_and_lone(ray_cluster, tmp_path, "train.sharding=ddp") as (group, lone, got, expected):
        sums = group.checksums()   # under ddp, each rank hashes its own replica
        assert sums[0] == sums[1] and got.loss == pytest.approx(expected.loss, rel=1e-5)
        for k, v in parallel.full_state(lone.model, torch.float32, True).items():
            torch.testing.assert_close(_master(group)[k], v)
        assert got.state_bytes == expected.state_bytes


def test_two_bfloat16_fsdp_trainers_compute_the_lone_trainers_gradient_to_bf16_precision(ray_cluster, tmp_path):
    """bf16 compute on differently packed micro-batches: the reduced gradient of 2 ranks is a lone trainer's up to
    bf16 rounding (about 0.5% here); a wrongly scaled share would be off by 50-100%."""
    with _bare_group_and_lone(ray_cluster, tmp_path, "model.dtype=bfloat16") as (group, lone, got, expected):
        assert math.isfinite(got.loss) and got.loss == pytest.approx(expected.loss, rel=1e-3)
        grads = _grads(group)
        for k, p in lone.model.named_parameters():
            mine = p.grad.to_local()
            assert (grads[k] - mine).norm() <= 0.03 * mine.norm(), k


def test_a_group_the_cluster_cannot_hold_fails_at_once_naming_what_is_missing(ray_cluster):
    with pytest.raises(LaunchError, match=r"training group needs .*GPU"):
        launch(load_config(None, [*TINY, "train.gpus=1"]))
    with pytest.raises(LaunchError, match=r"inference group needs \{'CPU': 64"):
        launch(load_config(None, [*TINY, "rollout.workers=64"]))


def test_verify_settings_reach_every_verifier_actor(ray_cluster):
    ray = ray_cluster
    cfg = load_config(None, [*TINY, "verify.settings={math: {workers: 3}}"])
    actor = ray.remote(VerifierWorker).remote(cfg.verify.settings)
    record = {"verifier": "math", "completion": "\\boxed{1/2}", "answer": "0.5"}
    results, _ = ray.get(actor.verify_batch.remote([record]))
    assert results[0].verdict == "pass"
    assert ray.get(actor.__ray_call__.remote(lambda self: math_pool.POOL.size)) == 3   # the actor's own pool
    ray.kill(actor)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_verifier_actors_warm_sandboxes_die_with_the_actor(ray_cluster):
    ray = ray_cluster
    actor = ray.remote(VerifierWorker).remote()
    record = {"verifier": "python_tests", "completion": "def f(x):\n    return x + 1\n", "tests": "assert f(1) == 2"}
    results, _ = ray.get(actor.verify_batch.remote([record, record]))
    assert [r.verdict for r in results] == ["pass", "pass"]
    # the module goes by reference, so this reads the actor's own pool
    pids = ray.get(actor.__ray_call__.remote(lambda self: [box.proc.pid for box in warm_sandbox.SANDBOXES.sandboxes()]))
    assert len(pids) == 1 and os.path.exists(f"/proc/{pids[0]}")
    ray.kill(actor)  # SIGKILL: no atexit runs, bwrap's --die-with-parent has to do it
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pids[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pids[0]}"), "the actor's warm sandbox outlived it"
