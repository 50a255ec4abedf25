"""A split cluster on one machine (ray.cluster_utils.Cluster): a head, an inference node and a training
node, each a raylet with its own custom resource. Rollout workers must land on the inference node and
trainers on the training node, and a whole run must complete there."""

import pytest
from conftest import LOCAL_RAY
from test_run import SMALL_RUN

from branchrl.config import load_config
from branchrl.launch import LaunchError, launch
from branchrl.loop import run

pytestmark = pytest.mark.cluster
SPLIT = ["rollout.node_resource=inference_node", "train.node_resource=training_node", "rollout.workers=2",
         "verify.cpus_per_worker=0.5", "train.workers=2", "train.cpus=0.5", "train.batch_size=8"]


@pytest.fixture(scope="module")
def split_cluster():
    """Head (1 CPU: driver and verifier), inference node (2 CPUs), training node (1 CPU). Replaces the
    session's local Ray for this module and restores it afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    local = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {"inference": cluster.add_node(num_cpus=2, resources={"inference_node": 1}),
             "training": cluster.add_node(num_cpus=1, resources={"training_node": 1})}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, {name: node.node_id for name, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()
    if local:
        ray.init(**LOCAL_RAY)


def test_a_run_on_a_split_cluster_puts_each_group_on_its_node_and_completes(split_cluster, tmp_path):
    cluster, node_of = split_cluster
    summary = run(load_config(None, [*SMALL_RUN, *SPLIT, "run.steps=2", "eval.every=0"]), tmp_path / "out",
                  address=cluster.address)
    assert summary["steps"] == 2 and summary["trained_tokens"] > 0
    placement = summary["placement"]
    assert placement["inference"] == [node_of["inference"]] * 2
    assert placement["training"] == [node_of["training"]] * 2   # one data-parallel job of two trainers
    assert (tmp_path / "out" / "checkpoints" / "final" / "config.json").is_file()


def test_more_rollout_workers_than_the_inference_node_holds_fails_at_once(split_cluster, monkeypatch):
    import branchrl.launch

    # the check runs before placing anything: a placement attempt would fail with the timeout's message instead
    monkeypatch.setattr(branchrl.launch, "PLACEMENT_TIMEOUT_S", 0.1)
    with pytest.raises(LaunchError, match=r"inference group needs 3 x \{'CPU': 1.0, 'inference_node': 0.001\}"):
        launch(load_config(None, [*SMALL_RUN, *SPLIT, "rollout.workers=3"]))


def test_a_node_marker_the_cluster_lacks_is_named(split_cluster):
    with pytest.raises(LaunchError, match=r"custom resource 'gpu_node', but no node has it"):
        launch(load_config(None, [*SMALL_RUN, "rollout.node_resource=gpu_node"]))
