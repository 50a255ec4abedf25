"""Fail-fast placement checks on the cluster's node list (no Ray needed): what is missing is named."""

from pathlib import Path

import pytest

from branchrl.config import load_config
from branchrl.launch import LaunchError, check_cluster, wanted_bundles

HEAD = {"CPU": 1.0, "memory": 1e9, "node:10.0.0.1": 1.0}
INFER = {"CPU": 2.0, "inference_node": 1.0}
TRAIN = {"CPU": 2.0, "GPU": 1.0, "training_node": 1.0}
SPLIT = ["rollout.node_resource=inference_node", "train.node_resource=training_node", "verify.cpus_per_worker=0.5"]


def _check(overrides, nodes):
    check_cluster(wanted_bundles(load_config(None, overrides)), nodes)


def test_bundles_carry_the_groups_node_marker():
    wanted = wanted_bundles(load_config(None, [*SPLIT, "rollout.workers=3", "train.gpus=1"]))
    assert wanted["training"] == [{"CPU": 1.0, "GPU": 1.0, "training_node": 0.001}]
    assert wanted["inference"] == [{"CPU": 1.0, "inference_node": 0.001}] * 3
    assert wanted["verifier"] == [{"CPU": 0.5}]


def test_a_split_cluster_that_holds_every_group_passes():
    _check([*SPLIT, "rollout.workers=2"], [HEAD, INFER, TRAIN])


def test_a_marker_no_node_has_is_named_with_how_to_add_it():
    with pytest.raises(LaunchError, match=r"inference group is pinned to nodes with the custom resource "
                                          r"'inference_node', but no node has it; start those nodes with "
                                          r"`ray start --resources="):
        _check(SPLIT, [HEAD, TRAIN])


def test_more_workers_than_the_marked_nodes_hold_fails_before_placing():
    # 3 CPUs in the cluster's other nodes do not help: rollout workers may only use the inference node
    with pytest.raises(LaunchError, match=r"inference group needs 3 x \{'CPU': 1.0, 'inference_node': 0.001\} .* "
                                          r"no node has room for another"):
        _check([*SPLIT, "rollout.workers=3"], [HEAD, INFER, TRAIN])


def test_a_bundle_larger_than_any_node_fails_even_when_the_total_suffices():
    with pytest.raises(LaunchError, match=r"training group needs 1 x \{'CPU': 3.0\}"):
        _check(["train.cpus=3", "rollout.workers=1"], [{"CPU": 2.0}, {"CPU": 2.0}])


def test_a_request_larger_than_the_whole_cluster_names_the_resource():
    with pytest.raises(LaunchError, match=r"training group needs \{'CPU': 1.0, 'GPU': 2.0\} but the whole cluster "
                                          r"has only \{'GPU': 1.0\}"):
        _check(["train.gpus=2"], [HEAD, INFER, TRAIN])


def test_an_empty_marker_is_a_config_error():
    from branchrl.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.node_resource"):
        load_config(None, ["rollout.node_resource="])


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


@pytest.mark.parametrize("name, nodes", [
    ("one-node-8gpu.yaml", [{"CPU": 64.0, "GPU": 8.0}]),
    ("split-2node.yaml", [{"CPU": 16.0}, {"CPU": 32.0, "GPU": 8.0, "inference_node": 1.0},
                          {"CPU": 32.0, "GPU": 8.0, "training_node": 1.0}]),
])
def test_the_cluster_configs_fit_the_clusters_their_comments_start(name, nodes):
    cfg = load_config(ROOT / "configs" / "cluster" / name)
    check_cluster(wanted_bundles(cfg), nodes)
    with pytest.raises(LaunchError):  # and one GPU fewer does not
        check_cluster(wanted_bundles(cfg), [{**n, "GPU": n.get("GPU", 0) - 1} if n.get("GPU") else n
                                                     for n in nodes])
