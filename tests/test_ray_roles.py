"""The roles on real Ray actors: placement groups, versioned weight sync, failing fast on missing resources."""

import pytest

from branchrl.config import load_config
from branchrl.launch import LaunchError, launch
from branchrl.loop import sync

TINY = ["model.tiny.hidden_size=32", "model.tiny.layers=2", "model.tiny.heads=2", "model.tiny.kv_heads=2",
        "model.tiny.intermediate_size=64", "rollout.workers=2", "train.threads=1"]


@pytest.fixture(scope="module")
def roles(ray_cluster):
    roles = launch(load_config(None, TINY))
    yield roles
    roles.shutdown()


def _placement(actor):
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id()))


def test_rollout_workers_and_trainer_sit_in_separate_placement_groups(roles):
    training, inference = (g.id.hex() for g in roles.groups)
    assert training != inference
    assert _placement(roles.trainer) == training
    assert [_placement(w) for w in roles.rollout] == [inference, inference]


def test_weights_reach_every_rollout_worker_with_the_trainers_checksum_and_next_version(ray_cluster, roles):
    ray = ray_cluster
    version, _ = sync(roles)
    before = ray.get(roles.trainer.publish.remote())
    states = ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])
    assert states == [(version, before["checksum"])] * 2

    update = ray.get(roles.trainer.train.remote([([5, 6, 7], [8, 9, 2]), ([5, 7], [9, 9, 9, 2])]))
    assert update["trained_tokens"] > 0
    new_version, _ = sync(roles)
    after = ray.get(roles.trainer.publish.remote())
    assert new_version == version + 1 == after["version"]
    assert after["checksum"] != before["checksum"]  # training changed the weights
    states = ray.get([w.__ray_call__.remote(lambda self: (self.version, self.checksum)) for w in roles.rollout])
    assert states == [(version + 1, after["checksum"])] * 2


def test_a_group_the_cluster_cannot_hold_fails_at_once_naming_what_is_missing(ray_cluster):
    with pytest.raises(LaunchError, match=r"training group needs .*GPU"):
        launch(load_config(None, [*TINY, "train.gpus=1"]))
    with pytest.raises(LaunchError, match=r"inference group needs \{'CPU': 64"):
        launch(load_config(None, [*TINY, "rollout.workers=64"]))
