"""Weight sync over a broadcast group (rollout.weight_sync): the config field, the flat per-dtype buckets,
the group's collectives in threads (no Ray), and the collective path on real Ray actors with one and two
trainers: syncs after training, a rollout worker SIGKILLed between syncs, a broadcast that fails."""

import logging
import os
import signal
import socket
import threading

import pytest
import torch
from test_ray_roles import GROUP, PAIRS, TINY

from branchrl.config import ConfigError, load_config, weight_sync_backend
from branchrl.launch import launch
from branchrl.loop import sync
from branchrl.models import load_tokenizer
from branchrl.sync.weight_sync import BroadcastGroup, SyncFailed, buckets, layout, state_checksum

COLLECTIVE = ["rollout.weight_sync=collective", "rollout.weight_sync_timeout_s=60"]


@pytest.mark.parametrize("mode, train_gpus, worker_gpus, backend", [
    ("auto", 0, 0, None), ("auto", 1, 0, None), ("auto", 0.5, 1, None), ("auto", 1, 1, "nccl"),
    ("collective", 0, 0, "gloo"), ("collective", 1, 0.5, "gloo"), ("collective", 2, 1, "nccl"),
    ("object_store", 1, 1, None)])
def test_weight_sync_picks_nccl_only_when_every_member_has_a_whole_gpu(mode, train_gpus, worker_gpus, backend):
    cfg = load_config(None, [f"rollout.weight_sync={mode}", f"train.gpus={train_gpus}",
                             f"rollout.gpus_per_worker={worker_gpus}"])
    assert weight_sync_backend(cfg) == backend


def test_weight_sync_defaults_to_the_object_store_and_bad_values_name_the_key():
    cfg = load_config(None)
    assert cfg.rollout.weight_sync == "object_store" and weight_sync_backend(cfg) is None
    assert cfg.rollout.weight_sync_timeout_s > 0
    with pytest.raises(ConfigError, match=r"rollout\.weight_sync: Input should be 'auto', 'object_store' or "
                                          r"'collective' \(got 'nccl'\)"):
        load_config(None, ["rollout.weight_sync=nccl"])
    with pytest.raises(ConfigError, match=r"rollout\.weight_sync_timeout_s: .*greater than 0"):
        load_config(None, ["rollout.weight_sync_timeout_s=0"])


STATE = {"b": torch.randn(3, 4), "a": torch.randn(5).to(torch.bfloat16), "c": torch.tensor(2.5),
         "d": torch.arange(7), "e": torch.randn(10)}


def test_buckets_hold_one_dtype_each_in_name_order_and_split_at_the_cap():
    spec = layout(STATE)
    assert [name for name, _, _ in spec] == ["a", "b", "c", "d", "e"]
    assert spec[0] == ("a", (5,), "bfloat16") and spec[2] == ("c", (), "float32")
    assert buckets(spec) == [[0], [1, 2, 4], [3]]           # bf16 | f32 b, c, e | int64
    assert buckets(spec, cap=52) == [[0], [1, 2], [4], [3]]  # b (48 B) + c (4 B) fill 52; e starts the next
    assert buckets(spec, cap=1) == [[0], [1], [2], [4], [3]]  # a tensor over the cap is a bucket of its own


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _members(world: int, timeout_s: float, act) -> dict:
    """Run act(rank, group) for each rank of a new gloo group in threads; returns rank -> result or exception."""
    address, out = _free_address(), {}

    def member(rank):
        try:
            group = BroadcastGroup(address, rank, world, "gloo", timeout_s, "test")
            out[rank] = act(rank, group)
        except Exception as e:  # the test looks at what each member got
            out[rank] = e

    threads = [threading.Thread(target=member, args=(rank,)) for rank in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_a_broadcast_group_moves_every_tensor_bit_exact_in_one_collective_per_dtype(monkeypatch):
    calls = []
    real = BroadcastGroup._broadcast
    monkeypatch.setattr(BroadcastGroup, "_broadcast", lambda self, flat: calls.append(flat.dtype) or real(self, flat))
    spec = layout(STATE)
    out = _members(3, 30, lambda rank, g: g.send(STATE) if rank == 0 else g.receive(spec))
    assert out[0] == sum(t.numel() * t.element_size() for t in STATE.values())
    for rank in (1, 2):
        assert layout(out[rank]) == spec and state_checksum(out[rank]) == state_checksum(STATE)
    assert sorted(map(str, calls)) == sorted(["torch.bfloat16", "torch.float32", "torch.int64"] * 3)


def test_a_member_that_never_joins_or_never_receives_makes_the_others_raise_not_hang():
    out = _members(2, 1, lambda rank, g: None if rank == 1 else g.send(STATE))  # rank 1 joins, never receives
    assert isinstance(out[0], SyncFailed) and "broadcast failed on rank 0" in str(out[0])
    with pytest.raises(SyncFailed, match="could not join"):
        BroadcastGroup(_free_address(), 0, 2, "gloo", 1, "alone")


# --- the collective path on Ray actors ---------------------------------------------------------------

@pytest.fixture(scope="module", params=[1, 2], ids=["1-trainer", "2-trainers"])
def roles(ray_cluster, request):
    roles = launch(load_config(None, [*(TINY if request.param == 1 else GROUP), *COLLECTIVE]))
    yield roles
    roles.shutdown()


def _held(roles) -> list[tuple[int, str]]:
    import ray

    return ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])


def _train(roles) -> None:
    tok = load_tokenizer(load_config(None, TINY).model)
    roles.trainer.train([(tok.encode(p), tok.encode(s) + [tok.eos_token_id]) for p, s in PAIRS])


def _trainer_checksum(roles) -> str:
    sums = roles.trainer.checksums()
    assert len(set(sums)) == 1
    return sums[0]


def test_collective_syncs_leave_every_worker_with_the_trainers_checksum_at_its_version(roles):
    versions = []
    for step in range(3):
        if step:
            _train(roles)
        version, _ = sync(roles)
        versions.append(version)
        assert _held(roles) == [(version, _trainer_checksum(roles))] * 2
        assert roles.published.checksum == _trainer_checksum(roles)
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]
    assert roles.collective.backend == "gloo" and roles.collective.groups == 1   # one group, built once
    assert roles.faults.sync_fallbacks == 0


def test_a_worker_killed_between_syncs_is_revived_and_the_next_sync_rebuilds_the_group(ray_cluster, roles):
    ray = ray_cluster
    sync(roles)
    groups, restarts = roles.collective.groups, roles.faults.rollout_restarts
    pid = ray.get(roles.rollout[0].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    _train(roles)
    version, _ = sync(roles)
    assert _held(roles) == [(version, _trainer_checksum(roles))] * 2
    assert ray.get(roles.rollout[0].__ray_call__.remote(lambda self: os.getpid())) != pid
    assert roles.collective.groups == groups + 1 and roles.faults.sync_fallbacks == 0
    assert roles.faults.rollout_restarts == restarts + 1
    _train(roles)
    version, _ = sync(roles)  # the rebuilt group carries the next version too
    assert _held(roles) == [(version, _trainer_checksum(roles))] * 2 and roles.collective.groups == groups + 1


def test_a_failed_broadcast_falls_back_to_the_object_store_logged_once_and_counted(ray_cluster, roles, caplog):
    ray = ray_cluster
    # a group whose collectives give up after 10 s: a member left waiting for the broken one costs no more
    roles.collective.timeout_s, roles.collective.token = 10.0, None
    sync(roles)
    groups, fallbacks = roles.collective.groups, roles.faults.sync_fallbacks

    def lose_connections(self):
        """This worker drops its gloo connections (the trainer's send to it fails) and fails its receive."""
        import gc

        from branchrl.sync.weight_sync import SyncFailed

        def receive(spec):
            raise SyncFailed("injected: this member lost its connections")

        self.group.pg = None
        gc.collect()
        self.group.receive = receive

    ray.get(roles.rollout[1].__ray_call__.remote(lose_connections))
    _train(roles)
    with caplog.at_level(logging.WARNING, logger="branchrl.sync.collective"):
        version, _ = sync(roles)
    assert roles.faults.sync_fallbacks == fallbacks + 1
    assert _held(roles) == [(version, _trainer_checksum(roles))] * 2   # every worker, through the object store
    warnings = [r.getMessage() for r in caplog.records if r.name == "branchrl.sync.collective"]
    assert len(warnings) == 1 and "object store" in warnings[0]
    _train(roles)
    version, _ = sync(roles)   # a new group, and the broadcast works again
    assert _held(roles) == [(version, _trainer_checksum(roles))] * 2
    assert roles.collective.groups == groups + 1 and roles.faults.sync_fallbacks == fallbacks + 1
