"""Pruning verified trees to training samples, and the parquet data set they become (crash-safe, resumable)."""

import json

import datasets
import pytest

from branchrl.config import load_config
from branchrl.data.datastore import (
    SCHEMA,
    DataSetError,
    DataStore,
    find_data_dir,
    manifest_path,
    read_data_set,
    sample_id,
)
from branchrl.data.prune import select_verified
from branchrl.envs import Problem, load_env
from branchrl.records import Leaf
from branchrl.tree import Tree
from branchrl.verifiers.result import Result

PASS = Result("pass", 1.0, 0.0, "")
FAIL = Result("fail", 0.0, 0.0, "")


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


def leaves_of(tree: Tree, texts: list[str], results: list[Result]) -> list[Leaf]:
    """The leaves loop.verify_leaves builds: one per leaf, in tree order."""
    leaf_ids = tree.leaves()
    assert len(leaf_ids) == len(texts) == len(results)
    return [Leaf(tree, leaf, tree.completion_ids(leaf), text, {}, result)
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
    assert [leaf.text for _, leaf in chosen.samples] == ["#### 4", "#### 5"] and chosen.distinct == 2


def test_distinct_texts_and_cap_per_problem_in_leaf_order():
    tree = tree_with("t0", [[1], [2], [3], [4], [5], [6]])
    leaves = leaves_of(tree, ["x", "x", "y", "z", "w", "v"], [PASS, PASS, PASS, FAIL, PASS, PASS])
    chosen = select_verified([problem(0)], [tree], leaves, cap=3)
    assert [leaf.text for _, leaf in chosen.samples] == ["x", "y", "w"]
    assert [ids for _, ids in chosen.sequences] == [[1], [3], [5]]
    # the cap and de-duplication shape the data set, not the rates: all 5 passing leaves count
    assert chosen.pass_rate == 5 / 6 and chosen.verified_tokens == 5 and chosen.distinct == 4


def test_rates_across_problems_and_unverified_verdicts():
    trees = [tree_with(f"t{i}", [[i], [i, i]]) for i in range(3)]
    results = [[PASS, FAIL], [FAIL, Result("timeout", 0.0, 0.0, "")], [Result("error", 0.0, 0.0, ""), PASS]]
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
def row(i: int, step: int = 1, attempt: int = 0, **change) -> dict:
    base = {"sample_id": sample_id(f"t{i}", "0.1", attempt), "env": "arithmetic", "problem_id": f"p{i}",
            "prompt": f"{i}+{i}=", "completion": f"#### {2 * i}",
            "answer": str(2 * i), "policy_version": 3, "verifier": "math", "verifier_version": "math-1",
            "verdict": "pass", "score": 1.0, "tree_id": f"t{i}", "branch_path": "0.1", "tree_value": 0.5,
            "num_tokens": 4, "seed": 0, "step": step, "attempt": attempt,
            "roles": [{"role": "policy", "start": 0, "end": 5 + len(str(2 * i))}], "tool_calls": 0}
    return {**base, **change}


def load(root, tmp_path):
    return datasets.load_dataset("parquet", data_dir=str(root), cache_dir=str(tmp_path / "hf-cache"))["train"]


def test_shards_load_with_datasets_with_every_column(tmp_path):
    store = DataStore(tmp_path / "data")
    first = store.write(1, [row(0), row(1)])
    store.write(2, [row(2, step=2, tree_value=1.0, branch_path="2")])
    assert first.name == "step-000001.parquet" and store.rows == 3
    ds = load(tmp_path / "data", tmp_path)
    assert ds.column_names == SCHEMA.names and ds.num_rows == 3
    by_id = {r["problem_id"]: r for r in ds}
    assert by_id["p2"] == row(2, step=2, tree_value=1.0, branch_path="2")
    assert by_id["p0"] == row(0)


def test_refuses_a_row_that_did_not_pass_and_writes_nothing(tmp_path):
    store = DataStore(tmp_path / "data")
    with pytest.raises(ValueError, match="only takes verified .pass. samples, got verdict 'fail'"):
        store.write(1, [row(0), row(1, verdict="fail", score=0.0)])
    assert list((tmp_path / "data").iterdir()) == [] and store.rows == 0


def test_empty_step_writes_no_file(tmp_path):
    store = DataStore(tmp_path / "data")
    assert store.write(1, []) is None
    assert list((tmp_path / "data").iterdir()) == [] and store.rows == 0


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
    from branchrl.context import Context
    from branchrl.loop import provenance  # imports ray (no cluster starts): only this test pays

    cfg = load_config(None, ["run.seed=5"])
    env = load_env("arithmetic", digits=2)
    problems = env.train_problems(2, seed=0)
    trees = [tree_with(f"t{i}", [[1, 2], [3], [4]], fork_after_first=True) for i in range(2)]
    leaves = []
    for p, tree in zip(problems, trees):
        leaves += leaves_of(tree, [p.solution, "#### 0"], [PASS, FAIL])
        for leaf in leaves[-2:]:
            tree.nodes[leaf.node].reward = leaf.reward
    chosen = select_verified(problems, trees, leaves, cap=4)
    from branchrl.models import build_char_tokenizer

    ctx = Context(cfg, env, tokenizer=build_char_tokenizer(), roles=None, ledger=None, run_dir=tmp_path, progress=None)
    DataStore(tmp_path / "data").write(7, provenance(ctx, chosen, 7))
    ds = load(tmp_path / "data", tmp_path)
    assert ds.num_rows == 2 and ds.column_names == SCHEMA.names
    first = ds[0]
    assert first["problem_id"] == problems[0].id and first["completion"] == problems[0].solution
    assert (first["tree_value"], first["branch_path"], first["num_tokens"], first["seed"], first["step"]) == (
        0.5, "0.0", 3, 5, 7)
    assert (first["policy_version"], first["verifier_version"], first["env"]) == (3, "math-1", "arithmetic")
    assert (first["sample_id"], first["attempt"]) == ("t0/0.0", 0)
    assert first["tool_calls"] == 0 and [r["role"] for r in first["roles"]] == ["policy"]
    rerun = provenance(ctx, chosen, 7, attempt=2)  # the same trees sampled again by a resumed run
    assert [r["sample_id"] for r in rerun] == ["t0@a2/0.0", "t1@a2/0.0"]
    DataStore(tmp_path / "data", attempt=2).write(7, rerun)
    assert sorted(load(tmp_path / "data", tmp_path)["sample_id"]) == ["t0/0.0", "t0@a2/0.0", "t1/0.0", "t1@a2/0.0"]


# ------------------------------------------------------------------ DataStore: crash safety and resume
def shard_bytes(root, name="step-000001.parquet"):
    return (root / name).read_bytes()


def test_manifest_beside_the_data_dir_lists_every_shard_with_its_checksum(tmp_path):
    import hashlib

    root = tmp_path / "data"
    store = DataStore(root)
    store.write(1, [row(0), row(1)])
    store.write(3, [row(2, step=3)])
    manifest = json.loads((tmp_path / "data_manifest.json").read_text())
    assert manifest_path(root) == tmp_path / "data_manifest.json"
    assert manifest["format"] == "branchrl-data/1"
    assert [(e["file"], e["step"], e["attempt"], e["rows"]) for e in manifest["shards"]] == [
        ("step-000001.parquet", 1, 0, 2), ("step-000003.parquet", 3, 0, 1)]
    first = manifest["shards"][0]
    assert first["sha256"] == hashlib.sha256(shard_bytes(root)).hexdigest() and first["bytes"] == len(shard_bytes(root))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data_manifest.json"]  # no temp file left
    assert sorted(p.name for p in root.iterdir()) == ["step-000001.parquet", "step-000003.parquet"]


def test_a_json_file_inside_the_data_dir_breaks_load_dataset(tmp_path):
    """Why the manifest lives beside data/: datasets reads every visible file of data_dir as parquet."""
    DataStore(tmp_path / "data").write(1, [row(0)])
    (tmp_path / "data" / "manifest.json").write_text("{}")
    with pytest.raises(Exception):
        load(tmp_path / "data", tmp_path)


def test_refuses_ids_already_stored_or_repeated_in_a_batch(tmp_path):
    store = DataStore(tmp_path / "data")
    store.write(1, [row(0), row(1)])
    with pytest.raises(ValueError, match=r"sample ids already stored .*\['t1/0.1'\]"):
        store.write(2, [row(2, step=2), row(1, step=2)])
    with pytest.raises(ValueError, match=r"\['t5/0.1'\]"):
        store.write(2, [row(5, step=2), row(5, step=2, completion="other")])
    reopened = DataStore(tmp_path / "data")
    with pytest.raises(ValueError, match="already stored"):
        reopened.write(9, [row(0, step=9)])
    assert reopened.rows == store.rows == 2 and load(tmp_path / "data", tmp_path).num_rows == 2


def test_rows_must_belong_to_the_shard_step_and_attempt(tmp_path):
    store = DataStore(tmp_path / "data", attempt=1)
    with pytest.raises(ValueError, match="a row of step 1 attempt 0 in the shard of step 1 attempt 1"):
        store.write(1, [row(0)])
    with pytest.raises(ValueError, match="a row of step 2 attempt 1 in the shard of step 1 attempt 1"):
        store.write(1, [row(0, step=2, attempt=1)])


def test_reopening_knows_every_id_and_row_and_keeps_writing(tmp_path):
    root = tmp_path / "data"
    first = DataStore(root)
    first.write(1, [row(0), row(1)])
    first.write(2, [row(2, step=2)])
    again = DataStore(root)
    assert again.ids == {"t0/0.1", "t1/0.1", "t2/0.1"} and again.rows == 3
    again.write(3, [row(3, step=3)])
    assert again.rows == 4
    assert [e["step"] for e in json.loads(manifest_path(root).read_text())["shards"]] == [1, 2, 3]
    assert load(root, tmp_path).num_rows == 4


def test_a_rerun_of_a_step_is_a_new_attempt_beside_the_first_shard(tmp_path):
    root = tmp_path / "data"
    DataStore(root).write(6, [row(0, step=6), row(1, step=6)])
    before = shard_bytes(root, "step-000006.parquet")
    with pytest.raises(FileExistsError, match="needs a new attempt"):
        DataStore(root).write(6, [row(7, step=6)])
    resumed = DataStore(root, attempt=1)
    path = resumed.write(6, [row(0, step=6, attempt=1), row(1, step=6, attempt=1)])  # same trees, sampled again
    assert path.name == "step-000006-a1.parquet"
    assert shard_bytes(root, "step-000006.parquet") == before
    ds = load(root, tmp_path)
    assert ds.num_rows == 4 and len(set(ds["sample_id"])) == 4
    assert sorted(zip(ds["attempt"], ds["sample_id"])) == [(0, "t0/0.1"), (0, "t1/0.1"), (1, "t0@a1/0.1"),
                                                            (1, "t1@a1/0.1")]


def test_reopening_removes_temp_files_that_a_crash_left(tmp_path):
    """Killed mid-write: the shard's temp file (and a manifest temp) exist, the final names do not."""
    root = tmp_path / "data"
    DataStore(root).write(1, [row(0)])
    (root / ".step-000002.parquet.tmp").write_bytes(shard_bytes(root)[:50])  # half-written
    (tmp_path / ".data_manifest.json.tmp").write_text('{"format": "branch')
    (root / ".keep-me").write_text("not ours")
    assert load(root, tmp_path).num_rows == 1  # a reader during the write never sees the temp file
    store = DataStore(root)
    assert sorted(p.name for p in root.iterdir()) == [".keep-me", "step-000001.parquet"]
    assert not (tmp_path / ".data_manifest.json.tmp").exists() and store.rows == 1
    store.write(2, [row(2, step=2)])
    assert load(root, tmp_path).num_rows == 2


def test_reopening_adopts_a_complete_shard_missing_from_the_manifest(tmp_path):
    """Killed between the shard's rename and the manifest update."""
    root = tmp_path / "data"
    DataStore(root).write(1, [row(0)])
    listed = manifest_path(root).read_text()
    DataStore(root, attempt=1).write(2, [row(1, step=2, attempt=1), row(2, step=2, attempt=1)])
    manifest_path(root).write_text(listed)  # the state the crash left: step 2's shard, unlisted
    store = DataStore(root)
    assert store.rows == 3 and store.ids == {"t0/0.1", "t1@a1/0.1", "t2@a1/0.1"}
    entries = json.loads(manifest_path(root).read_text())["shards"]
    assert [(e["file"], e["rows"], e["attempt"]) for e in entries] == [("step-000001.parquet", 1, 0),
                                                                        ("step-000002-a1.parquet", 2, 1)]
    manifest_path(root).unlink()  # killed before the very first manifest write: both are adopted
    assert DataStore(root).rows == 3 and len(json.loads(manifest_path(root).read_text())["shards"]) == 2


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_shard_that_differs_from_the_manifest_is_an_error_and_stays(tmp_path, damage):
    root = tmp_path / "data"
    DataStore(root).write(1, [row(0)])
    path = root / "step-000001.parquet"
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(data[:-10] if damage == "truncate" else data[:20] + bytes([data[20] ^ 1]) + data[21:])
    expected = "listed in data_manifest.json but missing" if damage == "delete" else "does not match data_manifest.json"
    manifest = manifest_path(root).read_text()
    for open_it in (lambda: DataStore(root), lambda: read_data_set(root, ["prompt"])):
        with pytest.raises(DataSetError, match=expected):
            open_it()
    assert manifest_path(root).read_text() == manifest  # nothing rewritten, nothing dropped
    assert path.exists() == (damage != "delete")


def test_an_unlisted_shard_that_is_not_ours_is_an_error(tmp_path):
    root = tmp_path / "data"
    DataStore(root).write(1, [row(0)])
    (root / "step-000002.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataSetError, match="step-000002.parquet is not in the manifest and is not a readable parquet"):
        DataStore(root)
    (root / "step-000002.parquet").unlink()
    DataStore(tmp_path / "other").write(1, [row(0)])  # a complete shard under another step's name
    (tmp_path / "other" / "step-000001.parquet").rename(root / "step-000003.parquet")
    with pytest.raises(DataSetError, match="does not fit its name: DataStore: a row of step 1 attempt 0 in the shard "
                                           "of step 3"):
        DataStore(root)
    (root / "step-000003.parquet").unlink()
    DataStore(tmp_path / "copy").write(4, [row(0, step=4)])  # a step stored twice: its ids repeat stored ones
    (tmp_path / "copy" / "step-000004.parquet").rename(root / "step-000004.parquet")
    with pytest.raises(DataSetError, match="step-000004.parquet repeats sample ids"):
        DataStore(root)
    (root / "step-000004.parquet").unlink()
    (root / "notes.txt").write_text("hello")
    with pytest.raises(DataSetError, match="notes.txt is not a data shard .* would break load_dataset"):
        DataStore(root)


def test_a_garbled_manifest_is_an_error(tmp_path):
    root = tmp_path / "data"
    DataStore(root).write(1, [row(0)])
    manifest_path(root).write_text("[1, 2")
    with pytest.raises(DataSetError, match="data_manifest.json is not a branchrl-data/1 manifest"):
        DataStore(root)


def test_read_data_set_takes_a_run_dir_or_its_data_dir(tmp_path):
    run = tmp_path / "run"
    DataStore(run / "data").write(1, [row(0), row(1)])
    DataStore(run / "data", attempt=1).write(1, [row(0, attempt=1)])
    assert find_data_dir(run) == find_data_dir(run / "data") == run / "data"
    table = read_data_set(run, ["problem_id", "completion"])
    assert table.column_names == ["problem_id", "completion"] and table.num_rows == 3
    with pytest.raises(DataSetError, match="has no column.*'reward'"):
        read_data_set(run, ["reward"])
    (run / "empty").mkdir()
    with pytest.raises(DataSetError, match="holds no parquet shards"):
        find_data_dir(run / "empty")
    with pytest.raises(DataSetError, match="not found"):
        find_data_dir(run / "nope")
