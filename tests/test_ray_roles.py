"""The roles on real Ray actors: placement groups, versioned weight sync, failing fast on missing resources."""

import os
import shutil
import time

import pytest

from branchrl.config import load_config
from branchrl.launch import LaunchError, launch
from branchrl.loop import sync
from branchrl.verifier_pool import VerifierWorker
from branchrl.verifiers import warm_sandbox

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


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_verifier_actors_warm_sandboxes_die_with_the_actor(ray_cluster):
    ray = ray_cluster
    actor = ray.remote(VerifierWorker).remote()
    record = {"verifier": "python_tests", "completion": "def f(x):\n    return x + 1\n", "tests": "assert f(1) == 2"}
    results, _ = ray.get(actor.verify_batch.remote([record, record]))
    assert [r["verdict"] for r in results] == ["pass", "pass"]
    # the module goes by reference, so this reads the actor's own pool
    pids = ray.get(actor.__ray_call__.remote(lambda self: [box.proc.pid for box in warm_sandbox.SANDBOXES.sandboxes()]))
    assert len(pids) == 1 and os.path.exists(f"/proc/{pids[0]}")
    ray.kill(actor)  # SIGKILL: no atexit runs, bwrap's --die-with-parent has to do it
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pids[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pids[0]}"), "the actor's warm sandbox outlived it"
