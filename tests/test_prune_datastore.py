"""Pruning verified trees to training samples, and the parquet data set they become."""

import datasets
import pytest

from branchrl.config import load_config
from branchrl.datastore import SCHEMA, DataStore
from branchrl.envs import Problem, load_env
from branchrl.prune import select_verified
from branchrl.tree import Tree

PASS = {"verdict": "pass", "score": 1.0, "seconds": 0.0, "details": ""}
FAIL = {"verdict": "fail", "score": 0.0, "seconds": 0.0, "details": ""}


def problem(i: int) -> Problem:
    return Problem(id=f"p{i}", prompt=f"{i}+{i}=", answer=str(2 * i), solution=f"#### {2 * i}")


def tree_with(tree_id: str, spans: list[list[int]], fork_after_first: bool = False) -> Tree:
    """Root chains with the given tokens; with fork_after_first the first chain forks into spans[1:]."""
    tree = Tree(tree_id=tree_id, problem_id=tree_id, prompt_ids=[7, 7, 7], policy_version=3)
    first = tree.add_child(0)
    tree.nodes[first].tokens = list(spans[0])
    parent = first if fork_after_first else 0
    for span in spans[1:]:
        node = tree.add_child(parent)
        tree.nodes[node].tokens = list(span)
        tree.nodes[node].finish = "eos"
    if not fork_after_first:
        tree.nodes[first].finish = "eos"
    return tree


def leaves_of(tree: Tree, texts: list[str], results: list[dict]) -> list[dict]:
    """The dicts loop.verify_leaves builds: one per leaf, in tree order."""
    leaf_ids = tree.leaves()
    assert len(leaf_ids) == len(texts) == len(results)
    return [{"tree": tree, "leaf": leaf, "ids": tree.completion_ids(leaf), "text": text, "result": result}
            for leaf, text, result in zip(leaf_ids, texts, results)]


# ------------------------------------------------------------------ select_verified
def test_keeps_passing_leaves_only_with_their_full_completion_ids():
    tree = tree_with("t0", [[1, 2], [3], [4, 5]], fork_after_first=True)  # leaves: 1,2 -> 3 and 1,2 -> 4,5
    leaves = leaves_of(tree, ["a", "b"], [FAIL, PASS])
    chosen = select_verified([problem(0)], [tree], leaves, cap=4)
    assert chosen.samples == [(problem(0), leaves[1])]
    assert chosen.sequences == [([7, 7, 7], [1, 2, 4, 5])]
    assert chosen.pass_rate == 0.5 and chosen.solved_rate == 1.0 and chosen.verified_tokens == 4


def test_verified_tokens_count_a_shared_prefix_once():
    tree = tree_with("t0", [[1, 2], [3], [4, 5]], fork_after_first=True)
    chosen = select_verified([problem(0)], [tree], leaves_of(tree, ["a", "b"], [PASS, PASS]), cap=4)
    assert chosen.verified_tokens == 2 + 1 + 2 == tree.generated_tokens()


def test_signatures_decide_what_is_distinct():
    tree = tree_with("t0", [[1], [2], [3]])
    leaves = leaves_of(tree, ["#### 4", "####  4 ", "#### 5"], [PASS, PASS, PASS])
    chosen = select_verified([problem(0)], [tree], leaves, cap=4, signature=lambda t: " ".join(t.split()))
    assert [leaf["text"] for _, leaf in chosen.samples] == ["#### 4", "#### 5"] and chosen.distinct == 2


def test_distinct_texts_and_cap_per_problem_in_leaf_order():
    tree = tree_with("t0", [[1], [2], [3], [4], [5], [6]])
    leaves = leaves_of(tree, ["x", "x", "y", "z", "w", "v"], [PASS, PASS, PASS, FAIL, PASS, PASS])
    chosen = select_verified([problem(0)], [tree], leaves, cap=3)
    assert [leaf["text"] for _, leaf in chosen.samples] == ["x", "y", "w"]
    assert [ids for _, ids in chosen.sequences] == [[1], [3], [5]]
    # the cap and de-duplication shape the data set, not the rates: all 5 passing leaves count
    assert chosen.pass_rate == 5 / 6 and chosen.verified_tokens == 5 and chosen.distinct == 4


def test_rates_across_problems_and_unverified_verdicts():
    trees = [tree_with(f"t{i}", [[i], [i, i]]) for i in range(3)]
    results = [[PASS, FAIL], [FAIL, {**FAIL, "verdict": "timeout"}], [{**FAIL, "verdict": "error"}, PASS]]
    leaves = [leaf for tree, r in zip(trees, results) for leaf in leaves_of(tree, ["a", "b"], r)]
    chosen = select_verified([problem(i) for i in range(3)], trees, leaves, cap=2)
    assert [p.id for p, _ in chosen.samples] == ["p0", "p2"]
    assert chosen.pass_rate == 2 / 6 and chosen.solved_rate == 2 / 3 and chosen.verified_tokens == 1 + 2


def test_all_problems_solved_is_exactly_one():
    trees = [tree_with(f"t{i}", [[i]]) for i in range(10)]
    leaves = [leaf for tree in trees for leaf in leaves_of(tree, ["a"], [PASS])]
    chosen = select_verified([problem(i) for i in range(10)], trees, leaves, cap=1)
    assert chosen.solved_rate == 1.0 and chosen.pass_rate == 1.0 and len(chosen.samples) == 10


def test_nothing_passes_and_nothing_at_all():
    tree = tree_with("t0", [[1], [2]])
    chosen = select_verified([problem(0)], [tree], leaves_of(tree, ["a", "b"], [FAIL, FAIL]), cap=4)
    assert (chosen.samples, chosen.sequences, chosen.pass_rate, chosen.solved_rate, chosen.verified_tokens) == (
        [], [], 0.0, 0.0, 0)
    empty = select_verified([], [], [], cap=4)
    assert (empty.samples, empty.pass_rate, empty.solved_rate) == ([], 0.0, 0.0)


def test_problems_and_trees_must_pair_up():
    with pytest.raises(ValueError):
        select_verified([problem(0), problem(1)], [tree_with("t0", [[1]])], [], cap=1)


# ------------------------------------------------------------------ DataStore
def row(i: int, **change) -> dict:
    base = {"env": "arithmetic", "problem_id": f"p{i}", "prompt": f"{i}+{i}=", "completion": f"#### {2 * i}",
            "answer": str(2 * i), "policy_version": 3, "verifier": "math", "verifier_version": "math-1",
            "verdict": "pass", "score": 1.0, "tree_id": f"t{i}", "branch_path": "0.1", "tree_value": 0.5,
            "num_tokens": 4, "seed": 0, "step": 1}
    return {**base, **change}


def load(root, tmp_path):
    return datasets.load_dataset("parquet", data_dir=str(root), cache_dir=str(tmp_path / "hf-cache"))["train"]


def test_shards_load_with_datasets_with_every_column(tmp_path):
    store = DataStore(tmp_path / "data")
    first = store.write(1, [row(0), row(1)])
    store.write(2, [row(2, step=2, tree_value=1.0, branch_path="2")])
    assert first.name == "step-000001.parquet" and store.rows_written == 3
    ds = load(tmp_path / "data", tmp_path)
    assert ds.column_names == SCHEMA.names and ds.num_rows == 3
    by_id = {r["problem_id"]: r for r in ds}
    assert by_id["p2"] == row(2, step=2, tree_value=1.0, branch_path="2")
    assert by_id["p0"] == row(0)


def test_refuses_a_row_that_did_not_pass_and_writes_nothing(tmp_path):
    store = DataStore(tmp_path / "data")
    with pytest.raises(ValueError, match="only takes verified .pass. samples, got verdict 'fail'"):
        store.write(1, [row(0), row(1, verdict="fail", score=0.0)])
    assert list((tmp_path / "data").iterdir()) == [] and store.rows_written == 0


def test_empty_step_writes_no_file(tmp_path):
    store = DataStore(tmp_path / "data")
    assert store.write(1, []) is None
    assert list((tmp_path / "data").iterdir()) == [] and store.rows_written == 0


def test_rows_must_match_the_schema(tmp_path):
    store = DataStore(tmp_path / "data")
    renamed = row(0)
    renamed["node_value"] = renamed.pop("tree_value")
    with pytest.raises(ValueError, match=r"missing \['tree_value'\], unknown \['node_value'\]"):
        store.write(1, [renamed])


def test_a_step_is_written_once(tmp_path):
    store = DataStore(tmp_path / "data")
    store.write(1, [row(0)])
    with pytest.raises(FileExistsError):
        store.write(1, [row(1)])


def test_the_loop_rows_fit_the_schema(tmp_path):
    """Prune -> loop.provenance -> DataStore, the path a run takes, with real env and config."""
    from branchrl.loop import Context, provenance  # imports ray (no cluster starts): only this test pays

    cfg = load_config(None, ["run.seed=5"])
    env = load_env("arithmetic", digits=2)
    problems = env.train_problems(2, seed=0)
    trees = [tree_with(f"t{i}", [[1, 2], [3], [4]], fork_after_first=True) for i in range(2)]
    leaves = []
    for p, tree in zip(problems, trees):
        leaves += leaves_of(tree, [p.solution, "#### 0"], [PASS, FAIL])
        for leaf in leaves[-2:]:
            tree.nodes[leaf["leaf"]].reward = leaf["result"]["score"]
    chosen = select_verified(problems, trees, leaves, cap=4)
    ctx = Context(cfg, env, tokenizer=None, roles=None, ledger=None, run_dir=tmp_path, progress=None, settings=None)
    DataStore(tmp_path / "data").write(7, provenance(ctx, chosen, 7))
    ds = load(tmp_path / "data", tmp_path)
    assert ds.num_rows == 2 and ds.column_names == SCHEMA.names
    first = ds[0]
    assert first["problem_id"] == problems[0].id and first["completion"] == problems[0].solution
    assert (first["tree_value"], first["branch_path"], first["num_tokens"], first["seed"], first["step"]) == (
        0.5, "0.0", 3, 5, 7)
    assert (first["policy_version"], first["verifier_version"], first["env"]) == (3, "math-1", "arithmetic")
